/* Software prefetch for the decode kernels (Swift has no prefetch intrinsic).
 * Decode reads every stored key and value once per step and does little work
 * per byte: without asking for lines ahead, memory idles while the kernels
 * compute (measured: the bf16 kernels ran at the sum of their compute time
 * and the memory's time, not the larger of the two). */
#ifndef CPREFETCH_H
#define CPREFETCH_H

/* One cache line, into every cache level. Never faults. */
static inline void burst_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }

/* `bytes` bytes from p, one prefetch per 64-byte line. */
static inline void burst_prefetch_range(const void *p, long bytes) {
  const char *c = (const char *)p;
  for (long i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, 0, 2);
}

/* The worker pool's spin-wait (WorkerPool.swift): an acquire load of the
 * job generation, a release store of it, and the spin-loop hint. */
static inline long burst_load_acquire(const long *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void burst_store_release(long *p, long v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void burst_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

#endif
