/*
 * c_kvcache.c — the KV cache of 0.6 (burst_kv_cache_*) from C under mpirun
 * (1, 2, 3 and 4 ranks).
 *
 * Every rank keeps the same float64 model of the whole cache: for every
 * (layer, sequence) the keys and values stored at each position (already
 * rounded to the storage type) and the rank the placement rule put each
 * token on. Inputs come from the seeded generator of reference.h, so every
 * rank builds the same model without communicating.
 *
 * A scenario (dtype F32/BF16/F16 x layout BSHD/BHSD x prefill distribution
 * CONTIGUOUS/ZIGZAG/STRIPED x heads (4,4)/(4,2)/(4,1) x window off/on) runs:
 *  - prefill of layer 0 through plans (burst_plan_create, burst_forward,
 *    burst_kv_cache_prefill; causal): a 150-token prompt, a 1-token prompt
 *    (some rank holds none of it at P >= 2), and a packed prompt of batch 2
 *    with cu_seqlens {0, 13, 13, 35} (6 sequences, one empty in each row:
 *    seq_ids[b * 3 + s]) whose plan uses the other layout; layer 1 gets a
 *    150-token prompt of batch 2 without packing (rows: the first sequence
 *    and the one never prefilled in layer 0, whose decode there starts at 0;
 *    under CONTIGUOUS a skewed split: rank 0 holds none of it, the last rank
 *    most);
 *  - decode steps in a row with T = 1, 3, 17 (subsets of the sequences, both
 *    layers, one step with `positions` skipping ahead), a truncate (rejected
 *    drafts, a sequence emptied, a length past the end), decode again, a
 *    drop, an id dropped and added again (empty), decode again, a drop of
 *    everything.
 * After every decode: out within 1e-5 max|ref| (1 + u) + u |ref| (u = 2^-8
 * for bf16, 2^-11 (+ 2^-24) for f16, 0 for F32; c_half.c's rule) and lse within 1e-4 of a float64
 * attention over the whole stored history (visible: i - window_left <= j <= i);
 * a checksum of out and lse allgathered: the same bits on every rank; the
 * stats: bytes sent = received = (P - 1) * rows * (head_dim + 1) * 4 with
 * rows = num_seqs * T * num_heads_q, steps 0, pattern -1, tiles read +
 * skipped = kv heads x this rank's blocks of the sequences (none skipped
 * without a window). After every call that changes the cache:
 * burst_kv_cache_sequence_length of every sequence in both layers (global
 * length = largest position + 1; local tokens = the model's, tokens decoded
 * at position p on rank p mod P; their sum over ranks = the tokens stored)
 * and burst_kv_cache_bytes between the tokens' bytes and their whole blocks'
 * bytes (0 after the last drop). Every scenario is then replayed on a fresh
 * cache with the same config: every decode gives the same bytes; and once
 * more with num_threads 2 on even ranks (1 on odd ones; the header: results
 * do not depend on it) and lse = NULL at odd steps: the same out bytes.
 *
 * Score modifiers (0.8): six more scenarios whose cache config has a softcap
 * and/or sinks for both layers (different per layer; one sink dominates its
 * rows), against the same float64 model with every score capped
 * (c * tanh(s / c)) and exp(s_h) added once to each new row's denominator.
 *
 * Bad inputs (bad_inputs()): each must give an error on every rank with a
 * non-empty message, and leave the cache unchanged (lengths and bytes the
 * same after); then good calls still work and match the reference.
 *
 * BURST_TEST_VERBOSE=1 prints every check.
 */
#include <mpi.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "burst_attention.h"
#include "reference.h"
#include "storage_reference.h"
#define CLIENT_NAME "c_kvcache"
#include "mpi_client.h"

static int g_checks = 0, g_verbose = 0;
static char g_case_text[200] = ""; /* g_case points here */

static int ok(burst_status st, const char *what) {
  ++g_checks;
  if (st == BURST_OK) return 1;
  fail("%s returned %s: %s", what, burst_status_string(st), burst_last_error());
  return 0;
}

/* ---- storage elements ------------------------------------------------------ */
static size_t elem_size(int dtype) { return dtype == BURST_DTYPE_F32 ? 4 : 2; }

static double get(int dtype, const void *buf, size_t i) {
  if (dtype == BURST_DTYPE_F32) return (double)((const float *)buf)[i];
  if (dtype == BURST_DTYPE_BF16) return (double)from_bf16(((const uint16_t *)buf)[i]);
  return (double)from_f16(((const uint16_t *)buf)[i]);
}

/* Rounds x to the storage type, writes it to buf[i] and returns the value stored. */
static double put(int dtype, void *buf, size_t i, double x) {
  if (dtype == BURST_DTYPE_F32) ((float *)buf)[i] = (float)x;
  else if (dtype == BURST_DTYPE_BF16) ((uint16_t *)buf)[i] = to_bf16((float)x);
  else ((uint16_t *)buf)[i] = to_f16((float)x);
  return get(dtype, buf, i);
}

/* FNV-1a over bytes, continued from h. */
static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = (const unsigned char *)p;
  size_t i;
  for (i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001B3ull;
  return h;
}

/* ---- the model of the cache ---------------------------------------------------
 * Sequence slots (ids chosen to be sparse, one beyond 32 bits):
 *   0: a 150-token prompt (layer 0; in layer 1 batch row 0 of another one)
 *   1: a 1-token prompt
 *   2..7: the packed prompt of batch 2 (row 0: 13, 0 and 22 tokens; row 1 alike)
 *   8: no prompt in layer 0 (in layer 1: batch row 1 with slot 0)           */
#define NSLOT 9
#define NLAYER 2
#define MAXP 256 /* positions per (layer, sequence) */
#define HQ 4
#define HEAD_DIM 16
static const int64_t k_ids[NSLOT] = {10, 11, 20, 21, 22, 23, 24, 25, (int64_t)1 << 40};

typedef struct scenario {
  int dtype, layout, dist;
  int64_t hkv, window_left, block_tokens;
  float softmax_scale;
  float softcap; /* 0.8: 0 = off */
  int sinks;     /* 0.8: 1 = the cache's config has k_sinks (per layer, per query head) */
} scenario;

/* Sink logits [NLAYER][HQ] (0.8): the two layers differ, and one sink
 * dominates its rows (3.5), so a layer read with the other's sinks fails. */
static const float k_sinks[NLAYER * HQ] = {-1.5f, 0.25f, 1.0f, 3.5f, 2.0f, -0.75f, 0.5f, -3.0f};

static const float *sinks_of(const scenario *sc, int layer) { return sc->sinks ? k_sinks + layer * HQ : NULL; }

/* The score the softmax sees: softcap * tanh(s / softcap) when capped. */
static double capped(const scenario *sc, double s) {
  return sc->softcap > 0 ? (double)sc->softcap * tanh(s / (double)sc->softcap) : s;
}

typedef struct model {
  int alive[NSLOT];
  int present[NLAYER][NSLOT][MAXP];
  int owner[NLAYER][NSLOT][MAXP];
  double *k[NLAYER][NSLOT], *v[NLAYER][NSLOT]; /* [hkv][MAXP][HEAD_DIM] */
} model;

typedef struct run {
  burst_context *ctx;
  burst_kv_cache *cache;
  scenario sc;
  model m;
  uint64_t seed;
  int replay;           /* 0: record each decode's digests; 1: compare them; 2: compare them
                           with num_threads 2 on even ranks and 1 on odd ones and lse = NULL
                           at odd steps (out must not change) */
  int step;             /* decode calls so far */
  uint64_t digests[64][2]; /* of out and of lse */
} run;

static double scale_of(const scenario *sc) {
  return sc->softmax_scale != 0 ? (double)sc->softmax_scale : 1.0 / sqrt((double)HEAD_DIM);
}

static size_t kv_at(int64_t hk, int64_t pos) { return ((size_t)hk * MAXP + (size_t)pos) * HEAD_DIM; }

static int64_t model_length(const model *m, int layer, int slot) {
  int64_t p;
  for (p = MAXP - 1; p >= 0; --p)
    if (m->present[layer][slot][p]) return p + 1;
  return 0;
}

static int64_t model_tokens(const model *m, int layer, int slot, int rank /* -1: all */) {
  int64_t p, n = 0;
  for (p = 0; p < MAXP; ++p)
    if (m->present[layer][slot][p] && (rank < 0 || m->owner[layer][slot][p] == rank)) ++n;
  return n;
}

static int64_t block_tokens_of(const scenario *sc) { return sc->block_tokens ? sc->block_tokens : 256; }

/* Bytes of one token in the cache: its K and V at every kv head, and its position. */
static uint64_t token_bytes(const scenario *sc) {
  return 2u * (uint64_t)sc->hkv * HEAD_DIM * elem_size(sc->dtype) + 8u;
}

static void model_init(model *m, const scenario *sc) {
  int l, s;
  memset(m, 0, sizeof *m);
  for (l = 0; l < NLAYER; ++l)
    for (s = 0; s < NSLOT; ++s) {
      m->k[l][s] = xcalloc((size_t)sc->hkv * MAXP * HEAD_DIM, 8);
      m->v[l][s] = xcalloc((size_t)sc->hkv * MAXP * HEAD_DIM, 8);
    }
}

static void model_free(model *m) {
  int l, s;
  for (l = 0; l < NLAYER; ++l)
    for (s = 0; s < NSLOT; ++s) { free(m->k[l][s]); free(m->v[l][s]); }
}

static void model_truncate(model *m, int slot, int64_t length) {
  int l;
  int64_t p;
  for (l = 0; l < NLAYER; ++l)
    for (p = length < 0 ? 0 : length; p < MAXP; ++p) m->present[l][slot][p] = 0;
}

static void model_drop(model *m, int slot) {
  model_truncate(m, slot, 0);
  m->alive[slot] = 0;
}

/* ---- checks after every call that changes the cache ------------------------- */
/* sequence_length of every live sequence in every layer, the sum of the local
 * tokens over the ranks, and burst_kv_cache_bytes within the block bounds. */
static void check_lengths(run *R, const char *when) {
  int64_t local[NLAYER * NSLOT], sum[NLAYER * NSLOT];
  uint64_t bytes = ~0ull, lo = 0, hi = 0;
  const int64_t bt = block_tokens_of(&R->sc);
  int l, s;
  for (l = 0; l < NLAYER; ++l)
    for (s = 0; s < NSLOT; ++s) {
      int64_t len = -1, mine = -1, want_len = model_length(&R->m, l, s), want_mine = model_tokens(&R->m, l, s, g_rank);
      local[l * NSLOT + s] = 0;
      if (!R->m.alive[s]) continue;
      if (!ok(burst_kv_cache_sequence_length(R->cache, k_ids[s], l, &len, &mine), "burst_kv_cache_sequence_length"))
        continue;
      ++g_checks;
      if (len != want_len || mine != want_mine)
        fail("%s: sequence %lld layer %d: length %lld local %lld, expected %lld local %lld", when,
             (long long)k_ids[s], l, (long long)len, (long long)mine, (long long)want_len, (long long)want_mine);
      local[l * NSLOT + s] = mine;
      lo += (uint64_t)want_mine * token_bytes(&R->sc);
      hi += (uint64_t)((want_mine + bt - 1) / bt * bt) * token_bytes(&R->sc);
    }
  MPI_Allreduce(local, sum, NLAYER * NSLOT, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  for (l = 0; l < NLAYER; ++l)
    for (s = 0; s < NSLOT; ++s)
      if (R->m.alive[s] && sum[l * NSLOT + s] != model_tokens(&R->m, l, s, -1))
        fail("%s: sequence %lld layer %d: local tokens sum to %lld over the ranks, %lld stored", when,
             (long long)k_ids[s], l, (long long)sum[l * NSLOT + s], (long long)model_tokens(&R->m, l, s, -1));
  if (ok(burst_kv_cache_bytes(R->cache, &bytes), "burst_kv_cache_bytes")) {
    ++g_checks;
    if (bytes < lo || bytes > hi)
      fail("%s: burst_kv_cache_bytes %llu outside [%llu (the tokens), %llu (their blocks)]", when,
           (unsigned long long)bytes, (unsigned long long)lo, (unsigned long long)hi);
  }
}

static int get_stats(const burst_kv_cache *cache, burst_stats *st) {
  memset(st, 0, sizeof *st);
  st->struct_size = (uint32_t)sizeof *st;
  return ok(burst_kv_cache_stats(cache, st), "burst_kv_cache_stats");
}

/* ---- prefill through a plan ----------------------------------------------------
 * A causal prompt of `batch` rows of N tokens (packed by cu/nseq when cu is not
 * NULL) in `plan_layout`, stored into `layer` for slots[b * max(1, nseq) + s].
 * skewed (CONTIGUOUS only): not the balanced split but rank 0 holds none, the
 * ranks between 5 tokens each and the last rank the rest. */
static void prefill(run *R, int layer, int plan_layout, int64_t batch, int64_t N, const int64_t *cu, int64_t nseq,
                    const int *slots, uint64_t seed, int skewed) {
  const scenario *sc = &R->sc;
  const int P = g_size, dt = sc->dtype;
  const size_t e = elem_size(dt);
  const int64_t nps = nseq ? nseq : 1;
  int64_t cnt[64], *pos[64], n, b, t, h, x, r;
  size_t nq = (size_t)(batch * N * HQ * HEAD_DIM), nk = (size_t)(batch * N * sc->hkv * HEAD_DIM);
  void *fq = xcalloc(nq, e), *fk = xcalloc(nk, e), *fv = xcalloc(nk, e);
  void *lq, *lk, *lv, *lout;
  float *llse;
  burst_attention_config cfg;
  burst_plan *plan = NULL;
  burst_stats st;
  char what[64];

  skewed = skewed && sc->dist == BURST_DISTRIBUTION_CONTIGUOUS && P > 1 && N >= 5 * (P - 2);
  for (r = 0, n = 0; r < P; ++r) {
    if (skewed) {
      cnt[r] = r == 0 ? 0 : r < P - 1 ? 5 : N - 5 * (P - 2);
      pos[r] = xcalloc((size_t)cnt[r], 8);
      for (t = 0; t < cnt[r]; ++t) pos[r][t] = n + t;
      n += cnt[r];
      continue;
    }
    if (!ok(burst_shard_positions(sc->dist, N, cu, nseq, P, (int32_t)r, NULL, 0, &cnt[r]), "burst_shard_positions"))
      MPI_Abort(MPI_COMM_WORLD, 2);
    pos[r] = xcalloc((size_t)cnt[r], 8);
    burst_shard_positions(sc->dist, N, cu, nseq, P, (int32_t)r, pos[r], cnt[r], &n);
  }
  n = cnt[g_rank];
  /* The global prompt (the same on every rank) and the model's history. */
  for (b = 0; b < batch; ++b)
    for (t = 0; t < N; ++t) {
      int64_t seq = 0, owner = -1, i;
      int slot;
      while (cu && t >= cu[seq + 1]) ++seq;
      for (r = 0; r < P && owner < 0; ++r)
        for (i = 0; i < cnt[r]; ++i)
          if (pos[r][i] == t) { owner = r; break; }
      slot = slots[b * nps + seq];
      for (h = 0; h < HQ; ++h)
        for (x = 0; x < HEAD_DIM; ++x)
          put(dt, fq, ref_index(plan_layout, N, HQ, HEAD_DIM, b, t, h, x), ref_value(seed, REF_TENSOR_Q,
              ref_index(REF_LAYOUT_BSHD, N, HQ, HEAD_DIM, b, t, h, x)));
      for (h = 0; h < sc->hkv; ++h)
        for (x = 0; x < HEAD_DIM; ++x) {
          size_t u = ref_index(plan_layout, N, sc->hkv, HEAD_DIM, b, t, h, x);
          uint64_t logical = ref_index(REF_LAYOUT_BSHD, N, sc->hkv, HEAD_DIM, b, t, h, x);
          int64_t p = t - (cu ? cu[seq] : 0);
          R->m.k[layer][slot][kv_at(h, p) + (size_t)x] = put(dt, fk, u, ref_value(seed, REF_TENSOR_K, logical));
          R->m.v[layer][slot][kv_at(h, p) + (size_t)x] = put(dt, fv, u, ref_value(seed, REF_TENSOR_V, logical));
          R->m.present[layer][slot][p] = 1;
          R->m.owner[layer][slot][p] = (int)owner;
        }
    }
  lq = xcalloc((size_t)(batch * n * HQ * HEAD_DIM), e);
  lout = xcalloc((size_t)(batch * n * HQ * HEAD_DIM), e);
  lk = xcalloc((size_t)(batch * n * sc->hkv * HEAD_DIM), e);
  lv = xcalloc((size_t)(batch * n * sc->hkv * HEAD_DIM), e);
  llse = xcalloc((size_t)(batch * HQ * n), 4);
  if (skewed) { /* this rank's run of tokens, copied by hand */
    for (b = 0; b < batch; ++b)
      for (t = 0; t < n; ++t) {
        for (h = 0; h < HQ; ++h)
          memcpy((char *)lq + ref_index(plan_layout, n, HQ, HEAD_DIM, b, t, h, 0) * e,
                 (char *)fq + ref_index(plan_layout, N, HQ, HEAD_DIM, b, pos[g_rank][t], h, 0) * e, HEAD_DIM * e);
        for (h = 0; h < sc->hkv; ++h) {
          memcpy((char *)lk + ref_index(plan_layout, n, sc->hkv, HEAD_DIM, b, t, h, 0) * e,
                 (char *)fk + ref_index(plan_layout, N, sc->hkv, HEAD_DIM, b, pos[g_rank][t], h, 0) * e, HEAD_DIM * e);
          memcpy((char *)lv + ref_index(plan_layout, n, sc->hkv, HEAD_DIM, b, t, h, 0) * e,
                 (char *)fv + ref_index(plan_layout, N, sc->hkv, HEAD_DIM, b, pos[g_rank][t], h, 0) * e, HEAD_DIM * e);
        }
      }
  } else {
    int64_t oq = plan_layout == BURST_LAYOUT_BHSD ? batch * HQ : batch;
    int64_t ok_ = plan_layout == BURST_LAYOUT_BHSD ? batch * sc->hkv : batch;
    int64_t rq = (int64_t)e * HEAD_DIM * (plan_layout == BURST_LAYOUT_BHSD ? 1 : HQ);
    int64_t rk = (int64_t)e * HEAD_DIM * (plan_layout == BURST_LAYOUT_BHSD ? 1 : sc->hkv);
    ok(burst_shard(sc->dist, N, cu, nseq, P, g_rank, oq, rq, fq, lq), "burst_shard q");
    ok(burst_shard(sc->dist, N, cu, nseq, P, g_rank, ok_, rk, fk, lk), "burst_shard k");
    ok(burst_shard(sc->dist, N, cu, nseq, P, g_rank, ok_, rk, fv, lv), "burst_shard v");
  }
  burst_attention_config_init(&cfg);
  cfg.layout = plan_layout; cfg.dtype = dt; cfg.mask = BURST_MASK_CAUSAL; cfg.distribution = sc->dist;
  cfg.batch = batch; cfg.seq_len_local = n; cfg.num_heads_q = HQ; cfg.num_heads_kv = sc->hkv;
  cfg.head_dim = HEAD_DIM; cfg.cu_seqlens = cu; cfg.num_sequences = nseq; cfg.num_threads = 1;
  cfg.timeout_seconds = 120;
  cfg.compute = BURST_COMPUTE_EXACT; /* the exact bounds below; DEFAULT may be FAST for BF16 */
  cfg.softcap = sc->softcap;          /* the layer's modifiers, as a model prefills (header) */
  cfg.sinks = sinks_of(sc, layer);
  if (ok(burst_plan_create(R->ctx, &cfg, &plan), "burst_plan_create") &&
      ok(burst_forward(plan, lq, lk, lv, lout, llse), "burst_forward")) {
    int64_t ids[8];
    for (b = 0; b < batch * nps; ++b) ids[b] = k_ids[slots[b]];
    snprintf(what, sizeof what, "burst_kv_cache_prefill layer %d N %lld", layer, (long long)N);
    if (ok(burst_kv_cache_prefill(R->cache, layer, plan, ids, lk, lv), what) && get_stats(R->cache, &st)) {
      ++g_checks;
      if (st.bytes_sent != 0 || st.bytes_received != 0 || st.pattern != -1)
        fail("prefill stats: sent %llu received %llu pattern %d (no token moves; pattern -1)",
             (unsigned long long)st.bytes_sent, (unsigned long long)st.bytes_received, (int)st.pattern);
    }
  }
  burst_plan_destroy(plan);
  check_lengths(R, what);
  for (r = 0; r < P; ++r) free(pos[r]);
  free(fq); free(fk); free(fv); free(lq); free(lk); free(lv); free(lout); free(llse);
}

/* ---- decode ---------------------------------------------------------------------
 * T new tokens for each of the ns sequences slots[0..ns-1] in `layer`; skip[i]
 * > 0 passes `positions` with sequence i starting skip[i] past its length.
 * Appends to the model, calls the library and checks everything. */
static void decode(run *R, int layer, const int *slots, int ns, int64_t T, const int64_t *skip) {
  const scenario *sc = &R->sc;
  const int dt = sc->dtype, L = sc->layout, P = g_size;
  const size_t e = elem_size(dt);
  const size_t nq = (size_t)ns * (size_t)T * HQ * HEAD_DIM, nk = (size_t)ns * (size_t)T * (size_t)sc->hkv * HEAD_DIM;
  const size_t nl = (size_t)ns * HQ * (size_t)T;
  const uint64_t seed = R->seed * 1000u + (uint64_t)R->step;
  const double scale = scale_of(sc);
  void *q = xcalloc(nq, e), *k = xcalloc(nk, e), *v = xcalloc(nk, e), *out = xcalloc(nq, e);
  float *lse_buf = xcalloc(nl, 4), *lse = R->replay == 2 && R->step % 2 ? NULL : lse_buf;
  double *qd = xcalloc(nq, 8), *ref = xcalloc(nq, 8), *ref_lse = xcalloc(nl, 8);
  int64_t ids[NSLOT] = {0}, p0[NSLOT] = {0}, t, h, x, i;
  int s, use_positions = 0;
  char what[96];
  burst_status st;

  snprintf(what, sizeof what, "decode #%d layer %d num_seqs %d T %lld", R->step, layer, ns, (long long)T);
  for (s = 0; s < ns; ++s) {
    ids[s] = k_ids[slots[s]];
    p0[s] = model_length(&R->m, layer, slots[s]) + (skip ? skip[s] : 0);
    if (skip && skip[s]) use_positions = 1;
  }
  /* Inputs: the logical index is the BSHD index of [ns, T, heads, d]. */
  for (s = 0; s < ns; ++s)
    for (t = 0; t < T; ++t) {
      for (h = 0; h < HQ; ++h)
        for (x = 0; x < HEAD_DIM; ++x) {
          size_t u = ref_index(L, T, HQ, HEAD_DIM, s, t, h, x);
          qd[u] = put(dt, q, u, ref_value(seed, REF_TENSOR_Q, ref_index(REF_LAYOUT_BSHD, T, HQ, HEAD_DIM, s, t, h, x)));
        }
      for (h = 0; h < sc->hkv; ++h)
        for (x = 0; x < HEAD_DIM; ++x) {
          size_t u = ref_index(L, T, sc->hkv, HEAD_DIM, s, t, h, x);
          uint64_t logical = ref_index(REF_LAYOUT_BSHD, T, sc->hkv, HEAD_DIM, s, t, h, x);
          double kv = put(dt, k, u, ref_value(seed, REF_TENSOR_K, logical));
          double vv = put(dt, v, u, ref_value(seed, REF_TENSOR_V, logical));
          if (p0[s] + t < MAXP) {
            R->m.k[layer][slots[s]][kv_at(h, p0[s] + t) + (size_t)x] = kv;
            R->m.v[layer][slots[s]][kv_at(h, p0[s] + t) + (size_t)x] = vv;
          }
        }
    }
  st = burst_kv_cache_decode(R->cache, layer, ids, ns, T, use_positions ? p0 : NULL, q, k, v, out, lse);
  if (!ok(st, what)) goto done;
  for (s = 0; s < ns; ++s)
    for (t = 0; t < T; ++t) {
      if (p0[s] + t >= MAXP) { fail("test bug: position past MAXP"); goto done; }
      R->m.present[layer][slots[s]][p0[s] + t] = 1;
      R->m.owner[layer][slots[s]][p0[s] + t] = (int)((p0[s] + t) % P);
    }
  /* Bitwise the same on every rank, and on a fresh cache (replay). */
  {
    uint64_t digest[2], all[64][2];
    int r, j;
    digest[0] = fnv1a(0xCBF29CE484222325ull, out, nq * e);
    digest[1] = lse ? fnv1a(0xCBF29CE484222325ull, lse, nl * 4) : 0;
    MPI_Allgather(digest, 2, MPI_UINT64_T, all, 2, MPI_UINT64_T, MPI_COMM_WORLD);
    ++g_checks;
    for (r = 0; r < P; ++r)
      if (all[r][0] != all[0][0] || all[r][1] != all[0][1]) {
        fail("%s: rank %d's out/lse bytes differ from rank 0's", what, r);
        break;
      }
    if (R->step >= 64) fail("test bug: more than 64 decode steps");
    else if (!R->replay) memcpy(R->digests[R->step], digest, sizeof digest);
    else
      for (j = 0; j < (lse ? 2 : 1); ++j)
        if (R->digests[R->step][j] != digest[j])
          fail("%s: %s not the same bytes as on the first cache%s", what, j ? "lse" : "out",
               R->replay == 2 ? " (num_threads differs, lse may be NULL)" : "");
  }
  /* The float64 reference over the stored history. */
  {
    const int64_t g = HQ / sc->hkv;
    const double u = dt == BURST_DTYPE_BF16 ? 0x1p-8 : dt == BURST_DTYPE_F16 ? 0x1p-11 : 0.0;
    const double sub = dt == BURST_DTYPE_F16 ? 0x1p-24 : 0.0;
    double worst = 0, lse_worst = 0, maxref;
    for (s = 0; s < ns; ++s) {
      const model *m = &R->m;
      const int sl = slots[s];
      for (t = 0; t < T; ++t)
        for (h = 0; h < HQ; ++h) {
          const int64_t ip = p0[s] + t, hk = h / g;
          const int64_t lo = sc->window_left < 0 || ip - sc->window_left < 0 ? 0 : ip - sc->window_left;
          const size_t iq = ref_index(L, T, HQ, HEAD_DIM, s, t, h, 0);
          const float *sinks = sinks_of(sc, layer);
          /* softcap: every score capped; sinks: exp(s_h) once in the denominator */
          double mx = sinks ? (double)sinks[h] : -INFINITY, l = 0;
          for (i = lo; i <= ip; ++i)
            if (m->present[layer][sl][i]) {
              double sc_ = 0;
              for (x = 0; x < HEAD_DIM; ++x) sc_ += qd[iq + (size_t)x] * m->k[layer][sl][kv_at(hk, i) + (size_t)x];
              sc_ = capped(sc, sc_ * scale);
              if (sc_ > mx) mx = sc_;
            }
          for (i = lo; i <= ip; ++i)
            if (m->present[layer][sl][i]) {
              double sc_ = 0, p;
              for (x = 0; x < HEAD_DIM; ++x) sc_ += qd[iq + (size_t)x] * m->k[layer][sl][kv_at(hk, i) + (size_t)x];
              p = exp(capped(sc, sc_ * scale) - mx);
              l += p;
              for (x = 0; x < HEAD_DIM; ++x) ref[iq + (size_t)x] += p * m->v[layer][sl][kv_at(hk, i) + (size_t)x];
            }
          if (sinks) l += exp((double)sinks[h] - mx);
          for (x = 0; x < HEAD_DIM; ++x) ref[iq + (size_t)x] /= l;
          ref_lse[ref_lse_index(T, HQ, s, h, t)] = mx + log(l);
        }
    }
    maxref = ref_max_abs(ref, nq);
    for (i = 0; i < (int64_t)nq; ++i) {
      double allowed = 1e-5 * maxref * (1 + u) + u * fabs(ref[i]) + sub;
      double ratio = fabs(get(dt, out, (size_t)i) - ref[i]) / allowed;
      if (!(ratio <= worst)) worst = ratio == ratio ? ratio : INFINITY;
    }
    for (i = 0; lse && i < (int64_t)nl; ++i) {
      double err = fabs((double)lse[i] - ref_lse[i]);
      if (!(err <= lse_worst)) lse_worst = err == err ? err : INFINITY;
    }
    g_checks += 2;
    if (!(worst <= 1.0)) fail("%s: out error / allowed = %g", what, worst);
    if (!(lse_worst <= 1e-4)) fail("%s: lse error %g", what, lse_worst);
    if (g_verbose && g_rank == 0)
      fprintf(stderr, "c_kvcache [%s] %s: out error/allowed %.3g, lse error %.3g\n", g_case, what, worst, lse_worst);
  }
  /* Stats: the merge's partials, [rows x (head_dim + 1)] fp32 to each of P - 1 ranks. */
  {
    burst_stats stt;
    const uint64_t rows = (uint64_t)ns * (uint64_t)T * HQ, want = (uint64_t)(P - 1) * rows * (HEAD_DIM + 1) * 4u;
    const int64_t bt = block_tokens_of(sc);
    uint64_t blocks = 0;
    for (s = 0; s < ns; ++s) blocks += (uint64_t)((model_tokens(&R->m, layer, slots[s], g_rank) + bt - 1) / bt);
    if (get_stats(R->cache, &stt)) {
      ++g_checks;
      if (stt.bytes_sent != want || stt.bytes_received != want)
        fail("%s: stats bytes sent %llu received %llu, expected (P-1)*rows*(d+1)*4 = %llu", what,
             (unsigned long long)stt.bytes_sent, (unsigned long long)stt.bytes_received, (unsigned long long)want);
      if (stt.steps_computed != 0 || stt.steps_skipped != 0 || stt.pattern != -1)
        fail("%s: stats steps %llu/%llu pattern %d (0, 0, -1 expected)", what,
             (unsigned long long)stt.steps_computed, (unsigned long long)stt.steps_skipped, (int)stt.pattern);
      if (stt.tiles_computed + stt.tiles_skipped != blocks * (uint64_t)sc->hkv ||
          (sc->window_left < 0 && stt.tiles_skipped != 0))
        fail("%s: stats tiles computed %llu skipped %llu; this rank holds %llu blocks x %lld kv heads", what,
             (unsigned long long)stt.tiles_computed, (unsigned long long)stt.tiles_skipped,
             (unsigned long long)blocks, (long long)sc->hkv);
    }
  }
  check_lengths(R, what);
done:
  R->step++;
  free(q); free(k); free(v); free(out); free(lse_buf); free(qd); free(ref); free(ref_lse);
}

static void truncate_seqs(run *R, const int *slots, const int64_t *lengths, int n) {
  int64_t ids[NSLOT] = {0};
  int i;
  for (i = 0; i < n; ++i) ids[i] = k_ids[slots[i]];
  if (ok(burst_kv_cache_truncate(R->cache, ids, lengths, n), "burst_kv_cache_truncate"))
    for (i = 0; i < n; ++i) model_truncate(&R->m, slots[i], lengths[i]);
  check_lengths(R, "after truncate");
}

static void drop_seqs(run *R, const int *slots, int n) {
  int64_t ids[NSLOT] = {0};
  int i;
  for (i = 0; i < n; ++i) ids[i] = k_ids[slots[i]];
  if (ok(burst_kv_cache_drop(R->cache, ids, n), "burst_kv_cache_drop"))
    for (i = 0; i < n; ++i) model_drop(&R->m, slots[i]);
  check_lengths(R, "after drop");
}

static burst_status create_cache(burst_context *ctx, const scenario *sc, int64_t max_bytes, int threads,
                                 burst_kv_cache **out) {
  burst_kv_cache_config cfg;
  burst_kv_cache_config_init(&cfg);
  cfg.layout = sc->layout; cfg.dtype = sc->dtype; cfg.num_threads = threads; cfg.num_layers = NLAYER;
  cfg.num_heads_q = HQ; cfg.num_heads_kv = sc->hkv; cfg.head_dim = HEAD_DIM;
  cfg.softmax_scale = sc->softmax_scale; cfg.window_left = sc->window_left;
  cfg.block_tokens = sc->block_tokens; cfg.max_bytes_local = max_bytes; cfg.timeout_seconds = 120;
  cfg.softcap = sc->softcap; cfg.sinks = sc->sinks ? k_sinks : NULL;
  return burst_kv_cache_create(ctx, &cfg, out);
}

/* One scenario on a fresh cache: the life of every sequence. */
static void run_scenario(run *R) {
  static const int64_t cu[] = {0, 13, 13, 35};
  static const int one[] = {0}, short_[] = {1}, packed[] = {2, 3, 4, 5, 6, 7};
  static const int all[] = {0, 1, 2, 3, 4, 5, 6, 7, 8}, some[] = {0, 1, 8, 3, 6}, layer1[] = {0, 8};
  static const int trunc_slots[] = {0, 1, 4, 2}, dropped[] = {1, 4}, rest[] = {0, 1, 2, 3, 5, 6, 7, 8};
  const scenario *sc = &R->sc;
  int64_t ids[NSLOT], trunc_len[4], skip[NSLOT] = {0, 0, 0, 0, 0, 0, 0, 4, 0};
  uint64_t bytes = 1;
  int s;

  model_init(&R->m, sc);
  R->step = 0;
  if (!ok(create_cache(R->ctx, sc, 0, R->replay == 2 && g_rank % 2 == 0 ? 2 : 1, &R->cache), "burst_kv_cache_create")) {
    model_free(&R->m);
    return;
  }
  for (s = 0; s < NSLOT; ++s) { ids[s] = k_ids[s]; R->m.alive[s] = 1; }
  if (!ok(burst_kv_cache_add(R->cache, ids, NSLOT), "burst_kv_cache_add")) goto done;
  check_lengths(R, "after add");
  prefill(R, 0, sc->layout, 1, 150, NULL, 0, one, R->seed + 1, 0);
  prefill(R, 0, sc->layout, 1, 1, NULL, 0, short_, R->seed + 2, 0);
  prefill(R, 0, 1 - sc->layout, 2, 35, cu, 3, packed, R->seed + 3, 0);
  prefill(R, 1, sc->layout, 2, 150, NULL, 0, layer1, R->seed + 4, 1); /* batch 2; CONTIGUOUS: skewed */
  {
    int64_t total = 0;
    if (ok(burst_kv_cache_bytes(R->cache, &bytes), "burst_kv_cache_bytes")) {
      int64_t mine = (int64_t)bytes;
      MPI_Allreduce(&mine, &total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
      ++g_checks;
      if (total <= 0) fail("burst_kv_cache_bytes is 0 on every rank after the prefills");
    }
  }
  decode(R, 0, all, NSLOT, 1, NULL);
  decode(R, 0, all, NSLOT, 3, NULL);
  decode(R, 0, some, 5, 17, NULL);
  decode(R, 1, layer1, 2, 3, NULL);
  decode(R, 0, all, NSLOT, 1, skip); /* sequence 25 skips 4 positions ahead */
  decode(R, 0, all, NSLOT, 1, NULL);
  /* Rejected drafts: 10 loses 5 tokens (in both layers), 11 is emptied, 22 keeps 3, 20: a
   * length past its end leaves it as it is. */
  trunc_len[0] = model_length(&R->m, 0, 0) - 5; trunc_len[1] = 0; trunc_len[2] = 3;
  trunc_len[3] = model_length(&R->m, 0, 2) + 100;
  truncate_seqs(R, trunc_slots, trunc_len, 4);
  decode(R, 0, all, NSLOT, 3, NULL);
  decode(R, 1, one, 1, 17, NULL);
  decode(R, 0, all, NSLOT, 1, NULL);
  drop_seqs(R, dropped, 2);
  ids[0] = k_ids[1]; /* 11 again: a new, empty sequence */
  if (ok(burst_kv_cache_add(R->cache, ids, 1), "burst_kv_cache_add of a dropped id")) R->m.alive[1] = 1;
  check_lengths(R, "after adding a dropped id again");
  decode(R, 0, rest, 8, 1, NULL);
  decode(R, 0, rest, 8, 3, NULL);
  drop_seqs(R, rest, 8);
  if (ok(burst_kv_cache_bytes(R->cache, &bytes), "burst_kv_cache_bytes")) {
    ++g_checks;
    if (bytes != 0) fail("burst_kv_cache_bytes %llu after every sequence was dropped", (unsigned long long)bytes);
  }
done:
  burst_kv_cache_destroy(R->cache);
  R->cache = NULL;
  model_free(&R->m);
}

/* ---- bad inputs -------------------------------------------------------------- */
/* st must be an error (want, or any error when want < 0) with a non-empty
 * message. Every rank checks its own status, so every rank is checked. */
static void expect_error(burst_status st, int want, const char *what) {
  const char *msg = burst_last_error();
  ++g_checks;
  if (g_verbose) fprintf(stderr, "c_kvcache rank %d: %s -> %s: %s\n", g_rank, what, burst_status_string(st), msg);
  if (st == BURST_OK) { fail("%s: got BURST_OK, expected an error on every rank", what); return; }
  if (want >= 0 && (int)st != want)
    fail("%s: got %s, expected %s (%s)", what, burst_status_string(st), burst_status_string((burst_status)want), msg);
  if (!msg || !msg[0]) fail("%s: %s with an empty burst_last_error()", what, burst_status_string(st));
}

/* Lengths and bytes of the bad-input cache must not change across a failed call. */
typedef struct snapshot { int64_t len[3], local[3]; uint64_t bytes; } snapshot;

static snapshot snap(const burst_kv_cache *c, const int64_t *ids) {
  snapshot s;
  int i;
  memset(&s, 0, sizeof s);
  for (i = 0; i < 3; ++i)
    if (burst_kv_cache_sequence_length(c, ids[i], 0, &s.len[i], &s.local[i]) != BURST_OK) s.len[i] = s.local[i] = -7;
  if (burst_kv_cache_bytes(c, &s.bytes) != BURST_OK) s.bytes = ~0ull;
  return s;
}

static void expect_unchanged(const burst_kv_cache *c, const int64_t *ids, const snapshot *before, const char *what) {
  snapshot after = snap(c, ids);
  ++g_checks;
  if (memcmp(&after, before, sizeof after) != 0)
    fail("%s changed the cache: lengths %lld %lld %lld -> %lld %lld %lld, bytes %llu -> %llu", what,
         (long long)before->len[0], (long long)before->len[1], (long long)before->len[2], (long long)after.len[0],
         (long long)after.len[1], (long long)after.len[2], (unsigned long long)before->bytes,
         (unsigned long long)after.bytes);
}

#define BAD(call, want, label)                   \
  do {                                           \
    snapshot before_ = snap(R->cache, sid);      \
    expect_error((call), (want), (label));       \
    expect_unchanged(R->cache, sid, &before_, (label)); \
  } while (0)

static burst_status make_plan(burst_context *ctx, int dt, int64_t hkv, int64_t d, int64_t n_local, burst_plan **plan) {
  burst_attention_config cfg;
  burst_attention_config_init(&cfg);
  cfg.dtype = dt; cfg.mask = BURST_MASK_CAUSAL; cfg.batch = 1; cfg.seq_len_local = n_local;
  cfg.num_heads_q = HQ; cfg.num_heads_kv = hkv; cfg.head_dim = d; cfg.num_threads = 1; cfg.timeout_seconds = 120;
  cfg.compute = BURST_COMPUTE_EXACT;
  return burst_plan_create(ctx, &cfg, plan);
}

static void bad_inputs(burst_context *ctx) {
  /* F32, BSHD, MQA (hkv 1), blocks of 4 tokens; rank 0 may hold at most 10.5 blocks. */
  const scenario sc = {BURST_DTYPE_F32, BURST_LAYOUT_BSHD, BURST_DISTRIBUTION_CONTIGUOUS, 1, -1, 4, 0.0f, 0.0f, 0};
  const int64_t block_bytes = 4 * (int64_t)token_bytes(&sc), limit = 10 * block_bytes + block_bytes / 2;
  const int P = g_size, r0 = g_rank == 0;
  run run_, *R = &run_;
  const int64_t sid[3] = {10, 11, 20}; /* slots 0, 1, 2 */
  int64_t ids[4], pos[2], len;
  const size_t big = (size_t)(48 * P + 4) * HQ * HEAD_DIM;
  float *q = xcalloc(big, 4), *k = xcalloc(big, 4), *v = xcalloc(big, 4), *out = xcalloc(big, 4);
  float *lse = xcalloc(big, 4);
  burst_kv_cache_config cfg;
  burst_kv_cache *dead = NULL, *other = NULL;
  burst_plan *plan = NULL;
  burst_context *ctx2 = NULL;
  burst_stats st;
  size_t i;
  static const int s0[] = {0}, s1[] = {1}, s2[] = {2};

  snprintf(g_case_text, sizeof g_case_text, "bad inputs P=%d", P);
  memset(R, 0, sizeof *R);
  R->ctx = ctx; R->sc = sc; R->seed = 777;
  model_init(&R->m, &sc);
  for (i = 0; i < big; ++i) {
    q[i] = (float)ref_value(5, REF_TENSOR_Q, i);
    k[i] = (float)ref_value(5, REF_TENSOR_K, i);
    v[i] = (float)ref_value(5, REF_TENSOR_V, i);
  }

  /* -- create: NULL pointers, struct sizes, bad fields, fields differing by rank -- */
  burst_kv_cache_config_init(&cfg);
  cfg.num_layers = 2; cfg.num_heads_q = HQ; cfg.num_heads_kv = 1; cfg.head_dim = HEAD_DIM; cfg.block_tokens = 4;
  expect_error(burst_kv_cache_create(ctx, NULL, &other), BURST_ERROR_INVALID_ARGUMENT, "create with a NULL config");
  expect_error(burst_kv_cache_create(NULL, &cfg, &other), BURST_ERROR_INVALID_ARGUMENT, "create with a NULL context");
  expect_error(burst_kv_cache_create(ctx, &cfg, NULL), BURST_ERROR_INVALID_ARGUMENT, "create with out = NULL");
  expect_error(burst_kv_cache_config_init_sized(NULL, sizeof cfg), BURST_ERROR_INVALID_ARGUMENT,
               "config_init_sized(NULL)");
  {
    burst_kv_cache_config c2;
    memset(&c2, 0x5A, sizeof c2);
    expect_error(burst_kv_cache_config_init_sized(&c2, 4), BURST_ERROR_VERSION, "config_init_sized(size 4)");
    ++g_checks;
    if (((unsigned char *)&c2)[0] != 0x5A) fail("config_init_sized(size 4) wrote to the struct");
  }
#define BAD_CFG(stmt, want, label)                                               \
  do {                                                                           \
    burst_kv_cache_config c_ = cfg;                                              \
    stmt;                                                                        \
    other = NULL;                                                                \
    expect_error(burst_kv_cache_create(ctx, &c_, &other), (want), (label));      \
    if (other) { fail("%s: a cache was returned", label); burst_kv_cache_destroy(other); other = NULL; } \
  } while (0)
  BAD_CFG(c_.struct_size = 0, BURST_ERROR_VERSION, "create with struct_size 0");
  BAD_CFG(c_.struct_size = (uint32_t)sizeof c_ - 8u, BURST_ERROR_VERSION, "create with struct_size sizeof - 8");
  BAD_CFG(c_.num_layers = 0, BURST_ERROR_INVALID_ARGUMENT, "create with num_layers 0");
  BAD_CFG((c_.num_heads_q = 3, c_.num_heads_kv = 2), BURST_ERROR_INVALID_ARGUMENT,
          "create with num_heads_q 3 over num_heads_kv 2");
  BAD_CFG(c_.head_dim = 0, BURST_ERROR_INVALID_ARGUMENT, "create with head_dim 0");
  BAD_CFG(c_.block_tokens = 65537, BURST_ERROR_INVALID_ARGUMENT, "create with block_tokens 65537");
  BAD_CFG(c_.window_left = -2, BURST_ERROR_INVALID_ARGUMENT, "create with window_left -2");
  BAD_CFG(c_.dtype = 3, BURST_ERROR_INVALID_ARGUMENT, "create with dtype 3");
  BAD_CFG(c_.layout = 2, BURST_ERROR_INVALID_ARGUMENT, "create with layout 2");
  BAD_CFG(c_.softmax_scale = (float)NAN, BURST_ERROR_INVALID_ARGUMENT, "create with softmax_scale NaN");
  BAD_CFG(c_.max_bytes_local = -1, BURST_ERROR_INVALID_ARGUMENT, "create with max_bytes_local -1");
  if (P > 1) {
    BAD_CFG(c_.num_layers = r0 ? 3 : 2, BURST_ERROR_MISMATCH, "create with num_layers 3 on rank 0 only");
    BAD_CFG(c_.window_left = r0 ? 8 : -1, BURST_ERROR_MISMATCH, "create with window_left 8 on rank 0 only");
  }
#undef BAD_CFG

  /* The cache of the rest: max_bytes_local differs by rank (allowed: rank 0's is small). */
  if (!ok(create_cache(ctx, &sc, r0 ? limit : 0, 1, &R->cache), "burst_kv_cache_create")) goto out;
  ids[0] = sid[0]; ids[1] = sid[1]; ids[2] = sid[2];
  if (!ok(burst_kv_cache_add(R->cache, ids, 3), "burst_kv_cache_add")) goto out;
  R->m.alive[0] = R->m.alive[1] = R->m.alive[2] = 1;
  prefill(R, 0, BURST_LAYOUT_BSHD, 1, 4, NULL, 0, s0, 901, 0);
  decode(R, 0, s0, 1, 1, NULL);

  /* -- NULL cache, and NULL / out-of-range arguments -- */
  ids[0] = sid[0];
  expect_error(burst_kv_cache_add(NULL, ids, 0), BURST_ERROR_INVALID_ARGUMENT, "add(NULL cache)");
  expect_error(burst_kv_cache_drop(NULL, ids, 1), BURST_ERROR_INVALID_ARGUMENT, "drop(NULL cache)");
  pos[0] = 1;
  expect_error(burst_kv_cache_truncate(NULL, ids, pos, 1), BURST_ERROR_INVALID_ARGUMENT, "truncate(NULL cache)");
  expect_error(burst_kv_cache_decode(NULL, 0, ids, 1, 1, NULL, q, k, v, out, lse), BURST_ERROR_INVALID_ARGUMENT,
               "decode(NULL cache)");
  expect_error(burst_kv_cache_sequence_length(NULL, sid[0], 0, &len, NULL), BURST_ERROR_INVALID_ARGUMENT,
               "sequence_length(NULL cache)");
  expect_error(burst_kv_cache_bytes(NULL, &st.bytes_sent), BURST_ERROR_INVALID_ARGUMENT, "bytes(NULL cache)");
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  expect_error(burst_kv_cache_stats(NULL, &st), BURST_ERROR_INVALID_ARGUMENT, "stats(NULL cache)");
  st.struct_size = 0;
  expect_error(burst_kv_cache_stats(R->cache, &st), BURST_ERROR_VERSION, "stats with struct_size 0");
  expect_error(burst_kv_cache_bytes(R->cache, NULL), BURST_ERROR_INVALID_ARGUMENT, "bytes(out = NULL)");
  expect_error(burst_kv_cache_sequence_length(R->cache, 99, 0, &len, NULL), BURST_ERROR_INVALID_ARGUMENT,
               "sequence_length of an unknown id");
  expect_error(burst_kv_cache_sequence_length(R->cache, sid[0], 2, &len, NULL), BURST_ERROR_INVALID_ARGUMENT,
               "sequence_length in layer 2 of 2");
  BAD(burst_kv_cache_add(R->cache, NULL, 1), BURST_ERROR_INVALID_ARGUMENT, "add(seq_ids NULL, count 1)");
  BAD(burst_kv_cache_add(R->cache, ids, -1), BURST_ERROR_INVALID_ARGUMENT, "add(count -1)");
  ids[0] = -5;
  BAD(burst_kv_cache_add(R->cache, ids, 1), BURST_ERROR_INVALID_ARGUMENT, "add of id -5");
  ids[0] = sid[0];
  BAD(burst_kv_cache_decode(R->cache, 0, ids, 0, 1, NULL, q, k, v, out, lse), BURST_ERROR_INVALID_ARGUMENT,
      "decode with num_seqs 0");
  BAD(burst_kv_cache_decode(R->cache, 0, ids, 1, 0, NULL, q, k, v, out, lse), BURST_ERROR_INVALID_ARGUMENT,
      "decode with T 0");
  BAD(burst_kv_cache_decode(R->cache, 0, ids, 1, 1, NULL, NULL, k, v, out, lse), BURST_ERROR_INVALID_ARGUMENT,
      "decode with q NULL");
  BAD(burst_kv_cache_decode(R->cache, 0, ids, 1, 1, NULL, q, k, v, q, lse), BURST_ERROR_INVALID_ARGUMENT,
      "decode with out = q");
  BAD(burst_kv_cache_decode(R->cache, 0, NULL, 1, 1, NULL, q, k, v, out, lse), BURST_ERROR_INVALID_ARGUMENT,
      "decode with seq_ids NULL");
  pos[0] = -1;
  BAD(burst_kv_cache_truncate(R->cache, ids, pos, 1), BURST_ERROR_INVALID_ARGUMENT, "truncate to length -1");

  /* -- layers, ids -- */
  BAD(burst_kv_cache_decode(R->cache, 2, ids, 1, 1, NULL, q, k, v, out, lse), BURST_ERROR_INVALID_ARGUMENT,
      "decode in layer 2 of 2");
  BAD(burst_kv_cache_decode(R->cache, -1, ids, 1, 1, NULL, q, k, v, out, lse), BURST_ERROR_INVALID_ARGUMENT,
      "decode in layer -1");
  ids[0] = 99;
  BAD(burst_kv_cache_decode(R->cache, 0, ids, 1, 1, NULL, q, k, v, out, lse), BURST_ERROR_INVALID_ARGUMENT,
      "decode of an unknown id");
  BAD(burst_kv_cache_drop(R->cache, ids, 1), BURST_ERROR_INVALID_ARGUMENT, "drop of an unknown id");
  pos[0] = 0;
  BAD(burst_kv_cache_truncate(R->cache, ids, pos, 1), BURST_ERROR_INVALID_ARGUMENT, "truncate of an unknown id");
  ids[0] = sid[1]; ids[1] = 99;
  BAD(burst_kv_cache_drop(R->cache, ids, 2), BURST_ERROR_INVALID_ARGUMENT, "drop of a known and an unknown id");
  ids[0] = ids[1] = sid[0];
  BAD(burst_kv_cache_decode(R->cache, 0, ids, 2, 1, NULL, q, k, v, out, lse), BURST_ERROR_INVALID_ARGUMENT,
      "decode with the same id twice");
  BAD(burst_kv_cache_drop(R->cache, ids, 2), BURST_ERROR_INVALID_ARGUMENT, "drop with the same id twice");
  pos[0] = pos[1] = 1;
  BAD(burst_kv_cache_truncate(R->cache, ids, pos, 2), BURST_ERROR_INVALID_ARGUMENT, "truncate with the same id twice");
  ids[0] = ids[1] = 50;
  BAD(burst_kv_cache_add(R->cache, ids, 2), BURST_ERROR_INVALID_ARGUMENT, "add with the same new id twice");
  ids[0] = 50; ids[1] = sid[1];
  BAD(burst_kv_cache_add(R->cache, ids, 2), BURST_ERROR_INVALID_ARGUMENT, "add of a new and an existing id");
  expect_error(burst_kv_cache_sequence_length(R->cache, 50, 0, &len, NULL), BURST_ERROR_INVALID_ARGUMENT,
               "id 50 of the failed add must not exist");
  ids[0] = sid[0];
  BAD(burst_kv_cache_add(R->cache, ids, 1), BURST_ERROR_INVALID_ARGUMENT, "add of an existing id");
  /* positions: never back */
  pos[0] = model_length(&R->m, 0, 0) - 1;
  BAD(burst_kv_cache_decode(R->cache, 0, ids, 1, 1, pos, q, k, v, out, lse), BURST_ERROR_INVALID_ARGUMENT,
      "decode with a position going back");

  /* -- what differs between ranks: MISMATCH on every rank -- */
  if (P > 1) {
    ids[0] = sid[0]; ids[1] = sid[1];
    BAD(burst_kv_cache_decode(R->cache, 0, ids, 1, r0 ? 2 : 1, NULL, q, k, v, out, lse), BURST_ERROR_MISMATCH,
        "decode with T 2 on rank 0, 1 elsewhere");
    BAD(burst_kv_cache_decode(R->cache, 0, ids, r0 ? 2 : 1, 1, NULL, q, k, v, out, lse), BURST_ERROR_MISMATCH,
        "decode with num_seqs 2 on rank 0, 1 elsewhere");
    ids[0] = r0 ? sid[1] : sid[0];
    BAD(burst_kv_cache_decode(R->cache, 0, ids, 1, 1, NULL, q, k, v, out, lse), BURST_ERROR_MISMATCH,
        "decode of id 11 on rank 0, 10 elsewhere");
    ids[0] = sid[0];
    if (r0) q[3] += 0.25f;
    BAD(burst_kv_cache_decode(R->cache, 0, ids, 1, 1, NULL, q, k, v, out, lse), BURST_ERROR_MISMATCH,
        "decode with q differing on rank 0");
    if (r0) { q[3] -= 0.25f; v[HEAD_DIM - 1] = -v[HEAD_DIM - 1]; }
    BAD(burst_kv_cache_decode(R->cache, 0, ids, 1, 1, NULL, q, k, v, out, lse), BURST_ERROR_MISMATCH,
        "decode with v differing on rank 0");
    if (r0) v[HEAD_DIM - 1] = -v[HEAD_DIM - 1];
    pos[0] = model_length(&R->m, 0, 0) + (r0 ? 1 : 0);
    BAD(burst_kv_cache_decode(R->cache, 0, ids, 1, 1, pos, q, k, v, out, lse), BURST_ERROR_MISMATCH,
        "decode with positions differing on rank 0");
  }

  /* -- a full cache: OUT_OF_MEMORY on every rank, then a smaller call works.
   * Rank 0 may hold 10.5 blocks and holds 1 or 2. T = 40P + 1 new tokens of sequence 11
   * put 41 on rank 0: 11 more blocks. -- */
  ids[0] = sid[1];
  BAD(burst_kv_cache_decode(R->cache, 0, ids, 1, 40 * P + 1, NULL, q, k, v, out, lse), BURST_ERROR_OUT_OF_MEMORY,
      "decode past rank 0's max_bytes_local");
  ids[0] = sid[0]; ids[1] = sid[1]; ids[2] = sid[2]; /* 16 tokens each on rank 0: the third does not fit */
  BAD(burst_kv_cache_decode(R->cache, 0, ids, 3, 16 * P, NULL, q, k, v, out, lse), BURST_ERROR_OUT_OF_MEMORY,
      "decode of 3 sequences whose third does not fit on rank 0");
  decode(R, 0, s1, 1, 1, NULL);
  /* A prefill of 44 tokens on rank 0 (11 blocks) into sequence 20 fails the same way; 2 tokens work. */
  {
    int64_t n = r0 ? 44 : 1;
    ids[0] = sid[2];
    if (ok(make_plan(ctx, BURST_DTYPE_F32, 1, HEAD_DIM, n, &plan), "burst_plan_create 44 tokens")) {
      BAD(burst_kv_cache_prefill(R->cache, 0, plan, ids, k, v), BURST_ERROR_OUT_OF_MEMORY,
          "prefill past rank 0's max_bytes_local");
    }
    burst_plan_destroy(plan);
    plan = NULL;
  }
  prefill(R, 0, BURST_LAYOUT_BSHD, 1, 2, NULL, 0, s2, 902, 0);
  decode(R, 0, s2, 1, 3, NULL);

  /* -- prefill: plans that do not fit, a non-empty layer -- */
  ids[0] = sid[1];
  expect_error(burst_kv_cache_prefill(R->cache, 0, NULL, ids, k, v), BURST_ERROR_INVALID_ARGUMENT,
               "prefill with plan NULL");
  if (ok(make_plan(ctx, BURST_DTYPE_F32, 1, HEAD_DIM, 1, &plan), "burst_plan_create")) {
    ids[0] = sid[0];
    BAD(burst_kv_cache_prefill(R->cache, 0, plan, ids, k, v), BURST_ERROR_INVALID_ARGUMENT,
        "prefill into a non-empty layer");
    ids[0] = 99;
    BAD(burst_kv_cache_prefill(R->cache, 1, plan, ids, k, v), BURST_ERROR_INVALID_ARGUMENT,
        "prefill of an unknown id");
    ids[0] = sid[1];
    BAD(burst_kv_cache_prefill(R->cache, 2, plan, ids, k, v), BURST_ERROR_INVALID_ARGUMENT,
        "prefill into layer 2 of 2");
    BAD(burst_kv_cache_prefill(R->cache, 1, plan, NULL, k, v), BURST_ERROR_INVALID_ARGUMENT,
        "prefill with seq_ids NULL");
  }
  burst_plan_destroy(plan);
  plan = NULL;
  ids[0] = sid[1];
  if (ok(make_plan(ctx, BURST_DTYPE_F32, 1, 2 * HEAD_DIM, 1, &plan), "burst_plan_create head_dim 32"))
    BAD(burst_kv_cache_prefill(R->cache, 1, plan, ids, k, v), BURST_ERROR_INVALID_ARGUMENT,
        "prefill with a plan of head_dim 32");
  burst_plan_destroy(plan);
  plan = NULL;
  if (ok(make_plan(ctx, BURST_DTYPE_F32, 2, HEAD_DIM, 1, &plan), "burst_plan_create num_heads_kv 2"))
    BAD(burst_kv_cache_prefill(R->cache, 1, plan, ids, k, v), BURST_ERROR_INVALID_ARGUMENT,
        "prefill with a plan of num_heads_kv 2");
  burst_plan_destroy(plan);
  plan = NULL;
  if (ok(make_plan(ctx, BURST_DTYPE_BF16, 1, HEAD_DIM, 1, &plan), "burst_plan_create BF16"))
    BAD(burst_kv_cache_prefill(R->cache, 1, plan, ids, k, v), BURST_ERROR_INVALID_ARGUMENT,
        "prefill with a plan of dtype BF16");
  burst_plan_destroy(plan);
  plan = NULL;
  if (ok(burst_context_create_mpi((int64_t)MPI_Comm_c2f(MPI_COMM_WORLD), &ctx2), "second context") &&
      ok(make_plan(ctx2, BURST_DTYPE_F32, 1, HEAD_DIM, 1, &plan), "burst_plan_create on the second context"))
    BAD(burst_kv_cache_prefill(R->cache, 1, plan, ids, k, v), BURST_ERROR_INVALID_ARGUMENT,
        "prefill with a plan of another context");
  burst_plan_destroy(plan);
  plan = NULL;
  burst_context_destroy(ctx2);

  /* After every error: good calls still work and match the reference. */
  {
    static const int s012[] = {0, 1, 2};
    decode(R, 0, s012, 3, 3, NULL);
    decode(R, 1, s012, 3, 1, NULL);
  }
  check_lengths(R, "after the bad inputs");

  /* -- a destroyed cache: INVALID_ARGUMENT; a second destroy is ignored -- */
  dead = R->cache;
  burst_kv_cache_destroy(dead);
  R->cache = NULL;
  ids[0] = sid[0];
  expect_error(burst_kv_cache_decode(dead, 0, ids, 1, 1, NULL, q, k, v, out, lse), BURST_ERROR_INVALID_ARGUMENT,
               "decode after destroy");
  expect_error(burst_kv_cache_add(dead, ids, 0), BURST_ERROR_INVALID_ARGUMENT, "add after destroy");
  expect_error(burst_kv_cache_sequence_length(dead, sid[0], 0, &len, NULL), BURST_ERROR_INVALID_ARGUMENT,
               "sequence_length after destroy");
  expect_error(burst_kv_cache_bytes(dead, &st.bytes_sent), BURST_ERROR_INVALID_ARGUMENT, "bytes after destroy");
  burst_kv_cache_destroy(dead);
  burst_kv_cache_destroy(NULL);
out:
  burst_kv_cache_destroy(R->cache);
  model_free(&R->m);
  free(q); free(k); free(v); free(out); free(lse);
}
#undef BAD

int main(int argc, char **argv) {
  static const int64_t hkvs[] = {4, 2, 1};
  burst_context *ctx = NULL;
  int dtype, layout, dist, hi, win, n_scen = 0, total = 0;
  const char *env = getenv("BURST_TEST_VERBOSE");
  g_verbose = env && env[0] == '1';
  MPI_Init(&argc, &argv);
  g_case = g_case_text;
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  if (g_size > 64) { if (g_rank == 0) fprintf(stderr, "at most 64 ranks\n"); MPI_Abort(MPI_COMM_WORLD, 2); }
  if (!ok(burst_context_create_mpi((int64_t)MPI_Comm_c2f(MPI_COMM_WORLD), &ctx), "burst_context_create_mpi"))
    MPI_Abort(MPI_COMM_WORLD, 1);

  for (dtype = BURST_DTYPE_F32; dtype <= BURST_DTYPE_F16; ++dtype)
    for (layout = BURST_LAYOUT_BSHD; layout <= BURST_LAYOUT_BHSD; ++layout)
      for (dist = BURST_DISTRIBUTION_CONTIGUOUS; dist <= BURST_DISTRIBUTION_STRIPED; ++dist)
        for (hi = 0; hi < 3; ++hi)
          for (win = 0; win <= 1; ++win) {
            run R;
            static const int64_t blocks[] = {4, 1, 0}; /* 1: 150+ blocks, several chunks of the decode; 0: 256 */
            memset(&R, 0, sizeof R);
            R.ctx = ctx;
            R.sc.dtype = dtype; R.sc.layout = layout; R.sc.dist = dist; R.sc.hkv = hkvs[hi];
            R.sc.window_left = win ? 6 : -1;
            R.sc.softmax_scale = win ? 0.3f : 0.0f;
            R.sc.block_tokens = blocks[n_scen % 3];
            R.seed = 1000u + (uint64_t)n_scen;
            snprintf(g_case_text, sizeof g_case_text, "%s %s %s heads %d/%lld window %lld blocks %lld P=%d",
                     dtype == BURST_DTYPE_F32 ? "F32" : dtype == BURST_DTYPE_BF16 ? "BF16" : "F16",
                     layout == BURST_LAYOUT_BSHD ? "BSHD" : "BHSD",
                     dist == BURST_DISTRIBUTION_ZIGZAG ? "ZIGZAG" : dist ? "STRIPED" : "CONTIGUOUS", HQ,
                     (long long)R.sc.hkv,
                     (long long)R.sc.window_left, (long long)R.sc.block_tokens, g_size);
            run_scenario(&R);
            R.replay = 1; /* the same again on a fresh cache: the same bytes */
            run_scenario(&R);
            R.replay = 2; /* and with other num_threads, lse NULL at odd steps */
            run_scenario(&R);
            ++n_scen;
          }
  /* Score modifiers (0.8): softcap and per-layer sinks (the two layers'
   * differ), alone and together, over the dtypes, layouts, distributions,
   * head counts and windows; each scenario 3 times as above. */
  {
    static const struct { int dtype, layout, dist, hi, win; float softcap; int sinks; } mods[] = {
        {BURST_DTYPE_F32, BURST_LAYOUT_BSHD, BURST_DISTRIBUTION_CONTIGUOUS, 0, 0, 0.0f, 1},
        {BURST_DTYPE_F32, BURST_LAYOUT_BHSD, BURST_DISTRIBUTION_ZIGZAG, 1, 1, 0.5f, 0},
        {BURST_DTYPE_F32, BURST_LAYOUT_BSHD, BURST_DISTRIBUTION_STRIPED, 2, 0, 0.75f, 1},
        {BURST_DTYPE_BF16, BURST_LAYOUT_BHSD, BURST_DISTRIBUTION_CONTIGUOUS, 1, 1, 1.0f, 1},
        {BURST_DTYPE_F16, BURST_LAYOUT_BSHD, BURST_DISTRIBUTION_ZIGZAG, 0, 1, 0.5f, 1},
        {BURST_DTYPE_F16, BURST_LAYOUT_BHSD, BURST_DISTRIBUTION_STRIPED, 2, 0, 0.0f, 1},
    };
    size_t j;
    for (j = 0; j < sizeof mods / sizeof mods[0]; ++j) {
      run R;
      static const int64_t blocks[] = {4, 1, 0};
      memset(&R, 0, sizeof R);
      R.ctx = ctx;
      R.sc.dtype = mods[j].dtype; R.sc.layout = mods[j].layout; R.sc.dist = mods[j].dist;
      R.sc.hkv = hkvs[mods[j].hi]; R.sc.window_left = mods[j].win ? 6 : -1;
      R.sc.softmax_scale = mods[j].win ? 0.3f : 0.0f; R.sc.block_tokens = blocks[j % 3];
      R.sc.softcap = mods[j].softcap; R.sc.sinks = mods[j].sinks;
      R.seed = 5000u + (uint64_t)j;
      snprintf(g_case_text, sizeof g_case_text, "%s %s %s heads %d/%lld window %lld blocks %lld softcap %g sinks %s P=%d",
               R.sc.dtype == BURST_DTYPE_F32 ? "F32" : R.sc.dtype == BURST_DTYPE_BF16 ? "BF16" : "F16",
               R.sc.layout == BURST_LAYOUT_BSHD ? "BSHD" : "BHSD",
               R.sc.dist == BURST_DISTRIBUTION_ZIGZAG ? "ZIGZAG" : R.sc.dist ? "STRIPED" : "CONTIGUOUS", HQ,
               (long long)R.sc.hkv, (long long)R.sc.window_left, (long long)R.sc.block_tokens,
               (double)R.sc.softcap, R.sc.sinks ? "per layer" : "off", g_size);
      run_scenario(&R);
      R.replay = 1;
      run_scenario(&R);
      R.replay = 2;
      run_scenario(&R);
      ++n_scen;
    }
  }
  bad_inputs(ctx);
  burst_context_destroy(ctx);
  MPI_Allreduce(&g_failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  printf("c_kvcache rank %d/%d: %s - %d scenarios (each 3 times) and the bad inputs, %d checks, %d local failures\n",
         g_rank, g_size, total ? "FAILED" : "ok", n_scen, g_checks, g_failures);
  MPI_Finalize();
  return total ? 1 : 0;
}
