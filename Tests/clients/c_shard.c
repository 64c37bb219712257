/*
 * c_shard.c — the token distribution helpers from C: burst_shard_positions,
 * burst_shard and burst_unshard against an independent implementation of the
 * header's rules (CONTIGUOUS balanced split, ZIGZAG per sequence with
 * packing, STRIPED over the whole buffer), for every distribution, N = 0..40,
 * P = 1..5, unpacked and packed (empty sequences included); exact round
 * trips; and every bad argument -> BURST_ERROR_INVALID_ARGUMENT with a
 * message. Local calls only: no MPI.
 */
#include <burst_attention.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_failures, g_checks;

static void check(int ok, const char *what, int dist, int64_t N, int P, int r) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    if (g_failures < 20) fprintf(stderr, "c_shard FAIL: %s (distribution %d, N %ld, P %d, rank %d)\n", what, dist, (long)N, P, r);
  }
}

/* owner[t] = the rank that holds token t, from the header's words. */
static void owners(int dist, int64_t N, const int64_t *cu, int64_t nseq, int P, int *owner) {
  int64_t t, s;
  if (dist == BURST_DISTRIBUTION_STRIPED) {
    for (t = 0; t < N; ++t) owner[t] = (int)(t % P);
  } else if (dist == BURST_DISTRIBUTION_CONTIGUOUS) {
    int64_t start = 0;
    int r;
    for (r = 0; r < P; ++r) {
      int64_t len = N / P + (r < N % P ? 1 : 0);
      for (t = start; t < start + len; ++t) owner[t] = r;
      start += len;
    }
  } else { /* zigzag: every sequence (or the whole buffer) in 2P chunks */
    int64_t pieces = cu ? nseq : 1;
    for (s = 0; s < pieces; ++s) {
      int64_t begin = cu ? cu[s] : 0, L = (cu ? cu[s + 1] : N) - begin, at = begin;
      int c;
      for (c = 0; c < 2 * P; ++c) {
        int64_t len = L / (2 * P) + (c < L % (2 * P) ? 1 : 0);
        for (t = at; t < at + len; ++t) owner[t] = c < P ? c : 2 * P - 1 - c;
        at += len;
      }
    }
  }
}

static void sweep(void) {
  int dist, P, r;
  int64_t N, i, x;
  for (dist = 0; dist <= 2; ++dist)
    for (P = 1; P <= 5; ++P)
      for (N = 0; N <= 40; ++N) {
        int64_t packings[4][6];
        int64_t nseqs[4] = {0, 1, 4, 3};
        int pk;
        packings[1][0] = 0; packings[1][1] = N;
        packings[2][0] = 0; packings[2][1] = 0; packings[2][2] = N / 3; packings[2][3] = N / 3; packings[2][4] = N;
        packings[3][0] = 0; packings[3][1] = N / 2; packings[3][2] = N / 2 + (N > N / 2 ? 1 : 0); packings[3][3] = N;
        for (pk = 0; pk < 4; ++pk) {
          const int64_t *cu = pk ? packings[pk] : NULL;
          int64_t nseq = nseqs[pk], total = 0;
          int *owner = calloc((size_t)N + 1, sizeof(int)), *seen = calloc((size_t)N + 1, sizeof(int));
          float *full = calloc((size_t)(3 * N * 3) + 1, sizeof(float)), *back = calloc((size_t)(3 * N * 3) + 1, sizeof(float));
          owners(dist, N, cu, nseq, P, owner);
          for (i = 0; i < 3 * N * 3; ++i) full[i] = (float)(i + 1);
          for (r = 0; r < P; ++r) {
            int64_t count = -1, got = -1, k = 0;
            int64_t *pos;
            float *local;
            check(burst_shard_positions(dist, N, cu, nseq, P, r, NULL, 0, &count) == BURST_OK, "count query", dist, N, P, r);
            pos = calloc((size_t)count + 1, sizeof(int64_t));
            check(burst_shard_positions(dist, N, cu, nseq, P, r, pos, count, &got) == BURST_OK && got == count,
                  "positions", dist, N, P, r);
            for (i = 0; i < N; ++i)
              if (owner[i] == r) {
                check(k < count && pos[k] == i, "position differs from the rule", dist, N, P, r);
                ++k;
              }
            check(k == count, "count differs from the rule", dist, N, P, r);
            for (i = 0; i < count; ++i) seen[pos[i]] += 1;
            total += count;
            /* outer = 3 blocks of N rows of 12 bytes (3 floats). */
            local = calloc((size_t)(3 * count * 3) + 1, sizeof(float));
            check(burst_shard(dist, N, cu, nseq, P, r, 3, 12, full, local) == BURST_OK, "burst_shard", dist, N, P, r);
            for (x = 0; x < 3; ++x)
              for (i = 0; i < count; ++i)
                check(memcmp(local + (x * count + i) * 3, full + (x * N + pos[i]) * 3, 12) == 0, "shard row", dist, N, P, r);
            check(burst_unshard(dist, N, cu, nseq, P, r, 3, 12, local, back) == BURST_OK, "burst_unshard", dist, N, P, r);
            free(local);
            free(pos);
          }
          check(total == N, "counts do not sum to N", dist, N, P, -1);
          for (i = 0; i < N; ++i) check(seen[i] == 1, "positions do not partition 0..N-1", dist, N, P, -1);
          check(memcmp(full, back, (size_t)(3 * N * 3) * sizeof(float)) == 0, "unshard of every rank != the full buffer", dist, N, P, -1);
          free(owner); free(seen); free(full); free(back);
        }
      }
}

static void bad(burst_status st, const char *what) {
  ++g_checks;
  if (st != BURST_ERROR_INVALID_ARGUMENT || burst_last_error()[0] == '\0') {
    ++g_failures;
    fprintf(stderr, "c_shard FAIL: %s gave %s (\"%s\"), expected BURST_ERROR_INVALID_ARGUMENT with a message\n", what,
            burst_status_string(st), burst_last_error());
  }
}

static void bad_arguments(void) {
  int64_t count = 0, pos[4];
  const int64_t cu_ok[3] = {0, 4, 10}, cu_down[3] = {0, 6, 4}, cu_start[3] = {1, 4, 10};
  float full[40], local[40];
  memset(full, 0, sizeof full);
  bad(burst_shard_positions(0, 10, NULL, 0, 2, 0, NULL, 0, NULL), "NULL count");
  bad(burst_shard_positions(0, 10, NULL, 0, 2, 0, pos, 4, &count), "capacity 4 below 5 positions");
  bad(burst_shard_positions(0, 10, NULL, 0, 2, 0, NULL, 5, &count), "positions NULL with capacity 5");
  bad(burst_shard_positions(0, 10, NULL, 0, 2, 2, NULL, 0, &count), "rank = world_size");
  bad(burst_shard_positions(0, 10, NULL, 0, 2, -1, NULL, 0, &count), "rank = -1");
  bad(burst_shard_positions(0, 10, NULL, 0, 0, 0, NULL, 0, &count), "world_size = 0");
  bad(burst_shard_positions(0, 10, NULL, 0, -3, 0, NULL, 0, &count), "world_size = -3");
  bad(burst_shard_positions(3, 10, NULL, 0, 2, 0, NULL, 0, &count), "distribution = 3");
  bad(burst_shard_positions(-1, 10, NULL, 0, 2, 0, NULL, 0, &count), "distribution = -1");
  bad(burst_shard_positions(0, -1, NULL, 0, 2, 0, NULL, 0, &count), "total_tokens = -1");
  bad(burst_shard_positions(1, 11, cu_ok, 2, 2, 0, NULL, 0, &count), "total_tokens != cu_seqlens[num_sequences]");
  bad(burst_shard_positions(1, 4, cu_down, 2, 2, 0, NULL, 0, &count), "decreasing cu_seqlens");
  bad(burst_shard_positions(1, 10, cu_start, 2, 2, 0, NULL, 0, &count), "cu_seqlens[0] != 0");
  bad(burst_shard_positions(1, 10, NULL, 2, 2, 0, NULL, 0, &count), "num_sequences 2 with cu_seqlens NULL");
  bad(burst_shard_positions(1, 10, cu_ok, 0, 2, 0, NULL, 0, &count), "cu_seqlens with num_sequences 0");
  bad(burst_shard(0, 10, NULL, 0, 2, 0, 1, 4, NULL, local), "burst_shard full NULL");
  bad(burst_shard(0, 10, NULL, 0, 2, 0, 1, 4, full, NULL), "burst_shard local NULL");
  bad(burst_shard(0, 10, NULL, 0, 2, 0, 1, 4, full, full + 2), "burst_shard overlapping buffers");
  bad(burst_unshard(0, 10, NULL, 0, 2, 1, 1, 4, full + 8, full), "burst_unshard overlapping buffers");
  bad(burst_shard(0, 10, NULL, 0, 2, 0, -1, 4, full, local), "burst_shard outer = -1");
  bad(burst_shard(0, 10, NULL, 0, 2, 0, 1, -4, full, local), "burst_shard row_bytes = -4");
  bad(burst_shard(0, 10, NULL, 0, 2, 0, INT64_MAX / 2, INT64_MAX / 2, full, local), "burst_shard size overflow");
  /* Nothing to copy: NULL buffers are fine. */
  ++g_checks;
  if (burst_shard(0, 0, NULL, 0, 2, 0, 1, 4, NULL, NULL) != BURST_OK) { ++g_failures; fprintf(stderr, "c_shard FAIL: empty shard with NULL buffers\n"); }
}

int main(void) {
  sweep();
  bad_arguments();
  printf("c_shard: %s - %d checks, %d failures\n", g_failures ? "FAILED" : "ok", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
