/*
 * burst_demo.c — distributed exact attention with libburst_attention.
 *
 * Every MPI rank holds a contiguous slice of a sequence of N tokens. The
 * library computes attention of each rank's queries against the keys and
 * values of *all* ranks (forward), and the gradients of each rank's q, k and v
 * (backward), passing blocks around a ring of ranks. The demo checks the
 * result against a plain float64 attention computed in this file.
 *
 * Build (with the installed pkg-config file):
 *   cc -std=c99 burst_demo.c $(pkg-config --cflags --libs burst_attention) -lm \
 *      -o burst_demo
 * or with CMake: see CMakeLists.txt next to this file.
 *
 * Run:
 *   mpirun -n 2 ./burst_demo [N] [causal]
 *     N       total number of tokens (default 512)
 *     causal  "causal" (or 1) for a causal mask; default: no mask
 *
 * Shapes: layout BSHD, i.e. q/k/v/out are [batch, tokens, heads, head_dim]
 * row-major floats; batch 1, 4 heads, head_dim 64.
 */
#include <mpi.h>

#include <burst_attention.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { HEADS = 4, HEAD_DIM = 64 }; /* batch is 1 */

/* Stop every rank with a readable message if a library call fails. The
 * library makes a collective call fail on every rank, so there is no hang. */
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
 * Deterministic pseudo-random values in [-1, 1]: every rank can build the
 * same global tensors without communicating. */
static double input_value(uint64_t tensor, uint64_t index) {
  uint64_t x = (tensor << 56) ^ index;
  x += 0x9E3779B97F4A7C15ull; /* splitmix64 */
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  return 2.0 * ((double)(x >> 11) / 9007199254740992.0) - 1.0;
}

/* Index of element (token s, head h, component d) in a BSHD tensor, batch 1. */
static size_t at(int64_t s, int64_t h, int64_t d) {
  return (size_t)((s * HEADS + h) * HEAD_DIM + d);
}

/* ---- float64 reference -------------------------------------------------------
 * Straightforward attention over the whole sequence: softmax(scale q k^T) v,
 * its logsumexp, and the gradients for a given output gradient dout. */
static double dot(const double *a, const double *b) {
  double s = 0.0;
  int d;
  for (d = 0; d < HEAD_DIM; ++d) s += a[d] * b[d];
  return s;
}

static void reference_attention(int64_t N, int causal, const double *q,
                                 const double *k, const double *v,
                                 const double *dout, double *out, double *lse,
                                 double *dq, double *dk, double *dv) {
  const double scale = 1.0 / sqrt((double)HEAD_DIM);
  int64_t h, i, j;
  int d;
  for (h = 0; h < HEADS; ++h)
    for (i = 0; i < N; ++i) {
      const int64_t last = causal ? i : N - 1; /* last key query i may see */
      double m = -INFINITY, l = 0.0, D = 0.0;
      double *o = &out[at(i, h, 0)];
      /* forward: row max, then softmax-weighted sum of values */
      for (j = 0; j <= last; ++j) {
        double s = scale * dot(&q[at(i, h, 0)], &k[at(j, h, 0)]);
        if (s > m) m = s;
      }
      for (j = 0; j <= last; ++j) {
        double p = exp(scale * dot(&q[at(i, h, 0)], &k[at(j, h, 0)]) - m);
        l += p;
        for (d = 0; d < HEAD_DIM; ++d) o[d] += p * v[at(j, h, d)];
      }
      for (d = 0; d < HEAD_DIM; ++d) o[d] /= l;
      lse[h * N + i] = m + log(l); /* lse is [batch, heads, tokens] */
      /* backward: dS = P * (dP - rowsum(dout * out)) */
      D = dot(&dout[at(i, h, 0)], o);
      for (j = 0; j <= last; ++j) {
        double p = exp(scale * dot(&q[at(i, h, 0)], &k[at(j, h, 0)]) - lse[h * N + i]);
        double ds = p * (dot(&dout[at(i, h, 0)], &v[at(j, h, 0)]) - D);
        for (d = 0; d < HEAD_DIM; ++d) {
          dq[at(i, h, d)] += scale * ds * k[at(j, h, d)];
          dk[at(j, h, d)] += scale * ds * q[at(i, h, d)];
          dv[at(j, h, d)] += p * dout[at(i, h, d)];
        }
      }
    }
}

/* max |x| over a global tensor, and max |local - reference slice|. */
static double max_abs(const double *x, size_t n) {
  double m = 0.0;
  size_t i;
  for (i = 0; i < n; ++i)
    if (fabs(x[i]) > m) m = fabs(x[i]);
  return m;
}

static double max_err(const float *local, const double *ref, size_t n) {
  double m = 0.0;
  size_t i;
  for (i = 0; i < n; ++i) {
    double e = fabs((double)local[i] - ref[i]);
    if (!(e <= m)) m = (e == e) ? e : INFINITY; /* NaN counts as infinite */
  }
  return m;
}

int main(int argc, char **argv) {
  int rank, size, ok, all_ok;
  int64_t N = 512, n_local, first, r;
  int causal = 0;
  size_t global_elems, local_elems;
  double *q, *k, *v, *dout, *out_ref, *lse_ref, *dq_ref, *dk_ref, *dv_ref;
  float *lq, *lk, *lv, *ldout, *lout, *llse, *ldq, *ldk, *ldv;
  double t0, t_fwd, t_bwd, err_out, err_lse, err_dq, err_dk, err_dv;
  double tol_out, tol_dq, tol_dk, tol_dv;
  const double tol_lse = 1e-4;
  burst_context *ctx = NULL;
  burst_plan *plan = NULL;
  burst_attention_config cfg;
  burst_stats fwd_stats, bwd_stats;
  char report[1024], *all_reports = NULL;
  int64_t i, h;

  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);

  if (argc > 1) N = strtoll(argv[1], NULL, 10);
  if (argc > 2) causal = strcmp(argv[2], "causal") == 0 || strcmp(argv[2], "1") == 0;
  if (N < 1) {
    if (rank == 0) fprintf(stderr, "usage: %s [N >= 1] [causal]\n", argv[0]);
    MPI_Finalize();
    return 2;
  }

  /* 1. Split the N tokens into contiguous shards: rank r gets n_r tokens
   *    starting at `first`. Shards may differ in size (or be empty). */
  n_local = N / size + (rank < N % size ? 1 : 0);
  first = 0;
  for (r = 0; r < rank; ++r) first += N / size + (r < N % size ? 1 : 0);

  /* 2. Build the global inputs (the same on every rank) and this rank's
   *    slice of them. A BSHD slice with batch 1 is a contiguous range. */
  global_elems = (size_t)(N * HEADS * HEAD_DIM);
  local_elems = (size_t)(n_local * HEADS * HEAD_DIM);
  q = xcalloc(global_elems, sizeof(double));
  k = xcalloc(global_elems, sizeof(double));
  v = xcalloc(global_elems, sizeof(double));
  dout = xcalloc(global_elems, sizeof(double));
  for (i = 0; i < (int64_t)global_elems; ++i) {
    q[i] = input_value(1, (uint64_t)i);
    k[i] = input_value(2, (uint64_t)i);
    v[i] = input_value(3, (uint64_t)i);
    dout[i] = input_value(4, (uint64_t)i);
  }
  lq = xcalloc(local_elems, sizeof(float));
  lk = xcalloc(local_elems, sizeof(float));
  lv = xcalloc(local_elems, sizeof(float));
  ldout = xcalloc(local_elems, sizeof(float));
  lout = xcalloc(local_elems, sizeof(float));
  ldq = xcalloc(local_elems, sizeof(float));
  ldk = xcalloc(local_elems, sizeof(float));
  ldv = xcalloc(local_elems, sizeof(float));
  llse = xcalloc((size_t)(HEADS * n_local), sizeof(float));
  for (i = 0; i < (int64_t)local_elems; ++i) {
    size_t g = at(first, 0, 0) + (size_t)i;
    lq[i] = (float)q[g];
    lk[i] = (float)k[g];
    lv[i] = (float)v[g];
    ldout[i] = (float)dout[g];
  }

  /* 3. A context over MPI_COMM_WORLD (passed as its Fortran handle) and a
   *    plan for this attention shape. Only seq_len_local differs by rank. */
  CHECK(burst_context_create_mpi((int64_t)MPI_Comm_c2f(MPI_COMM_WORLD), &ctx));
  burst_attention_config_init(&cfg);
  cfg.layout = BURST_LAYOUT_BSHD;
  cfg.mask = causal ? BURST_MASK_CAUSAL : BURST_MASK_NONE;
  cfg.batch = 1;
  cfg.seq_len_local = n_local;
  cfg.num_heads_q = HEADS;
  cfg.num_heads_kv = HEADS;
  cfg.head_dim = HEAD_DIM; /* softmax_scale 0 means 1/sqrt(head_dim) */
  CHECK(burst_plan_create(ctx, &cfg, &plan));

  /* 4. Forward and backward (both collective: every rank calls them). */
  memset(&fwd_stats, 0, sizeof fwd_stats);
  memset(&bwd_stats, 0, sizeof bwd_stats);
  fwd_stats.struct_size = bwd_stats.struct_size = sizeof(burst_stats);

  MPI_Barrier(MPI_COMM_WORLD);
  t0 = MPI_Wtime();
  CHECK(burst_forward(plan, lq, lk, lv, lout, llse));
  t_fwd = MPI_Wtime() - t0;
  CHECK(burst_plan_stats(plan, &fwd_stats));

  MPI_Barrier(MPI_COMM_WORLD);
  t0 = MPI_Wtime();
  CHECK(burst_backward(plan, lq, lk, lv, lout, llse, ldout, ldq, ldk, ldv));
  t_bwd = MPI_Wtime() - t0;
  CHECK(burst_plan_stats(plan, &bwd_stats));

  burst_plan_destroy(plan);
  burst_context_destroy(ctx);

  /* 5. Compare with the float64 reference over the whole sequence. */
  out_ref = xcalloc(global_elems, sizeof(double));
  dq_ref = xcalloc(global_elems, sizeof(double));
  dk_ref = xcalloc(global_elems, sizeof(double));
  dv_ref = xcalloc(global_elems, sizeof(double));
  lse_ref = xcalloc((size_t)(HEADS * N), sizeof(double));
  reference_attention(N, causal, q, k, v, dout, out_ref, lse_ref, dq_ref, dk_ref,
                      dv_ref);

  tol_out = 1e-5 * max_abs(out_ref, global_elems);
  tol_dq = 1e-4 * max_abs(dq_ref, global_elems);
  tol_dk = 1e-4 * max_abs(dk_ref, global_elems);
  tol_dv = 1e-4 * max_abs(dv_ref, global_elems);
  err_out = max_err(lout, out_ref + at(first, 0, 0), local_elems);
  err_dq = max_err(ldq, dq_ref + at(first, 0, 0), local_elems);
  err_dk = max_err(ldk, dk_ref + at(first, 0, 0), local_elems);
  err_dv = max_err(ldv, dv_ref + at(first, 0, 0), local_elems);
  err_lse = 0.0;
  for (h = 0; h < HEADS; ++h) /* lse is [heads, n_local] here */
    for (i = 0; i < n_local; ++i) {
      double e = fabs((double)llse[h * n_local + i] - lse_ref[h * N + first + i]);
      if (!(e <= err_lse)) err_lse = (e == e) ? e : INFINITY;
    }
  ok = err_out <= tol_out && err_lse <= tol_lse && err_dq <= tol_dq &&
       err_dk <= tol_dk && err_dv <= tol_dv;

  /* 6. Report, one block per rank, printed in rank order by rank 0. */
  snprintf(report, sizeof report,
           "rank %d/%d: tokens [%lld, %lld) of %lld, %s mask\n"
           "  forward : %8.3f ms  sent %llu B  received %llu B\n"
           "            max|out-ref| %.2e (tol %.2e)  max|lse-ref| %.2e (tol %.0e)\n"
           "  backward: %8.3f ms  sent %llu B  received %llu B\n"
           "            max|dq-ref| %.2e (tol %.2e)  max|dk-ref| %.2e (tol %.2e)"
           "  max|dv-ref| %.2e (tol %.2e)\n"
           "  %s\n",
           rank, size, (long long)first, (long long)(first + n_local), (long long)N,
           causal ? "causal" : "no", t_fwd * 1e3,
           (unsigned long long)fwd_stats.bytes_sent,
           (unsigned long long)fwd_stats.bytes_received, err_out, tol_out, err_lse,
           tol_lse, t_bwd * 1e3, (unsigned long long)bwd_stats.bytes_sent,
           (unsigned long long)bwd_stats.bytes_received, err_dq, tol_dq, err_dk,
           tol_dk, err_dv, tol_dv, ok ? "OK: within tolerance" : "FAILED: out of tolerance");
  if (rank == 0) all_reports = xcalloc((size_t)size, sizeof report);
  MPI_Gather(report, (int)sizeof report, MPI_CHAR, all_reports, (int)sizeof report,
             MPI_CHAR, 0, MPI_COMM_WORLD);
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
  if (rank == 0) {
    for (r = 0; r < size; ++r) fputs(all_reports + r * sizeof report, stdout);
    printf("burst_demo: %s (library version %u)\n",
           all_ok ? "all ranks within tolerance" : "FAILED", (unsigned)burst_version());
    free(all_reports);
  }

  free(q); free(k); free(v); free(dout);
  free(out_ref); free(lse_ref); free(dq_ref); free(dk_ref); free(dv_ref);
  free(lq); free(lk); free(lv); free(ldout); free(lout); free(llse);
  free(ldq); free(ldk); free(ldv);
  MPI_Finalize();
  return all_ok ? 0 : 1;
}
