/*
 * c_transport_threads.c — a transport the caller supplies (0.9,
 * burst_context_create_transport) over threads of one process, no MPI:
 * P threads, each a rank, talk through an in-memory mailbox written here
 * (one mutex; per-rank queues of arrived messages and of posted receives,
 * matched in the order they were started as the header asks; allgathers
 * matched by tag and sequence number).
 *
 *   c_transport_threads P      (P = 2, 3 or 4; 1..8 work)
 *
 * Every rank runs BURST with a causal zigzag, forward and backward, and
 * compares its shard with the float64 reference of variant_reference.h
 * (c_variants.c's tolerances), for a 4/4-head BSHD case and a 4/2 GQA BHSD
 * case of batch 2. The same plans on loopback contexts
 * (burst_context_create_loopback: the same schedule over another transport)
 * must give the same bits. The transport checks the header's contract
 * (callbacks only on the rank's own thread, peers and tags in range, no
 * test after done, release at most once and never after done, nothing in
 * flight at destroy(user), destroy(user) exactly once, after the context
 * and its plans are gone). The transport sets no flag: it is thread-safe.
 */
#define _POSIX_C_SOURCE 200809L
#include <burst_attention.h>

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "variant_reference.h"

#define MAXP 8
static int g_P;
static pthread_mutex_t g_print = PTHREAD_MUTEX_INITIALIZER;
static int g_failures;

static void fail(int rank, const char *what, const char *fmt, ...) {
  va_list ap;
  pthread_mutex_lock(&g_print);
  ++g_failures;
  fprintf(stderr, "c_transport_threads rank %d/%d FAIL [%s]: ", rank, g_P, what);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  pthread_mutex_unlock(&g_print);
}

static void *xcalloc(size_t count, size_t size) {
  void *p = calloc(count ? count : 1, size);
  if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
  return p;
}

/* ======================================================================== */
/* The mailbox.                                                              */

enum { K_SEND, K_RECV, K_GATHER };
enum { S_ACTIVE, S_DONE, S_RELEASED };
#define TREQ_MAGIC 0x74726571u

typedef struct msg {
  struct msg *next;
  int32_t src, tag;
  size_t bytes;
  unsigned char *data;
} msg;

typedef struct gather {
  struct gather *next;
  int32_t tag;
  long seq;
  size_t bytes;
  int joined, refs, bad;
  unsigned char *data;
} gather;

struct tport;
typedef struct treq {
  uint32_t magic;
  int kind, state, matched, error;
  struct tport *owner;
  void *buffer;             /* receive: the library's buffer; gather: its receive */
  size_t bytes;
  int32_t peer, tag;
  struct treq *next_posted; /* the owner's unmatched receives, in posting order */
  gather *g;
} treq;

typedef struct mailbox {
  pthread_mutex_t mu;
  int P;
  msg *inbox[MAXP], *inbox_tail[MAXP];      /* arrived, unmatched: per destination, in arrival order */
  treq *posted[MAXP], *posted_tail[MAXP];   /* posted, unmatched receives, in posting order */
  gather *gathers;
  int32_t gtag[MAXP][32];
  long gcount[MAXP][32];
  int ngtag[MAXP];
} mailbox;

typedef struct tport {
  mailbox *mb;
  int rank;
  pthread_t thread;
  long n_destroy, n_release, n_calls, violations, active_at_destroy;
  char message[200];
  treq **reqs;
  size_t nreqs, capreqs;
} tport;

static void violation(tport *t, const char *fmt, ...) {
  va_list ap;
  char text[300];
  ++t->violations;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  fail(t->rank, "transport contract", "%s", text);
}

static treq *new_req(tport *t, int kind) {
  treq *r = xcalloc(1, sizeof *r);
  r->magic = TREQ_MAGIC;
  r->kind = kind;
  r->state = S_ACTIVE;
  r->owner = t;
  if (t->nreqs == t->capreqs) {
    treq **n;
    t->capreqs = t->capreqs ? 2 * t->capreqs : 256;
    n = realloc(t->reqs, t->capreqs * sizeof *n);
    if (!n) { fprintf(stderr, "out of memory\n"); exit(2); }
    t->reqs = n;
  }
  t->reqs[t->nreqs++] = r;
  return r;
}

static int enter(tport *t, const char *callback) {
  ++t->n_calls;
  if (t->n_destroy > 0) violation(t, "%s called after destroy(user) started", callback);
  if (!pthread_equal(pthread_self(), t->thread)) {
    violation(t, "%s called from a thread that is not rank %d's", callback, t->rank);
    return 0;
  }
  return 1;
}

static int check_message(tport *t, const char *callback, int32_t peer, int32_t tag, void **request) {
  if (!request) { violation(t, "%s with request = NULL", callback); return 0; }
  if (peer < 0 || peer >= t->mb->P || peer == t->rank) { violation(t, "%s with peer %d", callback, (int)peer); return 0; }
  if (tag < 0) { violation(t, "%s with tag %d", callback, (int)tag); return 0; }
  return 1;
}

/* Delivers m (from m->src) to the first posted receive of dst that matches,
 * else queues it. Lock held. */
static void deliver(mailbox *mb, int dst, msg *m) {
  treq *r, *prev = NULL;
  for (r = mb->posted[dst]; r; prev = r, r = r->next_posted)
    if (r->peer == m->src && r->tag == m->tag) break;
  if (r) {
    if (m->bytes != r->bytes) r->error = 1;
    else if (m->bytes) memcpy(r->buffer, m->data, m->bytes);
    r->matched = 1;
    if (prev) prev->next_posted = r->next_posted; else mb->posted[dst] = r->next_posted;
    if (mb->posted_tail[dst] == r) mb->posted_tail[dst] = prev;
    free(m->data);
    free(m);
    return;
  }
  m->next = NULL;
  if (mb->inbox_tail[dst]) mb->inbox_tail[dst]->next = m; else mb->inbox[dst] = m;
  mb->inbox_tail[dst] = m;
}

static int tp_isend(void *user, const void *buffer, size_t bytes, int32_t peer, int32_t tag, void **request) {
  tport *t = (tport *)user;
  mailbox *mb = t->mb;
  msg *m;
  treq *r;
  if (!enter(t, "isend") || !check_message(t, "isend", peer, tag, request)) {
    snprintf(t->message, sizeof t->message, "mailbox: bad isend");
    return -1;
  }
  m = xcalloc(1, sizeof *m);
  m->src = t->rank; m->tag = tag; m->bytes = bytes;
  m->data = xcalloc(bytes, 1);
  if (bytes) memcpy(m->data, buffer, bytes);
  pthread_mutex_lock(&mb->mu);
  r = new_req(t, K_SEND); /* buffered: complete at once (reported at the first test) */
  r->bytes = bytes; r->peer = peer; r->tag = tag;
  deliver(mb, peer, m);
  pthread_mutex_unlock(&mb->mu);
  *request = r;
  return 0;
}

static int tp_irecv(void *user, void *buffer, size_t bytes, int32_t peer, int32_t tag, void **request) {
  tport *t = (tport *)user;
  mailbox *mb = t->mb;
  msg *m, *prev = NULL;
  treq *r;
  if (!enter(t, "irecv") || !check_message(t, "irecv", peer, tag, request)) {
    snprintf(t->message, sizeof t->message, "mailbox: bad irecv");
    return -1;
  }
  pthread_mutex_lock(&mb->mu);
  r = new_req(t, K_RECV);
  r->buffer = buffer; r->bytes = bytes; r->peer = peer; r->tag = tag;
  for (m = mb->inbox[t->rank]; m; prev = m, m = m->next)
    if (m->src == peer && m->tag == tag) break;
  if (m) {
    if (prev) prev->next = m->next; else mb->inbox[t->rank] = m->next;
    if (mb->inbox_tail[t->rank] == m) mb->inbox_tail[t->rank] = prev;
    if (m->bytes != bytes) r->error = 1;
    else if (bytes) memcpy(buffer, m->data, bytes);
    r->matched = 1;
    free(m->data);
    free(m);
  } else {
    if (mb->posted_tail[t->rank]) mb->posted_tail[t->rank]->next_posted = r; else mb->posted[t->rank] = r;
    mb->posted_tail[t->rank] = r;
  }
  pthread_mutex_unlock(&mb->mu);
  *request = r;
  return 0;
}

static int tp_iallgather(void *user, const void *send, size_t bytes, void *receive, int32_t tag, void **request) {
  tport *t = (tport *)user;
  mailbox *mb = t->mb;
  gather *g;
  treq *r;
  long seq = 0;
  int i;
  if (!enter(t, "iallgather") || !request) {
    snprintf(t->message, sizeof t->message, "mailbox: bad iallgather");
    return -1;
  }
  pthread_mutex_lock(&mb->mu);
  for (i = 0; i < mb->ngtag[t->rank]; ++i)
    if (mb->gtag[t->rank][i] == tag) break;
  if (i == mb->ngtag[t->rank]) {
    if (i == 32) { pthread_mutex_unlock(&mb->mu); snprintf(t->message, sizeof t->message, "mailbox: too many allgather tags"); return -1; }
    mb->gtag[t->rank][i] = tag; mb->gcount[t->rank][i] = 0; ++mb->ngtag[t->rank];
  }
  seq = ++mb->gcount[t->rank][i];
  for (g = mb->gathers; g; g = g->next)
    if (g->tag == tag && g->seq == seq) break;
  if (!g) {
    g = xcalloc(1, sizeof *g);
    g->tag = tag; g->seq = seq; g->bytes = bytes; g->refs = mb->P;
    g->data = xcalloc((size_t)mb->P * bytes, 1);
    g->next = mb->gathers; mb->gathers = g;
  }
  if (g->bytes != bytes) g->bad = 1;
  else if (bytes) memcpy(g->data + (size_t)t->rank * bytes, send, bytes);
  ++g->joined;
  r = new_req(t, K_GATHER);
  r->g = g; r->buffer = receive; r->bytes = bytes; r->tag = tag;
  pthread_mutex_unlock(&mb->mu);
  *request = r;
  return 0;
}

/* Drops one reference to g; frees it with the last. Lock held. */
static void gather_unref(mailbox *mb, gather *g) {
  gather **p;
  if (--g->refs > 0) return;
  for (p = &mb->gathers; *p; p = &(*p)->next)
    if (*p == g) { *p = g->next; break; }
  free(g->data);
  free(g);
}

static int tp_test(void *user, void *request, int32_t *done) {
  tport *t = (tport *)user;
  mailbox *mb = t->mb;
  treq *r = (treq *)request;
  int rc = 0;
  if (!enter(t, "test") || !done || !r || r->magic != TREQ_MAGIC || r->owner != t) {
    violation(t, "test of %p: not a request of this rank", request);
    snprintf(t->message, sizeof t->message, "mailbox: bad test");
    return -1;
  }
  pthread_mutex_lock(&mb->mu);
  if (r->state != S_ACTIVE) {
    violation(t, "test of a request that is %s", r->state == S_DONE ? "done" : "released");
    rc = -1;
  } else if (r->kind == K_SEND) {
    *done = 1;
  } else if (r->kind == K_RECV) {
    *done = r->matched;
    if (r->matched && r->error) {
      violation(t, "a message for a receive of %zu bytes from %d tag %d had another size", r->bytes, (int)r->peer, (int)r->tag);
      rc = -1;
    }
  } else {
    gather *g = r->g;
    *done = g->joined == mb->P;
    if (g->bad) { violation(t, "allgather tag %d: ranks contributed different byte counts", (int)r->tag); rc = -1; }
    else if (*done) {
      if (r->bytes) memcpy(r->buffer, g->data, (size_t)mb->P * r->bytes);
      r->g = NULL;
      gather_unref(mb, g);
    }
  }
  if (rc == 0 && *done) r->state = S_DONE;
  if (rc != 0) snprintf(t->message, sizeof t->message, "mailbox: test failed"); /* stays active: released next */
  pthread_mutex_unlock(&mb->mu);
  return rc;
}

/* Lock held. */
static void abandon(mailbox *mb, treq *r) {
  if (r->kind == K_RECV && !r->matched) {
    treq *p, *prev = NULL;
    int dst = r->owner->rank;
    for (p = mb->posted[dst]; p; prev = p, p = p->next_posted)
      if (p == r) break;
    if (p) {
      if (prev) prev->next_posted = p->next_posted; else mb->posted[dst] = p->next_posted;
      if (mb->posted_tail[dst] == p) mb->posted_tail[dst] = prev;
    }
  } else if (r->kind == K_GATHER && r->g) {
    gather_unref(mb, r->g);
    r->g = NULL;
  }
}

static void tp_release(void *user, void *request) {
  tport *t = (tport *)user;
  treq *r = (treq *)request;
  ++t->n_release;
  if (!enter(t, "release") || !r || r->magic != TREQ_MAGIC || r->owner != t) {
    violation(t, "release of %p: not a request of this rank", request);
    return;
  }
  pthread_mutex_lock(&t->mb->mu);
  if (r->state != S_ACTIVE) violation(t, "release of a request that is %s", r->state == S_DONE ? "done" : "released");
  else { r->state = S_RELEASED; abandon(t->mb, r); }
  pthread_mutex_unlock(&t->mb->mu);
}

static const char *tp_error_message(void *user) { return ((tport *)user)->message; }

static void tp_destroy(void *user) {
  tport *t = (tport *)user;
  size_t i;
  enter(t, "destroy");
  if (++t->n_destroy > 1) { violation(t, "destroy(user) called %ld times", t->n_destroy); return; }
  pthread_mutex_lock(&t->mb->mu);
  for (i = 0; i < t->nreqs; ++i) {
    if (t->reqs[i]->state == S_ACTIVE) { ++t->active_at_destroy; abandon(t->mb, t->reqs[i]); }
    free(t->reqs[i]);
  }
  pthread_mutex_unlock(&t->mb->mu);
  free(t->reqs);
  t->reqs = NULL; t->nreqs = t->capreqs = 0;
}

static void mailbox_free(mailbox *mb) {
  int r;
  for (r = 0; r < mb->P; ++r) {
    msg *m = mb->inbox[r];
    while (m) { msg *n = m->next; free(m->data); free(m); m = n; }
  }
  while (mb->gathers) { gather *n = mb->gathers->next; free(mb->gathers->data); free(mb->gathers); mb->gathers = n; }
  pthread_mutex_destroy(&mb->mu);
}

/* ======================================================================== */
/* The test.                                                                 */

typedef struct shared_case {
  const vcase *c;
  float *uq, *uk, *uv, *udo;          /* user layout, whole sequence */
  double *rout, *rdq, *rdk, *rdv, *clse;
  double mo, mq, mk, mv;
} shared_case;

typedef struct rank_job {
  int rank;
  mailbox *mb;
  tport tp;
  burst_context *loop_ctx;            /* this rank's loopback context */
  const shared_case *cases;
  int ncases;
} rank_job;

static void make_case(shared_case *s, const vcase *c) {
  const size_t nq = (size_t)(c->batch * c->hq * c->N * c->d), nk = (size_t)(c->batch * c->hkv * c->N * c->d);
  const size_t nl = (size_t)(c->batch * c->hq * c->N);
  double *cq = xcalloc(nq, 8), *ck = xcalloc(nk, 8), *cv = xcalloc(nk, 8), *cdo = xcalloc(nq, 8);
  double *cout = xcalloc(nq, 8), *cdq = xcalloc(nq, 8), *cdk = xcalloc(nk, 8), *cdv = xcalloc(nk, 8);
  size_t i;
  s->c = c;
  for (i = 0; i < nq; ++i) { cq[i] = (double)(float)vref_value(31, i); cdo[i] = (double)(float)vref_value(34, i); }
  for (i = 0; i < nk; ++i) { ck[i] = (double)(float)vref_value(32, i); cv[i] = (double)(float)vref_value(33, i); }
  s->clse = xcalloc(nl, 8);
  vref_reference(c, cq, ck, cv, cdo, cout, s->clse, cdq, cdk, cdv);
  s->uq = xcalloc(nq, 4); s->uk = xcalloc(nk, 4); s->uv = xcalloc(nk, 4); s->udo = xcalloc(nq, 4);
  s->rout = xcalloc(nq, 8); s->rdq = xcalloc(nq, 8); s->rdk = xcalloc(nk, 8); s->rdv = xcalloc(nk, 8);
  vref_to_user(c, c->hq, cq, s->uq, NULL); vref_to_user(c, c->hkv, ck, s->uk, NULL);
  vref_to_user(c, c->hkv, cv, s->uv, NULL); vref_to_user(c, c->hq, cdo, s->udo, NULL);
  vref_to_user(c, c->hq, cout, NULL, s->rout); vref_to_user(c, c->hq, cdq, NULL, s->rdq);
  vref_to_user(c, c->hkv, cdk, NULL, s->rdk); vref_to_user(c, c->hkv, cdv, NULL, s->rdv);
  s->mo = max_abs(cout, nq); s->mq = max_abs(cdq, nq); s->mk = max_abs(cdk, nk); s->mv = max_abs(cdv, nk);
  free(cq); free(ck); free(cv); free(cdo); free(cout); free(cdq); free(cdk); free(cdv);
}

static void free_case(shared_case *s) {
  free(s->uq); free(s->uk); free(s->uv); free(s->udo); free(s->rout); free(s->rdq); free(s->rdk); free(s->rdv); free(s->clse);
}

typedef struct outputs { float *out, *lse, *dq, *dk, *dv; } outputs;

static int shard(int rank, const vcase *c, int64_t H, size_t elem, const void *full, void *local) {
  int64_t outer = c->layout == BURST_LAYOUT_BHSD ? c->batch * H : c->batch;
  int64_t row = (int64_t)elem * c->d * (c->layout == BURST_LAYOUT_BHSD ? 1 : H);
  return burst_shard(c->dist, c->N, c->cu, c->nseq, g_P, rank, outer, row, full, local) == BURST_OK;
}

/* Plan, forward, backward on ctx. */
static int run(int rank, burst_context *ctx, const char *which, const vcase *c, int64_t n, const float *q,
               const float *k, const float *v, const float *dout, outputs *o) {
  burst_attention_config cfg;
  burst_plan *plan = NULL;
  burst_status st;
  burst_attention_config_init(&cfg);
  cfg.layout = c->layout; cfg.mask = BURST_MASK_CAUSAL; cfg.distribution = BURST_DISTRIBUTION_ZIGZAG;
  cfg.pattern = BURST_PATTERN_BURST; cfg.batch = c->batch; cfg.seq_len_local = n;
  cfg.num_heads_q = c->hq; cfg.num_heads_kv = c->hkv; cfg.head_dim = c->d; cfg.num_threads = 1;
  cfg.timeout_seconds = 60;
  st = burst_plan_create(ctx, &cfg, &plan);
  if (st == BURST_OK) st = burst_forward(plan, q, k, v, o->out, o->lse);
  if (st == BURST_OK) st = burst_backward(plan, q, k, v, o->out, o->lse, dout, o->dq, o->dk, o->dv);
  if (st != BURST_OK) fail(rank, c->name, "%s context: %s: %s", which, burst_status_string(st), burst_last_error());
  burst_plan_destroy(plan);
  return st == BURST_OK;
}

static void *rank_main(void *arg) {
  rank_job *j = (rank_job *)arg;
  const int rank = j->rank;
  burst_transport bt;
  burst_context *ctx = NULL;
  int32_t got_rank = -1, got_size = -1;
  burst_status st;
  int ci;

  j->tp.thread = pthread_self();
  memset(&bt, 0, sizeof bt);
  bt.struct_size = sizeof bt;
  bt.rank = rank; bt.size = g_P; bt.flags = 0; bt.nodes = NULL; bt.user = &j->tp;
  bt.isend = tp_isend; bt.irecv = tp_irecv; bt.iallgather = tp_iallgather; bt.test = tp_test;
  bt.release = tp_release; bt.error_message = tp_error_message; bt.destroy = tp_destroy;
  bt.timeout_seconds = 60;
  st = burst_context_create_transport(&bt, &ctx);
  if (st != BURST_OK) { fail(rank, "create", "%s: %s", burst_status_string(st), burst_last_error()); return NULL; }
  if (burst_context_rank(ctx, &got_rank, &got_size) != BURST_OK || got_rank != rank || got_size != g_P)
    fail(rank, "create", "burst_context_rank: %d of %d", (int)got_rank, (int)got_size);

  for (ci = 0; ci < j->ncases; ++ci) {
    const shared_case *s = &j->cases[ci];
    const vcase *c = s->c;
    int64_t n = 0;
    size_t lq, lk, ll;
    float *q, *k, *v, *dout;
    double *wout, *wlse, *wdq, *wdk, *wdv;
    outputs a, b;
    burst_shard_positions(c->dist, c->N, c->cu, c->nseq, g_P, rank, NULL, 0, &n);
    lq = (size_t)(c->batch * c->hq * n * c->d); lk = (size_t)(c->batch * c->hkv * n * c->d); ll = (size_t)(c->batch * c->hq * n);
    q = xcalloc(lq, 4); dout = xcalloc(lq, 4); k = xcalloc(lk, 4); v = xcalloc(lk, 4);
    wout = xcalloc(lq, 8); wdq = xcalloc(lq, 8); wdk = xcalloc(lk, 8); wdv = xcalloc(lk, 8); wlse = xcalloc(ll, 8);
    a.out = xcalloc(lq, 4); a.dq = xcalloc(lq, 4); a.dk = xcalloc(lk, 4); a.dv = xcalloc(lk, 4); a.lse = xcalloc(ll, 4);
    b.out = xcalloc(lq, 4); b.dq = xcalloc(lq, 4); b.dk = xcalloc(lk, 4); b.dv = xcalloc(lk, 4); b.lse = xcalloc(ll, 4);
    if (!shard(rank, c, c->hq, 4, s->uq, q) || !shard(rank, c, c->hkv, 4, s->uk, k) || !shard(rank, c, c->hkv, 4, s->uv, v) ||
        !shard(rank, c, c->hq, 4, s->udo, dout) || !shard(rank, c, c->hq, 8, s->rout, wout) ||
        !shard(rank, c, c->hq, 8, s->rdq, wdq) || !shard(rank, c, c->hkv, 8, s->rdk, wdk) ||
        !shard(rank, c, c->hkv, 8, s->rdv, wdv) ||
        burst_shard(c->dist, c->N, c->cu, c->nseq, g_P, rank, c->batch * c->hq, 8, s->clse, wlse) != BURST_OK)
      fail(rank, c->name, "burst_shard: %s", burst_last_error());
    if (run(rank, ctx, "transport", c, n, q, k, v, dout, &a)) {
      double eo = max_err(a.out, wout, lq), el = max_err(a.lse, wlse, ll);
      double eq = max_err(a.dq, wdq, lq), ek = max_err(a.dk, wdk, lk), ev = max_err(a.dv, wdv, lk);
      if (!(eo <= 1e-5 * s->mo)) fail(rank, c->name, "out error %.3e > 1e-5 * %.3e", eo, s->mo);
      if (!(el <= 1e-4)) fail(rank, c->name, "lse error %.3e", el);
      if (!(eq <= 1e-4 * s->mq)) fail(rank, c->name, "dq error %.3e > 1e-4 * %.3e", eq, s->mq);
      if (!(ek <= 1e-4 * s->mk)) fail(rank, c->name, "dk error %.3e > 1e-4 * %.3e", ek, s->mk);
      if (!(ev <= 1e-4 * s->mv)) fail(rank, c->name, "dv error %.3e > 1e-4 * %.3e", ev, s->mv);
      if (run(rank, j->loop_ctx, "loopback", c, n, q, k, v, dout, &b) &&
          (memcmp(a.out, b.out, lq * 4) || memcmp(a.lse, b.lse, ll * 4) || memcmp(a.dq, b.dq, lq * 4) ||
           memcmp(a.dk, b.dk, lk * 4) || memcmp(a.dv, b.dv, lk * 4)))
        fail(rank, c->name, "results differ from the loopback context's (same schedule, another transport)");
    }
    free(q); free(k); free(v); free(dout); free(wout); free(wdq); free(wdk); free(wdv); free(wlse);
    free(a.out); free(a.dq); free(a.dk); free(a.dv); free(a.lse); free(b.out); free(b.dq); free(b.dk); free(b.dv); free(b.lse);
  }
  if (j->tp.n_destroy != 0) fail(rank, "destroy", "destroy(user) called while the context is alive");
  burst_context_destroy(ctx);
  if (j->tp.n_destroy != 1) fail(rank, "destroy", "destroy(user) called %ld times after the context's destroy", j->tp.n_destroy);
  if (j->tp.active_at_destroy) fail(rank, "destroy", "%ld requests neither done nor released at destroy(user)", j->tp.active_at_destroy);
  if (j->tp.n_release) fail(rank, "destroy", "release called %ld times in runs without error", j->tp.n_release);
  burst_context_destroy(j->loop_ctx);
  return NULL;
}

int main(int argc, char **argv) {
  static const vcase cases[] = {
      {"zigzag causal BSHD 4/4 d=16 N=37", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BSHD, 1, -1, -1, 4, 4, 1, 16, 37, NULL, 0},
      {"zigzag causal GQA 4/2 BHSD d=16 N=53 B=2", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BHSD, 1, -1, -1, 4, 2, 2, 16, 53, NULL, 0},
  };
  enum { NCASES = sizeof cases / sizeof cases[0] };
  shared_case shared[NCASES];
  rank_job jobs[MAXP];
  pthread_t threads[MAXP];
  burst_context *loop[MAXP];
  mailbox mb;
  burst_status st;
  int r, i;

  g_P = argc > 1 ? atoi(argv[1]) : 2;
  if (g_P < 1 || g_P > MAXP) { fprintf(stderr, "usage: c_transport_threads P (1..%d)\n", MAXP); return 2; }
  for (i = 0; i < NCASES; ++i) make_case(&shared[i], &cases[i]);
  memset(&mb, 0, sizeof mb);
  pthread_mutex_init(&mb.mu, NULL);
  mb.P = g_P;
  st = burst_context_create_loopback(g_P, loop);
  if (st != BURST_OK) { fprintf(stderr, "loopback: %s\n", burst_last_error()); return 2; }
  for (r = 0; r < g_P; ++r) {
    memset(&jobs[r], 0, sizeof jobs[r]);
    jobs[r].rank = r;
    jobs[r].mb = &mb;
    jobs[r].tp.mb = &mb;
    jobs[r].tp.rank = r;
    snprintf(jobs[r].tp.message, sizeof jobs[r].tp.message, "mailbox: no error");
    jobs[r].loop_ctx = loop[r];
    jobs[r].cases = shared;
    jobs[r].ncases = NCASES;
  }
  for (r = 0; r < g_P; ++r)
    if (pthread_create(&threads[r], NULL, rank_main, &jobs[r]) != 0) { fprintf(stderr, "pthread_create failed\n"); return 2; }
  for (r = 0; r < g_P; ++r) pthread_join(threads[r], NULL);
  for (r = 0; r < g_P; ++r)
    if (jobs[r].tp.violations) fprintf(stderr, "rank %d: %ld transport contract violations\n", r, jobs[r].tp.violations);
  mailbox_free(&mb);
  for (i = 0; i < NCASES; ++i) free_case(&shared[i]);
  printf("c_transport_threads P=%d: %s - %d cases, %d failures\n", g_P, g_failures ? "FAILED" : "ok", (int)NCASES, g_failures);
  return g_failures ? 1 : 0;
}
