/* A rank killed mid-job (issue 9): every rank runs a forward; then the last
 * rank SIGKILLs itself and the others call forward again with a short
 * timeout. Each survivor prints one line "survivor rank R: STATUS after S s:
 * MESSAGE" — what the library gives it — if it gets to return at all: by
 * default OpenMPI's mpirun kills the remaining ranks as soon as one exits on
 * a signal, so a survivor may never print. kill_peer.sh runs it both ways and
 * checks that nothing outlives the bound.
 * With "mpi-fault" as second argument nobody is killed: run with
 * BURST_TEST_MPI_FAULT_RANK=0, rank 0's first data message goes to a rank
 * that does not exist, MPI fails it for real (MPI_ERR_RANK), and rank 0 must
 * get BURST_ERROR_COMMUNICATION with MPI's error string while the others get
 * TIMEOUT or COMMUNICATION.
 * Usage: c_kill_peer [timeout_seconds [mpi-fault]]   (default 3) */
#define _POSIX_C_SOURCE 200809L
#include <string.h>
#include <burst_attention.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
  int rank, size, i;
  double timeout = argc > 1 ? atof(argv[1]) : 3.0;
  burst_context *ctx = NULL;
  burst_plan *plan = NULL;
  burst_attention_config cfg;
  const int64_t n_local = 64;
  float *q, *out;
  size_t elems;
  burst_status st;
  double start;

  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (burst_context_create_mpi((int64_t)MPI_Comm_c2f(MPI_COMM_WORLD), &ctx) != BURST_OK) {
    fprintf(stderr, "rank %d: context: %s\n", rank, burst_last_error());
    return 2;
  }
  burst_attention_config_init(&cfg);
  cfg.batch = 1; cfg.seq_len_local = n_local; cfg.num_heads_q = cfg.num_heads_kv = 2; cfg.head_dim = 16;
  cfg.mask = BURST_MASK_CAUSAL; cfg.timeout_seconds = timeout; cfg.num_threads = 1;
  if (burst_plan_create(ctx, &cfg, &plan) != BURST_OK) {
    fprintf(stderr, "rank %d: plan: %s\n", rank, burst_last_error());
    return 2;
  }
  elems = (size_t)n_local * 2 * 16;
  q = (float *)malloc(elems * sizeof(float));
  out = (float *)malloc(elems * sizeof(float));
  if (!q || !out) return 2;
  for (i = 0; i < (int)elems; ++i) q[i] = (float)(i % 13) / 13.0f - 0.5f;
  if (argc > 2 && strcmp(argv[2], "mpi-fault") == 0) {
    start = now();
    st = burst_forward(plan, q, q, q, out, NULL);
    printf("fault rank %d: %s after %.2f s: %s\n", rank, burst_status_string(st), now() - start,
           st == BURST_OK ? "-" : burst_last_error());
    st = burst_forward(plan, q, q, q, out, NULL);
    printf("fault rank %d: again %s\n", rank, burst_status_string(st));
    fflush(stdout);
    burst_plan_destroy(plan);
    /* Exiting without MPI_Finalize makes mpirun end the job: let the peers
     * reach their own timeout and report first. */
    sleep((unsigned)timeout + 2);
    _exit(0);
  }
  st = burst_forward(plan, q, q, q, out, NULL);
  printf("rank %d: first forward %s\n", rank, burst_status_string(st));
  fflush(stdout);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == size - 1) {
    printf("rank %d: SIGKILL\n", rank);
    fflush(stdout);
    raise(SIGKILL);
  }
  start = now();
  st = burst_forward(plan, q, q, q, out, NULL);
  printf("survivor rank %d: %s after %.2f s: %s\n", rank, burst_status_string(st), now() - start,
         st == BURST_OK ? "-" : burst_last_error());
  fflush(stdout);
  /* A later call on the (poisoned) plan must return at once. */
  start = now();
  st = burst_forward(plan, q, q, q, out, NULL);
  printf("survivor rank %d: again %s after %.2f s\n", rank, burst_status_string(st), now() - start);
  fflush(stdout);
  burst_plan_destroy(plan);
  /* No collective MPI call may follow: the communicator has a dead member.
   * Exit without MPI_Finalize (which would wait for the dead rank). */
  free(q);
  free(out);
  _exit(st == BURST_ERROR_TIMEOUT || st == BURST_ERROR_COMMUNICATION ? 0 : 1);
}
