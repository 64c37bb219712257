/*
 * variant_reference.h — float64 reference for every 0.2 variant, shared by
 * c_variants.c (C99) and cpp_client.cpp (C++17): the header's visibility rule
 * written out (causal, windows, packing), GQA, inputs, and the schedule's
 * exact byte rules over a brute-force needs matrix. Canonical tensors are
 * [batch][heads][N][head_dim] doubles. Since 0.8 the reference also takes
 * the score modifiers (softcap, sinks) and gives dL/d sinks
 * (vref_reference_mods).
 */
#ifndef BURST_TESTS_VARIANT_REFERENCE_H
#define BURST_TESTS_VARIANT_REFERENCE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "burst_attention.h"

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

/* canonical [b][h][t][x] (double) -> the user's layout (BSHD or BHSD), as float
 * (f) and/or double (dd); either may be NULL. */
static inline void vref_to_user(const vcase *c, int64_t H, const double *canon, float *f, double *dd) {
  int64_t b, h, t, x;
  for (b = 0; b < c->batch; ++b)
    for (h = 0; h < H; ++h)
      for (t = 0; t < c->N; ++t)
        for (x = 0; x < c->d; ++x) {
          size_t u = c->layout == BURST_LAYOUT_BHSD ? (((size_t)b * H + h) * c->N + t) * c->d + x
                                                    : (((size_t)b * c->N + t) * H + h) * c->d + x;
          double val = canon[CI(c, h, b, t, x, H)];
          if (f) f[u] = (float)val;
          if (dd) dd[u] = val;
        }
}

/* Score modifiers (0.8): logit soft-capping and attention sinks.
 *  softcap c > 0: the scaled score s becomes x = c * tanh(s / c); the
 *    backward multiplies dS by its derivative 1 - (x / c)^2.
 *  sinks: one logit s_h per query head (NULL = none); exp(s_h) joins every
 *    softmax denominator of head h: lse = log(sum_j exp(x_j) + exp(s_h)), so
 *    a row that sees no key has out = 0 and lse = s_h; dL/ds_h =
 *    -sum_i exp(s_h - lse_i) * D_i.
 * Both are what the library is given: the float values, widened. */
typedef struct vmods {
  double softcap;        /* 0 = off */
  const double *sinks;   /* NULL = none; else c->hq logits */
} vmods;

static inline double vref_capped(const vmods *m, double s) {
  return m && m->softcap > 0 ? m->softcap * tanh(s / m->softcap) : s;
}

/* The float64 reference with modifiers (mods may be NULL: none).
 * D = rowsum(dout * given_out) when given_out is not NULL (a backward handed
 * a rounded out, as with bf16/fp16 storage or bf16 products), else the
 * reference's own out. out, dq, dk, dv must be zeroed by the caller (they
 * are accumulated). dsinks (may be NULL; c->hq values, overwritten) receives
 * dL/ds_h summed over every batch row and query; dsink_rows (may be NULL;
 * canonical [b][h][t] like lse, overwritten) receives each row's term
 * -exp(s_h - lse_i) * D_i, so a rank's partial is the sum over its rows. */
static inline void vref_reference_mods(const vcase *c, const vmods *mods, const double *q, const double *k,
                                       const double *v, const double *dout, const double *given_out, double *out,
                                       double *lse, double *dq, double *dk, double *dv, double *dsinks,
                                       double *dsink_rows) {
  const int64_t g = c->hq / c->hkv, N = c->N, D = c->d;
  const double scale = 1.0 / sqrt((double)D);
  const double *sinks = mods ? mods->sinks : NULL;
  int64_t b, h, i, j, x;
  if (dsinks)
    for (h = 0; h < c->hq; ++h) dsinks[h] = 0;
  for (b = 0; b < c->batch; ++b)
    for (h = 0; h < c->hq; ++h) {
      const int64_t hk = h / g;
      for (i = 0; i < N; ++i) {
        const size_t row = ((size_t)b * c->hq + h) * N + i;
        double m = sinks ? sinks[h] : -INFINITY, l = 0, delta = 0, L;
        for (j = 0; j < N; ++j)
          if (vref_visible(c, i, j)) {
            double s = 0;
            for (x = 0; x < D; ++x) s += q[CI(c, h, b, i, x, c->hq)] * k[CI(c, hk, b, j, x, c->hkv)];
            s = vref_capped(mods, s * scale);
            if (s > m) m = s;
          }
        if (dsink_rows) dsink_rows[row] = 0;
        if (m == -INFINITY) { lse[row] = -INFINITY; continue; }
        for (j = 0; j < N; ++j)
          if (vref_visible(c, i, j)) {
            double s = 0, p;
            for (x = 0; x < D; ++x) s += q[CI(c, h, b, i, x, c->hq)] * k[CI(c, hk, b, j, x, c->hkv)];
            p = exp(vref_capped(mods, s * scale) - m);
            l += p;
            for (x = 0; x < D; ++x) out[CI(c, h, b, i, x, c->hq)] += p * v[CI(c, hk, b, j, x, c->hkv)];
          }
        if (sinks) l += exp(sinks[h] - m);
        for (x = 0; x < D; ++x) out[CI(c, h, b, i, x, c->hq)] /= l;
        L = m + log(l);
        lse[row] = L;
        for (x = 0; x < D; ++x)
          delta += dout[CI(c, h, b, i, x, c->hq)] * (given_out ? given_out : out)[CI(c, h, b, i, x, c->hq)];
        if (sinks) {
          const double term = -exp(sinks[h] - L) * delta;
          if (dsinks) dsinks[h] += term;
          if (dsink_rows) dsink_rows[row] = term;
        }
        for (j = 0; j < N; ++j)
          if (vref_visible(c, i, j)) {
            double s = 0, dp = 0, p, ds, xc;
            for (x = 0; x < D; ++x) {
              s += q[CI(c, h, b, i, x, c->hq)] * k[CI(c, hk, b, j, x, c->hkv)];
              dp += dout[CI(c, h, b, i, x, c->hq)] * v[CI(c, hk, b, j, x, c->hkv)];
            }
            xc = vref_capped(mods, s * scale);
            p = exp(xc - L);
            ds = p * (dp - delta) * scale;
            if (mods && mods->softcap > 0) ds *= 1.0 - (xc / mods->softcap) * (xc / mods->softcap);
            for (x = 0; x < D; ++x) {
              dq[CI(c, h, b, i, x, c->hq)] += ds * k[CI(c, hk, b, j, x, c->hkv)];
              dk[CI(c, hk, b, j, x, c->hkv)] += ds * q[CI(c, h, b, i, x, c->hq)];
              dv[CI(c, hk, b, j, x, c->hkv)] += p * dout[CI(c, h, b, i, x, c->hq)];
            }
          }
      }
    }
}

/* As vref_reference, but D = rowsum(dout * given_out) when given_out is not
 * NULL (a backward handed a rounded out, as with bf16/fp16 storage). */
static inline void vref_reference_given_out(const vcase *c, const double *q, const double *k, const double *v,
                                            const double *dout, const double *given_out, double *out, double *lse,
                                            double *dq, double *dk, double *dv) {
  vref_reference_mods(c, NULL, q, k, v, dout, given_out, out, lse, dq, dk, dv, NULL, NULL);
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

/* The largest |got - want| (a NaN counts as infinite; equal values, infinities
 * included, as 0), and the largest |x|: the clients' error and scale. */
static inline double max_err(const float *got, const double *want, size_t n) {
  double worst = 0;
  size_t i;
  for (i = 0; i < n; ++i) {
    double e = (got[i] == want[i]) ? 0 : fabs((double)got[i] - want[i]);
    if (e != e) e = INFINITY;
    if (e > worst) worst = e;
  }
  return worst;
}

static inline double max_abs(const double *x, size_t n) {
  double m = 0;
  size_t i;
  for (i = 0; i < n; ++i) if (fabs(x[i]) > m) m = fabs(x[i]);
  return m;
}

#endif /* BURST_TESTS_VARIANT_REFERENCE_H */
