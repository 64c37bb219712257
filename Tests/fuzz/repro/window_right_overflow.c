/*
 * window_right_overflow.c — found by fuzz_abi (crash-a5a9a753...): a valid
 * window_right close to INT64_MAX (the header only asks for >= -1) must act
 * as an unbounded right window, but VisibilityRule.keyBounds computes
 * hi = i &+ window_right, which wraps to a negative bound for every query
 * position i >= 1 (and breaks the "bounds never decrease" invariant the tile
 * skipping relies on, so even row 0 loses its keys): those rows see no key,
 * out = 0 and lse = -inf.
 *
 * One self context, N = 16, every pattern: compares window_right = INT64_MAX
 * (and INT64_MAX - 3) against window_right = -1 (unbounded), which must give
 * identical results for any finite N. Exit 0 = fixed, 1 = the bug.
 *
 *   cc -I include Tests/fuzz/repro/window_right_overflow.c -L build/install/lib \
 *     -lburst_attention -Wl,-rpath,$PWD/build/install/lib -lm -o /tmp/wr && /tmp/wr
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "burst_attention.h"

enum { N = 16, D = 8 };

static burst_status run(burst_context *ctx, int32_t pattern, int64_t wr, float *out, float *lse,
                        const float *q, const float *k, const float *v) {
  burst_attention_config c;
  burst_plan *plan = NULL;
  burst_status st;
  burst_attention_config_init(&c);
  c.pattern = pattern;
  c.batch = 1;
  c.seq_len_local = N;
  c.num_heads_q = c.num_heads_kv = 1;
  c.head_dim = D;
  c.window_right = wr;
  st = burst_plan_create(ctx, &c, &plan);
  if (st == BURST_OK) st = burst_forward(plan, q, k, v, out, lse);
  if (st != BURST_OK) printf("pattern %d wr %lld: %s: %s\n", pattern, (long long)wr, burst_status_string(st), burst_last_error());
  burst_plan_destroy(plan);
  return st;
}

int main(void) {
  static float q[N * D], k[N * D], v[N * D], out0[N * D], lse0[N], out1[N * D], lse1[N];
  const int64_t wrs[2] = {INT64_MAX, INT64_MAX - 3};
  burst_context *ctx = NULL;
  int bad = 0;
  for (int i = 0; i < N * D; ++i) {
    q[i] = (float)sin(0.37 * i);
    k[i] = (float)cos(0.11 * i);
    v[i] = (float)sin(0.05 * i + 1);
  }
  if (burst_context_create_self(&ctx) != BURST_OK) return 2;
  for (int32_t pattern = BURST_PATTERN_BURST; pattern <= BURST_PATTERN_AUTO; ++pattern)
    for (int w = 0; w < 2; ++w) {
      if (run(ctx, pattern, -1, out0, lse0, q, k, v) != BURST_OK) return 2;
      if (run(ctx, pattern, wrs[w], out1, lse1, q, k, v) != BURST_OK) { bad = 1; continue; }
      for (int i = 0; i < N; ++i)
        if (lse1[i] != lse0[i] || memcmp(out1 + i * D, out0 + i * D, sizeof(float) * D)) {
          printf("pattern %d window_right %lld: row %d lse %g (unbounded: %g)\n", pattern, (long long)wrs[w], i,
                 (double)lse1[i], (double)lse0[i]);
          bad = 1;
          break;
        }
    }
  burst_context_destroy(ctx);
  printf("%s\n", bad ? "BUG: a huge window_right hides keys" : "ok: a huge window_right is unbounded");
  return bad;
}
