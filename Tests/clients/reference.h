/*
 * reference.h — header-only float64 reference for the libburst_attention
 * client tests (C99 and C++17).
 *
 * Everything here is deliberately simple and slow: full-sequence attention in
 * double precision, computed identically on every rank from deterministic
 * inputs, so each rank can check its own shard of the library's results.
 *
 * Tensors handled here are *global* (all N tokens) in either layout:
 *   BSHD: [batch, seq, heads, head_dim]      (REF_LAYOUT_BSHD = 0)
 *   BHSD: [batch, heads, seq, head_dim]      (REF_LAYOUT_BHSD = 1)
 * lse is [batch, heads, seq].  The layout values equal BURST_LAYOUT_*.
 * Masks: REF_MASK_NONE = 0, REF_MASK_CAUSAL = 1 (equal to BURST_MASK_*).
 * Multi-head attention only (kv heads == q heads).
 *
 * A query row that sees no key gets out = 0, lse = -inf and zero gradients.
 *
 * All functions are `static inline` so that unused ones do not trigger
 * -Wunused-function; none allocates memory.
 */
#ifndef BURST_TESTS_REFERENCE_H
#define BURST_TESTS_REFERENCE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define REF_LAYOUT_BSHD 0
#define REF_LAYOUT_BHSD 1
#define REF_MASK_NONE 0
#define REF_MASK_CAUSAL 1

/* Tensor ids for the input generator. */
#define REF_TENSOR_Q 1u
#define REF_TENSOR_K 2u
#define REF_TENSOR_V 3u
#define REF_TENSOR_DOUT 4u

typedef struct ref_shape {
  int layout;       /* REF_LAYOUT_* */
  int mask;         /* REF_MASK_* */
  int64_t batch;    /* B */
  int64_t heads;    /* H (q heads == kv heads) */
  int64_t seq;      /* N, the global sequence length */
  int64_t head_dim; /* D */
  double scale;     /* softmax scale, usually 1/sqrt(D) */
} ref_shape;

/* ---- indexing ----------------------------------------------------------- */

/* Flat index of element (b, s, h, d) in a tensor of `seq` tokens. */
static inline size_t ref_index(int layout, int64_t seq, int64_t heads,
                               int64_t head_dim, int64_t b, int64_t s,
                               int64_t h, int64_t d) {
  if (layout == REF_LAYOUT_BHSD)
    return (size_t)((((b * heads + h) * seq) + s) * head_dim + d);
  return (size_t)((((b * seq + s) * heads) + h) * head_dim + d);
}

/* Flat index of lse element (b, h, s) in a tensor of `seq` tokens. */
static inline size_t ref_lse_index(int64_t seq, int64_t heads, int64_t b,
                                   int64_t h, int64_t s) {
  return (size_t)((b * heads + h) * seq + s);
}

/* Number of elements of a q/k/v/out tensor with `seq` tokens. */
static inline size_t ref_tensor_elems(const ref_shape *sh, int64_t seq) {
  return (size_t)(sh->batch * seq * sh->heads * sh->head_dim);
}

static inline size_t ref_lse_elems(const ref_shape *sh, int64_t seq) {
  return (size_t)(sh->batch * sh->heads * seq);
}

/* ---- deterministic inputs ------------------------------------------------ */

static inline uint64_t ref_splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/* A value in [-1, 1] that depends only on (seed, tensor id, logical index).
 * The logical index is the BSHD flat index of the *global* tensor, so the
 * value of an element does not depend on the layout or on the sharding. */
static inline double ref_value(uint64_t seed, uint32_t tensor,
                               uint64_t logical_index) {
  uint64_t h = ref_splitmix64(seed ^ ((uint64_t)tensor << 56) ^
                              ref_splitmix64(logical_index));
  /* 53 random bits -> [0, 1) -> [-1, 1) */
  double u = (double)(h >> 11) * (1.0 / 9007199254740992.0);
  return 2.0 * u - 1.0;
}

/* Fills a global tensor (layout sh->layout, sh->seq tokens) with values of
 * scale `amplitude` (1.0 for unit-scale inputs). */
static inline void ref_fill(const ref_shape *sh, uint64_t seed,
                            uint32_t tensor, double amplitude, double *x) {
  int64_t b, s, h, d;
  for (b = 0; b < sh->batch; ++b)
    for (s = 0; s < sh->seq; ++s)
      for (h = 0; h < sh->heads; ++h)
        for (d = 0; d < sh->head_dim; ++d) {
          uint64_t logical = (uint64_t)((((b * sh->seq + s) * sh->heads) + h) *
                                            sh->head_dim + d);
          x[ref_index(sh->layout, sh->seq, sh->heads, sh->head_dim, b, s, h,
                      d)] = amplitude * ref_value(seed, tensor, logical);
        }
}

/* ---- attention ----------------------------------------------------------- */

static inline int ref_visible(const ref_shape *sh, int64_t i, int64_t j) {
  return sh->mask == REF_MASK_CAUSAL ? (j <= i) : 1;
}

static inline double ref_dot(const ref_shape *sh, const double *a,
                             const double *b, int64_t bi, int64_t hi,
                             int64_t i, int64_t j) {
  /* a[bi, i, hi, :] . b[bi, j, hi, :] */
  const int64_t D = sh->head_dim;
  size_t ia = ref_index(sh->layout, sh->seq, sh->heads, D, bi, i, hi, 0);
  size_t ib = ref_index(sh->layout, sh->seq, sh->heads, D, bi, j, hi, 0);
  double acc = 0.0;
  int64_t d;
  for (d = 0; d < D; ++d) acc += a[ia + (size_t)d] * b[ib + (size_t)d];
  return acc;
}

/* out: global tensor like q; lse: [batch, heads, seq]. */
static inline void ref_forward(const ref_shape *sh, const double *q,
                               const double *k, const double *v, double *out,
                               double *lse) {
  const int64_t N = sh->seq, H = sh->heads, D = sh->head_dim;
  int64_t b, h, i, j, d;
  for (b = 0; b < sh->batch; ++b)
    for (h = 0; h < H; ++h)
      for (i = 0; i < N; ++i) {
        size_t io = ref_index(sh->layout, N, H, D, b, i, h, 0);
        double m = -INFINITY, l = 0.0;
        for (d = 0; d < D; ++d) out[io + (size_t)d] = 0.0;
        for (j = 0; j < N; ++j)
          if (ref_visible(sh, i, j)) {
            double s = sh->scale * ref_dot(sh, q, k, b, h, i, j);
            if (s > m) m = s;
          }
        if (m == -INFINITY) { /* the row sees no key */
          lse[ref_lse_index(N, H, b, h, i)] = -INFINITY;
          continue;
        }
        for (j = 0; j < N; ++j)
          if (ref_visible(sh, i, j)) {
            double p = exp(sh->scale * ref_dot(sh, q, k, b, h, i, j) - m);
            size_t iv = ref_index(sh->layout, N, H, D, b, j, h, 0);
            l += p;
            for (d = 0; d < D; ++d) out[io + (size_t)d] += p * v[iv + (size_t)d];
          }
        for (d = 0; d < D; ++d) out[io + (size_t)d] /= l;
        lse[ref_lse_index(N, H, b, h, i)] = m + log(l);
      }
}

/* Gradients for loss = sum(out * dout); out and lse from ref_forward.
 * dq, dk, dv: global tensors like q (overwritten). */
static inline void ref_backward(const ref_shape *sh, const double *q,
                                const double *k, const double *v,
                                const double *out, const double *lse,
                                const double *dout, double *dq, double *dk,
                                double *dv) {
  const int64_t N = sh->seq, H = sh->heads, D = sh->head_dim;
  const size_t n = ref_tensor_elems(sh, N);
  int64_t b, h, i, j, d;
  memset(dq, 0, n * sizeof(double));
  memset(dk, 0, n * sizeof(double));
  memset(dv, 0, n * sizeof(double));
  for (b = 0; b < sh->batch; ++b)
    for (h = 0; h < H; ++h)
      for (i = 0; i < N; ++i) {
        const double li = lse[ref_lse_index(N, H, b, h, i)];
        size_t iq = ref_index(sh->layout, N, H, D, b, i, h, 0);
        double Di;
        if (li == -INFINITY) continue; /* no key: zero gradients */
        Di = ref_dot(sh, dout, out, b, h, i, i);
        for (j = 0; j < N; ++j)
          if (ref_visible(sh, i, j)) {
            size_t ik = ref_index(sh->layout, N, H, D, b, j, h, 0);
            double p = exp(sh->scale * ref_dot(sh, q, k, b, h, i, j) - li);
            double dp = ref_dot(sh, dout, v, b, h, i, j);
            double ds = p * (dp - Di);
            for (d = 0; d < D; ++d) {
              dq[iq + (size_t)d] += sh->scale * ds * k[ik + (size_t)d];
              dk[ik + (size_t)d] += sh->scale * ds * q[iq + (size_t)d];
              dv[ik + (size_t)d] += p * dout[iq + (size_t)d];
            }
          }
      }
}

/* ---- shards and errors ---------------------------------------------------- */

/* Copies tokens [start, start + n) of a global tensor into a local float
 * tensor of n tokens in the same layout. */
static inline void ref_shard(const ref_shape *sh, const double *global,
                             int64_t start, int64_t n, float *local) {
  const int64_t N = sh->seq, H = sh->heads, D = sh->head_dim;
  int64_t b, h, s, d;
  for (b = 0; b < sh->batch; ++b)
    for (s = 0; s < n; ++s)
      for (h = 0; h < H; ++h)
        for (d = 0; d < D; ++d)
          local[ref_index(sh->layout, n, H, D, b, s, h, d)] =
              (float)global[ref_index(sh->layout, N, H, D, b, start + s, h, d)];
}

/* max |x| over n values; NaN gives NaN. */
static inline double ref_max_abs(const double *x, size_t n) {
  double m = 0.0;
  size_t i;
  for (i = 0; i < n; ++i) {
    double a = fabs(x[i]);
    if (a != a) return a;
    if (a > m) m = a;
  }
  return m;
}

/* max |local - global shard| for a q-like tensor; NaN/Inf in the local
 * tensor gives +inf. */
static inline double ref_shard_error(const ref_shape *sh, const double *global,
                                     int64_t start, int64_t n,
                                     const float *local) {
  const int64_t N = sh->seq, H = sh->heads, D = sh->head_dim;
  double worst = 0.0;
  int64_t b, h, s, d;
  for (b = 0; b < sh->batch; ++b)
    for (s = 0; s < n; ++s)
      for (h = 0; h < H; ++h)
        for (d = 0; d < D; ++d) {
          double x = (double)local[ref_index(sh->layout, n, H, D, b, s, h, d)];
          double r = global[ref_index(sh->layout, N, H, D, b, start + s, h, d)];
          double e = fabs(x - r);
          if (!(e <= worst)) worst = (e == e) ? e : INFINITY;
        }
  return worst;
}

/* max |lse_local - lse_global shard|, where -inf equals -inf exactly; any
 * other non-finite disagreement (or NaN) gives +inf. */
static inline double ref_lse_error(const ref_shape *sh, const double *global,
                                   int64_t start, int64_t n,
                                   const float *local) {
  const int64_t N = sh->seq, H = sh->heads;
  double worst = 0.0;
  int64_t b, h, s;
  for (b = 0; b < sh->batch; ++b)
    for (h = 0; h < H; ++h)
      for (s = 0; s < n; ++s) {
        double x = (double)local[ref_lse_index(n, H, b, h, s)];
        double r = global[ref_lse_index(N, H, b, h, start + s)];
        double e;
        if (x == -INFINITY && r == -INFINITY) continue;
        e = fabs(x - r);
        if (!(e <= worst)) worst = (e == e) ? e : INFINITY;
      }
  return worst;
}

/* Copies lse of tokens [start, start + n) into a local float array. */
static inline void ref_shard_lse(const ref_shape *sh, const double *global,
                                 int64_t start, int64_t n, float *local) {
  int64_t b, h, s;
  for (b = 0; b < sh->batch; ++b)
    for (h = 0; h < sh->heads; ++h)
      for (s = 0; s < n; ++s)
        local[ref_lse_index(n, sh->heads, b, h, s)] =
            (float)global[ref_lse_index(sh->seq, sh->heads, b, h, start + s)];
}

/* ---- communication volume of the BURST pattern ----------------------------
 * n[0..P-1] are the shard sizes, Z = batch * heads, d = head_dim; bytes of
 * fp32 payload.  Forward: K and V travel P-1 hops.  Backward: Q, dO, D, lse
 * and the partial dQ travel P-1 hops, then dQ makes one last hop home.
 *
 * ref_burst_fwd_sent / _received are the closed forms with every block
 * passed on at every hop:
 *   sent_r     = 4 * 2Zd * sum_{t=0}^{P-2} n_{(r-t) mod P}
 *   received_r = 4 * 2Zd * sum_{t=1}^{P-1} n_{(r-t) mod P}
 * The library skips passing a K,V block on when no rank further along the
 * ring needs it (DESIGN.md 1, "Masks and load balance"; with mask NONE that
 * happens only when the ranks ahead hold no tokens).  ref_burst_fwd_*_skipping
 * count exactly that; they equal the closed forms for mask NONE when no
 * shard is empty. */
static inline uint64_t ref_burst_fwd_sent(const int64_t *n, int P, int r,
                                          int64_t Z, int64_t d) {
  uint64_t sum = 0;
  int t;
  for (t = 0; t <= P - 2; ++t) sum += (uint64_t)n[((r - t) % P + P) % P];
  return 4u * 2u * (uint64_t)Z * (uint64_t)d * sum;
}

static inline uint64_t ref_burst_fwd_received(const int64_t *n, int P, int r,
                                              int64_t Z, int64_t d) {
  uint64_t sum = 0;
  int t;
  for (t = 1; t <= P - 1; ++t) sum += (uint64_t)n[((r - t) % P + P) % P];
  return 4u * 2u * (uint64_t)Z * (uint64_t)d * sum;
}

/* 1 when some query of rank q sees some key of rank k (contiguous shards). */
static inline int ref_shard_needs(const int64_t *n, int q, int k, int mask) {
  int64_t off_q = 0, off_k = 0;
  int i;
  if (n[q] == 0 || n[k] == 0) return 0;
  if (mask != REF_MASK_CAUSAL) return 1;
  for (i = 0; i < q; ++i) off_q += n[i];
  for (i = 0; i < k; ++i) off_k += n[i];
  return off_k <= off_q + n[q] - 1; /* first key <= last query */
}

/* At hop `hop` the K,V block of rank `source` sits on `holder`; it is passed
 * on when one of the next P-1-hop ranks needs it. */
static inline int ref_forwards_block(const int64_t *n, int P, int holder,
                                     int source, int hop, int mask) {
  int ahead;
  if (hop >= P - 1) return 0;
  for (ahead = 1; ahead <= P - 1 - hop; ++ahead)
    if (ref_shard_needs(n, (holder + ahead) % P, source, mask)) return 1;
  return 0;
}

static inline uint64_t ref_burst_fwd_sent_skipping(const int64_t *n, int P,
                                                   int r, int64_t Z, int64_t d,
                                                   int mask) {
  uint64_t sum = 0;
  int t;
  for (t = 0; t <= P - 2; ++t) {
    int src = ((r - t) % P + P) % P;
    if (ref_forwards_block(n, P, r, src, t, mask)) sum += (uint64_t)n[src];
  }
  return 4u * 2u * (uint64_t)Z * (uint64_t)d * sum;
}

static inline uint64_t ref_burst_fwd_received_skipping(const int64_t *n, int P,
                                                       int r, int64_t Z,
                                                       int64_t d, int mask) {
  uint64_t sum = 0;
  int t;
  for (t = 0; t <= P - 2; ++t) {
    int prev = ((r - 1) % P + P) % P, incoming = ((r - t - 1) % P + P) % P;
    if (ref_forwards_block(n, P, prev, incoming, t, mask))
      sum += (uint64_t)n[incoming];
  }
  return 4u * 2u * (uint64_t)Z * (uint64_t)d * sum;
}

/* Backward (0.2): the query bundle of owner j travels j -> j+1 -> ... only as
 * far as the last rank j + last(j) that needs it (last(j) = the largest
 * t in 1..P-1 with needs(j, j + t), 0 if none); at every hop t < last(j) it
 * carries [Q|dO|D|lse] (Z n_j (2d+2) floats) and the partial dQ (Z n_j d),
 * and rank j + last(j) sends dQ_j home (Z n_j d floats). */
static inline int ref_bwd_last_step(const int64_t *n, int P, int owner, int mask) {
  int t;
  if (n[owner] == 0) return 0;
  for (t = P - 1; t >= 1; --t)
    if (ref_shard_needs(n, owner, (owner + t) % P, mask)) return t;
  return 0;
}

static inline uint64_t ref_burst_bwd_bytes(const int64_t *n, int P, int r,
                                           int64_t Z, int64_t d, int mask,
                                           int received) {
  uint64_t sum = 0;
  int j;
  for (j = 0; j < P; ++j) {
    int last = ref_bwd_last_step(n, P, j, mask);
    int t = ((r - j) % P + P) % P; /* rank r is owner j's hop t */
    uint64_t nj = (uint64_t)n[j];
    if (!received) {
      if (t < last) sum += (uint64_t)(3 * d + 2) * nj;
      if (last >= 1 && t == last) sum += (uint64_t)d * nj;
    } else {
      if (t >= 1 && t <= last) sum += (uint64_t)(3 * d + 2) * nj;
      if (last >= 1 && r == j) sum += (uint64_t)d * nj;
    }
  }
  return 4u * (uint64_t)Z * sum;
}

static inline uint64_t ref_burst_bwd_sent(const int64_t *n, int P, int r,
                                          int64_t Z, int64_t d, int mask) {
  return ref_burst_bwd_bytes(n, P, r, Z, d, mask, 0);
}

static inline uint64_t ref_burst_bwd_received(const int64_t *n, int P, int r,
                                              int64_t Z, int64_t d, int mask) {
  return ref_burst_bwd_bytes(n, P, r, Z, d, mask, 1);
}

/* Mask NONE, every shard non-empty: the closed form (P-1)(3d+2)n + d n per
 * owner pass, a check of the skip-aware rule above. */
static inline uint64_t ref_burst_bwd_sent_dense(const int64_t *n, int P, int r,
                                                int64_t Z, int64_t d) {
  uint64_t sum = 0;
  int t;
  if (P <= 1) return 0;
  for (t = 0; t <= P - 2; ++t)
    sum += (uint64_t)(3 * d + 2) * (uint64_t)n[((r - t) % P + P) % P];
  sum += (uint64_t)d * (uint64_t)n[(r + 1) % P];
  return 4u * (uint64_t)Z * sum;
}

#endif /* BURST_TESTS_REFERENCE_H */
