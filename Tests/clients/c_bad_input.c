/*
 * c_bad_input.c — every bad input to libburst_attention gives the documented
 * status and a useful burst_last_error(), never a crash or a hang; after all
 * the errors a good plan still works on the same context.
 *
 * Run under mpirun with any world size (registered at 1, 2 and 3 ranks; the
 * cross-rank MISMATCH and "bad on one rank only" cases need >= 2 ranks).
 *
 * Since 0.8 (score modifiers): softcap negative / NaN / inf and sinks with a
 * NaN or an infinity refused by plan_create on every rank (also when only the
 * last rank has them), softcap or sinks differing by rank -> MISMATCH naming
 * the field, the 0.7 size (softcap read, sinks not); burst_plan_set_sinks
 * with a NaN or inf on rank 0 (that call INVALID_ARGUMENT, every following
 * forward and backward INVALID_ARGUMENT on every rank until valid values are
 * set), with values differing by rank (MISMATCH on every rank),
 * burst_plan_sinks_gradient before any backward, after a forward only, after
 * set_sinks, after a failed backward, without sinks, with NULL arguments
 * (INVALID_ARGUMENT); the KV cache config's softcap, reserved0 and sinks.
 */
#include <mpi.h>

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "burst_attention.h"
#include "reference.h"

static int g_rank = 0, g_size = 1;
static int g_failures = 0, g_checks = 0;
static int g_verbose = 0; /* BURST_TEST_VERBOSE=1: print every check */

static void trace(const char *what, burst_status got) {
  if (g_verbose)
    fprintf(stderr, "c_bad_input rank %d/%d: %s -> %s\n", g_rank, g_size, what,
            burst_status_string(got));
}

static void fail(const char *fmt, ...) {
  va_list ap;
  ++g_failures;
  fprintf(stderr, "c_bad_input rank %d/%d FAIL: ", g_rank, g_size);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

/* The status must be `want`; a failure status must come with a non-empty
 * burst_last_error() containing `needle` (if not NULL). */
static int expect_msg(burst_status got, burst_status want, const char *needle,
                      const char *what) {
  const char *msg = burst_last_error();
  ++g_checks;
  trace(what, got);
  if (got != want) {
    fail("%s: got %s (%d), expected %s (%d); last error: \"%s\"", what,
         burst_status_string(got), (int)got, burst_status_string(want),
         (int)want, msg ? msg : "(NULL)");
    return 0;
  }
  if (want != BURST_OK) {
    if (msg == NULL) {
      fail("%s: burst_last_error() returned NULL after %s", what,
           burst_status_string(got));
      return 0;
    }
    if (msg[0] == '\0') {
      fail("%s: burst_last_error() is empty after %s", what,
           burst_status_string(got));
      return 0;
    }
    if (needle && strstr(msg, needle) == NULL) {
      fail("%s: message \"%s\" does not name \"%s\"", what, msg, needle);
      return 0;
    }
  }
  return 1;
}

static int expect(burst_status got, burst_status want, const char *what) {
  return expect_msg(got, want, NULL, what);
}

/* Any failure status (used where only the bad rank knows the exact cause). */
static int expect_error(burst_status got, const char *what) {
  const char *msg = burst_last_error();
  ++g_checks;
  trace(what, got);
  if (got == BURST_OK) {
    fail("%s: got BURST_OK, expected an error on every rank", what);
    return 0;
  }
  if (msg == NULL || msg[0] == '\0') {
    fail("%s: %s with an empty burst_last_error()", what,
         burst_status_string(got));
    return 0;
  }
  return 1;
}

/* ---- config cases ---------------------------------------------------------- */

static void base_config(burst_attention_config *cfg, int64_t n_local) {
  burst_attention_config_init(cfg);
  cfg->batch = 1;
  cfg->seq_len_local = n_local;
  cfg->num_heads_q = 2;
  cfg->num_heads_kv = 2;
  cfg->head_dim = 16;
}

/* A config with room after it, so a struct_size larger than the library's
 * cannot make the library read outside our memory. */
typedef struct padded_config {
  burst_attention_config cfg;
  unsigned char pad[256];
} padded_config;

typedef struct config_case {
  const char *name;
  burst_status want;
  const char *needle; /* the error message must name this (NULL: any) */
} config_case;

/* Rank `rank`'s token count under a distribution (burst_shard_positions). */
static int64_t count_of(int32_t distribution, int64_t total_tokens, int rank) {
  int64_t n = -1;
  if (burst_shard_positions(distribution, total_tokens, NULL, 0, g_size, rank, NULL, 0, &n) != BURST_OK)
    fail("burst_shard_positions(count): %s", burst_last_error());
  return n;
}

static int64_t rule_count(int32_t distribution, int64_t total_tokens) {
  return count_of(distribution, total_tokens, g_rank);
}

/* The status plan creation must give when rank 0 holds `delta` tokens more
 * than the rule deals it: the total changes too, so the shifted counts are
 * wrong unless they happen to be the rule's counts for the new total. */
static burst_status shifted_status(int32_t distribution, int64_t total_tokens, int64_t delta) {
  int r;
  for (r = 0; r < g_size; ++r)
    if (count_of(distribution, total_tokens + delta, r) != count_of(distribution, total_tokens, r) + (r == 0 ? delta : 0))
      return BURST_ERROR_INVALID_ARGUMENT;
  return BURST_OK;
}

/* Mutates cfg for case i; returns 0 past the last case. */
static int apply_case(int i, burst_attention_config *cfg, int64_t total_tokens,
                      config_case *c) {
  static int64_t cu[2], cu_decreasing[3], cu_start[2], cu_end[2];
  static float sinks_nan[2], sinks_inf[2], sinks_minf[2], sinks_ok[2] = {0.5f, -1.25f},
               sinks_huge[2] = {FLT_MAX, -FLT_MAX};
  sinks_nan[0] = 0.5f; sinks_nan[1] = (float)NAN;
  sinks_inf[0] = (float)INFINITY; sinks_inf[1] = 0.5f;
  sinks_minf[0] = 0.5f; sinks_minf[1] = -(float)INFINITY;
  cu[0] = 0;
  cu[1] = total_tokens;
  cu_decreasing[0] = 0; cu_decreasing[1] = total_tokens; cu_decreasing[2] = total_tokens - 1;
  cu_start[0] = 1; cu_start[1] = total_tokens;
  cu_end[0] = 0; cu_end[1] = total_tokens + 1;
  c->needle = NULL;
  switch (i) {
#define CASE(idx, label, status, stmt) \
  case idx: c->name = label; c->want = status; stmt; return 1;
#define CASEM(idx, label, status, field, stmt) \
  case idx: c->name = label; c->want = status; c->needle = field; stmt; return 1;
    CASE(0, "batch = 0", BURST_ERROR_INVALID_ARGUMENT, cfg->batch = 0)
    CASE(1, "batch = -1", BURST_ERROR_INVALID_ARGUMENT, cfg->batch = -1)
    CASE(2, "num_heads_q = 0", BURST_ERROR_INVALID_ARGUMENT, cfg->num_heads_q = 0)
    CASE(3, "num_heads_q = -2", BURST_ERROR_INVALID_ARGUMENT, cfg->num_heads_q = -2)
    CASE(4, "num_heads_kv = 0", BURST_ERROR_INVALID_ARGUMENT, cfg->num_heads_kv = 0)
    CASE(5, "num_heads_kv = -2", BURST_ERROR_INVALID_ARGUMENT, cfg->num_heads_kv = -2)
    CASE(6, "head_dim = 0", BURST_ERROR_INVALID_ARGUMENT, cfg->head_dim = 0)
    CASE(7, "head_dim = -16", BURST_ERROR_INVALID_ARGUMENT, cfg->head_dim = -16)
    CASE(8, "seq_len_local = -1", BURST_ERROR_INVALID_ARGUMENT, cfg->seq_len_local = -1)
    CASE(9, "struct_size = 0", BURST_ERROR_VERSION, cfg->struct_size = 0)
    CASE(10, "struct_size = 4 (too small)", BURST_ERROR_VERSION, cfg->struct_size = 4)
    /* A newer header's larger struct (0.5): accepted when every byte past the
     * library's fields is 0 (the padded config here is zeroed), refused when
     * one is set (a field this library does not know) or beyond 4096 bytes. */
    CASEM(11, "struct_size = sizeof + 64 with a byte set past the known fields", BURST_ERROR_VERSION,
          "does not know", (cfg->struct_size = (uint32_t)sizeof(burst_attention_config) + 64u,
                            ((unsigned char *)cfg)[sizeof(burst_attention_config) + 63] = 1))
    CASE(12, "layout = 7", BURST_ERROR_INVALID_ARGUMENT, cfg->layout = 7)
    CASE(13, "layout = -1", BURST_ERROR_INVALID_ARGUMENT, cfg->layout = -1)
    CASE(14, "mask = -1", BURST_ERROR_INVALID_ARGUMENT, cfg->mask = -1)
    CASE(15, "mask = 2", BURST_ERROR_INVALID_ARGUMENT, cfg->mask = 2)
    CASE(16, "dtype = 3", BURST_ERROR_INVALID_ARGUMENT, cfg->dtype = 3)
    CASE(17, "dtype = -1", BURST_ERROR_INVALID_ARGUMENT, cfg->dtype = -1)
    CASE(18, "distribution = 9", BURST_ERROR_INVALID_ARGUMENT, cfg->distribution = 9)
    CASE(19, "pattern = 12", BURST_ERROR_INVALID_ARGUMENT, cfg->pattern = 12)
    CASE(20, "pattern = -1", BURST_ERROR_INVALID_ARGUMENT, cfg->pattern = -1)
    CASE(21, "num_heads_q = 3, num_heads_kv = 2 (not a multiple)",
         BURST_ERROR_INVALID_ARGUMENT, (cfg->num_heads_q = 3, cfg->num_heads_kv = 2))
    CASE(22, "softmax_scale = NaN", BURST_ERROR_INVALID_ARGUMENT,
         cfg->softmax_scale = (float)NAN)
    CASE(23, "softmax_scale = +inf", BURST_ERROR_INVALID_ARGUMENT,
         cfg->softmax_scale = (float)INFINITY)
    CASE(24, "timeout_seconds = -1", BURST_ERROR_INVALID_ARGUMENT,
         cfg->timeout_seconds = -1.0)
    CASE(25, "timeout_seconds = NaN", BURST_ERROR_INVALID_ARGUMENT,
         cfg->timeout_seconds = NAN)
    CASE(26, "window_left = -2", BURST_ERROR_INVALID_ARGUMENT, cfg->window_left = -2)
    CASE(27, "num_sequences = 3 with cu_seqlens = NULL",
         BURST_ERROR_INVALID_ARGUMENT, cfg->num_sequences = 3)
    CASE(28, "num_threads = -1", BURST_ERROR_INVALID_ARGUMENT, cfg->num_threads = -1)
    /* supported since 0.2 */
    CASE(29, "num_heads_q = 4, num_heads_kv = 2 (GQA)", BURST_OK,
         (cfg->num_heads_q = 4, cfg->num_heads_kv = 2))
    CASE(30, "num_heads_q = 2, num_heads_kv = 1 (MQA)", BURST_OK, cfg->num_heads_kv = 1)
    CASE(31, "window_left = 4", BURST_OK, cfg->window_left = 4)
    CASE(32, "window_right = 4", BURST_OK, cfg->window_right = 4)
    CASE(33, "distribution = ZIGZAG (rule's counts)", BURST_OK,
         (cfg->distribution = BURST_DISTRIBUTION_ZIGZAG, cfg->mask = BURST_MASK_CAUSAL,
          cfg->seq_len_local = rule_count(BURST_DISTRIBUTION_ZIGZAG, total_tokens)))
    CASE(34, "distribution = STRIPED (rule's counts)", BURST_OK,
         (cfg->distribution = BURST_DISTRIBUTION_STRIPED,
          cfg->seq_len_local = rule_count(BURST_DISTRIBUTION_STRIPED, total_tokens)))
    /* every pattern is implemented since 0.3; ULYSSES needs num_heads_kv
     * (2 here) divisible by the number of ranks */
    CASE(35, "pattern = RING", BURST_OK, cfg->pattern = BURST_PATTERN_RING)
    CASE(36, "pattern = ALLGATHER", BURST_OK, cfg->pattern = BURST_PATTERN_ALLGATHER)
    CASEM(37, "pattern = ULYSSES, num_heads_kv = 2",
          2 % g_size == 0 ? BURST_OK : BURST_ERROR_UNSUPPORTED, 2 % g_size == 0 ? NULL : "num_heads_kv",
          cfg->pattern = BURST_PATTERN_ULYSSES)
    CASE(38, "pattern = AUTO", BURST_OK, cfg->pattern = BURST_PATTERN_AUTO)
    CASE(39, "cu_seqlens = {0, N} (varlen packing)", BURST_OK,
         (cfg->cu_seqlens = cu, cfg->num_sequences = 1))
    /* bad combinations of the variants: every rank fails, naming the field */
    CASEM(40, "num_heads_q = 6, num_heads_kv = 4", BURST_ERROR_INVALID_ARGUMENT, "num_heads_kv",
          (cfg->num_heads_q = 6, cfg->num_heads_kv = 4))
    CASEM(41, "window_right = -5", BURST_ERROR_INVALID_ARGUMENT, "window_right", cfg->window_right = -5)
    CASEM(42, "window_left = -2 (named)", BURST_ERROR_INVALID_ARGUMENT, "window_left", cfg->window_left = -2)
    CASEM(43, "cu_seqlens decreasing {0, N, N-1}", BURST_ERROR_INVALID_ARGUMENT, "cu_seqlens",
          (cfg->cu_seqlens = cu_decreasing, cfg->num_sequences = 2))
    CASEM(44, "cu_seqlens not starting at 0 {1, N}", BURST_ERROR_INVALID_ARGUMENT, "cu_seqlens",
          (cfg->cu_seqlens = cu_start, cfg->num_sequences = 1))
    CASEM(45, "cu_seqlens not ending at N {0, N+1}", BURST_ERROR_INVALID_ARGUMENT, "cu_seqlens",
          (cfg->cu_seqlens = cu_end, cfg->num_sequences = 1))
    CASEM(46, "ZIGZAG with one token too many on rank 0",
          shifted_status(BURST_DISTRIBUTION_ZIGZAG, total_tokens, 1), "seq_len_local",
          (cfg->distribution = BURST_DISTRIBUTION_ZIGZAG,
           cfg->seq_len_local = rule_count(BURST_DISTRIBUTION_ZIGZAG, total_tokens) + (g_rank == 0)))
    CASEM(47, "STRIPED with one token too few on rank 0",
          shifted_status(BURST_DISTRIBUTION_STRIPED, total_tokens, -1), "seq_len_local",
          (cfg->distribution = BURST_DISTRIBUTION_STRIPED,
           cfg->seq_len_local = rule_count(BURST_DISTRIBUTION_STRIPED, total_tokens) - (g_rank == 0)))
    CASEM(48, "STRIPED with three tokens too many on rank 0",
          shifted_status(BURST_DISTRIBUTION_STRIPED, total_tokens, 3), "seq_len_local",
          (cfg->distribution = BURST_DISTRIBUTION_STRIPED,
           cfg->seq_len_local = rule_count(BURST_DISTRIBUTION_STRIPED, total_tokens) + 3 * (g_rank == 0)))
    CASEM(49, "intra_group_size = 5 (does not divide the world)",
          g_size % 5 == 0 ? BURST_OK : BURST_ERROR_INVALID_ARGUMENT, g_size % 5 == 0 ? NULL : "intra_group_size",
          cfg->intra_group_size = 5)
    CASE(50, "intra_group_size = world size (one ring)", BURST_OK, cfg->intra_group_size = g_size)
    /* since 0.5 (issue 9) */
    CASE(51, "struct_size = sizeof + 64, zero past the known fields (newer header)", BURST_OK,
         cfg->struct_size = (uint32_t)sizeof(burst_attention_config) + 64u)
    CASE(52, "struct_size = 5000 (above 4096)", BURST_ERROR_VERSION, cfg->struct_size = 5000u)
    CASE(53, "struct_size = sizeof - 4 (no released header had it)", BURST_ERROR_VERSION,
         cfg->struct_size = (uint32_t)sizeof(burst_attention_config) - 4u)
    CASEM(54, "softmax_scale = -0.5", BURST_ERROR_INVALID_ARGUMENT, "softmax_scale", cfg->softmax_scale = -0.5f)
    CASEM(55, "softmax_scale = -inf", BURST_ERROR_INVALID_ARGUMENT, "softmax_scale",
          cfg->softmax_scale = -(float)INFINITY)
    CASEM(56, "timeout_seconds = +inf", BURST_ERROR_INVALID_ARGUMENT, "timeout_seconds",
          cfg->timeout_seconds = INFINITY)
    CASEM(57, "timeout_seconds = 1e300", BURST_ERROR_INVALID_ARGUMENT, "timeout_seconds",
          cfg->timeout_seconds = 1e300)
    CASEM(58, "batch * seq * heads * head_dim overflows int64", BURST_ERROR_INVALID_ARGUMENT, "too large",
          (cfg->batch = (int64_t)1 << 40, cfg->num_heads_q = cfg->num_heads_kv = (int64_t)1 << 30))
    CASEM(59, "head_dim = 2^62", BURST_ERROR_INVALID_ARGUMENT, "too large", cfg->head_dim = (int64_t)1 << 62)
    CASEM(60, "batch = INT64_MAX", BURST_ERROR_INVALID_ARGUMENT, "too large", cfg->batch = INT64_MAX)
    CASEM(61, "num_sequences = 2^40 with cu_seqlens set", BURST_ERROR_INVALID_ARGUMENT, "num_sequences",
          (cfg->cu_seqlens = cu, cfg->num_sequences = (int64_t)1 << 40))
    CASEM(62, "num_sequences = -1 with cu_seqlens set", BURST_ERROR_INVALID_ARGUMENT, "num_sequences",
          (cfg->cu_seqlens = cu, cfg->num_sequences = -1))
    CASEM(63, "intra_group_size = -1", BURST_ERROR_INVALID_ARGUMENT, "intra_group_size", cfg->intra_group_size = -1)
    CASEM(64, "window_right = INT64_MIN", BURST_ERROR_INVALID_ARGUMENT, "window_right", cfg->window_right = INT64_MIN)
    CASE(65, "window_left = INT64_MAX (unbounded in effect)", BURST_OK, cfg->window_left = INT64_MAX)
    /* A valid shape too long for any machine's token metadata (24 B a token):
     * OUT_OF_MEMORY on every rank, not a trap (found by the ABI fuzzer). */
    CASEM(66, "N = 2^40 tokens, batch = heads = head_dim = 1", BURST_ERROR_OUT_OF_MEMORY, "token metadata",
          (cfg->seq_len_local = ((int64_t)1 << 40) / g_size, cfg->num_heads_q = cfg->num_heads_kv = 1,
           cfg->head_dim = 1))
    /* since 0.7 (issue 19): compute, reserved0, and the 0.4-0.6 size (it
     * ended at timeout_seconds) as an older released size */
    CASEM(67, "compute = 3", BURST_ERROR_INVALID_ARGUMENT, "BURST_COMPUTE_FAST = 2", cfg->compute = 3)
    CASEM(68, "compute = -1", BURST_ERROR_INVALID_ARGUMENT, "compute", cfg->compute = -1)
    CASE(69, "compute = EXACT", BURST_OK, cfg->compute = BURST_COMPUTE_EXACT)
    CASE(70, "compute = FAST", BURST_OK, cfg->compute = BURST_COMPUTE_FAST)
    CASE(71, "compute = FAST, dtype = F16", BURST_OK, (cfg->compute = BURST_COMPUTE_FAST, cfg->dtype = BURST_DTYPE_F16))
    CASE(72, "dtype = BF16 (compute DEFAULT = FAST)", BURST_OK, cfg->dtype = BURST_DTYPE_BF16)
    CASE(73, "struct_size = the 0.6 size, compute = 3 past it (not read)", BURST_OK,
         (cfg->struct_size = (uint32_t)offsetof(burst_attention_config, compute), cfg->compute = 3))
    CASE(74, "struct_size = the 0.6 size - 8", BURST_ERROR_VERSION,
         cfg->struct_size = (uint32_t)offsetof(burst_attention_config, compute) - 8u)
    /* 0.7 required these 4 bytes (reserved0) to be 0; since 0.8 they are softcap */
    CASE(75, "softcap = 30 (0.7's reserved0)", BURST_OK, cfg->softcap = 30.0f)
    CASEM(76, "struct_size = sizeof + 8 with sinks' successor set", BURST_ERROR_VERSION, "does not know",
          (cfg->struct_size = (uint32_t)sizeof(burst_attention_config) + 8u,
           ((unsigned char *)cfg)[sizeof(burst_attention_config)] = 1))
    /* since 0.8: softcap (0 = off, else finite and > 0) and sinks (num_heads_q
     * finite logits; base_config has 2 query heads) */
    CASEM(77, "softcap = -1", BURST_ERROR_INVALID_ARGUMENT, "softcap", cfg->softcap = -1.0f)
    CASEM(78, "softcap = NaN", BURST_ERROR_INVALID_ARGUMENT, "softcap", cfg->softcap = (float)NAN)
    CASEM(79, "softcap = +inf", BURST_ERROR_INVALID_ARGUMENT, "softcap", cfg->softcap = (float)INFINITY)
    CASEM(80, "softcap = -inf", BURST_ERROR_INVALID_ARGUMENT, "softcap", cfg->softcap = -(float)INFINITY)
    CASEM(81, "softcap = -1e-30", BURST_ERROR_INVALID_ARGUMENT, "softcap", cfg->softcap = -1e-30f)
    CASEM(82, "sinks = {0.5, NaN}", BURST_ERROR_INVALID_ARGUMENT, "sinks", cfg->sinks = sinks_nan)
    CASEM(83, "sinks = {+inf, 0.5}", BURST_ERROR_INVALID_ARGUMENT, "sinks", cfg->sinks = sinks_inf)
    CASEM(84, "sinks = {0.5, -inf}", BURST_ERROR_INVALID_ARGUMENT, "sinks", cfg->sinks = sinks_minf)
    CASE(85, "sinks = {0.5, -1.25}", BURST_OK, cfg->sinks = sinks_ok)
    CASE(86, "softcap = 50, sinks = {0.5, -1.25}, BF16, causal ZIGZAG", BURST_OK,
         (cfg->softcap = 50.0f, cfg->sinks = sinks_ok, cfg->dtype = BURST_DTYPE_BF16,
          cfg->distribution = BURST_DISTRIBUTION_ZIGZAG, cfg->mask = BURST_MASK_CAUSAL,
          cfg->seq_len_local = rule_count(BURST_DISTRIBUTION_ZIGZAG, total_tokens)))
    CASE(87, "softcap = 1e-30 (tiny but > 0)", BURST_OK, cfg->softcap = 1e-30f)
    CASE(88, "sinks = {FLT_MAX, -FLT_MAX} (finite)", BURST_OK, cfg->sinks = sinks_huge)
    /* the 0.7 size ends at softcap: softcap is read, sinks are not */
    CASEM(89, "struct_size = the 0.7 size, softcap = NaN", BURST_ERROR_INVALID_ARGUMENT, "softcap",
          (cfg->struct_size = (uint32_t)offsetof(burst_attention_config, sinks), cfg->softcap = (float)NAN))
    CASE(90, "struct_size = the 0.7 size, softcap = 30", BURST_OK,
         (cfg->struct_size = (uint32_t)offsetof(burst_attention_config, sinks), cfg->softcap = 30.0f))
    CASE(91, "struct_size = the 0.7 size, sinks = {0.5, NaN} past it (not read)", BURST_OK,
         (cfg->struct_size = (uint32_t)offsetof(burst_attention_config, sinks), cfg->sinks = sinks_nan))
    CASE(92, "struct_size = the 0.6 size, softcap = NaN past it (not read)", BURST_OK,
         (cfg->struct_size = (uint32_t)offsetof(burst_attention_config, compute), cfg->softcap = (float)NAN))
    CASE(93, "struct_size = the 0.7 size - 4 (no released header had it)", BURST_ERROR_VERSION,
         cfg->struct_size = (uint32_t)offsetof(burst_attention_config, sinks) - 4u)
#undef CASEM
#undef CASE
  default:
    return 0;
  }
}

/* ---- helpers ------------------------------------------------------------- */

static float *alloc_floats(size_t n) {
  float *p;
  if (n == 0) return NULL;
  p = (float *)calloc(n, sizeof(float));
  if (!p) {
    fprintf(stderr, "c_bad_input rank %d: out of memory\n", g_rank);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  return p;
}

static double *alloc_doubles(size_t n) {
  double *p = (double *)calloc(n ? n : 1, sizeof(double));
  if (!p) {
    fprintf(stderr, "c_bad_input rank %d: out of memory\n", g_rank);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  return p;
}

static void check_status_strings(void) {
  static const char *names[] = {
      "BURST_OK", "BURST_ERROR_INVALID_ARGUMENT", "BURST_ERROR_UNSUPPORTED",
      "BURST_ERROR_OUT_OF_MEMORY", "BURST_ERROR_MISMATCH",
      "BURST_ERROR_COMMUNICATION", "BURST_ERROR_INTERNAL", "BURST_ERROR_VERSION",
      "BURST_ERROR_TIMEOUT", "BURST_ERROR_BUSY"};
  int i;
  for (i = 0; i < 10; ++i) {
    const char *s = burst_status_string((burst_status)i);
    ++g_checks;
    if (s == NULL || strcmp(s, names[i]) != 0)
      fail("burst_status_string(%d) = \"%s\", expected \"%s\"", i,
           s ? s : "(NULL)", names[i]);
  }
  {
    const int unknown[] = {99, 10, -1};
    for (i = 0; i < 3; ++i) {
      const char *s = burst_status_string((burst_status)unknown[i]);
      ++g_checks;
      if (s == NULL || strcmp(s, "BURST_ERROR_UNKNOWN") != 0)
        fail("burst_status_string(%d) = \"%s\", expected \"BURST_ERROR_UNKNOWN\"",
             unknown[i], s ? s : "(NULL)");
    }
  }
  ++g_checks;
  if (burst_last_error() == NULL) fail("burst_last_error() returned NULL");
  ++g_checks;
  if (burst_version() != (uint32_t)BURST_VERSION_NUMBER)
    fail("burst_version() = %u, header says %u", (unsigned)burst_version(),
         (unsigned)BURST_VERSION_NUMBER);
}

static void check_null_handles(void) {
  burst_attention_config cfg;
  burst_context *ctx = NULL;
  burst_context *loop[4] = {NULL, NULL, NULL, NULL};
  burst_plan *plan = NULL;
  burst_stats st;
  int32_t r = -1, s = -1;
  float x[32];
  int i;

  memset(x, 0, sizeof x);
  base_config(&cfg, 1);
  memset(&st, 0, sizeof st);
  st.struct_size = (uint32_t)sizeof st;

  /* Functions that return void must accept NULL (the unsized init is a
   * function behind the macro: call it by its own name). */
  (burst_attention_config_init)(NULL);
  burst_plan_destroy(NULL);
  burst_context_destroy(NULL);

  expect(burst_context_create_mpi((int64_t)MPI_Comm_c2f(MPI_COMM_WORLD), NULL),
         BURST_ERROR_INVALID_ARGUMENT, "burst_context_create_mpi(world, out = NULL)");
  expect(burst_context_create_self(NULL), BURST_ERROR_INVALID_ARGUMENT,
         "burst_context_create_self(NULL)");
  expect(burst_context_create_loopback(2, NULL), BURST_ERROR_INVALID_ARGUMENT,
         "burst_context_create_loopback(2, NULL)");
  expect(burst_context_create_loopback(0, loop), BURST_ERROR_INVALID_ARGUMENT,
         "burst_context_create_loopback(0, out)");
  expect(burst_context_create_loopback(-3, loop), BURST_ERROR_INVALID_ARGUMENT,
         "burst_context_create_loopback(-3, out)");
  expect(burst_context_create_loopback(1025, loop), BURST_ERROR_INVALID_ARGUMENT,
         "burst_context_create_loopback(1025, out)");
  for (i = 0; i < 4; ++i)
    if (loop[i] != NULL) fail("failed create_loopback wrote a context pointer");

  expect(burst_context_rank(NULL, &r, &s), BURST_ERROR_INVALID_ARGUMENT,
         "burst_context_rank(NULL, ...)");
  expect(burst_plan_create(NULL, &cfg, &plan), BURST_ERROR_INVALID_ARGUMENT,
         "burst_plan_create(ctx = NULL, ...)");
  expect(burst_forward(NULL, x, x, x, x, x), BURST_ERROR_INVALID_ARGUMENT,
         "burst_forward(plan = NULL, ...)");
  expect(burst_backward(NULL, x, x, x, x, x, x, x, x, x),
         BURST_ERROR_INVALID_ARGUMENT, "burst_backward(plan = NULL, ...)");
  expect(burst_plan_stats(NULL, &st), BURST_ERROR_INVALID_ARGUMENT,
         "burst_plan_stats(plan = NULL, ...)");

  /* A self context works without MPI; its rank query accepts NULL outputs. */
  if (expect(burst_context_create_self(&ctx), BURST_OK, "burst_context_create_self")) {
    expect(burst_context_rank(ctx, NULL, NULL), BURST_OK,
           "burst_context_rank(self, NULL, NULL)");
    if (expect(burst_context_rank(ctx, &r, &s), BURST_OK, "burst_context_rank(self)") &&
        (r != 0 || s != 1))
      fail("self context reports rank %d of %d, expected 0 of 1", (int)r, (int)s);
    burst_context_destroy(ctx);
  }
}

static void check_communicators(void) {
  const int64_t handles[] = {(int64_t)1 << 40, -1, -((int64_t)1 << 40),
                             (int64_t)MPI_Comm_c2f(MPI_COMM_NULL), 123456};
  const char *labels[] = {"1 << 40 (out of MPI_Fint range)", "-1",
                          "-(1 << 40)", "MPI_Comm_c2f(MPI_COMM_NULL)",
                          "123456 (no such communicator)"};
  int i;
  for (i = 0; i < 5; ++i) {
    char what[160];
    burst_context *ctx = NULL;
    burst_status st = burst_context_create_mpi(handles[i], &ctx);
    snprintf(what, sizeof what, "burst_context_create_mpi(%s)", labels[i]);
    expect(st, BURST_ERROR_INVALID_ARGUMENT, what);
    if (st == BURST_OK) burst_context_destroy(ctx);
  }
}

/* All ranks use the same bad config. */
static void check_config_cases(burst_context *ctx, int64_t total_tokens) {
  int i;
  config_case c;
  for (i = 0;; ++i) {
    padded_config pc;
    burst_plan *plan = NULL;
    burst_status st;
    char what[200];
    memset(&pc, 0, sizeof pc);
    base_config(&pc.cfg, total_tokens / g_size + (g_rank < total_tokens % g_size));
    if (!apply_case(i, &pc.cfg, total_tokens, &c)) break;
    st = burst_plan_create(ctx, &pc.cfg, &plan);
    snprintf(what, sizeof what, "burst_plan_create(%s)", c.name);
    expect_msg(st, c.want, c.needle, what);
    if (st == BURST_OK) burst_plan_destroy(plan);
  }
  {
    burst_plan *plan = NULL;
    burst_attention_config cfg;
    base_config(&cfg, 1);
    expect(burst_plan_create(ctx, NULL, &plan), BURST_ERROR_INVALID_ARGUMENT,
           "burst_plan_create(cfg = NULL)");
    expect(burst_plan_create(ctx, &cfg, NULL), BURST_ERROR_INVALID_ARGUMENT,
           "burst_plan_create(out = NULL)");
  }
}

/* Ranks disagree (the last rank differs). Needs >= 2 ranks. */
static void check_mismatch(burst_context *ctx) {
  const int odd = (g_rank == g_size - 1);
  int i;
  for (i = 0; i < 12; ++i) {
    burst_attention_config cfg;
    burst_plan *plan = NULL;
    burst_status st;
    const char *field = "";
    int64_t cu[3];
    const float sinks_a[2] = {0.5f, -1.25f}, sinks_b[2] = {0.5f, -1.0f};
    base_config(&cfg, 3);
    cu[0] = 0; cu[1] = odd ? 2 : 1; cu[2] = 3 * (int64_t)g_size;
    switch (i) {
    case 0: field = "head_dim"; if (odd) cfg.head_dim = 32; break;
    case 1: field = "layout"; if (odd) cfg.layout = BURST_LAYOUT_BHSD; break;
    case 2: field = "mask"; if (odd) cfg.mask = BURST_MASK_CAUSAL; break;
    case 3: field = "batch"; if (odd) cfg.batch = 2; break;
    case 4: field = "num_heads"; if (odd) { cfg.num_heads_q = 4; cfg.num_heads_kv = 4; } break;
    case 5: field = "softmax_scale"; if (odd) cfg.softmax_scale = 0.5f; break;
    case 6: field = "cu_seqlens"; cfg.cu_seqlens = cu; cfg.num_sequences = 2; break;
    case 7: field = "compute"; if (odd) cfg.compute = BURST_COMPUTE_FAST; break;
    /* DEFAULT and FAST resolve alike for BF16, but the field is compared as set. */
    case 8: field = "compute"; cfg.dtype = BURST_DTYPE_BF16; cfg.compute = odd ? BURST_COMPUTE_DEFAULT : BURST_COMPUTE_FAST; break;
    /* since 0.8 */
    case 9: field = "softcap"; cfg.softcap = odd ? 2.0f : 30.0f; break;
    case 10: field = "sinks"; cfg.sinks = odd ? sinks_b : sinks_a; break;
    case 11: field = "sinks"; cfg.sinks = odd ? NULL : sinks_a; break; /* none on the last rank only */
    default: break;
    }
    {
      char what[160];
      snprintf(what, sizeof what, "burst_plan_create(%s differs on rank %d)",
               field, g_size - 1);
      st = burst_plan_create(ctx, &cfg, &plan);
      expect_msg(st, BURST_ERROR_MISMATCH, field, what);
      if (st == BURST_OK) burst_plan_destroy(plan);
    }
  }
  /* Fields that may differ across ranks. */
  {
    burst_attention_config cfg;
    burst_plan *plan = NULL;
    burst_status st;
    base_config(&cfg, 1 + g_rank);
    cfg.num_threads = 1 + (g_rank % 2);
    cfg.timeout_seconds = 100.0 + g_rank;
    st = burst_plan_create(ctx, &cfg, &plan);
    expect(st, BURST_OK,
           "burst_plan_create(seq_len_local, num_threads, timeout_seconds differ)");
    if (st == BURST_OK) burst_plan_destroy(plan);
  }
  /* compute = 3 on the last rank only: INVALID_ARGUMENT on every rank, naming it. */
  {
    burst_attention_config cfg;
    burst_plan *plan = NULL;
    burst_status st;
    base_config(&cfg, 2);
    if (odd) cfg.compute = 3;
    st = burst_plan_create(ctx, &cfg, &plan);
    expect_msg(st, BURST_ERROR_INVALID_ARGUMENT, "compute", "burst_plan_create(compute = 3 on the last rank only)");
    if (st == BURST_OK) burst_plan_destroy(plan);
  }
  /* A NaN sink, a negative softcap on the last rank only: INVALID_ARGUMENT on every rank, naming it. */
  {
    const float sinks_nan_last[2] = {0.5f, (float)NAN}, sinks_ok[2] = {0.5f, -1.25f};
    int which;
    for (which = 0; which < 2; ++which) {
      burst_attention_config cfg;
      burst_plan *plan = NULL;
      burst_status st;
      base_config(&cfg, 2);
      if (which == 0) cfg.sinks = odd ? sinks_nan_last : sinks_ok;
      else cfg.softcap = odd ? -30.0f : 30.0f;
      st = burst_plan_create(ctx, &cfg, &plan);
      expect_msg(st, BURST_ERROR_INVALID_ARGUMENT, which == 0 ? "sinks" : "softcap",
                 which == 0 ? "burst_plan_create(a NaN sink on the last rank only)"
                            : "burst_plan_create(softcap = -30 on the last rank only)");
      if (st == BURST_OK) burst_plan_destroy(plan);
    }
  }
  /* A config that is invalid on one rank only: every rank gets an error. */
  {
    int which;
    for (which = 0; which < 4; ++which) {
      burst_attention_config cfg;
      burst_plan *plan = NULL;
      burst_status st;
      const char *what = "";
      base_config(&cfg, 2);
      switch (which) {
      case 0:
        what = "burst_plan_create(batch = 0 on the last rank only)";
        if (odd) cfg.batch = 0;
        break;
      case 1:
        what = "burst_plan_create(layout = 7 on the last rank only)";
        if (odd) cfg.layout = 7;
        break;
      case 2:
        what = "burst_plan_create(window_left = -2 on the last rank only)";
        if (odd) cfg.window_left = -2;
        break;
      default:
        what = "burst_plan_create(struct_size = 4 on the last rank only)";
        if (odd) cfg.struct_size = 4;
        break;
      }
      st = burst_plan_create(ctx, &cfg, &plan);
      expect_error(st, what);
      if (st == BURST_OK) burst_plan_destroy(plan);
    }
  }
}

/* Plans created and destroyed without ever being used, with several compute
 * threads: destroying a plan must not race with its threads starting up. */
static void check_plan_churn(burst_context *ctx) {
  int i, threads;
  for (threads = 1; threads <= 3; ++threads)
    for (i = 0; i < 10; ++i) {
      burst_attention_config cfg;
      burst_plan *plan = NULL;
      char what[120];
      base_config(&cfg, 2);
      cfg.num_threads = threads;
      snprintf(what, sizeof what,
               "burst_plan_create(num_threads = %d), destroyed unused (#%d)",
               threads, i);
      if (expect(burst_plan_create(ctx, &cfg, &plan), BURST_OK, what))
        burst_plan_destroy(plan);
    }
}

/* Since 0.5 (issue 9): the sized config init, handles that are not live,
 * and outputs that overlap another buffer of the call (on one rank only:
 * every rank fails, the bad one naming the overlap). */
static void check_handles_and_overlaps(burst_context *ctx) {
  struct { burst_attention_config cfg; unsigned char pad[64]; } pc;
  burst_attention_config cfg;
  burst_plan *plan = NULL, *dead = NULL;
  float *buf;
  const int me_bad = (g_rank == 0);
  size_t n = 3 * 2 * 16; /* 3 tokens, 2 heads, d 16 */

  memset(&pc, 0xab, sizeof pc);
  expect(burst_attention_config_init_sized(NULL, sizeof cfg), BURST_ERROR_INVALID_ARGUMENT,
         "burst_attention_config_init_sized(NULL)");
  expect(burst_attention_config_init_sized(&pc.cfg, sizeof cfg - 4), BURST_ERROR_VERSION,
         "burst_attention_config_init_sized(sizeof - 4)");
  expect(burst_attention_config_init_sized(&pc.cfg, offsetof(burst_attention_config, compute) - 8), BURST_ERROR_VERSION,
         "burst_attention_config_init_sized(0.6 size - 8)");
  ++g_checks;
  if (pc.pad[0] != 0xab || ((unsigned char *)&pc.cfg)[0] != 0xab)
    fail("config_init_sized with an unknown size wrote to the struct");
  /* Since 0.7 the 0.4-0.6 size (up to timeout_seconds) is an older released
   * size: exactly its bytes are written; so does the unsized init (what 0.4
   * binaries call). */
  {
    const size_t v06 = offsetof(burst_attention_config, compute);
    int pass;
    for (pass = 0; pass < 2; ++pass) {
      memset(&pc, 0xab, sizeof pc);
      if (pass == 0) {
        if (!expect(burst_attention_config_init_sized(&pc.cfg, v06), BURST_OK,
                    "burst_attention_config_init_sized(0.6 size)"))
          continue;
      } else {
        (burst_attention_config_init)(&pc.cfg);
      }
      ++g_checks;
      if (pc.cfg.struct_size != v06 || ((unsigned char *)&pc.cfg)[v06] != 0xab || pc.cfg.window_left != -1 ||
          pc.cfg.timeout_seconds != 0)
        fail("%s: struct_size %u, byte past the 0.6 struct %s", pass ? "the unsized init" : "config_init_sized(0.6 size)",
             (unsigned)pc.cfg.struct_size, ((unsigned char *)&pc.cfg)[v06] == 0xab ? "untouched" : "WRITTEN");
    }
  }
  /* Since 0.8 the 0.7 size (up to softcap, then named reserved0) is an older
   * released size too: exactly its bytes are written, softcap = 0. */
  {
    const size_t v07 = offsetof(burst_attention_config, sinks);
    memset(&pc, 0xab, sizeof pc);
    if (expect(burst_attention_config_init_sized(&pc.cfg, v07), BURST_OK, "burst_attention_config_init_sized(0.7 size)")) {
      ++g_checks;
      if (pc.cfg.struct_size != v07 || ((unsigned char *)&pc.cfg)[v07] != 0xab || pc.cfg.softcap != 0 ||
          pc.cfg.compute != BURST_COMPUTE_DEFAULT || pc.cfg.window_left != -1)
        fail("config_init_sized(0.7 size): struct_size %u, softcap %g, byte past the 0.7 struct %s",
             (unsigned)pc.cfg.struct_size, (double)pc.cfg.softcap,
             ((unsigned char *)&pc.cfg)[v07] == 0xab ? "untouched" : "WRITTEN");
    }
  }
  if (expect(burst_attention_config_init_sized(&pc.cfg, sizeof cfg + 16), BURST_OK,
             "burst_attention_config_init_sized(sizeof + 16)")) {
    int j, bad = 0;
    for (j = 0; j < 16; ++j) bad += pc.pad[j] != 0;
    ++g_checks;
    if (pc.cfg.struct_size != sizeof cfg + 16 || bad || pc.pad[16] != 0xab || pc.cfg.window_left != -1 ||
        pc.cfg.compute != BURST_COMPUTE_DEFAULT || pc.cfg.softcap != 0 || pc.cfg.sinks != NULL)
      fail("config_init_sized(sizeof + 16): struct_size %u, %d nonzero tail bytes, byte past the size %s",
           (unsigned)pc.cfg.struct_size, bad, pc.pad[16] == 0xab ? "untouched" : "WRITTEN");
  }

  /* A destroyed plan, a plan passed as a context, a context passed as a plan,
   * a pointer that was never a handle: INVALID_ARGUMENT, locally. */
  base_config(&cfg, 3);
  if (!expect(burst_plan_create(ctx, &cfg, &dead), BURST_OK, "burst_plan_create (to destroy)")) return;
  burst_plan_destroy(dead);
  buf = alloc_floats(8 * n);
  expect_msg(burst_forward(dead, buf, buf, buf, buf + n, NULL), BURST_ERROR_INVALID_ARGUMENT, "live plan",
             "burst_forward(destroyed plan)");
  {
    burst_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    expect_msg(burst_plan_stats(dead, &st), BURST_ERROR_INVALID_ARGUMENT, "live plan",
               "burst_plan_stats(destroyed plan)");
  }
  burst_plan_destroy(dead); /* twice: ignored */
  expect_msg(burst_plan_create((burst_context *)(void *)buf, &cfg, &plan), BURST_ERROR_INVALID_ARGUMENT,
             "live context", "burst_plan_create(ctx = not a handle)");
  expect_msg(burst_forward((burst_plan *)(void *)ctx, buf, buf, buf, buf + n, NULL), BURST_ERROR_INVALID_ARGUMENT,
             "live plan", "burst_forward(plan = a context)");

  if (!expect(burst_plan_create(ctx, &cfg, &plan), BURST_OK, "burst_plan_create (overlap cases)")) {
    free(buf);
    return;
  }
  {
    float *q = buf, *k = buf + n, *v = buf + 2 * n, *out = buf + 3 * n, *lse = buf + 4 * n;
    float *dq = buf + 5 * n, *dk = buf + 6 * n, *dv = buf + 7 * n;
    size_t i;
    for (i = 0; i < 8 * n; ++i) buf[i] = (float)((i * 37) % 11) / 11.0f;
    if (me_bad)
      expect_msg(burst_forward(plan, q, k, v, q, lse), BURST_ERROR_INVALID_ARGUMENT, "overlaps",
                 "burst_forward(out = q on rank 0)");
    else
      expect_error(burst_forward(plan, q, k, v, out, lse), "burst_forward (another rank's out = q)");
    if (me_bad)
      expect_msg(burst_forward(plan, q, k, v, out, (float *)(out + 5)), BURST_ERROR_INVALID_ARGUMENT, "overlaps",
                 "burst_forward(lse inside out on rank 0)");
    else
      expect_error(burst_forward(plan, q, k, v, out, lse), "burst_forward (another rank's lse inside out)");
    /* q = k = v is allowed (inputs may alias). */
    expect(burst_forward(plan, q, q, q, out, lse), BURST_OK, "burst_forward(q = k = v)");
    expect(burst_forward(plan, q, k, v, out, lse), BURST_OK, "burst_forward (good)");
    if (me_bad)
      expect_msg(burst_backward(plan, q, k, v, out, lse, out, dq, dq + 1, dv), BURST_ERROR_INVALID_ARGUMENT,
                 "overlaps", "burst_backward(dk overlaps dq on rank 0)");
    else
      expect_error(burst_backward(plan, q, k, v, out, lse, out, dq, dk, dv), "burst_backward (another rank's dk overlaps dq)");
    if (me_bad)
      expect_msg(burst_backward(plan, q, k, v, out, lse, out, dq, dk, (float *)lse), BURST_ERROR_INVALID_ARGUMENT,
                 "overlaps", "burst_backward(dv = lse on rank 0)");
    else
      expect_error(burst_backward(plan, q, k, v, out, lse, out, dq, dk, dv), "burst_backward (another rank's dv = lse)");
    /* dout = out is allowed (both inputs). */
    expect(burst_backward(plan, q, k, v, out, lse, out, dq, dk, dv), BURST_OK, "burst_backward(dout = out)");
  }
  burst_plan_destroy(plan);
  free(buf);
}

/* Stats with bad struct_size, then bad buffers on one rank only, then a good
 * forward/backward checked against the reference, all on one plan. */
static void check_plan_calls(burst_context *ctx) {
  /* Shards: 3 tokens per rank, except the last rank of >= 2 holds 0. */
  const int64_t per = 3;
  int64_t n_local = (g_size >= 2 && g_rank == g_size - 1) ? 0 : per;
  int64_t N = per * (g_size >= 2 ? g_size - 1 : 1);
  int64_t start = per * g_rank;
  ref_shape sh;
  burst_attention_config cfg;
  burst_plan *plan = NULL;
  size_t gsz, gl, lsz, ll;
  double *gq, *gk, *gv, *gdo, *gout, *glse, *gdq, *gdk, *gdv;
  float *q, *k, *v, *dout, *out, *lse, *dq, *dk, *dv;
  const int bad_rank = 0; /* holds tokens */
  const int me_bad = (g_rank == bad_rank);

  base_config(&cfg, n_local);
  cfg.mask = BURST_MASK_CAUSAL;
  sh.layout = BURST_LAYOUT_BSHD;
  sh.mask = REF_MASK_CAUSAL;
  sh.batch = cfg.batch;
  sh.heads = cfg.num_heads_q;
  sh.seq = N;
  sh.head_dim = cfg.head_dim;
  sh.scale = 1.0 / sqrt((double)cfg.head_dim);
  gsz = ref_tensor_elems(&sh, N);
  gl = ref_lse_elems(&sh, N);
  lsz = ref_tensor_elems(&sh, n_local);
  ll = ref_lse_elems(&sh, n_local);

  gq = alloc_doubles(gsz); gk = alloc_doubles(gsz); gv = alloc_doubles(gsz);
  gdo = alloc_doubles(gsz); gout = alloc_doubles(gsz); glse = alloc_doubles(gl);
  gdq = alloc_doubles(gsz); gdk = alloc_doubles(gsz); gdv = alloc_doubles(gsz);
  q = alloc_floats(lsz); k = alloc_floats(lsz); v = alloc_floats(lsz);
  dout = alloc_floats(lsz); out = alloc_floats(lsz); lse = alloc_floats(ll);
  dq = alloc_floats(lsz); dk = alloc_floats(lsz); dv = alloc_floats(lsz);
  ref_fill(&sh, 7, REF_TENSOR_Q, 1.0, gq);
  ref_fill(&sh, 7, REF_TENSOR_K, 1.0, gk);
  ref_fill(&sh, 7, REF_TENSOR_V, 1.0, gv);
  ref_fill(&sh, 7, REF_TENSOR_DOUT, 1.0, gdo);
  ref_forward(&sh, gq, gk, gv, gout, glse);
  ref_backward(&sh, gq, gk, gv, gout, glse, gdo, gdq, gdk, gdv);
  ref_shard(&sh, gq, start, n_local, q);
  ref_shard(&sh, gk, start, n_local, k);
  ref_shard(&sh, gv, start, n_local, v);
  ref_shard(&sh, gdo, start, n_local, dout);

  if (!expect(burst_plan_create(ctx, &cfg, &plan), BURST_OK,
              "burst_plan_create(good config)"))
    goto done;

  /* burst_plan_stats: struct_size must be known. */
  {
    struct { burst_stats st; unsigned char pad[256]; } ps;
    memset(&ps, 0, sizeof ps);
    expect(burst_plan_stats(plan, NULL), BURST_ERROR_INVALID_ARGUMENT,
           "burst_plan_stats(stats = NULL)");
    ps.st.struct_size = 0;
    expect(burst_plan_stats(plan, &ps.st), BURST_ERROR_VERSION,
           "burst_plan_stats(struct_size = 0)");
    ps.st.struct_size = 4;
    expect(burst_plan_stats(plan, &ps.st), BURST_ERROR_VERSION,
           "burst_plan_stats(struct_size = 4)");
    ps.st.struct_size = 5000u;
    expect(burst_plan_stats(plan, &ps.st), BURST_ERROR_VERSION,
           "burst_plan_stats(struct_size = 5000)");
    ps.st.struct_size = (uint32_t)sizeof(burst_stats) - 4u;
    expect(burst_plan_stats(plan, &ps.st), BURST_ERROR_VERSION,
           "burst_plan_stats(struct_size = sizeof - 4, no released size)");
    /* A newer header's larger struct (0.5): this version's fields, zeros past
     * them, and struct_size = the bytes written. */
    memset(&ps, 0xff, sizeof ps);
    ps.st.struct_size = (uint32_t)sizeof(burst_stats) + 64u;
    if (expect(burst_plan_stats(plan, &ps.st), BURST_OK, "burst_plan_stats(struct_size = sizeof + 64)")) {
      int j, nonzero = 0;
      for (j = 0; j < 64; ++j) nonzero += ps.pad[j] != 0;
      ++g_checks;
      if (ps.st.struct_size != sizeof(burst_stats) || nonzero || ps.pad[64] != 0xff)
        fail("burst_plan_stats(sizeof + 64): struct_size %u (want %u), %d nonzero bytes past the struct, "
             "byte past the claimed size %s", (unsigned)ps.st.struct_size, (unsigned)sizeof(burst_stats),
             nonzero, ps.pad[64] == 0xff ? "untouched" : "WRITTEN");
    }
    memset(&ps, 0xff, sizeof ps);
    ps.st.struct_size = (uint32_t)sizeof(burst_stats);
    if (expect(burst_plan_stats(plan, &ps.st), BURST_OK,
               "burst_plan_stats before any call") &&
        (ps.st.bytes_sent != 0 || ps.st.bytes_received != 0 ||
         ps.st.messages_sent != 0 || ps.st.steps_computed != 0))
      fail("burst_plan_stats before the first call is not zero (sent %llu, "
           "received %llu)",
           (unsigned long long)ps.st.bytes_sent,
           (unsigned long long)ps.st.bytes_received);
  }

  /* NULL buffers on one rank only: every rank fails, nobody hangs. */
  expect_error(burst_forward(plan, me_bad ? NULL : q, k, v, out, lse),
               "burst_forward(q = NULL on rank 0 only)");
  {
    /* the highest rank that holds tokens */
    const int out_rank = g_size >= 2 ? g_size - 2 : 0;
    expect_error(burst_forward(plan, q, k, v, g_rank == out_rank ? NULL : out, lse),
                 "burst_forward(out = NULL on one rank only)");
  }
  expect_error(burst_forward(plan, q, me_bad ? NULL : k, v, out, lse),
               "burst_forward(k = NULL on rank 0 only)");
  /* lse is optional in forward. */
  expect(burst_forward(plan, q, k, v, out, NULL), BURST_OK,
         "burst_forward(lse = NULL on every rank)");
  /* The real forward, needed by the backward checks below. */
  expect(burst_forward(plan, q, k, v, out, lse), BURST_OK,
         "burst_forward after failed calls");
  expect_error(burst_backward(plan, q, k, v, out, me_bad ? NULL : lse, dout, dq,
                              dk, dv),
               "burst_backward(lse = NULL on rank 0 only)");
  expect_error(burst_backward(plan, q, k, v, out, lse, dout, dq, dk,
                              me_bad ? NULL : dv),
               "burst_backward(dv = NULL on rank 0 only)");
  expect_error(burst_backward(plan, q, k, v, out, lse, me_bad ? NULL : dout, dq,
                              dk, dv),
               "burst_backward(dout = NULL on rank 0 only)");

  /* After all that, the plan still computes the right answer. */
  if (expect(burst_forward(plan, q, k, v, out, lse), BURST_OK,
             "burst_forward (good, after errors)") &&
      expect(burst_backward(plan, q, k, v, out, lse, dout, dq, dk, dv), BURST_OK,
             "burst_backward (good, after errors)")) {
    double eo = ref_shard_error(&sh, gout, start, n_local, out);
    double el = ref_lse_error(&sh, glse, start, n_local, lse);
    double edq = ref_shard_error(&sh, gdq, start, n_local, dq);
    double edk = ref_shard_error(&sh, gdk, start, n_local, dk);
    double edv = ref_shard_error(&sh, gdv, start, n_local, dv);
    ++g_checks;
    if (!(eo <= 1e-5 * ref_max_abs(gout, gsz)) || !(el <= 1e-4) ||
        !(edq <= 1e-4 * ref_max_abs(gdq, gsz)) ||
        !(edk <= 1e-4 * ref_max_abs(gdk, gsz)) ||
        !(edv <= 1e-4 * ref_max_abs(gdv, gsz)))
      fail("good plan after errors gives wrong results: out %.3e lse %.3e dq "
           "%.3e dk %.3e dv %.3e (absolute)",
           eo, el, edq, edk, edv);
  }
  burst_plan_destroy(plan);

done:
  free(gq); free(gk); free(gv); free(gdo); free(gout); free(glse);
  free(gdq); free(gdk); free(gdv);
  free(q); free(k); free(v); free(dout); free(out); free(lse);
  free(dq); free(dk); free(dv);
}

/* Since 0.8: burst_plan_set_sinks and burst_plan_sinks_gradient. A bad
 * value set on one rank fails that call there and the next collective call
 * on every rank (until valid values are set); values that differ by rank
 * make the next forward and backward MISMATCH on every rank; the gradient
 * exists only after a successful backward with sinks since they were set. */
static void check_sinks_calls(burst_context *ctx) {
  const int64_t n = 3;                /* tokens on every rank; 2 heads, head_dim 16 */
  const size_t nq = (size_t)n * 2 * 16, nl = (size_t)n * 2;
  const int me_bad = (g_rank == 0), odd = (g_rank == g_size - 1);
  const float good[2] = {0.5f, -1.25f}, other[2] = {0.25f, -1.25f};
  float bad_nan[2], bad_inf[2], dsinks[2], first[2] = {0, 0};
  float *q, *k, *v, *out, *lse, *dout, *dq, *dk, *dv;
  burst_attention_config cfg;
  burst_plan *plan = NULL, *plain = NULL, *dead = NULL;
  size_t i;

  bad_nan[0] = 0.5f; bad_nan[1] = (float)NAN;
  bad_inf[0] = (float)INFINITY; bad_inf[1] = 0.5f;
  q = alloc_floats(nq); k = alloc_floats(nq); v = alloc_floats(nq); out = alloc_floats(nq);
  dout = alloc_floats(nq); dq = alloc_floats(nq); dk = alloc_floats(nq); dv = alloc_floats(nq);
  lse = alloc_floats(nl);
  for (i = 0; i < nq; ++i) {
    q[i] = (float)((i * 37 + (size_t)g_rank) % 11) / 11.0f - 0.5f;
    k[i] = (float)((i * 17 + 3) % 13) / 13.0f - 0.5f;
    v[i] = (float)((i * 7 + 1) % 9) / 9.0f - 0.5f;
    dout[i] = (float)((i * 5 + 2) % 7) / 7.0f - 0.5f;
  }
  base_config(&cfg, n);
  cfg.mask = BURST_MASK_CAUSAL;
  cfg.softcap = 20.0f;
  cfg.sinks = good;
  cfg.timeout_seconds = 60;
  if (!expect(burst_plan_create(ctx, &cfg, &plan), BURST_OK, "burst_plan_create(softcap 20, sinks)")) goto done;

  expect(burst_plan_sinks_gradient(plan, dsinks), BURST_ERROR_INVALID_ARGUMENT,
         "burst_plan_sinks_gradient before any call");
  expect(burst_forward(plan, q, k, v, out, lse), BURST_OK, "burst_forward (sinks)");
  expect(burst_plan_sinks_gradient(plan, dsinks), BURST_ERROR_INVALID_ARGUMENT,
         "burst_plan_sinks_gradient after a forward only");
  expect(burst_backward(plan, q, k, v, out, lse, dout, dq, dk, dv), BURST_OK, "burst_backward (sinks)");
  if (expect(burst_plan_sinks_gradient(plan, dsinks), BURST_OK, "burst_plan_sinks_gradient after a backward")) {
    first[0] = dsinks[0]; first[1] = dsinks[1];
    ++g_checks;
    if (!isfinite(first[0]) || !isfinite(first[1]))
      fail("burst_plan_sinks_gradient gave %g %g: not finite", (double)first[0], (double)first[1]);
  }
  expect(burst_plan_sinks_gradient(plan, NULL), BURST_ERROR_INVALID_ARGUMENT,
         "burst_plan_sinks_gradient(dsinks = NULL)");
  expect(burst_plan_sinks_gradient(NULL, dsinks), BURST_ERROR_INVALID_ARGUMENT,
         "burst_plan_sinks_gradient(plan = NULL)");
  expect(burst_plan_set_sinks(NULL, good), BURST_ERROR_INVALID_ARGUMENT, "burst_plan_set_sinks(plan = NULL)");

  /* Setting them (even to the same values) forgets the gradient until the next backward. */
  expect(burst_plan_set_sinks(plan, good), BURST_OK, "burst_plan_set_sinks(the same values)");
  expect(burst_plan_sinks_gradient(plan, dsinks), BURST_ERROR_INVALID_ARGUMENT,
         "burst_plan_sinks_gradient after burst_plan_set_sinks, before a backward");
  expect(burst_backward(plan, q, k, v, out, lse, dout, dq, dk, dv), BURST_OK, "burst_backward (sinks set again)");
  if (expect(burst_plan_sinks_gradient(plan, dsinks), BURST_OK, "burst_plan_sinks_gradient after that backward")) {
    ++g_checks;
    if (memcmp(dsinks, first, sizeof first) != 0)
      fail("burst_plan_sinks_gradient: the same backward gave %.9g %.9g, before %.9g %.9g (not the same bits)",
           (double)dsinks[0], (double)dsinks[1], (double)first[0], (double)first[1]);
  }
  /* A failed backward clears it. */
  expect_error(burst_backward(plan, q, k, v, out, lse, dout, dq, dk, me_bad ? NULL : dv),
               "burst_backward(dv = NULL on rank 0 only), sinks");
  expect(burst_plan_sinks_gradient(plan, dsinks), BURST_ERROR_INVALID_ARGUMENT,
         "burst_plan_sinks_gradient after a failed backward");

  /* A NaN, then an infinity, set on rank 0 only: that call fails there, and
   * every collective call after it fails on every rank (no hang) until
   * valid values are set. */
  {
    int which;
    for (which = 0; which < 2; ++which) {
      const char *label = which == 0 ? "NaN" : "+inf";
      char what[160];
      if (me_bad) {
        snprintf(what, sizeof what, "burst_plan_set_sinks(a %s on rank 0)", label);
        expect_msg(burst_plan_set_sinks(plan, which == 0 ? bad_nan : bad_inf), BURST_ERROR_INVALID_ARGUMENT,
                   "sinks", what);
      } else {
        snprintf(what, sizeof what, "burst_plan_set_sinks(valid values; a %s on rank 0)", label);
        expect(burst_plan_set_sinks(plan, good), BURST_OK, what);
      }
      snprintf(what, sizeof what, "burst_forward after a %s sink was set on rank 0", label);
      if (me_bad)
        expect_msg(burst_forward(plan, q, k, v, out, lse), BURST_ERROR_INVALID_ARGUMENT, "sinks", what);
      else
        expect(burst_forward(plan, q, k, v, out, lse), BURST_ERROR_INVALID_ARGUMENT, what);
      snprintf(what, sizeof what, "burst_forward again after a %s sink was set on rank 0 (the plan keeps it)", label);
      expect(burst_forward(plan, q, k, v, out, lse), BURST_ERROR_INVALID_ARGUMENT, what);
      snprintf(what, sizeof what, "burst_backward after a %s sink was set on rank 0", label);
      expect(burst_backward(plan, q, k, v, out, lse, dout, dq, dk, dv), BURST_ERROR_INVALID_ARGUMENT, what);
      expect(burst_plan_sinks_gradient(plan, dsinks), BURST_ERROR_INVALID_ARGUMENT,
             "burst_plan_sinks_gradient after the refused sinks");
      expect(burst_plan_set_sinks(plan, good), BURST_OK, "burst_plan_set_sinks(valid values again)");
      snprintf(what, sizeof what, "burst_forward once valid sinks replace the %s", label);
      expect(burst_forward(plan, q, k, v, out, lse), BURST_OK, what);
    }
  }
  /* Values that differ by rank (the last rank's): MISMATCH on every rank. */
  if (g_size >= 2) {
    int which;
    for (which = 0; which < 2; ++which) {
      const char *label = which == 0 ? "other values" : "none (NULL)";
      char what[160];
      snprintf(what, sizeof what, "burst_plan_set_sinks(%s on the last rank)", label);
      expect(burst_plan_set_sinks(plan, odd ? (which == 0 ? other : NULL) : good), BURST_OK, what);
      snprintf(what, sizeof what, "burst_forward with sinks that differ on the last rank (%s)", label);
      expect(burst_forward(plan, q, k, v, out, lse), BURST_ERROR_MISMATCH, what);
      snprintf(what, sizeof what, "burst_backward with sinks that differ on the last rank (%s)", label);
      expect(burst_backward(plan, q, k, v, out, lse, dout, dq, dk, dv), BURST_ERROR_MISMATCH, what);
      expect(burst_plan_set_sinks(plan, good), BURST_OK, "burst_plan_set_sinks(the same values everywhere)");
      expect(burst_forward(plan, q, k, v, out, lse), BURST_OK, "burst_forward once the sinks agree again");
    }
  }
  /* NULL removes them: the calls work, the gradient is refused. */
  expect(burst_plan_set_sinks(plan, NULL), BURST_OK, "burst_plan_set_sinks(NULL)");
  expect(burst_forward(plan, q, k, v, out, lse), BURST_OK, "burst_forward after the sinks were removed");
  expect(burst_backward(plan, q, k, v, out, lse, dout, dq, dk, dv), BURST_OK,
         "burst_backward after the sinks were removed");
  expect(burst_plan_sinks_gradient(plan, dsinks), BURST_ERROR_INVALID_ARGUMENT,
         "burst_plan_sinks_gradient after a backward without sinks");

  /* A plan created without sinks: no gradient; sinks set later are used. */
  cfg.sinks = NULL;
  cfg.softcap = 0;
  if (expect(burst_plan_create(ctx, &cfg, &plain), BURST_OK, "burst_plan_create(no sinks)")) {
    expect(burst_forward(plain, q, k, v, out, lse), BURST_OK, "burst_forward (plan without sinks)");
    expect(burst_backward(plain, q, k, v, out, lse, dout, dq, dk, dv), BURST_OK, "burst_backward (plan without sinks)");
    expect(burst_plan_sinks_gradient(plain, dsinks), BURST_ERROR_INVALID_ARGUMENT,
           "burst_plan_sinks_gradient on a plan without sinks");
    expect(burst_plan_set_sinks(plain, good), BURST_OK, "burst_plan_set_sinks on a plan created without sinks");
    expect(burst_forward(plain, q, k, v, out, lse), BURST_OK, "burst_forward (sinks set after creation)");
    expect(burst_backward(plain, q, k, v, out, lse, dout, dq, dk, dv), BURST_OK,
           "burst_backward (sinks set after creation)");
    expect(burst_plan_sinks_gradient(plain, dsinks), BURST_OK,
           "burst_plan_sinks_gradient (sinks set after creation)");
  }
  /* A destroyed plan is not a live handle. */
  if (expect(burst_plan_create(ctx, &cfg, &dead), BURST_OK, "burst_plan_create (to destroy)")) {
    burst_plan_destroy(dead);
    expect_msg(burst_plan_set_sinks(dead, good), BURST_ERROR_INVALID_ARGUMENT, "live plan",
               "burst_plan_set_sinks(destroyed plan)");
    expect_msg(burst_plan_sinks_gradient(dead, dsinks), BURST_ERROR_INVALID_ARGUMENT, "live plan",
               "burst_plan_sinks_gradient(destroyed plan)");
  }
done:
  burst_plan_destroy(plan);
  burst_plan_destroy(plain);
  free(q); free(k); free(v); free(out); free(dout); free(dq); free(dk); free(dv); free(lse);
}

/* Since 0.8: the KV cache config's softcap, reserved0 and sinks
 * ([num_layers x num_heads_q]). */
static void check_kvcache_config(burst_context *ctx) {
  const int odd = (g_rank == g_size - 1);
  const float sinks_ok[4] = {0.5f, -1.0f, 2.0f, 0.0f}, sinks_other[4] = {0.5f, -1.0f, 2.5f, 0.0f};
  float sinks_nan[4], sinks_inf[4], sinks_minf[4];
  burst_kv_cache_config base;
  int i;
  for (i = 0; i < 4; ++i) sinks_nan[i] = sinks_inf[i] = sinks_minf[i] = sinks_ok[i];
  sinks_nan[2] = (float)NAN;       /* layer 1, head 0 */
  sinks_inf[3] = (float)INFINITY;  /* layer 1, head 1 */
  sinks_minf[0] = -(float)INFINITY;
  burst_kv_cache_config_init(&base);
  base.num_layers = 2; base.num_heads_q = 2; base.num_heads_kv = 1; base.head_dim = 16; base.timeout_seconds = 60;
#define KV_CASE(stmt, want, needle, label)                                      \
  do {                                                                          \
    burst_kv_cache_config c_ = base;                                            \
    burst_kv_cache *cache_ = NULL;                                              \
    burst_status st_;                                                           \
    stmt;                                                                       \
    st_ = burst_kv_cache_create(ctx, &c_, &cache_);                             \
    expect_msg(st_, (want), (needle), (label));                                 \
    burst_kv_cache_destroy(cache_);                                             \
  } while (0)
  KV_CASE(c_.sinks = sinks_nan, BURST_ERROR_INVALID_ARGUMENT, "sinks",
          "burst_kv_cache_create(a NaN sink in layer 1)");
  KV_CASE(c_.sinks = sinks_inf, BURST_ERROR_INVALID_ARGUMENT, "sinks",
          "burst_kv_cache_create(a +inf sink in layer 1)");
  KV_CASE(c_.sinks = sinks_minf, BURST_ERROR_INVALID_ARGUMENT, "sinks",
          "burst_kv_cache_create(a -inf sink in layer 0)");
  KV_CASE(c_.softcap = -1.0f, BURST_ERROR_INVALID_ARGUMENT, "softcap", "burst_kv_cache_create(softcap = -1)");
  KV_CASE(c_.softcap = (float)NAN, BURST_ERROR_INVALID_ARGUMENT, "softcap", "burst_kv_cache_create(softcap = NaN)");
  KV_CASE(c_.softcap = (float)INFINITY, BURST_ERROR_INVALID_ARGUMENT, "softcap",
          "burst_kv_cache_create(softcap = +inf)");
  KV_CASE(c_.reserved0 = 1, BURST_ERROR_VERSION, "reserved0", "burst_kv_cache_create(reserved0 = 1)");
  KV_CASE((c_.softcap = 30.0f, c_.sinks = sinks_ok), BURST_OK, NULL,
          "burst_kv_cache_create(softcap = 30, per-layer sinks)");
  /* The 0.6-0.7 size ends at timeout_seconds: nothing after it is read. */
  KV_CASE((c_.struct_size = (uint32_t)offsetof(burst_kv_cache_config, softcap), c_.softcap = (float)NAN,
           c_.reserved0 = 7, c_.sinks = sinks_nan),
          BURST_OK, NULL, "burst_kv_cache_create(the 0.6 size; NaN softcap, reserved0 7, NaN sinks past it)");
  if (g_size >= 2) {
    KV_CASE(c_.sinks = odd ? sinks_other : sinks_ok, BURST_ERROR_MISMATCH, "sinks",
            "burst_kv_cache_create(sinks differ on the last rank)");
    KV_CASE(c_.sinks = odd ? NULL : sinks_ok, BURST_ERROR_MISMATCH, "sinks",
            "burst_kv_cache_create(no sinks on the last rank only)");
    KV_CASE(c_.softcap = odd ? 20.0f : 30.0f, BURST_ERROR_MISMATCH, "softcap",
            "burst_kv_cache_create(softcap differs on the last rank)");
    KV_CASE(c_.sinks = odd ? sinks_nan : sinks_ok, BURST_ERROR_INVALID_ARGUMENT, NULL,
            "burst_kv_cache_create(a NaN sink on the last rank only)");
  }
#undef KV_CASE
}

int main(int argc, char **argv) {
  burst_context *ctx = NULL;
  int local_fail, global_fail = 0;

  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  g_verbose = getenv("BURST_TEST_VERBOSE") != NULL &&
              strcmp(getenv("BURST_TEST_VERBOSE"), "0") != 0;

  check_status_strings();
  check_null_handles();
  check_communicators();

  if (expect(burst_context_create_mpi((int64_t)MPI_Comm_c2f(MPI_COMM_WORLD), &ctx),
             BURST_OK, "burst_context_create_mpi(MPI_COMM_WORLD)")) {
    int32_t r = -1, s = -1;
    expect(burst_context_rank(ctx, NULL, NULL), BURST_OK,
           "burst_context_rank(ctx, NULL, NULL)");
    if (expect(burst_context_rank(ctx, &r, NULL), BURST_OK,
               "burst_context_rank(ctx, &rank, NULL)") && r != g_rank)
      fail("burst_context_rank gave rank %d, MPI says %d", (int)r, g_rank);
    if (expect(burst_context_rank(ctx, NULL, &s), BURST_OK,
               "burst_context_rank(ctx, NULL, &size)") && s != g_size)
      fail("burst_context_rank gave size %d, MPI says %d", (int)s, g_size);

    check_config_cases(ctx, 5 * (int64_t)g_size);
    if (g_size >= 2) check_mismatch(ctx);
    check_plan_churn(ctx);
    check_plan_calls(ctx);
    check_handles_and_overlaps(ctx);
    check_sinks_calls(ctx);
    check_kvcache_config(ctx);
    burst_context_destroy(ctx);
  }

  local_fail = g_failures > 0;
  MPI_Allreduce(&local_fail, &global_fail, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  printf("c_bad_input rank %d/%d: %s - %d checks, %d local failures\n", g_rank,
         g_size, global_fail ? "FAILED" : "passed", g_checks, g_failures);
  fflush(stdout);
  MPI_Finalize();
  return global_fail ? 1 : 0;
}
