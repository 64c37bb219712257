/* A self-context forward + backward small enough to run under valgrind: the
 * library must run on whatever vector unit the CPU (or valgrind's emulated
 * CPU, which has no AVX-512) offers, and valgrind must report no error.
 * Also a check that the portable and JIT paths agree to fp32 rounding is left
 * to the Swift tests; this one only proves "runs clean anywhere". */
#include <burst_attention.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
int main(void) {
  burst_context *ctx; burst_plan *plan; burst_attention_config cfg;
  if (burst_context_create_self(&ctx)) return 1;
  burst_attention_config_init(&cfg);
  cfg.batch = 1; cfg.seq_len_local = 150; cfg.num_heads_q = cfg.num_heads_kv = 2; cfg.head_dim = 64; cfg.mask = BURST_MASK_CAUSAL;
  if (burst_plan_create(ctx, &cfg, &plan)) { puts(burst_last_error()); return 1; }
  size_t n = 150 * 2 * 64;
  float *x = malloc(n * 4), *o = malloc(n * 4), *l = malloc(300 * 4), *g1 = malloc(n*4), *g2 = malloc(n*4), *g3 = malloc(n*4);
  for (size_t i = 0; i < n; i++) x[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
  if (burst_forward(plan, x, x, x, o, l)) return 1;
  if (burst_backward(plan, x, x, x, o, l, x, g1, g2, g3)) return 1;
  double s = 0; for (size_t i = 0; i < n; i++) s += o[i] + g1[i] + g2[i] + g3[i];
  printf("checksum %.9g\n", s);
  if (!(s == s)) { puts("NaN in results"); return 1; }
  burst_plan_destroy(plan); burst_context_destroy(ctx);
  free(x); free(o); free(l); free(g1); free(g2); free(g3);
  return 0;
}
