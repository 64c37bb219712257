/*
 * c_transport.c — contexts over a transport the caller supplies (0.9,
 * burst_context_create_transport) from C under mpirun (2, 3 and 4 ranks).
 *
 * The transport under test ("mtrans") is written here over MPI, on its own
 * MPI_Comm_dup of MPI_COMM_WORLD: isend = MPI_Isend of a private copy of the
 * buffer, irecv = MPI_Irecv, iallgather = MPI_Iallgather into a private
 * buffer (copied out when test finds it complete), test = MPI_Test, release
 * = MPI_Cancel + MPI_Wait for a receive, MPI_Request_free for a send (its
 * copy is kept until MPI_Finalize), abandonment for an allgather (its buffers
 * likewise). It checks the header's contract on every call: callbacks only on
 * the thread inside the library call, peers in range and never oneself, tags
 * in [0, 2^31), message sizes that match, requests never tested after test
 * said done, released at most once, never released after done, and at
 * destroy(user) no request left neither done nor released; destroy(user)
 * exactly once, on the calling thread, and no callback after it started. Every
 * callback overwrites the error_message text (the header: it is copied at
 * once), so a library that read it late would show the wrong text.
 *
 * Sections:
 *  1. Correctness. The same inputs through a context from
 *     burst_context_create_mpi and one from burst_context_create_transport
 *     (same schedule, different transport): BURST, RING, ALLGATHER and
 *     ULYSSES, a causal zigzag case and a non-causal contiguous GQA case,
 *     forward and backward, against the float64 reference of
 *     variant_reference.h with c_variants.c's tolerances, and the two results
 *     bit for bit equal (out, lse, dq, dk, dv), with equal byte and message
 *     counters. A second transport context declares `nodes` (two nodes:
 *     ranks [0, ceil(P/2)) and the rest): intra_group_size = 0 must detect
 *     the double ring when the nodes are equal runs (P/2 per node for even P;
 *     one ring for P = 3), bitwise equal to an MPI plan given that
 *     intra_group_size; bytes_*_inter_group count exactly the traffic to and
 *     from the other node (a single ring over the declared nodes: a rank's
 *     forward sends are inter-group iff its successor is on the other node);
 *     with nodes = NULL (one host here) they are 0.
 *  2. KV cache: a prefill through a plan and decodes of T = 1, 3, 1 over the
 *     transport context, bitwise equal to the MPI context's, and against a
 *     float64 model. Then the context is destroyed before a cache and a plan
 *     made on it: destroy(user) runs in the last of the three destroys.
 *  3. Validation: NULL struct or out, unknown struct_size (VERSION), missing
 *     callbacks, rank or size out of range: the documented statuses on the
 *     calling rank with no callback called; a negative node id on every rank
 *     (INVALID_ARGUMENT) and on rank 1 only (INVALID_ARGUMENT there, an error
 *     on the others); a size that differs across ranks, duplicate ranks:
 *     MISMATCH on every rank; one rank out of range: INVALID_ARGUMENT there,
 *     an error on the others within the transport's timeout. destroy(user)
 *     never called when creation fails, and every request the failed round
 *     started released. Cases the header leaves open are printed as NOTEs.
 *  4. Injected failures (skipped with --no-failures, as is the validation
 *     case whose peers time out: memcheck runs it that way, because an
 *     MPI_Iallgather the transport abandons keeps OpenMPI memory for ever):
 *     (a) isend returns -1
 *     on rank 1 at its 3rd call: COMMUNICATION there with the transport's
 *     error_message text in burst_last_error(), an error (TIMEOUT or
 *     COMMUNICATION) on every other rank; (b) rank 1's isend never completes
 *     (test always says not done): an error on every rank, and the abandoned
 *     request released; (c) iallgather fails on rank 1 in burst_plan_create,
 *     and (c') in burst_context_create_transport: errors everywhere; (e) test
 *     returns -1 on rank 1 at its 5th call: COMMUNICATION there with the
 *     text, errors elsewhere, and that request released. Each call
 *     must return within its timeout plus a generous slack (no other timing
 *     assertion); a call after the error must fail too; plan and context are
 *     destroyed and destroy(user) is called exactly once.
 *
 * Library behaviour that differs from the header is printed as FAIL lines
 * naming the rank, the call, the status and the message.
 */
#define _POSIX_C_SOURCE 200809L
#include <burst_attention.h>
#include <mpi.h>

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "variant_reference.h"
#define CLIENT_NAME "c_transport"
#include "mpi_client.h"

static int g_notes;
static int g_tag_ub = 0;
static int g_verbose = 0;

/* Each failing call must return within its timeout plus this (2 busy cores). */
#define SLACK_SECONDS 30.0

/* Behaviour the header leaves open: printed, not a failure. */
static void note(const char *fmt, ...) {
  va_list ap;
  ++g_notes;
  va_start(ap, fmt);
  client_vreport("NOTE ", fmt, ap);
  va_end(ap);
}

static void info(const char *fmt, ...) {
  va_list ap;
  if (!g_verbose) return;
  va_start(ap, fmt);
  client_vreport("", fmt, ap);
  va_end(ap);
}

/* Buffers MPI may still own (a send released before it completed, an
 * abandoned allgather): freed after MPI_Finalize. */
static void **g_grave;
static size_t g_ngrave, g_capgrave;

static void bury(void *p) {
  if (!p) return;
  if (g_ngrave == g_capgrave) {
    void **n;
    g_capgrave = g_capgrave ? 2 * g_capgrave : 64;
    n = realloc(g_grave, g_capgrave * sizeof *n);
    if (!n) { fprintf(stderr, "out of memory\n"); MPI_Abort(MPI_COMM_WORLD, 2); }
    g_grave = n;
  }
  g_grave[g_ngrave++] = p;
}

/* ======================================================================== */
/* The transport under test: MPI point-to-point and MPI_Iallgather.         */

#define MREQ_MAGIC 0x6d726571u
enum { K_SEND, K_RECV, K_GATHER, K_HOLE };
enum { S_ACTIVE, S_DONE, S_RELEASED, S_NEVER_STARTED };
static const char *const k_kind_names[] = {"isend", "irecv", "iallgather", "isend (never completes)"};
static const char *const k_state_names[] = {"active", "done", "released", "never started"};

struct mtrans;
typedef struct mreq {
  uint32_t magic;
  int kind, state;
  MPI_Request req;
  void *copy;        /* send: the bytes sent; gather: this rank's contribution */
  void *tmp;         /* gather: size * bytes from MPI */
  void *dest;        /* gather: the library's receive buffer */
  size_t bytes;
  int32_t peer, tag;
  int test_failed;   /* test returned an error for it: it must be released */
  struct mtrans *owner;
} mreq;

typedef struct mtrans {
  MPI_Comm comm;
  int open;
  int32_t declared_rank, declared_size;
  pthread_t thread;
  /* calls */
  long n_isend, n_irecv, n_gather, n_test, n_release, n_destroy, n_errmsg;
  /* injected faults: the k-th call (1-based) after arming; 0 = off */
  long fail_isend_at, hole_isend_at, fail_gather_at, fail_test_at;
  long armed_isend, armed_gather, armed_test;
  mreq *failed_test;            /* the request whose test was made to fail */
  int failed_test_released;
  long holes, holes_released;
  long released_active; /* releases of requests that were still in flight */
  long violations;
  long active_at_destroy;
  char message[256];
  mreq **reqs;
  size_t nreqs, capreqs;
} mtrans;

static void violation(mtrans *t, const char *fmt, ...) {
  va_list ap;
  char text[512];
  ++t->violations;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  fail("transport contract: %s", text);
}

/* At the start of every callback but error_message. The header: the text
 * of error_message is copied at once (it need only stay valid until the
 * transport's next callback), so every callback overwrites it; a library
 * that read it late would show this text instead of the failure's. */
static void check_thread(mtrans *t, const char *callback) {
  if (!pthread_equal(pthread_self(), t->thread))
    violation(t, "%s called from a thread that is not the one inside the library call", callback);
  if (t->n_destroy > 0) violation(t, "%s called after destroy(user) started", callback);
  snprintf(t->message, sizeof t->message, "mtrans: (overwritten by a later %s callback)", callback);
}

static int mpi_failed(mtrans *t, int err, const char *what) {
  char s[MPI_MAX_ERROR_STRING];
  int n = 0;
  MPI_Error_string(err, s, &n);
  snprintf(t->message, sizeof t->message, "mtrans rank %d: %s failed: %.160s", g_rank, what, s);
  return -1;
}

static mreq *new_req(mtrans *t, int kind) {
  mreq *r = xcalloc(1, sizeof *r);
  r->magic = MREQ_MAGIC;
  r->kind = kind;
  r->state = S_ACTIVE;
  r->req = MPI_REQUEST_NULL;
  r->owner = t;
  if (t->nreqs == t->capreqs) {
    mreq **n;
    t->capreqs = t->capreqs ? 2 * t->capreqs : 256;
    n = realloc(t->reqs, t->capreqs * sizeof *n);
    if (!n) { fprintf(stderr, "out of memory\n"); MPI_Abort(MPI_COMM_WORLD, 2); }
    t->reqs = n;
  }
  t->reqs[t->nreqs++] = r;
  return r;
}

static mreq *as_req(mtrans *t, void *request, const char *callback) {
  mreq *r = (mreq *)request;
  if (!r || r->magic != MREQ_MAGIC || r->owner != t) {
    violation(t, "%s given %p, not a request of this transport", callback, request);
    snprintf(t->message, sizeof t->message, "mtrans: %s given an unknown request", callback);
    return NULL;
  }
  return r;
}

static int check_message(mtrans *t, const char *callback, size_t bytes, int32_t peer, int32_t tag, void **request) {
  if (!request) { violation(t, "%s with request = NULL", callback); return 0; }
  if (peer < 0 || peer >= t->declared_size || peer == t->declared_rank) {
    violation(t, "%s to/from peer %d (size %d, rank %d)", callback, (int)peer, (int)t->declared_size, (int)t->declared_rank);
    return 0;
  }
  if (tag < 0 || tag > g_tag_ub) { violation(t, "%s with tag %d outside [0, MPI_TAG_UB %d]", callback, (int)tag, g_tag_ub); return 0; }
  if (bytes > (size_t)INT_MAX) { violation(t, "%s of %zu bytes (this test transport takes up to INT_MAX)", callback, bytes); return 0; }
  return 1;
}

static int mt_isend(void *user, const void *buffer, size_t bytes, int32_t peer, int32_t tag, void **request) {
  mtrans *t = (mtrans *)user;
  mreq *r;
  int err;
  check_thread(t, "isend");
  ++t->n_isend;
  if (!check_message(t, "isend", bytes, peer, tag, request)) {
    snprintf(t->message, sizeof t->message, "mtrans: bad isend arguments");
    return -1;
  }
  if (bytes && !buffer) violation(t, "isend of %zu bytes from NULL", bytes);
  if (t->fail_isend_at || t->hole_isend_at) {
    long k = ++t->armed_isend;
    if (k == t->fail_isend_at) {
      snprintf(t->message, sizeof t->message,
               "mtrans: injected isend failure on rank %d (call %ld after arming, peer %d, tag %d)", g_rank, k,
               (int)peer, (int)tag);
      return -1;
    }
    if (k == t->hole_isend_at) {
      r = new_req(t, K_HOLE);
      r->bytes = bytes; r->peer = peer; r->tag = tag;
      ++t->holes;
      *request = r;
      return 0;
    }
  }
  r = new_req(t, K_SEND);
  r->bytes = bytes; r->peer = peer; r->tag = tag;
  r->copy = xcalloc(bytes, 1);
  if (bytes) memcpy(r->copy, buffer, bytes);
  err = MPI_Isend(r->copy, (int)bytes, MPI_BYTE, peer, tag, t->comm, &r->req);
  if (err != MPI_SUCCESS) {
    r->state = S_NEVER_STARTED;
    free(r->copy); r->copy = NULL;
    return mpi_failed(t, err, "MPI_Isend");
  }
  *request = r;
  return 0;
}

static int mt_irecv(void *user, void *buffer, size_t bytes, int32_t peer, int32_t tag, void **request) {
  mtrans *t = (mtrans *)user;
  mreq *r;
  int err;
  check_thread(t, "irecv");
  ++t->n_irecv;
  if (!check_message(t, "irecv", bytes, peer, tag, request)) {
    snprintf(t->message, sizeof t->message, "mtrans: bad irecv arguments");
    return -1;
  }
  if (bytes && !buffer) violation(t, "irecv of %zu bytes into NULL", bytes);
  r = new_req(t, K_RECV);
  r->bytes = bytes; r->peer = peer; r->tag = tag;
  err = MPI_Irecv(buffer, (int)bytes, MPI_BYTE, peer, tag, t->comm, &r->req);
  if (err != MPI_SUCCESS) { r->state = S_NEVER_STARTED; return mpi_failed(t, err, "MPI_Irecv"); }
  *request = r;
  return 0;
}

static int mt_iallgather(void *user, const void *send, size_t bytes, void *receive, int32_t tag, void **request) {
  mtrans *t = (mtrans *)user;
  mreq *r;
  int err;
  check_thread(t, "iallgather");
  ++t->n_gather;
  if (!request) { violation(t, "iallgather with request = NULL"); return -1; }
  if (tag < 0) violation(t, "iallgather with tag %d < 0", (int)tag);
  if (bytes > 65536) violation(t, "iallgather of %zu bytes (the header: a few KiB at most)", bytes);
  if (bytes && (!send || !receive)) violation(t, "iallgather of %zu bytes with a NULL buffer", bytes);
  if (t->fail_gather_at) {
    long k = ++t->armed_gather;
    if (k == t->fail_gather_at) {
      snprintf(t->message, sizeof t->message, "mtrans: injected iallgather failure on rank %d (call %ld after arming, tag %d)",
               g_rank, k, (int)tag);
      return -1;
    }
  }
  r = new_req(t, K_GATHER);
  r->bytes = bytes; r->tag = tag; r->dest = receive;
  r->copy = xcalloc(bytes, 1);
  if (bytes) memcpy(r->copy, send, bytes);
  r->tmp = xcalloc((size_t)g_size * bytes, 1);
  err = MPI_Iallgather(r->copy, (int)bytes, MPI_BYTE, r->tmp, (int)bytes, MPI_BYTE, t->comm, &r->req);
  if (err != MPI_SUCCESS) {
    r->state = S_NEVER_STARTED;
    free(r->copy); free(r->tmp); r->copy = r->tmp = NULL;
    return mpi_failed(t, err, "MPI_Iallgather");
  }
  *request = r;
  return 0;
}

static int mt_test(void *user, void *request, int32_t *done) {
  mtrans *t = (mtrans *)user;
  mreq *r;
  int flag = 0, err;
  MPI_Status status;
  check_thread(t, "test");
  ++t->n_test;
  if (!done) { violation(t, "test with done = NULL"); return -1; }
  if (!(r = as_req(t, request, "test"))) return -1;
  if (r->state != S_ACTIVE) {
    violation(t, "test of a %s request that is %s (the library must never pass it again)", k_kind_names[r->kind],
              k_state_names[r->state]);
    snprintf(t->message, sizeof t->message, "mtrans: test of a request that is %s", k_state_names[r->state]);
    return -1;
  }
  if (r->test_failed) {
    snprintf(t->message, sizeof t->message, "mtrans: test of a request whose test failed before");
    return -1;
  }
  if (t->fail_test_at && r->kind != K_HOLE && ++t->armed_test == t->fail_test_at) {
    r->test_failed = 1;
    t->failed_test = r;
    snprintf(t->message, sizeof t->message, "mtrans: injected test failure on rank %d (call %ld after arming, %s)",
             g_rank, t->armed_test, k_kind_names[r->kind]);
    return -1;
  }
  if (r->kind == K_HOLE) { *done = 0; return 0; }
  err = MPI_Test(&r->req, &flag, &status);
  if (err != MPI_SUCCESS) return mpi_failed(t, err, "MPI_Test");
  if (!flag) { *done = 0; return 0; }
  if (r->kind == K_RECV) {
    int count = -1;
    MPI_Get_count(&status, MPI_BYTE, &count);
    if (count != (int)r->bytes) {
      violation(t, "irecv of %zu bytes from %d tag %d got a message of %d bytes", r->bytes, (int)r->peer, (int)r->tag,
                count);
      snprintf(t->message, sizeof t->message, "mtrans: message size mismatch");
      r->test_failed = 1; /* still to be released (the header) */
      return -1;
    }
  } else if (r->kind == K_GATHER) {
    /* The library's receive holds declared_size * bytes: the real ranks'
     * contributions, zeros for declared ranks that do not exist. */
    size_t have = (size_t)(t->declared_size < g_size ? t->declared_size : g_size) * r->bytes;
    if (r->bytes) {
      memcpy(r->dest, r->tmp, have);
      if ((size_t)t->declared_size * r->bytes > have)
        memset((char *)r->dest + have, 0, (size_t)t->declared_size * r->bytes - have);
    }
  }
  free(r->copy); free(r->tmp); r->copy = r->tmp = NULL;
  r->state = S_DONE;
  *done = 1;
  return 0;
}

/* Abandons an active request so that its buffer is never touched again. */
static void abandon(mreq *r) {
  int flag = 0;
  switch (r->kind) {
  case K_HOLE:
    break;
  case K_SEND: /* our own copy: let MPI finish (or not) with it in the background */
    MPI_Test(&r->req, &flag, MPI_STATUS_IGNORE);
    if (flag) { free(r->copy); r->copy = NULL; break; }
    MPI_Cancel(&r->req);
    MPI_Request_free(&r->req);
    bury(r->copy); r->copy = NULL;
    break;
  case K_RECV: /* the library's buffer: cancel, and wait for the cancel (or the message) */
    MPI_Test(&r->req, &flag, MPI_STATUS_IGNORE);
    if (!flag) {
      MPI_Cancel(&r->req);
      MPI_Wait(&r->req, MPI_STATUS_IGNORE);
    }
    break;
  case K_GATHER: /* a collective cannot be cancelled or freed: leave it, keep its buffers */
    MPI_Test(&r->req, &flag, MPI_STATUS_IGNORE);
    if (flag) { free(r->copy); free(r->tmp); }
    else { bury(r->copy); bury(r->tmp); }
    r->copy = r->tmp = NULL;
    break;
  }
}

static void mt_release(void *user, void *request) {
  mtrans *t = (mtrans *)user;
  mreq *r;
  check_thread(t, "release");
  ++t->n_release;
  if (!(r = as_req(t, request, "release"))) return;
  if (r->state == S_DONE) {
    violation(t, "release of a %s request that test reported done", k_kind_names[r->kind]);
    return;
  }
  if (r->state != S_ACTIVE) {
    violation(t, "release of a %s request that is %s", k_kind_names[r->kind], k_state_names[r->state]);
    return;
  }
  r->state = S_RELEASED;
  ++t->released_active;
  if (r->kind == K_HOLE) ++t->holes_released;
  if (r == t->failed_test) t->failed_test_released = 1;
  abandon(r);
}

static const char *mt_error_message(void *user) {
  mtrans *t = (mtrans *)user;
  ++t->n_errmsg;
  return t->message;
}

/* Frees everything; requests still active are counted (a contract violation
 * when called from destroy) and abandoned. */
static void mt_cleanup(mtrans *t) {
  size_t i;
  t->active_at_destroy = 0;
  for (i = 0; i < t->nreqs; ++i) {
    mreq *r = t->reqs[i];
    if (r->state == S_ACTIVE) {
      ++t->active_at_destroy;
      abandon(r);
    }
    free(r);
  }
  free(t->reqs);
  t->reqs = NULL; t->nreqs = t->capreqs = 0;
  if (t->open) MPI_Comm_free(&t->comm);
  t->open = 0;
}

static void mt_destroy(void *user) {
  mtrans *t = (mtrans *)user;
  check_thread(t, "destroy");
  if (++t->n_destroy > 1) { violation(t, "destroy(user) called %ld times", t->n_destroy); return; }
  mt_cleanup(t);
}

/* Collective over MPI_COMM_WORLD (MPI_Comm_dup). */
static void mt_open(mtrans *t) {
  memset(t, 0, sizeof *t);
  MPI_Comm_dup(MPI_COMM_WORLD, &t->comm);
  MPI_Comm_set_errhandler(t->comm, MPI_ERRORS_RETURN);
  t->open = 1;
  t->declared_rank = g_rank;
  t->declared_size = g_size;
  t->thread = pthread_self();
  snprintf(t->message, sizeof t->message, "mtrans: no error");
}

static void mt_fill(burst_transport *bt, mtrans *t, const int32_t *nodes, double timeout) {
  memset(bt, 0, sizeof *bt);
  bt->struct_size = sizeof *bt;
  bt->rank = g_rank;
  bt->size = g_size;
  bt->flags = BURST_TRANSPORT_SINGLE_THREADED; /* MPI_THREAD_SINGLE */
  bt->nodes = nodes;
  bt->user = t;
  bt->isend = mt_isend;
  bt->irecv = mt_irecv;
  bt->iallgather = mt_iallgather;
  bt->test = mt_test;
  bt->release = mt_release;
  bt->error_message = mt_error_message;
  bt->destroy = mt_destroy;
  bt->timeout_seconds = timeout;
}

/* After a context's destroy: destroy(user) once, nothing left in flight, no violation. */
static void check_destroyed(mtrans *t, const char *what) {
  if (t->n_destroy != 1) fail("%s: destroy(user) called %ld times after the context was destroyed, expected once", what, t->n_destroy);
  if (t->active_at_destroy != 0)
    fail("%s: %ld requests neither reported done by test nor released when destroy(user) was called", what,
         t->active_at_destroy);
}

/* ======================================================================== */
/* 1. Correctness: the MPI context and the transport context, bit for bit.  */

static void shard(const vcase *c, int64_t H, size_t elem, const void *full, void *local) {
  int64_t outer = c->layout == BURST_LAYOUT_BHSD ? c->batch * H : c->batch;
  int64_t row = (int64_t)elem * c->d * (c->layout == BURST_LAYOUT_BHSD ? 1 : H);
  burst_status st = burst_shard(c->dist, c->N, c->cu, c->nseq, g_size, g_rank, outer, row, full, local);
  if (st != BURST_OK) fail("burst_shard: %s: %s", burst_status_string(st), burst_last_error());
}


typedef struct result {
  float *out, *lse, *dq, *dk, *dv;
  burst_stats f, b;
  int ok;
} result;

static const char *const k_pattern_names[] = {"BURST", "RING", "ALLGATHER", "ULYSSES", "AUTO"};

/* One plan on ctx: create, forward, backward, stats. */
static void run_plan(burst_context *ctx, const char *which, const vcase *c, int pattern, int intra, int64_t n,
                     const float *q, const float *k, const float *v, const float *dout, result *res) {
  const size_t lq = (size_t)(c->batch * c->hq * n * c->d), lk = (size_t)(c->batch * c->hkv * n * c->d);
  const size_t ll = (size_t)(c->batch * c->hq * n);
  burst_attention_config cfg;
  burst_plan *plan = NULL;
  burst_status st;
  res->out = xcalloc(lq, 4); res->dq = xcalloc(lq, 4); res->dk = xcalloc(lk, 4); res->dv = xcalloc(lk, 4);
  res->lse = xcalloc(ll, 4);
  res->ok = 0;
  memset(&res->f, 0, sizeof res->f); memset(&res->b, 0, sizeof res->b);
  res->f.struct_size = res->b.struct_size = sizeof(burst_stats);
  burst_attention_config_init(&cfg);
  cfg.layout = c->layout; cfg.mask = c->causal ? BURST_MASK_CAUSAL : BURST_MASK_NONE;
  cfg.distribution = c->dist; cfg.pattern = pattern; cfg.batch = c->batch; cfg.seq_len_local = n;
  cfg.num_heads_q = c->hq; cfg.num_heads_kv = c->hkv; cfg.head_dim = c->d;
  cfg.window_left = c->wl; cfg.window_right = c->wr; cfg.cu_seqlens = c->cu; cfg.num_sequences = c->nseq;
  cfg.num_threads = 1; cfg.intra_group_size = intra; cfg.timeout_seconds = 120;
  st = burst_plan_create(ctx, &cfg, &plan);
  if (st != BURST_OK) { fail("%s context: burst_plan_create: %s: %s", which, burst_status_string(st), burst_last_error()); return; }
  st = burst_forward(plan, q, k, v, res->out, res->lse);
  if (st != BURST_OK) { fail("%s context: burst_forward: %s: %s", which, burst_status_string(st), burst_last_error()); goto done; }
  if (burst_plan_stats(plan, &res->f) != BURST_OK) fail("%s context: burst_plan_stats: %s", which, burst_last_error());
  st = burst_backward(plan, q, k, v, res->out, res->lse, dout, res->dq, res->dk, res->dv);
  if (st != BURST_OK) { fail("%s context: burst_backward: %s: %s", which, burst_status_string(st), burst_last_error()); goto done; }
  if (burst_plan_stats(plan, &res->b) != BURST_OK) fail("%s context: burst_plan_stats: %s", which, burst_last_error());
  res->ok = 1;
done:
  burst_plan_destroy(plan);
}

static void free_result(result *r) { free(r->out); free(r->lse); free(r->dq); free(r->dk); free(r->dv); }

enum { INTER_ZERO,  /* one node: no inter-group byte */
       INTER_RING,  /* a single ring over declared nodes: forward sends to the successor */
       INTER_SPLIT  /* two declared nodes, any schedule: consistent, and both kinds present */ };

static void check_stats_equal(const char *phase, const burst_stats *m, const burst_stats *t) {
  if (m->bytes_sent != t->bytes_sent || m->bytes_received != t->bytes_received || m->messages_sent != t->messages_sent)
    fail("%s stats differ: MPI context sent %llu received %llu in %llu messages, transport context %llu %llu in %llu",
         phase, (unsigned long long)m->bytes_sent, (unsigned long long)m->bytes_received,
         (unsigned long long)m->messages_sent, (unsigned long long)t->bytes_sent,
         (unsigned long long)t->bytes_received, (unsigned long long)t->messages_sent);
  if (m->steps_computed != t->steps_computed || m->steps_skipped != t->steps_skipped ||
      m->tiles_computed != t->tiles_computed || m->tiles_skipped != t->tiles_skipped)
    fail("%s stats differ in steps/tiles: MPI %llu/%llu %llu/%llu, transport %llu/%llu %llu/%llu", phase,
         (unsigned long long)m->steps_computed, (unsigned long long)m->steps_skipped,
         (unsigned long long)m->tiles_computed, (unsigned long long)m->tiles_skipped,
         (unsigned long long)t->steps_computed, (unsigned long long)t->steps_skipped,
         (unsigned long long)t->tiles_computed, (unsigned long long)t->tiles_skipped);
  if (m->pattern != t->pattern || m->intra_group_size != t->intra_group_size)
    fail("%s stats differ: MPI pattern %d intra_group_size %d, transport pattern %d intra_group_size %d", phase,
         (int)m->pattern, (int)m->intra_group_size, (int)t->pattern, (int)t->intra_group_size);
  if (m->bytes_sent_inter_group != 0 || m->bytes_received_inter_group != 0)
    fail("%s: the MPI context (one node) reports inter-group bytes %llu / %llu", phase,
         (unsigned long long)m->bytes_sent_inter_group, (unsigned long long)m->bytes_received_inter_group);
}

static void check_inter(const char *phase, const burst_stats *s, int mode, const int32_t *nodes, int forward_ring) {
  unsigned long long sent = s->bytes_sent, recv = s->bytes_received;
  unsigned long long is = s->bytes_sent_inter_group, ir = s->bytes_received_inter_group;
  if (is > sent || ir > recv)
    fail("%s: inter-group bytes (%llu sent, %llu received) exceed the totals (%llu, %llu)", phase, is, ir, sent, recv);
  if (mode == INTER_ZERO && (is || ir))
    fail("%s: one node, yet inter-group bytes %llu sent %llu received", phase, is, ir);
  if (mode == INTER_RING && forward_ring) {
    const int succ = (g_rank + 1) % g_size, pred = (g_rank + g_size - 1) % g_size;
    unsigned long long want_s = nodes[succ] != nodes[g_rank] ? sent : 0;
    unsigned long long want_r = nodes[pred] != nodes[g_rank] ? recv : 0;
    if (is != want_s || ir != want_r)
      fail("%s: single ring over nodes (this rank on node %d, successor %d on %d, predecessor %d on %d): "
           "inter-group sent %llu (expected %llu of %llu), received %llu (expected %llu of %llu)",
           phase, (int)nodes[g_rank], succ, (int)nodes[succ], pred, (int)nodes[pred], is, want_s, sent, ir, want_r, recv);
  }
  if (mode == INTER_SPLIT || mode == INTER_RING) {
    unsigned long long mine[4] = {is, ir, sent - is, recv - ir}, all[4];
    MPI_Allreduce(mine, all, 4, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    if (all[0] != all[1] || all[2] != all[3])
      fail("%s: over all ranks inter-group sent %llu != received %llu, or intra sent %llu != received %llu", phase,
           all[0], all[1], all[2], all[3]);
    if (g_rank == 0 && all[0] + all[2] > 0 && all[0] == 0)
      fail("%s: two declared nodes, but no rank counted an inter-group byte (%llu bytes in all)", phase, all[2]);
  }
}

/* The case through both contexts. intra_mpi / intra_tr: the plans'
 * intra_group_size; expect_intra >= 0: the transport plan's stats must
 * report it. */
static void run_pair(burst_context *ctx_mpi, int intra_mpi, burst_context *ctx_tr, int intra_tr, const char *ctx_name,
                     const vcase *c, int pattern, int expect_intra, int inter_mode, const int32_t *nodes) {
  const int64_t N = c->N, D = c->d;
  const size_t nq = (size_t)(c->batch * c->hq * N * D), nk = (size_t)(c->batch * c->hkv * N * D);
  const size_t nl = (size_t)(c->batch * c->hq * N);
  char label[256];
  int64_t n = 0;
  size_t lq, lk, ll, i;
  double *cq = xcalloc(nq, 8), *ck = xcalloc(nk, 8), *cv = xcalloc(nk, 8), *cdo = xcalloc(nq, 8);
  double *cout = xcalloc(nq, 8), *clse = xcalloc(nl, 8), *cdq = xcalloc(nq, 8), *cdk = xcalloc(nk, 8), *cdv = xcalloc(nk, 8);
  float *uq = xcalloc(nq, 4), *uk = xcalloc(nk, 4), *uv = xcalloc(nk, 4), *udo = xcalloc(nq, 4);
  double *rout = xcalloc(nq, 8), *rdq = xcalloc(nq, 8), *rdk = xcalloc(nk, 8), *rdv = xcalloc(nk, 8);
  float *q, *k, *v, *dout;
  double *wout, *wlse, *wdq, *wdk, *wdv;
  result rm, rt;
  const int ring = pattern == BURST_PATTERN_BURST || pattern == BURST_PATTERN_RING;

  snprintf(label, sizeof label, "%s %s, %s, intra_group_size %d (MPI %d)", c->name, k_pattern_names[pattern], ctx_name,
           intra_tr, intra_mpi);
  g_case = label;
  if (burst_shard_positions(c->dist, N, c->cu, c->nseq, g_size, g_rank, NULL, 0, &n) != BURST_OK)
    fail("burst_shard_positions: %s", burst_last_error());
  for (i = 0; i < nq; ++i) { cq[i] = vref_value(11, i); cdo[i] = vref_value(14, i); }
  for (i = 0; i < nk; ++i) { ck[i] = vref_value(12, i); cv[i] = vref_value(13, i); }
  /* the reference takes the float inputs the library gets */
  for (i = 0; i < nq; ++i) { cq[i] = (double)(float)cq[i]; cdo[i] = (double)(float)cdo[i]; }
  for (i = 0; i < nk; ++i) { ck[i] = (double)(float)ck[i]; cv[i] = (double)(float)cv[i]; }
  vref_reference(c, cq, ck, cv, cdo, cout, clse, cdq, cdk, cdv);
  vref_to_user(c, c->hq, cq, uq, NULL); vref_to_user(c, c->hkv, ck, uk, NULL);
  vref_to_user(c, c->hkv, cv, uv, NULL); vref_to_user(c, c->hq, cdo, udo, NULL);
  vref_to_user(c, c->hq, cout, NULL, rout); vref_to_user(c, c->hq, cdq, NULL, rdq);
  vref_to_user(c, c->hkv, cdk, NULL, rdk); vref_to_user(c, c->hkv, cdv, NULL, rdv);
  lq = (size_t)(c->batch * c->hq * n * D); lk = (size_t)(c->batch * c->hkv * n * D); ll = (size_t)(c->batch * c->hq * n);
  q = xcalloc(lq, 4); dout = xcalloc(lq, 4); k = xcalloc(lk, 4); v = xcalloc(lk, 4);
  wout = xcalloc(lq, 8); wdq = xcalloc(lq, 8); wdk = xcalloc(lk, 8); wdv = xcalloc(lk, 8); wlse = xcalloc(ll, 8);
  shard(c, c->hq, 4, uq, q); shard(c, c->hkv, 4, uk, k); shard(c, c->hkv, 4, uv, v); shard(c, c->hq, 4, udo, dout);
  shard(c, c->hq, 8, rout, wout); shard(c, c->hq, 8, rdq, wdq); shard(c, c->hkv, 8, rdk, wdk); shard(c, c->hkv, 8, rdv, wdv);
  if (burst_shard(c->dist, N, c->cu, c->nseq, g_size, g_rank, c->batch * c->hq, 8, clse, wlse) != BURST_OK)
    fail("burst_shard lse: %s", burst_last_error());

  run_plan(ctx_mpi, "MPI", c, pattern, intra_mpi, n, q, k, v, dout, &rm);
  run_plan(ctx_tr, "transport", c, pattern, intra_tr, n, q, k, v, dout, &rt);
  if (rt.ok) {
    double mo = max_abs(cout, nq), mq = max_abs(cdq, nq), mk = max_abs(cdk, nk), mv = max_abs(cdv, nk);
    double eo = max_err(rt.out, wout, lq), el = max_err(rt.lse, wlse, ll);
    double eq = max_err(rt.dq, wdq, lq), ek = max_err(rt.dk, wdk, lk), ev = max_err(rt.dv, wdv, lk);
    if (!(eo <= 1e-5 * mo)) fail("out error %.3e > 1e-5 * %.3e", eo, mo);
    if (!(el <= 1e-4)) fail("lse error %.3e", el);
    if (!(eq <= 1e-4 * mq)) fail("dq error %.3e > 1e-4 * %.3e", eq, mq);
    if (!(ek <= 1e-4 * mk)) fail("dk error %.3e > 1e-4 * %.3e", ek, mk);
    if (!(ev <= 1e-4 * mv)) fail("dv error %.3e > 1e-4 * %.3e", ev, mv);
    info("errors out %.2e lse %.2e dq %.2e dk %.2e dv %.2e; fwd sent %llu (inter %llu) bwd sent %llu (inter %llu), intra %d",
         eo, el, eq, ek, ev, (unsigned long long)rt.f.bytes_sent, (unsigned long long)rt.f.bytes_sent_inter_group,
         (unsigned long long)rt.b.bytes_sent, (unsigned long long)rt.b.bytes_sent_inter_group, (int)rt.f.intra_group_size);
  }
  if (rm.ok && rt.ok) {
    if (memcmp(rm.out, rt.out, lq * 4) || memcmp(rm.lse, rt.lse, ll * 4) || memcmp(rm.dq, rt.dq, lq * 4) ||
        memcmp(rm.dk, rt.dk, lk * 4) || memcmp(rm.dv, rt.dv, lk * 4))
      fail("results differ from the MPI context's (same schedule, different transport): out %s lse %s dq %s dk %s dv %s",
           memcmp(rm.out, rt.out, lq * 4) ? "differs" : "same", memcmp(rm.lse, rt.lse, ll * 4) ? "differs" : "same",
           memcmp(rm.dq, rt.dq, lq * 4) ? "differs" : "same", memcmp(rm.dk, rt.dk, lk * 4) ? "differs" : "same",
           memcmp(rm.dv, rt.dv, lk * 4) ? "differs" : "same");
    check_stats_equal("forward", &rm.f, &rt.f);
    check_stats_equal("backward", &rm.b, &rt.b);
    if (rt.f.pattern != pattern) fail("stats pattern %d, the plan's %d", (int)rt.f.pattern, pattern);
    if (expect_intra >= 0 && (rt.f.intra_group_size != expect_intra || rt.b.intra_group_size != expect_intra))
      fail("intra_group_size %d in the stats (forward), %d (backward); expected %d", (int)rt.f.intra_group_size,
           (int)rt.b.intra_group_size, expect_intra);
  }
  /* collective (MPI_Allreduce inside): every rank calls it, whatever its plan did */
  check_inter("forward", &rt.f, inter_mode, nodes, ring);
  check_inter("backward", &rt.b, inter_mode, nodes, 0);

  free_result(&rm); free_result(&rt);
  free(cq); free(ck); free(cv); free(cdo); free(cout); free(clse); free(cdq); free(cdk); free(cdv);
  free(uq); free(uk); free(uv); free(udo); free(rout); free(rdq); free(rdk); free(rdv);
  free(q); free(k); free(v); free(dout); free(wout); free(wlse); free(wdq); free(wdk); free(wdv);
}

static const vcase k_zigzag = {"zigzag causal BSHD 12/12 d=8 N=40", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BSHD, 1, -1,
                               -1, 12, 12, 1, 8, 40, NULL, 0};
static const vcase k_gqa = {"contiguous non-causal GQA 24/12 BHSD d=8 N=41 B=2", BURST_DISTRIBUTION_CONTIGUOUS,
                            BURST_LAYOUT_BHSD, 0, -1, -1, 24, 12, 2, 8, 41, NULL, 0};

static void section_correctness(burst_context *ctx_mpi) {
  static const int patterns[] = {BURST_PATTERN_BURST, BURST_PATTERN_RING, BURST_PATTERN_ALLGATHER, BURST_PATTERN_ULYSSES};
  const vcase *cases[] = {&k_zigzag, &k_gqa};
  mtrans t_host, t_nodes;
  burst_transport bt;
  burst_context *ctx_host = NULL, *ctx_nodes = NULL;
  int32_t nodes[16];
  int32_t rank = -1, size = -1;
  int detect, p, c, r;
  burst_status st;

  g_case = "create (nodes NULL)";
  mt_open(&t_host);
  mt_fill(&bt, &t_host, NULL, 60);
  st = burst_context_create_transport(&bt, &ctx_host);
  if (st != BURST_OK) { fail("burst_context_create_transport: %s: %s", burst_status_string(st), burst_last_error()); return; }
  if (t_host.n_destroy != 0) fail("destroy(user) called by a successful create");
  if (t_host.n_gather < 1) fail("creation ran no iallgather round (the header: one round)");
  info("creation: %ld iallgather, %ld isend, %ld irecv, %ld test", t_host.n_gather, t_host.n_isend, t_host.n_irecv, t_host.n_test);
  if (burst_context_rank(ctx_host, &rank, &size) != BURST_OK || rank != g_rank || size != g_size)
    fail("burst_context_rank: %d of %d, expected %d of %d", (int)rank, (int)size, g_rank, g_size);
  /* Two declared nodes: ranks [0, ceil(P/2)) and the rest. Equal runs (even P):
   * intra_group_size = 0 detects P/2; P = 3 (runs 2 and 1): one ring. */
  for (r = 0; r < g_size; ++r) nodes[r] = r < (g_size + 1) / 2 ? 0 : 1;
  detect = g_size % 2 == 0 ? g_size / 2 : g_size;
  g_case = "create (two declared nodes)";
  mt_open(&t_nodes);
  mt_fill(&bt, &t_nodes, nodes, 60);
  st = burst_context_create_transport(&bt, &ctx_nodes);
  nodes[0] = 77; /* the library copied them: changing ours must not matter */
  nodes[0] = 0;
  if (st != BURST_OK) {
    fail("burst_context_create_transport with nodes: %s: %s", burst_status_string(st), burst_last_error());
    burst_context_destroy(ctx_host);
    return;
  }

  for (p = 0; p < 4; ++p)
    for (c = 0; c < 2; ++c) {
      if (patterns[p] == BURST_PATTERN_ULYSSES && cases[c]->hkv % g_size) continue;
      /* one host: MPI and nodes = NULL both detect a single ring */
      run_pair(ctx_mpi, 0, ctx_host, 0, "nodes NULL", cases[c], patterns[p], g_size, INTER_ZERO, NULL);
    }
  for (p = 0; p < 2; ++p)
    for (c = 0; c < 2; ++c) {
      /* detection over the declared nodes; the MPI plan is told the same value */
      run_pair(ctx_mpi, detect, ctx_nodes, 0, "two declared nodes", cases[c], patterns[p], detect,
               detect == g_size ? INTER_RING : INTER_SPLIT, nodes);
    }
  /* a single ring over the declared nodes: exactly the successor's node decides */
  run_pair(ctx_mpi, g_size, ctx_nodes, g_size, "two declared nodes", &k_zigzag, BURST_PATTERN_BURST, g_size, INTER_RING,
           nodes);
  run_pair(ctx_mpi, g_size, ctx_nodes, g_size, "two declared nodes", &k_gqa, BURST_PATTERN_RING, g_size, INTER_RING, nodes);
  /* ALLGATHER and ULYSSES over the nodes: consistent inter-group counts; they
   * run no ring, so the stats report intra_group_size = the world size */
  run_pair(ctx_mpi, 0, ctx_nodes, 0, "two declared nodes", &k_gqa, BURST_PATTERN_ALLGATHER, g_size, INTER_SPLIT, nodes);
  if (k_zigzag.hkv % g_size == 0)
    run_pair(ctx_mpi, 0, ctx_nodes, 0, "two declared nodes", &k_zigzag, BURST_PATTERN_ULYSSES, g_size, INTER_SPLIT, nodes);

  g_case = "destroy";
  if (t_host.violations || t_nodes.violations) fail("transport contract violations (above)");
  burst_context_destroy(ctx_host);
  burst_context_destroy(ctx_nodes);
  check_destroyed(&t_host, "nodes NULL context");
  check_destroyed(&t_nodes, "declared nodes context");
  if (t_host.released_active || t_nodes.released_active)
    fail("requests released in runs without error: %ld and %ld", t_host.released_active, t_nodes.released_active);
}

/* ======================================================================== */
/* 2. KV cache decode over the transport, bitwise the MPI context's.        */

enum { KV_N = 29, KV_HQ = 4, KV_HKV = 2, KV_D = 16, KV_STEPS = 3, KV_MAXT = 3 };
static const int64_t k_kv_T[KV_STEPS] = {1, 3, 1};

typedef struct kv_result {
  float out[KV_STEPS][KV_MAXT * KV_HQ * KV_D];
  float lse[KV_STEPS][KV_HQ * KV_MAXT];
  burst_stats stats[KV_STEPS];
  int ok;
} kv_result;

static double kv_input(int what, int step, size_t i) { return (double)(float)vref_value(100 + 10 * (uint64_t)what + (uint64_t)step, i); }

static void run_kv(burst_context *ctx, const char *which, kv_result *res) {
  const int64_t id = 7;
  const size_t kv_row = (size_t)KV_HKV * KV_D;
  burst_kv_cache_config kc;
  burst_kv_cache *cache = NULL;
  burst_attention_config cfg;
  burst_plan *plan = NULL;
  float fk[KV_N * KV_HKV * KV_D], fv[KV_N * KV_HKV * KV_D], lk[KV_N * KV_HKV * KV_D], lv[KV_N * KV_HKV * KV_D];
  int64_t n = 0;
  size_t i;
  int s;
  burst_status st;

  memset(res, 0, sizeof *res);
  burst_kv_cache_config_init(&kc);
  kc.layout = BURST_LAYOUT_BSHD; kc.dtype = BURST_DTYPE_F32; kc.num_threads = 1; kc.num_layers = 1;
  kc.num_heads_q = KV_HQ; kc.num_heads_kv = KV_HKV; kc.head_dim = KV_D; kc.block_tokens = 8; kc.timeout_seconds = 120;
  st = burst_kv_cache_create(ctx, &kc, &cache);
  if (st != BURST_OK) { fail("%s: burst_kv_cache_create: %s: %s", which, burst_status_string(st), burst_last_error()); return; }
  st = burst_kv_cache_add(cache, &id, 1);
  if (st != BURST_OK) { fail("%s: burst_kv_cache_add: %s: %s", which, burst_status_string(st), burst_last_error()); goto done; }
  for (i = 0; i < (size_t)KV_N * kv_row; ++i) { fk[i] = (float)kv_input(1, 0, i); fv[i] = (float)kv_input(2, 0, i); }
  burst_shard_positions(BURST_DISTRIBUTION_ZIGZAG, KV_N, NULL, 0, g_size, g_rank, NULL, 0, &n);
  if (burst_shard(BURST_DISTRIBUTION_ZIGZAG, KV_N, NULL, 0, g_size, g_rank, 1, (int64_t)(kv_row * 4), fk, lk) != BURST_OK ||
      burst_shard(BURST_DISTRIBUTION_ZIGZAG, KV_N, NULL, 0, g_size, g_rank, 1, (int64_t)(kv_row * 4), fv, lv) != BURST_OK)
    fail("burst_shard: %s", burst_last_error());
  burst_attention_config_init(&cfg);
  cfg.mask = BURST_MASK_CAUSAL; cfg.distribution = BURST_DISTRIBUTION_ZIGZAG; cfg.batch = 1; cfg.seq_len_local = n;
  cfg.num_heads_q = KV_HQ; cfg.num_heads_kv = KV_HKV; cfg.head_dim = KV_D; cfg.num_threads = 1; cfg.timeout_seconds = 120;
  st = burst_plan_create(ctx, &cfg, &plan);
  if (st != BURST_OK) { fail("%s: burst_plan_create: %s: %s", which, burst_status_string(st), burst_last_error()); goto done; }
  st = burst_kv_cache_prefill(cache, 0, plan, &id, lk, lv);
  if (st != BURST_OK) { fail("%s: burst_kv_cache_prefill: %s: %s", which, burst_status_string(st), burst_last_error()); goto done; }
  for (s = 0; s < KV_STEPS; ++s) {
    const int64_t T = k_kv_T[s];
    float q[KV_MAXT * KV_HQ * KV_D], k[KV_MAXT * KV_HKV * KV_D], v[KV_MAXT * KV_HKV * KV_D];
    for (i = 0; i < (size_t)(T * KV_HQ * KV_D); ++i) q[i] = (float)kv_input(3, s, i);
    for (i = 0; i < (size_t)(T * KV_HKV * KV_D); ++i) { k[i] = (float)kv_input(4, s, i); v[i] = (float)kv_input(5, s, i); }
    st = burst_kv_cache_decode(cache, 0, &id, 1, T, NULL, q, k, v, res->out[s], res->lse[s]);
    if (st != BURST_OK) { fail("%s: decode step %d: %s: %s", which, s, burst_status_string(st), burst_last_error()); goto done; }
    res->stats[s].struct_size = sizeof(burst_stats);
    if (burst_kv_cache_stats(cache, &res->stats[s]) != BURST_OK) fail("%s: burst_kv_cache_stats: %s", which, burst_last_error());
  }
  res->ok = 1;
done:
  burst_plan_destroy(plan);
  burst_kv_cache_destroy(cache);
}

/* float64 model: the prompt at positions 0..N-1, then each step's tokens. */
static void kv_reference(int step, double *out, double *lse) {
  const double scale = 1.0 / sqrt((double)KV_D);
  const size_t kv_row = (size_t)KV_HKV * KV_D;
  int64_t len = KV_N, s, t, h, j, x;
  double *K = xcalloc((size_t)(KV_N + 8) * kv_row, 8), *V = xcalloc((size_t)(KV_N + 8) * kv_row, 8);
  size_t i;
  for (i = 0; i < (size_t)KV_N * kv_row; ++i) { K[i] = kv_input(1, 0, i); V[i] = kv_input(2, 0, i); }
  for (s = 0; s <= step; ++s) {
    for (i = 0; i < (size_t)(k_kv_T[s] * (int64_t)kv_row); ++i) {
      K[(size_t)len * kv_row + i] = kv_input(4, (int)s, i);
      V[(size_t)len * kv_row + i] = kv_input(5, (int)s, i);
    }
    if (s < step) len += k_kv_T[s];
  }
  for (t = 0; t < k_kv_T[step]; ++t)
    for (h = 0; h < KV_HQ; ++h) {
      const int64_t hk = h / (KV_HQ / KV_HKV), p = len + t;
      double m = -INFINITY, l = 0;
      double *o = out + ((size_t)t * KV_HQ + (size_t)h) * KV_D;
      for (j = 0; j <= p; ++j) {
        double sc = 0;
        for (x = 0; x < KV_D; ++x) sc += kv_input(3, (int)step, ((size_t)t * KV_HQ + (size_t)h) * KV_D + (size_t)x) * K[(size_t)j * kv_row + (size_t)hk * KV_D + (size_t)x];
        sc *= scale;
        if (sc > m) m = sc;
      }
      for (x = 0; x < KV_D; ++x) o[x] = 0;
      for (j = 0; j <= p; ++j) {
        double sc = 0, w;
        for (x = 0; x < KV_D; ++x) sc += kv_input(3, (int)step, ((size_t)t * KV_HQ + (size_t)h) * KV_D + (size_t)x) * K[(size_t)j * kv_row + (size_t)hk * KV_D + (size_t)x];
        w = exp(sc * scale - m);
        l += w;
        for (x = 0; x < KV_D; ++x) o[x] += w * V[(size_t)j * kv_row + (size_t)hk * KV_D + (size_t)x];
      }
      for (x = 0; x < KV_D; ++x) o[x] /= l;
      lse[(size_t)h * (size_t)k_kv_T[step] + (size_t)t] = m + log(l); /* [num_seqs, heads, T] */
    }
  free(K); free(V);
}

static void section_kvcache(burst_context *ctx_mpi) {
  mtrans t;
  burst_transport bt;
  burst_context *ctx = NULL;
  kv_result *rm = xcalloc(1, sizeof *rm), *rt = xcalloc(1, sizeof *rt);
  burst_status st;
  int s;

  g_case = "KV cache";
  mt_open(&t);
  mt_fill(&bt, &t, NULL, 60);
  st = burst_context_create_transport(&bt, &ctx);
  if (st != BURST_OK) {
    fail("burst_context_create_transport: %s: %s", burst_status_string(st), burst_last_error());
    mt_cleanup(&t);
    free(rm); free(rt);
    return;
  }
  run_kv(ctx_mpi, "MPI context", rm);
  run_kv(ctx, "transport context", rt);
  for (s = 0; rm->ok && rt->ok && s < KV_STEPS; ++s) {
    const size_t no = (size_t)(k_kv_T[s] * KV_HQ * KV_D), nl = (size_t)(KV_HQ * k_kv_T[s]);
    double ref[KV_MAXT * KV_HQ * KV_D], ref_lse[KV_HQ * KV_MAXT];
    if (memcmp(rm->out[s], rt->out[s], no * 4) || memcmp(rm->lse[s], rt->lse[s], nl * 4))
      fail("decode step %d (T = %lld): out %s, lse %s from the MPI context's", s, (long long)k_kv_T[s],
           memcmp(rm->out[s], rt->out[s], no * 4) ? "differs" : "equals", memcmp(rm->lse[s], rt->lse[s], nl * 4) ? "differs" : "equals");
    if (rm->stats[s].bytes_sent != rt->stats[s].bytes_sent || rm->stats[s].bytes_received != rt->stats[s].bytes_received ||
        rm->stats[s].messages_sent != rt->stats[s].messages_sent)
      fail("decode step %d stats: MPI sent %llu received %llu messages %llu, transport %llu %llu %llu", s,
           (unsigned long long)rm->stats[s].bytes_sent, (unsigned long long)rm->stats[s].bytes_received,
           (unsigned long long)rm->stats[s].messages_sent, (unsigned long long)rt->stats[s].bytes_sent,
           (unsigned long long)rt->stats[s].bytes_received, (unsigned long long)rt->stats[s].messages_sent);
    kv_reference(s, ref, ref_lse);
    {
      double eo = max_err(rt->out[s], ref, no), el = max_err(rt->lse[s], ref_lse, nl), mo = max_abs(ref, no);
      if (!(eo <= 1e-5 * mo)) fail("decode step %d: out error %.3e > 1e-5 * %.3e", s, eo, mo);
      if (!(el <= 1e-4)) fail("decode step %d: lse error %.3e", s, el);
      info("decode step %d: out error %.2e lse error %.2e", s, eo, el);
    }
  }
  /* destroy(user) runs inside the burst_*_destroy that drops the transport's
   * last context, plan or cache, whichever it is: here the context first,
   * then a cache, then a plan made on it. */
  g_case = "destroy order: context, cache, plan";
  {
    burst_kv_cache_config kc;
    burst_attention_config cfg;
    burst_kv_cache *cache = NULL;
    burst_plan *plan = NULL;
    burst_kv_cache_config_init(&kc);
    kc.num_layers = 1; kc.num_heads_q = KV_HQ; kc.num_heads_kv = KV_HKV; kc.head_dim = KV_D; kc.num_threads = 1;
    kc.timeout_seconds = 60;
    burst_attention_config_init(&cfg);
    cfg.batch = 1; cfg.seq_len_local = 4; cfg.num_heads_q = KV_HQ; cfg.num_heads_kv = KV_HKV; cfg.head_dim = KV_D;
    cfg.num_threads = 1; cfg.timeout_seconds = 60;
    if ((st = burst_kv_cache_create(ctx, &kc, &cache)) != BURST_OK)
      fail("burst_kv_cache_create: %s: %s", burst_status_string(st), burst_last_error());
    if ((st = burst_plan_create(ctx, &cfg, &plan)) != BURST_OK)
      fail("burst_plan_create: %s: %s", burst_status_string(st), burst_last_error());
    burst_context_destroy(ctx);
    if (t.n_destroy != 0) fail("destroy(user) ran in burst_context_destroy while a cache and a plan of it live");
    burst_kv_cache_destroy(cache);
    if (t.n_destroy != 0) fail("destroy(user) ran in burst_kv_cache_destroy while a plan of the context lives");
    burst_plan_destroy(plan);
    if (t.n_destroy != 1) fail("destroy(user) called %ld times after the last plan was destroyed, expected once", t.n_destroy);
  }
  check_destroyed(&t, "KV cache context");
  if (t.violations) fail("transport contract violations (above)");
  free(rm); free(rt);
}

/* ======================================================================== */
/* 3. Validation at burst_context_create_transport.                          */

/* A create expected to fail on this rank alone, before any round. */
static void expect_local(mtrans *t, const burst_transport *bt, burst_status want, const char *what) {
  long gathers = t->n_gather, sends = t->n_isend, recvs = t->n_irecv;
  burst_context *ctx = NULL;
  burst_status st;
  g_case = what;
  st = burst_context_create_transport(bt, &ctx);
  if (st != want) {
    fail("burst_context_create_transport: %s (%s), expected %s", burst_status_string(st),
         st == BURST_OK ? "accepted" : burst_last_error(), burst_status_string(want));
  } else if (strlen(burst_last_error()) == 0) {
    fail("%s with an empty burst_last_error()", burst_status_string(st));
  } else {
    info("%s: %s", burst_status_string(st), burst_last_error());
  }
  if (st == BURST_OK) {
    /* every rank made the same call, so the round completed: clean up */
    burst_context_destroy(ctx);
    if (!t->open) mt_open(t);
    return;
  }
  if (t->n_gather != gathers || t->n_isend != sends || t->n_irecv != recvs)
    fail("a struct rejected locally started communication (%ld iallgather, %ld isend, %ld irecv)",
         t->n_gather - gathers, t->n_isend - sends, t->n_irecv - recvs);
  if (t->n_destroy != 0) fail("destroy(user) called although creation failed");
  if (ctx) note("*out is %p after a failed create (not NULL)", (void *)ctx);
}

/* A create that every rank makes with its own struct; returns the status.
 * On failure the transport is still ours: every request the library started
 * must have been reported done or released. */
static burst_status create_collective(mtrans *t, burst_transport *bt, double *elapsed) {
  burst_context *ctx = NULL;
  burst_status st;
  double t0 = MPI_Wtime();
  st = burst_context_create_transport(bt, &ctx);
  *elapsed = MPI_Wtime() - t0;
  if (st == BURST_OK) {
    burst_context_destroy(ctx);
    if (t->n_destroy != 1) fail("destroy(user) called %ld times after destroying the context", t->n_destroy);
  } else {
    size_t i;
    long active = 0;
    if (t->n_destroy != 0) fail("destroy(user) called although creation failed (%s)", burst_status_string(st));
    for (i = 0; i < t->nreqs; ++i) if (t->reqs[i]->state == S_ACTIVE) ++active;
    if (active) fail("%ld requests neither done nor released after the failed create (%s)", active, burst_status_string(st));
  }
  return st;
}

static void section_validation(int peers_time_out) {
  mtrans t;
  burst_transport bt, good;
  int32_t bad_nodes[16];
  struct { burst_transport bt; uint64_t extra; } big;
  int r;
  double elapsed;
  burst_status st;

  mt_open(&t);
  mt_fill(&good, &t, NULL, 10);
  expect_local(&t, NULL, BURST_ERROR_INVALID_ARGUMENT, "validation: NULL transport");
  g_case = "validation: out = NULL";
  st = burst_context_create_transport(&good, NULL);
  if (st != BURST_ERROR_INVALID_ARGUMENT)
    fail("burst_context_create_transport(t, NULL): %s, expected INVALID_ARGUMENT", burst_status_string(st));
  bt = good; bt.struct_size = 0;
  expect_local(&t, &bt, BURST_ERROR_VERSION, "validation: struct_size 0");
  bt = good; bt.struct_size = 8;
  expect_local(&t, &bt, BURST_ERROR_VERSION, "validation: struct_size 8");
  bt = good; bt.struct_size = (uint32_t)offsetof(burst_transport, timeout_seconds); /* no older size exists */
  expect_local(&t, &bt, BURST_ERROR_VERSION, "validation: struct_size without timeout_seconds");
  memset(&big, 0, sizeof big);
  big.bt = good; big.bt.struct_size = sizeof big; big.extra = 1;
  expect_local(&t, &big.bt, BURST_ERROR_VERSION, "validation: larger struct_size with a non-zero byte past 0.9's fields");
  bt = good; bt.isend = NULL;
  expect_local(&t, &bt, BURST_ERROR_INVALID_ARGUMENT, "validation: isend NULL");
  bt = good; bt.irecv = NULL;
  expect_local(&t, &bt, BURST_ERROR_INVALID_ARGUMENT, "validation: irecv NULL");
  bt = good; bt.iallgather = NULL;
  expect_local(&t, &bt, BURST_ERROR_INVALID_ARGUMENT, "validation: iallgather NULL");
  bt = good; bt.test = NULL;
  expect_local(&t, &bt, BURST_ERROR_INVALID_ARGUMENT, "validation: test NULL");
  bt = good; bt.rank = -1;
  expect_local(&t, &bt, BURST_ERROR_INVALID_ARGUMENT, "validation: rank -1");
  bt = good; bt.rank = g_size;
  expect_local(&t, &bt, BURST_ERROR_INVALID_ARGUMENT, "validation: rank = size");
  bt = good; bt.size = 0; bt.rank = 0;
  expect_local(&t, &bt, BURST_ERROR_INVALID_ARGUMENT, "validation: size 0");
  bt = good; bt.size = 1025;
  expect_local(&t, &bt, BURST_ERROR_INVALID_ARGUMENT, "validation: size 1025");
  bt = good; bt.size = -3;
  expect_local(&t, &bt, BURST_ERROR_INVALID_ARGUMENT, "validation: size -3");
  if (!t.open) mt_open(&t);
  mt_cleanup(&t);

  /* A node id of -1 ("nodes in range"): INVALID_ARGUMENT. Every rank's
   * struct has it; the library may tell the others in its round (it is
   * complete), so communication is allowed here. */
  g_case = "validation: a node id of -1 on every rank";
  mt_open(&t);
  mt_fill(&bt, &t, NULL, 10);
  for (r = 0; r < g_size; ++r) bad_nodes[r] = r == g_size - 1 ? -1 : 0;
  bt.nodes = bad_nodes;
  st = create_collective(&t, &bt, &elapsed);
  if (st != BURST_ERROR_INVALID_ARGUMENT) fail("%s (%s), expected INVALID_ARGUMENT", burst_status_string(st), st ? burst_last_error() : "accepted");
  else info("INVALID_ARGUMENT: %s", burst_last_error());
  if (t.open) mt_cleanup(&t);
  MPI_Barrier(MPI_COMM_WORLD);

  /* Only rank 1's nodes hold a -1: INVALID_ARGUMENT there; the others get an
   * error within the transport's timeout (docs/transports.md: the round
   * shares it, INVALID_ARGUMENT everywhere; the header allows a TIMEOUT). */
  g_case = "validation: a node id of -1 on rank 1 only (timeout 3 s)";
  mt_open(&t);
  mt_fill(&bt, &t, NULL, 3);
  for (r = 0; r < g_size; ++r) bad_nodes[r] = r % 2;
  if (g_rank == 1) bad_nodes[0] = -1;
  bt.nodes = bad_nodes;
  st = create_collective(&t, &bt, &elapsed);
  if (g_rank == 1 && st != BURST_ERROR_INVALID_ARGUMENT)
    fail("the rank with the bad node id: %s (%s), expected INVALID_ARGUMENT", burst_status_string(st), st ? burst_last_error() : "accepted");
  if (g_rank != 1) {
    if (st == BURST_OK) fail("a peer of the rank with the bad node id: accepted");
    else if (st != BURST_ERROR_INVALID_ARGUMENT) note("a peer of the rank with the bad node id: %s (%s)", burst_status_string(st), burst_last_error());
  }
  if (elapsed > 3 + SLACK_SECONDS) fail("returned after %.1f s (timeout 3 s)", elapsed);
  info("%s after %.2f s: %s", burst_status_string(st), elapsed, burst_last_error());
  if (t.open) mt_cleanup(&t);
  MPI_Barrier(MPI_COMM_WORLD);

  /* Not pinned down by the header: an unknown flag, a node id >= size, a bad
   * timeout, a newer header's larger struct with zeros past 0.9's fields
   * (the general struct_size rule accepts it), nodes that differ across
   * ranks. Every rank makes the same call (a success completes its round). */
  {
    static const char *const names[] = {"flags = 2 (unknown)", "a node id = size", "timeout_seconds -1",
                                        "timeout_seconds NaN", "struct_size sizeof + 8, zero tail",
                                        "nodes that differ across ranks"};
    int which;
    for (which = 0; which < 6; ++which) {
      char what[128];
      snprintf(what, sizeof what, "validation (undocumented): %s", names[which]);
      g_case = what;
      mt_open(&t);
      mt_fill(&bt, &t, NULL, 10);
      for (r = 0; r < g_size; ++r) bad_nodes[r] = which == 1 && r == 0 ? g_size : which == 5 ? (r + g_rank) % 2 : 0;
      if (which == 0) bt.flags = 2;
      if (which == 1 || which == 5) bt.nodes = bad_nodes;
      if (which == 2) bt.timeout_seconds = -1;
      if (which == 3) bt.timeout_seconds = NAN;
      memset(&big, 0, sizeof big);
      big.bt = bt; big.bt.struct_size = sizeof big;
      st = create_collective(&t, which == 4 ? &big.bt : &bt, &elapsed);
      note("%s (%s)", burst_status_string(st), st == BURST_OK ? "accepted" : burst_last_error());
      if (t.open) mt_cleanup(&t);
      MPI_Barrier(MPI_COMM_WORLD);
    }
  }

  /* Collective checks: MISMATCH on every rank. */
  g_case = "validation: size mismatch (rank 0 declares size + 1)";
  mt_open(&t);
  mt_fill(&bt, &t, NULL, 10);
  if (g_rank == 0) { bt.size = g_size + 1; t.declared_size = g_size + 1; }
  st = create_collective(&t, &bt, &elapsed);
  if (st != BURST_ERROR_MISMATCH) fail("%s (%s), expected MISMATCH on every rank", burst_status_string(st), burst_last_error());
  else info("MISMATCH: %s", burst_last_error());
  if (t.open) mt_cleanup(&t);
  MPI_Barrier(MPI_COMM_WORLD);

  g_case = "validation: duplicate ranks (rank 1 declares rank 0)";
  mt_open(&t);
  mt_fill(&bt, &t, NULL, 10);
  if (g_rank == 1) { bt.rank = 0; t.declared_rank = 0; }
  st = create_collective(&t, &bt, &elapsed);
  if (st != BURST_ERROR_MISMATCH) fail("%s (%s), expected MISMATCH on every rank", burst_status_string(st), burst_last_error());
  else info("MISMATCH: %s", burst_last_error());
  if (t.open) mt_cleanup(&t);
  MPI_Barrier(MPI_COMM_WORLD);

  /* One rank's struct is invalid: INVALID_ARGUMENT there, its peers time out
   * in their round (TIMEOUT, or COMMUNICATION) within the transport's timeout. */
  if (!peers_time_out) return;
  g_case = "validation: rank 1 out of range, the others valid (timeout 3 s)";
  mt_open(&t);
  mt_fill(&bt, &t, NULL, 3);
  if (g_rank == 1) bt.rank = g_size + 5;
  st = create_collective(&t, &bt, &elapsed);
  if (g_rank == 1 && st != BURST_ERROR_INVALID_ARGUMENT)
    fail("the rank with the bad struct: %s (%s), expected INVALID_ARGUMENT", burst_status_string(st), burst_last_error());
  if (g_rank != 1 && st != BURST_ERROR_TIMEOUT && st != BURST_ERROR_COMMUNICATION)
    fail("a peer of the bad rank: %s (%s), expected TIMEOUT or COMMUNICATION", burst_status_string(st), burst_last_error());
  if (elapsed > 3 + SLACK_SECONDS) fail("returned after %.1f s (timeout 3 s)", elapsed);
  info("%s after %.2f s: %s", burst_status_string(st), elapsed, burst_last_error());
  if (t.open) mt_cleanup(&t);
  MPI_Barrier(MPI_COMM_WORLD);
}

/* ======================================================================== */
/* 4. Injected failures.                                                     */

static const vcase k_small = {"zigzag causal BSHD 4/4 d=16 N=37", BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BSHD, 1, -1, -1,
                              4, 4, 1, 16, 37, NULL, 0};
#define FAULT_TIMEOUT 3.0

typedef struct small_io {
  float *q, *k, *v, *dout, *out, *lse, *dq, *dk, *dv;
  int64_t n;
} small_io;

static void small_alloc(small_io *io) {
  const vcase *c = &k_small;
  size_t lq, ll, i;
  burst_shard_positions(c->dist, c->N, NULL, 0, g_size, g_rank, NULL, 0, &io->n);
  lq = (size_t)(c->hq * io->n * c->d); ll = (size_t)(c->hq * io->n);
  io->q = xcalloc(lq, 4); io->k = xcalloc(lq, 4); io->v = xcalloc(lq, 4); io->dout = xcalloc(lq, 4);
  io->out = xcalloc(lq, 4); io->dq = xcalloc(lq, 4); io->dk = xcalloc(lq, 4); io->dv = xcalloc(lq, 4);
  io->lse = xcalloc(ll, 4);
  for (i = 0; i < lq; ++i) {
    io->q[i] = (float)vref_value(21, i * 7 + (size_t)g_rank); io->k[i] = (float)vref_value(22, i * 7 + (size_t)g_rank);
    io->v[i] = (float)vref_value(23, i * 7 + (size_t)g_rank); io->dout[i] = (float)vref_value(24, i * 7 + (size_t)g_rank);
  }
}

static void small_free(small_io *io) {
  free(io->q); free(io->k); free(io->v); free(io->dout); free(io->out); free(io->dq); free(io->dk); free(io->dv);
  free(io->lse);
}

static burst_status small_plan(burst_context *ctx, const small_io *io, burst_plan **plan) {
  burst_attention_config cfg;
  burst_attention_config_init(&cfg);
  cfg.mask = BURST_MASK_CAUSAL; cfg.distribution = BURST_DISTRIBUTION_ZIGZAG; cfg.batch = 1; cfg.seq_len_local = io->n;
  cfg.num_heads_q = k_small.hq; cfg.num_heads_kv = k_small.hkv; cfg.head_dim = k_small.d; cfg.num_threads = 1;
  cfg.timeout_seconds = FAULT_TIMEOUT;
  return burst_plan_create(ctx, &cfg, plan);
}

/* Forward, backward, ... until the first error (at most `calls` calls), then
 * one more call, which must fail too. Each call must return in time. */
typedef struct outcome {
  burst_status first;
  int at;          /* index of the failing call, -1: none */
  double elapsed;  /* of the failing call */
  char message[512];
} outcome;

static burst_status timed_call(burst_plan *plan, small_io *io, int backward, double *elapsed) {
  double t0 = MPI_Wtime();
  burst_status st = backward ? burst_backward(plan, io->q, io->k, io->v, io->out, io->lse, io->dout, io->dq, io->dk, io->dv)
                             : burst_forward(plan, io->q, io->k, io->v, io->out, io->lse);
  *elapsed = MPI_Wtime() - t0;
  return st;
}

static void run_until_error(burst_plan *plan, small_io *io, int calls, outcome *o) {
  int i;
  double el;
  o->first = BURST_OK; o->at = -1; o->elapsed = 0; o->message[0] = 0;
  for (i = 0; i < calls; ++i) {
    burst_status st = timed_call(plan, io, i % 2, &el);
    if (el > FAULT_TIMEOUT + SLACK_SECONDS)
      fail("call %d (%s) returned %s after %.1f s; timeout %.0f s", i, i % 2 ? "backward" : "forward",
           burst_status_string(st), el, FAULT_TIMEOUT);
    if (st != BURST_OK) {
      o->first = st; o->at = i; o->elapsed = el;
      snprintf(o->message, sizeof o->message, "%s", burst_last_error());
      break;
    }
  }
  if (o->at >= 0) {
    burst_status st = timed_call(plan, io, 0, &el);
    if (st == BURST_OK) fail("a forward after %s succeeded (the plan must be unusable)", burst_status_string(o->first));
    else if (st != o->first) info("the call after the error: %s (%s)", burst_status_string(st), burst_last_error());
    if (el > FAULT_TIMEOUT + SLACK_SECONDS) fail("the call after the error took %.1f s", el);
  }
}

static const char *call_name(int at) {
  return at == -2 ? "burst_plan_create" : at == -3 ? "burst_context_create_transport" : at < 0 ? "none" : at % 2 ? "backward" : "forward";
}

/* Every rank prints its outcome (one line per rank, rank 0 first). */
static void report_outcome(const char *test, const outcome *o) {
  int r;
  for (r = 0; r < g_size; ++r) {
    if (r == g_rank)
      printf("c_transport %s: rank %d/%d: %s in call %d (%s) after %.2f s: %s\n", test, g_rank, g_size,
             burst_status_string(o->first), o->at < 0 ? 0 : o->at, call_name(o->at), o->elapsed, o->message);
    fflush(stdout);
    MPI_Barrier(MPI_COMM_WORLD);
  }
}

/* (a) isend returns -1 on rank 1 at its 3rd call; (b) never completes;
 * (e) test returns -1 on rank 1 at its 5th call. */
enum { FAULT_ISEND, FAULT_HOLE, FAULT_TEST };
static void test_isend_fault(int mode) {
  static const char *const names[] = {"fault (a): isend returns -1 on rank 1 (3rd call)",
                                      "fault (b): rank 1's isend never completes",
                                      "fault (e): test returns -1 on rank 1 (5th call)"};
  static const char *const tags[] = {"fault-a", "fault-b", "fault-e"};
  const char *name = names[mode];
  const int hole = mode == FAULT_HOLE;
  mtrans t;
  burst_transport bt;
  burst_context *ctx = NULL;
  burst_plan *plan = NULL;
  small_io io;
  outcome o;
  burst_status st;

  g_case = name;
  small_alloc(&io);
  mt_open(&t);
  mt_fill(&bt, &t, NULL, 10);
  st = burst_context_create_transport(&bt, &ctx);
  if (st != BURST_OK) { fail("create: %s: %s", burst_status_string(st), burst_last_error()); mt_cleanup(&t); small_free(&io); return; }
  st = small_plan(ctx, &io, &plan);
  if (st != BURST_OK) fail("plan: %s: %s", burst_status_string(st), burst_last_error());
  /* a clean round first */
  if (st == BURST_OK && (burst_forward(plan, io.q, io.k, io.v, io.out, io.lse) != BURST_OK ||
                         burst_backward(plan, io.q, io.k, io.v, io.out, io.lse, io.dout, io.dq, io.dk, io.dv) != BURST_OK))
    fail("the clean round failed: %s", burst_last_error());
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank == 1) {
    t.armed_isend = t.armed_test = 0;
    if (mode == FAULT_HOLE) t.hole_isend_at = 1;
    else if (mode == FAULT_ISEND) t.fail_isend_at = 3;
    else t.fail_test_at = 5;
  }
  if (plan) {
    run_until_error(plan, &io, 6, &o);
    report_outcome(tags[mode], &o);
    if (o.at < 0) fail("no error on this rank in 6 calls after the fault");
    if (g_rank == 1 && mode == FAULT_TEST) {
      if (!t.failed_test) fail("test bug: rank 1 made only %ld tests after arming", t.armed_test);
      if (o.first != BURST_ERROR_COMMUNICATION)
        fail("the rank whose test failed: %s (%s), expected COMMUNICATION", burst_status_string(o.first), o.message);
      if (!strstr(o.message, "injected test failure"))
        fail("burst_last_error() \"%s\" does not contain the transport's error_message (\"mtrans: injected test failure ...\")",
             o.message);
    } else if (g_rank == 1 && !hole) {
      if (t.armed_isend < 3) fail("the test bug: rank 1 made only %ld isends after arming", t.armed_isend);
      if (o.first != BURST_ERROR_COMMUNICATION)
        fail("the rank whose isend failed: %s (%s), expected COMMUNICATION", burst_status_string(o.first), o.message);
      if (!strstr(o.message, "injected isend failure on rank 1 (call 3 after arming"))
        fail("burst_last_error() \"%s\" does not contain the transport's error_message (\"mtrans: injected isend failure ...\")",
             o.message);
      if (t.n_errmsg == 0) fail("error_message(user) was never called");
    } else if (g_rank == 1 && hole) {
      if (t.holes != 1) fail("test bug: %ld never-completing isends", t.holes);
      if (o.first != BURST_ERROR_TIMEOUT && o.first != BURST_ERROR_COMMUNICATION)
        fail("the rank whose send never completes: %s (%s), expected TIMEOUT", burst_status_string(o.first), o.message);
      else if (o.first != BURST_ERROR_TIMEOUT)
        note("the rank whose send never completes got %s (%s); the header suggests TIMEOUT", burst_status_string(o.first), o.message);
      if (t.holes_released != t.holes)
        info("the never-completing isend was not released yet when the failing call returned (%ld of %ld)", t.holes_released, t.holes);
    } else if (o.at >= 0 && o.first != BURST_ERROR_TIMEOUT && o.first != BURST_ERROR_COMMUNICATION) {
      fail("a peer: %s (%s), expected TIMEOUT or COMMUNICATION", burst_status_string(o.first), o.message);
    }
    if (o.at >= 0 && o.elapsed > FAULT_TIMEOUT + SLACK_SECONDS) fail("the failing call took %.1f s", o.elapsed);
  }
  burst_plan_destroy(plan);
  if (t.n_destroy != 0) fail("destroy(user) called with the context still alive");
  burst_context_destroy(ctx);
  check_destroyed(&t, name);
  if (hole && g_rank == 1 && t.holes_released != t.holes)
    fail("the never-completing isend request was not released (release called %ld times, for it %ld)", t.n_release,
         t.holes_released);
  if (mode == FAULT_TEST && g_rank == 1 && t.failed_test && !t.failed_test_released)
    fail("the request whose test returned an error was not released (the header: it is released)");
  if (t.violations) fail("transport contract violations (above)");
  info("release called %ld times (%ld in flight), test %ld times", t.n_release, t.released_active, t.n_test);
  small_free(&io);
  MPI_Barrier(MPI_COMM_WORLD);
}

/* (c) iallgather fails on rank 1 in burst_plan_create. */
static void test_gather_fault_plan(void) {
  mtrans t;
  burst_transport bt;
  burst_context *ctx = NULL;
  burst_plan *plan = NULL;
  small_io io;
  outcome o;
  burst_status st;
  double t0, el;

  g_case = "fault (c): iallgather fails on rank 1 in burst_plan_create";
  small_alloc(&io);
  mt_open(&t);
  mt_fill(&bt, &t, NULL, 10);
  st = burst_context_create_transport(&bt, &ctx);
  if (st != BURST_OK) { fail("create: %s: %s", burst_status_string(st), burst_last_error()); mt_cleanup(&t); small_free(&io); return; }
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank == 1) { t.armed_gather = 0; t.fail_gather_at = 1; }
  t0 = MPI_Wtime();
  st = small_plan(ctx, &io, &plan);
  el = MPI_Wtime() - t0;
  o.first = st; o.at = -2; o.elapsed = el;
  snprintf(o.message, sizeof o.message, "%s", st == BURST_OK ? "" : burst_last_error());
  report_outcome("fault-c", &o);
  if (g_rank == 1) {
    if (t.armed_gather < 1) fail("burst_plan_create made no iallgather on rank 1");
    if (st != BURST_ERROR_COMMUNICATION)
      fail("the rank whose iallgather failed: %s (%s), expected COMMUNICATION", burst_status_string(st), o.message);
    else if (!strstr(o.message, "injected iallgather failure on rank 1 (call 1 after arming"))
      fail("burst_last_error() \"%s\" does not contain the transport's error_message (\"mtrans: injected iallgather failure ...\")",
           o.message);
  } else if (st != BURST_ERROR_TIMEOUT && st != BURST_ERROR_COMMUNICATION) {
    fail("a peer: %s (%s), expected TIMEOUT or COMMUNICATION", burst_status_string(st), o.message);
  }
  if (el > FAULT_TIMEOUT + SLACK_SECONDS) fail("burst_plan_create returned after %.1f s", el);
  if (st == BURST_OK) burst_plan_destroy(plan);
  plan = NULL;
  /* the context is unusable after a TIMEOUT or COMMUNICATION in plan_create */
  if (st == BURST_ERROR_TIMEOUT || st == BURST_ERROR_COMMUNICATION) {
    t0 = MPI_Wtime();
    st = small_plan(ctx, &io, &plan);
    el = MPI_Wtime() - t0;
    if (st == BURST_OK) { fail("a second burst_plan_create on the failed context succeeded"); burst_plan_destroy(plan); }
    if (el > FAULT_TIMEOUT + SLACK_SECONDS) fail("the second burst_plan_create took %.1f s", el);
  }
  if (t.n_destroy != 0) fail("destroy(user) called with the context still alive");
  burst_context_destroy(ctx);
  check_destroyed(&t, g_case);
  if (t.violations) fail("transport contract violations (above)");
  small_free(&io);
  MPI_Barrier(MPI_COMM_WORLD);
}

/* (c') iallgather fails on rank 1 in burst_context_create_transport. */
static void test_gather_fault_create(void) {
  mtrans t;
  burst_transport bt;
  outcome o;
  double el;
  burst_status st;

  g_case = "fault (c'): iallgather fails on rank 1 in burst_context_create_transport";
  mt_open(&t);
  mt_fill(&bt, &t, NULL, FAULT_TIMEOUT);
  if (g_rank == 1) { t.armed_gather = 0; t.fail_gather_at = 1; }
  st = create_collective(&t, &bt, &el);
  o.first = st; o.at = -3; o.elapsed = el;
  snprintf(o.message, sizeof o.message, "%s", st == BURST_OK ? "" : burst_last_error());
  report_outcome("fault-c'", &o);
  if (g_rank == 1) {
    if (st != BURST_ERROR_COMMUNICATION)
      fail("the rank whose iallgather failed: %s (%s), expected COMMUNICATION", burst_status_string(st), o.message);
    else if (!strstr(o.message, "injected iallgather failure on rank 1 (call 1 after arming"))
      fail("burst_last_error() \"%s\" does not contain the transport's error_message (\"mtrans: injected iallgather failure ...\")",
           o.message);
  } else if (st != BURST_ERROR_TIMEOUT && st != BURST_ERROR_COMMUNICATION) {
    fail("a peer: %s (%s), expected TIMEOUT or COMMUNICATION", burst_status_string(st), o.message);
  }
  if (el > FAULT_TIMEOUT + SLACK_SECONDS) fail("burst_context_create_transport returned after %.1f s", el);
  if (t.open) mt_cleanup(&t);
  if (t.violations) fail("transport contract violations (above)");
  MPI_Barrier(MPI_COMM_WORLD);
}

int main(int argc, char **argv) {
  burst_context *ctx_mpi = NULL;
  int total = 0, notes = 0, failures_tests = 1, flag = 0, i;
  void *ub = NULL;
  size_t g;
  for (i = 1; i < argc; ++i)
    if (!strcmp(argv[i], "--no-failures")) failures_tests = 0;
  g_verbose = getenv("BURST_TEST_VERBOSE") && atoi(getenv("BURST_TEST_VERBOSE")) > 0;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  if (g_size == 1) { /* nothing to talk to (scripts/valgrind.sh runs every client at 1 rank too) */
    printf("c_transport: SKIPPED at 1 rank (run it on 2 to 16)\n");
    MPI_Finalize();
    return 0;
  }
  if (g_size > 16) {
    if (g_rank == 0) fprintf(stderr, "c_transport: run it on 2 to 16 ranks\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
  g_tag_ub = flag ? *(int *)ub : 32767;
  if (g_tag_ub < INT_MAX && g_rank == 0)
    fprintf(stderr, "c_transport: MPI_TAG_UB is %d, below the header's 2^31 - 1: tags above it are reported\n", g_tag_ub);
  if (burst_context_create_mpi((int64_t)MPI_Comm_c2f(MPI_COMM_WORLD), &ctx_mpi) != BURST_OK) {
    fprintf(stderr, "MPI context: %s\n", burst_last_error());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  section_correctness(ctx_mpi);
  MPI_Barrier(MPI_COMM_WORLD);
  section_kvcache(ctx_mpi);
  MPI_Barrier(MPI_COMM_WORLD);
  section_validation(failures_tests);
  if (failures_tests) {
    test_isend_fault(FAULT_ISEND);
    test_isend_fault(FAULT_HOLE);
    test_isend_fault(FAULT_TEST);
    test_gather_fault_plan();
    test_gather_fault_create();
  }
  g_case = "end";
  burst_context_destroy(ctx_mpi);
  MPI_Allreduce(&g_failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(&g_notes, &notes, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  printf("c_transport rank %d/%d: %s - %d local failures, %d notes over all ranks%s\n", g_rank, g_size,
         total ? "FAILED" : "ok", g_failures, notes, failures_tests ? "" : " (no injected failures)");
  fflush(stdout);
  MPI_Finalize();
  for (g = 0; g < g_ngrave; ++g) free(g_grave[g]);
  free(g_grave);
  return total ? 1 : 0;
}
