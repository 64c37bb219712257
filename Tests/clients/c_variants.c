/*
 * c_variants.c — every attention variant of version 0.2 from C under mpirun
 * (2, 3 and 4 ranks): ZIGZAG / STRIPED / CONTIGUOUS distributions, causal,
 * sliding windows, GQA and MQA, packed sequences (cu_seqlens), BSHD and BHSD.
 *
 * Every rank builds the same global inputs, takes its shard with burst_shard,
 * runs forward and backward on MPI_COMM_WORLD and compares its rows with a
 * float64 reference of the whole sequence (sharded by burst_shard as well;
 * the reference's mask is written here from the header's rule). The outputs
 * are also assembled with burst_unshard + MPI_Allreduce and compared whole.
 * burst_stats: bytes sent/received exactly against the schedule's rules with
 * a brute-force needs matrix, tiles computed + skipped against the dense
 * count, and a 0.1-sized (72-byte) struct accepted.
 *
 * BURST_COMPUTE_FAST (0.7): causal zigzag, GQA / MQA with windows, packing,
 * BURST / RING / ALLGATHER, F32 storage (compute = FAST: the library rounds
 * the inputs) and BF16 storage (FAST, or DEFAULT which is FAST for BF16 —
 * once through a 0.6-sized config, as a client built against 0.6 passes it)
 * against the float64 reference of the bf16-rounded inputs, within the FAST
 * bounds of variant_reference.h (the backward's reference takes D from the
 * out the library returned, assembled from every rank).
 *
 * Score modifiers (0.8): softcap and attention sinks, each on and off, under
 * BURST, RING, ALLGATHER and ULYSSES (where the kv heads divide over the
 * ranks) with the variants above, in F32, BF16 and F16 storage, EXACT and
 * bf16 products: out, lse, dq, dk, dv per element against the float64
 * reference of variant_reference.h (EXACT: the storage contract; FAST: its
 * bounds), and burst_plan_sinks_gradient: each rank's partial against the
 * reference's sum over that rank's rows, and the partials summed over the
 * ranks (MPI_Allreduce) against the reference's total, within the gradient
 * tolerance. One plan changes its sinks with burst_plan_set_sinks between
 * calls (other values, then NULL: each call must use the new ones; with none
 * the gradient call is INVALID_ARGUMENT); one config has the 0.7 size
 * (struct_size = offsetof(sinks)): its softcap applies, its sinks pointer is
 * not read.
 */
#include <burst_attention.h>
#include <mpi.h>

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage_reference.h"
#include "variant_reference.h"
#define CLIENT_NAME "c_variants"
#include "mpi_client.h"

/* burst_shard of a user-layout tensor with H heads and `elem` bytes per value. */
static int shard(const vcase *c, int64_t H, size_t elem, const void *full, void *local, int rank, int unshard) {
  int64_t outer = c->layout == BURST_LAYOUT_BHSD ? c->batch * H : c->batch;
  int64_t row = (int64_t)elem * c->d * (c->layout == BURST_LAYOUT_BHSD ? 1 : H);
  burst_status st = unshard
      ? burst_unshard(c->dist, c->N, c->cu, c->nseq, g_size, rank, outer, row, local, (void *)full)
      : burst_shard(c->dist, c->N, c->cu, c->nseq, g_size, rank, outer, row, full, local);
  if (st != BURST_OK) { fail("burst_%sshard: %s: %s", unshard ? "un" : "", burst_status_string(st), burst_last_error()); return 0; }
  return 1;
}


static uint64_t ceil_div(int64_t a, int64_t b) { return (uint64_t)((a + b - 1) / b); }

static void run_case(burst_context *ctx, const vcase *c) {
  const int64_t N = c->N, D = c->d;
  const size_t nq = (size_t)(c->batch * c->hq * N * D), nk = (size_t)(c->batch * c->hkv * N * D);
  const size_t nl = (size_t)(c->batch * c->hq * N);
  int64_t cnt[16], *pos[16], n;
  int r;
  size_t lq, lk, ll, i;
  double *cq = xcalloc(nq, 8), *ck = xcalloc(nk, 8), *cv = xcalloc(nk, 8), *cdo = xcalloc(nq, 8);
  double *cout = xcalloc(nq, 8), *clse = xcalloc(nl, 8), *cdq = xcalloc(nq, 8), *cdk = xcalloc(nk, 8), *cdv = xcalloc(nk, 8);
  float *uq = xcalloc(nq, 4), *uk = xcalloc(nk, 4), *uv = xcalloc(nk, 4), *udo = xcalloc(nq, 4);
  double *rout = xcalloc(nq, 8), *rdq = xcalloc(nq, 8), *rdk = xcalloc(nk, 8), *rdv = xcalloc(nk, 8);
  float *q, *k, *v, *dout, *out, *lse, *dq, *dk, *dv, *assembled;
  double *wout, *wlse, *wdq, *wdk, *wdv;
  burst_attention_config cfg;
  burst_plan *plan = NULL;
  burst_stats sf, sb, old;
  burst_status st;

  g_case = c->name;
  for (r = 0; r < g_size; ++r) {
    if (burst_shard_positions(c->dist, N, c->cu, c->nseq, g_size, r, NULL, 0, &cnt[r]) != BURST_OK) {
      fail("burst_shard_positions count: %s", burst_last_error());
      return;
    }
    pos[r] = xcalloc((size_t)cnt[r], 8);
    if (burst_shard_positions(c->dist, N, c->cu, c->nseq, g_size, r, pos[r], cnt[r], &n) != BURST_OK || n != cnt[r])
      fail("burst_shard_positions: %s", burst_last_error());
  }
  n = cnt[g_rank];
  for (i = 0; i < nq; ++i) { cq[i] = vref_value(1, i); cdo[i] = vref_value(4, i); }
  for (i = 0; i < nk; ++i) { ck[i] = vref_value(2, i); cv[i] = vref_value(3, i); }
  vref_reference(c, cq, ck, cv, cdo, cout, clse, cdq, cdk, cdv);
  vref_to_user(c, c->hq, cq, uq, NULL); vref_to_user(c, c->hkv, ck, uk, NULL);
  vref_to_user(c, c->hkv, cv, uv, NULL); vref_to_user(c, c->hq, cdo, udo, NULL);
  vref_to_user(c, c->hq, cout, NULL, rout); vref_to_user(c, c->hq, cdq, NULL, rdq);
  vref_to_user(c, c->hkv, cdk, NULL, rdk); vref_to_user(c, c->hkv, cdv, NULL, rdv);

  lq = (size_t)(c->batch * c->hq * n * D); lk = (size_t)(c->batch * c->hkv * n * D); ll = (size_t)(c->batch * c->hq * n);
  q = xcalloc(lq, 4); dout = xcalloc(lq, 4); out = xcalloc(lq, 4); dq = xcalloc(lq, 4);
  k = xcalloc(lk, 4); v = xcalloc(lk, 4); dk = xcalloc(lk, 4); dv = xcalloc(lk, 4); lse = xcalloc(ll, 4);
  wout = xcalloc(lq, 8); wdq = xcalloc(lq, 8); wdk = xcalloc(lk, 8); wdv = xcalloc(lk, 8); wlse = xcalloc(ll, 8);
  shard(c, c->hq, 4, uq, q, g_rank, 0); shard(c, c->hkv, 4, uk, k, g_rank, 0);
  shard(c, c->hkv, 4, uv, v, g_rank, 0); shard(c, c->hq, 4, udo, dout, g_rank, 0);
  shard(c, c->hq, 8, rout, wout, g_rank, 0); shard(c, c->hq, 8, rdq, wdq, g_rank, 0);
  shard(c, c->hkv, 8, rdk, wdk, g_rank, 0); shard(c, c->hkv, 8, rdv, wdv, g_rank, 0);
  if (burst_shard(c->dist, N, c->cu, c->nseq, g_size, g_rank, c->batch * c->hq, 8, clse, wlse) != BURST_OK)
    fail("burst_shard lse: %s", burst_last_error());

  burst_attention_config_init(&cfg);
  cfg.layout = c->layout; cfg.mask = c->causal ? BURST_MASK_CAUSAL : BURST_MASK_NONE;
  cfg.distribution = c->dist; cfg.batch = c->batch; cfg.seq_len_local = n;
  cfg.num_heads_q = c->hq; cfg.num_heads_kv = c->hkv; cfg.head_dim = D;
  cfg.window_left = c->wl; cfg.window_right = c->wr; cfg.cu_seqlens = c->cu; cfg.num_sequences = c->nseq;
  cfg.num_threads = 1; cfg.timeout_seconds = 120;
  st = burst_plan_create(ctx, &cfg, &plan);
  if (st != BURST_OK) { fail("plan_create: %s: %s", burst_status_string(st), burst_last_error()); goto done; }
  memset(&sf, 0, sizeof sf); memset(&sb, 0, sizeof sb); memset(&old, 0, sizeof old);
  sf.struct_size = sb.struct_size = sizeof(burst_stats);
  st = burst_forward(plan, q, k, v, out, lse);
  if (st != BURST_OK) { fail("forward: %s", burst_last_error()); goto done; }
  burst_plan_stats(plan, &sf);
  st = burst_backward(plan, q, k, v, out, lse, dout, dq, dk, dv);
  if (st != BURST_OK) { fail("backward: %s", burst_last_error()); goto done; }
  burst_plan_stats(plan, &sb);
  old.struct_size = (uint32_t)(offsetof(burst_stats, total_seconds) + sizeof(double));
  old.tiles_computed = 12345;
  if (burst_plan_stats(plan, &old) != BURST_OK || old.bytes_sent != sb.bytes_sent || old.tiles_computed != 12345)
    fail("a 0.1-sized burst_stats (%u bytes) must be accepted and only its fields written", old.struct_size);

  {
    double mo = max_abs(cout, nq), mq = max_abs(cdq, nq), mk = max_abs(cdk, nk), mv = max_abs(cdv, nk);
    double eo = max_err(out, wout, lq), el = max_err(lse, wlse, ll);
    double eq = max_err(dq, wdq, lq), ek = max_err(dk, wdk, lk), ev = max_err(dv, wdv, lk);
    if (!(eo <= 1e-5 * mo)) fail("out error %.3e > 1e-5 * %.3e", eo, mo);
    if (!(el <= 1e-4)) fail("lse error %.3e", el);
    if (!(eq <= 1e-4 * mq)) fail("dq error %.3e > 1e-4 * %.3e", eq, mq);
    if (!(ek <= 1e-4 * mk)) fail("dk error %.3e > 1e-4 * %.3e", ek, mk);
    if (!(ev <= 1e-4 * mv)) fail("dv error %.3e > 1e-4 * %.3e", ev, mv);
  }
  /* The whole output, assembled from every rank with burst_unshard. */
  assembled = xcalloc(nq, 4);
  if (shard(c, c->hq, 4, assembled, out, g_rank, 1)) {
    float *sum = xcalloc(nq, 4);
    double *rf = xcalloc(nq, 8);
    MPI_Allreduce(assembled, sum, (int)nq, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    for (i = 0; i < nq; ++i) rf[i] = rout[i];
    if (!(max_err(sum, rf, nq) <= 1e-5 * max_abs(rout, nq))) fail("assembled out differs from the reference");
    free(sum); free(rf);
  }
  free(assembled);
  {
    uint64_t fs, fr, bs, br, dense_f = 0, dense_b = 0;
    vref_expected_bytes(c, pos, cnt, g_size, g_rank, &fs, &fr, &bs, &br);
    if (sf.bytes_sent != fs || sf.bytes_received != fr)
      fail("forward bytes sent %llu received %llu, expected %llu %llu", (unsigned long long)sf.bytes_sent,
           (unsigned long long)sf.bytes_received, (unsigned long long)fs, (unsigned long long)fr);
    if (sb.bytes_sent != bs || sb.bytes_received != br)
      fail("backward bytes sent %llu received %llu, expected %llu %llu", (unsigned long long)sb.bytes_sent,
           (unsigned long long)sb.bytes_received, (unsigned long long)bs, (unsigned long long)br);
    for (r = 0; r < g_size; ++r) {
      if (n > 0 && cnt[r] > 0) {
        dense_f += (uint64_t)(c->batch * c->hq) * ceil_div(n, 256) * ceil_div(cnt[r], 128);
        dense_b += (uint64_t)(c->batch * c->hq) * ceil_div(cnt[r], 256) * ceil_div(n, 128);
      }
    }
    if (sf.tiles_computed + sf.tiles_skipped != dense_f || sb.tiles_computed + sb.tiles_skipped != dense_b)
      fail("tiles: forward %llu + %llu (dense %llu), backward %llu + %llu (dense %llu)",
           (unsigned long long)sf.tiles_computed, (unsigned long long)sf.tiles_skipped, (unsigned long long)dense_f,
           (unsigned long long)sb.tiles_computed, (unsigned long long)sb.tiles_skipped, (unsigned long long)dense_b);
    if (n > 0 && sf.tiles_computed == 0) fail("a rank with tokens computed no forward tile");
    if (sf.steps_computed + sf.steps_skipped != (uint64_t)g_size) fail("forward steps do not add up to P");
  }
done:
  burst_plan_destroy(plan);
  for (r = 0; r < g_size; ++r) free(pos[r]);
  free(cq); free(ck); free(cv); free(cdo); free(cout); free(clse); free(cdq); free(cdk); free(cdv);
  free(uq); free(uk); free(uv); free(udo); free(rout); free(rdq); free(rdk); free(rdv);
  free(q); free(k); free(v); free(dout); free(out); free(lse); free(dq); free(dk); free(dv);
  free(wout); free(wlse); free(wdq); free(wdk); free(wdv);
}

/* ---- BURST_COMPUTE_FAST ---------------------------------------------------- */
typedef struct fcase {
  vcase c;
  int dtype, compute, pattern;
  int old_size; /* pass struct_size = the 0.6 size (the config ends at timeout_seconds) */
} fcase;

static double bf16_round(double x) { return (double)from_bf16(to_bf16((float)x)); }

/* Element i of a storage-typed buffer as a double. */
static double value_at(int dtype, const void *buf, size_t i) {
  return dtype == BURST_DTYPE_BF16 ? (double)from_bf16(((const uint16_t *)buf)[i]) : (double)((const float *)buf)[i];
}

/* max |got - want| over a local shard (want: doubles in the same layout). */
static double fast_err(int dtype, const void *got, const double *want, size_t n) {
  double worst = 0;
  size_t i;
  for (i = 0; i < n; ++i) {
    double g = value_at(dtype, got, i), e = g == want[i] ? 0 : fabs(g - want[i]);
    if (e != e) e = INFINITY;
    if (e > worst) worst = e;
  }
  return worst;
}

static void run_fast_case(burst_context *ctx, const fcase *f) {
  const vcase *c = &f->c;
  const int64_t N = c->N, D = c->d;
  const size_t e = f->dtype == BURST_DTYPE_BF16 ? 2 : 4;
  const size_t nq = (size_t)(c->batch * c->hq * N * D), nk = (size_t)(c->batch * c->hkv * N * D);
  const size_t nl = (size_t)(c->batch * c->hq * N);
  double *cq = xcalloc(nq, 8), *ck = xcalloc(nk, 8), *cv = xcalloc(nk, 8), *cdo = xcalloc(nq, 8);
  double *cout = xcalloc(nq, 8), *clse = xcalloc(nl, 8), *cdq = xcalloc(nq, 8), *cdk = xcalloc(nk, 8), *cdv = xcalloc(nk, 8);
  double *given = xcalloc(nq, 8), *rout = xcalloc(nq, 8), *rdq = xcalloc(nq, 8), *rdk = xcalloc(nk, 8), *rdv = xcalloc(nk, 8);
  float *fq = xcalloc(nq, 4), *fk = xcalloc(nk, 4), *fv = xcalloc(nk, 4), *fdo = xcalloc(nq, 4);
  void *uq = xcalloc(nq, e), *uk = xcalloc(nk, e), *uv = xcalloc(nk, e), *udo = xcalloc(nq, e);
  void *q = NULL, *k = NULL, *v = NULL, *dout = NULL, *out = NULL, *dq = NULL, *dk = NULL, *dv = NULL;
  double *wout = NULL, *wdq = NULL, *wdk = NULL, *wdv = NULL, *wlse = NULL, *local_out = NULL, *full_out = NULL, *sum_out = NULL;
  float *lse = NULL;
  int64_t n = 0;
  size_t lq, lk, ll, i;
  burst_attention_config cfg;
  burst_plan *plan = NULL;
  burst_status st;

  g_case = c->name;
  if (burst_shard_positions(c->dist, N, c->cu, c->nseq, g_size, g_rank, NULL, 0, &n) != BURST_OK) {
    fail("burst_shard_positions: %s", burst_last_error());
    goto done;
  }
  /* The caller's values (the library rounds F32 ones to bf16 itself; BF16
   * ones are rounded here) and the reference's inputs: all rounded to bf16. */
  for (i = 0; i < nq; ++i) { cq[i] = vref_value(1, i); cdo[i] = vref_value(4, i); }
  for (i = 0; i < nk; ++i) { ck[i] = vref_value(2, i); cv[i] = vref_value(3, i); }
  vref_to_user(c, c->hq, cq, fq, NULL); vref_to_user(c, c->hkv, ck, fk, NULL);
  vref_to_user(c, c->hkv, cv, fv, NULL); vref_to_user(c, c->hq, cdo, fdo, NULL);
  for (i = 0; i < nq; ++i) { cq[i] = bf16_round(cq[i]); cdo[i] = bf16_round(cdo[i]); }
  for (i = 0; i < nk; ++i) { ck[i] = bf16_round(ck[i]); cv[i] = bf16_round(cv[i]); }
  if (f->dtype == BURST_DTYPE_BF16) {
    for (i = 0; i < nq; ++i) { ((uint16_t *)uq)[i] = to_bf16(fq[i]); ((uint16_t *)udo)[i] = to_bf16(fdo[i]); }
    for (i = 0; i < nk; ++i) { ((uint16_t *)uk)[i] = to_bf16(fk[i]); ((uint16_t *)uv)[i] = to_bf16(fv[i]); }
  } else {
    memcpy(uq, fq, nq * 4); memcpy(udo, fdo, nq * 4); memcpy(uk, fk, nk * 4); memcpy(uv, fv, nk * 4);
  }

  lq = (size_t)(c->batch * c->hq * n * D); lk = (size_t)(c->batch * c->hkv * n * D); ll = (size_t)(c->batch * c->hq * n);
  q = xcalloc(lq, e); dout = xcalloc(lq, e); out = xcalloc(lq, e); dq = xcalloc(lq, e);
  k = xcalloc(lk, e); v = xcalloc(lk, e); dk = xcalloc(lk, e); dv = xcalloc(lk, e); lse = xcalloc(ll, 4);
  wout = xcalloc(lq, 8); wdq = xcalloc(lq, 8); wdk = xcalloc(lk, 8); wdv = xcalloc(lk, 8); wlse = xcalloc(ll, 8);
  local_out = xcalloc(lq, 8); full_out = xcalloc(nq, 8); sum_out = xcalloc(nq, 8);
  shard(c, c->hq, e, uq, q, g_rank, 0); shard(c, c->hkv, e, uk, k, g_rank, 0);
  shard(c, c->hkv, e, uv, v, g_rank, 0); shard(c, c->hq, e, udo, dout, g_rank, 0);

  burst_attention_config_init(&cfg);
  cfg.layout = c->layout; cfg.mask = c->causal ? BURST_MASK_CAUSAL : BURST_MASK_NONE;
  cfg.distribution = c->dist; cfg.batch = c->batch; cfg.seq_len_local = n;
  cfg.num_heads_q = c->hq; cfg.num_heads_kv = c->hkv; cfg.head_dim = D;
  cfg.window_left = c->wl; cfg.window_right = c->wr; cfg.cu_seqlens = c->cu; cfg.num_sequences = c->nseq;
  cfg.num_threads = 1; cfg.timeout_seconds = 120;
  cfg.dtype = f->dtype; cfg.compute = f->compute; cfg.pattern = f->pattern;
  if (f->old_size) {
    cfg.struct_size = (uint32_t)offsetof(burst_attention_config, compute);
    cfg.compute = 3;   /* past a 0.6 struct: never read */
  }
  st = burst_plan_create(ctx, &cfg, &plan);
  if (st != BURST_OK) { fail("plan_create: %s: %s", burst_status_string(st), burst_last_error()); goto done; }
  st = burst_forward(plan, q, k, v, out, lse);
  if (st != BURST_OK) { fail("forward: %s", burst_last_error()); goto done; }
  st = burst_backward(plan, q, k, v, out, lse, dout, dq, dk, dv);
  if (st != BURST_OK) { fail("backward: %s", burst_last_error()); goto done; }

  /* The out the backward was given, whole (every rank's shard through
   * burst_unshard, summed over the ranks: each element comes from one). */
  for (i = 0; i < lq; ++i) local_out[i] = value_at(f->dtype, out, i);
  shard(c, c->hq, 8, full_out, local_out, g_rank, 1);
  MPI_Allreduce(full_out, sum_out, (int)nq, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  {
    /* sum_out is in the user layout: back to canonical for the reference. */
    int64_t b, h, t, x;
    for (b = 0; b < c->batch; ++b)
      for (h = 0; h < c->hq; ++h)
        for (t = 0; t < N; ++t)
          for (x = 0; x < D; ++x)
            given[CI(c, h, b, t, x, c->hq)] = sum_out[c->layout == BURST_LAYOUT_BHSD
                                                          ? (((size_t)b * c->hq + h) * N + t) * D + x
                                                          : (((size_t)b * N + t) * c->hq + h) * D + x];
  }
  vref_reference_given_out(c, cq, ck, cv, cdo, given, cout, clse, cdq, cdk, cdv);
  vref_to_user(c, c->hq, cout, NULL, rout); vref_to_user(c, c->hq, cdq, NULL, rdq);
  vref_to_user(c, c->hkv, cdk, NULL, rdk); vref_to_user(c, c->hkv, cdv, NULL, rdv);
  shard(c, c->hq, 8, rout, wout, g_rank, 0); shard(c, c->hq, 8, rdq, wdq, g_rank, 0);
  shard(c, c->hkv, 8, rdk, wdk, g_rank, 0); shard(c, c->hkv, 8, rdv, wdv, g_rank, 0);
  if (burst_shard(c->dist, N, c->cu, c->nseq, g_size, g_rank, c->batch * c->hq, 8, clse, wlse) != BURST_OK)
    fail("burst_shard lse: %s", burst_last_error());
  {
    double mo = max_abs(cout, nq), mq = fmax(max_abs(cdq, nq), 1e-3), mk = fmax(max_abs(cdk, nk), 1e-3);
    double mv = fmax(max_abs(cdv, nk), 1e-3);
    double eo = fast_err(f->dtype, out, wout, lq), el = max_err(lse, wlse, ll);
    double eq = fast_err(f->dtype, dq, wdq, lq), ek = fast_err(f->dtype, dk, wdk, lk), ev = fast_err(f->dtype, dv, wdv, lk);
    if (!(eo <= VREF_FAST_OUT_TOL * mo)) fail("FAST out error %.3e > %g * %.3e", eo, VREF_FAST_OUT_TOL, mo);
    if (!(el <= VREF_FAST_LSE_TOL)) fail("FAST lse error %.3e > %g", el, VREF_FAST_LSE_TOL);
    if (!(eq <= VREF_FAST_GRAD_TOL * mq)) fail("FAST dq error %.3e > %g * %.3e", eq, VREF_FAST_GRAD_TOL, mq);
    if (!(ek <= VREF_FAST_GRAD_TOL * mk)) fail("FAST dk error %.3e > %g * %.3e", ek, VREF_FAST_GRAD_TOL, mk);
    if (!(ev <= VREF_FAST_GRAD_TOL * mv)) fail("FAST dv error %.3e > %g * %.3e", ev, VREF_FAST_GRAD_TOL, mv);
  }
done:
  burst_plan_destroy(plan);
  free(cq); free(ck); free(cv); free(cdo); free(cout); free(clse); free(cdq); free(cdk); free(cdv);
  free(given); free(rout); free(rdq); free(rdk); free(rdv); free(fq); free(fk); free(fv); free(fdo);
  free(uq); free(uk); free(uv); free(udo); free(q); free(k); free(v); free(dout); free(out); free(dq); free(dk); free(dv);
  free(wout); free(wdq); free(wdk); free(wdv); free(wlse); free(local_out); free(full_out); free(sum_out); free(lse);
}

/* ---- score modifiers (0.8): softcap and sinks ------------------------------ */
typedef struct mcase {
  vcase c;
  int dtype, compute, pattern;
  float softcap;   /* 0: off */
  int sinks;       /* 1: sink logits mod_sink(h, 0) */
  int size_v07;    /* struct_size = the 0.7 size (offsetof sinks): softcap is read, the
                      sinks pointer (at a NaN, which would be refused) is not */
  int reset_sinks; /* then burst_plan_set_sinks(mod_sink(h, 1)) and a second run, and
                      burst_plan_set_sinks(NULL) and a third: each must use the new values */
} mcase;

/* Sink logits of head h: set 0 spans a few units around 0 (a sink that
 * matters, one that dominates the row); set 1 is another choice, so a call
 * that kept the old values fails the comparison. */
static float mod_sink(int64_t h, int set) {
  return set == 0 ? -2.0f + 1.375f * (float)(h % 5) : 1.5f - 0.75f * (float)(h % 4);
}

static double round_storage(int dtype, double x) {
  if (dtype == BURST_DTYPE_BF16) return (double)from_bf16(to_bf16((float)x));
  if (dtype == BURST_DTYPE_F16) return (double)from_f16(to_f16((float)x));
  return (double)(float)x;
}

static void put_storage(int dtype, void *buf, size_t i, double x) {
  if (dtype == BURST_DTYPE_BF16) ((uint16_t *)buf)[i] = to_bf16((float)x);
  else if (dtype == BURST_DTYPE_F16) ((uint16_t *)buf)[i] = to_f16((float)x);
  else ((float *)buf)[i] = (float)x;
}

static double get_storage(int dtype, const void *buf, size_t i) {
  if (dtype == BURST_DTYPE_BF16) return (double)from_bf16(((const uint16_t *)buf)[i]);
  if (dtype == BURST_DTYPE_F16) return (double)from_f16(((const uint16_t *)buf)[i]);
  return (double)((const float *)buf)[i];
}

/* One local tensor against its reference shard. EXACT: every element within
 * tol * max|ref| * (1 + u) + u * |ref| + sub (the header's storage contract;
 * u = 0 for F32); FAST: max error within tol * max|ref|. */
static void check_tensor(const char *what, int dtype, int fast, const void *got, const double *want, size_t n,
                         double max_ref, double tol) {
  const double u = fast ? 0 : dtype == BURST_DTYPE_BF16 ? 0x1p-8 : dtype == BURST_DTYPE_F16 ? 0x1p-11 : 0.0;
  const double sub = !fast && dtype == BURST_DTYPE_F16 ? 0x1p-24 : 0.0;
  double worst = 0, worst_err = 0;
  size_t i, at = 0;
  for (i = 0; i < n; ++i) {
    double e = fabs(get_storage(dtype, got, i) - want[i]);
    double ratio = e / (tol * max_ref * (1 + u) + u * fabs(want[i]) + sub);
    if (!(ratio <= worst)) { worst = ratio == ratio ? ratio : INFINITY; worst_err = e; at = i; }
  }
  if (!(worst <= 1.0))
    fail("%s: error %.3e at element %zu (got %.9g, reference %.9g) is %.3g x the allowed %g * max|ref| (%.3e)%s",
         what, worst_err, at, n ? get_storage(dtype, got, at) : 0.0, n ? want[at] : 0.0, worst, tol, max_ref,
         fast ? "" : " plus the storage rounding");
}

/* Canonical [b][h][t][x] from a user-layout buffer of doubles. */
static void from_user(const vcase *c, int64_t H, const double *user, double *canon) {
  int64_t b, h, t, x;
  for (b = 0; b < c->batch; ++b)
    for (h = 0; h < H; ++h)
      for (t = 0; t < c->N; ++t)
        for (x = 0; x < c->d; ++x)
          canon[CI(c, h, b, t, x, H)] = user[c->layout == BURST_LAYOUT_BHSD
                                                ? (((size_t)b * H + h) * c->N + t) * c->d + x
                                                : (((size_t)b * c->N + t) * H + h) * c->d + x];
}

static void run_mod_case(burst_context *ctx, const mcase *m) {
  static const char *pattern_names[] = {"BURST", "RING", "ALLGATHER", "ULYSSES", "AUTO"};
  const vcase *c = &m->c;
  const int64_t N = c->N, D = c->d;
  const size_t e = m->dtype == BURST_DTYPE_F32 ? 4 : 2;
  const size_t nq = (size_t)(c->batch * c->hq * N * D), nk = (size_t)(c->batch * c->hkv * N * D);
  const size_t nl = (size_t)(c->batch * c->hq * N);
  /* bf16 products: FAST, or DEFAULT with BF16 storage (FAST where the CPU has
   * them; elsewhere EXACT, which meets the FAST bounds on inputs that are bf16
   * already). The library rounds q, k, v, dout to bf16 itself then. */
  const int fast = m->compute == BURST_COMPUTE_FAST || (m->compute == BURST_COMPUTE_DEFAULT && m->dtype == BURST_DTYPE_BF16);
  const double out_tol = fast ? VREF_FAST_OUT_TOL : 1e-5, grad_tol = fast ? VREF_FAST_GRAD_TOL : 1e-4;
  const double lse_tol = fast ? VREF_FAST_LSE_TOL : 1e-4;
  char label[256];
  double *cq = xcalloc(nq, 8), *ck = xcalloc(nk, 8), *cv = xcalloc(nk, 8), *cdo = xcalloc(nq, 8);
  double *cout = xcalloc(nq, 8), *clse = xcalloc(nl, 8), *cdq = xcalloc(nq, 8), *cdk = xcalloc(nk, 8), *cdv = xcalloc(nk, 8);
  double *crows = xcalloc(nl, 8), *given = xcalloc(nq, 8);
  double *uq = xcalloc(nq, 8), *uk = xcalloc(nk, 8), *uv = xcalloc(nk, 8), *udo = xcalloc(nq, 8);
  double *rout = xcalloc(nq, 8), *rdq = xcalloc(nq, 8), *rdk = xcalloc(nk, 8), *rdv = xcalloc(nk, 8);
  void *sq = xcalloc(nq, e), *sk = xcalloc(nk, e), *sv = xcalloc(nk, e), *sdo = xcalloc(nq, e);
  void *q = NULL, *k = NULL, *v = NULL, *dout = NULL, *out = NULL, *dq = NULL, *dk = NULL, *dv = NULL;
  double *wout = NULL, *wdq = NULL, *wdk = NULL, *wdv = NULL, *wlse = NULL, *wrows = NULL;
  double *local_out = NULL, *full_out = NULL, *sum_out = NULL;
  float *lse = NULL, sinks_f[64], nan_sinks[64], dsinks[64];
  double sinks_d[64], ref_dsinks[64], partial_ref[64], total[64], mine[64];
  int64_t n = 0, h;
  size_t lq, lk, ll, i;
  int phase;
  burst_attention_config cfg;
  burst_plan *plan = NULL;
  burst_status st;

  snprintf(label, sizeof label, "%s; %s %s %s; softcap %g, sinks %s%s%s", c->name,
           m->dtype == BURST_DTYPE_F32 ? "f32" : m->dtype == BURST_DTYPE_BF16 ? "bf16" : "f16",
           m->compute == BURST_COMPUTE_FAST ? "FAST" : m->compute == BURST_COMPUTE_EXACT ? "EXACT" : "DEFAULT",
           pattern_names[m->pattern], (double)m->softcap, m->sinks ? "on" : "off",
           m->size_v07 ? "; a 0.7-sized config" : "", m->reset_sinks ? "; burst_plan_set_sinks between calls" : "");
  g_case = label;
  if (c->hq > 64) { fail("test bug: more than 64 query heads"); goto done; }
  if (burst_shard_positions(c->dist, N, c->cu, c->nseq, g_size, g_rank, NULL, 0, &n) != BURST_OK) {
    fail("burst_shard_positions: %s", burst_last_error());
    goto done;
  }
  /* The caller's values, rounded to the storage type; the reference's:
   * those, rounded to bf16 when the library multiplies in bf16. */
  for (i = 0; i < nq; ++i) { cq[i] = round_storage(m->dtype, vref_value(1, i)); cdo[i] = round_storage(m->dtype, vref_value(4, i)); }
  for (i = 0; i < nk; ++i) { ck[i] = round_storage(m->dtype, vref_value(2, i)); cv[i] = round_storage(m->dtype, vref_value(3, i)); }
  vref_to_user(c, c->hq, cq, NULL, uq); vref_to_user(c, c->hkv, ck, NULL, uk);
  vref_to_user(c, c->hkv, cv, NULL, uv); vref_to_user(c, c->hq, cdo, NULL, udo);
  for (i = 0; i < nq; ++i) { put_storage(m->dtype, sq, i, uq[i]); put_storage(m->dtype, sdo, i, udo[i]); }
  for (i = 0; i < nk; ++i) { put_storage(m->dtype, sk, i, uk[i]); put_storage(m->dtype, sv, i, uv[i]); }
  if (fast) {
    for (i = 0; i < nq; ++i) { cq[i] = bf16_round(cq[i]); cdo[i] = bf16_round(cdo[i]); }
    for (i = 0; i < nk; ++i) { ck[i] = bf16_round(ck[i]); cv[i] = bf16_round(cv[i]); }
  }

  lq = (size_t)(c->batch * c->hq * n * D); lk = (size_t)(c->batch * c->hkv * n * D); ll = (size_t)(c->batch * c->hq * n);
  q = xcalloc(lq, e); dout = xcalloc(lq, e); out = xcalloc(lq, e); dq = xcalloc(lq, e);
  k = xcalloc(lk, e); v = xcalloc(lk, e); dk = xcalloc(lk, e); dv = xcalloc(lk, e); lse = xcalloc(ll, 4);
  wout = xcalloc(lq, 8); wdq = xcalloc(lq, 8); wdk = xcalloc(lk, 8); wdv = xcalloc(lk, 8); wlse = xcalloc(ll, 8);
  wrows = xcalloc(ll, 8); local_out = xcalloc(lq, 8); full_out = xcalloc(nq, 8); sum_out = xcalloc(nq, 8);
  shard(c, c->hq, e, sq, q, g_rank, 0); shard(c, c->hkv, e, sk, k, g_rank, 0);
  shard(c, c->hkv, e, sv, v, g_rank, 0); shard(c, c->hq, e, sdo, dout, g_rank, 0);

  for (h = 0; h < c->hq; ++h) { sinks_f[h] = mod_sink(h, 0); nan_sinks[h] = (float)NAN; }
  burst_attention_config_init(&cfg);
  cfg.layout = c->layout; cfg.mask = c->causal ? BURST_MASK_CAUSAL : BURST_MASK_NONE;
  cfg.distribution = c->dist; cfg.batch = c->batch; cfg.seq_len_local = n;
  cfg.num_heads_q = c->hq; cfg.num_heads_kv = c->hkv; cfg.head_dim = D;
  cfg.window_left = c->wl; cfg.window_right = c->wr; cfg.cu_seqlens = c->cu; cfg.num_sequences = c->nseq;
  cfg.num_threads = 1; cfg.timeout_seconds = 120;
  cfg.dtype = m->dtype; cfg.compute = m->compute; cfg.pattern = m->pattern;
  cfg.softcap = m->softcap;
  cfg.sinks = m->sinks ? sinks_f : NULL;
  if (m->size_v07) {
    cfg.struct_size = (uint32_t)offsetof(burst_attention_config, sinks);
    cfg.sinks = nan_sinks; /* past a 0.7 struct: never read (read, it would be refused) */
  }
  st = burst_plan_create(ctx, &cfg, &plan);
  if (st != BURST_OK) { fail("plan_create: %s: %s", burst_status_string(st), burst_last_error()); goto done; }

  /* Phase 0: the config's sinks; with reset_sinks, phase 1: other values set
   * by burst_plan_set_sinks, phase 2: none (set to NULL). */
  for (phase = 0; phase < (m->reset_sinks ? 3 : 1); ++phase) {
    const int have_sinks = phase == 0 ? m->sinks && !m->size_v07 : phase == 1;
    const char *when = phase == 0 ? "first call" : phase == 1 ? "after burst_plan_set_sinks(other values)"
                                                              : "after burst_plan_set_sinks(NULL)";
    vmods mods;
    char what[160];
    /* (a set_sinks failing on one rank only makes the forward fail on every
     * rank, so no rank leaves the loop alone) */
    if (phase == 1) {
      for (h = 0; h < c->hq; ++h) sinks_f[h] = mod_sink(h, 1);
      if ((st = burst_plan_set_sinks(plan, sinks_f)) != BURST_OK)
        fail("burst_plan_set_sinks(other values): %s: %s", burst_status_string(st), burst_last_error());
      sinks_f[0] = 1e6f; /* copied: changing the caller's array now must not matter */
    } else if (phase == 2 && (st = burst_plan_set_sinks(plan, NULL)) != BURST_OK) {
      fail("burst_plan_set_sinks(NULL): %s: %s", burst_status_string(st), burst_last_error());
    }
    for (h = 0; h < c->hq; ++h) sinks_d[h] = (double)mod_sink(h, phase == 1);
    mods.softcap = (double)m->softcap;
    mods.sinks = have_sinks ? sinks_d : NULL;
    memset(out, 0, lq * e); memset(dq, 0, lq * e); memset(dk, 0, lk * e); memset(dv, 0, lk * e);
    st = burst_forward(plan, q, k, v, out, lse);
    if (st != BURST_OK) { fail("forward (%s): %s: %s", when, burst_status_string(st), burst_last_error()); break; }
    st = burst_backward(plan, q, k, v, out, lse, dout, dq, dk, dv);
    if (st != BURST_OK) { fail("backward (%s): %s: %s", when, burst_status_string(st), burst_last_error()); break; }
    st = burst_plan_sinks_gradient(plan, dsinks);
    if (have_sinks && st != BURST_OK)
      fail("burst_plan_sinks_gradient (%s): %s: %s", when, burst_status_string(st), burst_last_error());
    if (!have_sinks && st != BURST_ERROR_INVALID_ARGUMENT)
      fail("burst_plan_sinks_gradient (%s) on a plan without sinks: %s, expected INVALID_ARGUMENT", when,
           burst_status_string(st));

    /* The out the backward was given, whole, for the reference's D. */
    for (i = 0; i < lq; ++i) local_out[i] = get_storage(m->dtype, out, i);
    memset(full_out, 0, nq * 8);
    shard(c, c->hq, 8, full_out, local_out, g_rank, 1);
    MPI_Allreduce(full_out, sum_out, (int)nq, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    from_user(c, c->hq, sum_out, given);
    memset(cout, 0, nq * 8); memset(cdq, 0, nq * 8); memset(cdk, 0, nk * 8); memset(cdv, 0, nk * 8);
    vref_reference_mods(c, &mods, cq, ck, cv, cdo, given, cout, clse, cdq, cdk, cdv, ref_dsinks, crows);
    vref_to_user(c, c->hq, cout, NULL, rout); vref_to_user(c, c->hq, cdq, NULL, rdq);
    vref_to_user(c, c->hkv, cdk, NULL, rdk); vref_to_user(c, c->hkv, cdv, NULL, rdv);
    shard(c, c->hq, 8, rout, wout, g_rank, 0); shard(c, c->hq, 8, rdq, wdq, g_rank, 0);
    shard(c, c->hkv, 8, rdk, wdk, g_rank, 0); shard(c, c->hkv, 8, rdv, wdv, g_rank, 0);
    if (burst_shard(c->dist, N, c->cu, c->nseq, g_size, g_rank, c->batch * c->hq, 8, clse, wlse) != BURST_OK ||
        burst_shard(c->dist, N, c->cu, c->nseq, g_size, g_rank, c->batch * c->hq, 8, crows, wrows) != BURST_OK)
      fail("burst_shard lse: %s", burst_last_error());
    snprintf(what, sizeof what, "out (%s)", when);
    check_tensor(what, m->dtype, fast, out, wout, lq, max_abs(cout, nq), out_tol);
    snprintf(what, sizeof what, "dq (%s)", when);
    check_tensor(what, m->dtype, fast, dq, wdq, lq, fmax(max_abs(cdq, nq), 1e-3), grad_tol);
    snprintf(what, sizeof what, "dk (%s)", when);
    check_tensor(what, m->dtype, fast, dk, wdk, lk, fmax(max_abs(cdk, nk), 1e-3), grad_tol);
    snprintf(what, sizeof what, "dv (%s)", when);
    check_tensor(what, m->dtype, fast, dv, wdv, lk, fmax(max_abs(cdv, nk), 1e-3), grad_tol);
    {
      double el = max_err(lse, wlse, ll);
      if (!(el <= lse_tol)) fail("lse (%s): error %.3e > %g (absolute)", when, el, lse_tol);
    }
    /* dL/d sinks: this rank's partial against the reference's sum over this
     * rank's rows, and the sum of the partials over the ranks against the
     * reference's total; both within the gradient tolerance of max|ref|. */
    if (have_sinks && st == BURST_OK) {
      double scale = fmax(max_abs(ref_dsinks, (size_t)c->hq), 1e-3);
      int64_t b, t;
      for (h = 0; h < c->hq; ++h) { partial_ref[h] = 0; mine[h] = dsinks[h]; }
      for (b = 0; b < c->batch; ++b)
        for (h = 0; h < c->hq; ++h)
          for (t = 0; t < n; ++t) partial_ref[h] += wrows[((size_t)b * c->hq + h) * n + t];
      MPI_Allreduce(mine, total, (int)c->hq, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
      for (h = 0; h < c->hq; ++h) {
        if (!(fabs(mine[h] - partial_ref[h]) <= grad_tol * scale))
          fail("dsinks[%lld] (%s): this rank's partial %.9g, the reference's sum over this rank's rows %.9g "
               "(tolerance %g * %.3e)", (long long)h, when, mine[h], partial_ref[h], grad_tol, scale);
        if (!(fabs(total[h] - ref_dsinks[h]) <= grad_tol * scale))
          fail("dsinks[%lld] (%s): sum of the partials over %d ranks %.9g, reference %.9g (tolerance %g * %.3e)",
               (long long)h, when, g_size, total[h], ref_dsinks[h], grad_tol, scale);
      }
    } else if (have_sinks) {
      /* keep the collective count equal on every rank */
      for (h = 0; h < c->hq; ++h) mine[h] = 0;
      MPI_Allreduce(mine, total, (int)c->hq, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    }
  }
done:
  burst_plan_destroy(plan);
  free(cq); free(ck); free(cv); free(cdo); free(cout); free(clse); free(cdq); free(cdk); free(cdv);
  free(crows); free(given); free(uq); free(uk); free(uv); free(udo); free(rout); free(rdq); free(rdk); free(rdv);
  free(sq); free(sk); free(sv); free(sdo); free(q); free(k); free(v); free(dout); free(out); free(dq); free(dk); free(dv);
  free(wout); free(wdq); free(wdk); free(wdv); free(wlse); free(wrows); free(local_out); free(full_out); free(sum_out);
  free(lse);
}

int main(int argc, char **argv) {
  static const int64_t cu_a[] = {0, 5, 5, 23, 37};
  static const int64_t cu_b[] = {0, 10, 11, 30, 53};
  static const vcase cases[] = {
      {"zigzag causal BSHD 4/4 N=37", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BSHD, 1, -1, -1, 4, 4, 1, 16, 37, NULL, 0},
      {"zigzag causal GQA 4/2 BHSD N=53 B=2", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BHSD, 1, -1, -1, 4, 2, 2, 16, 53, NULL, 0},
      {"striped causal window(8,0) GQA 4/2 BHSD N=53", BURST_DISTRIBUTION_STRIPED, BURST_LAYOUT_BHSD, 1, 8, 0, 4, 2, 1, 16, 53, NULL, 0},
      {"contiguous window(8,0) MQA 4/1 BSHD N=41", BURST_DISTRIBUTION_CONTIGUOUS, BURST_LAYOUT_BSHD, 0, 8, 0, 4, 1, 1, 16, 41, NULL, 0},
      {"contiguous window(3,5) GQA 4/2 BHSD N=53", BURST_DISTRIBUTION_CONTIGUOUS, BURST_LAYOUT_BHSD, 0, 3, 5, 4, 2, 1, 16, 53, NULL, 0},
      {"zigzag varlen {0,5,5,23,37} causal window(4,0) 4/2 BSHD", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BSHD, 1, 4, 0, 4, 2, 1, 16, 37, cu_a, 4},
      {"striped varlen {0,5,5,23,37} MQA 4/1 BHSD", BURST_DISTRIBUTION_STRIPED, BURST_LAYOUT_BHSD, 0, -1, -1, 4, 1, 1, 16, 37, cu_a, 4},
      {"contiguous varlen {0,10,11,30,53} causal B=2 4/4 BSHD", BURST_DISTRIBUTION_CONTIGUOUS, BURST_LAYOUT_BSHD, 1, -1, -1, 4, 4, 2, 8, 53, cu_b, 4},
      {"zigzag window(2,2) B=2 4/2 BHSD N=53", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BHSD, 0, 2, 2, 4, 2, 2, 8, 53, NULL, 0},
  };
  static const fcase fast_cases[] = {
      {{"FAST f32 zigzag causal BSHD 4/4 N=37", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BSHD, 1, -1, -1, 4, 4, 1, 16, 37, NULL, 0},
       BURST_DTYPE_F32, BURST_COMPUTE_FAST, BURST_PATTERN_BURST, 0},
      {{"FAST bf16 zigzag causal GQA 4/2 BHSD N=53 B=2", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BHSD, 1, -1, -1, 4, 2, 2, 16, 53, NULL, 0},
       BURST_DTYPE_BF16, BURST_COMPUTE_FAST, BURST_PATTERN_BURST, 0},
      {{"FAST f32 striped causal window(8,0) GQA 4/2 BHSD N=53 RING", BURST_DISTRIBUTION_STRIPED, BURST_LAYOUT_BHSD, 1, 8, 0, 4, 2, 1, 16, 53, NULL, 0},
       BURST_DTYPE_F32, BURST_COMPUTE_FAST, BURST_PATTERN_RING, 0},
      {{"DEFAULT bf16 contiguous window(3,5) GQA 4/2 BHSD N=53 ALLGATHER", BURST_DISTRIBUTION_CONTIGUOUS, BURST_LAYOUT_BHSD, 0, 3, 5, 4, 2, 1, 16, 53, NULL, 0},
       BURST_DTYPE_BF16, BURST_COMPUTE_DEFAULT, BURST_PATTERN_ALLGATHER, 0},
      {{"FAST f32 contiguous window(8,0) MQA 4/1 BSHD N=41 ALLGATHER", BURST_DISTRIBUTION_CONTIGUOUS, BURST_LAYOUT_BSHD, 0, 8, 0, 4, 1, 1, 16, 41, NULL, 0},
       BURST_DTYPE_F32, BURST_COMPUTE_FAST, BURST_PATTERN_ALLGATHER, 0},
      {{"DEFAULT bf16 as a 0.6 client: zigzag varlen {0,5,5,23,37} causal window(4,0) 4/2 BSHD", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BSHD, 1, 4, 0, 4, 2, 1, 16, 37, cu_a, 4},
       BURST_DTYPE_BF16, BURST_COMPUTE_DEFAULT, BURST_PATTERN_BURST, 1},
      {{"FAST f32 contiguous varlen {0,10,11,30,53} causal B=2 4/4 BSHD RING", BURST_DISTRIBUTION_CONTIGUOUS, BURST_LAYOUT_BSHD, 1, -1, -1, 4, 4, 2, 8, 53, cu_b, 4},
       BURST_DTYPE_F32, BURST_COMPUTE_FAST, BURST_PATTERN_RING, 0},
  };
  /* Score modifiers (0.8): sinks on/off x softcap on/off over the patterns,
   * the variants and the storage types. Columns: dtype, compute, pattern,
   * softcap, sinks, 0.7-sized config, set_sinks between calls. ULYSSES only
   * where the kv heads divide over the ranks. */
  static const mcase mod_cases[] = {
      {{"zigzag causal BSHD 4/4 N=37", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BSHD, 1, -1, -1, 4, 4, 1, 16, 37, NULL, 0},
       BURST_DTYPE_F32, BURST_COMPUTE_EXACT, BURST_PATTERN_BURST, 0.0f, 1, 0, 0},
      {{"zigzag causal BSHD 4/4 N=37", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BSHD, 1, -1, -1, 4, 4, 1, 16, 37, NULL, 0},
       BURST_DTYPE_F32, BURST_COMPUTE_EXACT, BURST_PATTERN_BURST, 0.5f, 0, 0, 0},
      {{"zigzag causal GQA 4/2 BHSD N=53 B=2", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BHSD, 1, -1, -1, 4, 2, 2, 16, 53, NULL, 0},
       BURST_DTYPE_F32, BURST_COMPUTE_EXACT, BURST_PATTERN_BURST, 0.75f, 1, 0, 0},
      {{"striped causal window(8,0) GQA 4/2 BHSD N=53", BURST_DISTRIBUTION_STRIPED, BURST_LAYOUT_BHSD, 1, 8, 0, 4, 2, 1, 16, 53, NULL, 0},
       BURST_DTYPE_F32, BURST_COMPUTE_EXACT, BURST_PATTERN_RING, 0.0f, 1, 0, 0},
      {{"striped causal window(8,0) GQA 4/2 BHSD N=53", BURST_DISTRIBUTION_STRIPED, BURST_LAYOUT_BHSD, 1, 8, 0, 4, 2, 1, 16, 53, NULL, 0},
       BURST_DTYPE_F16, BURST_COMPUTE_EXACT, BURST_PATTERN_RING, 1.0f, 1, 0, 0},
      {{"contiguous window(8,0) MQA 4/1 BSHD N=41", BURST_DISTRIBUTION_CONTIGUOUS, BURST_LAYOUT_BSHD, 0, 8, 0, 4, 1, 1, 16, 41, NULL, 0},
       BURST_DTYPE_F32, BURST_COMPUTE_EXACT, BURST_PATTERN_ALLGATHER, 0.5f, 0, 0, 0},
      {{"contiguous window(3,5) GQA 4/2 BHSD N=53", BURST_DISTRIBUTION_CONTIGUOUS, BURST_LAYOUT_BHSD, 0, 3, 5, 4, 2, 1, 16, 53, NULL, 0},
       BURST_DTYPE_BF16, BURST_COMPUTE_EXACT, BURST_PATTERN_ALLGATHER, 0.75f, 1, 0, 0},
      {{"zigzag varlen {0,5,5,23,37} causal window(4,0) 4/2 BSHD", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BSHD, 1, 4, 0, 4, 2, 1, 16, 37, cu_a, 4},
       BURST_DTYPE_F32, BURST_COMPUTE_EXACT, BURST_PATTERN_BURST, 1.5f, 1, 0, 0},
      {{"striped varlen {0,5,5,23,37} MQA 4/1 BHSD", BURST_DISTRIBUTION_STRIPED, BURST_LAYOUT_BHSD, 0, -1, -1, 4, 1, 1, 16, 37, cu_a, 4},
       BURST_DTYPE_F32, BURST_COMPUTE_EXACT, BURST_PATTERN_RING, 0.0f, 1, 0, 0},
      {{"contiguous varlen {0,10,11,30,53} causal B=2 4/4 BSHD", BURST_DISTRIBUTION_CONTIGUOUS, BURST_LAYOUT_BSHD, 1, -1, -1, 4, 4, 2, 8, 53, cu_b, 4},
       BURST_DTYPE_F16, BURST_COMPUTE_EXACT, BURST_PATTERN_ALLGATHER, 0.5f, 1, 0, 0},
      {{"zigzag window(2,2) B=2 4/2 BHSD N=53", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BHSD, 0, 2, 2, 4, 2, 2, 8, 53, NULL, 0},
       BURST_DTYPE_F32, BURST_COMPUTE_EXACT, BURST_PATTERN_RING, 0.5f, 1, 0, 0},
      /* ULYSSES: 12 kv heads divide over 2, 3 and 4 ranks; 6 over 2 and 3. */
      {{"zigzag causal 12/12 BSHD N=40 d=8", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BSHD, 1, -1, -1, 12, 12, 1, 8, 40, NULL, 0},
       BURST_DTYPE_F32, BURST_COMPUTE_EXACT, BURST_PATTERN_ULYSSES, 0.0f, 1, 0, 0},
      {{"zigzag causal 12/12 BSHD N=40 d=8", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BSHD, 1, -1, -1, 12, 12, 1, 8, 40, NULL, 0},
       BURST_DTYPE_F32, BURST_COMPUTE_EXACT, BURST_PATTERN_ULYSSES, 0.5f, 0, 0, 0},
      {{"striped causal window(5,0) GQA 12/6 BHSD N=41 d=8", BURST_DISTRIBUTION_STRIPED, BURST_LAYOUT_BHSD, 1, 5, 0, 12, 6, 1, 8, 41, NULL, 0},
       BURST_DTYPE_BF16, BURST_COMPUTE_EXACT, BURST_PATTERN_ULYSSES, 1.0f, 1, 0, 0},
      {{"contiguous varlen {0,10,11,30,53} 12/12 BHSD d=8", BURST_DISTRIBUTION_CONTIGUOUS, BURST_LAYOUT_BHSD, 0, -1, -1, 12, 12, 1, 8, 53, cu_b, 4},
       BURST_DTYPE_F16, BURST_COMPUTE_EXACT, BURST_PATTERN_ULYSSES, 0.75f, 1, 0, 0},
      /* bf16 products (FAST; DEFAULT is FAST for BF16 storage) */
      {{"zigzag causal GQA 4/2 BHSD N=53 B=2", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BHSD, 1, -1, -1, 4, 2, 2, 16, 53, NULL, 0},
       BURST_DTYPE_BF16, BURST_COMPUTE_DEFAULT, BURST_PATTERN_BURST, 0.75f, 1, 0, 0},
      {{"striped causal window(8,0) GQA 4/2 BHSD N=53", BURST_DISTRIBUTION_STRIPED, BURST_LAYOUT_BHSD, 1, 8, 0, 4, 2, 1, 16, 53, NULL, 0},
       BURST_DTYPE_F32, BURST_COMPUTE_FAST, BURST_PATTERN_RING, 0.5f, 1, 0, 0},
      {{"contiguous window(8,0) MQA 4/1 BSHD N=41", BURST_DISTRIBUTION_CONTIGUOUS, BURST_LAYOUT_BSHD, 0, 8, 0, 4, 1, 1, 16, 41, NULL, 0},
       BURST_DTYPE_BF16, BURST_COMPUTE_FAST, BURST_PATTERN_ALLGATHER, 0.0f, 1, 0, 0},
      {{"zigzag causal 12/12 BSHD N=40 d=8", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BSHD, 1, -1, -1, 12, 12, 1, 8, 40, NULL, 0},
       BURST_DTYPE_BF16, BURST_COMPUTE_FAST, BURST_PATTERN_ULYSSES, 0.75f, 1, 0, 0},
      /* neither, through the same path (the 0.7 results) */
      {{"zigzag varlen {0,5,5,23,37} causal window(4,0) 4/2 BSHD", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BSHD, 1, 4, 0, 4, 2, 1, 16, 37, cu_a, 4},
       BURST_DTYPE_BF16, BURST_COMPUTE_DEFAULT, BURST_PATTERN_RING, 0.0f, 0, 0, 0},
      /* burst_plan_set_sinks between calls: new values, then none */
      {{"zigzag causal GQA 4/2 BHSD N=53 B=2", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BHSD, 1, -1, -1, 4, 2, 2, 16, 53, NULL, 0},
       BURST_DTYPE_F32, BURST_COMPUTE_EXACT, BURST_PATTERN_BURST, 0.75f, 1, 0, 1},
      {{"contiguous window(3,5) GQA 4/2 BHSD N=53", BURST_DISTRIBUTION_CONTIGUOUS, BURST_LAYOUT_BHSD, 0, 3, 5, 4, 2, 1, 16, 53, NULL, 0},
       BURST_DTYPE_BF16, BURST_COMPUTE_DEFAULT, BURST_PATTERN_ALLGATHER, 0.0f, 1, 0, 1},
      /* a client built against 0.7: its config ends at softcap (then reserved0) */
      {{"zigzag causal GQA 4/2 BHSD N=53 B=2", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BHSD, 1, -1, -1, 4, 2, 2, 16, 53, NULL, 0},
       BURST_DTYPE_F32, BURST_COMPUTE_EXACT, BURST_PATTERN_BURST, 0.75f, 1, 1, 0},
  };
  burst_context *ctx = NULL;
  size_t c;
  int total = 0, n_mod = 0;
  (void)argc; (void)argv;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  if (g_size > 16) { if (g_rank == 0) fprintf(stderr, "at most 16 ranks\n"); MPI_Abort(MPI_COMM_WORLD, 2); }
  if (burst_context_create_mpi((int64_t)MPI_Comm_c2f(MPI_COMM_WORLD), &ctx) != BURST_OK) {
    fprintf(stderr, "context: %s\n", burst_last_error());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  for (c = 0; c < sizeof cases / sizeof cases[0]; ++c) run_case(ctx, &cases[c]);
  for (c = 0; c < sizeof fast_cases / sizeof fast_cases[0]; ++c) run_fast_case(ctx, &fast_cases[c]);
  for (c = 0; c < sizeof mod_cases / sizeof mod_cases[0]; ++c) {
    if (mod_cases[c].pattern == BURST_PATTERN_ULYSSES && mod_cases[c].c.hkv % g_size != 0) continue;
    run_mod_case(ctx, &mod_cases[c]);
    ++n_mod;
  }
  burst_context_destroy(ctx);
  MPI_Allreduce(&g_failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  printf("c_variants rank %d/%d: %s - %d cases, %d local failures\n", g_rank, g_size, total ? "FAILED" : "ok",
         (int)(sizeof cases / sizeof cases[0] + sizeof fast_cases / sizeof fast_cases[0]) + n_mod, g_failures);
  MPI_Finalize();
  return total ? 1 : 0;
}
