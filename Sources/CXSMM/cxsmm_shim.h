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

static inline void cxsmm_init(void) { libxsmm_init(); }

/* The instruction set libxsmm found (CPUID, or LIBXSMM_TARGET if set; valgrind
 * hides AVX-512, so under it this says AVX2). 2 = AVX-512 (F, CD, BW, DQ, VL),
 * 1 = AVX2 with FMA, 0 = older. */
static inline int cxsmm_vector_level(void) {
  const int id = libxsmm_get_target_archid();
  return id >= LIBXSMM_X86_AVX512_CORE ? 2 : (id >= LIBXSMM_X86_AVX2 ? 1 : 0);
}

/* Asks for `bytes` bytes from p into the caches ahead of use (one prefetch per
 * 64-byte line): decode widens half-precision keys tile by tile, and without
 * it memory idles while a tile's products run. */
static inline void cxsmm_prefetch(const void *p, long bytes) {
  const char *c = (const char *)p;
  for (long i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, 0, 2);
}

/* libxsmm's name for the instruction set it generates code for ("cpx", "hsw", ...). */
static inline const char *cxsmm_target(void) { return libxsmm_get_target_arch(); }
#endif
