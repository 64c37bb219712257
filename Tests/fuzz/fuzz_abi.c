/*
 * fuzz_abi.c — a libFuzzer harness for the C ABI of libburst_attention
 * (include/burst_attention.h). Build and run it with scripts/fuzz.sh.
 *
 * Each input is decoded into a little program:
 *   - a context kind: self, or a loopback group of 1-3 ranks (each rank
 *     driven by its own thread, as the header requires), or none (helpers
 *     only), sometimes preceded by bad burst_context_create_* calls;
 *   - two config variants, each a base config plus, per rank, the fields
 *     that may differ (seq_len_local, num_threads, timeout_seconds) and
 *     sometimes one field mutated on one rank; every field is drawn from
 *     valid and invalid values (out-of-range enums, negative / huge /
 *     overflowing sizes, NaN / Inf scales and timeouts, struct_size off by a
 *     few or random, cu_seqlens valid / invalid / NULL with num_sequences
 *     mismatches, windows, GQA, dtypes, patterns incl. AUTO, distributions,
 *     num_threads, intra_group_size, compute, softcap (0, valid, negative,
 *     NaN, inf) and sinks (NULL, ordinary, huge finite, one NaN / inf; set
 *     only when num_heads_q <= SINK_CAP so the array always holds
 *     num_heads_q values); the 0.4-0.6 struct_size, whose config ends before
 *     compute, and the 0.7 one, which ends before sinks);
 *   - up to 16 operations run in the same order on every rank (plan_create,
 *     forward, backward with lse/out from a forward or garbage, plan_stats
 *     with random struct_size, plan_destroy, context_rank, the shard helpers,
 *     status_string, last_error, an early context destroy, two threads on
 *     one plan, deliberately divergent collective calls, and (0.8)
 *     burst_plan_set_sinks with valid / NULL / NaN / inf / rank-dependent
 *     values and burst_plan_sinks_gradient).
 * Ranks pass a barrier after every operation, so every operation's outcome
 * can be compared across ranks.
 *
 * Oracles (a violation prints "FUZZ ORACLE" and the program, then aborts, so
 * libFuzzer records the input). Each is something the header promises:
 *   O1 every status is a burst_status value; every failure comes with a
 *      non-empty burst_last_error(); status_string / last_error / build_info
 *      never return NULL; status_string names known values and gives
 *      "BURST_ERROR_UNKNOWN" for the rest; burst_version() matches the header.
 *   O2 collective calls agree on their outcome class (OK vs not OK) on every
 *      rank. A TIMEOUT cannot be made to agree in general (see README.md in
 *      this directory): an operation in which some rank timed out is exempt,
 *      and counted; FUZZ_STRICT_TIMEOUT=1 makes it an oracle too.
 *   O3 expected outcomes derived from the header's rules: a config valid by
 *      every documented rule, consistent across ranks and with valid global
 *      conditions must give OK (or TIMEOUT); a documented-invalid field must
 *      fail on every rank (INVALID_ARGUMENT on the rank that has it); one
 *      agreed field differing across ranks gives MISMATCH on every rank with
 *      a message naming the field; ULYSSES with num_heads_kv not divisible by
 *      the world gives UNSUPPORTED; forward/backward with a NULL non-empty
 *      buffer fails everywhere; after TIMEOUT a plan returns that error.
 *      0.8: softcap must be 0 or finite and > 0, sinks finite; after
 *      burst_plan_set_sinks with a NaN / inf on some rank (that call
 *      INVALID_ARGUMENT there) forward and backward fail with
 *      INVALID_ARGUMENT on every rank, with values differing by rank with
 *      MISMATCH on every rank; burst_plan_sinks_gradient is OK exactly when
 *      the last backward since plan_create / set_sinks succeeded with sinks
 *      (a failed backward clears it), and then gives that backward's values.
 *   O4 numerics: a successful forward with unit-scale inputs matches a
 *      float64 reference (out 1e-5·max|ref| plus the storage rounding, lse
 *      1e-4); a successful backward on a forward's out/lse matches the
 *      float64 gradients (1e-4·max|ref| plus rounding); with bf16 products
 *      (compute FAST, or DEFAULT with BF16) the reference takes q, k, v, dout
 *      rounded to bf16 and the FAST bounds of Tests/clients/variant_reference.h
 *      apply instead; with tame (finite,
 *      moderate) inputs out, lse and (fp32/bf16) gradients are finite; two
 *      identical calls give bitwise identical results. 0.8: the reference
 *      caps the scores (c * tanh(s / c)) and adds exp(s_h) to every
 *      denominator; each rank's dL/d sinks partial is checked against the
 *      reference's sum over that rank's rows (gradient tolerance plus a
 *      cancellation floor over the terms' absolute values).
 *   O5 memory: no byte past any caller buffer is written (guard bytes), no
 *      input buffer is modified, plan_stats writes nothing past the
 *      struct_size it was given; the shard helpers agree with the header's
 *      distribution rules (positions, counts, rows copied, others untouched).
 *   O6 time: no call takes longer than its timeout plus FUZZ_TIME_MARGIN
 *      seconds (default 5); libFuzzer's -timeout catches the rest.
 * Leaks are found by libFuzzer's -detect_leaks (LeakSanitizer).
 *
 * Bounds that keep one execution at milliseconds: real tensors only up to
 * 16K elements (above that the calls are made with NULL buffers), reference
 * checks only up to a few million multiply-adds, short timeouts whenever a
 * rank may be left waiting (divergent calls).
 * Environment: FUZZ_VERBOSE=1 prints each decoded program and every status.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "burst_attention.h"
#include "../clients/variant_reference.h" /* VREF_FAST_*: the FAST bounds */

/* ------------------------------------------------------------------------ */
/* Limits                                                                    */
#define MAXR 3          /* loopback ranks */
#define MAXOPS 16
#define NSLOTS 2        /* plan slots per rank */
#define NCFG 2          /* config variants per program */
#define CU_CAP 8        /* cu_seqlens storage: up to 7 sequences */
#define CFG_BUF 512     /* bytes behind each config (struct_size may claim up to this) */
#define ELEM_CAP 16384  /* real tensors up to this many elements */
#define REF_CAP 4000000 /* reference multiply-adds per check */
#define GUARD 64        /* guard bytes after every buffer */
#define SHARD_BYTES_CAP (1 << 20)
#define SINK_CAP 64     /* sinks only for plans of up to this many query heads */

static int g_verbose = 0, g_strict_timeout = 0, g_huge_plans = 0;
static double g_margin = 5.0;
static uint64_t g_execs = 0, g_timeout_exempt = 0, g_ref_checks = 0, g_bwd_ref_checks = 0, g_huge_skipped = 0;
static uint64_t g_sink_ref_checks = 0, g_cap_ref_checks = 0; /* 0.8: reference checks with sinks / softcap */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* Failure reporting                                                         */
static char g_prog_text[16384];
static size_t g_prog_len = 0;
static pthread_mutex_t g_die_lock = PTHREAD_MUTEX_INITIALIZER;

static void note(const char *fmt, ...) {
  va_list ap;
  if (g_prog_len >= sizeof g_prog_text - 1) return;
  va_start(ap, fmt);
  int n = vsnprintf(g_prog_text + g_prog_len, sizeof g_prog_text - g_prog_len, fmt, ap);
  va_end(ap);
  if (n > 0) g_prog_len += (size_t)n;
  if (g_prog_len > sizeof g_prog_text - 1) g_prog_len = sizeof g_prog_text - 1;
}

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...) {
  va_list ap;
  pthread_mutex_lock(&g_die_lock);
  fprintf(stderr, "\n==== FUZZ ORACLE VIOLATION: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n==== program:\n%.*s\n", (int)g_prog_len, g_prog_text);
  fflush(stderr);
  abort();
}

/* ------------------------------------------------------------------------ */
/* Input reader: past the end every read gives 0, and 0 always decodes to the
 * most ordinary valid choice, so short inputs are ordinary programs. The
 * operations are read from the front of the input, the configs from the
 * back (backwards), so both get bytes even from short inputs and a mutation
 * of one rarely shifts the other.                                          */
typedef struct { const uint8_t *p; size_t n, i; int back; } rd_t;
static unsigned rd_u8(rd_t *r) {
  if (r->i >= r->n) return 0;
  return r->back ? r->p[r->n - 1 - r->i++] : r->p[r->i++];
}
static uint64_t rd_bytes(rd_t *r, int k) {
  uint64_t v = 0;
  for (int j = 0; j < k; ++j) v |= (uint64_t)rd_u8(r) << (8 * j);
  return v;
}
/* A rare event: false for 0. */
static int rd_rare(rd_t *r, unsigned percent) { return rd_u8(r) % 100 >= 100 - percent; }

static uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

static const int64_t k_weird_i64[24] = {
  0, -1, -2, INT64_MIN, INT64_MAX, INT64_MAX - 1, 1ll << 31, (1ll << 31) - 1,
  1ll << 32, (1ll << 32) + 1, 1ll << 46, (1ll << 46) + 1, 1ll << 62, 65536, 65537,
  1ll << 23, 1ll << 40, -(1ll << 32), 3037000500ll, 1ll << 20, INT32_MAX, INT32_MIN,
  100000, 1ll << 33};

/* A positive count up to `max`, or (rarely) a weird value. */
static int64_t gen_count(rd_t *r, int64_t max) {
  unsigned s = rd_u8(r);
  if (s < 232) return 1 + (int64_t)(s % (unsigned)max);
  return k_weird_i64[s - 232];
}

static const int32_t k_weird_enum[16] = {-1, INT32_MIN, INT32_MAX, 255, 256, 1 << 16, -2, 1000,
                                         3, 4, 5, 6, 7, 8, 16, 2};
static int32_t gen_enum(rd_t *r, int nvalid) {
  unsigned s = rd_u8(r);
  if (s < 240) return (int32_t)(s % (unsigned)nvalid);
  return k_weird_enum[s - 240];
}

/* ------------------------------------------------------------------------ */
/* Storage types: values are generated as bit patterns of the dtype.         */
static size_t esize(int32_t dtype) { return dtype == BURST_DTYPE_F32 ? 4 : 2; }

static double f16_to_double(uint16_t h) {
  int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 0) v = ldexp((double)m, -24);
  else if (e == 31) v = m ? NAN : INFINITY;
  else v = ldexp((double)(m | 1024), e - 25);
  return s ? -v : v;
}
static double elem_get(const void *buf, int32_t dtype, size_t i) {
  if (dtype == BURST_DTYPE_F32) return (double)((const float *)buf)[i];
  uint16_t h = ((const uint16_t *)buf)[i];
  if (dtype == BURST_DTYPE_BF16) {
    uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, 4);
    return (double)f;
  }
  return f16_to_double(h);
}
/* An input of the reference: as stored, or rounded to bf16 (nearest even)
 * where the plan runs bf16 products (FAST rounds q, k, v and dout). */
static double elem_in(const void *buf, int32_t dtype, size_t i, int bf16_products) {
  double x = elem_get(buf, dtype, i);
  if (bf16_products && dtype != BURST_DTYPE_BF16) {
    float f = (float)x;
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) <= 0x7F800000u) u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    memcpy(&f, &u, 4);
    x = (double)f;
  }
  return x;
}
static int elem_finite(const void *buf, int32_t dtype, size_t i) {
  if (dtype == BURST_DTYPE_F32) return isfinite(((const float *)buf)[i]);
  uint16_t h = ((const uint16_t *)buf)[i];
  if (dtype == BURST_DTYPE_BF16) return ((h >> 7) & 0xFF) != 0xFF;
  return ((h >> 10) & 0x1F) != 0x1F;
}

enum { IN_UNIT = 0, IN_LARGE = 1, IN_SPECIAL = 2, IN_BITS = 3 };
/* One element's bit pattern. IN_UNIT: |x| in [2^-6, 2) or 0; IN_LARGE: up to
 * 2^5; IN_SPECIAL: unit values with NaN, +-Inf, the largest finite value,
 * subnormals and -0 sprinkled in; IN_BITS: any bit pattern. */
static uint32_t gen_bits(uint64_t x, int32_t dtype, int mode) {
  int ebits = dtype == BURST_DTYPE_F16 ? 5 : 8;
  int mbits = dtype == BURST_DTYPE_F32 ? 23 : dtype == BURST_DTYPE_BF16 ? 7 : 10;
  int bias = (1 << (ebits - 1)) - 1, emax = (1 << ebits) - 1;
  uint32_t sign = (uint32_t)(x >> 63), mant = (uint32_t)(x & ((1u << mbits) - 1));
  unsigned sel = (unsigned)((x >> 40) & 0xFF);
  int e;
  if (mode == IN_BITS) {
    uint32_t all = (uint32_t)(x >> 8);
    return dtype == BURST_DTYPE_F32 ? all : (all & 0xFFFF);
  }
  if (mode == IN_SPECIAL && sel < 24) {
    switch (sel % 6) {
      case 0: return ((uint32_t)emax << mbits) | 1u | (sign << (ebits + mbits));       /* NaN */
      case 1: return ((uint32_t)emax << mbits) | (sign << (ebits + mbits));            /* Inf */
      case 2: return (((uint32_t)emax - 1) << mbits) | ((1u << mbits) - 1) | (sign << (ebits + mbits)); /* max */
      case 3: return (mant | 1u) | (sign << (ebits + mbits));                          /* subnormal */
      case 4: return 1u << (ebits + mbits);                                             /* -0 */
      default: return 0;
    }
  }
  if (sel >= 248) return 0;
  if (mode == IN_LARGE) e = bias - 6 + (int)((x >> 48) % 12);      /* 2^-6 .. 2^5 */
  else e = bias - 6 + (int)((x >> 48) % 7);                        /* 2^-6 .. 2^0 */
  return (sign << (ebits + mbits)) | ((uint32_t)e << mbits) | mant;
}

static void fill_tensor(void *buf, size_t n, int32_t dtype, uint64_t seed, int mode) {
  for (size_t i = 0; i < n; ++i) {
    uint32_t b = gen_bits(mix64(seed ^ (i * 0x100000001B3ull)), dtype, mode);
    if (dtype == BURST_DTYPE_F32) ((uint32_t *)buf)[i] = b;
    else ((uint16_t *)buf)[i] = (uint16_t)b;
  }
}

/* A caller buffer with GUARD bytes behind it. */
typedef struct { uint8_t *p; size_t bytes; } buf_t;
static void buf_alloc(buf_t *b, size_t bytes, uint8_t fill) {
  b->bytes = bytes;
  b->p = malloc(bytes + GUARD);
  if (!b->p) die("harness malloc(%zu) failed", bytes + GUARD);
  memset(b->p, fill, bytes);
  memset(b->p + bytes, 0xA5, GUARD);
}
static void buf_free(buf_t *b) { free(b->p); b->p = NULL; b->bytes = 0; }
static void buf_check_guard(const buf_t *b, const char *what) {
  if (!b->p) return;
  for (size_t i = 0; i < GUARD; ++i)
    if (b->p[b->bytes + i] != 0xA5) die("%s: byte %zu past the end of the buffer was written", what, i);
}
static uint64_t hash_bytes(const void *p, size_t n) {
  const uint8_t *b = p;
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

/* ------------------------------------------------------------------------ */
/* The header's token distribution rules, written out independently.        */
static int64_t zz_chunk_len(int64_t L, int64_t P, int64_t c) {
  int64_t parts = 2 * P;
  return L / parts + (c < L % parts ? 1 : 0);
}
static int64_t zz_chunk_off(int64_t L, int64_t P, int64_t c) {
  int64_t parts = 2 * P, base = L / parts, extra = L % parts;
  return c * base + (c < extra ? c : extra);
}
/* Count of rank r for the helpers' rule (CONTIGUOUS: balanced split). */
static int64_t rule_count(int32_t dist, int64_t N, const int64_t *cu, int64_t nseq, int64_t P, int64_t r) {
  if (dist == BURST_DISTRIBUTION_CONTIGUOUS) return N / P + (r < N % P ? 1 : 0);
  if (dist == BURST_DISTRIBUTION_STRIPED) return r < N ? (N - r + P - 1) / P : 0;
  if (cu) {
    int64_t sum = 0;
    for (int64_t s = 0; s < nseq; ++s) {
      int64_t L = cu[s + 1] - cu[s];
      sum += zz_chunk_len(L, P, r) + zz_chunk_len(L, P, 2 * P - 1 - r);
    }
    return sum;
  }
  return zz_chunk_len(N, P, r) + zz_chunk_len(N, P, 2 * P - 1 - r);
}
/* Positions of rank r; counts (CONTIGUOUS split) may be NULL for the balanced one. */
static void rule_positions(int32_t dist, int64_t N, const int64_t *cu, int64_t nseq, int64_t P, int64_t r,
                           const int64_t *counts, int64_t *out) {
  int64_t k = 0;
  if (dist == BURST_DISTRIBUTION_CONTIGUOUS) {
    int64_t start = 0, n;
    if (counts) for (int64_t s = 0; s < r; ++s) start += counts[s];
    else start = r * (N / P) + (r < N % P ? r : N % P); /* balanced split, O(1) in P */
    n = counts ? counts[r] : rule_count(dist, N, cu, nseq, P, r);
    for (int64_t i = 0; i < n; ++i) out[k++] = start + i;
  } else if (dist == BURST_DISTRIBUTION_STRIPED) {
    for (int64_t t = r; t < N; t += P) out[k++] = t;
  } else {
    int64_t pieces = cu ? nseq : 1;
    for (int64_t s = 0; s < pieces; ++s) {
      int64_t start = cu ? cu[s] : 0, L = cu ? cu[s + 1] - cu[s] : N;
      int64_t cs[2] = {r, 2 * P - 1 - r};
      for (int j = 0; j < 2; ++j) {
        int64_t off = zz_chunk_off(L, P, cs[j]), len = zz_chunk_len(L, P, cs[j]);
        for (int64_t i = 0; i < len; ++i) out[k++] = start + off + i;
      }
    }
  }
}
/* The visibility rule of the header. */
static int visible(int causal, int64_t wl, int64_t wr, const int64_t *cu, int64_t nseq, int64_t i, int64_t j) {
  if (causal && j > i) return 0;
  /* positions are in [0, N): differences cannot overflow, sums could */
  if (wl >= 0 && i - j > wl) return 0;
  if (wr >= 0 && j - i > wr) return 0;
  if (cu) {
    int64_t si = -1, sj = -1;
    for (int64_t s = 0; s < nseq; ++s) {
      if (i >= cu[s] && i < cu[s + 1]) si = s;
      if (j >= cu[s] && j < cu[s + 1]) sj = s;
    }
    if (si != sj) return 0;
  }
  return 1;
}

/* ------------------------------------------------------------------------ */
/* Program                                                                   */
enum {
  OP_PLAN_CREATE, OP_FORWARD, OP_BACKWARD, OP_STATS, OP_PLAN_DESTROY, OP_CTX_RANK, OP_SHARD,
  OP_STATUS_STRING, OP_LAST_ERROR, OP_CTX_DESTROY, OP_CONCURRENT, OP_DIVERGE, OP_SET_SINKS, OP_SINKS_GRAD, OP_KINDS
};
static const char *k_op_names[OP_KINDS] = {"plan_create", "forward", "backward", "plan_stats",
                                           "plan_destroy", "context_rank", "shard", "status_string",
                                           "last_error", "context_destroy", "concurrent", "diverge", "set_sinks",
                                           "sinks_gradient"};
/* Weights: 64 entries (0.8: four forwards became set_sinks / sinks_gradient). */
static const uint8_t k_op_table[64] = {
  OP_FORWARD, OP_PLAN_CREATE, OP_BACKWARD, OP_FORWARD, OP_SHARD, OP_STATS, OP_SET_SINKS, OP_PLAN_CREATE,
  OP_BACKWARD, OP_FORWARD, OP_PLAN_CREATE, OP_SHARD, OP_FORWARD, OP_BACKWARD, OP_PLAN_DESTROY, OP_FORWARD,
  OP_PLAN_CREATE, OP_STATS, OP_BACKWARD, OP_SHARD, OP_FORWARD, OP_CTX_RANK, OP_PLAN_CREATE, OP_BACKWARD,
  OP_FORWARD, OP_SHARD, OP_STATUS_STRING, OP_SINKS_GRAD, OP_PLAN_CREATE, OP_BACKWARD, OP_DIVERGE, OP_STATS,
  OP_FORWARD, OP_PLAN_DESTROY, OP_SHARD, OP_BACKWARD, OP_CONCURRENT, OP_SINKS_GRAD, OP_PLAN_CREATE, OP_LAST_ERROR,
  OP_FORWARD, OP_BACKWARD, OP_SHARD, OP_CTX_RANK, OP_FORWARD, OP_PLAN_CREATE, OP_DIVERGE, OP_BACKWARD,
  OP_FORWARD, OP_STATS, OP_SHARD, OP_CTX_DESTROY, OP_SET_SINKS, OP_BACKWARD, OP_PLAN_CREATE, OP_CONCURRENT,
  OP_FORWARD, OP_SHARD, OP_BACKWARD, OP_STATUS_STRING, OP_FORWARD, OP_PLAN_DESTROY, OP_DIVERGE, OP_FORWARD};

/* Expected outcome of a collective call, from the header's rules. */
enum { EXP_UNKNOWN = 0, EXP_OK, EXP_FAIL, EXP_MISMATCH, EXP_UNSUPPORTED };
static const char *k_exp_names[] = {"unknown", "OK", "fail", "MISMATCH", "UNSUPPORTED"};

typedef struct {
  /* Storage behind each rank's config; the struct is at the start. */
  union { burst_attention_config c; uint8_t raw[CFG_BUF]; } u[MAXR];
  int64_t cu[MAXR][CU_CAP];
  float sinks[MAXR][SINK_CAP]; /* 0.8: what cfg.sinks points at (num_heads_q values) */
  int null_cfg[MAXR];
  /* classification (see classify_cfg) */
  int expect;
  int bad_rank_status[MAXR]; /* status a rank must return itself, or -1 */
  const char *field, *field2, *field3; /* MISMATCH: the message must name one of them */
  int short_tmo;              /* every rank: struct readable and timeout in (0, 0.3] */
  int huge;                   /* some rank asks for > 2^20 tokens (known bug: see below) */
} cfgvar_t;

enum { T_Q, T_K, T_V, T_OUT, T_LSE, T_DOUT, T_DQ, T_DK, T_DV, T_COUNT };
static const char *k_tnames[T_COUNT] = {"q", "k", "v", "out", "lse", "dout", "dq", "dk", "dv"};

typedef struct {
  int kind, slot, cfgv;
  uint64_t seed;
  int in_mode;           /* input values */
  unsigned null_mask[MAXR]; /* bit t: pass NULL for tensor t on that rank */
  int garbage_fwd;       /* backward: out/lse are garbage, not the forward's */
  int twice;             /* repeat the call and compare bitwise */
  int null_out[MAXR];    /* plan_create: out == NULL on that rank */
  uint32_t stats_size[MAXR];
  int div_rank, div_kind; /* diverge: rank, and 0 = forward vs backward, 1 = skip */
  int32_t status_value;
  /* set_sinks: mode (see gen_prog), the rank it concerns, a value seed;
   * sinks_gradient: dsinks = NULL on that rank */
  int sk_mode, sk_rank, sk_null;
  uint64_t sk_seed;
  /* shard */
  int32_t sh_dist, sh_ws, sh_rank;
  int64_t sh_total, sh_nseq, sh_outer, sh_rowb;
  int64_t sh_cu[CU_CAP];
  int sh_cu_null, sh_cap_mode, sh_null_full, sh_null_local, sh_all_ranks, sh_null_count;
} op_t;

typedef struct {
  int ctx_kind; /* 0 self, 1 loopback, 2 none */
  int P;
  int prologue;
  int bad_create; /* exercise failing context creation first */
  int32_t bad_ws;
  cfgvar_t cv[NCFG];
  int nops;
  op_t ops[MAXOPS + 2];
} prog_t;

/* What a rank's call produced, kept until the checks after the join. */
typedef struct {
  int called;               /* a call was made */
  int collective;           /* it was collective (all ranks were meant to call) */
  burst_status st, st2;     /* st2: the repeated call (twice) */
  char msg[240];
  double secs, tmo;
  buf_t t[T_COUNT];
  int has_t[T_COUNT];
  burst_attention_config cfg; /* the plan's config on this rank (forward/backward) */
  int64_t cu[CU_CAP];
  int from_fwd;             /* backward used the forward's out/lse */
  int fwd_op;               /* index of that forward op */
  uint64_t in_seed[3];
  int in_mode;
  /* 0.8: the plan's sinks at the call (kind 0 none, 1 valid, 2 refused
   * values kept by set_sinks), and after a successful backward with sinks
   * the partial dL/d sinks it returned */
  int sk_kind;
  float sk_vals[SINK_CAP];
  int has_dsinks;
  float dsinks[SINK_CAP];
} res_t;

typedef struct {
  burst_context *ctx;
  burst_plan *plan[NSLOTS];
  int plan_cfgv[NSLOTS];
  burst_attention_config plan_cfg[NSLOTS];
  int64_t plan_cu[NSLOTS][CU_CAP];
  burst_status poison[NSLOTS]; /* TIMEOUT / COMMUNICATION seen on the plan */
  int last_fwd[NSLOTS];        /* op index of the last forward on the slot, -1 */
  /* 0.8: the plan's sinks (as res_t's sk_*), and the gradient
   * burst_plan_sinks_gradient must give (grad_ready) */
  int sk_kind[NSLOTS];
  float sk_vals[NSLOTS][SINK_CAP];
  int grad_ready[NSLOTS];
  float grad_vals[NSLOTS][SINK_CAP];
} rank_t;

typedef struct {
  prog_t *prog;
  rank_t rk[MAXR];
  res_t res[MAXOPS + 2][MAXR];
  pthread_barrier_t barrier;
  int stop_collectives; /* a TIMEOUT desynchronised the group: only local calls follow */
} world_t;

/* ------------------------------------------------------------------------ */
/* Config generation                                                         */
static const int64_t k_dims[16] = {8, 16, 4, 1, 2, 3, 5, 7, 12, 32, 64, 17, 31, 33, 128, 256};
static float scale_pick(unsigned s, int64_t d) {
  float inv = d > 0 ? 1.0f / (float)sqrt((double)d) : 1.0f;
  switch (s % 16) {
    case 0: return 0.0f;
    case 1: return inv;
    case 2: return 0.5f * inv;
    case 3: return -inv;
    case 4: return 0.125f;
    case 5: return 1.0f;
    case 6: return 4.0f;
    case 7: return 1e4f;
    case 8: return 1e30f;
    case 9: return NAN;
    case 10: return INFINITY;
    case 11: return -INFINITY;
    case 12: return FLT_MIN / 4;
    case 13: return -0.0f;
    case 14: return FLT_MAX;
    default: return 2.0f;
  }
}
/* Timeouts come in classes. Ranks of one config never mix a short and a
 * long (default 300 s) timeout: a rank whose short timeout expires (the
 * machine is loaded) returns, and a peer with a long one would then wait its
 * whole timeout, as the header allows. Invalid values (NaN, negative) make
 * plan_create fail everywhere, so they may sit on any one rank. */
static double timeout_short(unsigned s) {
  static const double menu[8] = {0.2, 0.3, 0.25, 0.15, 0.1, 0.2, 0.05, 1e-6};
  return menu[s % 8];
}
static double timeout_long(unsigned s) {
  static const double menu[4] = {0.0 /* default 300 s */, INFINITY, -0.0, 30.0};
  return menu[s % 4];
}
static double timeout_invalid(unsigned s) {
  static const double menu[4] = {-1.0, NAN, -INFINITY, -1e-9};
  return menu[s % 4];
}
static int64_t window_pick(rd_t *r) {
  unsigned s = rd_u8(r);
  if (s < 160) return -1;
  if (s < 240) return (int64_t)(s % 24);
  return k_weird_i64[(s - 240) % 24];
}

static int tmo_short(double t) { return t > 0 && t <= 0.3; }
static double tmo_effective(double t) { return t > 0 && isfinite(t) ? t : 300.0; }

/* The 0.4-0.6 struct_size: the config ended at timeout_seconds (since 0.7 an
 * older released size; compute and softcap are then not read: defaults).
 * The 0.7 size ended at softcap (0.7's reserved0): sinks are not read. */
#define CFG_SIZE_V06 offsetof(burst_attention_config, compute)
#define CFG_SIZE_V07 offsetof(burst_attention_config, sinks)
static int cfg_size_known(uint32_t sz) { return sz == sizeof(burst_attention_config) || sz == CFG_SIZE_V06 || sz == CFG_SIZE_V07; }
static int32_t cfg_compute(const burst_attention_config *c) { return c->struct_size == CFG_SIZE_V06 ? 0 : c->compute; }
static float cfg_softcap(const burst_attention_config *c) { return c->struct_size == CFG_SIZE_V06 ? 0.0f : c->softcap; }
static const float *cfg_sinks(const burst_attention_config *c) {
  return c->struct_size == CFG_SIZE_V06 || c->struct_size == CFG_SIZE_V07 ? NULL : c->sinks;
}
/* Whether a (valid) config runs bf16 products: FAST, or DEFAULT with BF16 storage. */
static int cfg_bf16_products(const burst_attention_config *c) {
  return cfg_compute(c) == BURST_COMPUTE_FAST || (cfg_compute(c) == BURST_COMPUTE_DEFAULT && c->dtype == BURST_DTYPE_BF16);
}

/* The agreed fields in ABI order (header: all but seq_len_local, num_threads, timeout). */
#define NAGREED 18
static const char *k_agreed[NAGREED] = {"layout", "dtype", "mask", "distribution", "pattern", "batch",
                                        "num_heads_q", "num_heads_kv", "head_dim", "softmax_scale",
                                        "window_left", "window_right", "cu_seqlens", "num_sequences",
                                        "intra_group_size", "compute", "softcap", "sinks"};

static int cfg_fields_differ(const burst_attention_config *a, const burst_attention_config *b, int f) {
  switch (f) {
    case 0: return a->layout != b->layout;
    case 1: return a->dtype != b->dtype;
    case 2: return a->mask != b->mask;
    case 3: return a->distribution != b->distribution;
    case 4: return a->pattern != b->pattern;
    case 5: return a->batch != b->batch;
    case 6: return a->num_heads_q != b->num_heads_q;
    case 7: return a->num_heads_kv != b->num_heads_kv;
    case 8: return a->head_dim != b->head_dim;
    case 9: return memcmp(&a->softmax_scale, &b->softmax_scale, 4) != 0;
    case 10: return a->window_left != b->window_left;
    case 11: return a->window_right != b->window_right;
    case 12:
      if ((a->cu_seqlens == NULL) != (b->cu_seqlens == NULL)) return 1;
      if (!a->cu_seqlens) return 0;
      if (a->num_sequences != b->num_sequences) return 1;
      return memcmp(a->cu_seqlens, b->cu_seqlens, (size_t)(a->num_sequences + 1) * 8) != 0;
    case 13: return a->num_sequences != b->num_sequences;
    case 14: return a->intra_group_size != b->intra_group_size;
    case 15: return cfg_compute(a) != cfg_compute(b);
    case 16: { float x = cfg_softcap(a), y = cfg_softcap(b); return memcmp(&x, &y, 4) != 0; }
    default: {
      const float *x = cfg_sinks(a), *y = cfg_sinks(b);
      if ((x == NULL) != (y == NULL)) return 1;
      if (!x) return 0;
      if (a->num_heads_q != b->num_heads_q) return 1;
      return memcmp(x, y, (size_t)a->num_heads_q * 4) != 0;
    }
  }
}

/* Local validity by the header's documented rules: 1 valid, 0 invalid
 * (INVALID_ARGUMENT promised), -1 not specified by the header. */
static int tail_zero(const uint8_t *raw, size_t from, size_t to) {
  for (size_t i = from; i < to && i < CFG_BUF; ++i)
    if (raw[i]) return 0;
  return to <= CFG_BUF;
}

static int cfg_local_valid(const burst_attention_config *c) {
  int unknown = 0;
  if (c->layout < 0 || c->layout > 1) return 0;
  if (c->dtype < 0 || c->dtype > 2) return 0;
  if (c->mask < 0 || c->mask > 1) return 0;
  if (c->distribution < 0 || c->distribution > 2) return 0;
  if (c->pattern < 0 || c->pattern > 4) return 0;
  if (cfg_compute(c) < 0 || cfg_compute(c) > 2) return 0; /* 0.7 */
  if (c->batch <= 0 || c->num_heads_q <= 0 || c->num_heads_kv <= 0 || c->head_dim <= 0) return 0;
  if (c->num_heads_q % c->num_heads_kv != 0) return 0;
  if (c->seq_len_local < 0) return 0;
  if (!isfinite(c->softmax_scale) || c->softmax_scale < 0) return 0; /* 0.5: finite and >= 0 */
  if (c->window_left < -1 || c->window_right < -1) return 0;
  if (!(c->timeout_seconds >= 0 && c->timeout_seconds <= 604800.0)) return 0; /* 0.5: finite, <= a week */
  if (!c->cu_seqlens && c->num_sequences != 0) return 0;
  if (c->cu_seqlens) {
    if (c->num_sequences < 0) return 0;
    if (c->num_sequences == 0) unknown = 1; /* one offset: not specified */
    else {
      if (c->cu_seqlens[0] != 0) return 0;
      for (int64_t s = 1; s <= c->num_sequences; ++s)
        if (c->cu_seqlens[s] < c->cu_seqlens[s - 1]) return 0;
    }
  }
  if (c->num_threads < 0 || c->intra_group_size < 0) unknown = 1;
  /* 0.8: softcap 0 = off, else finite and > 0; sinks finite (the harness
   * attaches them only with 1 <= num_heads_q <= SINK_CAP) */
  {
    float sc = cfg_softcap(c);
    const float *sk = cfg_sinks(c);
    if (sc != 0 && !(isfinite(sc) && sc > 0)) return 0;
    if (sk)
      for (int64_t h = 0; h < c->num_heads_q; ++h)
        if (!isfinite(sk[h])) return 0;
  }
  /* Sizes the header does not bound; far beyond any real shape. */
  {
    int64_t hs[2] = {c->num_heads_q, c->num_heads_kv};
    for (int j = 0; j < 2; ++j) {
      int64_t t;
      if (__builtin_mul_overflow(c->batch, c->seq_len_local > 0 ? c->seq_len_local : 1, &t) ||
          __builtin_mul_overflow(t, hs[j], &t) || __builtin_mul_overflow(t, c->head_dim, &t) ||
          t > (1ll << 30))
        unknown = 1;
    }
    if (c->seq_len_local > (1 << 20) || c->head_dim > 4096 || c->num_heads_q > 4096 || c->batch > 4096)
      unknown = 1;
  }
  return unknown ? -1 : 1;
}

/* Decides what plan_create must return on P ranks (see O3). */
static void classify_cfg(cfgvar_t *v, int P, const int *null_out) {
  int any_bad = 0, any_unknown = 0;
  for (int r = 0; r < P; ++r) {
    const burst_attention_config *c = &v->u[r].c;
    int problems = 0, status = -1, out_null = null_out && null_out[r];
    v->bad_rank_status[r] = -1;
    if (out_null) { ++problems; status = BURST_ERROR_INVALID_ARGUMENT; }
    if (v->null_cfg[r]) {
      ++problems; status = BURST_ERROR_INVALID_ARGUMENT;
    } else if ((c->struct_size < sizeof(burst_attention_config) && !cfg_size_known(c->struct_size)) ||
               c->struct_size > 4096 ||
               (c->struct_size > sizeof(burst_attention_config) &&
                !tail_zero(v->u[r].raw, sizeof(burst_attention_config), c->struct_size))) {
      /* 0.5 rules (header, burst_attention_config_init_sized): this size or an
       * older released one (0.7: the 0.4-0.6 size; 0.8: the 0.7 size); a
       * newer, larger one (<= 4096) is read when every byte past the known
       * fields is 0; anything else VERSION. */
      ++problems; status = BURST_ERROR_VERSION;
    } else {
      int lv = cfg_local_valid(c);
      if (lv == 0) { ++problems; status = BURST_ERROR_INVALID_ARGUMENT; }
      else if (lv < 0 && !out_null) any_unknown = 1;
    }
    if (problems) any_bad = 1;
    /* With two problems on a rank the header does not say which is reported. */
    v->bad_rank_status[r] = problems == 1 ? status : -1;
  }
  v->field = v->field2 = v->field3 = NULL;
  if (any_bad) { v->expect = EXP_FAIL; return; }
  if (any_unknown) { v->expect = EXP_UNKNOWN; return; }
  /* All ranks valid alone: they must agree. */
  for (int f = 0; f < NAGREED; ++f)
    for (int r = 1; r < P; ++r)
      if (cfg_fields_differ(&v->u[0].c, &v->u[r].c, f)) {
        v->expect = EXP_MISMATCH;
        v->field = k_agreed[f];
        /* cu_seqlens' length is num_sequences: either name is fine */
        v->field2 = f == 12 ? "num_sequences" : f == 13 ? "cu_seqlens" : NULL;
        /* A head count that differs changes the sinks' length too (0.8): the
         * header does not say which of two differing fields is named. */
        for (int f2 = f + 1; f2 < NAGREED && !v->field3; ++f2)
          for (int r2 = 1; r2 < P; ++r2)
            if (f2 != 13 && cfg_fields_differ(&v->u[0].c, &v->u[r2].c, f2)) { v->field3 = k_agreed[f2]; break; }
        return;
      }
  const burst_attention_config *c = &v->u[0].c;
  int64_t N = 0, counts[MAXR];
  for (int r = 0; r < P; ++r) { counts[r] = v->u[r].c.seq_len_local; N += counts[r]; }
  if (c->cu_seqlens && c->cu_seqlens[c->num_sequences] != N) { v->expect = EXP_FAIL; return; }
  if (c->distribution != BURST_DISTRIBUTION_CONTIGUOUS)
    for (int r = 0; r < P; ++r)
      if (counts[r] != rule_count(c->distribution, N, c->cu_seqlens, c->num_sequences, P, r)) {
        v->expect = EXP_FAIL;
        return;
      }
  if (c->intra_group_size > 0 && P % c->intra_group_size != 0) { v->expect = EXP_FAIL; return; }
  if (c->pattern == BURST_PATTERN_ULYSSES && c->num_heads_kv % P != 0) { v->expect = EXP_UNSUPPORTED; return; }
  v->expect = EXP_OK;
}

/* Builds config variant `v` for P ranks. */
static void gen_cfgvar(rd_t *r, cfgvar_t *v, int P, uint64_t *seed) {
  burst_attention_config base;
  int64_t counts[MAXR] = {0};
  burst_attention_config_init(&base);
  base.layout = gen_enum(r, 2);
  base.dtype = gen_enum(r, 3);
  base.mask = gen_enum(r, 2);
  base.distribution = gen_enum(r, 3);
  base.pattern = gen_enum(r, 5);
  base.batch = gen_count(r, 2);
  {
    unsigned s = rd_u8(r);
    int64_t hkv = 1 + (s % 3), g = 1 + ((s / 3) % 3);
    base.num_heads_kv = hkv;
    base.num_heads_q = hkv * g;
    if (rd_rare(r, 6)) base.num_heads_q = gen_count(r, 7);
    if (rd_rare(r, 6)) base.num_heads_kv = gen_count(r, 4);
    if (rd_rare(r, 3)) base.batch = gen_count(r, 4);
  }
  {
    unsigned s = rd_u8(r);
    base.head_dim = s < 240 ? k_dims[s % 16] : k_weird_i64[(s - 240) % 24];
  }
  base.softmax_scale = scale_pick(rd_u8(r), base.head_dim);
  base.window_left = window_pick(r);
  base.window_right = window_pick(r);
  {
    unsigned s = rd_u8(r);
    base.num_threads = s < 200 ? (int32_t)(s % 3) : s < 240 ? (int32_t)(s % 4) : s < 250 ? -1 : s < 254 ? 64 : INT32_MAX;
  }
  {
    unsigned s = rd_u8(r);
    base.intra_group_size = s < 200 ? 0 : s < 240 ? (int32_t)(s % 4) : k_weird_enum[s % 16];
  }
  base.compute = gen_enum(r, 3); /* 0.7 */
  /* Global sequence and its split. */
  int64_t N;
  {
    unsigned s = rd_u8(r);
    /* 0 -> 16 tokens */
    N = s < 200 ? (int64_t)((s + 16) % 49) : s < 240 ? (int64_t)(s % 40) * 8 : (int64_t)(s % 16);
  }
  /* Packing. */
  int64_t nseq = 0, cu[CU_CAP] = {0};
  int cu_on = 0;
  {
    unsigned s = rd_u8(r);
    if (s >= 150) {
      cu_on = 1;
      nseq = 1 + (s % 5);
      for (int64_t i = 1; i < nseq; ++i) cu[i] = N ? (int64_t)(rd_u8(r) % (unsigned)(N + 1)) : 0;
      cu[nseq] = N;
      for (int64_t i = 1; i < nseq; ++i) /* sort the interior */
        for (int64_t j = i + 1; j < nseq; ++j)
          if (cu[j] < cu[i]) { int64_t t = cu[i]; cu[i] = cu[j]; cu[j] = t; }
    }
  }
  if (base.distribution == BURST_DISTRIBUTION_CONTIGUOUS) {
    int64_t left = N;
    for (int i = 0; i < P - 1; ++i) {
      counts[i] = left ? (int64_t)(rd_u8(r) % (unsigned)(left + 1)) : 0;
      left -= counts[i];
    }
    counts[P - 1] = left;
  } else if (base.distribution >= 0 && base.distribution <= 2) {
    for (int i = 0; i < P; ++i) counts[i] = rule_count(base.distribution, N, cu_on ? cu : NULL, nseq, P, i);
  } else {
    for (int i = 0; i < P; ++i) counts[i] = N / P;
  }
  int long_class;
  {
    unsigned s = rd_u8(r);
    long_class = s >= 216 && s < 248;
    base.timeout_seconds = long_class ? timeout_long(s) : s >= 248 ? timeout_invalid(s) : timeout_short(s % 7);
    if (s >= 210 && s < 216) base.timeout_seconds = timeout_short(7); /* rare: 1e-6 */
  }
  /* Per rank. */
  for (int i = 0; i < P; ++i) {
    memset(v->u[i].raw, 0, CFG_BUF);
    v->u[i].c = base;
    memcpy(v->cu[i], cu, sizeof cu);
    v->u[i].c.cu_seqlens = cu_on ? v->cu[i] : NULL;
    v->u[i].c.num_sequences = nseq;
    v->u[i].c.seq_len_local = counts[i];
    v->null_cfg[i] = 0;
    if (P > 1 && rd_rare(r, 15)) v->u[i].c.num_threads = (int32_t)(rd_u8(r) % 4);
    if (P > 1 && rd_rare(r, 10)) {
      unsigned s = rd_u8(r);
      v->u[i].c.timeout_seconds = s >= 240 ? timeout_invalid(s) : long_class ? timeout_long(s) : timeout_short(s % 7);
    }
  }
  /* Rare: weird seq_len_local / num_sequences / cu contents everywhere. */
  if (rd_rare(r, 4)) {
    int64_t w = k_weird_i64[rd_u8(r) % 24];
    for (int i = 0; i < P; ++i) v->u[i].c.seq_len_local = w;
  }
  if (rd_rare(r, 4)) {
    unsigned s = rd_u8(r);
    for (int i = 0; i < P; ++i) {
      burst_attention_config *c = &v->u[i].c;
      switch (s % 7) {
        case 0: c->cu_seqlens = NULL; break;                        /* NULL with nseq > 0 */
        case 1: c->cu_seqlens = v->cu[i]; c->num_sequences = 0; break; /* set with 0 */
        case 2: c->cu_seqlens = v->cu[i]; c->num_sequences = -1 - (int64_t)(s % 3); break;
        case 3: /* one sequence more than the offsets say (the array has room: CU_CAP) */
          c->cu_seqlens = v->cu[i];
          if (c->num_sequences < CU_CAP - 1) { c->num_sequences += 1; v->cu[i][c->num_sequences] = s % 2 ? N : 0; }
          break;
        case 4: c->cu_seqlens = v->cu[i]; if (c->num_sequences == 0) c->num_sequences = 1;
                v->cu[i][0] = 1 + (s % 3); break;                  /* cu[0] != 0 */
        case 5: c->cu_seqlens = v->cu[i]; if (c->num_sequences < 2) { c->num_sequences = 2; v->cu[i][2] = N; }
                v->cu[i][1] = N + 1 + (s % 5); break;               /* decreasing */
        default: c->cu_seqlens = v->cu[i]; if (c->num_sequences == 0) c->num_sequences = 1;
                 v->cu[i][c->num_sequences] = N + 1 + (s % 3); break; /* end != N */
      }
    }
  }
  /* struct_size: everywhere or on one rank. */
  if (rd_rare(r, 6)) {
    static const int32_t deltas[8] = {-1, 1, -4, 4, -8, 8, -16, 16};
    unsigned s = rd_u8(r);
    uint32_t sz;
    switch (s % 8) {
      case 0: sz = (uint32_t)((int32_t)sizeof(burst_attention_config) + deltas[(s / 8) % 8]); break;
      case 1: sz = 0; break;
      case 2: sz = (uint32_t)(rd_u8(r) | (rd_u8(r) & 1) << 8); break; /* 0..511: inside the buffer */
      case 3: sz = UINT32_MAX; break;
      case 4: sz = 1u << 20; break;
      case 5: sz = (uint32_t)offsetof(burst_attention_config, timeout_seconds); break;
      case 6: sz = (uint32_t)CFG_SIZE_V06; break; /* a 0.6 client: compute and softcap not read */
      default: sz = (uint32_t)CFG_SIZE_V07; break; /* a 0.7 client: sinks not read */
    }
    int only = rd_u8(r) % (P + 1);
    for (int i = 0; i < P; ++i)
      if (only == P || only == i) v->u[i].c.struct_size = sz;
  }
  /* One field mutated on one rank (P > 1): valid alone, but disagreeing. */
  int mutated = 0;
  if (P > 1 && rd_rare(r, 20)) {
    mutated = 1;
    int who = (int)(rd_u8(r) % (unsigned)P);
    burst_attention_config *c = &v->u[who].c;
    unsigned f = rd_u8(r);
    switch (f % 19) {
      case 0: c->layout ^= 1; break;
      case 1: c->dtype = (c->dtype + 1) % 3; break;
      case 2: c->mask ^= 1; break;
      case 3: c->distribution = (c->distribution + 1) % 3; break;
      case 4: c->pattern = (c->pattern + 1 + (int32_t)(f / 18) % 4) % 5; break;
      case 5: c->batch += 1; break;
      case 6: c->num_heads_q += c->num_heads_kv; break;
      case 7: c->num_heads_kv = 1; c->num_heads_q = c->num_heads_q; break;
      case 8: c->head_dim += 1; break;
      case 9: c->softmax_scale = c->softmax_scale == 0.5f ? 0.25f : 0.5f; break;
      case 10: c->window_left = c->window_left + 1; break;
      case 11: c->window_right = c->window_right == 3 ? 4 : 3; break;
      case 12: /* cu_seqlens contents (an interior offset), same num_sequences */
        if (c->cu_seqlens && c->num_sequences >= 2) v->cu[who][1] = v->cu[who][1] ? v->cu[who][1] - 1 : v->cu[who][2];
        else { c->cu_seqlens = v->cu[who]; c->num_sequences = 1; v->cu[who][0] = 0; v->cu[who][1] = N; }
        break;
      case 13: c->intra_group_size = c->intra_group_size == 1 ? 0 : 1; break;
      case 14: c->seq_len_local += 1; break;           /* not agreed: only counts change */
      case 15: c->struct_size = (uint32_t)sizeof(burst_attention_config) - 4; break;
      case 16: v->null_cfg[who] = 1; break;
      case 17: c->compute = (c->compute + 1 + (int32_t)(f / 19) % 2) % 3; break;
      default: c->num_heads_q = c->num_heads_kv * 2 + 1; break; /* not a multiple (invalid) */
    }
  }
  /* 0.8: softcap and sinks, read after everything else so the older fields
   * keep their bytes. Sinks are attached where 1 <= num_heads_q <= SINK_CAP
   * (the array must hold num_heads_q values: the ABI cannot tell). */
  {
    static const float valid_cap[12] = {30.0f, 50.0f, 1.0f, 5.0f, 0.5f, 2.0f, 0.25f, 1e-3f, 1e4f, FLT_MIN, 20.0f, 0.75f};
    static const float bad_cap[6] = {-1.0f, NAN, INFINITY, -INFINITY, -1e-30f, -FLT_MAX};
    unsigned s = rd_u8(r);
    float softcap = s < 170 ? 0.0f : s < 236 ? valid_cap[s % 12] : bad_cap[s % 6];
    unsigned sk = rd_u8(r), sk_seed = rd_u8(r);
    int sinks_on = sk >= 170;
    for (int i = 0; i < P; ++i) {
      burst_attention_config *c = &v->u[i].c;
      c->softcap = softcap;
      for (int h = 0; h < SINK_CAP; ++h) {
        uint64_t m = mix64(sk_seed * 131u + (uint64_t)h);
        switch (sk % 8) {
          case 6: { static const float big[4] = {FLT_MAX, -FLT_MAX, 80.0f, -1e30f}; v->sinks[i][h] = big[m % 4]; break; }
          default: v->sinks[i][h] = (float)((int)(m % 33) - 16) / 4.0f; break; /* -4 .. 4 */
        }
      }
      if (sk % 8 == 7) { static const float bad[3] = {NAN, INFINITY, -INFINITY}; v->sinks[i][sk_seed % 3] = bad[sk_seed % 3]; }
    }
    /* Rare, one rank (P > 1, no other field mutated): a sink changed, sinks
     * on or off, another softcap, or a NaN sink on that rank alone. */
    int who = -1, how = 0;
    if (P > 1 && !mutated && rd_rare(r, 10)) { who = (int)(rd_u8(r) % (unsigned)P); how = rd_u8(r) % 4; }
    for (int i = 0; i < P; ++i) {
      burst_attention_config *c = &v->u[i].c;
      int on = sinks_on;
      if (i == who && how == 1) on = !on;
      if (i == who && how == 0) v->sinks[i][0] += 0.5f;
      if (i == who && how == 2) c->softcap = c->softcap == 30.0f ? 20.0f : 30.0f;
      if (i == who && how == 3) v->sinks[i][0] = NAN;
      c->sinks = on && c->num_heads_q >= 1 && c->num_heads_q <= SINK_CAP ? v->sinks[i] : NULL;
    }
  }
  (void)seed;
  /* Short timeouts everywhere? (needed before a rank is left waiting) */
  /* Known bug (Tests/fuzz/repro/plan_huge_seq.c): plan_create with a huge
   * valid seq_len_local aborts the process allocating O(N) metadata, and
   * 2^22+ tokens already take most of a second. Such plans are not created
   * unless FUZZ_HUGE_PLANS=1. */
  v->huge = 0;
  for (int i = 0; i < P; ++i)
    if (!v->null_cfg[i] && v->u[i].c.seq_len_local > (1 << 20)) v->huge = 1;
  v->short_tmo = 1;
  for (int i = 0; i < P; ++i)
    if (v->null_cfg[i] || v->u[i].c.struct_size != sizeof(burst_attention_config) ||
        !tmo_short(v->u[i].c.timeout_seconds))
      v->short_tmo = 0;
}

static void describe_cfg(const burst_attention_config *c, const int64_t *cu, int null_cfg) {
  if (null_cfg) { note("      (NULL config)\n"); return; }
  note("      size=%u layout=%d dtype=%d mask=%d dist=%d pattern=%d B=%lld S=%lld Hq=%lld Hkv=%lld d=%lld scale=%g "
       "wl=%lld wr=%lld nseq=%lld cu=%s threads=%d igs=%d timeout=%g compute=%d softcap=%g",
       c->struct_size, c->layout, c->dtype, c->mask, c->distribution, c->pattern, (long long)c->batch,
       (long long)c->seq_len_local, (long long)c->num_heads_q, (long long)c->num_heads_kv, (long long)c->head_dim,
       (double)c->softmax_scale, (long long)c->window_left, (long long)c->window_right,
       (long long)c->num_sequences, c->cu_seqlens ? "set" : "NULL", c->num_threads, c->intra_group_size,
       c->timeout_seconds, c->compute, (double)c->softcap);
  if (c->cu_seqlens) {
    int64_t n = c->num_sequences;
    if (n < 0) n = 0;
    if (n > CU_CAP - 1) n = CU_CAP - 1;
    note(" cu_seqlens=[");
    for (int64_t i = 0; i <= n; ++i) note("%s%lld", i ? "," : "", (long long)cu[i]);
    note("]");
  }
  note(" sinks=");
  if (!c->sinks) note("NULL");
  else {
    for (int64_t h = 0; h < c->num_heads_q && h < SINK_CAP; ++h) note("%s%g", h ? "," : "{", (double)c->sinks[h]);
    note("}");
  }
  note("\n");
}

/* ------------------------------------------------------------------------ */
static void gen_shard_op(rd_t *r, op_t *o) {
  unsigned s;
  o->sh_dist = gen_enum(r, 3);
  s = rd_u8(r);
  o->sh_total = s < 200 ? (int64_t)(s % 50) : s < 232 ? (int64_t)(s % 32) * 37 : k_weird_i64[(s - 232) % 24];
  s = rd_u8(r);
  o->sh_ws = s < 224 ? (int32_t)(1 + s % 4) : (s < 232 ? (int32_t)(5 + s % 60) : k_weird_enum[s % 16]);
  if (s >= 250) o->sh_ws = s == 255 ? INT32_MAX : (int32_t)(1 << (10 + (s - 250) * 2));
  s = rd_u8(r);
  o->sh_rank = s < 232 ? (o->sh_ws > 0 ? (int32_t)(s % (unsigned)o->sh_ws) : 0) : k_weird_enum[s % 16];
  if (s >= 248 && o->sh_ws > 0) o->sh_rank = o->sh_ws - 1 + (int32_t)(s % 2); /* last, or one past */
  s = rd_u8(r);
  o->sh_outer = s < 232 ? (int64_t)(s % 4) : k_weird_i64[(s - 232) % 24];
  s = rd_u8(r);
  o->sh_rowb = s < 232 ? (int64_t)(s % 9) : k_weird_i64[(s - 232) % 24];
  /* cu */
  s = rd_u8(r);
  o->sh_cu_null = 1;
  o->sh_nseq = 0;
  memset(o->sh_cu, 0, sizeof o->sh_cu);
  if (s >= 140) {
    int64_t N = o->sh_total >= 0 && o->sh_total < (1ll << 46) ? o->sh_total : 10;
    o->sh_cu_null = 0;
    o->sh_nseq = 1 + (s % 5);
    for (int64_t i = 1; i < o->sh_nseq; ++i) o->sh_cu[i] = (int64_t)(mix64(s + (uint64_t)i * 77 + rd_u8(r)) % (uint64_t)(N + 1));
    o->sh_cu[o->sh_nseq] = N;
    for (int64_t i = 1; i < o->sh_nseq; ++i)
      for (int64_t j = i + 1; j < o->sh_nseq; ++j)
        if (o->sh_cu[j] < o->sh_cu[i]) { int64_t t = o->sh_cu[i]; o->sh_cu[i] = o->sh_cu[j]; o->sh_cu[j] = t; }
    if (s >= 245) {
      switch (s % 5) {
        case 0: o->sh_cu[0] = 1; break;
        case 1: o->sh_cu[o->sh_nseq] = N + 1; break;
        case 2: o->sh_nseq = -1; break;
        case 3: o->sh_nseq = 0; break;
        default: if (o->sh_nseq >= 2) { o->sh_cu[1] = N + 3; } break;
      }
    }
  } else if (s >= 135) {
    o->sh_nseq = 1 + (s % 3); /* NULL with num_sequences > 0 */
  }
  s = rd_u8(r);
  o->sh_cap_mode = s % 8;
  o->sh_null_full = rd_rare(r, 5);
  o->sh_null_local = rd_rare(r, 5);
  o->sh_null_count = rd_rare(r, 3);
  o->sh_all_ranks = !rd_rare(r, 40);
}

static void gen_prog(const uint8_t *data, size_t size, prog_t *pg) {
  rd_t rr = {data, size, 0, 0}, *r = &rr, cr = {data, size, 0, 1};
  memset(pg, 0, sizeof *pg);
  unsigned h = rd_u8(r);
  /* 0 -> loopback with 2 ranks (the richest ordinary case) */
  switch (h % 8) {
    case 0: case 3: pg->ctx_kind = 1; pg->P = 2; break;
    case 1: case 5: pg->ctx_kind = 1; pg->P = 3; break;
    case 2: pg->ctx_kind = 0; pg->P = 1; break;
    case 4: pg->ctx_kind = 1; pg->P = 1; break;
    case 6: pg->ctx_kind = 0; pg->P = 1; break;
    default: pg->ctx_kind = 2; pg->P = 1; break;
  }
  unsigned f = rd_u8(r);
  pg->prologue = !(f & 1);
  pg->bad_create = (f & 6) == 6;
  {
    static const int32_t bad[8] = {0, -1, 1025, INT32_MIN, INT32_MAX, -1024, 2048, 0};
    pg->bad_ws = bad[(f >> 3) % 8];
  }
  uint64_t seed = rd_bytes(r, 2);
  for (int v = 0; v < NCFG; ++v) gen_cfgvar(&cr, &pg->cv[v], pg->P, &seed);
  int n = 0;
  if (pg->prologue) {
    pg->ops[n].kind = OP_PLAN_CREATE; pg->ops[n].slot = 0; pg->ops[n].cfgv = 0; ++n;
    pg->ops[n].kind = OP_FORWARD; pg->ops[n].slot = 0; pg->ops[n].seed = mix64(seed); ++n;
  }
  int want = (int)(rd_u8(r) % (MAXOPS + 1));
  for (int i = 0; i < want && n < MAXOPS + 2; ++i) {
    op_t *o = &pg->ops[n];
    if (r->i >= r->n) break;
    unsigned k = rd_u8(r);
    o->kind = k_op_table[k % 64];
    o->slot = (k >> 6) & 1;
    o->cfgv = (k >> 7) & 1;
    o->seed = mix64(seed + 1000003ull * (uint64_t)(n + 1) + rd_u8(r));
    switch (o->kind) {
      case OP_PLAN_CREATE:
        for (int q = 0; q < pg->P; ++q) o->null_out[q] = rd_rare(r, 3);
        break;
      case OP_FORWARD:
      case OP_BACKWARD:
      case OP_CONCURRENT: {
        unsigned m = rd_u8(r);
        o->in_mode = m < 200 ? IN_UNIT : m < 225 ? IN_LARGE : m < 245 ? IN_SPECIAL : IN_BITS;
        o->twice = rd_rare(r, 15);
        o->garbage_fwd = rd_rare(r, 15);
        if (rd_rare(r, 10)) {
          int who = (int)(rd_u8(r) % (unsigned)pg->P);
          o->null_mask[who] = 1u << (rd_u8(r) % T_COUNT);
        }
        break;
      }
      case OP_STATS:
        for (int q = 0; q < pg->P; ++q) {
          unsigned s = rd_u8(r);
          o->stats_size[q] = s < 160 ? (uint32_t)sizeof(burst_stats)
                           : s < 180 ? (uint32_t)(offsetof(burst_stats, tiles_skipped) + 8)     /* 0.2 */
                           : s < 200 ? (uint32_t)(offsetof(burst_stats, total_seconds) + 8)     /* 0.1 */
                           : s < 240 ? (uint32_t)(s - 200) * 4                                  /* 0..156 */
                           : s < 250 ? (uint32_t)sizeof(burst_stats) + (s - 240)
                                     : (uint32_t)(UINT32_MAX - (s - 250));
        }
        break;
      case OP_SHARD: gen_shard_op(r, o); break;
      case OP_STATUS_STRING: o->status_value = (int32_t)rd_bytes(r, 4); if (rd_u8(r) < 128) o->status_value &= 15; break;
      case OP_DIVERGE:
        o->div_rank = (int)(rd_u8(r) % (unsigned)pg->P);
        o->div_kind = rd_u8(r) % 2;
        o->in_mode = IN_UNIT;
        break;
      case OP_SET_SINKS: {
        /* 0-3 the same valid values everywhere (3: huge finite ones), 4 NULL
         * everywhere, 5 a NaN on sk_rank, 6 an infinity on sk_rank, 7 other
         * values on sk_rank, 8 NULL on sk_rank only */
        unsigned m = rd_u8(r);
        o->sk_mode = m < 160 ? (int)(m % 4) : m < 190 ? 4 : 5 + (int)(m % 4);
        o->sk_rank = (int)(rd_u8(r) % (unsigned)pg->P);
        o->sk_seed = rd_u8(r);
        break;
      }
      case OP_SINKS_GRAD:
        o->sk_null = rd_rare(r, 5);
        o->sk_rank = (int)(rd_u8(r) % (unsigned)pg->P);
        break;
      default: break;
    }
    ++n;
  }
  pg->nops = n;
  /* Leaving a rank waiting needs short timeouts on everyone who waits; the
   * plan's timeout is its creating config's. */
  int created_with[NSLOTS] = {-1, -1};
  for (int i = 0; i < n; ++i) {
    op_t *o = &pg->ops[i];
    if (o->kind == OP_PLAN_CREATE) created_with[o->slot] = o->cfgv;
    if (o->kind == OP_DIVERGE && o->div_kind == 1 &&
        (created_with[o->slot] < 0 || !pg->cv[created_with[o->slot]].short_tmo))
      o->div_kind = 0;
  }
  for (int v = 0; v < NCFG; ++v) classify_cfg(&pg->cv[v], pg->P, NULL);
}

static void describe_prog(const prog_t *pg) {
  g_prog_len = 0;
  note("  context: %s, P=%d, prologue=%d, bad_create=%d (world_size %d)\n",
       pg->ctx_kind == 0 ? "self" : pg->ctx_kind == 1 ? "loopback" : "none", pg->P, pg->prologue,
       pg->bad_create, pg->bad_ws);
  for (int v = 0; v < NCFG; ++v) {
    note("  config %d (expect %s%s%s, short timeouts %d, huge %d):\n", v, k_exp_names[pg->cv[v].expect],
         pg->cv[v].field ? ", field " : "", pg->cv[v].field ? pg->cv[v].field : "", pg->cv[v].short_tmo, pg->cv[v].huge);
    for (int r = 0; r < pg->P; ++r) {
      note("    rank %d:\n", r);
      describe_cfg(&pg->cv[v].u[r].c, pg->cv[v].cu[r], pg->cv[v].null_cfg[r]);
    }
  }
  for (int i = 0; i < pg->nops; ++i) {
    const op_t *o = &pg->ops[i];
    note("  op %d: %s slot=%d cfg=%d mode=%d twice=%d garbage_fwd=%d", i, k_op_names[o->kind], o->slot, o->cfgv,
         o->in_mode, o->twice, o->garbage_fwd);
    for (int r = 0; r < pg->P; ++r)
      if (o->null_mask[r]) note(" null[rank %d]=0x%x", r, o->null_mask[r]);
    if (o->kind == OP_PLAN_CREATE)
      for (int r = 0; r < pg->P; ++r) if (o->null_out[r]) note(" null_out[rank %d]", r);
    if (o->kind == OP_STATS)
      for (int r = 0; r < pg->P; ++r) note(" size[%d]=%u", r, o->stats_size[r]);
    if (o->kind == OP_DIVERGE) note(" rank=%d kind=%s", o->div_rank, o->div_kind ? "skip" : "forward-vs-backward");
    if (o->kind == OP_STATUS_STRING) note(" value=%d", o->status_value);
    if (o->kind == OP_SET_SINKS) note(" mode=%d rank=%d seed=%llu", o->sk_mode, o->sk_rank, (unsigned long long)o->sk_seed);
    if (o->kind == OP_SINKS_GRAD && o->sk_null) note(" dsinks=NULL on rank %d", o->sk_rank);
    if (o->kind == OP_SHARD) {
      note(" dist=%d total=%lld ws=%d rank=%d outer=%lld row_bytes=%lld nseq=%lld cu=%s", o->sh_dist,
           (long long)o->sh_total, o->sh_ws, o->sh_rank, (long long)o->sh_outer, (long long)o->sh_rowb,
           (long long)o->sh_nseq, o->sh_cu_null ? "NULL" : "[");
      if (!o->sh_cu_null) {
        int64_t m = o->sh_nseq < 0 ? 0 : o->sh_nseq > CU_CAP - 1 ? CU_CAP - 1 : o->sh_nseq;
        for (int64_t j = 0; j <= m; ++j) note("%s%lld", j ? "," : "", (long long)o->sh_cu[j]);
        note("]");
      }
      note(" cap_mode=%d null_full=%d null_local=%d null_count=%d all_ranks=%d", o->sh_cap_mode,
           o->sh_null_full, o->sh_null_local, o->sh_null_count, o->sh_all_ranks);
    }
    note("\n");
  }
}

/* ------------------------------------------------------------------------ */
/* Per-call checks (O1)                                                      */
static void check_status(burst_status st, const char *what, int rank, char *msg_out, size_t msg_cap) {
  const char *m = burst_last_error();
  if ((unsigned)st > (unsigned)BURST_ERROR_BUSY) die("%s (rank %d): status %u is not a burst_status", what, rank, (unsigned)st);
  if (!m) die("%s (rank %d): burst_last_error() returned NULL", what, rank);
  if (st != BURST_OK && m[0] == '\0') die("%s (rank %d): %s with an empty burst_last_error()", what, rank, burst_status_string(st));
  if (msg_out) snprintf(msg_out, msg_cap, "%s", st == BURST_OK ? "" : m);
  if (!burst_status_string(st)) die("burst_status_string(%u) returned NULL", (unsigned)st);
  if (g_verbose) fprintf(stderr, "  [rank %d] %s -> %s%s%s\n", rank, what, burst_status_string(st),
                         st ? ": " : "", st ? m : "");
}

static void check_time(double secs, double tmo, const char *what, int rank) {
  if (secs > tmo + g_margin) die("%s (rank %d) took %.3f s with a timeout of %.3f s", what, rank, secs, tmo);
}

/* ------------------------------------------------------------------------ */
/* Tensors of a plan                                                         */
typedef struct { int64_t n[T_COUNT]; int ok; } sizes_t;
static sizes_t plan_sizes(const burst_attention_config *c) {
  sizes_t s;
  int64_t bs, q, kv, l;
  memset(&s, 0, sizeof s);
  s.ok = !__builtin_mul_overflow(c->batch, c->seq_len_local, &bs) &&
         !__builtin_mul_overflow(bs, c->num_heads_q, &l) && !__builtin_mul_overflow(l, c->head_dim, &q) &&
         !__builtin_mul_overflow(bs, c->num_heads_kv, &kv) && !__builtin_mul_overflow(kv, c->head_dim, &kv);
  if (!s.ok) return s;
  s.n[T_Q] = s.n[T_OUT] = s.n[T_DOUT] = s.n[T_DQ] = q;
  s.n[T_K] = s.n[T_V] = s.n[T_DK] = s.n[T_DV] = kv;
  s.n[T_LSE] = l;
  return s;
}

/* Allocates tensor t of res (exact size; NULL when asked or too large). */
static void make_tensor(res_t *rs, int t, int64_t n, int32_t dtype, unsigned null_mask) {
  size_t e = t == T_LSE ? 4 : esize(dtype);
  rs->has_t[t] = 0;
  if (null_mask & (1u << t)) return;
  if (n < 0 || n > ELEM_CAP) return;
  buf_alloc(&rs->t[t], (size_t)n * e, t >= T_OUT ? 0xFF : 0);
  rs->has_t[t] = n > 0 || (null_mask & 0x100u) == 0; /* zero elements: sometimes NULL */
  if (n == 0 && (null_mask & 0x100u)) buf_free(&rs->t[t]);
}
static void *tptr(res_t *rs, int t) { return rs->has_t[t] ? rs->t[t].p : NULL; }

/* ------------------------------------------------------------------------ */
/* Rank thread                                                               */
typedef struct { world_t *w; int rank; } targ_t;

static void sync_ranks(world_t *w) {
  if (w->prog->P > 1) pthread_barrier_wait(&w->barrier);
}

/* After an operation every rank has passed the barrier: a TIMEOUT anywhere
 * means the group's channels may hold stale messages; stop collectives. */
static void after_collective(world_t *w, int op) {
  sync_ranks(w);
  for (int r = 0; r < w->prog->P; ++r)
    if (w->res[op][r].called && w->res[op][r].collective &&
        (w->res[op][r].st == BURST_ERROR_TIMEOUT || w->res[op][r].st == BURST_ERROR_COMMUNICATION ||
         w->res[op][r].st2 == BURST_ERROR_TIMEOUT || w->res[op][r].st2 == BURST_ERROR_COMMUNICATION))
      w->stop_collectives = 1; /* every rank writes the same value */
  sync_ranks(w);
}

static void do_plan_create(world_t *w, int rank, int op) {
  prog_t *pg = w->prog;
  op_t *o = &pg->ops[op];
  rank_t *rk = &w->rk[rank];
  res_t *rs = &w->res[op][rank];
  cfgvar_t *v = &pg->cv[o->cfgv];
  char what[64];
  if (rk->plan[o->slot]) { burst_plan_destroy(rk->plan[o->slot]); rk->plan[o->slot] = NULL; }
  if (w->stop_collectives) return;
  if (!rk->ctx && pg->ctx_kind != 2) {
    /* context destroyed: a local failure on every rank alike */
    burst_plan *p = (burst_plan *)(uintptr_t)1;
    rs->called = 1;
    rs->st = burst_plan_create(NULL, &v->u[rank].c, &p);
    check_status(rs->st, "plan_create(NULL context)", rank, rs->msg, sizeof rs->msg);
    if (rs->st == BURST_OK) die("plan_create with a NULL context returned OK");
    return;
  }
  if (pg->ctx_kind == 2) return;
  if (v->huge && !g_huge_plans) { if (rank == 0) ++g_huge_skipped; return; } /* every rank skips alike */
  snprintf(what, sizeof what, "op %d plan_create", op);
  burst_plan *p = NULL;
  const burst_attention_config *c = v->null_cfg[rank] ? NULL : &v->u[rank].c;
  /* The harness keeps the contract: cu_seqlens holds num_sequences + 1 offsets. */
  if (c && c->cu_seqlens && c->num_sequences > CU_CAP - 1) die("harness bug: num_sequences %lld > CU_CAP - 1", (long long)c->num_sequences);
  /* The config is read only during the call: keep a copy to check it is not written. */
  uint8_t before[CFG_BUF];
  memcpy(before, v->u[rank].raw, CFG_BUF);
  uint64_t sinks_before = hash_bytes(v->sinks[rank], sizeof v->sinks[rank]);
  rs->called = rs->collective = 1;
  rs->tmo = c && cfg_size_known(c->struct_size) ? tmo_effective(c->timeout_seconds) : 300.0;
  double t0 = now_s();
  rs->st = burst_plan_create(rk->ctx, c, o->null_out[rank] ? NULL : &p);
  rs->secs = now_s() - t0;
  check_status(rs->st, what, rank, rs->msg, sizeof rs->msg);
  check_time(rs->secs, rs->tmo, what, rank);
  if (memcmp(before, v->u[rank].raw, CFG_BUF) != 0) die("%s (rank %d) wrote into the caller's config", what, rank);
  if (hash_bytes(v->sinks[rank], sizeof v->sinks[rank]) != sinks_before) die("%s (rank %d) wrote into the caller's sinks", what, rank);
  if (rs->st == BURST_OK && !o->null_out[rank]) {
    if (!p) die("%s (rank %d): OK but *out is NULL", what, rank);
    rk->plan[o->slot] = p;
    rk->plan_cfgv[o->slot] = o->cfgv;
    rk->plan_cfg[o->slot] = v->u[rank].c;
    memcpy(rk->plan_cu[o->slot], v->cu[rank], sizeof v->cu[rank]);
    if (v->u[rank].c.cu_seqlens) rk->plan_cfg[o->slot].cu_seqlens = rk->plan_cu[o->slot];
    rk->poison[o->slot] = BURST_OK;
    rk->last_fwd[o->slot] = -1;
    /* copied at plan_create (a valid config: finite values) */
    rk->sk_kind[o->slot] = cfg_sinks(&v->u[rank].c) != NULL;
    if (rk->sk_kind[o->slot]) memcpy(rk->sk_vals[o->slot], v->sinks[rank], (size_t)v->u[rank].c.num_heads_q * 4);
    rk->grad_ready[o->slot] = 0;
  } else if (rs->st != BURST_OK && p) {
    die("%s (rank %d): failed with %s but left a plan in *out", what, rank, burst_status_string(rs->st));
  }
}

/* forward (kind 0) or backward (kind 1) on a slot. */
static void do_attention(world_t *w, int rank, int op, int backward, int slot_override) {
  prog_t *pg = w->prog;
  op_t *o = &pg->ops[op];
  rank_t *rk = &w->rk[rank];
  res_t *rs = &w->res[op][rank];
  int slot = slot_override >= 0 ? slot_override : o->slot;
  burst_plan *plan = rk->plan[slot];
  char what[64];
  snprintf(what, sizeof what, "op %d %s", op, backward ? "backward" : "forward");
  if (!plan) {
    rs->called = 1;
    rs->st = backward ? burst_backward(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
                      : burst_forward(NULL, NULL, NULL, NULL, NULL, NULL);
    check_status(rs->st, what, rank, rs->msg, sizeof rs->msg);
    if (rs->st != BURST_ERROR_INVALID_ARGUMENT) die("%s with a NULL plan: %s, expected INVALID_ARGUMENT", what, burst_status_string(rs->st));
    return;
  }
  const burst_attention_config *c = &rk->plan_cfg[slot];
  int poisoned = rk->poison[slot] != BURST_OK;
  if (w->stop_collectives && !poisoned) return;
  sizes_t sz = plan_sizes(c);
  if (!sz.ok) die("plan created for a config whose sizes overflow");
  rs->cfg = *c;
  memcpy(rs->cu, rk->plan_cu[slot], sizeof rs->cu);
  if (c->cu_seqlens) rs->cfg.cu_seqlens = rs->cu;
  rs->in_mode = o->in_mode;
  unsigned nm = o->null_mask[rank] | ((o->seed & 1) ? 0x100u : 0);
  for (int t = 0; t < T_COUNT; ++t) {
    if (!backward && t > T_LSE) continue;
    make_tensor(rs, t, sz.n[t], c->dtype, nm);
  }
  /* Inputs. Backward on the forward's out/lse uses that forward's q, k, v. */
  uint64_t seed = o->seed ^ ((uint64_t)rank << 56);
  int fop = rk->last_fwd[slot];
  rs->from_fwd = 0;
  if (backward && !o->garbage_fwd && fop >= 0 && w->res[fop][rank].st == BURST_OK && w->res[fop][rank].has_t[T_LSE] &&
      w->res[fop][rank].has_t[T_OUT]) {
    res_t *f = &w->res[fop][rank];
    rs->from_fwd = 1;
    rs->fwd_op = fop;
    for (int t = T_Q; t <= T_LSE; ++t)
      if (rs->has_t[t] && f->has_t[t] && rs->t[t].bytes == f->t[t].bytes) memcpy(rs->t[t].p, f->t[t].p, f->t[t].bytes);
      else rs->from_fwd = 0;
    rs->in_mode = f->in_mode > o->in_mode ? f->in_mode : o->in_mode; /* dout uses the op's mode */
    memcpy(rs->in_seed, f->in_seed, sizeof rs->in_seed);
  }
  if (!rs->from_fwd) {
    for (int t = T_Q; t <= T_V; ++t) {
      rs->in_seed[t] = seed + (uint64_t)t;
      if (rs->has_t[t]) fill_tensor(rs->t[t].p, (size_t)sz.n[t], c->dtype, rs->in_seed[t], o->in_mode);
    }
    if (backward) { /* garbage out and lse */
      if (rs->has_t[T_OUT]) fill_tensor(rs->t[T_OUT].p, (size_t)sz.n[T_OUT], c->dtype, seed + 11, o->in_mode);
      if (rs->has_t[T_LSE]) fill_tensor(rs->t[T_LSE].p, (size_t)sz.n[T_LSE], BURST_DTYPE_F32, seed + 12,
                                        o->in_mode == IN_UNIT ? IN_LARGE : o->in_mode);
    }
  }
  if (backward && rs->has_t[T_DOUT]) fill_tensor(rs->t[T_DOUT].p, (size_t)sz.n[T_DOUT], c->dtype, seed + 13, o->in_mode);
  uint64_t hin[T_COUNT] = {0};
  int nin = backward ? T_DOUT : T_V;
  for (int t = 0; t <= nin; ++t)
    if (rs->has_t[t] && (backward || t <= T_V)) hin[t] = hash_bytes(rs->t[t].p, rs->t[t].bytes);

  rs->called = 1;
  rs->collective = !poisoned;
  rs->tmo = tmo_effective(c->timeout_seconds);
  rs->sk_kind = rk->sk_kind[slot];
  memcpy(rs->sk_vals, rk->sk_vals[slot], sizeof rs->sk_vals);
  double t0 = now_s();
  if (backward)
    rs->st = burst_backward(plan, tptr(rs, T_Q), tptr(rs, T_K), tptr(rs, T_V), tptr(rs, T_OUT),
                            (const float *)tptr(rs, T_LSE), tptr(rs, T_DOUT), tptr(rs, T_DQ), tptr(rs, T_DK),
                            tptr(rs, T_DV));
  else
    rs->st = burst_forward(plan, tptr(rs, T_Q), tptr(rs, T_K), tptr(rs, T_V), tptr(rs, T_OUT),
                           (float *)tptr(rs, T_LSE));
  rs->secs = now_s() - t0;
  check_status(rs->st, what, rank, rs->msg, sizeof rs->msg);
  check_time(rs->secs, rs->tmo, what, rank);
  if (poisoned && rs->st != rk->poison[slot])
    die("%s (rank %d) on a plan that failed with %s returned %s (header: unusable, further calls return that error)",
        what, rank, burst_status_string(rk->poison[slot]), burst_status_string(rs->st));
  if (rs->st == BURST_ERROR_TIMEOUT || rs->st == BURST_ERROR_COMMUNICATION) rk->poison[slot] = rs->st;
  /* 0.8: the gradient of the sinks exists after a successful backward with
   * sinks; a failed backward clears it. */
  if (backward && !poisoned) {
    rk->grad_ready[slot] = 0;
    if (rs->st == BURST_OK && rs->sk_kind == 1 && c->num_heads_q <= SINK_CAP) {
      float buf[SINK_CAP + 16];
      for (int i = 0; i < SINK_CAP + 16; ++i) buf[i] = -7.0f;
      burst_status gs = burst_plan_sinks_gradient(plan, buf);
      check_status(gs, "sinks_gradient after backward", rank, NULL, 0);
      if (gs != BURST_OK) die("%s (rank %d): burst_plan_sinks_gradient after a successful backward with sinks: %s (%s)", what,
                              rank, burst_status_string(gs), burst_last_error());
      for (int64_t i = c->num_heads_q; i < SINK_CAP + 16; ++i)
        if (buf[i] != -7.0f) die("%s (rank %d): burst_plan_sinks_gradient wrote past num_heads_q (%lld) values", what, rank,
                                 (long long)c->num_heads_q);
      memcpy(rs->dsinks, buf, sizeof rs->dsinks);
      memcpy(rk->grad_vals[slot], buf, sizeof rk->grad_vals[slot]);
      rs->has_dsinks = 1;
      rk->grad_ready[slot] = 1;
    } else if (rs->st == BURST_OK && rs->sk_kind == 0) {
      float buf[1];
      burst_status gs = burst_plan_sinks_gradient(plan, buf);
      check_status(gs, "sinks_gradient after backward", rank, NULL, 0);
      if (gs != BURST_ERROR_INVALID_ARGUMENT)
        die("%s (rank %d): burst_plan_sinks_gradient after a backward without sinks gave %s, expected INVALID_ARGUMENT",
            what, rank, burst_status_string(gs));
    }
  }
  for (int t = 0; t < T_COUNT; ++t) {
    char n2[80];
    snprintf(n2, sizeof n2, "%s (rank %d) tensor %s", what, rank, k_tnames[t]);
    buf_check_guard(&rs->t[t], n2);
    if (hin[t] && hash_bytes(rs->t[t].p, rs->t[t].bytes) != hin[t]) die("%s: an input buffer was modified", n2);
  }
  /* Repeat: bitwise identical results (DESIGN §3). */
  if (o->twice && rs->st == BURST_OK && !w->stop_collectives) {
    buf_t save[T_COUNT];
    int outs[5] = {T_OUT, T_LSE, T_DQ, T_DK, T_DV};
    memset(save, 0, sizeof save);
    for (int j = backward ? 2 : 0; j < (backward ? 5 : 2); ++j) {
      int t = outs[j];
      if (rs->has_t[t] && rs->t[t].bytes) {
        buf_alloc(&save[t], rs->t[t].bytes, 0);
        memcpy(save[t].p, rs->t[t].p, rs->t[t].bytes);
        memset(rs->t[t].p, 0xEE, rs->t[t].bytes);
      }
    }
    t0 = now_s();
    if (backward)
      rs->st2 = burst_backward(plan, tptr(rs, T_Q), tptr(rs, T_K), tptr(rs, T_V), tptr(rs, T_OUT),
                               (const float *)tptr(rs, T_LSE), tptr(rs, T_DOUT), tptr(rs, T_DQ), tptr(rs, T_DK),
                               tptr(rs, T_DV));
    else
      rs->st2 = burst_forward(plan, tptr(rs, T_Q), tptr(rs, T_K), tptr(rs, T_V), tptr(rs, T_OUT),
                              (float *)tptr(rs, T_LSE));
    check_status(rs->st2, what, rank, NULL, 0);
    check_time(now_s() - t0, rs->tmo, what, rank);
    if (rs->st2 == BURST_ERROR_TIMEOUT || rs->st2 == BURST_ERROR_COMMUNICATION) rk->poison[slot] = rs->st2;
    if (backward && rs->st2 != BURST_OK) rk->grad_ready[slot] = 0;
    if (backward && rs->st2 == BURST_OK && rs->has_dsinks) { /* the same backward: the same gradient bits */
      float buf[SINK_CAP];
      burst_status gs = burst_plan_sinks_gradient(plan, buf);
      check_status(gs, "sinks_gradient after the repeated backward", rank, NULL, 0);
      if (gs != BURST_OK || memcmp(buf, rs->dsinks, (size_t)c->num_heads_q * 4) != 0)
        die("%s (rank %d): the repeated backward's sinks gradient differs (%s)", what, rank, burst_status_string(gs));
    }
    if (rs->st2 == BURST_OK)
      for (int t = 0; t < T_COUNT; ++t)
        if (save[t].p && memcmp(save[t].p, rs->t[t].p, save[t].bytes) != 0)
          die("%s (rank %d): the same call twice gave different %s (not bitwise reproducible)", what, rank, k_tnames[t]);
    for (int t = 0; t < T_COUNT; ++t) buf_free(&save[t]);
  }
  if (!backward && rs->st == BURST_OK) rk->last_fwd[slot] = op;
}

static void do_stats(world_t *w, int rank, int op) {
  op_t *o = &w->prog->ops[op];
  rank_t *rk = &w->rk[rank];
  res_t *rs = &w->res[op][rank];
  burst_plan *plan = rk->plan[o->slot];
  union { burst_stats s; uint8_t raw[256]; } u;
  uint32_t declared = o->stats_size[rank];
  memset(u.raw, 0xAB, sizeof u.raw);
  memcpy(u.raw, &declared, 4);
  rs->called = 1;
  /* A declared size above the buffer is passed only with no plan or a
   * size the library must refuse without writing (> sizeof). */
  rs->st = burst_plan_stats(plan, &u.s);
  check_status(rs->st, "plan_stats", rank, rs->msg, sizeof rs->msg);
  size_t lim = declared < 4 ? 4 : declared;
  for (size_t i = lim < sizeof u.raw ? lim : sizeof u.raw; i < sizeof u.raw; ++i)
    if (u.raw[i] != 0xAB) die("plan_stats (rank %d, struct_size %u, %s) wrote byte %zu past struct_size", rank,
                              declared, burst_status_string(rs->st), i);
  if (!plan) {
    if (rs->st != BURST_ERROR_INVALID_ARGUMENT) die("plan_stats(NULL plan) gave %s", burst_status_string(rs->st));
    return;
  }
  uint32_t v01 = (uint32_t)(offsetof(burst_stats, total_seconds) + 8), v02 = (uint32_t)(offsetof(burst_stats, tiles_skipped) + 8);
  int known = declared == sizeof(burst_stats) || declared == v01 || declared == v02;
  if (known && rs->st != BURST_OK) die("plan_stats (rank %d) with struct_size %u gave %s", rank, declared, burst_status_string(rs->st));
  /* 0.5: a newer header's larger struct (<= 4096) gets this version's fields,
   * zeros past them and struct_size = the bytes written; above 4096 VERSION. */
  if (declared > 4096 && rs->st == BURST_OK) die("plan_stats accepted struct_size %u > 4096", declared);
  if (declared > sizeof(burst_stats) && declared <= 4096) {
    if (rs->st != BURST_OK) die("plan_stats (rank %d) with a newer struct_size %u gave %s", rank, declared, burst_status_string(rs->st));
    if (u.s.struct_size != sizeof(burst_stats)) die("plan_stats(newer size %u) set struct_size %u", declared, u.s.struct_size);
    for (size_t i = sizeof(burst_stats); i < declared && i < sizeof u.raw; ++i)
      if (u.raw[i] != 0) die("plan_stats(newer size %u) left byte %zu nonzero", declared, i);
  }
  if (rs->st == BURST_OK && declared == sizeof(burst_stats)) {
    const burst_attention_config *c = &rk->plan_cfg[o->slot];
    int P = w->prog->P;
    if (u.s.pattern < 0 || u.s.pattern > 3) die("plan_stats: pattern %d is not a resolved pattern", u.s.pattern);
    if (c->pattern != BURST_PATTERN_AUTO && u.s.pattern != c->pattern)
      die("plan_stats: pattern %d but the config asked for %d", u.s.pattern, c->pattern);
    if (u.s.intra_group_size < 1 || u.s.intra_group_size > P || P % u.s.intra_group_size)
      die("plan_stats: intra_group_size %d for %d ranks", u.s.intra_group_size, P);
    if (c->intra_group_size > 0 && (u.s.pattern == BURST_PATTERN_BURST || u.s.pattern == BURST_PATTERN_RING) &&
        u.s.intra_group_size != c->intra_group_size)
      die("plan_stats: intra_group_size %d, config %d", u.s.intra_group_size, c->intra_group_size);
    if (P == 1 && (u.s.bytes_sent || u.s.bytes_received))
      die("plan_stats: one rank sent %llu / received %llu bytes", (unsigned long long)u.s.bytes_sent,
          (unsigned long long)u.s.bytes_received);
    if (!(u.s.total_seconds >= 0) || !(u.s.compute_seconds >= 0) || !(u.s.comm_wait_seconds >= 0))
      die("plan_stats: negative or NaN seconds");
  }
}

/* The shard helpers, with every expectation from the header (O3, O5). */
static int shard_cu_valid(const op_t *o) {
  if (o->sh_cu_null) return o->sh_nseq == 0 ? 1 : 0;
  if (o->sh_nseq < 0) return 0;
  if (o->sh_nseq == 0) return -1;
  if (o->sh_cu[0] != 0) return 0;
  for (int64_t s = 1; s <= o->sh_nseq; ++s) if (o->sh_cu[s] < o->sh_cu[s - 1]) return 0;
  if (o->sh_cu[o->sh_nseq] != o->sh_total) return 0;
  return 1;
}

static void do_shard_one(const op_t *o, int32_t rank, int rank_thread) {
  const int64_t *cu = o->sh_cu_null ? NULL : o->sh_cu;
  if (cu && o->sh_nseq > CU_CAP - 1) die("harness bug: shard num_sequences %lld > CU_CAP - 1", (long long)o->sh_nseq);
  int64_t total = o->sh_total, nseq = o->sh_nseq;
  int32_t ws = o->sh_ws, dist = o->sh_dist;
  int cu_ok = shard_cu_valid(o);
  int args_bad = dist < 0 || dist > 2 || ws <= 0 || rank < 0 || rank >= ws || total < 0 || cu_ok == 0;
  int args_ok = !args_bad && cu_ok == 1 && total <= (1ll << 40);
  int64_t expect_n = args_ok ? rule_count(dist, total, cu, nseq, ws, rank) : -1;
  char what[160];
  snprintf(what, sizeof what, "shard(dist=%d total=%lld ws=%d rank=%d nseq=%lld outer=%lld row_bytes=%lld)", dist,
           (long long)total, ws, rank, (long long)nseq, (long long)o->sh_outer, (long long)o->sh_rowb);
  /* burst_shard_positions. Capacity modes: 0-2 exact, 3 one too small,
   * 4 three spare, 5 count only (NULL, 0), 6 five, 7 NULL with a capacity
   * (not specified by the header: no expectation). */
  {
    int64_t count = -7, cap, base = expect_n >= 0 ? expect_n : 5, *pos = NULL;
    int mode = o->sh_cap_mode;
    switch (mode) {
      case 3: cap = base > 0 ? base - 1 : 0; break;
      case 4: cap = base + 3; break;
      case 5: cap = 0; break;
      case 6: cap = 5; break;
      case 7: cap = base + 1; break;
      default: cap = base; break;
    }
    if (cap > (1 << 20)) { mode = 5; cap = 0; }
    if (mode != 5 && mode != 7) {
      pos = malloc((size_t)(cap ? cap : 1) * 8 + GUARD);
      if (!pos) die("harness malloc");
      memset(pos, 0xA5, (size_t)(cap ? cap : 1) * 8 + GUARD);
    }
    burst_status st = burst_shard_positions(dist, total, cu, nseq, ws, rank, pos, cap, o->sh_null_count ? NULL : &count);
    check_status(st, "shard_positions", rank_thread, NULL, 0);
    if (args_bad && st == BURST_OK) die("%s: shard_positions accepted invalid arguments", what);
    if (o->sh_null_count && st == BURST_OK) die("%s: shard_positions with count == NULL returned OK", what);
    if (args_ok && !o->sh_null_count) {
      int fits = mode == 5 || (pos && cap >= expect_n);
      if (fits && st != BURST_OK && st != BURST_ERROR_OUT_OF_MEMORY)
        die("%s: shard_positions failed on valid arguments (capacity %lld): %s (%s)", what, (long long)cap,
            burst_status_string(st), burst_last_error());
      if (pos && cap < expect_n && st == BURST_OK)
        die("%s: shard_positions accepted capacity %lld below the count %lld", what, (long long)cap, (long long)expect_n);
      if (st == BURST_OK && count != expect_n)
        die("%s: count %lld, the header's rule gives %lld", what, (long long)count, (long long)expect_n);
      if (st == BURST_OK && pos) {
        int64_t *mine = malloc((size_t)(expect_n ? expect_n : 1) * 8);
        rule_positions(dist, total, cu, nseq, ws, rank, NULL, mine);
        for (int64_t i = 0; i < expect_n; ++i)
          if (pos[i] != mine[i]) die("%s: position %lld is %lld, the rule gives %lld", what, (long long)i, (long long)pos[i], (long long)mine[i]);
        free(mine);
      }
    }
    if (pos) {
      const uint8_t *g = (const uint8_t *)pos;
      /* OK: nothing past the count; failed: nothing past the capacity */
      size_t from = (size_t)(st == BURST_OK && count >= 0 && count <= cap ? count : cap) * 8;
      for (size_t i = from; i < (size_t)(cap ? cap : 1) * 8 + GUARD; ++i)
        if (g[i] != 0xA5) die("%s: shard_positions (%s) wrote byte %zu, past the %lld positions it returned (capacity %lld)",
                              what, burst_status_string(st), i, (long long)(st == BURST_OK ? count : 0), (long long)cap);
    }
    free(pos);
  }
  /* burst_shard and burst_unshard */
  {
    int64_t outer = o->sh_outer, rowb = o->sh_rowb, fb, lb;
    int sizes_ok = outer >= 0 && rowb >= 0 && !__builtin_mul_overflow(outer, total, &fb) &&
                   !__builtin_mul_overflow(fb, rowb, &fb) && fb <= SHARD_BYTES_CAP;
    int have_local = 0;
    if (sizes_ok && args_ok) {
      sizes_ok = !__builtin_mul_overflow(outer, expect_n, &lb) && !__builtin_mul_overflow(lb, rowb, &lb) && lb <= SHARD_BYTES_CAP;
      have_local = sizes_ok;
    }
    buf_t full = {0}, local = {0};
    if (sizes_ok && have_local) {
      buf_alloc(&full, (size_t)fb, 0);
      buf_alloc(&local, (size_t)lb, 0xCC);
      for (int64_t i = 0; i < fb; ++i) full.p[i] = (uint8_t)mix64((uint64_t)i * 31 + 7);
    }
    void *fp = o->sh_null_full ? NULL : full.p, *lp = o->sh_null_local ? NULL : local.p;
    int need = args_ok && sizes_ok && have_local && outer * total * rowb > 0 && expect_n > 0;
    uint64_t hfull = full.p ? hash_bytes(full.p, full.bytes) : 0;
    burst_status st = burst_shard(dist, total, cu, nseq, ws, rank, outer, rowb, full.p ? fp : NULL, local.p ? lp : NULL);
    check_status(st, "shard", rank_thread, NULL, 0);
    if (args_bad && st == BURST_OK) die("%s: burst_shard accepted invalid arguments", what);
    if (need && (!fp || !lp) && st == BURST_OK) die("%s: burst_shard accepted a NULL buffer", what);
    if (need && fp && lp && st != BURST_OK) die("%s: burst_shard failed on valid arguments: %s (%s)", what, burst_status_string(st), burst_last_error());
    buf_check_guard(&full, what);
    buf_check_guard(&local, what);
    if (full.p && hash_bytes(full.p, full.bytes) != hfull) die("%s: burst_shard modified the full buffer", what);
    if (need && st == BURST_OK) {
      int64_t *mine = malloc((size_t)expect_n * 8);
      rule_positions(dist, total, cu, nseq, ws, rank, NULL, mine);
      for (int64_t b = 0; b < outer; ++b)
        for (int64_t i = 0; i < expect_n; ++i)
          if (memcmp(local.p + (size_t)((b * expect_n + i) * rowb), full.p + (size_t)((b * total + mine[i]) * rowb), (size_t)rowb))
            die("%s: local row %lld of block %lld is not full row %lld", what, (long long)i, (long long)b, (long long)mine[i]);
      /* unshard into a fresh full buffer: exactly this rank's rows change */
      buf_t back;
      buf_alloc(&back, full.bytes, 0x5A);
      st = burst_unshard(dist, total, cu, nseq, ws, rank, outer, rowb, local.p, back.p);
      check_status(st, "unshard", rank_thread, NULL, 0);
      if (st != BURST_OK) die("%s: burst_unshard failed after burst_shard succeeded: %s", what, burst_status_string(st));
      buf_check_guard(&back, what);
      {
        uint8_t *mark = calloc((size_t)(total ? total : 1), 1);
        for (int64_t i = 0; i < expect_n; ++i) mark[mine[i]] = 1;
        for (int64_t b = 0; b < outer; ++b)
          for (int64_t t = 0; t < total; ++t) {
            const uint8_t *x = back.p + (size_t)((b * total + t) * rowb), *y = full.p + (size_t)((b * total + t) * rowb);
            for (int64_t j = 0; j < rowb; ++j)
              if (mark[t] ? x[j] != y[j] : x[j] != 0x5A)
                die("%s: unshard row %lld byte %lld wrong (%s row)", what, (long long)t, (long long)j, mark[t] ? "own" : "other rank's");
          }
        free(mark);
      }
      buf_free(&back);
      free(mine);
    } else if (!args_bad) {
      st = burst_unshard(dist, total, cu, nseq, ws, rank, outer, rowb, local.p ? lp : NULL, full.p ? fp : NULL);
      check_status(st, "unshard", rank_thread, NULL, 0);
      if (need && (!fp || !lp) && st == BURST_OK) die("%s: burst_unshard accepted a NULL buffer", what);
      buf_check_guard(&full, what);
      buf_check_guard(&local, what);
    } else {
      st = burst_unshard(dist, total, cu, nseq, ws, rank, outer, rowb, local.p ? lp : NULL, full.p ? fp : NULL);
      check_status(st, "unshard", rank_thread, NULL, 0);
      if (st == BURST_OK) die("%s: burst_unshard accepted invalid arguments", what);
    }
    buf_free(&full);
    buf_free(&local);
  }
}

static void do_shard(world_t *w, int rank, int op) {
  const op_t *o = &w->prog->ops[op];
  do_shard_one(o, o->sh_rank, rank);
  /* Every rank of a small world: the positions partition 0..N-1. */
  if (rank == 0 && o->sh_all_ranks && shard_cu_valid(o) == 1 && o->sh_dist >= 0 && o->sh_dist <= 2 && o->sh_ws > 0 &&
      o->sh_ws <= 64 && o->sh_total >= 0 && o->sh_total <= 4096) {
    const int64_t *cu = o->sh_cu_null ? NULL : o->sh_cu;
    uint8_t *seen = calloc((size_t)o->sh_total + 1, 1);
    int64_t sum = 0, *pos = malloc(((size_t)o->sh_total + 1) * 8);
    for (int32_t r = 0; r < o->sh_ws; ++r) {
      int64_t count = -1;
      burst_status st = burst_shard_positions(o->sh_dist, o->sh_total, cu, o->sh_nseq, o->sh_ws, r, pos, o->sh_total + 1, &count);
      check_status(st, "shard_positions(all ranks)", rank, NULL, 0);
      if (st != BURST_OK) die("shard_positions failed for rank %d of %d", r, o->sh_ws);
      for (int64_t i = 0; i < count; ++i) {
        if (pos[i] < 0 || pos[i] >= o->sh_total || seen[pos[i]]) die("shard_positions: position %lld twice or out of range", (long long)pos[i]);
        if (i && pos[i] <= pos[i - 1]) die("shard_positions: positions not increasing");
        seen[pos[i]] = 1;
      }
      sum += count;
    }
    if (sum != o->sh_total) die("shard_positions: the ranks hold %lld of %lld tokens", (long long)sum, (long long)o->sh_total);
    if (o->sh_dist == BURST_DISTRIBUTION_ZIGZAG && !cu && o->sh_total % (2 * o->sh_ws) == 0) {
      /* balanced */
    }
    free(seen);
    free(pos);
  }
}

/* burst_plan_set_sinks (0.8), local: a NaN or an infinity is refused
 * (INVALID_ARGUMENT) and kept, so that the plan's next collective calls fail;
 * anything else (NULL too) is OK, and the gradient is forgotten. */
static void do_set_sinks(world_t *w, int rank, int op) {
  op_t *o = &w->prog->ops[op];
  rank_t *rk = &w->rk[rank];
  res_t *rs = &w->res[op][rank];
  burst_plan *plan = rk->plan[o->slot];
  float vals[SINK_CAP];
  int64_t hq = plan ? rk->plan_cfg[o->slot].num_heads_q : 1;
  int mine = rank == o->sk_rank, null = 0, bad = 0;
  if (hq > SINK_CAP) return; /* the array could not hold num_heads_q values: every rank skips alike */
  for (int h = 0; h < SINK_CAP; ++h) {
    uint64_t m = mix64(o->sk_seed * 7919u + (uint64_t)h);
    vals[h] = o->sk_mode == 3 ? (m & 1 ? 1e30f : -FLT_MAX) : (float)((int)(m % 41) - 20) / 5.0f;
  }
  switch (o->sk_mode) {
    case 4: null = 1; break;
    case 5: if (mine) { vals[hq - 1] = NAN; bad = 1; } break;
    case 6: if (mine) { vals[0] = (o->sk_seed & 1) ? INFINITY : -INFINITY; bad = 1; } break;
    case 7: if (mine) vals[0] += 0.25f; break;
    case 8: null = mine; break;
    default: break;
  }
  rs->called = 1;
  rs->st = burst_plan_set_sinks(plan, null ? NULL : vals);
  check_status(rs->st, "set_sinks", rank, rs->msg, sizeof rs->msg);
  if (!plan) {
    if (rs->st != BURST_ERROR_INVALID_ARGUMENT) die("set_sinks(NULL plan) gave %s", burst_status_string(rs->st));
    return;
  }
  if (rk->poison[o->slot] != BURST_OK) return; /* unusable: any error */
  if (bad && rs->st != BURST_ERROR_INVALID_ARGUMENT)
    die("op %d set_sinks (rank %d) with a NaN / infinite value gave %s, expected INVALID_ARGUMENT", op, rank,
        burst_status_string(rs->st));
  if (!bad && rs->st != BURST_OK)
    die("op %d set_sinks (rank %d) with %s gave %s (%s)", op, rank, null ? "NULL" : "finite values",
        burst_status_string(rs->st), rs->msg);
  rk->sk_kind[o->slot] = bad ? 2 : null ? 0 : 1;
  memcpy(rk->sk_vals[o->slot], vals, sizeof vals);
  rk->grad_ready[o->slot] = 0;
}

/* burst_plan_sinks_gradient (0.8), local: OK with the last backward's values
 * exactly when that backward succeeded with sinks since they were set. */
static void do_sinks_grad(world_t *w, int rank, int op) {
  op_t *o = &w->prog->ops[op];
  rank_t *rk = &w->rk[rank];
  res_t *rs = &w->res[op][rank];
  burst_plan *plan = rk->plan[o->slot];
  int64_t hq = plan ? rk->plan_cfg[o->slot].num_heads_q : 1;
  buf_t out = {0};
  if (hq > (1 << 16)) return;
  buf_alloc(&out, (size_t)hq * 4, 0xEE);
  int null = o->sk_null && rank == o->sk_rank;
  rs->called = 1;
  rs->st = burst_plan_sinks_gradient(plan, null ? NULL : (float *)out.p);
  check_status(rs->st, "sinks_gradient", rank, rs->msg, sizeof rs->msg);
  buf_check_guard(&out, "sinks_gradient dsinks");
  if (!plan || null) {
    if (rs->st != BURST_ERROR_INVALID_ARGUMENT)
      die("op %d sinks_gradient (rank %d) with %s gave %s, expected INVALID_ARGUMENT", op, rank,
          plan ? "dsinks = NULL" : "plan = NULL", burst_status_string(rs->st));
  } else if (rk->poison[o->slot] != BURST_OK) {
    /* unusable plan: an error, or the gradient it had */
  } else if (rk->grad_ready[o->slot]) {
    if (rs->st != BURST_OK)
      die("op %d sinks_gradient (rank %d) after a successful backward with sinks gave %s (%s)", op, rank,
          burst_status_string(rs->st), rs->msg);
    if (memcmp(out.p, rk->grad_vals[o->slot], (size_t)hq * 4) != 0)
      die("op %d sinks_gradient (rank %d): not the values it gave right after the backward", op, rank);
  } else if (rs->st != BURST_ERROR_INVALID_ARGUMENT) {
    die("op %d sinks_gradient (rank %d) with no backward with sinks since plan_create / set_sinks (or after a failed "
        "one) gave %s, expected INVALID_ARGUMENT", op, rank, burst_status_string(rs->st));
  }
  buf_free(&out);
}

typedef struct { burst_plan *plan; res_t *rs; const burst_attention_config *c; burst_status st; buf_t out, lse; } conc_t;
static void *conc_thread(void *p) {
  conc_t *a = p;
  a->st = burst_forward(a->plan, tptr(a->rs, T_Q), tptr(a->rs, T_K), tptr(a->rs, T_V), a->out.p ? a->out.p : NULL,
                        a->lse.p ? (float *)a->lse.p : NULL);
  check_status(a->st, "concurrent forward", 0, NULL, 0);
  return NULL;
}

/* Two threads on one plan (world size 1 only: a second rank would need its
 * own pair of threads): each OK or BUSY, and OK results identical. */
static void do_concurrent(world_t *w, int rank, int op) {
  prog_t *pg = w->prog;
  op_t *o = &pg->ops[op];
  rank_t *rk = &w->rk[rank];
  res_t *rs = &w->res[op][rank];
  burst_plan *plan = rk->plan[o->slot];
  if (pg->P != 1 || !plan || rk->poison[o->slot] != BURST_OK || rk->sk_kind[o->slot] == 2) return;
  const burst_attention_config *c = &rk->plan_cfg[o->slot];
  sizes_t sz = plan_sizes(c);
  if (!sz.ok || sz.n[T_Q] > ELEM_CAP || sz.n[T_K] > ELEM_CAP) return;
  for (int t = T_Q; t <= T_LSE; ++t) make_tensor(rs, t, sz.n[t], c->dtype, 0);
  for (int t = T_Q; t <= T_V; ++t)
    if (rs->has_t[t]) fill_tensor(rs->t[t].p, (size_t)sz.n[t], c->dtype, o->seed + (uint64_t)t, o->in_mode);
  conc_t a[2];
  pthread_t th[2];
  for (int i = 0; i < 2; ++i) {
    a[i].plan = plan; a[i].rs = rs; a[i].c = c;
    buf_alloc(&a[i].out, rs->t[T_OUT].bytes, 0xFF);
    buf_alloc(&a[i].lse, rs->t[T_LSE].bytes, 0xFF);
    if (pthread_create(&th[i], NULL, conc_thread, &a[i])) die("pthread_create");
  }
  for (int i = 0; i < 2; ++i) pthread_join(th[i], NULL);
  rs->called = 1;
  for (int i = 0; i < 2; ++i) {
    if (a[i].st != BURST_OK && a[i].st != BURST_ERROR_BUSY &&
        !(a[i].st == BURST_ERROR_INVALID_ARGUMENT && sz.n[T_Q] == 0))
      die("concurrent forward on one plan: %s (expected OK or BUSY)", burst_status_string(a[i].st));
    if (a[i].st == BURST_ERROR_TIMEOUT) rk->poison[o->slot] = a[i].st;
    buf_check_guard(&a[i].out, "concurrent out");
    buf_check_guard(&a[i].lse, "concurrent lse");
  }
  if (a[0].st == BURST_OK && a[1].st == BURST_OK &&
      (memcmp(a[0].out.p, a[1].out.p, a[0].out.bytes) || memcmp(a[0].lse.p, a[1].lse.p, a[0].lse.bytes)))
    die("concurrent forward: two OK calls on the same inputs gave different results");
  for (int i = 0; i < 2; ++i) { buf_free(&a[i].out); buf_free(&a[i].lse); }
}

static void run_op(world_t *w, int rank, int op) {
  prog_t *pg = w->prog;
  op_t *o = &pg->ops[op];
  rank_t *rk = &w->rk[rank];
  res_t *rs = &w->res[op][rank];
  switch (o->kind) {
    case OP_PLAN_CREATE:
      do_plan_create(w, rank, op);
      after_collective(w, op);
      break;
    case OP_FORWARD:
      do_attention(w, rank, op, 0, -1);
      after_collective(w, op);
      break;
    case OP_BACKWARD:
      do_attention(w, rank, op, 1, -1);
      after_collective(w, op);
      break;
    case OP_DIVERGE:
      if (pg->P > 1 && rank == o->div_rank) {
        if (o->div_kind == 0) do_attention(w, rank, op, 0, -1); /* forward while the others run backward */
        /* kind 1: this rank makes no call at all */
      } else {
        do_attention(w, rank, op, pg->P > 1, -1);
      }
      after_collective(w, op);
      break;
    case OP_STATS: do_stats(w, rank, op); break;
    case OP_PLAN_DESTROY:
      burst_plan_destroy(rk->plan[o->slot]);
      rk->plan[o->slot] = NULL;
      break;
    case OP_CTX_RANK: {
      int32_t rr = -5, ss = -5;
      if (pg->ctx_kind == 2) break;
      rs->called = 1;
      rs->st = burst_context_rank(rk->ctx, (o->seed & 1) ? NULL : &rr, (o->seed & 2) ? NULL : &ss);
      check_status(rs->st, "context_rank", rank, NULL, 0);
      if (!rk->ctx) { if (rs->st == BURST_OK) die("context_rank(NULL) returned OK"); break; }
      if (rs->st != BURST_OK) die("context_rank failed: %s", burst_status_string(rs->st));
      if (!(o->seed & 1) && rr != rank) die("context_rank: rank %d, expected %d", rr, rank);
      if (!(o->seed & 2) && ss != pg->P) die("context_rank: size %d, expected %d", ss, pg->P);
      break;
    }
    case OP_SHARD: do_shard(w, rank, op); break;
    case OP_STATUS_STRING: {
      static const char *names[10] = {"BURST_OK", "BURST_ERROR_INVALID_ARGUMENT", "BURST_ERROR_UNSUPPORTED",
                                      "BURST_ERROR_OUT_OF_MEMORY", "BURST_ERROR_MISMATCH", "BURST_ERROR_COMMUNICATION",
                                      "BURST_ERROR_INTERNAL", "BURST_ERROR_VERSION", "BURST_ERROR_TIMEOUT",
                                      "BURST_ERROR_BUSY"};
      uint32_t v = (uint32_t)o->status_value;
      const char *s = burst_status_string((burst_status)v);
      if (!s) die("burst_status_string(%u) returned NULL", v);
      if (strcmp(s, v < 10 ? names[v] : "BURST_ERROR_UNKNOWN") != 0) die("burst_status_string(%u) = \"%s\"", v, s);
      break;
    }
    case OP_LAST_ERROR: {
      const char *m = burst_last_error();
      if (!m) die("burst_last_error() returned NULL");
      (void)strlen(m);
      break;
    }
    case OP_CTX_DESTROY:
      if (pg->ctx_kind == 2) break;
      burst_context_destroy(rk->ctx); /* plans keep working: the header only asks to destroy plans first */
      rk->ctx = NULL;
      break;
    case OP_CONCURRENT: do_concurrent(w, rank, op); break;
    case OP_SET_SINKS: do_set_sinks(w, rank, op); break;
    case OP_SINKS_GRAD: do_sinks_grad(w, rank, op); break;
    default: break;
  }
}

static void *rank_thread(void *p) {
  targ_t *a = p;
  world_t *w = a->w;
  for (int op = 0; op < w->prog->nops; ++op) run_op(w, a->rank, op);
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Checks across ranks after the join (O2, O3, O4)                           */
static double stor_u(int32_t dtype) { return dtype == BURST_DTYPE_BF16 ? 1.0 / 256 : dtype == BURST_DTYPE_F16 ? 1.0 / 2048 : 0; }

static size_t tidx(const burst_attention_config *c, int64_t S, int64_t H, int64_t b, int64_t t, int64_t h, int64_t x) {
  if (c->layout == BURST_LAYOUT_BSHD) return (size_t)((((b * S + t) * H + h) * c->head_dim) + x);
  return (size_t)((((b * H + h) * S + t) * c->head_dim) + x);
}

/* Forward (and backward) against float64 on every rank's data. */
static void check_reference(world_t *w, int op, int backward) {
  prog_t *pg = w->prog;
  int P = pg->P;
  res_t *R[MAXR];
  int64_t S[MAXR], N = 0;
  for (int r = 0; r < P; ++r) {
    R[r] = &w->res[op][r];
    if (!R[r]->called || R[r]->st != BURST_OK) return;
    if (backward && !R[r]->from_fwd) return;
    S[r] = R[r]->cfg.seq_len_local;
    N += S[r];
  }
  const burst_attention_config *c = &R[0]->cfg;
  int64_t B = c->batch, Hq = c->num_heads_q, Hkv = c->num_heads_kv, d = c->head_dim, g = Hq / Hkv;
  /* nothing to check, and loops over batch x heads alone could be endless */
  if (N == 0 || (double)B * (double)Hq * (double)d * (double)N > 4.0 * ELEM_CAP * MAXR) return;
  int32_t dt = c->dtype;
  const int fast = cfg_bf16_products(c);
  for (int r = 0; r < P; ++r)
    for (int t = 0; t <= (backward ? T_DV : T_OUT); ++t)
      if (t != T_LSE && S[r] > 0 && !R[r]->has_t[t]) return;
  float fscale = c->softmax_scale != 0 ? c->softmax_scale : 1.0f / (float)sqrt((double)d);
  double scale = (double)fscale;
  /* 0.8: x = cap * tanh(s / cap) (cap > 0), and exp(sink_h) in every
   * denominator (the plan's sinks at the call, the same on every rank) */
  const double cap = (double)cfg_softcap(c);
  int tame = R[0]->in_mode == IN_UNIT || R[0]->in_mode == IN_LARGE;
  int unit = R[0]->in_mode == IN_UNIT && fabs(scale) <= 1.0001 / sqrt((double)d);
  for (int r = 1; r < P; ++r) if (R[r]->in_mode != R[0]->in_mode) return;
  if (!tame) return;
  /* finite / tame-scale: |scale| <= 4 */
  if (!(fabs(scale) <= 4.0)) return;
  double work = (double)B * (double)Hq * (double)N * (double)N * (double)d * (backward ? 3 : 1);
  if (work > REF_CAP) unit = 0;
  const int64_t *cu = c->cu_seqlens;
  int64_t *pos[MAXR];
  for (int r = 0; r < P; ++r) {
    pos[r] = malloc((size_t)(S[r] ? S[r] : 1) * 8);
    rule_positions(c->distribution, N, cu, c->num_sequences, P, r, S, pos[r]);
  }
  /* the library's helper deals the same tokens (zigzag / striped) */
  if (c->distribution != BURST_DISTRIBUTION_CONTIGUOUS)
    for (int r = 0; r < P; ++r) {
      int64_t cnt = -1, *lp = malloc((size_t)(S[r] ? S[r] : 1) * 8);
      burst_status st = burst_shard_positions(c->distribution, N, cu, c->num_sequences, P, r, lp, S[r], &cnt);
      if (st != BURST_OK || cnt != S[r]) die("shard_positions disagrees with the plan: %s, count %lld vs %lld", burst_status_string(st), (long long)cnt, (long long)S[r]);
      for (int64_t i = 0; i < cnt; ++i) if (lp[i] != pos[r][i]) die("shard_positions disagrees with the rule at %lld", (long long)i);
      free(lp);
    }
  /* Finiteness (tame inputs, |scale| <= 4). */
  for (int r = 0; r < P; ++r) {
    size_t n = (size_t)(B * S[r] * Hq * d);
    for (size_t i = 0; i < n && !backward; ++i)
      if (!elem_finite(R[r]->t[T_OUT].p, dt, i)) die("op %d forward (rank %d): out[%zu] not finite with finite inputs", op, r, i);
    if (!backward && R[r]->has_t[T_LSE])
      for (size_t i = 0; i < (size_t)(B * S[r] * Hq); ++i)
        if (!isfinite(((float *)R[r]->t[T_LSE].p)[i])) die("op %d forward (rank %d): lse[%zu] = %g, every query sees its own key", op, r, i, (double)((float *)R[r]->t[T_LSE].p)[i]);
    if (backward && dt != BURST_DTYPE_F16) {
      for (int t = T_DQ; t <= T_DV; ++t) {
        size_t m = R[r]->t[t].bytes / esize(dt);
        for (size_t i = 0; i < m; ++i)
          if (!elem_finite(R[r]->t[t].p, dt, i)) die("op %d backward (rank %d): %s[%zu] not finite with finite inputs", op, r, k_tnames[t], i);
      }
    }
  }
  if (!unit) goto done;
  ++*(backward ? &g_bwd_ref_checks : &g_ref_checks);
  if (R[0]->sk_kind == 1) ++g_sink_ref_checks;
  if (cap > 0) ++g_cap_ref_checks;
  {
    /* Reference. Canonical arrays per rank: out [b][h][t][x], lse [b][h][t]. */
    /* m*: the same sums over the terms' absolute values. fp32 accumulation
     * errs by a small multiple of them, which matters where the terms cancel
     * (dS = P (dP - D) for a query that sees one key: the exact gradient is
     * ~0 and 1e-4 max|ref| is itself at rounding level). */
    double *ro[MAXR], *rl[MAXR], *rdq[MAXR], *rdk[MAXR], *rdv[MAXR], *mdq[MAXR], *mdk[MAXR], *mdv[MAXR], *mo[MAXR];
    for (int r = 0; r < P; ++r) {
      size_t nq = (size_t)(B * Hq * (S[r] ? S[r] : 1) * d), nk = (size_t)(B * Hkv * (S[r] ? S[r] : 1) * d);
      ro[r] = calloc(nq, 8); rl[r] = calloc((size_t)(B * Hq * (S[r] ? S[r] : 1)), 8);
      rdq[r] = calloc(nq, 8); rdk[r] = calloc(nk, 8); rdv[r] = calloc(nk, 8);
      mdq[r] = calloc(nq, 8); mdk[r] = calloc(nk, 8); mdv[r] = calloc(nk, 8); mo[r] = calloc(nq, 8);
    }
    double *srow = malloc((size_t)(N ? N : 1) * 8);
    double max_out = 0, max_dq = 0, max_dk = 0, max_dv = 0;
    /* dL/d sinks: each rank's partial over its rows, and the sums of the
     * terms' absolute values (the cancellation floor, as for dq) */
    double ds_ref[MAXR][SINK_CAP], ds_abs[MAXR][SINK_CAP], max_ds = 0;
    memset(ds_ref, 0, sizeof ds_ref);
    memset(ds_abs, 0, sizeof ds_abs);
    for (int r = 0; r < P; ++r)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < Hq; ++h) {
          int64_t hk = h / g;
          const int has_sink = R[r]->sk_kind == 1;
          const double sink = has_sink ? (double)R[r]->sk_vals[h] : -INFINITY;
          for (int64_t i = 0; i < S[r]; ++i) {
            int64_t pi = pos[r][i];
            double m = sink, l = 0;
            int64_t col = 0;
            for (int s = 0; s < P; ++s)
              for (int64_t j = 0; j < S[s]; ++j, ++col) {
                srow[col] = NAN;
                if (!visible(c->mask == BURST_MASK_CAUSAL, c->window_left, c->window_right, cu, c->num_sequences, pi, pos[s][j])) continue;
                double acc = 0;
                for (int64_t x = 0; x < d; ++x)
                  acc += elem_in(R[r]->t[T_Q].p, dt, tidx(c, S[r], Hq, b, i, h, x), fast) * elem_in(R[s]->t[T_K].p, dt, tidx(c, S[s], Hkv, b, j, hk, x), fast);
                srow[col] = cap > 0 ? cap * tanh(acc * scale / cap) : acc * scale;
                if (srow[col] > m) m = srow[col];
              }
            double *o = ro[r] + (size_t)(((b * Hq + h) * S[r] + i) * d);
            col = 0;
            for (int s = 0; s < P; ++s)
              for (int64_t j = 0; j < S[s]; ++j, ++col) {
                if (isnan(srow[col])) continue;
                double p = exp(srow[col] - m);
                double *oa = mo[r] + (size_t)(((b * Hq + h) * S[r] + i) * d);
                l += p;
                for (int64_t x = 0; x < d; ++x) {
                  double vx = elem_in(R[s]->t[T_V].p, dt, tidx(c, S[s], Hkv, b, j, hk, x), fast);
                  o[x] += p * vx;
                  oa[x] += p * fabs(vx);
                }
              }
            if (has_sink) l += exp(sink - m);
            for (int64_t x = 0; x < d; ++x) {
              o[x] /= l;
              mo[r][(size_t)(((b * Hq + h) * S[r] + i) * d) + (size_t)x] /= l;
              if (fabs(o[x]) > max_out) max_out = fabs(o[x]);
            }
            rl[r][(b * Hq + h) * S[r] + i] = m + log(l);
            if (!backward) continue;
            /* Backward with the given out and lse (as the library uses them). */
            double L = (double)((const float *)R[r]->t[T_LSE].p)[(b * Hq + h) * S[r] + i], D = 0, Da = 0;
            for (int64_t x = 0; x < d; ++x) {
              double g = elem_in(R[r]->t[T_DOUT].p, dt, tidx(c, S[r], Hq, b, i, h, x), fast);
              double o = elem_get(R[r]->t[T_OUT].p, dt, tidx(c, S[r], Hq, b, i, h, x));
              D += g * o;
              Da += fabs(g * o);
            }
            if (has_sink && h < SINK_CAP) {
              ds_ref[r][h] -= exp(sink - L) * D;
              ds_abs[r][h] += exp(sink - L) * Da * (1 + fabs(sink - L));
            }
            col = 0;
            for (int s = 0; s < P; ++s)
              for (int64_t j = 0; j < S[s]; ++j, ++col) {
                if (isnan(srow[col])) continue;
                double p = exp(srow[col] - L), dp = 0, dpa = 0;
                for (int64_t x = 0; x < d; ++x) {
                  double t = elem_in(R[r]->t[T_DOUT].p, dt, tidx(c, S[r], Hq, b, i, h, x), fast) * elem_in(R[s]->t[T_V].p, dt, tidx(c, S[s], Hkv, b, j, hk, x), fast);
                  dp += t;
                  dpa += fabs(t);
                }
                /* the absolute terms of dS: fp32 dot products err by a few ulps of
                 * these. softcap: dS gains the factor 1 - (x / cap)^2; the floor
                 * keeps the uncapped terms (the library's fp32 factor errs by a
                 * few ulps of 1 where the exact one is near 0). */
                double ds = p * (dp - D) * scale, dsa = p * (dpa + Da) * fabs(scale);
                if (cap > 0) ds *= 1.0 - (srow[col] / cap) * (srow[col] / cap);
                size_t iq = (size_t)(((b * Hq + h) * S[r] + i) * d), ik = (size_t)(((b * Hkv + hk) * S[s] + j) * d);
                for (int64_t x = 0; x < d; ++x) {
                  double kx = elem_in(R[s]->t[T_K].p, dt, tidx(c, S[s], Hkv, b, j, hk, x), fast);
                  double qx = elem_in(R[r]->t[T_Q].p, dt, tidx(c, S[r], Hq, b, i, h, x), fast);
                  double ox = elem_in(R[r]->t[T_DOUT].p, dt, tidx(c, S[r], Hq, b, i, h, x), fast);
                  rdq[r][iq + x] += ds * kx; mdq[r][iq + x] += dsa * fabs(kx);
                  rdk[s][ik + x] += ds * qx; mdk[s][ik + x] += dsa * fabs(qx);
                  rdv[s][ik + x] += p * ox;  mdv[s][ik + x] += p * fabs(ox);
                }
              }
          }
        }
    double u = stor_u(dt), tiny = dt == BURST_DTYPE_F16 ? ldexp(1.0, -24) : 1e-37;
    /* Relative bounds: fp32 products (DESIGN §3), or the FAST ones; the
     * absolute-term parts (m*, mo) cover cancellation, at bf16's precision
     * for FAST: random shapes (d = 1, a few keys) give outputs far smaller
     * than the values they average (|out| << |v|), and bf16 rounding errs
     * by a fraction of |v|, not of |out| — a bound relative to max|out|
     * alone fails there even for exact products of the rounded inputs. */
    const double out_rel = fast ? VREF_FAST_OUT_TOL : 1e-5, grad_rel = fast ? VREF_FAST_GRAD_TOL : 1e-4;
    const double lse_abs = fast ? VREF_FAST_LSE_TOL : 1e-4, cancel_rel = fast ? 1e-2 : 1e-5;
    const double out_cancel = fast ? 1e-2 : 0;
    if (!backward) {
      for (int r = 0; r < P; ++r)
        for (int64_t b = 0; b < B; ++b)
          for (int64_t h = 0; h < Hq; ++h)
            for (int64_t i = 0; i < S[r]; ++i) {
              for (int64_t x = 0; x < d; ++x) {
                double ref = ro[r][((b * Hq + h) * S[r] + i) * d + x];
                double got = elem_get(R[r]->t[T_OUT].p, dt, tidx(c, S[r], Hq, b, i, h, x));
                double tol = out_rel * max_out + out_cancel * mo[r][((b * Hq + h) * S[r] + i) * d + x] + u * fabs(ref) + tiny;
                if (!(fabs(got - ref) <= tol))
                  die("op %d forward (rank %d): out[b=%lld h=%lld t=%lld x=%lld] = %.9g, float64 reference %.9g (tolerance %.3g)",
                      op, r, (long long)b, (long long)h, (long long)i, (long long)x, got, ref, tol);
              }
              if (R[r]->has_t[T_LSE]) {
                double ref = rl[r][(b * Hq + h) * S[r] + i], got = ((float *)R[r]->t[T_LSE].p)[(b * Hq + h) * S[r] + i];
                if (!(fabs(got - ref) <= lse_abs))
                  die("op %d forward (rank %d): lse[b=%lld h=%lld t=%lld] = %.9g, float64 reference %.9g", op, r,
                      (long long)b, (long long)h, (long long)i, got, ref);
              }
            }
    } else {
      /* dL/d sinks: each rank's partial (the gradient tolerance of the
       * largest partial, plus the cancellation floor; exp(s - lse) in fp32
       * errs by |s - lse| ulps, hence the (1 + |s - lse|) in ds_abs) */
      for (int r = 0; r < P; ++r)
        for (int64_t h = 0; h < Hq && h < SINK_CAP; ++h)
          if (fabs(ds_ref[r][h]) > max_ds) max_ds = fabs(ds_ref[r][h]);
      for (int r = 0; r < P; ++r) {
        /* Only where the forward that made lse had the same sinks: after a
         * set_sinks in between, lse lacks the new sink and exp(s - lse)
         * may overflow (a huge sink: inf * D, NaN for D = 0) — garbage in. */
        const res_t *f = &w->res[R[r]->fwd_op][r];
        if (!R[r]->has_dsinks || f->sk_kind != R[r]->sk_kind ||
            memcmp(f->sk_vals, R[r]->sk_vals, (size_t)(Hq < SINK_CAP ? Hq : SINK_CAP) * 4) != 0)
          continue;
        for (int64_t h = 0; h < Hq && h < SINK_CAP; ++h) {
            double got = R[r]->dsinks[h], ref = ds_ref[r][h];
            double tol = grad_rel * max_ds + (fast ? 1e-2 : 1e-4) * ds_abs[r][h] + 1e-30;
            if (!(fabs(got - ref) <= tol))
              die("op %d backward (rank %d): dsinks[h=%lld] = %.9g, float64 reference of this rank's partial %.9g "
                  "(tolerance %.3g)", op, r, (long long)h, got, ref, tol);
        }
      }
      for (int r = 0; r < P; ++r) {
        size_t nq = (size_t)(B * Hq * S[r] * d), nk = (size_t)(B * Hkv * S[r] * d);
        for (size_t i = 0; i < nq; ++i) if (fabs(rdq[r][i]) > max_dq) max_dq = fabs(rdq[r][i]);
        for (size_t i = 0; i < nk; ++i) {
          if (fabs(rdk[r][i]) > max_dk) max_dk = fabs(rdk[r][i]);
          if (fabs(rdv[r][i]) > max_dv) max_dv = fabs(rdv[r][i]);
        }
      }
      for (int r = 0; r < P; ++r)
        for (int64_t b = 0; b < B; ++b)
          for (int64_t i = 0; i < S[r]; ++i)
            for (int64_t x = 0; x < d; ++x) {
              for (int64_t h = 0; h < Hq; ++h) {
                double ref = rdq[r][((b * Hq + h) * S[r] + i) * d + x];
                double got = elem_get(R[r]->t[T_DQ].p, dt, tidx(c, S[r], Hq, b, i, h, x));
                double tol = grad_rel * max_dq + cancel_rel * mdq[r][((b * Hq + h) * S[r] + i) * d + x] + u * fabs(ref) + tiny;
                if (!(fabs(got - ref) <= tol))
                  die("op %d backward (rank %d): dq[b=%lld h=%lld t=%lld x=%lld] = %.9g, float64 reference %.9g (tolerance %.3g)",
                      op, r, (long long)b, (long long)h, (long long)i, (long long)x, got, ref, tol);
              }
              for (int64_t h = 0; h < Hkv; ++h) {
                double refk = rdk[r][((b * Hkv + h) * S[r] + i) * d + x], refv = rdv[r][((b * Hkv + h) * S[r] + i) * d + x];
                double gotk = elem_get(R[r]->t[T_DK].p, dt, tidx(c, S[r], Hkv, b, i, h, x));
                double gotv = elem_get(R[r]->t[T_DV].p, dt, tidx(c, S[r], Hkv, b, i, h, x));
                size_t ik = (size_t)(((b * Hkv + h) * S[r] + i) * d + x);
                double tk = grad_rel * max_dk + cancel_rel * mdk[r][ik] + u * fabs(refk) + tiny;
                double tv = grad_rel * max_dv + cancel_rel * mdv[r][ik] + u * fabs(refv) + tiny;
                if (!(fabs(gotk - refk) <= tk))
                  die("op %d backward (rank %d): dk[b=%lld h=%lld t=%lld x=%lld] = %.9g, float64 reference %.9g (tolerance %.3g)",
                      op, r, (long long)b, (long long)h, (long long)i, (long long)x, gotk, refk, tk);
                if (!(fabs(gotv - refv) <= tv))
                  die("op %d backward (rank %d): dv[b=%lld h=%lld t=%lld x=%lld] = %.9g, float64 reference %.9g (tolerance %.3g)",
                      op, r, (long long)b, (long long)h, (long long)i, (long long)x, gotv, refv, tv);
              }
            }
    }
    free(srow);
    for (int r = 0; r < P; ++r) {
      free(ro[r]); free(rl[r]); free(rdq[r]); free(rdk[r]); free(rdv[r]); free(mdq[r]); free(mdk[r]); free(mdv[r]); free(mo[r]);
    }
  }
done:
  for (int r = 0; r < P; ++r) free(pos[r]);
}

static void check_op(world_t *w, int op) {
  prog_t *pg = w->prog;
  op_t *o = &pg->ops[op];
  int P = pg->P, n_called = 0, n_ok = 0, n_timeout = 0;
  for (int r = 0; r < P; ++r) {
    res_t *rs = &w->res[op][r];
    if (!rs->called || !rs->collective) continue;
    ++n_called;
    if (rs->st == BURST_OK) ++n_ok;
    if (rs->st == BURST_ERROR_TIMEOUT) ++n_timeout;
  }
  if (!n_called) return;
  int is_collective = o->kind == OP_PLAN_CREATE || o->kind == OP_FORWARD || o->kind == OP_BACKWARD || o->kind == OP_DIVERGE;
  if (!is_collective) return;
  /* O2: agreement of the outcome class. A DIVERGE with a skipping rank has
   * ranks that never called; those that did must all fail. */
  if (o->kind == OP_DIVERGE && P > 1) {
    if (n_ok) die("op %d: ranks made different collective calls, yet %d of them returned OK", op, n_ok);
    return;
  }
  if (n_called != P) return; /* some ranks skipped (stopped after a timeout): nothing to compare */
  if (n_ok != 0 && n_ok != P) {
    if (n_timeout && !g_strict_timeout) { ++g_timeout_exempt; return; }
    char buf[512];
    size_t k = 0;
    for (int r = 0; r < P; ++r)
      k += (size_t)snprintf(buf + k, sizeof buf - k, " rank %d: %s (%s);", r, burst_status_string(w->res[op][r].st),
                            w->res[op][r].msg);
    die("op %d %s: outcomes differ across ranks:%s", op, k_op_names[o->kind], buf);
  }
  /* O3: expected outcomes. */
  if (o->kind == OP_PLAN_CREATE) {
    static cfgvar_t tmp;
    cfgvar_t *v = &tmp;
    tmp = pg->cv[o->cfgv];
    classify_cfg(v, P, o->null_out);
    int exp = v->expect;
    if (n_timeout) return;
    if (exp == EXP_OK && n_ok != P) {
      /* OUT_OF_MEMORY is the one failure a valid config may still meet */
      for (int r = 0; r < P; ++r)
        if (w->res[op][r].st != BURST_OK && w->res[op][r].st != BURST_ERROR_OUT_OF_MEMORY)
          die("op %d plan_create: a config valid by the header's rules failed on rank %d: %s (%s)", op, r,
              burst_status_string(w->res[op][r].st), w->res[op][r].msg);
    }
    if (exp == EXP_FAIL || exp == EXP_MISMATCH || exp == EXP_UNSUPPORTED) {
      if (n_ok) die("op %d plan_create: expected %s on every rank, got OK", op, k_exp_names[exp]);
      for (int r = 0; r < P; ++r)
          if (v->bad_rank_status[r] >= 0 && exp == EXP_FAIL && (int)w->res[op][r].st != v->bad_rank_status[r])
            die("op %d plan_create: rank %d must return %s itself, got %s (%s)", op, r,
                burst_status_string((burst_status)v->bad_rank_status[r]), burst_status_string(w->res[op][r].st),
                w->res[op][r].msg);
    }
    if (exp == EXP_MISMATCH)
      for (int r = 0; r < P; ++r) {
        if (w->res[op][r].st != BURST_ERROR_MISMATCH)
          die("op %d plan_create: field %s differs, rank %d got %s (%s), expected MISMATCH", op, v->field, r,
              burst_status_string(w->res[op][r].st), w->res[op][r].msg);
        if (!strstr(w->res[op][r].msg, v->field) && !(v->field2 && strstr(w->res[op][r].msg, v->field2)))
          die("op %d plan_create: MISMATCH message on rank %d does not name the field %s: \"%s\"", op, r, v->field,
              w->res[op][r].msg);
      }
    if (exp == EXP_UNSUPPORTED)
      for (int r = 0; r < P; ++r)
        if (w->res[op][r].st != BURST_ERROR_UNSUPPORTED)
          die("op %d plan_create: ULYSSES with num_heads_kv %% P != 0 gave %s on rank %d, expected UNSUPPORTED", op,
              burst_status_string(w->res[op][r].st), r);
    return;
  }
  /* forward / backward */
  if (n_timeout) return;
  {
    int backward = o->kind == OP_BACKWARD;
    int any_null = 0, null_rank = -1;
    for (int r = 0; r < P; ++r) {
      res_t *rs = &w->res[op][r];
      sizes_t sz = plan_sizes(&rs->cfg);
      for (int t = 0; t <= (backward ? T_DV : T_OUT); ++t)
        if (t != T_LSE || backward)
          if (!rs->has_t[t] && sz.n[t] > 0) { any_null = 1; if (null_rank < 0) null_rank = r; }
    }
    /* 0.8: sinks refused by set_sinks on some rank (kept: INVALID_ARGUMENT on
     * every rank), or sinks that differ by rank (MISMATCH on every rank). */
    {
      int sk_bad = 0, sk_differ = 0, first = -1;
      for (int r = 0; r < P; ++r) {
        const res_t *rs = &w->res[op][r];
        if (rs->sk_kind == 2) { sk_bad = 1; continue; }
        if (first < 0) { first = r; continue; }
        const res_t *f = &w->res[op][first];
        if (rs->sk_kind != f->sk_kind ||
            (rs->sk_kind == 1 && memcmp(rs->sk_vals, f->sk_vals, (size_t)rs->cfg.num_heads_q * 4) != 0))
          sk_differ = 1;
      }
      if (sk_bad || sk_differ) {
        const burst_status want = sk_bad ? BURST_ERROR_INVALID_ARGUMENT : BURST_ERROR_MISMATCH;
        if (n_ok)
          die("op %d %s: the plan's sinks %s, yet %d rank(s) returned OK", op, k_op_names[o->kind],
              sk_bad ? "hold a refused value on some rank" : "differ across ranks", n_ok);
        if (!any_null && !(sk_bad && sk_differ))
          for (int r = 0; r < P; ++r)
            if (w->res[op][r].st != want && w->res[op][r].st != BURST_ERROR_OUT_OF_MEMORY)
              die("op %d %s: the plan's sinks %s; rank %d got %s (%s), expected %s on every rank", op,
                  k_op_names[o->kind], sk_bad ? "hold a refused value on some rank" : "differ across ranks", r,
                  burst_status_string(w->res[op][r].st), w->res[op][r].msg, burst_status_string(want));
        return;
      }
    }
    if (any_null && n_ok) die("op %d %s: a NULL non-empty buffer on rank %d, yet OK", op, k_op_names[o->kind], null_rank);
    if (any_null && w->res[op][null_rank].st != BURST_ERROR_INVALID_ARGUMENT)
      die("op %d %s: NULL non-empty buffer on rank %d gave %s there, expected INVALID_ARGUMENT", op,
          k_op_names[o->kind], null_rank, burst_status_string(w->res[op][null_rank].st));
    if (!any_null && n_ok != P) {
      for (int r = 0; r < P; ++r)
        if (w->res[op][r].st != BURST_OK && w->res[op][r].st != BURST_ERROR_OUT_OF_MEMORY)
          die("op %d %s: valid call failed on rank %d: %s (%s)", op, k_op_names[o->kind], r,
              burst_status_string(w->res[op][r].st), w->res[op][r].msg);
    }
    if (n_ok == P) check_reference(w, op, backward);
  }
}

/* ------------------------------------------------------------------------ */
static void free_world(world_t *w) {
  for (int op = 0; op < MAXOPS + 2; ++op)
    for (int r = 0; r < MAXR; ++r)
      for (int t = 0; t < T_COUNT; ++t) buf_free(&w->res[op][r].t[t]);
}

static void contexts_bad_create(const prog_t *pg) {
  burst_context *out[4] = {(burst_context *)(uintptr_t)0x1, NULL, NULL, NULL};
  burst_status st = burst_context_create_loopback(pg->bad_ws, out);
  check_status(st, "context_create_loopback(bad world_size)", 0, NULL, 0);
  if (st == BURST_OK) {
    if (pg->bad_ws >= 1 && pg->bad_ws <= 4) { for (int i = 0; i < pg->bad_ws; ++i) burst_context_destroy(out[i]); return; }
    die("context_create_loopback(%d) returned OK (header: 1..1024)", pg->bad_ws);
  }
  st = burst_context_create_loopback(2, NULL);
  check_status(st, "context_create_loopback(out NULL)", 0, NULL, 0);
  if (st == BURST_OK) die("context_create_loopback with out == NULL returned OK");
  st = burst_context_create_self(NULL);
  check_status(st, "context_create_self(NULL)", 0, NULL, 0);
  if (st == BURST_OK) die("context_create_self(NULL) returned OK");
  {
    int32_t a, b;
    st = burst_context_rank(NULL, &a, &b);
    check_status(st, "context_rank(NULL)", 0, NULL, 0);
    if (st == BURST_OK) die("context_rank(NULL) returned OK");
  }
  burst_context_destroy(NULL);
  burst_plan_destroy(NULL);
  burst_attention_config_init(NULL);
  {
    burst_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    st = burst_plan_stats(NULL, &s);
    check_status(st, "plan_stats(NULL)", 0, NULL, 0);
    if (st == BURST_OK) die("plan_stats(NULL plan) returned OK");
  }
}

static void check_config_init(uint64_t seed) {
  union { burst_attention_config c; uint8_t raw[sizeof(burst_attention_config)]; } u;
  for (size_t i = 0; i < sizeof u.raw; ++i) u.raw[i] = (uint8_t)mix64(seed + i);
  burst_attention_config_init(&u.c);
  const burst_attention_config *c = &u.c;
  if (c->struct_size != sizeof(burst_attention_config) || c->layout != BURST_LAYOUT_BSHD || c->dtype != BURST_DTYPE_F32 ||
      c->mask != BURST_MASK_NONE || c->distribution != BURST_DISTRIBUTION_CONTIGUOUS || c->pattern != BURST_PATTERN_BURST ||
      c->window_left != -1 || c->window_right != -1 || c->batch || c->seq_len_local || c->num_heads_q || c->num_heads_kv ||
      c->head_dim || c->softmax_scale != 0 || c->cu_seqlens || c->num_sequences || c->num_threads ||
      c->intra_group_size || c->timeout_seconds != 0 || c->compute != BURST_COMPUTE_DEFAULT || c->softcap != 0 ||
      c->sinks)
    die("burst_attention_config_init does not set the documented defaults");
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc; (void)argv;
  g_verbose = getenv("FUZZ_VERBOSE") && atoi(getenv("FUZZ_VERBOSE"));
  g_strict_timeout = getenv("FUZZ_STRICT_TIMEOUT") && atoi(getenv("FUZZ_STRICT_TIMEOUT"));
  g_huge_plans = getenv("FUZZ_HUGE_PLANS") && atoi(getenv("FUZZ_HUGE_PLANS"));
  if (getenv("FUZZ_TIME_MARGIN")) g_margin = atof(getenv("FUZZ_TIME_MARGIN"));
  if (burst_version() != BURST_VERSION_NUMBER) die("burst_version() = %u, header %d", burst_version(), BURST_VERSION_NUMBER);
  if (!burst_build_info()) die("burst_build_info() returned NULL");
  fprintf(stderr, "fuzz_abi: %s\n", burst_build_info());
  return 0;
}

static void print_summary(void) {
  fprintf(stderr, "fuzz_abi: %llu programs, %llu forward and %llu backward reference checks (%llu with sinks, %llu "
          "with softcap), %llu timeout-exempt disagreements, %llu huge plans not created (FUZZ_HUGE_PLANS=0)\n",
          (unsigned long long)g_execs, (unsigned long long)g_ref_checks, (unsigned long long)g_bwd_ref_checks,
          (unsigned long long)g_sink_ref_checks, (unsigned long long)g_cap_ref_checks,
          (unsigned long long)g_timeout_exempt, (unsigned long long)g_huge_skipped);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static prog_t pg;
  static world_t w;
  static int registered = 0;
  if (!registered) { atexit(print_summary); registered = 1; }
  ++g_execs;
  gen_prog(data, size, &pg);
  describe_prog(&pg);
  if (g_verbose) fprintf(stderr, "---- program\n%.*s", (int)g_prog_len, g_prog_text);
  memset(&w, 0, sizeof w);
  w.prog = &pg;
  for (int r = 0; r < MAXR; ++r)
    for (int s = 0; s < NSLOTS; ++s) w.rk[r].last_fwd[s] = -1;

  check_config_init(size);
  if (pg.bad_create) contexts_bad_create(&pg);
  /* Contexts */
  if (pg.ctx_kind == 0) {
    burst_status st = burst_context_create_self(&w.rk[0].ctx);
    check_status(st, "context_create_self", 0, NULL, 0);
    if (st != BURST_OK) die("context_create_self failed: %s", burst_status_string(st));
  } else if (pg.ctx_kind == 1) {
    burst_context *ctx[MAXR + 1] = {0};
    burst_status st = burst_context_create_loopback(pg.P, ctx);
    check_status(st, "context_create_loopback", 0, NULL, 0);
    if (st != BURST_OK) die("context_create_loopback(%d) failed: %s", pg.P, burst_status_string(st));
    for (int r = 0; r < pg.P; ++r) w.rk[r].ctx = ctx[r];
  }
  /* Run */
  if (pg.P == 1) {
    targ_t a = {&w, 0};
    rank_thread(&a);
  } else {
    pthread_t th[MAXR];
    targ_t a[MAXR];
    pthread_barrier_init(&w.barrier, NULL, (unsigned)pg.P);
    for (int r = 0; r < pg.P; ++r) {
      a[r].w = &w; a[r].rank = r;
      if (pthread_create(&th[r], NULL, rank_thread, &a[r])) die("pthread_create failed");
    }
    for (int r = 0; r < pg.P; ++r) pthread_join(th[r], NULL);
    pthread_barrier_destroy(&w.barrier);
  }
  for (int op = 0; op < pg.nops; ++op) check_op(&w, op);
  /* Clean up: plans first (the header's order), then contexts. */
  for (int r = 0; r < pg.P; ++r) {
    for (int s = 0; s < NSLOTS; ++s) burst_plan_destroy(w.rk[r].plan[s]);
    burst_context_destroy(w.rk[r].ctx);
  }
  free_world(&w);
  return 0;
}
