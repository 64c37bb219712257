/*
 * mpi_leak.c — the negative control of scripts/valgrind.sh and
 * scripts/sanitize.sh: after MPI_Init it loses 4096 bytes of its own and a
 * duplicated communicator it never frees, then finalizes. Both scripts run it
 * with the suppressions the clients get and fail unless the checker reports
 * the loss: a suppression file that hid everything (or a checker that was
 * not running) would make every client look clean.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *volatile sink;

int main(int argc, char **argv) {
  MPI_Comm dup;
  char *lost;
  MPI_Init(&argc, &argv);
  MPI_Comm_dup(MPI_COMM_WORLD, &dup);   /* never MPI_Comm_free'd */
  lost = malloc(4096);                  /* never freed */
  if (lost) memset(lost, 1, 4096);
  sink = lost;
  sink = NULL;                          /* the last pointer to it is gone */
  lost = NULL;
  MPI_Finalize();
  puts("mpi_leak: done (a leak checker must report 4096 bytes lost)");
  return 0;
}
