/*
 * ulysses_empty_batch.c — found by fuzz_abi (timeout-60439647...): with an
 * empty global sequence (every rank seq_len_local = 0, which the header
 * allows, NULL buffers) the ULYSSES forward and backward still loop over
 * every (batch x head) slice doing nothing, O(batch * num_heads) time: a
 * batch of 2^24 took 0.13 s (fwd) / 0.19 s (bwd), the fuzzer's 2^33 over a
 * minute (the other patterns take ~4 ms whatever the batch). timeout_seconds
 * does not bound it (it bounds waits, not compute).
 *
 *   cc -I include Tests/fuzz/repro/ulysses_empty_batch.c -L build/install/lib \
 *     -lburst_attention -Wl,-rpath,$PWD/build/install/lib -o /tmp/ueb && /tmp/ueb
 * Exit 0 = fixed (both calls under 0.5 s), 1 = the bug.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include "burst_attention.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(void) {
  burst_context *ctx = NULL;
  burst_plan *plan = NULL;
  burst_attention_config c;
  burst_status st;
  double t0, tf, tb;
  if (burst_context_create_self(&ctx) != BURST_OK) return 2;
  burst_attention_config_init(&c);
  c.pattern = BURST_PATTERN_ULYSSES;
  c.batch = 1ll << 28;
  c.num_heads_q = 6;
  c.num_heads_kv = 3;
  c.head_dim = 12;
  c.seq_len_local = 0;
  if (burst_plan_create(ctx, &c, &plan) != BURST_OK) { printf("plan_create: %s\n", burst_last_error()); return 2; }
  t0 = now();
  st = burst_forward(plan, NULL, NULL, NULL, NULL, NULL);
  tf = now() - t0;
  printf("forward over 0 tokens, batch 2^28: %s in %.3f s\n", burst_status_string(st), tf);
  t0 = now();
  st = burst_backward(plan, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
  tb = now() - t0;
  printf("backward over 0 tokens, batch 2^28: %s in %.3f s\n", burst_status_string(st), tb);
  burst_plan_destroy(plan);
  burst_context_destroy(ctx);
  return tf > 0.5 || tb > 0.5;
}
