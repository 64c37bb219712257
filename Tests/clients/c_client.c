/*
 * c_client.c — C99 client test of libburst_attention under mpirun.
 *
 * Sweeps layouts x masks x shapes x shard distributions; on every rank it
 * generates the global inputs deterministically, takes its contiguous shard,
 * runs burst_forward + burst_backward and compares with the float64
 * reference (DESIGN.md section 3 tolerances).  Also checks burst_version,
 * the BURST byte counts of burst_plan_stats (mask NONE) and that a second
 * identical call is bitwise identical.  Exit status is non-zero on every rank
 * if any rank saw a failure.
 */
#include <mpi.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "burst_attention.h"
#include "reference.h"
#define CLIENT_NAME "c_client"
#include "mpi_client.h"

#define OUT_TOL 1e-5  /* relative to max |ref out| */
#define LSE_TOL 1e-4  /* absolute */
#define GRAD_TOL 1e-4 /* relative to max |ref grad| */


/* Checks a library status; prints the status name and burst_last_error(). */
static int check_status(burst_status st, const char *what) {
  if (st == BURST_OK) return 1;
  fail("%s returned %s (%d): %s", what, burst_status_string(st), (int)st,
       burst_last_error());
  return 0;
}

static void *xmalloc(size_t bytes) {
  void *p;
  if (bytes == 0) return NULL; /* zero-sized tensors are passed as NULL */
  p = malloc(bytes);
  if (!p) {
    fprintf(stderr, "c_client rank %d: out of memory (%lu bytes)\n", g_rank,
            (unsigned long)bytes);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  return p;
}

static int same_bits(const void *a, const void *b, size_t bytes) {
  if (bytes == 0) return 1;
  return memcmp(a, b, bytes) == 0;
}

/* Shard-size patterns. */
enum { SHARD_EVEN = 0, SHARD_TINY = 1, SHARD_SKEW = 2, SHARD_EMPTY_LAST = 3,
       SHARD_KINDS = 4 };
static const char *shard_names[SHARD_KINDS] = {"even", "tiny", "skew",
                                               "empty-last"};

/* Fills n[0..P-1] (sum N). Returns 0 if the pattern does not apply. */
static int make_shards(int kind, int64_t N, int P, int64_t *n) {
  int r;
  int64_t rest, total = 0;
  switch (kind) {
  case SHARD_EVEN:
    for (r = 0; r < P; ++r) n[r] = N / P + (r < (int)(N % P) ? 1 : 0);
    return 1;
  case SHARD_TINY: /* rank 0 holds 1 token, rank 1 holds 0, the rest share */
    if (P < 2 || N < 2) return 0;
    n[0] = 1;
    n[1] = 0;
    rest = N - 1;
    if (P == 2) {
      n[0] = 1; /* P = 2: [1, N-1] */
      n[1] = N - 1;
      return 1;
    }
    for (r = 2; r < P; ++r) n[r] = rest / (P - 2) + (r - 2 < (int)(rest % (P - 2)) ? 1 : 0);
    return 1;
  case SHARD_SKEW: /* rank r gets a share proportional to r + 1 */
    if (P < 2) return 0;
    {
      int64_t w = (int64_t)P * (P + 1) / 2;
      for (r = 0; r < P; ++r) {
        n[r] = N * (r + 1) / w;
        total += n[r];
      }
      n[P - 1] += N - total;
    }
    return 1;
  case SHARD_EMPTY_LAST: /* the last rank holds nothing */
    if (P < 2) return 0;
    for (r = 0; r < P - 1; ++r)
      n[r] = N / (P - 1) + (r < (int)(N % (P - 1)) ? 1 : 0);
    n[P - 1] = 0;
    return 1;
  default:
    return 0;
  }
}

typedef struct shape_case {
  int64_t batch, heads, head_dim, seq;
} shape_case;

typedef struct errors {
  double out, lse, dq, dk, dv; /* worst relative (out, grads) / absolute (lse) */
} errors;

static void track(double *worst, double e) {
  if (!(e <= *worst)) *worst = e;
}

/* Runs one configuration. Returns nothing; failures are counted. */
static const char *const pattern_names[] = {"BURST", "RING", "ALLGATHER", "ULYSSES", "AUTO"};

/* Runs one configuration with one communication pattern (and, for the ring
 * patterns, intra_group_size; 0 = detect). Failures are counted. */
static void run_case(burst_context *ctx, int layout, int mask,
                     const shape_case *sc, int shard_kind, int pattern,
                     int group, errors *worst) {
  char name[256];
  int64_t n[256];
  int64_t start = 0;
  int r;
  ref_shape sh;
  size_t gsz, gl, lsz, ll;
  double *gq, *gk, *gv, *gdo, *gout, *glse, *gdq, *gdk, *gdv;
  float *q, *k, *v, *dout, *out, *lse, *dq, *dk, *dv;
  float *out2, *lse2, *dq2, *dk2, *dv2;
  burst_attention_config cfg;
  burst_plan *plan = NULL;
  burst_stats st_fwd, st_bwd;
  int ok;

  if (!make_shards(shard_kind, sc->seq, g_size, n)) return;
  for (r = 0; r < g_rank; ++r) start += n[r];

  snprintf(name, sizeof name, "%s G=%d %s %s B=%ld H=%ld d=%ld N=%ld shards=%s(n_r=%ld)",
           pattern_names[pattern], group, layout == BURST_LAYOUT_BSHD ? "BSHD" : "BHSD",
           mask == BURST_MASK_CAUSAL ? "causal" : "none", (long)sc->batch,
           (long)sc->heads, (long)sc->head_dim, (long)sc->seq,
           shard_names[shard_kind], (long)n[g_rank]);
  g_case = name;

  sh.layout = layout;
  sh.mask = mask;
  sh.batch = sc->batch;
  sh.heads = sc->heads;
  sh.seq = sc->seq;
  sh.head_dim = sc->head_dim;
  sh.scale = 1.0 / sqrt((double)sc->head_dim);

  gsz = ref_tensor_elems(&sh, sh.seq);
  gl = ref_lse_elems(&sh, sh.seq);
  lsz = ref_tensor_elems(&sh, n[g_rank]);
  ll = ref_lse_elems(&sh, n[g_rank]);

  gq = (double *)xmalloc(gsz * sizeof(double));
  gk = (double *)xmalloc(gsz * sizeof(double));
  gv = (double *)xmalloc(gsz * sizeof(double));
  gdo = (double *)xmalloc(gsz * sizeof(double));
  gout = (double *)xmalloc(gsz * sizeof(double));
  gdq = (double *)xmalloc(gsz * sizeof(double));
  gdk = (double *)xmalloc(gsz * sizeof(double));
  gdv = (double *)xmalloc(gsz * sizeof(double));
  glse = (double *)xmalloc(gl * sizeof(double));
  q = (float *)xmalloc(lsz * sizeof(float));
  k = (float *)xmalloc(lsz * sizeof(float));
  v = (float *)xmalloc(lsz * sizeof(float));
  dout = (float *)xmalloc(lsz * sizeof(float));
  out = (float *)xmalloc(lsz * sizeof(float));
  dq = (float *)xmalloc(lsz * sizeof(float));
  dk = (float *)xmalloc(lsz * sizeof(float));
  dv = (float *)xmalloc(lsz * sizeof(float));
  out2 = (float *)xmalloc(lsz * sizeof(float));
  dq2 = (float *)xmalloc(lsz * sizeof(float));
  dk2 = (float *)xmalloc(lsz * sizeof(float));
  dv2 = (float *)xmalloc(lsz * sizeof(float));
  lse = (float *)xmalloc(ll * sizeof(float));
  lse2 = (float *)xmalloc(ll * sizeof(float));

  ref_fill(&sh, 2024, REF_TENSOR_Q, 1.0, gq);
  ref_fill(&sh, 2024, REF_TENSOR_K, 1.0, gk);
  ref_fill(&sh, 2024, REF_TENSOR_V, 1.0, gv);
  ref_fill(&sh, 2024, REF_TENSOR_DOUT, 1.0, gdo);
  ref_forward(&sh, gq, gk, gv, gout, glse);
  ref_backward(&sh, gq, gk, gv, gout, glse, gdo, gdq, gdk, gdv);

  ref_shard(&sh, gq, start, n[g_rank], q);
  ref_shard(&sh, gk, start, n[g_rank], k);
  ref_shard(&sh, gv, start, n[g_rank], v);
  ref_shard(&sh, gdo, start, n[g_rank], dout);

  burst_attention_config_init(&cfg);
  cfg.layout = layout;
  cfg.mask = mask;
  cfg.batch = sc->batch;
  cfg.seq_len_local = n[g_rank];
  cfg.num_heads_q = sc->heads;
  cfg.num_heads_kv = sc->heads;
  cfg.head_dim = sc->head_dim;
  cfg.pattern = pattern;
  cfg.intra_group_size = group;

  ok = check_status(burst_plan_create(ctx, &cfg, &plan), "burst_plan_create");
  if (ok && plan == NULL) {
    fail("burst_plan_create returned BURST_OK but a NULL plan");
    ok = 0;
  }
  if (ok) {
    ok = check_status(burst_forward(plan, q, k, v, out, lse), "burst_forward");
    memset(&st_fwd, 0, sizeof st_fwd);
    st_fwd.struct_size = (uint32_t)sizeof st_fwd;
    if (ok) ok = check_status(burst_plan_stats(plan, &st_fwd), "burst_plan_stats");
    if (ok)
      ok = check_status(burst_forward(plan, q, k, v, out2, lse2),
                        "burst_forward (repeat)");
    if (ok && (!same_bits(out, out2, lsz * sizeof(float)) ||
               !same_bits(lse, lse2, ll * sizeof(float))))
      fail("two identical burst_forward calls gave different bits");
    if (ok)
      ok = check_status(burst_backward(plan, q, k, v, out, lse, dout, dq, dk, dv),
                        "burst_backward");
    memset(&st_bwd, 0, sizeof st_bwd);
    st_bwd.struct_size = (uint32_t)sizeof st_bwd;
    if (ok) ok = check_status(burst_plan_stats(plan, &st_bwd), "burst_plan_stats");
    if (ok)
      ok = check_status(
          burst_backward(plan, q, k, v, out, lse, dout, dq2, dk2, dv2),
          "burst_backward (repeat)");
    if (ok && (!same_bits(dq, dq2, lsz * sizeof(float)) ||
               !same_bits(dk, dk2, lsz * sizeof(float)) ||
               !same_bits(dv, dv2, lsz * sizeof(float))))
      fail("two identical burst_backward calls gave different bits");

    if (ok) {
      double mo = ref_max_abs(gout, gsz), mdq = ref_max_abs(gdq, gsz);
      double mdk = ref_max_abs(gdk, gsz), mdv = ref_max_abs(gdv, gsz);
      double eo = ref_shard_error(&sh, gout, start, n[g_rank], out);
      double el = ref_lse_error(&sh, glse, start, n[g_rank], lse);
      double edq = ref_shard_error(&sh, gdq, start, n[g_rank], dq);
      double edk = ref_shard_error(&sh, gdk, start, n[g_rank], dk);
      double edv = ref_shard_error(&sh, gdv, start, n[g_rank], dv);
      if (!(eo <= OUT_TOL * mo))
        fail("out error %.3e > %.0e * max|ref out| (%.3e)", eo, OUT_TOL, mo);
      if (!(el <= LSE_TOL))
        fail("lse error %.3e > %.0e (absolute)", el, LSE_TOL);
      if (!(edq <= GRAD_TOL * mdq))
        fail("dq error %.3e > %.0e * max|ref dq| (%.3e)", edq, GRAD_TOL, mdq);
      if (!(edk <= GRAD_TOL * mdk))
        fail("dk error %.3e > %.0e * max|ref dk| (%.3e)", edk, GRAD_TOL, mdk);
      if (!(edv <= GRAD_TOL * mdv))
        fail("dv error %.3e > %.0e * max|ref dv| (%.3e)", edv, GRAD_TOL, mdv);
      track(&worst->out, mo > 0 ? eo / mo : eo);
      track(&worst->lse, el);
      track(&worst->dq, mdq > 0 ? edq / mdq : edq);
      track(&worst->dk, mdk > 0 ? edk / mdk : edk);
      track(&worst->dv, mdv > 0 ? edv / mdv : edv);

      /* Every pattern: the stats name the pattern that ran, and what the
       * ranks sent is what they received. */
      {
        unsigned long long totals[4], local[4];
        local[0] = st_fwd.bytes_sent; local[1] = st_fwd.bytes_received;
        local[2] = st_bwd.bytes_sent; local[3] = st_bwd.bytes_received;
        MPI_Allreduce(local, totals, 4, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
        if (totals[0] != totals[1] || totals[2] != totals[3])
          fail("bytes sent and received over all ranks differ: forward %llu vs %llu, "
               "backward %llu vs %llu", totals[0], totals[1], totals[2], totals[3]);
        if (pattern != BURST_PATTERN_AUTO ? st_bwd.pattern != pattern
                                          : (st_bwd.pattern < 0 || st_bwd.pattern > 3))
          fail("stats.pattern = %d for pattern %s", (int)st_bwd.pattern, pattern_names[pattern]);
        if (pattern <= BURST_PATTERN_RING &&
            st_bwd.intra_group_size != (group > 0 ? group : g_size))
          fail("stats.intra_group_size = %d, expected %d", (int)st_bwd.intra_group_size,
               group > 0 ? group : g_size);
        if (st_bwd.bytes_sent_inter_group != 0 || st_bwd.bytes_received_inter_group != 0)
          fail("one node, yet %llu bytes counted as sent to another group",
               (unsigned long long)st_bwd.bytes_sent_inter_group);
      }
      /* Communication volume of the BURST pattern, one ring (exact, any mask). */
      if (pattern == BURST_PATTERN_BURST && group == 0) {
        int64_t Z = sc->batch * sc->heads, d = sc->head_dim;
        uint64_t fs = ref_burst_fwd_sent_skipping(n, g_size, g_rank, Z, d, mask);
        uint64_t fr = ref_burst_fwd_received_skipping(n, g_size, g_rank, Z, d, mask);
        uint64_t bs = ref_burst_bwd_sent(n, g_size, g_rank, Z, d, mask);
        uint64_t br = ref_burst_bwd_received(n, g_size, g_rank, Z, d, mask);
        int all_nonempty = 1;
        for (r = 0; r < g_size; ++r)
          if (n[r] == 0) all_nonempty = 0;
        /* With mask NONE and no empty shard nothing is skipped: the closed
         * form of the brief holds (a check of this test's own formulas). */
        if (mask == BURST_MASK_NONE && all_nonempty &&
            (fs != ref_burst_fwd_sent(n, g_size, g_rank, Z, d) ||
             fr != ref_burst_fwd_received(n, g_size, g_rank, Z, d) ||
             bs != ref_burst_bwd_sent_dense(n, g_size, g_rank, Z, d)))
          fail("internal: skip-aware forward byte formula disagrees with the "
               "closed form");
        if (st_fwd.bytes_sent != fs || st_fwd.bytes_received != fr)
          fail("forward stats: bytes_sent %llu (expected %llu; %llu without "
               "skipping), bytes_received %llu (expected %llu; %llu without "
               "skipping)",
               (unsigned long long)st_fwd.bytes_sent, (unsigned long long)fs,
               (unsigned long long)ref_burst_fwd_sent(n, g_size, g_rank, Z, d),
               (unsigned long long)st_fwd.bytes_received, (unsigned long long)fr,
               (unsigned long long)ref_burst_fwd_received(n, g_size, g_rank, Z, d));
        if (st_bwd.bytes_sent != bs || st_bwd.bytes_received != br)
          fail("backward stats: bytes_sent %llu (expected %llu), "
               "bytes_received %llu (expected %llu)",
               (unsigned long long)st_bwd.bytes_sent, (unsigned long long)bs,
               (unsigned long long)st_bwd.bytes_received, (unsigned long long)br);
      }
    }
  }
  burst_plan_destroy(plan);

  free(gq); free(gk); free(gv); free(gdo); free(gout); free(glse);
  free(gdq); free(gdk); free(gdv);
  free(q); free(k); free(v); free(dout); free(out); free(lse);
  free(dq); free(dk); free(dv);
  free(out2); free(lse2); free(dq2); free(dk2); free(dv2);
  g_case = "";
}

int main(int argc, char **argv) {
  static const shape_case shapes[] = {
      {1, 2, 16, 7},   /* tiny: fewer tokens than some world sizes x 2 */
      {3, 2, 16, 37},  /* batch 3, odd N */
      {1, 1, 64, 300}, /* head_dim 64, the largest N of the sweep */
      {3, 3, 64, 64},  /* batch 3, head_dim 64 */
  };
  const int nshapes = (int)(sizeof shapes / sizeof shapes[0]);
  burst_context *ctx = NULL;
  errors worst = {0, 0, 0, 0, 0};
  int layout, mask, s, kind, cases = 0, local_fail, global_fail = 0, i;
  int64_t dummy[256];
  long max_seq = -1; /* --max-seq N: only the shapes of at most N tokens (valgrind runs) */

  MPI_Init(&argc, &argv);
  for (i = 1; i + 1 < argc; ++i)
    if (strcmp(argv[i], "--max-seq") == 0) max_seq = strtol(argv[++i], NULL, 10);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  if (g_size > 256) {
    if (g_rank == 0) fprintf(stderr, "c_client supports at most 256 ranks\n");
    MPI_Finalize();
    return 2;
  }

  g_case = "setup";
  if (burst_version() != (uint32_t)BURST_VERSION_NUMBER)
    fail("burst_version() = %u, header BURST_VERSION_NUMBER = %u",
         (unsigned)burst_version(), (unsigned)BURST_VERSION_NUMBER);

  if (check_status(burst_context_create_mpi((int64_t)MPI_Comm_c2f(MPI_COMM_WORLD),
                                            &ctx),
                   "burst_context_create_mpi")) {
    int32_t cr = -1, cs = -1;
    if (check_status(burst_context_rank(ctx, &cr, &cs), "burst_context_rank") &&
        (cr != g_rank || cs != g_size))
      fail("burst_context_rank gave %d/%d, MPI says %d/%d", (int)cr, (int)cs,
           g_rank, g_size);

    for (layout = BURST_LAYOUT_BSHD; layout <= BURST_LAYOUT_BHSD; ++layout)
      for (mask = BURST_MASK_NONE; mask <= BURST_MASK_CAUSAL; ++mask)
        for (s = 0; s < nshapes; ++s)
          for (kind = 0; kind < SHARD_KINDS; ++kind) {
            if (!make_shards(kind, shapes[s].seq, g_size, dummy)) continue;
            if (max_seq >= 0 && shapes[s].seq > max_seq) continue;
            /* The uneven patterns are exercised on the smaller shapes. */
            if (kind != SHARD_EVEN && shapes[s].seq > 100 && layout == BURST_LAYOUT_BHSD)
              continue;
            run_case(ctx, layout, mask, &shapes[s], kind, BURST_PATTERN_BURST, 0, &worst);
            ++cases;
            /* The other patterns (and a double ring of 2-rank groups where
             * the world divides) on BSHD, every mask, shape and split. */
            if (layout == BURST_LAYOUT_BSHD) {
              int pattern;
              for (pattern = BURST_PATTERN_RING; pattern <= BURST_PATTERN_AUTO; ++pattern) {
                if (pattern == BURST_PATTERN_ULYSSES && shapes[s].heads % g_size != 0) continue;
                run_case(ctx, layout, mask, &shapes[s], kind, pattern, 0, &worst);
                ++cases;
              }
              if (g_size % 2 == 0 && g_size > 2) {
                run_case(ctx, layout, mask, &shapes[s], kind, BURST_PATTERN_BURST, 2, &worst);
                run_case(ctx, layout, mask, &shapes[s], kind, BURST_PATTERN_RING, 2, &worst);
                cases += 2;
              }
              if (g_size > 1) {
                run_case(ctx, layout, mask, &shapes[s], kind, BURST_PATTERN_BURST, 1, &worst);
                ++cases;
              }
            }
          }
    burst_context_destroy(ctx);
  }

  local_fail = g_failures > 0;
  MPI_Allreduce(&local_fail, &global_fail, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  printf("c_client rank %d/%d: %s - %d cases, %d local failures; worst errors: "
         "out %.2e, lse %.2e, dq %.2e, dk %.2e, dv %.2e (relative to max|ref|, "
         "lse absolute)\n",
         g_rank, g_size, global_fail ? "FAILED" : "passed", cases, g_failures,
         worst.out, worst.lse, worst.dq, worst.dk, worst.dv);
  fflush(stdout);
  MPI_Finalize();
  return global_fail ? 1 : 0;
}
