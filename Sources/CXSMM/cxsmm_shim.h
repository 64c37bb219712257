/* CXSMM: the few libxsmm calls the kernels use, in row-major terms.
 * libxsmm is column-major and its kernels are variadic C functions, which
 * Swift cannot call; these static inline wrappers can. */
#ifndef CXSMM_SHIM_H
#define CXSMM_SHIM_H
#include <libxsmm.h>

/* A JIT kernel for the row-major product C[m×n] (ldc) (+)= A·B with A [m×k]
 * (lda) and B [k×n] (ldb), or (a_transposed) C (+)= Aᵀ·B with A stored [k×m].
 * Returns NULL when libxsmm has no kernel for it (the caller falls back). */
static inline void *cxsmm_dispatch(int m, int n, int k, int lda, int ldb, int ldc,
                                   int a_transposed, int accumulate) {
  /* Row-major C = op(A)·B is column-major Cᵀ = Bᵀ·op(A)ᵀ: swap the operands.
   * A row-major Aᵀ·B becomes Bᵀ·A, whose second operand is transposed. */
  const libxsmm_blasint mm = n, nn = m, kk = k;
  const libxsmm_blasint lda_c = ldb, ldb_c = lda, ldc_c = ldc;
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  const int flags = (a_transposed ? LIBXSMM_GEMM_FLAG_TRANS_B : LIBXSMM_GEMM_FLAG_NONE)
                  | (accumulate ? 0 : LIBXSMM_GEMM_FLAG_BETA_0);
  const int prefetch = LIBXSMM_PREFETCH_NONE;
  return (void *)libxsmm_smmdispatch(mm, nn, kk, &lda_c, &ldb_c, &ldc_c, &alpha, &beta, &flags, &prefetch);
}

/* Runs a kernel from cxsmm_dispatch on row-major operands a, b, c. */
static inline void cxsmm_run(void *kernel, const float *a, const float *b, float *c) {
  ((libxsmm_smmfunction)kernel)(b, a, c);
}

/* A JIT kernel for the row-major product C[m×n] (ldc, fp32) (+)= A·B with
 * A [m×k] bf16 (lda, plain rows) and B bf16 in VNNI pairs: [k/2][ldb][2],
 * element (p, j) at ((p/2)·ldb + j)·2 + p%2 (k even). libxsmm calls this
 * operand its A (column-major view), hence LIBXSMM_GEMM_FLAG_VNNI_A.
 * Returns NULL when there is no such kernel (no AVX512-BF16: the caller
 * emulates). */
static inline void *cxsmm_bdispatch(int m, int n, int k, int lda, int ldb, int ldc, int accumulate) {
  const libxsmm_blasint mm = n, nn = m, kk = k;
  const libxsmm_blasint lda_c = ldb, ldb_c = lda, ldc_c = ldc;
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  const int flags = LIBXSMM_GEMM_FLAG_VNNI_A | (accumulate ? 0 : LIBXSMM_GEMM_FLAG_BETA_0);
  const int prefetch = LIBXSMM_PREFETCH_NONE;
  return (void *)libxsmm_bsmmdispatch(mm, nn, kk, &lda_c, &ldb_c, &ldc_c, &alpha, &beta, &flags, &prefetch);
}

/* Runs a kernel from cxsmm_bdispatch: a plain bf16 [m×k], b VNNI bf16, c fp32. */
static inline void cxsmm_brun(void *kernel, const unsigned short *a, const unsigned short *b, float *c) {
  ((libxsmm_bsmmfunction)kernel)((const libxsmm_bfloat16 *)b, (const libxsmm_bfloat16 *)a, c);
}

/* 1 when libxsmm generates bf16 dot-product code for this CPU (AVX512-BF16,
 * "cpx" or newer; LIBXSMM_TARGET can lower it). */
static inline int cxsmm_has_bf16(void) {
  return libxsmm_get_target_archid() >= LIBXSMM_X86_AVX512_CPX;
}

static inline void cxsmm_init(void) { libxsmm_init(); }

/* The instruction set libxsmm found (CPUID, or LIBXSMM_TARGET if set; valgrind
 * hides AVX-512, so under it this says AVX2). 2 = AVX-512 (F, CD, BW, DQ, VL),
 * 1 = AVX2 with FMA, 0 = older. */
static inline int cxsmm_vector_level(void) {
  const int id = libxsmm_get_target_archid();
  return id >= LIBXSMM_X86_AVX512_CORE ? 2 : (id >= LIBXSMM_X86_AVX2 ? 1 : 0);
}

/* libxsmm's name for the instruction set it generates code for ("cpx", "hsw", ...). */
static inline const char *cxsmm_target(void) { return libxsmm_get_target_arch(); }
#endif
