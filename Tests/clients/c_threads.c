/* Distinct plans driven from distinct threads at once (issue 9): with
 * MPI_THREAD_MULTIPLE, each rank runs two pthreads, each with its own MPI
 * context (its own duplicate of MPI_COMM_WORLD) and plan, forward + backward
 * several times concurrently; every result must be bitwise the result of the
 * same plan run alone first. (Two threads on one plan, BURST_ERROR_BUSY, is
 * ReliabilityTests' case, on loopback contexts.) If the MPI
 * library does not provide MPI_THREAD_MULTIPLE the test says so and skips
 * (exit 0 with "SKIPPED" in its output). */
#define _POSIX_C_SOURCE 200809L
#include <burst_attention.h>
#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TOKENS = 96, HEADS = 2, DIM = 16, REPEATS = 4 };
#define ELEMS ((size_t)TOKENS * HEADS * DIM)

typedef struct job {
  burst_plan *plan;
  float q[ELEMS], out[ELEMS], lse[TOKENS * HEADS], dq[ELEMS], dk[ELEMS], dv[ELEMS];
  int failures;
  char message[256];
} job;

static int g_rank;

static void fill(float *x, int seed) {
  size_t i;
  for (i = 0; i < ELEMS; ++i) x[i] = (float)(((i + (size_t)seed * 7919u) * 2654435761u) % 1000u) / 500.0f - 1.0f;
}

static int run_once(job *j) {
  burst_status st = burst_forward(j->plan, j->q, j->q, j->q, j->out, j->lse);
  if (st == BURST_OK) st = burst_backward(j->plan, j->q, j->q, j->q, j->out, j->lse, j->q, j->dq, j->dk, j->dv);
  if (st != BURST_OK) snprintf(j->message, sizeof j->message, "%s: %s", burst_status_string(st), burst_last_error());
  return st == BURST_OK;
}

static void *worker(void *arg) {
  job *j = (job *)arg;
  int r;
  for (r = 0; r < REPEATS; ++r)
    if (!run_once(j)) ++j->failures;
  return NULL;
}

static burst_plan *make_plan(MPI_Comm comm, burst_context **ctx) {
  burst_attention_config cfg;
  burst_plan *plan = NULL;
  if (burst_context_create_mpi((int64_t)MPI_Comm_c2f(comm), ctx) != BURST_OK) return NULL;
  burst_attention_config_init(&cfg);
  cfg.batch = 1; cfg.seq_len_local = TOKENS; cfg.num_heads_q = cfg.num_heads_kv = HEADS; cfg.head_dim = DIM;
  cfg.mask = BURST_MASK_CAUSAL; cfg.num_threads = 1; cfg.timeout_seconds = 60;
  if (burst_plan_create(*ctx, &cfg, &plan) != BURST_OK) {
    fprintf(stderr, "rank %d: plan: %s\n", g_rank, burst_last_error());
    return NULL;
  }
  return plan;
}

int main(int argc, char **argv) {
  int provided = 0, size, t, failures = 0;
  MPI_Comm comms[2];
  burst_context *ctx[2];
  static job jobs[2], alone[2];
  pthread_t threads[2];

  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (provided < MPI_THREAD_MULTIPLE) {
    if (g_rank == 0) printf("c_threads: SKIPPED: MPI provides thread level %d, not MPI_THREAD_MULTIPLE\n", provided);
    MPI_Finalize();
    return 0;
  }
  for (t = 0; t < 2; ++t) {
    MPI_Comm_dup(MPI_COMM_WORLD, &comms[t]);
    jobs[t].plan = make_plan(comms[t], &ctx[t]);
    if (!jobs[t].plan) return 1;
    fill(jobs[t].q, 10 * t + g_rank);
    alone[t] = jobs[t];
  }
  /* Each plan alone first (both threads' plans, one after the other). */
  for (t = 0; t < 2; ++t)
    if (!run_once(&alone[t])) { fprintf(stderr, "rank %d: alone: %s\n", g_rank, alone[t].message); return 1; }
  /* Both at once, REPEATS times each. */
  for (t = 0; t < 2; ++t) pthread_create(&threads[t], NULL, worker, &jobs[t]);
  for (t = 0; t < 2; ++t) pthread_join(threads[t], NULL);
  for (t = 0; t < 2; ++t) {
    if (jobs[t].failures) { fprintf(stderr, "rank %d thread %d: %s\n", g_rank, t, jobs[t].message); ++failures; }
    else if (memcmp(jobs[t].out, alone[t].out, sizeof jobs[t].out) || memcmp(jobs[t].dq, alone[t].dq, sizeof jobs[t].dq) ||
             memcmp(jobs[t].dk, alone[t].dk, sizeof jobs[t].dk) || memcmp(jobs[t].dv, alone[t].dv, sizeof jobs[t].dv)) {
      fprintf(stderr, "rank %d thread %d: results differ from the plan run alone\n", g_rank, t);
      ++failures;
    }
  }
  for (t = 0; t < 2; ++t) {
    burst_plan_destroy(jobs[t].plan);
    burst_context_destroy(ctx[t]);
    MPI_Comm_free(&comms[t]);
  }
  MPI_Allreduce(MPI_IN_PLACE, &failures, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (g_rank == 0) printf("c_threads: %s - %d ranks x 2 threads x %d forward+backward, %d failures\n",
                          failures ? "FAILED" : "passed", size, REPEATS, failures);
  MPI_Finalize();
  return failures ? 1 : 0;
}
