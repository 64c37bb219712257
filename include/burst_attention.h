/*
 * burst_attention.h — libburst_attention, exact distributed attention
 * (BurstAttention, arXiv 2403.09347) for CPU clusters.
 *
 * The header is the manual. Conventions:
 *  - Every function that can fail returns a burst_status; on failure
 *    burst_last_error() gives a message for the calling thread.
 *  - Handles are opaque. Buffers are owned by the caller; the library never
 *    keeps a pointer to a caller's buffer after a call returns (cu_seqlens is
 *    copied by burst_plan_create).
 *  - "Collective" means: every rank of the context must make the call, in the
 *    same order relative to the other collective calls on that context. A
 *    collective call agrees on its outcome: if it fails on one rank (a NULL
 *    buffer, a bad config, an allocation failure, a mismatch) it fails on
 *    every rank, naming the rank and the cause — it never leaves another
 *    rank waiting forever. A TIMEOUT or COMMUNICATION error is what the rank
 *    that saw it knows: a peer that had already received everything it
 *    needed may have completed the same call, and its next collective call
 *    then fails within its own timeout. After either error the plan (forward,
 *    backward) or the context (plan_create) is unusable on that rank: later
 *    calls fail at once; destroy it (a new context needs a communicator whose
 *    ranks are all alive).
 *  - Counts are 64-bit. Config structs carry their own size (struct_size) and
 *    an _init function, so they can grow by appending fields.
 *  - This header does not include mpi.h: an MPI communicator crosses the ABI
 *    as its Fortran handle (MPI_Comm_c2f(comm) in C, comm.py2f() in mpi4py).
 *
 *  - Handles are checked: a pointer that is not a live handle of the right
 *    kind (destroyed, never created, a plan passed as a context) gives
 *    BURST_ERROR_INVALID_ARGUMENT, and destroying one twice is ignored. (A
 *    destroyed handle whose address a newer handle reuses is that newer
 *    handle.) docs/RELIABILITY.md lists every guarantee with its test.
 * Threads: the library never calls MPI_Init/MPI_Finalize. Only the thread that
 * calls into the library calls MPI, so MPI_THREAD_SINGLE suffices; compute
 * threads never touch MPI. A plan is used by one thread at a time (a second
 * concurrent call on the same plan returns BURST_ERROR_BUSY). Different plans
 * may be driven from different threads for self and loopback contexts, and
 * for MPI contexts when MPI was initialised with MPI_THREAD_MULTIPLE (without
 * it a second thread entering an MPI call meanwhile gets BURST_ERROR_BUSY).
 * A plan or context destroyed while another thread is inside a call on it
 * stays alive until that call returns (the call completes normally); calls
 * made after the destroy get BURST_ERROR_INVALID_ARGUMENT.
 */
#ifndef BURST_ATTENTION_H
#define BURST_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  define BURST_API __declspec(dllimport)
#elif defined(__GNUC__) && __GNUC__ >= 4
#  define BURST_API __attribute__((visibility("default")))
#else
#  define BURST_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define BURST_VERSION_MAJOR 0
#define BURST_VERSION_MINOR 9
#define BURST_VERSION_PATCH 0
#define BURST_VERSION_NUMBER \
  (BURST_VERSION_MAJOR * 10000 + BURST_VERSION_MINOR * 100 + BURST_VERSION_PATCH)

/* The version of the library actually loaded: MAJOR*10000 + MINOR*100 + PATCH.
 * Compare it with BURST_VERSION_NUMBER to detect a header/library mismatch. */
BURST_API uint32_t burst_version(void);

/* A static, never-NULL description of the library loaded and the kernel code
 * paths its run-time dispatch picked for this CPU, e.g.
 * "libburst_attention 0.9.0; kernels cpx+avx512; convert avx512;
 * bf16_products avx512_bf16; cpus 2" (tile products: libxsmm's target "cpx",
 * "skx", "hsw", ... or "portable"; row kernels "avx512", "avx2" or "baseline";
 * convert: the bf16/fp16 conversions, "avx512", "avx2" (AVX2 + F16C) or
 * "portable" (since 0.4); bf16_products: how BURST_COMPUTE_FAST runs its tile
 * products, "avx512_bf16" (libxsmm's bf16 kernels on a CPU with AVX512-BF16) or
 * "emulated" (the portable emulation with the same rounding) (since 0.7);
 * cpus: the CPUs this process may run on, which divided by the ranks on the
 * node is the default num_threads).
 * BURST_KERNELS=portable selects the portable code everywhere. For logs and bug reports:
 * "key value" pairs separated by "; ". Thread-safe. (0.2) */
BURST_API const char *burst_build_info(void);

/* ------------------------------------------------------------------------ */
/* Status codes. The values are ABI and never change.                        */
typedef enum burst_status {
  BURST_OK = 0,
  BURST_ERROR_INVALID_ARGUMENT = 1, /* a NULL pointer, a value out of range   */
  BURST_ERROR_UNSUPPORTED = 2,      /* valid, but not implemented (yet)        */
  BURST_ERROR_OUT_OF_MEMORY = 3,    /* workspace could not be allocated        */
  BURST_ERROR_MISMATCH = 4,         /* ranks disagree on a config field / call */
  BURST_ERROR_COMMUNICATION = 5,    /* MPI reported an error; plan unusable    */
  BURST_ERROR_INTERNAL = 6,         /* a bug in the library: please report it  */
  BURST_ERROR_VERSION = 7,          /* struct_size not known to this library   */
  BURST_ERROR_TIMEOUT = 8,          /* a peer did not answer in time; unusable */
  BURST_ERROR_BUSY = 9              /* the plan is in use by another thread    */
} burst_status;

/* A static, never-NULL English name for a status ("BURST_OK", ...). Unknown
 * values give "BURST_ERROR_UNKNOWN". Thread-safe. */
BURST_API const char *burst_status_string(burst_status status);

/* The message of the last failed call made by the calling thread (thread-local,
 * never NULL; valid until the next call into the library on this thread).
 * Its content after a successful call is unspecified. */
BURST_API const char *burst_last_error(void);

/* ------------------------------------------------------------------------ */
/* Enumerations. Config fields that hold them are int32_t; a value out of
 * range gives BURST_ERROR_INVALID_ARGUMENT.                                 */
enum { BURST_LAYOUT_BSHD = 0,  /* q/k/v/out: [batch, seq_len_local, heads, head_dim] */
       BURST_LAYOUT_BHSD = 1   /* q/k/v/out: [batch, heads, seq_len_local, head_dim] */ };
/* Storage types of q, k, v, out, dout, dq, dk and dv (the buffers passed as
 * void *; lse is always fp32). Since 0.4 (appended; values are ABI):
 *  BURST_DTYPE_F32   IEEE binary32 (float).
 *  BURST_DTYPE_BF16  bfloat16 in uint16_t elements: the top 16 bits of an
 *                    fp32 (sign, 8 exponent bits, 7 fraction bits).
 *  BURST_DTYPE_F16   IEEE binary16 in uint16_t elements (_Float16 / __fp16 /
 *                    numpy float16 bits).
 * With bf16 or f16 storage every input is widened to fp32 (exactly) when it
 * is packed, all accumulation (online softmax, dQ, dK, dV, lse,
 * D = rowsum(dO * O)) is fp32, and each output element is rounded once, to
 * nearest with ties to even, when it is written to the caller's buffer (NaN
 * stays a quiet NaN, fp16 overflow gives +-inf, subnormals are rounded
 * correctly). The tile products are fp32 with BURST_COMPUTE_EXACT (the
 * default for F32 and F16) and bf16 with BURST_COMPUTE_FAST (the default for
 * BF16 since 0.7; see burst_attention_config.compute).
 * Numerics contract with BURST_COMPUTE_EXACT (docs/storage-types.md; FAST
 * has its own, at BURST_COMPUTE_*): against a float64 reference
 * computed from the same rounded inputs (for the backward: the same rounded
 * q, k, v, out and dout), every element of out, dq, dk, dv is within the
 * fp32 tolerance (out 1e-5, gradients 1e-4 of max|ref|) plus the output
 * rounding, u*|ref| with u = 2^-8 for bf16 and 2^-11 for f16 (plus 2^-24, the
 * fp16 subnormal step); lse within 1e-4.
 * On the wire the tensors that came in the storage type (K, V, Q, dO, and
 * ULYSSES' results, which are final where they are computed) travel in it, 2
 * bytes an element; lse, D and partial sums travel as fp32, so the forward
 * of BURST, RING and ALLGATHER moves exactly half the bytes of F32 (docs/patterns.md
 * has the exact formulas). */
enum { BURST_DTYPE_F32 = 0, BURST_DTYPE_BF16 = 1, BURST_DTYPE_F16 = 2 };
enum { BURST_MASK_NONE = 0, BURST_MASK_CAUSAL = 1 /* in global positions */ };
/* How the global sequence (positions 0 .. N-1, N = total tokens) is dealt to
 * the P ranks of a context. Rank r's local rows are its tokens in increasing
 * global position; burst_shard_positions lists them.
 *
 *  CONTIGUOUS  rank r holds one run of seq_len_local tokens; the runs follow
 *              each other in rank order (offset of rank r = sum of the
 *              seq_len_local of ranks 0..r-1). Any split is accepted, ranks
 *              may hold 0 tokens. The helpers propose the balanced split:
 *              floor(N/P) tokens each, ranks 0 .. (N mod P)-1 one more.
 *  ZIGZAG      N is cut into 2P chunks, chunk c holding floor(N/2P) tokens
 *              plus one if c < N mod 2P; rank r holds chunks r and 2P-1-r.
 *              Under a causal mask every rank then does the same work.
 *  STRIPED     the token at position t lives on rank t mod P (rank r holds
 *              ceil((N - r)/P) tokens: r, r+P, r+2P, ...).
 *
 * With packing (cu_seqlens), CONTIGUOUS and STRIPED apply to the whole packed
 * buffer, and ZIGZAG applies to every sequence separately: sequence s of
 * length L is cut into 2P chunks by the rule above and rank r holds its chunks
 * r and 2P-1-r, sequence after sequence. Why: causal work inside a sequence
 * grows with the position in that sequence, so only a per-sequence zigzag
 * balances it whatever the lengths are (a zigzag over the whole buffer would
 * put a short sequence into one chunk); a stripe is balanced inside every
 * sequence either way, and over the whole buffer it keeps the ranks' counts
 * within one token of each other.
 *
 * For ZIGZAG and STRIPED the library derives every rank's count from N (and
 * cu_seqlens): each rank must pass exactly that count as seq_len_local, or
 * burst_plan_create fails with BURST_ERROR_INVALID_ARGUMENT on every rank,
 * naming the rank and the count expected. N itself is the sum of all ranks'
 * seq_len_local.                                                            */
enum { BURST_DISTRIBUTION_CONTIGUOUS = 0,
       BURST_DISTRIBUTION_ZIGZAG = 1,
       BURST_DISTRIBUTION_STRIPED = 2 };
/* Communication patterns: what travels between the ranks (exact per-rank
 * byte formulas in docs/patterns.md). All give the same
 * results within the numerics contract; each is bitwise reproducible.
 *  BURST     default. Forward: K,V blocks travel the ring. Backward: the
 *            query side (Q, dO, D, lse and the partial dQ) travels, K, V,
 *            dK, dV stay (BurstAttention Alg. 2: ~25% fewer bytes than RING
 *            for MHA). Transfers of step t+1 overlap the compute of step t.
 *  RING      forward as BURST; backward: K, V and the partial dK, dV travel
 *            (ring-flash-attention). Fewer bytes than BURST with GQA.
 *  ALLGATHER every rank gathers every K,V; the backward sends each partial
 *            dK, dV to its owner (reduce-scatter). Megatron / Llama 3
 *            context parallelism; memory O(N) per rank.
 *  ULYSSES   all-to-all over heads (DeepSpeed-Ulysses): needs num_heads_kv
 *            divisible by the number of ranks, else burst_plan_create
 *            returns BURST_ERROR_UNSUPPORTED naming the condition.
 *  AUTO      burst_plan_create picks one of the above by the cost model in
 *            docs/patterns.md; burst_stats.pattern reports the choice.
 * The ring patterns run a double ring when intra_group_size < world size. */
enum { BURST_PATTERN_BURST = 0,
       BURST_PATTERN_RING = 1,
       BURST_PATTERN_ALLGATHER = 2,
       BURST_PATTERN_ULYSSES = 3,
       BURST_PATTERN_AUTO = 4 };

/* The precision of the tile products (burst_attention_config.compute;
 * since 0.7, values are ABI):
 *  BURST_COMPUTE_DEFAULT  FAST when dtype is BF16 and the CPU has bf16
 *                         products (burst_build_info: "bf16_products
 *                         avx512_bf16"): the caller already chose bf16
 *                         numerics, and torch's bf16 SDPA multiplies in bf16
 *                         too. EXACT otherwise: an emulated FAST is slower than
 *                         EXACT, and EXACT meets the FAST bounds; F16 stays
 *                         EXACT (fp16 inputs would lose mantissa bits if
 *                         rounded to bf16).
 *  BURST_COMPUTE_EXACT    fp32 products: the numerics contract of the storage
 *                         types above (DESIGN §3 for F32).
 *  BURST_COMPUTE_FAST     q, k, v, dO and the probabilities P and dS are
 *                         rounded to bf16 (round to nearest even), products
 *                         are accumulated in fp32; the online softmax, lse, D
 *                         and every accumulator stay fp32 (FlashAttention's
 *                         GPU recipe). On a CPU with AVX512-BF16 it runs
 *                         libxsmm's bf16 kernels, elsewhere a portable
 *                         emulation with the same rounding (results differ from
 *                         the hardware path only in summation order);
 *                         burst_build_info() says which ("bf16_products").
 *                         Allowed with F32 or F16 storage too (the inputs are
 *                         then rounded to bf16).
 * FAST contract, for inputs of unit scale (as DESIGN §3): against a float64
 * reference computed from the same bf16-rounded inputs (for the backward: D
 * from the out passed to burst_backward), out within 6e-3 * max|ref|, dq,
 * dk, dv within 1.2e-2 * max|ref|, lse within 1e-4 absolute, whatever the
 * storage type (a bf16 output's rounding included; docs/numerics.md). Same inputs, world size, config and bf16_products path give
 * the same bits, as with EXACT. Decode and the KV cache are not affected:
 * they are memory bound and always use fp32 products.                   */
enum { BURST_COMPUTE_DEFAULT = 0,
       BURST_COMPUTE_EXACT = 1,
       BURST_COMPUTE_FAST = 2 };

/* Which keys a query sees (all positions global, every rule combinable):
 * key j is visible to query i when
 *   - i - window_left <= j <= i + window_right   (a window of -1 is unbounded;
 *     inclusive, as flash-attn's window_size = (left, right)),
 *   - j <= i                                     if mask is BURST_MASK_CAUSAL,
 *   - i and j lie in the same sequence           if cu_seqlens is set.
 * Packing follows flash-attn's varlen convention: cu_seqlens holds
 * num_sequences + 1 offsets into the global sequence, cu_seqlens[0] = 0,
 * non-decreasing (empty sequences are allowed), cu_seqlens[num_sequences] = N;
 * a sequence may span ranks and a rank may hold pieces of several. With
 * batch > 1 every batch row is packed the same way.
 * A query row that sees no key gets out = 0, lse = -inf (s_h with sinks) and zero gradients
 * (the kernels guard exp(s - lse) for lse = -inf, so no NaN comes from it);
 * with the masks above every query sees at least its own key.
 * GQA/MQA: query head h reads key/value head h / (num_heads_q / num_heads_kv);
 * K, V, dK and dV are stored and sent at num_heads_kv heads, never repeated.
 * Work whose keys are all hidden is skipped: a ring step (steps_skipped), a
 * tile (tiles_skipped), and a transfer that no rank further along the ring
 * needs (see docs/patterns.md).                              */

/* One attention shape. Field order is ABI; new fields are only appended.
 * Always call burst_attention_config_init first, then set fields. */
typedef struct burst_attention_config {
  uint32_t struct_size;   /* sizeof(burst_attention_config); set by _init   */
  int32_t  layout;        /* BURST_LAYOUT_*                                  */
  int32_t  dtype;         /* BURST_DTYPE_* (storage type of the tensors)     */
  int32_t  mask;          /* BURST_MASK_*                                    */
  int32_t  distribution;  /* BURST_DISTRIBUTION_*                            */
  int32_t  pattern;       /* BURST_PATTERN_*                                 */
  int64_t  batch;         /* > 0                                             */
  int64_t  seq_len_local; /* >= 0: tokens this rank holds (may differ by rank) */
  int64_t  num_heads_q;   /* > 0                                             */
  int64_t  num_heads_kv;  /* > 0, divides num_heads_q (GQA; 1 = MQA)        */
  int64_t  head_dim;      /* > 0                                             */
  float    softmax_scale; /* 0 = 1/sqrt(head_dim); finite and >= 0          */
  int64_t  window_left, window_right;  /* >= -1; -1 = unbounded             */
  const int64_t *cu_seqlens;           /* NULL: no packing; else num_sequences
                                          + 1 offsets, copied at plan_create */
  int64_t  num_sequences;              /* 0 with cu_seqlens == NULL          */
  int32_t  num_threads;   /* compute threads for this rank; 0 = default: the
                             CPUs this process may run on divided by the ranks
                             sharing the node (at least 1)                  */
  int32_t  intra_group_size; /* ranks per group of the double ring (BURST,
                             RING): must divide the world size; the world size
                             = one ring. 0 = detect: the MPI_COMM_TYPE_SHARED
                             nodes when they are runs of consecutive ranks of
                             one size (mpirun's default), else one ring     */
  double   timeout_seconds;  /* per call; 0 = default 300 s; finite, >= 0 and
                                <= 604800 (a week): every wait is bounded    */
  /* since 0.7 */
  int32_t  compute;       /* BURST_COMPUTE_*: precision of the tile products;
                             0 = default (FAST for BF16, else EXACT)        */
  /* since 0.8 (0.7 named these 4 bytes reserved0 and required 0) */
  float    softcap;       /* logit soft-capping (Gemma 2, Grok): 0 = off;
                             else finite and > 0, and every scaled score s
                             becomes softcap * tanh(s / softcap) before the
                             softmax (see "Score modifiers" below)           */
  const float *sinks;     /* attention sinks (gpt-oss): NULL = none; else
                             num_heads_q fp32 logits, one per query head,
                             finite, the same on every rank; copied at
                             plan_create (burst_plan_set_sinks replaces
                             them between calls)                             */
} burst_attention_config;

/* Score modifiers (since 0.8), in every pattern, distribution, mask, window,
 * packing, storage type and compute mode, and in decode (the KV cache's
 * config has the same two fields):
 *  - softcap c > 0: x_ij = c * tanh(scale * q_i.k_j / c) replaces the scaled
 *    score; the backward applies its derivative scale * (1 - (x_ij / c)^2).
 *  - sinks s_h: every softmax denominator of query head h gains exp(s_h), a
 *    logit with no value: lse_i = log(sum_j exp(x_ij) + exp(s_h)) and
 *    out_i = sum_j exp(x_ij - lse_i) * v_j. A row that sees no key still has
 *    the sink: out = 0, lse = s_h (not -inf). The sink is added once per row,
 *    on the rank that owns the row (it is not a key: nothing travels for it).
 *    The gradient dL/ds_h = -sum_i exp(s_h - lse_i) * D_i, D_i =
 *    rowsum(dout_i * out_i), summed over this rank's query rows and batch, is
 *    returned by burst_plan_sinks_gradient after burst_backward: this rank's
 *    partial, which the training loop sums over the ranks like the gradient
 *    of any other replicated parameter (the library does not sum it: a
 *    data-parallel + sequence-parallel job reduces all its gradients in one
 *    collective of its own, and summing here would count it twice).
 * softcap and sinks are agreed across ranks like the other fields (plan
 * creation: MISMATCH naming "softcap" or "sinks"; every forward and backward
 * compares a digest of the current sink values: MISMATCH on every rank).
 * AUTO's choice does not depend on them. */

/* Sets every field to its default: BSHD, F32, MASK_NONE, CONTIGUOUS, BURST,
 * window_left = window_right = -1, COMPUTE_DEFAULT, everything else 0 (no
 * softcap, no sinks), and struct_size = size, writing exactly `size` bytes.
 * size is the caller's sizeof(*cfg): this header's size, the size of the
 * 0.4-0.6 headers (their struct ended at timeout_seconds:
 * offsetof(burst_attention_config, compute), 120 bytes on LP64), of the 0.7
 * header (it ended at softcap, then named reserved0: offsetof(
 * burst_attention_config, sinks), 128 bytes; its clients get no softcap and
 * no sinks), or a newer header's larger one (up to 4096; the bytes
 * past this version's fields are zeroed). Any other size gives
 * BURST_ERROR_VERSION and writes nothing; NULL gives INVALID_ARGUMENT. (0.5)
 * struct_size rules, for configs and stats alike: a library accepts its own
 * size, the sizes of older released headers (fields past them take their
 * defaults), and larger sizes from newer headers as long as every byte past
 * its own fields is 0 (a newer field left at its default); anything else is
 * BURST_ERROR_VERSION with both sizes in the message. New fields are only
 * appended, and their zero value always means "default". */
BURST_API burst_status burst_attention_config_init_sized(burst_attention_config *cfg, uint64_t size);

/* The unsized form kept for binaries built against 0.4 and older: it writes
 * their struct, the 0.4-0.6 size (up to timeout_seconds; struct_size = that
 * size, so the fields appended since, compute included, keep their defaults
 * whatever is stored in them later). Source code gets the macro below, which
 * passes the caller's own sizeof, so a client compiled against an older,
 * shorter header is never overrun by a newer library. NULL is ignored. */
BURST_API void (burst_attention_config_init)(burst_attention_config *cfg);
#define burst_attention_config_init(cfg) \
  ((void)burst_attention_config_init_sized((cfg), sizeof(*(cfg))))

/* Per-rank counters of the last forward or backward call on a plan.
 * The caller sets struct_size = sizeof(burst_stats) before the call; a
 * client built against version 0.1 (which ended at total_seconds) or 0.2
 * (tiles_skipped) may pass that smaller size and gets the fields it knows.
 * compute_seconds and comm_wait_seconds are measured (clock around the
 * kernels, and around every wait for a transfer), not derived. Before the
 * first call every count is 0 but pattern and intra_group_size are set.
 * bytes_* count the tensor payload this rank handed to / got from the
 * transport (validation and other control traffic excluded). A tile is
 * (one head) x (up to 256 queries) x (up to 128 keys); tiles_computed +
 * tiles_skipped is the number of tiles a dense schedule would compute. */
typedef struct burst_stats {
  uint32_t struct_size;
  uint64_t bytes_sent, bytes_received;
  uint64_t messages_sent;
  uint64_t steps_computed, steps_skipped; /* ring steps with / without local work */
  double   compute_seconds, comm_wait_seconds, total_seconds;
  uint64_t tiles_computed, tiles_skipped; /* since 0.2 */
  /* since 0.3: the part of bytes_sent / bytes_received whose peer is in
   * another group (node: MPI_COMM_TYPE_SHARED, or the loopback's simulated
   * network groups) */
  uint64_t bytes_sent_inter_group, bytes_received_inter_group;
  int32_t  pattern;          /* since 0.3: the pattern the plan runs (AUTO resolved) */
  int32_t  intra_group_size; /* since 0.3: ranks per group of the ring (world size: one ring;
                                since 0.9 also for ALLGATHER and ULYSSES, which run no ring) */
} burst_stats;

/* ------------------------------------------------------------------------ */
/* Contexts: a group of ranks.                                               */
typedef struct burst_context burst_context;
/* Plans: one attention shape on one context; owns its workspace.            */
typedef struct burst_plan burst_plan;

/* Collective over the communicator whose Fortran handle is given
 * (MPI_Comm_c2f(comm); mpi4py: comm.py2f()). MPI must be initialised and not
 * finalised. The context owns an MPI_Comm_dup of the communicator with
 * MPI_ERRORS_RETURN; the caller's communicator may be freed afterwards.
 * A handle that is out of range, unknown, or MPI_COMM_NULL gives
 * BURST_ERROR_INVALID_ARGUMENT on the calling rank only (with no valid
 * communicator there is nobody to tell). */
BURST_API burst_status burst_context_create_mpi(int64_t mpi_fortran_comm,
                                                burst_context **out);

/* A context of world size 1 that uses no MPI at all. Local. */
BURST_API burst_status burst_context_create_self(burst_context **out);

/* world_size (1..1024) in-process contexts that talk through memory, for
 * tests and for running several "ranks" as threads of one process. out must
 * point to an array of world_size pointers. Context i acts as rank i: drive
 * each from its own thread (collective calls on them block until every
 * context of the group has made the call, or the timeout passes). Destroy
 * each one. */
BURST_API burst_status burst_context_create_loopback(int32_t world_size,
                                                     burst_context **out);

/* ------------------------------------------------------------------------ */
/* Transports the caller supplies (since 0.9).
 *
 * A context can talk through the caller's own communication stack (its
 * sockets, UCX, gRPC, torch.distributed) instead of MPI. The caller fills a
 * burst_transport with its rank, the world size and five callbacks; the
 * library copies the struct at burst_context_create_transport and calls the
 * callbacks until the context and every plan and cache made on it are
 * destroyed, then calls destroy(user) once. The MPI transport stays the
 * default and the fast path; the Python package builds one of these from a
 * torch.distributed process group (gloo) for torchrun jobs.
 *
 * Threads. The library calls the callbacks only from the thread that is
 * inside a library call on the context, one of its plans or caches — never
 * from a compute thread — and a callback must not call back into the
 * library. Plans of one context driven from two threads at once make
 * concurrent callbacks (each plan has its own tags); a transport that cannot
 * take that sets BURST_TRANSPORT_SINGLE_THREADED, and a second thread then
 * gets BURST_ERROR_BUSY instead.
 *
 * Requests. isend, irecv and iallgather START an operation and return at
 * once with *request set to a non-NULL handle of the caller's choosing; they
 * must not wait for the peer. test(user, request, &done) reports whether it
 * has completed (done = 1: the request is finished, its buffer is the
 * caller's again, and the library never passes it again; done = 0: not yet).
 * test may make progress but must not block for long: the library calls it
 * in a loop (with naps) until every request of a step is done or the call's
 * deadline (burst_attention_config.timeout_seconds) passes, so a peer that
 * never answers becomes BURST_ERROR_TIMEOUT, never a hang. A request the
 * library stops waiting for (the call failed) is passed to release(user,
 * request) exactly once: after release returns the transport must never
 * touch that request's buffer again (cancel it, or wait for it, or keep
 * its own copy); a request that test reported done is never released, and
 * one whose test returned an error is released. A transport that cannot
 * cancel (gloo) must therefore copy: receive into its own buffer and copy
 * out when done, so a late message never lands in memory the library freed.
 *
 * Messages. Byte buffers of any size (0 too), to or from peer in
 * [0, size), never to oneself. tag is in [0, 2^31): messages between the
 * same two ranks with the same tag must be matched in the order they were
 * started (as MPI does), whatever order the library then tests them in; the library never has two messages with one tag
 * outstanding between two ranks unless they are started in that order on
 * both. Tags encode a channel (one per plan and cache, as MPI_Comm_dup would
 * give) and the message kind; the transport treats them as opaque numbers.
 * iallgather: every rank contributes `bytes` bytes (the same count on every
 * rank, a few KiB at most); receive gets size * bytes in rank order. Its tag
 * names the channel: allgathers with one tag are started in the same order
 * on every rank (allgathers of different plans driven from different
 * threads may be started in different orders on different ranks).
 *
 * Failures. A callback returns 0 for success and anything else for failure;
 * the library then fails the call with BURST_ERROR_COMMUNICATION on that
 * rank, with the text of error_message(user) when that callback is given
 * (copied at once: the string need only stay valid until the transport's
 * next callback), and the plan (or context) is unusable as after any
 * COMMUNICATION error. The transport is not told the call's deadline: the
 * library enforces it by no longer testing (and releasing) what is late.
 * Its peers, waiting for messages the failed rank will not send, fail with
 * BURST_ERROR_COMMUNICATION if their own transport reports the failure (a
 * closed connection) or BURST_ERROR_TIMEOUT when the deadline passes: every
 * rank returns an error, none hangs.
 */
typedef struct burst_transport {
  uint32_t struct_size;  /* sizeof(burst_transport)                          */
  int32_t  rank;         /* this process's rank in [0, size)                */
  int32_t  size;         /* ranks in the group, 1..1024                     */
  uint32_t flags;        /* 0, or BURST_TRANSPORT_SINGLE_THREADED           */
  const int32_t *nodes;  /* NULL, or `size` ids: ranks with equal ids share a
                            node (groups for intra_group_size = 0 and the
                            inter-group byte counters; copied). NULL: the
                            library allgathers a host id at creation        */
  void    *user;         /* passed to every callback                        */
  int (*isend)(void *user, const void *buffer, size_t bytes, int32_t peer,
               int32_t tag, void **request);
  int (*irecv)(void *user, void *buffer, size_t bytes, int32_t peer,
               int32_t tag, void **request);
  int (*iallgather)(void *user, const void *send, size_t bytes,
                    void *receive, int32_t tag, void **request);
  int (*test)(void *user, void *request, int32_t *done);
  void (*release)(void *user, void *request);      /* NULL: nothing to do   */
  const char *(*error_message)(void *user);        /* NULL: a generic text  */
  void (*destroy)(void *user);  /* NULL: nothing to do. Runs once, inside the
                                   burst_*_destroy call that drops the last
                                   plan, cache or context of the transport,
                                   on that thread; no callback of this
                                   transport runs after it starts         */
  double   timeout_seconds;  /* for burst_context_create_transport's own
                                rounds; 0 = the library's default (300 s)   */
} burst_transport;

enum {
  /* The callbacks are not thread-safe: a second thread entering a call on
   * any plan or cache of this context while one is inside gets
   * BURST_ERROR_BUSY (as MPI contexts without MPI_THREAD_MULTIPLE do). */
  BURST_TRANSPORT_SINGLE_THREADED = 1
};

/* Collective over the ranks the transport connects: each calls it with its
 * own rank. Local checks first: a NULL struct, a NULL isend, irecv,
 * iallgather or test, or a rank/size outside 0 <= rank < size <= 1024 give
 * BURST_ERROR_INVALID_ARGUMENT, and a struct_size this library does not
 * know BURST_ERROR_VERSION (a newer header's larger struct is accepted when
 * its unknown tail is zero), on the calling rank only (with no usable
 * transport there is nobody to tell; its peers time out in their round).
 * Then one iallgather round, in which
 *  - an unknown flag, a timeout_seconds that is negative, NaN or above
 *    604800, or a negative node id on any rank gives
 *    BURST_ERROR_INVALID_ARGUMENT on every rank;
 *  - sizes that differ, ranks that are not distinct and in rank order, or
 *    nodes arrays that differ across ranks give BURST_ERROR_MISMATCH on
 *    every rank;
 *  - when nodes is NULL every rank learns every rank's host.
 * Node ids are any values >= 0; equal ids mean one node. On any failure
 * destroy(user) has NOT been called: the transport is still the caller's. */
BURST_API burst_status burst_context_create_transport(const burst_transport *transport,
                                                      burst_context **out);

/* This context's rank and world size. Either pointer may be NULL. Local. */
BURST_API burst_status burst_context_rank(const burst_context *ctx,
                                          int32_t *rank, int32_t *size);

/* Destroys a context. Destroy its plans first. Collective for MPI contexts
 * (it frees the duplicated communicator); after MPI_Finalize it skips MPI
 * calls. NULL is ignored. */
BURST_API void burst_context_destroy(burst_context *ctx);

/* Collective. Validates cfg, checks that every field agrees across ranks
 * except seq_len_local, num_threads and timeout_seconds (a disagreement gives
 * BURST_ERROR_MISMATCH on every rank, naming the field), exchanges the shard
 * sizes, and duplicates the context's communicator for the plan so plans
 * never cross messages. cfg is read only during the call. */
BURST_API burst_status burst_plan_create(burst_context *ctx,
                                         const burst_attention_config *cfg,
                                         burst_plan **out);

/* Collective. Attention of this rank's queries against the keys/values of all
 * ranks. q, out: [batch, seq_len_local, num_heads_q, head_dim] in the plan's
 * layout (BHSD: heads before sequence); k, v: likewise with num_heads_kv;
 * elements of the plan's dtype (float, or uint16_t for BF16 / F16).
 * lse: [batch, num_heads_q, seq_len_local] fp32, natural log of the softmax
 * denominator (logsumexp of the scaled, masked scores, the sink included);
 * -inf for a row that sees no key (its out row is 0; with sinks its lse is
 * the sink). lse may be NULL if not wanted (backward
 * needs it). Buffers may be NULL only when seq_len_local is 0. out and lse
 * must not overlap q, k, v or each other (INVALID_ARGUMENT, checked on the
 * byte ranges; q, k and v may alias one another). NaN or Inf in the inputs is
 * computed through as IEEE arithmetic does (a NaN score makes its query row's
 * out and lse NaN; see docs/RELIABILITY.md): the status stays OK, so check
 * the outputs if the inputs may hold them. */
BURST_API burst_status burst_forward(burst_plan *plan, const void *q,
                                     const void *k, const void *v, void *out,
                                     float *lse);

/* Collective. Gradients of the attention output with respect to q, k and v
 * of this rank, given the forward's out and lse and the output gradient dout.
 * Shapes and element types as in burst_forward (lse fp32); dq/dk/dv are
 * overwritten (not accumulated) and must not overlap each other or any input
 * (INVALID_ARGUMENT). Buffers may be NULL only when seq_len_local is 0. */
BURST_API burst_status burst_backward(burst_plan *plan, const void *q,
                                      const void *k, const void *v,
                                      const void *out, const float *lse,
                                      const void *dout, void *dq, void *dk,
                                      void *dv);

/* Replaces the plan's sink logits (since 0.8): num_heads_q fp32 values,
 * copied, used by the calls that follow (a training loop calls it after each
 * optimizer step); NULL removes the sinks. Local, but the values must agree:
 * the next forward or backward compares a digest of them across ranks
 * (MISMATCH on every rank). A NaN or infinite value gives INVALID_ARGUMENT
 * here, and the plan keeps it, so that its next collective call fails with
 * INVALID_ARGUMENT on every rank too until valid values are set (never a
 * hang, never a silent old value). BUSY while another thread is inside a
 * call on the plan. A backward must run with the sinks of the forward whose
 * out and lse it is given (set them back if they changed in between): with
 * other values its gradients are those of inconsistent inputs, computed
 * through like any other (a huge new sink can make d sinks inf or NaN). */
BURST_API burst_status burst_plan_set_sinks(burst_plan *plan, const float *sinks);

/* dL/d sinks of the last successful burst_backward on this plan (since 0.8):
 * num_heads_q fp32 values written to dsinks, this rank's partial
 * -sum_{b, i} exp(s_h - lse_{b,h,i}) * D_{b,h,i} over its query rows (summed
 * in double; see "Score modifiers": the caller sums the partials over the
 * ranks). D is the fp32 rowsum(dout * out) the backward computes anyway from
 * the out and dout passed to it, so for the same inputs every pattern gives
 * the same bits. INVALID_ARGUMENT if the plan had no sinks at
 * that backward, or no backward has succeeded since the plan was created or
 * since its sinks were last set (a failed backward clears it). Local. */
BURST_API burst_status burst_plan_sinks_gradient(const burst_plan *plan, float *dsinks);

/* Counters of the last forward/backward on this plan (zero before the first).
 * stats->struct_size must be set by the caller (rules at
 * burst_attention_config_init_sized; a newer header's larger struct gets
 * zeros past this version's fields and struct_size = the bytes written).
 * Local; BURST_ERROR_BUSY while another thread is inside a call on the plan. */
BURST_API burst_status burst_plan_stats(const burst_plan *plan,
                                        burst_stats *stats);

/* Destroys a plan and its workspace. Local. NULL is ignored. A plan whose call
 * failed with TIMEOUT or COMMUNICATION must still be destroyed. */
BURST_API void burst_plan_destroy(burst_plan *plan);

/* ------------------------------------------------------------------------ */
/* Inference: a KV cache sharded over the ranks, prefill and decode (0.6).
 *
 * A burst_kv_cache holds, on every rank of a context, this rank's shard of
 * the past keys and values of many sequences (continuous batching), for
 * num_layers attention layers that share one shape (heads, head_dim, dtype,
 * softmax_scale, window). A model whose layers differ (gpt-oss alternates
 * windowed and full layers) makes one cache per kind of layer.
 *
 * Life of a sequence: burst_kv_cache_add makes it (empty in every layer);
 * burst_kv_cache_prefill stores a prompt's K,V exactly where a plan's forward
 * had them (no token moves between ranks); burst_kv_cache_decode runs T >= 1
 * new tokens per sequence (T = 1: decode; T > 1: speculative drafts or a
 * chunk of a long prompt) against everything stored before them plus each
 * other, causally, and appends their K,V; burst_kv_cache_truncate rolls a
 * sequence back (rejected drafts); burst_kv_cache_drop frees it.
 *
 * Positions: a sequence's tokens have positions 0, 1, 2, ... (per layer: each
 * layer counts the tokens stored in it). Prefill stores a prompt at positions
 * 0 .. L-1 (with packing: the position inside its own sequence). Decode's T
 * new tokens of a sequence take positions p0 .. p0+T-1, where p0 is the
 * sequence's length in that layer (or the caller's `positions` entry, which
 * may skip ahead but never go back).
 * Placement rule: the new token at position p is stored on rank p mod P, so
 * every rank's shard grows by T/P tokens a step (within one) and the shards
 * left balanced by a ZIGZAG, STRIPED or balanced CONTIGUOUS prefill stay so.
 * Visibility in decode: a new token at position i sees every stored key at a
 * position j with i - window_left <= j <= i (causal; window_left = -1 is
 * unbounded), including the new tokens before it and itself.
 *
 * The math: each rank computes the partial (out_r, lse_r) of every new query
 * over its own shard (a rank with no visible key — an empty shard, or a
 * window that ends before its keys — does no work and contributes lse = -inf);
 * the partials are exchanged (each rank sends its [rows x (head_dim + 1)]
 * floats, rows = num_seqs*T*num_heads_q, to every other rank) and every rank
 * merges them in rank order:
 * lse = log(sum_r exp(lse_r)), out = sum_r exp(lse_r - lse)*out_r, in double
 * precision, rounded once. Every rank therefore returns the same out and lse,
 * bitwise identical run after run for a given world size (and independent of
 * num_threads: a rank splits its shard into fixed chunks of blocks whose
 * partials merge in a fixed order). GQA: key/value head h is read once for
 * the num_heads_q/num_heads_kv query heads of its group.
 *
 * Memory: K and V are stored in the cache's dtype in blocks of block_tokens
 * tokens per (sequence, layer) on each rank, keys transposed ([heads,
 * head_dim, block_tokens]) and values [heads, block_tokens, head_dim], plus
 * an 8-byte position per token. Growth policy: a block is allocated when a
 * token needs one and freed when a truncate or drop empties it, so a rank
 * holds its tokens plus at most one partly filled block per (sequence,
 * layer). Every call that stores tokens first allocates every block it needs
 * on every rank and agrees on it; if any rank cannot (max_bytes_local would be
 * exceeded, or memory runs out) the call returns BURST_ERROR_OUT_OF_MEMORY on
 * every rank and the cache is unchanged.
 *
 * Score modifiers: the cache config's softcap and sinks (since 0.8) apply to
 * decode exactly as to a plan's forward ("Score modifiers" above); a model
 * that has them prefills with plans that have the same values.
 *
 * Errors (every one on every rank, the cache unchanged): a sequence id that
 * does not exist (or already exists, for add), the same id twice in a call, a
 * layer out of range, positions that go backwards, T, num_seqs, the ids or
 * the contents of q, k, v that differ between ranks (MISMATCH; decode compares
 * a 64-bit digest of its inputs), a plan from another context or of another
 * shape (prefill), a full cache (OUT_OF_MEMORY). After a TIMEOUT or
 * COMMUNICATION error the cache is unusable (every later call returns that
 * error); destroy it. A cache is used by one thread at a time (BUSY).       */
typedef struct burst_kv_cache burst_kv_cache;

/* Field order is ABI; new fields are only appended. Call
 * burst_kv_cache_config_init first, then set fields. */
typedef struct burst_kv_cache_config {
  uint32_t struct_size;    /* sizeof(burst_kv_cache_config); set by _init     */
  int32_t  layout;         /* BURST_LAYOUT_* of decode's q, k, v, out:
                              BSHD [num_seqs, T, heads, head_dim],
                              BHSD [num_seqs, heads, T, head_dim]            */
  int32_t  dtype;          /* BURST_DTYPE_*: the cache's storage, and the
                              elements of decode's q, k, v, out and of the
                              k, v a prefill stores (the plan's dtype)       */
  int32_t  num_threads;    /* compute threads; 0 = the context's default    */
  int64_t  num_layers;     /* > 0: layers this cache holds                   */
  int64_t  num_heads_q;    /* > 0                                            */
  int64_t  num_heads_kv;   /* > 0, divides num_heads_q                       */
  int64_t  head_dim;       /* > 0                                            */
  float    softmax_scale;  /* 0 = 1/sqrt(head_dim); finite and >= 0          */
  int64_t  window_left;    /* >= -1; -1 = unbounded (decode sees keys
                              i - window_left .. i)                          */
  int64_t  block_tokens;   /* tokens per storage block; 0 = 256; 1..65536   */
  int64_t  max_bytes_local;/* this rank's limit on the bytes of its blocks
                              (K, V and positions); 0 = no limit but memory  */
  double   timeout_seconds;/* per call; 0 = default 300 s; as for plans      */
  /* since 0.8 */
  float    softcap;        /* 0 = off; else finite and > 0, as
                              burst_attention_config.softcap                 */
  int32_t  reserved0;      /* 0 (padding; the tail rule applies)             */
  const float *sinks;      /* NULL = none; else num_layers x num_heads_q fp32
                              sink logits (layer-major: layer l's are
                              sinks[l * num_heads_q ...]), finite, the same
                              on every rank, copied at create. Decode adds
                              exp(s_h) once to every new row's denominator
                              when it merges the ranks' partials, so a row
                              that sees nothing gets out = 0, lse = s_h.    */
} burst_kv_cache_config;

/* Sets the defaults (BSHD, F32, window_left = -1, everything else 0) and
 * struct_size = size; the struct_size rules of burst_attention_config_init_sized
 * (the 0.6-0.7 size ended at timeout_seconds: offsetof(burst_kv_cache_config,
 * softcap), 88 bytes; its clients get no softcap and no sinks). */
BURST_API burst_status burst_kv_cache_config_init_sized(burst_kv_cache_config *cfg, uint64_t size);
#define burst_kv_cache_config_init(cfg) \
  ((void)burst_kv_cache_config_init_sized((cfg), sizeof(*(cfg))))

/* Collective. Validates cfg and checks that every field agrees across ranks
 * except num_threads, max_bytes_local and timeout_seconds (MISMATCH naming the
 * field). The cache owns a duplicate of the context's communicator. */
BURST_API burst_status burst_kv_cache_create(burst_context *ctx, const burst_kv_cache_config *cfg,
                                             burst_kv_cache **out);

/* Frees the cache and every block. Local. NULL is ignored. */
BURST_API void burst_kv_cache_destroy(burst_kv_cache *cache);

/* Collective. Adds `count` new, empty sequences (ids >= 0, distinct, not in
 * the cache). count may be 0. */
BURST_API burst_status burst_kv_cache_add(burst_kv_cache *cache, const int64_t *seq_ids, int64_t count);

/* Collective. Removes `count` sequences (each must exist) and frees their blocks. */
BURST_API burst_status burst_kv_cache_drop(burst_kv_cache *cache, const int64_t *seq_ids, int64_t count);

/* Collective. Keeps only the tokens at positions < lengths[i] of sequence
 * seq_ids[i], in every layer (0 <= lengths[i]; a layer already shorter is left
 * as it is). The sequence's length in a layer becomes min(its length, lengths[i]). */
BURST_API burst_status burst_kv_cache_truncate(burst_kv_cache *cache, const int64_t *seq_ids,
                                               const int64_t *lengths, int64_t count);

/* Collective. Stores this rank's shard of a prompt's keys and values — the
 * k and v this rank passes to burst_forward(plan, ...) — into layer `layer`
 * of the cache, in place: the plan's distribution decides which tokens each
 * rank holds, and no token moves. The plan must come from the cache's
 * context and have its num_heads_q, num_heads_kv, head_dim and dtype (its
 * layout is the one k and v are read in). The prompt holds
 * batch * max(1, num_sequences) sequences (with cu_seqlens, sequence s of
 * batch row b is seq_ids[b * num_sequences + s]; without, batch row b is
 * seq_ids[b]); each must exist and be empty in this layer; positions start at
 * 0 in each. The mask of the plan does not matter here (decode is causal). */
BURST_API burst_status burst_kv_cache_prefill(burst_kv_cache *cache, int64_t layer,
                                              const burst_plan *plan, const int64_t *seq_ids,
                                              const void *k, const void *v);

/* Collective. `tokens` (T >= 1) new tokens for each of num_seqs >= 1
 * sequences (distinct, existing) attend to layer `layer`: q and out
 * [num_seqs, T, num_heads_q, head_dim] (BSHD; BHSD: heads before T), k and v
 * likewise with num_heads_kv, elements of the cache's dtype; lse
 * [num_seqs, num_heads_q, T] fp32 (may be NULL). Every rank passes the same
 * q, k, v (the new tokens are replicated) and gets the same out and lse. The
 * new tokens' K,V are appended first (placement rule above), so token t sees
 * tokens 0..t of the same call. positions: NULL (each sequence continues at
 * its length in this layer) or num_seqs start positions, each >= that length.
 * out and lse must not overlap the inputs. */
BURST_API burst_status burst_kv_cache_decode(burst_kv_cache *cache, int64_t layer,
                                             const int64_t *seq_ids, int64_t num_seqs, int64_t tokens,
                                             const int64_t *positions, const void *q, const void *k,
                                             const void *v, void *out, float *lse);

/* A sequence's length in a layer — the position its next decode continues
 * at: 0 after add, L after a prefill of L tokens, p0 + T after a decode,
 * min(length, lengths[i]) after a truncate (a truncate inside a gap that
 * `positions` skipped keeps that length, so the gap shrinks) — and the
 * tokens of it this rank stores. Either pointer may be NULL. Local. */
BURST_API burst_status burst_kv_cache_sequence_length(const burst_kv_cache *cache, int64_t seq_id,
                                                      int64_t layer, int64_t *length,
                                                      int64_t *local_tokens);

/* Bytes of blocks this rank's cache holds now (K, V and positions). Local. */
BURST_API burst_status burst_kv_cache_bytes(const burst_kv_cache *cache, uint64_t *bytes);

/* Counters of the last prefill or decode on this cache, as burst_plan_stats
 * (bytes_* count the partials of the merge: sent = received = (P-1) x
 * rows x (head_dim + 1) x 4, messages_sent = P-1;
 * tiles_computed / tiles_skipped count (sequence, kv head, block) units read
 * / skipped by the window; steps_* are 0; pattern is -1). Local. */
BURST_API burst_status burst_kv_cache_stats(const burst_kv_cache *cache, burst_stats *stats);

/* ------------------------------------------------------------------------ */
/* Token distribution helpers. Local, thread-safe, need no context or MPI.
 * They follow the rules above (BURST_DISTRIBUTION_*), so a program can shard a
 * full-sequence buffer exactly as a plan expects it and gather the results.
 * total_tokens is N; with packing it must equal cu_seqlens[num_sequences]
 * (cu_seqlens NULL and num_sequences 0 for no packing). For CONTIGUOUS they
 * use the balanced split.                                                  */

/* The global positions of the tokens rank `rank` of `world_size` holds, in
 * increasing order, written to positions[0 .. count-1]. *count receives the
 * number of tokens (pass positions = NULL, capacity = 0 to ask only for it);
 * a capacity below the count gives BURST_ERROR_INVALID_ARGUMENT. */
BURST_API burst_status burst_shard_positions(int32_t distribution, int64_t total_tokens,
                                             const int64_t *cu_seqlens, int64_t num_sequences,
                                             int32_t world_size, int32_t rank,
                                             int64_t *positions, int64_t capacity,
                                             int64_t *count);

/* Copies rank `rank`'s rows out of a full-sequence buffer. `full` holds
 * outer x total_tokens rows of row_bytes bytes; `local` receives
 * outer x count rows (count as burst_shard_positions gives it). For a BSHD
 * tensor outer = batch and row_bytes = heads*head_dim*e; for BHSD
 * outer = batch*heads and row_bytes = head_dim*e (e = 4 for F32, 2 for BF16
 * and F16); for lse outer = batch*heads and row_bytes = 4. The buffers must
 * not overlap. */
BURST_API burst_status burst_shard(int32_t distribution, int64_t total_tokens,
                                   const int64_t *cu_seqlens, int64_t num_sequences,
                                   int32_t world_size, int32_t rank,
                                   int64_t outer, int64_t row_bytes,
                                   const void *full, void *local);

/* The inverse of burst_shard: writes rank `rank`'s rows from `local` into
 * their places in `full` (other rows are left untouched), so calling it for
 * every rank assembles the full buffer. */
BURST_API burst_status burst_unshard(int32_t distribution, int64_t total_tokens,
                                     const int64_t *cu_seqlens, int64_t num_sequences,
                                     int32_t world_size, int32_t rank,
                                     int64_t outer, int64_t row_bytes,
                                     const void *local, void *full);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* BURST_ATTENTION_H */
