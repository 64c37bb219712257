/*
 * cluster_probe.c — what the links of scripts/cluster.sh's cluster deliver
 * (bench/run_cluster.sh builds it with mpicc and runs it before the sweep).
 * Ranks must be NODES x RPN by slot (rank r on node r / RPN). Every rank of a
 * node pairs with the same member of the other node (rank r <-> r +- RPN, two
 * nodes) and with its neighbour on its node (r <-> r ^ 1):
 *   intra: all pairs (0,1), (2,3), ... exchange BYTES at once, both ways
 *          (shared memory: vader, single copy for large messages);
 *   inter: all pairs (r, r + RPN) exchange BYTES at once, both ways (TCP over
 *          the namespace's lo, through its one token bucket when shaped);
 *   latency: a 1-byte ping-pong between ranks 0 and 1 (intra) and 0 and RPN
 *          (inter), half the round trip (median of 21 batches), the other
 *          ranks asleep.
 * Bandwidths are per flow and direction (bytes of one message / the slowest
 * rank's time of the exchange, median of REPS), which is what the simulated
 * network's per-port `bandwidth` / `inter_bandwidth` mean when every rank
 * transfers at once. Prints one JSON line on rank 0.
 *   cluster_probe [BYTES [REPS]]   (default 8 MiB, 5)
 */
#define _POSIX_C_SOURCE 200809L
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *x, int n) {
  qsort(x, (size_t)n, sizeof *x, cmp);
  return x[n / 2];
}

/* Exchange `bytes` with `peer` (both ways), every rank at once; the slowest rank's time. */
static double exchange(int peer, char *send, char *recv, long bytes) {
  double t, worst;
  MPI_Barrier(MPI_COMM_WORLD);
  t = MPI_Wtime();
  if (peer >= 0)
    MPI_Sendrecv(send, (int)bytes, MPI_BYTE, peer, 7, recv, (int)bytes, MPI_BYTE, peer, 7, MPI_COMM_WORLD,
                 MPI_STATUS_IGNORE);
  t = MPI_Wtime() - t;
  MPI_Allreduce(&t, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return worst;
}

/* Half the round trip of a 1-byte ping-pong between ranks a and b: the
 * median over 21 batches of 50 round trips (after 50 untimed), so that a
 * time slice lost to another process spoils one batch, not the figure. The
 * other ranks wait in a barrier that sleeps (MPI_Ibarrier + MPI_Test + 100 us
 * naps): with more ranks than cores the two measured ranks are not
 * time-sliced against spinning ones. */
static double pingpong(int rank, int a, int b, char *buf) {
  double t[21] = {0}, half = 0;
  int i, j, done = 0;
  MPI_Request req;
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == a || rank == b) {
    for (j = -1; j < 21; ++j) {
      double t0 = MPI_Wtime();
      for (i = 0; i < 50; ++i) {
        if (rank == a) {
          MPI_Send(buf, 1, MPI_BYTE, b, 9, MPI_COMM_WORLD);
          MPI_Recv(buf, 1, MPI_BYTE, b, 9, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
          MPI_Recv(buf, 1, MPI_BYTE, a, 9, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
          MPI_Send(buf, 1, MPI_BYTE, a, 9, MPI_COMM_WORLD);
        }
      }
      if (j >= 0) t[j] = (MPI_Wtime() - t0) / 100;
    }
    half = median(t, 21);
  }
  MPI_Ibarrier(MPI_COMM_WORLD, &req);
  while (!done) {
    struct timespec nap = {0, 100000};
    MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    if (!done) nanosleep(&nap, NULL);
  }
  MPI_Bcast(&half, 1, MPI_DOUBLE, a, MPI_COMM_WORLD);
  return half;
}

int main(int argc, char **argv) {
  int rank, size, rpn, i, reps;
  long bytes;
  char *send, *recv;
  double ti[64], te[64], li, le;
  const char *env = getenv("BURST_CLUSTER_RANKS_PER_NODE");
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  bytes = argc > 1 ? atol(argv[1]) : 8L << 20;
  reps = argc > 2 ? atoi(argv[2]) : 5;
  if (reps > 64) reps = 64;
  if (reps < 1) reps = 1;
  rpn = env ? atoi(env) : 2;
  if (rpn < 2 || size != 2 * rpn) {
    if (rank == 0) fprintf(stderr, "cluster_probe: needs 2 nodes of >= 2 ranks (BURST_CLUSTER_RANKS_PER_NODE)\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  send = malloc((size_t)bytes);
  recv = malloc((size_t)bytes);
  if (!send || !recv) MPI_Abort(MPI_COMM_WORLD, 2);
  memset(send, 1, (size_t)bytes);
  memset(recv, 0, (size_t)bytes);
  exchange(rank ^ 1, send, recv, bytes); /* warm-up: connections, registrations */
  exchange(rank < rpn ? rank + rpn : rank - rpn, send, recv, bytes);
  for (i = 0; i < reps; ++i) {
    ti[i] = exchange((rank ^ 1) < size ? rank ^ 1 : -1, send, recv, bytes);
    te[i] = exchange(rank < rpn ? rank + rpn : rank - rpn, send, recv, bytes);
  }
  li = pingpong(rank, 0, 1, send);
  le = pingpong(rank, 0, rpn, send);
  if (rank == 0) {
    double mi = median(ti, reps), me = median(te, reps);
    printf("{\"bench\":\"cluster_probe\",\"ranks\":%d,\"ranks_per_node\":%d,\"bytes\":%ld,\"reps\":%d,"
           "\"intra_s\":%.6g,\"intra_bandwidth\":%.6g,\"inter_s\":%.6g,\"inter_bandwidth\":%.6g,"
           "\"intra_latency\":%.6g,\"inter_latency\":%.6g,\"inter_flows\":%d}\n",
           size, rpn, bytes, reps, mi, (double)bytes / mi, me, (double)bytes / me, li, le, 2 * rpn);
  }
  free(send);
  free(recv);
  MPI_Finalize();
  return 0;
}
