/*
 * timeout_disagreement.c — NOT FIXED (the agreement protocol is the lead's
 * design; see Tests/fuzz/README.md): the header promises that a collective
 * call "fails on every rank" when it fails on one, naming a timeout among
 * the causes. With timeouts it does not: fuzz_abi counts such operations as
 * "timeout-exempt disagreements" (183 in 7 minutes; FUZZ_STRICT_TIMEOUT=1
 * turns them into failures).
 *
 * Two loopback ranks, timeout 0.05 s. Rank 1 calls burst_plan_create 0.2 s
 * after rank 0:
 *   1. rank 0 posts its agreement record, waits 0.05 s, returns TIMEOUT;
 *      rank 1 arrives, finds rank 0's record already there and returns OK.
 *      One rank has a plan, the other has none.
 *   2. the context stays desynchronised: both ranks then call
 *      burst_plan_create together (no timeout involved): rank 0 receives
 *      the stale record rank 1 sent in step 1 and fails with MISMATCH,
 *      rank 1 receives rank 0's new record and succeeds. Every later
 *      collective call on the context is off by one the same way.
 * Waiting alone cannot fix step 1 (a rank cannot know whether its peer saw
 * its record in time); what the header can promise is weaker (e.g. "a rank
 * that times out leaves its peers failing within their own timeout"), or the
 * context must be poisoned after a TIMEOUT like a plan is.
 *
 *   cc -I include Tests/fuzz/repro/timeout_disagreement.c -L build/install/lib \
 *     -lburst_attention -Wl,-rpath,$PWD/build/install/lib -lpthread -o /tmp/td && /tmp/td
 * Exit 1 = the ranks disagreed (the bug), 0 = they agreed.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "burst_attention.h"

static burst_context *ctx[2];
static pthread_barrier_t both;
static burst_status st[2][2];
static char msg[2][2][200];

static void *rank_main(void *arg) {
  int r = (int)(size_t)arg;
  burst_attention_config c;
  burst_plan *plan = NULL;
  burst_attention_config_init(&c);
  c.batch = 1;
  c.seq_len_local = 4;
  c.num_heads_q = c.num_heads_kv = 1;
  c.head_dim = 8;
  c.timeout_seconds = 0.05;
  if (r == 1) {
    struct timespec late = {0, 200 * 1000 * 1000};
    nanosleep(&late, NULL);
  }
  for (int call = 0; call < 2; ++call) {
    st[call][r] = burst_plan_create(ctx[r], &c, &plan);
    snprintf(msg[call][r], sizeof msg[call][r], "%s", st[call][r] ? burst_last_error() : "");
    burst_plan_destroy(plan);
    plan = NULL;
    if (call == 0) pthread_barrier_wait(&both); /* step 2: both ranks call together */
  }
  return NULL;
}

int main(void) {
  pthread_t th[2];
  int disagree = 0;
  if (burst_context_create_loopback(2, ctx) != BURST_OK) return 2;
  pthread_barrier_init(&both, NULL, 2);
  for (int r = 0; r < 2; ++r) pthread_create(&th[r], NULL, rank_main, (void *)(size_t)r);
  for (int r = 0; r < 2; ++r) pthread_join(th[r], NULL);
  for (int call = 0; call < 2; ++call) {
    for (int r = 0; r < 2; ++r)
      printf("plan_create #%d rank %d: %s%s%s\n", call + 1, r, burst_status_string(st[call][r]),
             msg[call][r][0] ? ": " : "", msg[call][r]);
    if ((st[call][0] == BURST_OK) != (st[call][1] == BURST_OK)) disagree = 1;
  }
  for (int r = 0; r < 2; ++r) burst_context_destroy(ctx[r]);
  printf("%s\n", disagree ? "BUG: the ranks disagree on the outcome of a collective call" : "ok: the ranks agree");
  return disagree;
}
