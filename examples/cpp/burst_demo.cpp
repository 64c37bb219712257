// burst_demo.cpp — libburst_attention from C++17, with RAII handles.
//
// Each MPI rank holds a contiguous slice of N tokens; the library computes
// exact attention across all ranks (forward) and the gradients (backward).
// The forward output is checked against a float64 reference.
//
// Build:  c++ -std=c++17 burst_demo.cpp $(pkg-config --cflags --libs burst_attention)
// Run:    mpirun -n 2 ./a.out [N] [causal]
#define OMPI_SKIP_MPICXX 1 // we use MPI's C API only
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <burst_attention.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace burst {

// Turns a failed call into an exception carrying the library's message.
inline void check(burst_status st, const char *what) {
  if (st != BURST_OK)
    throw std::runtime_error(std::string(what) + ": " + burst_status_string(st) +
                             ": " + burst_last_error());
}

struct context_deleter {
  void operator()(burst_context *c) const { burst_context_destroy(c); }
};
struct plan_deleter {
  void operator()(burst_plan *p) const { burst_plan_destroy(p); }
};
using context = std::unique_ptr<burst_context, context_deleter>;
using plan = std::unique_ptr<burst_plan, plan_deleter>;

inline context make_context(MPI_Comm comm) {
  burst_context *c = nullptr;
  check(burst_context_create_mpi(static_cast<int64_t>(MPI_Comm_c2f(comm)), &c),
        "burst_context_create_mpi");
  return context(c);
}

inline plan make_plan(const context &ctx, const burst_attention_config &cfg) {
  burst_plan *p = nullptr;
  check(burst_plan_create(ctx.get(), &cfg, &p), "burst_plan_create");
  return plan(p);
}

} // namespace burst

namespace {

constexpr int64_t kHeads = 4, kHeadDim = 64; // batch 1, layout BSHD

double input_value(uint64_t tensor, uint64_t index) { // splitmix64 -> [-1, 1]
  uint64_t x = ((tensor << 56) ^ index) + 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  return 2.0 * (static_cast<double>(x >> 11) / 9007199254740992.0) - 1.0;
}

size_t at(int64_t s, int64_t h, int64_t d) {
  return static_cast<size_t>((s * kHeads + h) * kHeadDim + d);
}

// float64 attention output of the rows [first, first + n) over all N keys.
std::vector<double> reference_out(const std::vector<double> &q,
                                  const std::vector<double> &k,
                                  const std::vector<double> &v, int64_t N,
                                  int64_t first, int64_t n, bool causal) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(kHeadDim));
  std::vector<double> out(static_cast<size_t>(n * kHeads * kHeadDim), 0.0);
  std::vector<double> s(static_cast<size_t>(N));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < kHeads; ++h) {
      const int64_t row = first + i, keys = causal ? row + 1 : N;
      double m = -INFINITY, l = 0.0;
      for (int64_t j = 0; j < keys; ++j) {
        double dot = 0.0;
        for (int64_t d = 0; d < kHeadDim; ++d) dot += q[at(row, h, d)] * k[at(j, h, d)];
        s[j] = scale * dot;
        m = std::fmax(m, s[j]);
      }
      for (int64_t j = 0; j < keys; ++j) {
        const double p = std::exp(s[j] - m);
        l += p;
        for (int64_t d = 0; d < kHeadDim; ++d) out[at(i, h, d)] += p * v[at(j, h, d)];
      }
      for (int64_t d = 0; d < kHeadDim; ++d) out[at(i, h, d)] /= l;
    }
  return out;
}

} // namespace

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const int64_t N = argc > 1 ? std::strtoll(argv[1], nullptr, 10) : 512;
  const bool causal = argc > 2 && (std::strcmp(argv[2], "causal") == 0 ||
                                   std::strcmp(argv[2], "1") == 0);
  int ok = 0;
  if (N < 1) {
    if (rank == 0) std::fprintf(stderr, "usage: %s [N >= 1] [causal]\n", argv[0]);
    MPI_Finalize();
    return 2;
  }

  try {
    // Contiguous shards: rank r holds tokens [first, first + n).
    const int64_t n = N / size + (rank < N % size ? 1 : 0);
    int64_t first = 0;
    for (int r = 0; r < rank; ++r) first += N / size + (r < N % size ? 1 : 0);

    // Global inputs (identical on every rank) and this rank's slice.
    const size_t global = static_cast<size_t>(N * kHeads * kHeadDim);
    std::vector<double> q(global), k(global), v(global);
    for (size_t i = 0; i < global; ++i) {
      q[i] = input_value(1, i);
      k[i] = input_value(2, i);
      v[i] = input_value(3, i);
    }
    const size_t off = at(first, 0, 0), local = static_cast<size_t>(n * kHeads * kHeadDim);
    std::vector<float> lq(q.begin() + off, q.begin() + off + local);
    std::vector<float> lk(k.begin() + off, k.begin() + off + local);
    std::vector<float> lv(v.begin() + off, v.begin() + off + local);
    std::vector<float> out(local), lse(static_cast<size_t>(kHeads * n));
    std::vector<float> dout(local, 1.0f), dq(local), dk(local), dv(local);

    burst::context ctx = burst::make_context(MPI_COMM_WORLD);
    burst_attention_config cfg;
    burst_attention_config_init(&cfg);
    cfg.mask = causal ? BURST_MASK_CAUSAL : BURST_MASK_NONE;
    cfg.batch = 1;
    cfg.seq_len_local = n;
    cfg.num_heads_q = cfg.num_heads_kv = kHeads;
    cfg.head_dim = kHeadDim;
    burst::plan plan = burst::make_plan(ctx, cfg);

    burst::check(burst_forward(plan.get(), lq.data(), lk.data(), lv.data(),
                               out.data(), lse.data()),
                 "burst_forward");
    burst::check(burst_backward(plan.get(), lq.data(), lk.data(), lv.data(),
                                out.data(), lse.data(), dout.data(), dq.data(),
                                dk.data(), dv.data()),
                 "burst_backward");
    burst_stats st{};
    st.struct_size = sizeof st;
    burst::check(burst_plan_stats(plan.get(), &st), "burst_plan_stats");

    // Check the forward output against float64 (tolerance: 1e-5 of max|ref|).
    const std::vector<double> ref = reference_out(q, k, v, N, first, n, causal);
    double err = 0.0, max_ref = 0.0;
    for (size_t i = 0; i < local; ++i) {
      const double e = std::fabs(out[i] - ref[i]);
      err = e <= err ? err : (e == e ? e : INFINITY);
      max_ref = std::fmax(max_ref, std::fabs(ref[i]));
    }
    double global_max_ref = 0.0;
    MPI_Allreduce(&max_ref, &global_max_ref, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    ok = err <= 1e-5 * global_max_ref;
    std::printf("rank %d/%d: tokens [%lld, %lld), max|out-ref| %.2e (tol %.2e), "
                "backward sent %llu B, received %llu B: %s\n",
                rank, size, static_cast<long long>(first),
                static_cast<long long>(first + n), err, 1e-5 * global_max_ref,
                static_cast<unsigned long long>(st.bytes_sent),
                static_cast<unsigned long long>(st.bytes_received),
                ok ? "OK" : "FAILED");
  } catch (const std::exception &e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    ok = 0;
  }
  int all_ok = 0;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
  MPI_Finalize();
  return all_ok ? 0 : 1;
}
