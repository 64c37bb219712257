/*
 * mpi_bare.c — MPI_Init and MPI_Finalize and nothing else.
 *
 * scripts/valgrind.sh runs it under valgrind (--gen-suppressions=all) at the
 * same rank counts as the clients and turns what valgrind reports into the
 * suppression file for the clients' runs: so only what OpenMPI itself loses
 * in its init and finalize is suppressed, and every byte left is the
 * library's (or the client's).
 */
#include <mpi.h>

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Finalize();
  return 0;
}
