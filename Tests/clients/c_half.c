/*
 * c_half.c — bf16 and fp16 storage types (BURST_DTYPE_BF16 / BURST_DTYPE_F16)
 * from C under mpirun (2, 3 and 4 ranks; 1 works too).
 *
 * Every rank builds the same global inputs, rounds them to the storage type
 * (with its own bit-level conversions, storage_reference.h, written independently of the
 * library's), takes its contiguous shard of uint16_t elements and runs
 * forward and backward under every pattern, causal and not. Checks:
 *  - with compute = BURST_COMPUTE_EXACT (DEFAULT is FAST for BF16; c_variants
 *    tests FAST): every element of out, dq, dk, dv within the half contract of the header
 *    against a float64 reference of the same rounded inputs (the backward's
 *    reference gets the rounded out the library was given, gathered from
 *    every rank): |x - ref| <= tol*max|ref|*(1+u) + u*|ref| + sub, with tol
 *    1e-5 (out) / 1e-4 (gradients), u = 2^-8 (bf16) / 2^-11 (fp16), sub =
 *    2^-24 for fp16; lse within 1e-4;
 *  - bytes: the same shape in F32 (same rounded values as floats) moves
 *    exactly twice the forward bytes for BURST, RING and ALLGATHER; the F32
 *    forward bytes of BURST equal the closed form of reference.h; the
 *    backward bytes equal the formulas with the storage-typed parts at 2
 *    bytes an element (BURST, RING: no mask, every rank non-empty);
 *  - a second identical call gives the same bits.
 */
#include <mpi.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "burst_attention.h"
#include "reference.h"
#include "storage_reference.h"
#define CLIENT_NAME "c_half"
#include "mpi_client.h"

static char g_case_text[160] = ""; /* g_case points here */

static int ok(burst_status st, const char *what) {
  if (st == BURST_OK) return 1;
  fail("%s returned %s: %s", what, burst_status_string(st), burst_last_error());
  return 0;
}

static int g_dtype = BURST_DTYPE_BF16;
static uint16_t to_half(float x) { return g_dtype == BURST_DTYPE_BF16 ? to_bf16(x) : to_f16(x); }
static float from_half(uint16_t h) { return g_dtype == BURST_DTYPE_BF16 ? from_bf16(h) : from_f16(h); }
static double round_half(double x) { return (double)from_half(to_half((float)x)); }

/* ---- checks --------------------------------------------------------------- */
/* Every element of a q-like shard within the half contract. */
static void check_elements(const char *name, const ref_shape *sh, const double *global, int64_t start,
                           int64_t n, const uint16_t *local, double tol, double floor_scale) {
  const double u = g_dtype == BURST_DTYPE_BF16 ? 0x1p-8 : 0x1p-11;
  const double sub = g_dtype == BURST_DTYPE_F16 ? 0x1p-24 : 0.0;
  double scale = ref_max_abs(global, ref_tensor_elems(sh, sh->seq)), worst = 0;
  int64_t b, s, h, d;
  if (scale < floor_scale) scale = floor_scale;
  for (b = 0; b < sh->batch; ++b)
    for (s = 0; s < n; ++s)
      for (h = 0; h < sh->heads; ++h)
        for (d = 0; d < sh->head_dim; ++d) {
          double x = from_half(local[ref_index(sh->layout, n, sh->heads, sh->head_dim, b, s, h, d)]);
          double r = global[ref_index(sh->layout, sh->seq, sh->heads, sh->head_dim, b, start + s, h, d)];
          double allowed = tol * scale * (1 + u) + u * fabs(r) + sub;
          double ratio = fabs(x - r) / allowed;
          if (!(ratio <= worst)) worst = ratio == ratio ? ratio : INFINITY;
        }
  if (!(worst <= 1.0)) fail("%s: error / allowed = %g", name, worst);
}

static burst_status make_plan(burst_context *ctx, int dtype, int pattern, int mask, int64_t n_local,
                              const ref_shape *sh, burst_plan **plan) {
  burst_attention_config cfg;
  burst_attention_config_init(&cfg);
  cfg.dtype = dtype;
  cfg.pattern = pattern;
  cfg.mask = mask;
  cfg.layout = sh->layout;
  cfg.batch = sh->batch;
  cfg.seq_len_local = n_local;
  cfg.num_heads_q = cfg.num_heads_kv = sh->heads;
  cfg.head_dim = sh->head_dim;
  cfg.num_threads = 1;
  cfg.timeout_seconds = 120;
  cfg.compute = BURST_COMPUTE_EXACT;   /* the contract checked here (DEFAULT is FAST for BF16) */
  return burst_plan_create(ctx, &cfg, plan);
}

static uint64_t stat_sent(burst_plan *plan) {
  burst_stats st;
  memset(&st, 0, sizeof st);
  st.struct_size = (uint32_t)sizeof st;
  if (burst_plan_stats(plan, &st) != BURST_OK) return ~0ull;
  return st.bytes_sent;
}

static void run_case(burst_context *ctx, int dtype, int pattern, int mask, int layout) {
  static const char *pattern_names[] = {"BURST", "RING", "ALLGATHER", "ULYSSES"};
  const int P = g_size, r = g_rank;
  ref_shape sh;
  int64_t counts[64], start = 0, n, N, j;
  size_t total, local, local_lse, i;
  double *q, *k, *v, *dout, *out, *lse, *dq, *dk, *dv, *given;
  uint16_t *hq, *hk, *hv, *hdo, *hout, *hout2, *hdq, *hdk, *hdv, *all_out;
  float *fq, *fk, *fv, *fout, *lse_local, *lse2;
  burst_plan *plan = NULL, *plan32 = NULL;
  double lse_worst = 0;

  g_dtype = dtype;
  snprintf(g_case_text, sizeof g_case_text, "%s %s mask=%d layout=%d P=%d", dtype == BURST_DTYPE_BF16 ? "bf16" : "f16",
           pattern_names[pattern], mask, layout, P);
  sh.layout = layout; sh.mask = mask; sh.batch = 1; sh.heads = 12; sh.head_dim = 16;
  for (j = 0; j < P; ++j) counts[j] = 9 + j;   /* uneven, none empty */
  N = 0;
  for (j = 0; j < P; ++j) { if (j < r) start += counts[j]; N += counts[j]; }
  n = counts[r];
  sh.seq = N;
  sh.scale = 1.0 / sqrt((double)sh.head_dim);
  total = ref_tensor_elems(&sh, N);
  local = ref_tensor_elems(&sh, n);
  local_lse = ref_lse_elems(&sh, n);

  q = xcalloc(total, 8); k = xcalloc(total, 8); v = xcalloc(total, 8); dout = xcalloc(total, 8);
  out = xcalloc(total, 8); lse = xcalloc((size_t)(sh.heads * N), 8); given = xcalloc(total, 8);
  dq = xcalloc(total, 8); dk = xcalloc(total, 8); dv = xcalloc(total, 8);
  ref_fill(&sh, 7, REF_TENSOR_Q, 1.0, q); ref_fill(&sh, 7, REF_TENSOR_K, 1.0, k);
  ref_fill(&sh, 7, REF_TENSOR_V, 1.0, v); ref_fill(&sh, 7, REF_TENSOR_DOUT, 1.0, dout);
  for (i = 0; i < total; ++i) {
    q[i] = round_half(q[i]); k[i] = round_half(k[i]); v[i] = round_half(v[i]); dout[i] = round_half(dout[i]);
  }
  ref_forward(&sh, q, k, v, out, lse);

  fq = xcalloc(local, 4); fk = xcalloc(local, 4); fv = xcalloc(local, 4); fout = xcalloc(local, 4);
  hq = xcalloc(local, 2); hk = xcalloc(local, 2); hv = xcalloc(local, 2); hdo = xcalloc(local, 2);
  hout = xcalloc(local, 2); hout2 = xcalloc(local, 2); hdq = xcalloc(local, 2); hdk = xcalloc(local, 2);
  hdv = xcalloc(local, 2); all_out = xcalloc(total, 2);
  lse_local = xcalloc(local_lse, 4); lse2 = xcalloc(local_lse, 4);
  ref_shard(&sh, q, start, n, fq); ref_shard(&sh, k, start, n, fk); ref_shard(&sh, v, start, n, fv);
  for (i = 0; i < local; ++i) { hq[i] = to_half(fq[i]); hk[i] = to_half(fk[i]); hv[i] = to_half(fv[i]); }
  ref_shard(&sh, dout, start, n, fout);
  for (i = 0; i < local; ++i) hdo[i] = to_half(fout[i]);

  if (!ok(make_plan(ctx, dtype, pattern, mask, n, &sh, &plan), "burst_plan_create")) goto done;
  if (!ok(burst_forward(plan, hq, hk, hv, hout, lse_local), "burst_forward")) goto done;
  check_elements("out", &sh, out, start, n, hout, 1e-5, 0);
  {
    int64_t b, h, s;
    for (b = 0; b < sh.batch; ++b)
      for (h = 0; h < sh.heads; ++h)
        for (s = 0; s < n; ++s) {
          double e = fabs((double)lse_local[ref_lse_index(n, sh.heads, b, h, s)] -
                          lse[ref_lse_index(N, sh.heads, b, h, start + s)]);
          if (!(e <= lse_worst)) lse_worst = e == e ? e : INFINITY;
        }
    if (!(lse_worst <= 1e-4)) fail("lse error %g", lse_worst);
  }
  {
    /* Bytes: the same values in F32 move twice the forward bytes (not ULYSSES: its lse stays fp32). */
    uint64_t half_fwd = stat_sent(plan), f32_fwd;
    if (!ok(make_plan(ctx, BURST_DTYPE_F32, pattern, mask, n, &sh, &plan32), "burst_plan_create F32")) goto done;
    if (!ok(burst_forward(plan32, fq, fk, fv, fout, lse2), "burst_forward F32")) goto done;
    f32_fwd = stat_sent(plan32);
    if (pattern != BURST_PATTERN_ULYSSES && 2 * half_fwd != f32_fwd)
      fail("forward bytes %llu, F32 %llu: not half", (unsigned long long)half_fwd, (unsigned long long)f32_fwd);
    if (pattern == BURST_PATTERN_BURST && mask == BURST_MASK_NONE &&
        f32_fwd != ref_burst_fwd_sent(counts, P, r, sh.batch * sh.heads, sh.head_dim))
      fail("F32 forward bytes %llu, formula %llu", (unsigned long long)f32_fwd,
           (unsigned long long)ref_burst_fwd_sent(counts, P, r, sh.batch * sh.heads, sh.head_dim));
    if (pattern == BURST_PATTERN_ULYSSES) {
      /* Sent: (P-1) q|k|v slices of n rows at 2 bytes + O (2 bytes) and lse (4) of the other ranks' rows. */
      uint64_t zs = (uint64_t)(sh.batch * sh.heads / P), d = (uint64_t)sh.head_dim;
      uint64_t want = (uint64_t)(P - 1) * 3 * zs * d * 2 * (uint64_t)n + zs * (2 * d + 4) * (uint64_t)(N - n);
      if (half_fwd != want) fail("ULYSSES forward bytes %llu, formula %llu", (unsigned long long)half_fwd,
                                 (unsigned long long)want);
    }
  }
  /* A second call: the same bits. */
  if (!ok(burst_forward(plan, hq, hk, hv, hout2, lse2), "burst_forward again")) goto done;
  if (local && memcmp(hout, hout2, local * 2) != 0) fail("second forward differs");

  /* The backward's reference gets the rounded out the library was given. */
  {
    int *recv_counts = xcalloc((size_t)P, sizeof(int)), *displs = xcalloc((size_t)P, sizeof(int));
    int64_t off = 0;
    ref_shape one = sh;
    for (j = 0; j < P; ++j) {
      one.seq = counts[j];
      recv_counts[j] = (int)ref_tensor_elems(&one, counts[j]);
      displs[j] = (int)off;
      off += recv_counts[j];
    }
    /* batch 1, BSHD: a shard is a contiguous run of the global tensor;
     * BHSD: gather then re-index per head. */
    MPI_Allgatherv(hout, (int)local, MPI_UINT16_T, all_out, recv_counts, displs, MPI_UINT16_T, MPI_COMM_WORLD);
    for (j = 0, off = 0; j < P; ++j) {
      int64_t s, h, d, st = 0, t;
      for (t = 0; t < j; ++t) st += counts[t];
      for (s = 0; s < counts[j]; ++s)
        for (h = 0; h < sh.heads; ++h)
          for (d = 0; d < sh.head_dim; ++d)
            given[ref_index(layout, N, sh.heads, sh.head_dim, 0, st + s, h, d)] =
                from_half(all_out[displs[j] + ref_index(layout, counts[j], sh.heads, sh.head_dim, 0, s, h, d)]);
    }
    free(recv_counts); free(displs);
  }
  ref_backward(&sh, q, k, v, given, lse, dout, dq, dk, dv);
  if (!ok(burst_backward(plan, hq, hk, hv, hout, lse_local, hdo, hdq, hdk, hdv), "burst_backward")) goto done;
  check_elements("dq", &sh, dq, start, n, hdq, 1e-4, 1e-3);
  check_elements("dk", &sh, dk, start, n, hdk, 1e-4, 1e-3);
  check_elements("dv", &sh, dv, start, n, hdv, 1e-4, 1e-3);
  if (mask == BURST_MASK_NONE && (pattern == BURST_PATTERN_BURST || pattern == BURST_PATTERN_RING) && P > 1) {
    /* One ring, no mask, no empty shard. BURST: the bundle Q|dO (2 bytes) |D|lse (4) of every block
     * but the one held last, and the partial dQ (4) of every block, the last one home.
     * RING: K|V (2 bytes) likewise, and the partial dK|dV (4) at every step. */
    uint64_t Z = (uint64_t)(sh.batch * sh.heads), d = (uint64_t)sh.head_dim, want = 0, nn;
    int t;
    for (t = 0; t <= P - 2; ++t) {
      nn = (uint64_t)counts[((r - t) % P + P) % P];
      want += pattern == BURST_PATTERN_BURST ? Z * nn * (2 * 2 * d + 4 * 2) : 2 * 2 * Z * d * nn;
    }
    for (t = 0; t <= P - 1; ++t) {   /* the partial travels every hop; the block of r+1 comes home last */
      nn = (uint64_t)counts[((r - t) % P + P) % P];
      want += pattern == BURST_PATTERN_BURST ? 0 : 4 * 2 * Z * d * nn;
    }
    if (pattern == BURST_PATTERN_BURST) {
      for (t = 0; t <= P - 2; ++t) want += 4 * Z * d * (uint64_t)counts[((r - t) % P + P) % P];
      want += 4 * Z * d * (uint64_t)counts[(r + 1) % P];
    }
    if (stat_sent(plan) != want)
      fail("backward bytes %llu, formula %llu", (unsigned long long)stat_sent(plan), (unsigned long long)want);
  }
done:
  burst_plan_destroy(plan);
  burst_plan_destroy(plan32);
  free(q); free(k); free(v); free(dout); free(out); free(lse); free(given); free(dq); free(dk); free(dv);
  free(fq); free(fk); free(fv); free(fout); free(hq); free(hk); free(hv); free(hdo); free(hout); free(hout2);
  free(hdq); free(hdk); free(hdv); free(all_out); free(lse_local); free(lse2);
}

int main(int argc, char **argv) {
  burst_context *ctx = NULL;
  int dtype, pattern, mask, layout, total_failures = 0;
  MPI_Init(&argc, &argv);
  g_case = g_case_text;
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  /* The test's own conversions against known values. */
  if (to_f16(65504.0f) != 0x7BFF || to_f16(65520.0f) != 0x7C00 || to_f16(0x1p-24f) != 1 || to_f16(0x1p-25f) != 0 ||
      to_f16(1.0f) != 0x3C00 || from_f16(0x3C01) != 1.0f + 0x1p-10f || to_bf16(1.0f + 0x1p-8f) != 0x3F80)
    fail("the test's own conversions are wrong");
  if (!ok(burst_context_create_mpi((int64_t)MPI_Comm_c2f(MPI_COMM_WORLD), &ctx), "burst_context_create_mpi")) {
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  /* An unknown dtype is INVALID_ARGUMENT naming the known values. */
  {
    burst_attention_config cfg;
    burst_plan *plan = NULL;
    burst_status st;
    burst_attention_config_init(&cfg);
    cfg.dtype = 3; cfg.batch = 1; cfg.seq_len_local = 4; cfg.num_heads_q = cfg.num_heads_kv = 1; cfg.head_dim = 8;
    st = burst_plan_create(ctx, &cfg, &plan);
    if (st != BURST_ERROR_INVALID_ARGUMENT || !strstr(burst_last_error(), "BURST_DTYPE_BF16 = 1"))
      fail("dtype 3: %s (%s)", burst_status_string(st), burst_last_error());
    burst_plan_destroy(plan);
  }
  for (dtype = BURST_DTYPE_BF16; dtype <= BURST_DTYPE_F16; ++dtype)
    for (pattern = BURST_PATTERN_BURST; pattern <= BURST_PATTERN_ULYSSES; ++pattern)
      for (mask = 0; mask <= 1; ++mask)
        for (layout = 0; layout <= 1; ++layout) {
          if (pattern == BURST_PATTERN_ULYSSES && 12 % g_size != 0) continue;
          run_case(ctx, dtype, pattern, mask, layout);
        }
  burst_context_destroy(ctx);
  MPI_Allreduce(&g_failures, &total_failures, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (g_rank == 0) printf("c_half: %d ranks, %s\n", g_size, total_failures ? "FAILED" : "all passed");
  MPI_Finalize();
  return total_failures ? 1 : 0;
}
