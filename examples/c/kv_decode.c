/*
 * kv_decode.c — inference with a KV cache sharded over MPI ranks:
 * prefill a long prompt once, then decode new tokens one at a time.
 *
 * 1. The prompt of N tokens is dealt to the ranks in ZIGZAG order (causal work
 *    is then the same on every rank) and a plan runs its causal attention
 *    (burst_forward), as the prompt pass of a model would.
 * 2. burst_kv_cache_prefill keeps each rank's keys and values of the prompt
 *    where they are: no token moves between ranks.
 * 3. Each decode step gives every rank the same new query, key and value
 *    (T = 1 token); every rank attends to its own shard of the history, the
 *    partial results are merged, and every rank gets the same output. The new
 *    token's K,V is stored on rank (position mod P).
 * Rank 0 checks each step against a float64 attention over the whole history
 * computed in this file, prints the largest error, and the program exits
 * non-zero if any step is out of tolerance.
 *
 * Build (with the installed pkg-config file):
 *   cc -std=c99 kv_decode.c $(pkg-config --cflags --libs burst_attention) -lm \
 *      -o kv_decode
 * or with CMake: see CMakeLists.txt next to this file.
 *
 * Run:
 *   mpirun -n 2 ./kv_decode [N] [M]
 *     N  prompt tokens (default 4096)
 *     M  decode steps (default 32)
 *
 * Shapes: layout BSHD ([tokens, heads, head_dim] row-major floats, batch 1),
 * 8 query heads sharing 2 key/value heads (GQA), head_dim 64.
 */
#include <mpi.h>

#include <burst_attention.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

enum { HEADS_Q = 8, HEADS_KV = 2, HEAD_DIM = 64 };

/* Stop every rank with a readable message if a library call fails. A
 * collective call fails on every rank alike, so there is no hang. */
#define CHECK(call)                                                          \
  do {                                                                       \
    burst_status st_ = (call);                                               \
    if (st_ != BURST_OK) {                                                   \
      fprintf(stderr, "%s failed: %s: %s\n", #call, burst_status_string(st_), \
              burst_last_error());                                           \
      MPI_Abort(MPI_COMM_WORLD, 1);                                          \
    }                                                                        \
  } while (0)

static void *xcalloc(size_t count, size_t size) {
  void *p = calloc(count ? count : 1, size);
  if (p == NULL) {
    fprintf(stderr, "out of memory\n");
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  return p;
}

/* ---- inputs ---------------------------------------------------------------
 * A deterministic value in [-1, 1) for element (head h, component d) of
 * tensor `tensor` (1 = q, 2 = k, 3 = v) at global position `pos`: every rank
 * builds any token's q, k, v without communicating. (A model would compute
 * them from the token's hidden state.) */
static float input_value(uint64_t tensor, int64_t pos, int64_t h, int64_t d) {
  uint64_t x = (tensor << 56) ^ ((uint64_t)pos << 16) ^ (uint64_t)(h * HEAD_DIM + d);
  x += 0x9E3779B97F4A7C15ull; /* splitmix64 */
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  return (float)(2.0 * ((double)(x >> 11) / 9007199254740992.0) - 1.0);
}

/* Fills a [tokens, heads, HEAD_DIM] tensor with the values of the tokens at
 * the given global positions. */
static void fill(float *x, uint64_t tensor, const int64_t *positions, int64_t tokens, int64_t heads) {
  int64_t t, h, d;
  for (t = 0; t < tokens; ++t)
    for (h = 0; h < heads; ++h)
      for (d = 0; d < HEAD_DIM; ++d)
        x[(t * heads + h) * HEAD_DIM + d] = input_value(tensor, positions[t], h, d);
}

/* ---- float64 reference -----------------------------------------------------
 * Attention of one new query (position `last`) over the keys and values at
 * positions 0 .. last: out [HEADS_Q, HEAD_DIM] and lse [HEADS_Q]. k and v are
 * [positions, HEADS_KV, HEAD_DIM]; query head h reads kv head h / (HEADS_Q /
 * HEADS_KV). */
static void reference_decode(int64_t last, const float *q, const float *k, const float *v, double *out,
                             double *lse) {
  const double scale = 1.0 / sqrt((double)HEAD_DIM);
  int64_t h, j, d;
  for (h = 0; h < HEADS_Q; ++h) {
    const int64_t hk = h / (HEADS_Q / HEADS_KV);
    double m = -INFINITY, l = 0.0;
    double *s = xcalloc((size_t)(last + 1), sizeof(double));
    for (j = 0; j <= last; ++j) {
      for (d = 0; d < HEAD_DIM; ++d)
        s[j] += (double)q[h * HEAD_DIM + d] * (double)k[(j * HEADS_KV + hk) * HEAD_DIM + d];
      s[j] *= scale;
      if (s[j] > m) m = s[j];
    }
    for (d = 0; d < HEAD_DIM; ++d) out[h * HEAD_DIM + d] = 0.0;
    for (j = 0; j <= last; ++j) {
      double p = exp(s[j] - m);
      l += p;
      for (d = 0; d < HEAD_DIM; ++d) out[h * HEAD_DIM + d] += p * (double)v[(j * HEADS_KV + hk) * HEAD_DIM + d];
    }
    for (d = 0; d < HEAD_DIM; ++d) out[h * HEAD_DIM + d] /= l;
    lse[h] = m + log(l);
    free(s);
  }
}

/* Prints (rank 0) the sequence's length, the tokens each rank stores and the
 * cache's bytes summed over the ranks; returns the length. */
static int64_t report(const burst_kv_cache *cache, int64_t seq_id, int rank, int size, int64_t *per_rank,
                      const char *when) {
  int64_t length = 0, local_tokens = 0, r;
  uint64_t bytes = 0, total_bytes = 0;
  CHECK(burst_kv_cache_sequence_length(cache, seq_id, 0, &length, &local_tokens));
  CHECK(burst_kv_cache_bytes(cache, &bytes));
  MPI_Gather(&local_tokens, 1, MPI_INT64_T, per_rank, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
  MPI_Reduce(&bytes, &total_bytes, 1, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
  if (rank == 0) {
    printf("%s: sequence of %lld tokens; tokens per rank:", when, (long long)length);
    for (r = 0; r < size; ++r) printf(" %lld", (long long)per_rank[r]);
    printf("; cache %llu bytes in all\n", (unsigned long long)total_bytes);
  }
  return length;
}

int main(int argc, char **argv) {
  int rank, size, step_ok, all_ok = 1;
  int64_t N = 4096, M = 32, n_local = 0, length = 0, step, i;
  int64_t *per_rank = NULL;
  int64_t *positions, *all_positions;
  float *q, *k, *v, *out, *lse, *k_all = NULL, *v_all = NULL;
  float new_q[HEADS_Q * HEAD_DIM], new_k[HEADS_KV * HEAD_DIM], new_v[HEADS_KV * HEAD_DIM];
  float new_out[HEADS_Q * HEAD_DIM], new_lse[HEADS_Q];
  double ref_out[HEADS_Q * HEAD_DIM], ref_lse[HEADS_Q], t0, decode_seconds = 0.0;
  const int64_t seq_id = 0;
  burst_context *ctx = NULL;
  burst_plan *plan = NULL;
  burst_kv_cache *cache = NULL;
  burst_attention_config cfg;
  burst_kv_cache_config cache_cfg;
  burst_stats stats;

  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (argc > 1) N = strtoll(argv[1], NULL, 10);
  if (argc > 2) M = strtoll(argv[2], NULL, 10);
  if (N < 1 || M < 1) {
    if (rank == 0) fprintf(stderr, "usage: %s [N >= 1 prompt tokens] [M >= 1 decode steps]\n", argv[0]);
    MPI_Finalize();
    return 2;
  }

  /* 1. This rank's tokens of the prompt under ZIGZAG: their global positions. */
  CHECK(burst_shard_positions(BURST_DISTRIBUTION_ZIGZAG, N, NULL, 0, size, rank, NULL, 0, &n_local));
  positions = xcalloc((size_t)n_local, sizeof(int64_t));
  CHECK(burst_shard_positions(BURST_DISTRIBUTION_ZIGZAG, N, NULL, 0, size, rank, positions, n_local, &n_local));
  q = xcalloc((size_t)(n_local * HEADS_Q * HEAD_DIM), sizeof(float));
  out = xcalloc((size_t)(n_local * HEADS_Q * HEAD_DIM), sizeof(float));
  k = xcalloc((size_t)(n_local * HEADS_KV * HEAD_DIM), sizeof(float));
  v = xcalloc((size_t)(n_local * HEADS_KV * HEAD_DIM), sizeof(float));
  lse = xcalloc((size_t)(HEADS_Q * n_local), sizeof(float));
  fill(q, 1, positions, n_local, HEADS_Q);
  fill(k, 2, positions, n_local, HEADS_KV);
  fill(v, 3, positions, n_local, HEADS_KV);

  /* 2. A context over MPI_COMM_WORLD and a plan for the causal prompt. */
  CHECK(burst_context_create_mpi((int64_t)MPI_Comm_c2f(MPI_COMM_WORLD), &ctx));
  burst_attention_config_init(&cfg);
  cfg.layout = BURST_LAYOUT_BSHD;
  cfg.mask = BURST_MASK_CAUSAL;
  cfg.distribution = BURST_DISTRIBUTION_ZIGZAG;
  cfg.batch = 1;
  cfg.seq_len_local = n_local; /* the count ZIGZAG deals this rank */
  cfg.num_heads_q = HEADS_Q;
  cfg.num_heads_kv = HEADS_KV;
  cfg.head_dim = HEAD_DIM;
  CHECK(burst_plan_create(ctx, &cfg, &plan));
  CHECK(burst_forward(plan, q, k, v, out, lse)); /* the prompt's attention */

  /* 3. A cache for one layer of the same shape; the prompt's K,V stay in place. */
  burst_kv_cache_config_init(&cache_cfg);
  cache_cfg.layout = BURST_LAYOUT_BSHD; /* of decode's q, k, v, out: [1, T, heads, d] */
  cache_cfg.num_layers = 1;
  cache_cfg.num_heads_q = HEADS_Q;
  cache_cfg.num_heads_kv = HEADS_KV;
  cache_cfg.head_dim = HEAD_DIM;
  CHECK(burst_kv_cache_create(ctx, &cache_cfg, &cache));
  CHECK(burst_kv_cache_add(cache, &seq_id, 1));
  CHECK(burst_kv_cache_prefill(cache, 0, plan, &seq_id, k, v));
  burst_plan_destroy(plan); /* the cache keeps no reference to the plan */
  if (rank == 0) per_rank = xcalloc((size_t)size, sizeof(int64_t));
  report(cache, seq_id, rank, size, per_rank, "after prefill");

  /* Rank 0 keeps the whole history for its reference. */
  if (rank == 0) {
    k_all = xcalloc((size_t)((N + M) * HEADS_KV * HEAD_DIM), sizeof(float));
    v_all = xcalloc((size_t)((N + M) * HEADS_KV * HEAD_DIM), sizeof(float));
    all_positions = xcalloc((size_t)(N + M), sizeof(int64_t));
    for (i = 0; i < N + M; ++i) all_positions[i] = i;
    fill(k_all, 2, all_positions, N + M, HEADS_KV);
    fill(v_all, 3, all_positions, N + M, HEADS_KV);
    free(all_positions);
  }

  /* 4. Decode M tokens, one at a time. The new token is at position N + step;
   *    every rank passes the same q, k, v and gets the same out and lse. */
  for (step = 0; step < M; ++step) {
    const int64_t pos = N + step;
    fill(new_q, 1, &pos, 1, HEADS_Q);
    fill(new_k, 2, &pos, 1, HEADS_KV);
    fill(new_v, 3, &pos, 1, HEADS_KV);
    MPI_Barrier(MPI_COMM_WORLD);
    t0 = MPI_Wtime();
    CHECK(burst_kv_cache_decode(cache, 0, &seq_id, 1, 1, NULL, new_q, new_k, new_v, new_out, new_lse));
    decode_seconds += MPI_Wtime() - t0;
    step_ok = 1;
    if (rank == 0) {
      double max_ref = 0.0, err_out = 0.0, err_lse = 0.0;
      reference_decode(pos, new_q, k_all, v_all, ref_out, ref_lse);
      for (i = 0; i < HEADS_Q * HEAD_DIM; ++i) {
        double e = fabs((double)new_out[i] - ref_out[i]);
        if (fabs(ref_out[i]) > max_ref) max_ref = fabs(ref_out[i]);
        if (!(e <= err_out)) err_out = (e == e) ? e : INFINITY; /* NaN counts as infinite */
      }
      for (i = 0; i < HEADS_Q; ++i) {
        double e = fabs((double)new_lse[i] - ref_lse[i]);
        if (!(e <= err_lse)) err_lse = (e == e) ? e : INFINITY;
      }
      step_ok = err_out <= 1e-5 * max_ref && err_lse <= 1e-4;
      stats.struct_size = sizeof stats; /* the counters of this rank's last decode */
      CHECK(burst_kv_cache_stats(cache, &stats));
      printf("step %3lld: position %lld  max|out-ref| %.2e (tol %.2e)  max|lse-ref| %.2e (tol 1e-04)"
             "  sent %llu B  %s\n",
             (long long)step, (long long)pos, err_out, 1e-5 * max_ref, err_lse,
             (unsigned long long)stats.bytes_sent, step_ok ? "ok" : "FAILED");
    }
    MPI_Bcast(&step_ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
    all_ok = all_ok && step_ok;
  }

  /* 5. The history grew by M tokens, dealt round the ranks (position mod P). */
  length = report(cache, seq_id, rank, size, per_rank, "after decode ");
  if (length != N + M) all_ok = 0;
  CHECK(burst_kv_cache_drop(cache, &seq_id, 1)); /* a finished sequence frees its blocks */
  burst_kv_cache_destroy(cache);
  burst_context_destroy(ctx);

  if (rank == 0)
    printf("kv_decode: %d ranks, prompt %lld, %lld decode steps, %.3f ms a step: %s\n", size, (long long)N,
           (long long)M, 1e3 * decode_seconds / (double)M, all_ok ? "all within tolerance" : "FAILED");
  free(per_rank); free(positions); free(q); free(k); free(v); free(out); free(lse); free(k_all); free(v_all);
  MPI_Finalize();
  return all_ok ? 0 : 1;
}
