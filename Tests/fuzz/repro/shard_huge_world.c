/*
 * shard_huge_world.c — found reading the code the ABI fuzzer drives, and by
 * fuzz_abi: the CONTIGUOUS rule of the shard helpers built an array of every
 * rank's count to find rank r's offset, O(world_size) memory and time. A
 * world_size the header does not bound (INT32_MAX) made
 * burst_shard_positions / burst_shard / burst_unshard abort the process
 * ("Fatal error: failed to allocate 17179869208 bytes"), a trap crossing the
 * ABI; on this 24 GB machine it took 95 s and 16 GB of RSS, 2^24 ranks took
 * 0.36 s for one token. The program limits its address space to 4 GiB, so
 * the bug shows as the abort it is on a smaller machine.
 *
 *   cc -I include Tests/fuzz/repro/shard_huge_world.c -L build/install/lib \
 *     -lburst_attention -Wl,-rpath,$PWD/build/install/lib -o /tmp/shw && /tmp/shw
 * Exit 0 = fixed; the bug aborts (SIGABRT).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <sys/resource.h>

#include "burst_attention.h"

int main(void) {
  int64_t count = -1, pos[4] = {-1, -1, -1, -1};
  unsigned char full[3] = {1, 2, 3}, local[2] = {0, 0};
  int bad = 0;
  struct rlimit as = {4ull << 30, 4ull << 30};
  setrlimit(RLIMIT_AS, &as);
  /* rank 0 of INT32_MAX ranks holds token 0 (balanced split of N = 3) */
  burst_status st = burst_shard_positions(BURST_DISTRIBUTION_CONTIGUOUS, 3, NULL, 0, INT32_MAX, 0, pos, 4, &count);
  printf("shard_positions: %s, count %lld, position %lld\n", burst_status_string(st), (long long)count, (long long)pos[0]);
  bad |= st != BURST_OK || count != 1 || pos[0] != 0;
  /* the last rank holding a token: rank 2 */
  st = burst_shard_positions(BURST_DISTRIBUTION_CONTIGUOUS, 3, NULL, 0, INT32_MAX, 2, pos, 4, &count);
  bad |= st != BURST_OK || count != 1 || pos[0] != 2;
  st = burst_shard(BURST_DISTRIBUTION_CONTIGUOUS, 3, NULL, 0, INT32_MAX, 1, 1, 1, full, local);
  printf("shard: %s, row %d\n", burst_status_string(st), local[0]);
  bad |= st != BURST_OK || local[0] != 2;
  st = burst_unshard(BURST_DISTRIBUTION_CONTIGUOUS, 3, NULL, 0, INT32_MAX, 1, 1, 1, local, full);
  bad |= st != BURST_OK;
  printf("%s\n", bad ? "BUG" : "ok");
  return bad;
}
