/* What every MPI test client (c_client, c_half, c_kvcache, c_variants,
 * c_transport, c_cluster) shares: its rank, the failures it counted and the
 * case it is checking; fail() prints
 *   "<CLIENT_NAME> rank R/P FAIL [case]: message"
 * on stderr and counts it; xcalloc() never returns NULL (out of memory ends
 * the job with MPI_Abort). Each client is one translation unit: define
 * CLIENT_NAME (a string literal) before including this. g_case is a pointer
 * the client sets to a literal or to a buffer of its own. */
#ifndef BURST_TEST_MPI_CLIENT_H
#define BURST_TEST_MPI_CLIENT_H

#include <mpi.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef CLIENT_NAME
#error "define CLIENT_NAME before including mpi_client.h"
#endif

#if defined(__GNUC__)
#define CLIENT_MAYBE_UNUSED __attribute__((unused))
#else
#define CLIENT_MAYBE_UNUSED
#endif

static int g_rank = 0, g_size = 1, g_failures = 0;
static const char *g_case = "";

/* "<CLIENT_NAME> rank R/P <kind>[case]: message\n" on stderr. */
static CLIENT_MAYBE_UNUSED void client_vreport(const char *kind, const char *fmt, va_list ap) {
  fprintf(stderr, "%s rank %d/%d %s[%s]: ", CLIENT_NAME, g_rank, g_size, kind, g_case);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

static CLIENT_MAYBE_UNUSED void fail(const char *fmt, ...) {
  va_list ap;
  ++g_failures;
  va_start(ap, fmt);
  client_vreport("FAIL ", fmt, ap);
  va_end(ap);
}

static CLIENT_MAYBE_UNUSED void *xcalloc(size_t count, size_t size) {
  void *p = calloc(count ? count : 1, size);
  if (!p) {
    fprintf(stderr, "%s rank %d: out of memory (%lu x %lu bytes)\n", CLIENT_NAME, g_rank, (unsigned long)count,
            (unsigned long)size);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  return p;
}

#endif
