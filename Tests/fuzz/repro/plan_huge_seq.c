/*
 * plan_huge_seq.c — NOT FIXED (AttentionContext / AttentionConfig limits are
 * the lead's): burst_plan_create with a valid but huge shape aborts the
 * process instead of returning an error. seq_len_local = 2^40 with
 * batch = heads = head_dim = 1 passes validation (every tensor is within the
 * library's 2^46-element limit), then the plan's token metadata (TokenLayout:
 * positions and key bounds of every token, O(N) Int arrays) is allocated
 * with Swift arrays, whose allocation failure traps:
 *   "Fatal error: failed to allocate 8796093022240 bytes of memory"
 * A trap must not cross the ABI (DESIGN §2); OUT_OF_MEMORY (or
 * INVALID_ARGUMENT for an N beyond a documented limit) is expected. Smaller N
 * succeed but slowly: seq_len_local = 1e8 takes 9.3 s in plan_create here.
 *
 *   cc -I include Tests/fuzz/repro/plan_huge_seq.c -L build/install/lib \
 *     -lburst_attention -Wl,-rpath,$PWD/build/install/lib -o /tmp/phs && /tmp/phs
 * Exit 0 = fixed (a failure status); the bug aborts (SIGABRT).
 */
#include <stdint.h>
#include <stdio.h>

#include "burst_attention.h"

int main(void) {
  burst_context *ctx = NULL;
  burst_plan *plan = NULL;
  burst_attention_config c;
  burst_status st;
  if (burst_context_create_self(&ctx) != BURST_OK) return 2;
  burst_attention_config_init(&c);
  c.batch = 1;
  c.num_heads_q = c.num_heads_kv = 1;
  c.head_dim = 1;
  c.seq_len_local = 1ll << 40;
  st = burst_plan_create(ctx, &c, &plan);
  printf("plan_create(seq_len_local = 2^40): %s: %s\n", burst_status_string(st), burst_last_error());
  burst_plan_destroy(plan);
  burst_context_destroy(ctx);
  return st == BURST_OK ? 1 : 0;
}
