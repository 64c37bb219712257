/*
 * variant_reference.h — float64 reference for every 0.2 variant, shared by
 * c_variants.c (C99) and cpp_client.cpp (C++17): the header's visibility rule
 * written out (causal, windows, packing), GQA, inputs, and the schedule's
 * exact byte rules over a brute-force needs matrix. Canonical tensors are
 * [batch][heads][N][head_dim] doubles.
 */
#ifndef BURST_TESTS_VARIANT_REFERENCE_H
#define BURST_TESTS_VARIANT_REFERENCE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

typedef struct vcase {
  const char *name;
  int dist, layout, causal;
  int64_t wl, wr, hq, hkv, batch, d, N;
  const int64_t *cu;
  int64_t nseq;
} vcase;

/* ---- the header's visibility rule, written out ---------------------------- */
static inline int64_t vref_seq_of(const vcase *c, int64_t t) {
  int64_t s;
  for (s = 0; s < c->nseq; ++s)
    if (t >= c->cu[s] && t < c->cu[s + 1]) return s;
  return -1;
}

static inline int vref_visible(const vcase *c, int64_t i, int64_t j) {
  if (c->causal && j > i) return 0;
  if (c->wl >= 0 && j < i - c->wl) return 0;
  if (c->wr >= 0 && j > i + c->wr) return 0;
  if (c->cu && vref_seq_of(c, i) != vref_seq_of(c, j)) return 0;
  return 1;
}

/* ---- inputs and float64 reference, canonical [b][h][t][d] ------------------ */
static inline double vref_value(uint64_t seed, uint64_t index) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + index * 0xBF58476D1CE4E5B9ull + 1;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  return (double)(x >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

/* BURST_COMPUTE_FAST against the float64 reference of the bf16-rounded
 * inputs: the header's provisional bounds, the one place the C and C++
 * clients keep them (the kernels' engineer may tighten them here). */
#define VREF_FAST_OUT_TOL 6e-3  /* out: x max|ref| */
#define VREF_FAST_GRAD_TOL 1.2e-2 /* dq, dk, dv: x max|ref| (floored at 1e-3) */
#define VREF_FAST_LSE_TOL 1e-4  /* lse: absolute */

#define CI(c, h, b, t, x, H) ((((size_t)(b) * (size_t)(H) + (size_t)(h)) * (size_t)(c)->N + (size_t)(t)) * (size_t)(c)->d + (size_t)(x))

/* As vref_reference, but D = rowsum(dout * given_out) when given_out is not
 * NULL (a backward handed a rounded out, as with bf16/fp16 storage). */
static inline void vref_reference_given_out(const vcase *c, const double *q, const double *k, const double *v,
                                            const double *dout, const double *given_out, double *out, double *lse,
                                            double *dq, double *dk, double *dv) {
  const int64_t g = c->hq / c->hkv, N = c->N, D = c->d;
  const double scale = 1.0 / sqrt((double)D);
  int64_t b, h, i, j, x;
  for (b = 0; b < c->batch; ++b)
    for (h = 0; h < c->hq; ++h) {
      const int64_t hk = h / g;
      for (i = 0; i < N; ++i) {
        double m = -INFINITY, l = 0, delta = 0, L;
        for (j = 0; j < N; ++j)
          if (vref_visible(c, i, j)) {
            double s = 0;
            for (x = 0; x < D; ++x) s += q[CI(c, h, b, i, x, c->hq)] * k[CI(c, hk, b, j, x, c->hkv)];
            s *= scale;
            if (s > m) m = s;
          }
        if (m == -INFINITY) { lse[((size_t)b * c->hq + h) * N + i] = -INFINITY; continue; }
        for (j = 0; j < N; ++j)
          if (vref_visible(c, i, j)) {
            double s = 0, p;
            for (x = 0; x < D; ++x) s += q[CI(c, h, b, i, x, c->hq)] * k[CI(c, hk, b, j, x, c->hkv)];
            p = exp(s * scale - m);
            l += p;
            for (x = 0; x < D; ++x) out[CI(c, h, b, i, x, c->hq)] += p * v[CI(c, hk, b, j, x, c->hkv)];
          }
        for (x = 0; x < D; ++x) out[CI(c, h, b, i, x, c->hq)] /= l;
        L = m + log(l);
        lse[((size_t)b * c->hq + h) * N + i] = L;
        for (x = 0; x < D; ++x)
          delta += dout[CI(c, h, b, i, x, c->hq)] * (given_out ? given_out : out)[CI(c, h, b, i, x, c->hq)];
        for (j = 0; j < N; ++j)
          if (vref_visible(c, i, j)) {
            double s = 0, dp = 0, p, ds;
            for (x = 0; x < D; ++x) {
              s += q[CI(c, h, b, i, x, c->hq)] * k[CI(c, hk, b, j, x, c->hkv)];
              dp += dout[CI(c, h, b, i, x, c->hq)] * v[CI(c, hk, b, j, x, c->hkv)];
            }
            p = exp(s * scale - L);
            ds = p * (dp - delta) * scale;
            for (x = 0; x < D; ++x) {
              dq[CI(c, h, b, i, x, c->hq)] += ds * k[CI(c, hk, b, j, x, c->hkv)];
              dk[CI(c, hk, b, j, x, c->hkv)] += ds * q[CI(c, h, b, i, x, c->hq)];
              dv[CI(c, hk, b, j, x, c->hkv)] += p * dout[CI(c, h, b, i, x, c->hq)];
            }
          }
      }
    }
}

/* ---- the schedule's byte rules with a brute-force needs matrix ------------- */
static inline void vref_reference(const vcase *c, const double *q, const double *k, const double *v, const double *dout,
                                  double *out, double *lse, double *dq, double *dk, double *dv) {
  vref_reference_given_out(c, q, k, v, dout, NULL, out, lse, dq, dk, dv);
}

static inline void vref_expected_bytes(const vcase *c, int64_t *const *pos, const int64_t *cnt, int P, int rank,
                                       uint64_t *fs, uint64_t *fr, uint64_t *bs, uint64_t *br) {
  int needs[16][16];
  int a, b, t, s, j;
  int64_t x, y;
  for (a = 0; a < P; ++a)
    for (b = 0; b < P; ++b) {
      needs[a][b] = 0;
      for (x = 0; x < cnt[a] && !needs[a][b]; ++x)
        for (y = 0; y < cnt[b]; ++y)
          if (vref_visible(c, pos[a][x], pos[b][y])) { needs[a][b] = 1; break; }
    }
  *fs = *fr = *bs = *br = 0;
  for (s = 0; s < P; ++s) { /* forward: block s goes up to the last rank that needs it */
    int last = 0;
    uint64_t bytes = 4u * 2u * (uint64_t)(c->batch * c->hkv * cnt[s] * c->d);
    for (t = 1; t < P; ++t) if (needs[(s + t) % P][s]) last = t;
    for (t = 0; t < last; ++t) {
      if ((s + t) % P == rank) *fs += bytes;
      if ((s + t + 1) % P == rank) *fr += bytes;
    }
  }
  for (j = 0; j < P; ++j) { /* backward: owner j's bundle, then dQ home */
    int last = 0;
    uint64_t zn = (uint64_t)(c->batch * c->hq * cnt[j]);
    uint64_t hop = 4u * zn * (uint64_t)(3 * c->d + 2), dq = 4u * zn * (uint64_t)c->d;
    if (cnt[j] > 0)
      for (t = 1; t < P; ++t) if (needs[j][(j + t) % P]) last = t;
    for (t = 0; t < last; ++t) {
      if ((j + t) % P == rank) *bs += hop;
      if ((j + t + 1) % P == rank) *br += hop;
    }
    if (last >= 1) {
      if ((j + last) % P == rank) *bs += dq;
      if (j == rank) *br += dq;
    }
  }
}

#endif /* BURST_TESTS_VARIANT_REFERENCE_H */
