/*
 * c_cluster.c — the library on a cluster of simulated nodes (issue 20), run by
 * scripts/cluster.sh: two nodes of two ranks, ranks of one node on shared
 * memory, ranks of different nodes on TCP over the namespace's loopback.
 *
 * Default mode (c_cluster [N]): causal ZIGZAG, MHA (4 heads, so ULYSSES
 * applies at P = 4), d = 32, N = 512 tokens (or N), F32 storage, EXACT.
 *  - The topology: MPI_COMM_TYPE_SHARED must show BURST_CLUSTER_NODES nodes
 *    of BURST_CLUSTER_RANKS_PER_NODE consecutive ranks.
 *  - Every pattern — BURST and RING as one ring (intra_group_size = world)
 *    and as the detected double ring (intra_group_size = 0: stats must say
 *    the node size, 2), ALLGATHER, ULYSSES — forward and backward against the
 *    float64 reference of variant_reference.h with c_variants' tolerances
 *    (out 1e-5·max|ref|, lse 1e-4, dq/dk/dv 1e-4·max|ref|).
 *  - The inter-group byte counters against the wire: rank 0 reads the
 *    namespace's lo counters (/proc/net/dev: inside the namespace they count
 *    this job's loopback traffic only; lo counts every packet once as sent
 *    and once as received, so tx_bytes is the traffic) before and after each
 *    call, with a barrier on each side, and payload = the sum over ranks of
 *    bytes_sent_inter_group (= the sum of bytes_received_inter_group, checked
 *    exactly) must satisfy payload <= lo bytes <= 1.10·payload + 64 KiB.
 *    Shared-memory traffic never crosses lo, so every byte lo carried went
 *    between nodes: TCP/IP headers (66 bytes a segment of up to 64 KiB with
 *    lo's MTU: ~0.1 %), ACKs, OpenMPI's fragment headers and rendezvous
 *    messages (< 1 %), and a fixed part per call: the library's agreement
 *    round and the measurement's barriers (a few KiB; the largest seen is
 *    printed). Below the payload would mean bytes counted as inter-group that
 *    did not cross (or went through shared memory); above the bound, bytes
 *    that crossed but were not counted.
 *  - The forward of one ring: rank r's inter-group bytes are all it sends
 *    if r + 1 is on another node, else 0; of the double ring (every block
 *    goes to every rank under a causal zigzag mask, blocks of one size):
 *    (Q - 1) of each rank's P - 1 blocks cross, Q = number of groups.
 *
 * Fault mode (c_cluster fault TIMEOUT [N]): a double-ring BURST plan with
 * timeout_seconds = TIMEOUT calls forward + backward in a loop (N = 4096
 * tokens, 4 heads, d = 64); after the first round and a barrier, rank 0
 * creates the file $BURST_CLUSTER_TRIGGER (cluster.sh starts the fault clock
 * then). Each rank that gets an error prints
 *   "survivor rank R: STATUS after S s (call K, fwd|bwd): MESSAGE"
 * (S = seconds since that call started), calls once more on the poisoned
 * plan ("survivor rank R: again STATUS after S s"), destroys the plan and the
 * context, prints "survivor rank R: destroyed" and exits with _exit(0)
 * without MPI_Finalize (a communicator with a dead or unreachable member
 * cannot be finalized). mpirun ends the whole job when the first rank leaves
 * that way, so a survivor first waits (at most TIMEOUT + 5 s) until every
 * rank listed in $C_CLUSTER_SURVIVORS has written "destroyed" (or "HUNG") to
 * its report file; without that list it waits 2 s. A rank that sees no error
 * within 120 s exits 1. A watchdog (SIGALRM, TIMEOUT + 10 s after a call
 * started) catches a call that does not return: it prints
 *   "survivor rank R: HUNG: call K (fwd|bwd) has not returned after S s"
 * and the stack (backtrace_symbols_fd: exported names only, enough to tell
 * MPI's frames from the library's) and exits 3.
 * scripts/cluster_faults.sh runs the faults and checks the lines.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* backtrace */
#include <burst_attention.h>
#include <mpi.h>

#include <execinfo.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "variant_reference.h"
#define CLIENT_NAME "c_cluster"
#include "mpi_client.h"

#define LO_SLACK_FACTOR 1.10
#define LO_SLACK_BYTES 65536.0

static int g_node[16];   /* node of each rank (the world rank of its node's first rank) */
static int g_rpn;        /* ranks per node */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* lo's transmitted bytes in this network namespace (-1 if unreadable). */
static double lo_bytes(void) {
  char line[512];
  double value = -1;
  FILE *f = fopen("/proc/net/dev", "r");
  if (!f) return -1;
  while (fgets(line, sizeof line, f)) {
    char *p = line;
    unsigned long long v[16];
    while (*p == ' ') ++p;
    if (strncmp(p, "lo:", 3) != 0) continue;
    if (sscanf(p + 3, "%llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
               &v[6], &v[7], &v[8]) == 9)
      value = (double)v[8];
  }
  fclose(f);
  return value;
}

static const char *const pattern_names[] = {"BURST", "RING", "ALLGATHER", "ULYSSES", "AUTO"};

static int shard(const vcase *c, int64_t H, size_t elem, const void *full, void *local) {
  burst_status st = burst_shard(c->dist, c->N, NULL, 0, g_size, g_rank, c->batch, (int64_t)elem * c->d * H, full, local);
  if (st != BURST_OK) { fail("burst_shard: %s", burst_last_error()); return 0; }
  return 1;
}

/* The test data: global inputs, the float64 reference (BSHD doubles) and
 * this rank's shards of all of them. */
typedef struct data {
  vcase c;
  int64_t n;                                   /* this rank's tokens */
  size_t lq, ll;                               /* local elements of q-like tensors, of lse */
  float *q, *k, *v, *dout;                     /* local inputs */
  double *wout, *wlse, *wdq, *wdk, *wdv;       /* local reference */
  double mo, mq, mk, mv;                       /* max |reference| over the whole sequence */
} data;

static void make_data(data *t, int64_t N) {
  vcase c = {"", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BSHD, 1, -1, -1, 4, 4, 1, 32, 0, NULL, 0};
  size_t nq, nl, i;
  double *cq, *ck, *cv, *cdo, *cout, *clse, *cdq, *cdk, *cdv, *ud;
  float *uf;
  c.N = N;
  t->c = c;
  nq = (size_t)(c.batch * c.hq * N * c.d); nl = (size_t)(c.batch * c.hq * N);
  if (burst_shard_positions(c.dist, N, NULL, 0, g_size, g_rank, NULL, 0, &t->n) != BURST_OK)
    fail("burst_shard_positions: %s", burst_last_error());
  t->lq = (size_t)(c.batch * c.hq * t->n * c.d); t->ll = (size_t)(c.batch * c.hq * t->n);
  cq = xcalloc(nq, 8); ck = xcalloc(nq, 8); cv = xcalloc(nq, 8); cdo = xcalloc(nq, 8);
  cout = xcalloc(nq, 8); cdq = xcalloc(nq, 8); cdk = xcalloc(nq, 8); cdv = xcalloc(nq, 8); clse = xcalloc(nl, 8);
  for (i = 0; i < nq; ++i) { cq[i] = vref_value(1, i); ck[i] = vref_value(2, i); cv[i] = vref_value(3, i); cdo[i] = vref_value(4, i); }
  vref_reference(&t->c, cq, ck, cv, cdo, cout, clse, cdq, cdk, cdv);
  t->mo = max_abs(cout, nq); t->mq = max_abs(cdq, nq); t->mk = max_abs(cdk, nq); t->mv = max_abs(cdv, nq);
  uf = xcalloc(nq, 4); ud = xcalloc(nq, 8);
  t->q = xcalloc(t->lq, 4); t->k = xcalloc(t->lq, 4); t->v = xcalloc(t->lq, 4); t->dout = xcalloc(t->lq, 4);
  t->wout = xcalloc(t->lq, 8); t->wdq = xcalloc(t->lq, 8); t->wdk = xcalloc(t->lq, 8); t->wdv = xcalloc(t->lq, 8);
  t->wlse = xcalloc(t->ll, 8);
  vref_to_user(&t->c, c.hq, cq, uf, NULL); shard(&t->c, c.hq, 4, uf, t->q);
  vref_to_user(&t->c, c.hq, ck, uf, NULL); shard(&t->c, c.hq, 4, uf, t->k);
  vref_to_user(&t->c, c.hq, cv, uf, NULL); shard(&t->c, c.hq, 4, uf, t->v);
  vref_to_user(&t->c, c.hq, cdo, uf, NULL); shard(&t->c, c.hq, 4, uf, t->dout);
  vref_to_user(&t->c, c.hq, cout, NULL, ud); shard(&t->c, c.hq, 8, ud, t->wout);
  vref_to_user(&t->c, c.hq, cdq, NULL, ud); shard(&t->c, c.hq, 8, ud, t->wdq);
  vref_to_user(&t->c, c.hq, cdk, NULL, ud); shard(&t->c, c.hq, 8, ud, t->wdk);
  vref_to_user(&t->c, c.hq, cdv, NULL, ud); shard(&t->c, c.hq, 8, ud, t->wdv);
  /* lse is [b][h][t] in both the reference and the library */
  if (burst_shard(c.dist, N, NULL, 0, g_size, g_rank, c.batch * c.hq, 8, clse, t->wlse) != BURST_OK)
    fail("burst_shard lse: %s", burst_last_error());
  free(cq); free(ck); free(cv); free(cdo); free(cout); free(clse); free(cdq); free(cdk); free(cdv); free(uf); free(ud);
}

static void free_data(data *t) {
  free(t->q); free(t->k); free(t->v); free(t->dout);
  free(t->wout); free(t->wlse); free(t->wdq); free(t->wdk); free(t->wdv);
}

static double g_worst_overhead = 0; /* largest lo bytes - payload seen */

/* The call's inter-group payload summed over the ranks against lo's bytes
 * `lo` (rank 0's reading; collective). */
static void check_wire(const char *call, const burst_stats *s, double lo) {
  unsigned long long mine[2], sum[2];
  mine[0] = s->bytes_sent_inter_group; mine[1] = s->bytes_received_inter_group;
  MPI_Reduce(mine, sum, 2, MPI_UNSIGNED_LONG_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
  if (g_rank != 0) return;
  if (sum[0] != sum[1]) fail("%s: inter-group bytes sent %llu != received %llu over the ranks", call, sum[0], sum[1]);
  if (lo < 0) { fail("%s: cannot read lo's counters in /proc/net/dev", call); return; }
  printf("c_cluster [%s] %s: inter-group payload %llu B, lo carried %.0f B (%+.0f B, x%.4f)\n", g_case, call, sum[0], lo,
         lo - (double)sum[0], sum[0] ? lo / (double)sum[0] : 0.0);
  if (lo - (double)sum[0] > g_worst_overhead) g_worst_overhead = lo - (double)sum[0];
  if (!(lo >= (double)sum[0]))
    fail("%s: lo carried %.0f bytes, less than the %llu inter-group payload bytes the ranks counted", call, lo, sum[0]);
  if (!(lo <= LO_SLACK_FACTOR * (double)sum[0] + LO_SLACK_BYTES))
    fail("%s: lo carried %.0f bytes, more than %.2f x the %llu inter-group payload bytes + %.0f", call, lo,
         LO_SLACK_FACTOR, sum[0], LO_SLACK_BYTES);
}

static double lo_before(void) {
  double b = 0;
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank == 0) b = lo_bytes();
  MPI_Barrier(MPI_COMM_WORLD);
  return b;
}

static double lo_after(double before) {
  MPI_Barrier(MPI_COMM_WORLD);
  return g_rank == 0 ? lo_bytes() - before : 0;
}

static void run_case(burst_context *ctx, const data *t, int pattern, int group, int expect_group) {
  char name[128];
  burst_attention_config cfg;
  burst_plan *plan = NULL;
  burst_stats s0, sf, sb;
  burst_status st;
  float *out = xcalloc(t->lq, 4), *lse = xcalloc(t->ll, 4), *dq = xcalloc(t->lq, 4), *dk = xcalloc(t->lq, 4),
        *dv = xcalloc(t->lq, 4);
  double lo_f, lo_b, b;
  int P = g_size, Q = expect_group > 0 ? g_size / expect_group : 1;

  snprintf(name, sizeof name, "%s intra_group_size=%d N=%ld", pattern_names[pattern], group, (long)t->c.N);
  g_case = name;
  burst_attention_config_init(&cfg);
  cfg.mask = BURST_MASK_CAUSAL; cfg.distribution = BURST_DISTRIBUTION_ZIGZAG; cfg.pattern = pattern;
  cfg.batch = t->c.batch; cfg.seq_len_local = t->n; cfg.num_heads_q = t->c.hq; cfg.num_heads_kv = t->c.hkv;
  cfg.head_dim = t->c.d; cfg.num_threads = 1; cfg.intra_group_size = group; cfg.timeout_seconds = 120;
  st = burst_plan_create(ctx, &cfg, &plan);
  if (st != BURST_OK) { fail("plan_create: %s: %s", burst_status_string(st), burst_last_error()); goto done; }
  memset(&s0, 0, sizeof s0); memset(&sf, 0, sizeof sf); memset(&sb, 0, sizeof sb);
  s0.struct_size = sf.struct_size = sb.struct_size = sizeof(burst_stats);
  burst_plan_stats(plan, &s0);
  if (s0.pattern != pattern) fail("stats.pattern = %d before the first call", (int)s0.pattern);
  if (expect_group > 0 && s0.intra_group_size != expect_group)
    fail("stats.intra_group_size = %d before the first call, expected %d", (int)s0.intra_group_size, expect_group);

  b = lo_before();
  st = burst_forward(plan, t->q, t->k, t->v, out, lse);
  lo_f = lo_after(b);
  if (st != BURST_OK) { fail("forward: %s: %s", burst_status_string(st), burst_last_error()); goto done; }
  burst_plan_stats(plan, &sf);
  b = lo_before();
  st = burst_backward(plan, t->q, t->k, t->v, out, lse, t->dout, dq, dk, dv);
  lo_b = lo_after(b);
  if (st != BURST_OK) { fail("backward: %s: %s", burst_status_string(st), burst_last_error()); goto done; }
  burst_plan_stats(plan, &sb);

  {
    double eo = max_err(out, t->wout, t->lq), el = max_err(lse, t->wlse, t->ll);
    double eq = max_err(dq, t->wdq, t->lq), ek = max_err(dk, t->wdk, t->lq), ev = max_err(dv, t->wdv, t->lq);
    if (!(eo <= 1e-5 * t->mo)) fail("out error %.3e > 1e-5 * %.3e", eo, t->mo);
    if (!(el <= 1e-4)) fail("lse error %.3e", el);
    if (!(eq <= 1e-4 * t->mq)) fail("dq error %.3e > 1e-4 * %.3e", eq, t->mq);
    if (!(ek <= 1e-4 * t->mk)) fail("dk error %.3e > 1e-4 * %.3e", ek, t->mk);
    if (!(ev <= 1e-4 * t->mv)) fail("dv error %.3e > 1e-4 * %.3e", ev, t->mv);
  }
  if (sb.pattern != pattern) fail("stats.pattern = %d", (int)sb.pattern);
  if (expect_group > 0 && (sf.intra_group_size != expect_group || sb.intra_group_size != expect_group))
    fail("stats.intra_group_size = %d / %d, expected %d", (int)sf.intra_group_size, (int)sb.intra_group_size,
         expect_group);
  if (sf.bytes_sent_inter_group > sf.bytes_sent || sb.bytes_sent_inter_group > sb.bytes_sent ||
      sf.bytes_received_inter_group > sf.bytes_received || sb.bytes_received_inter_group > sb.bytes_received)
    fail("more inter-group bytes than bytes");
  /* The forward's rules for the ring patterns (every block reaches every rank
   * under causal zigzag; equal shards). */
  if (pattern <= BURST_PATTERN_RING && expect_group == P) {
    uint64_t want = g_node[(g_rank + 1) % P] != g_node[g_rank] ? sf.bytes_sent : 0;
    if (sf.bytes_sent_inter_group != want)
      fail("one ring, forward: %llu inter-group bytes sent, expected %llu (the next rank is on %s node)",
           (unsigned long long)sf.bytes_sent_inter_group, (unsigned long long)want, want ? "another" : "this");
    if (sf.bytes_sent_inter_group == 0 && g_node[(g_rank + 1) % P] != g_node[g_rank])
      fail("one ring: no inter-group bytes reported");
  } else if (pattern <= BURST_PATTERN_RING && expect_group > 0) {
    if (sf.bytes_sent_inter_group * (uint64_t)(P - 1) != sf.bytes_sent * (uint64_t)(Q - 1))
      fail("double ring, forward: %llu of %llu bytes sent cross groups, expected (Q-1)/(P-1) = %d/%d of them",
           (unsigned long long)sf.bytes_sent_inter_group, (unsigned long long)sf.bytes_sent, Q - 1, P - 1);
  }
  if (g_rank == 0)
    printf("c_cluster [%s] rank 0: intra_group_size %d, fwd bytes %llu (inter %llu), bwd bytes %llu (inter %llu)\n",
           name, (int)sb.intra_group_size, (unsigned long long)sf.bytes_sent, (unsigned long long)sf.bytes_sent_inter_group,
           (unsigned long long)sb.bytes_sent, (unsigned long long)sb.bytes_sent_inter_group);
  check_wire("forward", &sf, lo_f);
  check_wire("backward", &sb, lo_b);
done:
  burst_plan_destroy(plan);
  free(out); free(lse); free(dq); free(dk); free(dv);
}

/* The measurement's own traffic: two barriers around nothing (printed). */
static void baseline(void) {
  double b = lo_before(), lo = lo_after(b);
  if (g_rank == 0) printf("c_cluster: barriers alone: lo carried %.0f B\n", lo);
}

static int check_topology(void) {
  MPI_Comm shm;
  int local, leader, r, nodes = 0, ok = 1;
  const char *env_nodes = getenv("BURST_CLUSTER_NODES"), *env_rpn = getenv("BURST_CLUSTER_RANKS_PER_NODE");
  int want_nodes = env_nodes ? atoi(env_nodes) : 2, want_rpn = env_rpn ? atoi(env_rpn) : 2;
  char name[MPI_MAX_PROCESSOR_NAME];
  int len;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &shm);
  MPI_Comm_size(shm, &local);
  leader = g_rank;
  MPI_Bcast(&leader, 1, MPI_INT, 0, shm);
  MPI_Allgather(&leader, 1, MPI_INT, g_node, 1, MPI_INT, MPI_COMM_WORLD);
  MPI_Comm_free(&shm);
  MPI_Get_processor_name(name, &len);
  for (r = 0; r < g_size; ++r) if (g_node[r] == r) ++nodes;
  if (g_rank == 0) printf("c_cluster: %d ranks on %d nodes (rank 0 on %s)\n", g_size, nodes, name);
  g_case = "topology";
  if (g_size != want_nodes * want_rpn || nodes != want_nodes || local != want_rpn) {
    fail("expected %d nodes of %d ranks (run under scripts/cluster.sh), got %d ranks, %d nodes, %d on this one",
         want_nodes, want_rpn, g_size, nodes, local);
    ok = 0;
  }
  for (r = 0; r < g_size; ++r)
    if (g_node[r] != (r / want_rpn) * want_rpn) ok = 0;
  if (!ok && g_rank == 0) fail("the nodes are not runs of consecutive ranks");
  g_rpn = local;
  return ok;
}

/* ------------------------------------------------------------------ faults */
static FILE *g_report; /* $C_CLUSTER_REPORT.R, or NULL */

/* A line on stdout and, with C_CLUSTER_REPORT set, in this rank's report file
 * (stdout reaches mpirun through the orted over lo: not while lo is down). */
static void say(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  fflush(stdout);
  if (g_report) {
    va_start(ap, fmt);
    vfprintf(g_report, fmt, ap);
    va_end(ap);
    fflush(g_report);
  }
}

/* The watchdog: what the call in flight is, for the SIGALRM handler. */
static volatile sig_atomic_t g_call_number;
static volatile sig_atomic_t g_call_backward;
static int g_report_fd = -1;

static void write_both(const char *text, size_t length) {
  ssize_t ignored = write(STDOUT_FILENO, text, length);
  if (g_report_fd >= 0) ignored = write(g_report_fd, text, length);
  (void)ignored;
}

/* SIGALRM: a call has not returned TIMEOUT + 10 s after it started (its
 * deadline is TIMEOUT): say so, with the stack, and leave. snprintf is not
 * async-signal-safe in theory; this rank is stuck and about to exit anyway. */
static void on_watchdog(int sig) {
  char line[256];
  void *frames[64];
  int n, count;
  (void)sig;
  n = snprintf(line, sizeof line, "survivor rank %d: HUNG: call %d (%s) has not returned (watchdog)\n", g_rank,
               (int)g_call_number, g_call_backward ? "bwd" : "fwd");
  if (n > 0) write_both(line, (size_t)n);
  count = backtrace(frames, 64);
  backtrace_symbols_fd(frames, count, STDOUT_FILENO);
  if (g_report_fd >= 0) backtrace_symbols_fd(frames, count, g_report_fd);
  _exit(3);
}

static void arm_watchdog(double timeout, long call, int backward) {
  g_call_number = (sig_atomic_t)call;
  g_call_backward = backward;
  alarm((unsigned)(timeout + 10.5));
}

/* Whether every rank listed in $C_CLUSTER_SURVIVORS ("0 1") has written
 * "destroyed" or "HUNG" to its report file (true without a list). */
static int survivors_done(const char *report) {
  const char *list = getenv("C_CLUSTER_SURVIVORS"), *p;
  char path[4096], line[512];
  if (!list || !report || !*report) return 1;
  for (p = list; *p;) {
    char *end;
    long r = strtol(p, &end, 10);
    FILE *f;
    int done = 0;
    if (end == p) { ++p; continue; }
    p = end;
    snprintf(path, sizeof path, "%s.%ld", report, r);
    f = fopen(path, "r");
    if (f) {
      while (!done && fgets(line, sizeof line, f)) done = strstr(line, ": destroyed") || strstr(line, ": HUNG:");
      fclose(f);
    }
    if (!done) return 0;
  }
  return 1;
}

static int fault_mode(burst_context *ctx, double timeout, int64_t N) {
  burst_attention_config cfg;
  burst_plan *plan = NULL;
  int64_t n;
  size_t elems, i;
  float *x, *out, *lse, *dq, *dk, *dv;
  burst_status st = BURST_OK;
  double start = 0, t0;
  long call;
  const char *kind = "fwd";
  const char *trigger = getenv("BURST_CLUSTER_TRIGGER"), *report = getenv("C_CLUSTER_REPORT");

  if (report && *report) {
    char path[4096];
    snprintf(path, sizeof path, "%s.%d", report, g_rank);
    g_report = fopen(path, "w");
    if (g_report) g_report_fd = fileno(g_report);
  }
  {
    struct sigaction sa;
    void *frame[1];
    backtrace(frame, 1); /* loads libgcc now, not in the handler */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_watchdog;
    sigaction(SIGALRM, &sa, NULL);
  }

  burst_shard_positions(BURST_DISTRIBUTION_ZIGZAG, N, NULL, 0, g_size, g_rank, NULL, 0, &n);
  burst_attention_config_init(&cfg);
  cfg.mask = BURST_MASK_CAUSAL; cfg.distribution = BURST_DISTRIBUTION_ZIGZAG;
  cfg.batch = 1; cfg.seq_len_local = n; cfg.num_heads_q = cfg.num_heads_kv = 4; cfg.head_dim = 64;
  cfg.num_threads = 1; cfg.timeout_seconds = timeout;
  if (burst_plan_create(ctx, &cfg, &plan) != BURST_OK) {
    fprintf(stderr, "rank %d: plan: %s\n", g_rank, burst_last_error());
    return 2;
  }
  elems = (size_t)n * 4 * 64;
  x = xcalloc(elems, 4); out = xcalloc(elems, 4); dq = xcalloc(elems, 4); dk = xcalloc(elems, 4); dv = xcalloc(elems, 4);
  lse = xcalloc((size_t)n * 4, 4);
  for (i = 0; i < elems; ++i) x[i] = (float)vref_value(5, i + (size_t)g_rank * elems);
  t0 = now();
  st = burst_forward(plan, x, x, x, out, lse);
  if (st == BURST_OK) st = burst_backward(plan, x, x, x, out, lse, x, dq, dk, dv);
  say("rank %d: first forward+backward %s in %.2f s\n", g_rank, burst_status_string(st), now() - t0);
  if (st != BURST_OK) return 1;
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank == 0 && trigger) {
    FILE *f = fopen(trigger, "w");
    if (f) fclose(f);
    else fprintf(stderr, "rank 0: cannot create the trigger %s\n", trigger);
  }
  t0 = now();
  for (call = 1; now() - t0 < 120; ++call) {
    kind = "fwd";
    start = now();
    arm_watchdog(timeout, call, 0);
    st = burst_forward(plan, x, x, x, out, lse);
    alarm(0);
    if (st != BURST_OK) break;
    kind = "bwd";
    start = now();
    arm_watchdog(timeout, call, 1);
    st = burst_backward(plan, x, x, x, out, lse, x, dq, dk, dv);
    alarm(0);
    if (st != BURST_OK) break;
  }
  if (st == BURST_OK) {
    say("rank %d: no error in %ld calls over 120 s\n", g_rank, call);
    _exit(1);
  }
  say("survivor rank %d: %s after %.2f s (call %ld, %s): %s\n", g_rank, burst_status_string(st), now() - start, call,
      kind, burst_last_error());
  start = now();
  arm_watchdog(timeout, call + 1, 0);
  st = burst_forward(plan, x, x, x, out, lse);
  alarm(0);
  say("survivor rank %d: again %s after %.2f s\n", g_rank, burst_status_string(st), now() - start);
  burst_plan_destroy(plan);
  burst_context_destroy(ctx);
  say("survivor rank %d: destroyed\n", g_rank);
  free(x); free(out); free(lse); free(dq); free(dk); free(dv);
  /* mpirun ends the whole job when the first rank leaves without
   * MPI_Finalize: let the other survivors report first. */
  if (getenv("C_CLUSTER_SURVIVORS") && report && *report) {
    t0 = now();
    while (!survivors_done(report) && now() - t0 < timeout + 5) usleep(20000);
    usleep(200000); /* their last lines on their way through the orted */
  } else {
    sleep(2);
  }
  if (g_report) fclose(g_report);
  _exit(0);
}

int main(int argc, char **argv) {
  burst_context *ctx = NULL;
  int total = 0, fault = argc > 1 && strcmp(argv[1], "fault") == 0;
  int64_t N = 512;
  int provided;

  MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  if (g_size > 16) { if (g_rank == 0) fprintf(stderr, "at most 16 ranks\n"); MPI_Abort(MPI_COMM_WORLD, 2); }
  if (burst_context_create_mpi((int64_t)MPI_Comm_c2f(MPI_COMM_WORLD), &ctx) != BURST_OK) {
    fprintf(stderr, "context: %s\n", burst_last_error());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  if (fault) {
    double timeout = argc > 2 ? atof(argv[2]) : 10;
    return fault_mode(ctx, timeout, argc > 3 ? atoll(argv[3]) : 4096);
  }
  if (argc > 1) N = atoll(argv[1]);
  if (check_topology()) {
    data t;
    make_data(&t, N);
    baseline();
    run_case(ctx, &t, BURST_PATTERN_BURST, g_size, g_size);   /* one ring over both nodes */
    run_case(ctx, &t, BURST_PATTERN_RING, g_size, g_size);
    run_case(ctx, &t, BURST_PATTERN_BURST, 0, g_rpn);         /* the double ring, groups detected */
    run_case(ctx, &t, BURST_PATTERN_RING, 0, g_rpn);
    run_case(ctx, &t, BURST_PATTERN_ALLGATHER, 0, g_size);
    if (t.c.hkv % g_size == 0) run_case(ctx, &t, BURST_PATTERN_ULYSSES, 0, g_size);
    free_data(&t);
    if (g_rank == 0) printf("c_cluster: largest lo overhead over the payload: %.0f B\n", g_worst_overhead);
  }
  burst_context_destroy(ctx);
  MPI_Allreduce(&g_failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  printf("c_cluster rank %d/%d: %s - %d local failures\n", g_rank, g_size, total ? "FAILED" : "ok", g_failures);
  MPI_Finalize();
  return total ? 1 : 0;
}
