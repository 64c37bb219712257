/*
 * storage_reference.h — the client tests' own bf16 / fp16 conversions,
 * written at the bit level independently of the library's, shared by
 * c_half.c and c_kvcache.c (C99).
 *
 *  to_bf16    fp32 -> bf16, round to nearest even (NaN stays a quiet NaN)
 *  to_f16     fp32 -> fp16 by arithmetic: the nearest of the representable
 *             neighbours (finite inputs of moderate size only, which is all
 *             the tests make; overflow gives +-inf, subnormals in 2^-24 steps)
 *  from_*     exact widening to fp32
 */
#ifndef BURST_TESTS_STORAGE_REFERENCE_H
#define BURST_TESTS_STORAGE_REFERENCE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t bits_of(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static inline float float_of(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

static inline uint16_t to_bf16(float x) {
  uint32_t u = bits_of(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u);
  return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
static inline float from_bf16(uint16_t h) { return float_of((uint32_t)h << 16); }

static inline uint16_t to_f16(float x) {
  double a = fabs((double)x), scaled;
  uint16_t sign = x < 0 ? 0x8000u : 0u;
  int e;
  if (a == 0) return sign;
  if (a >= 65520.0) return sign | 0x7C00u;
  frexp(a, &e);                  /* a = f * 2^e, f in [0.5, 1) */
  if (e - 1 < -14) {             /* subnormal: steps of 2^-24 */
    scaled = a * 16777216.0;
    return sign | (uint16_t)nearbyint(scaled);   /* default rounding: to nearest even */
  }
  scaled = nearbyint(a / ldexp(1.0, e - 11)) ;   /* 11 significant bits */
  if (scaled >= 2048.0) { scaled /= 2; e += 1; }
  return sign | (uint16_t)(((e - 1 + 15) << 10) | ((int)scaled - 1024));
}
static inline float from_f16(uint16_t h) {
  int e = (h >> 10) & 0x1F, f = h & 0x3FF;
  double v = e == 0 ? ldexp((double)f, -24) : ldexp((double)(f | 0x400), e - 25);
  if (e == 0x1F) v = f ? NAN : INFINITY;
  return (float)((h & 0x8000u) ? -v : v);
}

#endif /* BURST_TESTS_STORAGE_REFERENCE_H */
