/*
 * leak_kernels_oom.c — found by fuzz_abi (leak-3ab08d5b...): a forward whose
 * kernel scratch space cannot be allocated returns OUT_OF_MEMORY, as it
 * should, but leaks the ranges and counters LocalAttention.init? allocated
 * before its failing guard (a failable class init that returns nil never
 * runs deinit): 4 KiB + 16 B per failed forward.
 *
 * Two loopback ranks: rank 0 holds 0 tokens (NULL buffers are allowed), rank
 * 1 holds 16 and passes NULL, so rank 1 fails its local check, while rank 0
 * goes on to allocate the kernels for a batch of 2^33 (2^44 floats of key
 * panels), which fails.
 *
 *   clang -g -fsanitize=address -I include Tests/fuzz/repro/leak_kernels_oom.c \
 *     -L build/install/lib -lburst_attention -Wl,-rpath,$PWD/build/install/lib -lpthread -o /tmp/leak
 *   ASAN_OPTIONS=allocator_may_return_null=1 /tmp/leak    # LeakSanitizer: 4112 bytes leaked
 * (or without ASan: valgrind --leak-check=full /tmp/leak: "definitely lost")
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "burst_attention.h"

static burst_context *ctx[2];
static burst_status st_create[2], st_fwd[2];

static void *rank_main(void *arg) {
  int r = (int)(size_t)arg;
  burst_attention_config c;
  burst_plan *plan = NULL;
  burst_attention_config_init(&c);
  c.pattern = BURST_PATTERN_ALLGATHER;
  c.batch = 1ll << 33;
  c.num_heads_q = 6;
  c.num_heads_kv = 2;
  c.head_dim = 8;
  c.seq_len_local = r == 0 ? 0 : 16;
  c.timeout_seconds = 5;
  st_create[r] = burst_plan_create(ctx[r], &c, &plan);
  if (st_create[r] == BURST_OK) {
    st_fwd[r] = burst_forward(plan, NULL, NULL, NULL, NULL, NULL);
    printf("rank %d: forward -> %s: %s\n", r, burst_status_string(st_fwd[r]), burst_last_error());
    fflush(stdout);
  }
  burst_plan_destroy(plan);
  return NULL;
}

int main(void) {
  pthread_t th[2];
  if (burst_context_create_loopback(2, ctx) != BURST_OK) return 1;
  for (int r = 0; r < 2; ++r) pthread_create(&th[r], NULL, rank_main, (void *)(size_t)r);
  for (int r = 0; r < 2; ++r) pthread_join(th[r], NULL);
  for (int r = 0; r < 2; ++r) burst_context_destroy(ctx[r]);
  return st_create[0] == BURST_OK && st_fwd[0] == BURST_ERROR_OUT_OF_MEMORY ? 0 : 2;
}
