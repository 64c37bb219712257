// cpp_client.cpp — C++17 client test of libburst_attention under mpirun.
//
// The same idea as c_client.c with a smaller sweep, written the way a C++
// user would: RAII owners for contexts and plans, std::vector buffers. It also
// checks the numerics contract "error at P ranks <= 2x error at P = 1 +
// 1e-6 max|ref|" by running the full sequence on a self context (P = 1).
// Since 0.8: one bf16 case with softcap and sinks (forward, backward and
// dL/d sinks against the float64 reference).
#define OMPI_SKIP_MPICXX 1 // use the C API of MPI only
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <burst_attention.h>

#include "reference.h"
#include "variant_reference.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

int g_rank = 0, g_size = 1, g_failures = 0;

void fail(const std::string &where, const std::string &what) {
  ++g_failures;
  std::fprintf(stderr, "cpp_client rank %d/%d FAIL [%s]: %s\n", g_rank, g_size,
               where.c_str(), what.c_str());
}

// A library error as an exception carrying the status and the message.
struct burst_error : std::runtime_error {
  burst_status status;
  burst_error(const std::string &call, burst_status st)
      : std::runtime_error(call + " -> " + burst_status_string(st) + ": " +
                           burst_last_error()),
        status(st) {}
};

void check(burst_status st, const char *call) {
  if (st != BURST_OK) throw burst_error(call, st);
}

struct context_deleter {
  void operator()(burst_context *c) const { burst_context_destroy(c); }
};
struct plan_deleter {
  void operator()(burst_plan *p) const { burst_plan_destroy(p); }
};
using context_ptr = std::unique_ptr<burst_context, context_deleter>;
using plan_ptr = std::unique_ptr<burst_plan, plan_deleter>;

context_ptr make_mpi_context(MPI_Comm comm) {
  burst_context *c = nullptr;
  check(burst_context_create_mpi(static_cast<int64_t>(MPI_Comm_c2f(comm)), &c),
        "burst_context_create_mpi");
  return context_ptr(c);
}

context_ptr make_self_context() {
  burst_context *c = nullptr;
  check(burst_context_create_self(&c), "burst_context_create_self");
  return context_ptr(c);
}

plan_ptr make_plan(burst_context *ctx, const burst_attention_config &cfg) {
  burst_plan *p = nullptr;
  check(burst_plan_create(ctx, &cfg, &p), "burst_plan_create");
  return plan_ptr(p);
}

burst_stats stats_of(const burst_plan *plan) {
  burst_stats st{};
  st.struct_size = sizeof st;
  check(burst_plan_stats(plan, &st), "burst_plan_stats");
  return st;
}

// fp32 buffers of one rank. data() of an empty vector may be NULL, which the
// library accepts for zero-element tensors.
struct tensors {
  std::vector<float> q, k, v, dout, out, lse, dq, dk, dv;
};

struct shape {
  int layout, mask;
  int64_t batch, heads, head_dim, seq;
};

std::string describe(const shape &s, const std::vector<int64_t> &n) {
  std::ostringstream os;
  os << (s.layout == BURST_LAYOUT_BSHD ? "BSHD" : "BHSD") << ' '
     << (s.mask == BURST_MASK_CAUSAL ? "causal" : "none") << " B=" << s.batch
     << " H=" << s.heads << " d=" << s.head_dim << " N=" << s.seq << " n=[";
  for (size_t i = 0; i < n.size(); ++i) os << (i ? "," : "") << n[i];
  os << ']';
  return os.str();
}

// Runs forward + backward for one rank's shard on a plan; returns the buffers.
tensors run(burst_plan *plan, const ref_shape &sh, int64_t start, int64_t n,
            const std::vector<double> &gq, const std::vector<double> &gk,
            const std::vector<double> &gv, const std::vector<double> &gdo) {
  tensors t;
  const size_t elems = ref_tensor_elems(&sh, n), lse_elems = ref_lse_elems(&sh, n);
  for (auto *b : {&t.q, &t.k, &t.v, &t.dout, &t.out, &t.dq, &t.dk, &t.dv})
    b->assign(elems, 0.0f);
  t.lse.assign(lse_elems, 0.0f);
  ref_shard(&sh, gq.data(), start, n, t.q.data());
  ref_shard(&sh, gk.data(), start, n, t.k.data());
  ref_shard(&sh, gv.data(), start, n, t.v.data());
  ref_shard(&sh, gdo.data(), start, n, t.dout.data());
  check(burst_forward(plan, t.q.data(), t.k.data(), t.v.data(), t.out.data(),
                      t.lse.data()),
        "burst_forward");
  check(burst_backward(plan, t.q.data(), t.k.data(), t.v.data(), t.out.data(),
                       t.lse.data(), t.dout.data(), t.dq.data(), t.dk.data(),
                       t.dv.data()),
        "burst_backward");
  return t;
}

void run_case(burst_context *world, const shape &s, const std::vector<int64_t> &n) {
  const std::string name = describe(s, n);
  int64_t start = 0;
  for (int r = 0; r < g_rank; ++r) start += n[r];
  const int64_t n_local = n[g_rank];

  ref_shape sh{s.layout, s.mask, s.batch, s.heads, s.seq, s.head_dim,
               1.0 / std::sqrt(static_cast<double>(s.head_dim))};
  const size_t gsz = ref_tensor_elems(&sh, s.seq);
  std::vector<double> gq(gsz), gk(gsz), gv(gsz), gdo(gsz), gout(gsz), gdq(gsz),
      gdk(gsz), gdv(gsz), glse(ref_lse_elems(&sh, s.seq));
  ref_fill(&sh, 99, REF_TENSOR_Q, 1.0, gq.data());
  ref_fill(&sh, 99, REF_TENSOR_K, 1.0, gk.data());
  ref_fill(&sh, 99, REF_TENSOR_V, 1.0, gv.data());
  ref_fill(&sh, 99, REF_TENSOR_DOUT, 1.0, gdo.data());
  ref_forward(&sh, gq.data(), gk.data(), gv.data(), gout.data(), glse.data());
  ref_backward(&sh, gq.data(), gk.data(), gv.data(), gout.data(), glse.data(),
               gdo.data(), gdq.data(), gdk.data(), gdv.data());

  burst_attention_config cfg;
  burst_attention_config_init(&cfg);
  cfg.layout = s.layout;
  cfg.mask = s.mask;
  cfg.batch = s.batch;
  cfg.num_heads_q = cfg.num_heads_kv = s.heads;
  cfg.head_dim = s.head_dim;

  try {
    // Distributed run over MPI_COMM_WORLD.
    cfg.seq_len_local = n_local;
    plan_ptr plan = make_plan(world, cfg);
    tensors a = run(plan.get(), sh, start, n_local, gq, gk, gv, gdo);
    const burst_stats st_bwd = stats_of(plan.get());
    tensors b = run(plan.get(), sh, start, n_local, gq, gk, gv, gdo);
    if (a.out != b.out || a.lse != b.lse || a.dq != b.dq || a.dk != b.dk ||
        a.dv != b.dv)
      fail(name, "two identical runs gave different results");

    // The same problem on one process (self context, P = 1).
    cfg.seq_len_local = s.seq;
    context_ptr self = make_self_context();
    plan_ptr plan1 = make_plan(self.get(), cfg);
    tensors one = run(plan1.get(), sh, 0, s.seq, gq, gk, gv, gdo);

    struct quantity {
      const char *name;
      const std::vector<double> &ref;
      const std::vector<float> &dist, &single;
      double tol;
    };
    const quantity qs[] = {{"out", gout, a.out, one.out, 1e-5},
                           {"dq", gdq, a.dq, one.dq, 1e-4},
                           {"dk", gdk, a.dk, one.dk, 1e-4},
                           {"dv", gdv, a.dv, one.dv, 1e-4}};
    for (const quantity &x : qs) {
      const double m = ref_max_abs(x.ref.data(), gsz);
      const double e = ref_shard_error(&sh, x.ref.data(), start, n_local, x.dist.data());
      const double e1 = ref_shard_error(&sh, x.ref.data(), 0, s.seq, x.single.data());
      if (!(e <= x.tol * m)) {
        std::ostringstream os;
        os << x.name << " error " << e << " > " << x.tol << " * max|ref| (" << m << ")";
        fail(name, os.str());
      }
      if (!(e <= 2.0 * e1 + 1e-6 * m)) {
        std::ostringstream os;
        os << x.name << " error at P=" << g_size << " (" << e
           << ") > 2 x error at P=1 (" << e1 << ") + 1e-6 max|ref| (" << m << ")";
        fail(name, os.str());
      }
    }
    const double el = ref_lse_error(&sh, glse.data(), start, n_local, a.lse.data());
    if (!(el <= 1e-4)) fail(name, "lse error " + std::to_string(el) + " > 1e-4");

    { /* any mask: the 0.2 skip-aware backward rule */
      const int64_t Z = s.batch * s.heads;
      const uint64_t want_s = ref_burst_bwd_sent(n.data(), g_size, g_rank, Z, s.head_dim, s.mask);
      const uint64_t want_r =
          ref_burst_bwd_received(n.data(), g_size, g_rank, Z, s.head_dim, s.mask);
      if (st_bwd.bytes_sent != want_s || st_bwd.bytes_received != want_r) {
        std::ostringstream os;
        os << "backward bytes_sent " << st_bwd.bytes_sent << " (expected " << want_s
           << "), bytes_received " << st_bwd.bytes_received << " (expected "
           << want_r << ")";
        fail(name, os.str());
      }
    }
  } catch (const burst_error &e) {
    fail(name, e.what());
  }
}

// GQA (4 query heads on 2 kv heads) with a causal ZIGZAG distribution and a
// window, sharded with burst_shard / burst_shard_positions, checked against
// the float64 reference of variant_reference.h (BHSD, so a rank's rows of a
// head are one contiguous run per head).
void run_gqa_zigzag(burst_context *ctx, int pattern = BURST_PATTERN_BURST, int group = 0) {
  static const char *const patterns[] = {"BURST", "RING", "ALLGATHER", "ULYSSES", "AUTO"};
  const std::string label = std::string("zigzag causal window(6,0) GQA 4/2 BHSD N=45 ") + patterns[pattern] +
                            " G=" + std::to_string(group);
  const char *name = label.c_str();
  vcase c{name, BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BHSD, 1, 6, 0, 4, 2, 1, 16, 45, nullptr, 0};
  const size_t nq = size_t(c.batch * c.hq * c.N * c.d), nk = size_t(c.batch * c.hkv * c.N * c.d);
  std::vector<double> q(nq), k(nk), v(nk), dout(nq), out(nq), lse(size_t(c.batch * c.hq * c.N)), dq(nq), dk(nk), dv(nk);
  for (size_t i = 0; i < nq; ++i) { q[i] = vref_value(1, i); dout[i] = vref_value(4, i); }
  for (size_t i = 0; i < nk; ++i) { k[i] = vref_value(2, i); v[i] = vref_value(3, i); }
  vref_reference(&c, q.data(), k.data(), v.data(), dout.data(), out.data(), lse.data(), dq.data(), dk.data(), dv.data());
  int64_t n = 0;
  check(burst_shard_positions(c.dist, c.N, nullptr, 0, g_size, g_rank, nullptr, 0, &n), "burst_shard_positions");
  // BHSD canonical = user layout: shard each tensor with outer = batch*heads, rows of head_dim.
  auto local = [&](const std::vector<double> &full, int64_t heads, size_t elem) {
    std::vector<char> bytes(size_t(c.batch * heads * n * c.d) * elem);
    std::vector<float> f;
    const void *src = full.data();
    if (elem == 4) { f.assign(full.begin(), full.end()); src = f.data(); }
    check(burst_shard(c.dist, c.N, nullptr, 0, g_size, g_rank, c.batch * heads, int64_t(elem) * c.d, src, bytes.data()),
          "burst_shard");
    return bytes;
  };
  auto lq = local(q, c.hq, 4), lk = local(k, c.hkv, 4), lv = local(v, c.hkv, 4), ldo = local(dout, c.hq, 4);
  auto wout = local(out, c.hq, 8), wdq = local(dq, c.hq, 8), wdk = local(dk, c.hkv, 8), wdv = local(dv, c.hkv, 8);
  burst_attention_config cfg;
  burst_attention_config_init(&cfg);
  cfg.layout = c.layout; cfg.mask = BURST_MASK_CAUSAL; cfg.distribution = c.dist;
  cfg.batch = c.batch; cfg.seq_len_local = n; cfg.num_heads_q = c.hq; cfg.num_heads_kv = c.hkv;
  cfg.head_dim = c.d; cfg.window_left = c.wl; cfg.window_right = c.wr; cfg.num_threads = 1;
  cfg.pattern = pattern; cfg.intra_group_size = group;
  burst_plan *raw = nullptr;
  check(burst_plan_create(ctx, &cfg, &raw), "burst_plan_create");
  plan_ptr plan(raw);
  std::vector<float> o(size_t(c.batch * c.hq * n * c.d)), l(size_t(c.batch * c.hq * n)), gq(o.size()),
      gk(size_t(c.batch * c.hkv * n * c.d)), gv(gk.size());
  auto f = [](std::vector<char> &b) { return reinterpret_cast<const float *>(b.data()); };
  check(burst_forward(plan.get(), f(lq), f(lk), f(lv), o.data(), l.data()), "burst_forward");
  check(burst_backward(plan.get(), f(lq), f(lk), f(lv), o.data(), l.data(), f(ldo), gq.data(), gk.data(), gv.data()),
        "burst_backward");
  auto worst = [](const std::vector<float> &got, const std::vector<char> &want) {
    const double *w = reinterpret_cast<const double *>(want.data());
    double e = 0;
    for (size_t i = 0; i < got.size(); ++i) e = std::fmax(e, std::fabs(double(got[i]) - w[i]));
    return e;
  };
  auto scale = [](const std::vector<double> &x) { double m = 0; for (double y : x) m = std::fmax(m, std::fabs(y)); return m; };
  if (!(worst(o, wout) <= 1e-5 * scale(out))) fail(name, "out error " + std::to_string(worst(o, wout)));
  if (!(worst(gq, wdq) <= 1e-4 * scale(dq))) fail(name, "dq error " + std::to_string(worst(gq, wdq)));
  if (!(worst(gk, wdk) <= 1e-4 * scale(dk))) fail(name, "dk error " + std::to_string(worst(gk, wdk)));
  if (!(worst(gv, wdv) <= 1e-4 * scale(dv))) fail(name, "dv error " + std::to_string(worst(gv, wdv)));
}

// bf16 / fp16 storage (BURST_DTYPE_BF16 / F16): the GQA zigzag case with
// every input rounded to the type (bit conversions written here), checked per
// element against the float64 reference of the rounded inputs within the
// header's contract: tol*max|ref|*(1+u) + u*|ref| (+ 2^-24 for fp16). The
// backward gets the reference's own out rounded to the type, and so does the
// reference's D = rowsum(dO * O). compute is EXACT (that contract), or FAST
// (bf16 only: bf16 products; checked as max error against the FAST bounds of
// variant_reference.h, the inputs being bf16 already).
uint16_t to_storage(int dtype, float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if (dtype == BURST_DTYPE_BF16) {
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((u >> 16) | 0x40u);
    return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  }
  // fp16 of a finite value of moderate size: 11 significant bits, nearest even.
  const double a = std::fabs(double(x));
  const uint16_t sign = x < 0 ? 0x8000u : 0u;
  if (a == 0) return sign;
  if (a >= 65520.0) return uint16_t(sign | 0x7C00u);
  int e = 0;
  std::frexp(a, &e);
  if (e - 1 < -14) return uint16_t(sign | uint16_t(std::nearbyint(a * 16777216.0)));
  double m = std::nearbyint(a / std::ldexp(1.0, e - 11));
  if (m >= 2048.0) { m /= 2; ++e; }
  return uint16_t(sign | ((e - 1 + 15) << 10) | (int(m) - 1024));
}

double from_storage(int dtype, uint16_t h) {
  if (dtype == BURST_DTYPE_BF16) {
    uint32_t u = uint32_t(h) << 16;
    float x;
    std::memcpy(&x, &u, 4);
    return x;
  }
  const int e = (h >> 10) & 0x1F, f = h & 0x3FF;
  double v = e == 0 ? std::ldexp(double(f), -24) : std::ldexp(double(f | 0x400), e - 25);
  if (e == 0x1F) v = f ? NAN : INFINITY;
  return (h & 0x8000u) ? -v : v;
}

// Since 0.8 also with score modifiers: softcap > 0 and/or sinks (one logit
// per query head); then dL/d sinks too (burst_plan_sinks_gradient, summed
// over the ranks) against the reference's, within the gradient tolerance.
// compute DEFAULT with BF16 storage is FAST where the CPU has bf16 products
// (EXACT elsewhere, which meets the FAST bounds): checked with the FAST bounds.
void run_half(burst_context *ctx, int dtype, int pattern, int compute = BURST_COMPUTE_EXACT, float softcap = 0.0f,
              bool with_sinks = false) {
  static const char *const patterns[] = {"BURST", "RING", "ALLGATHER", "ULYSSES", "AUTO"};
  const bool fast = compute == BURST_COMPUTE_FAST || (compute == BURST_COMPUTE_DEFAULT && dtype == BURST_DTYPE_BF16);
  std::string label = std::string(dtype == BURST_DTYPE_BF16 ? "bf16" : "fp16") +
                      (compute == BURST_COMPUTE_FAST ? " FAST" : compute == BURST_COMPUTE_DEFAULT ? " DEFAULT" : "") +
                      " zigzag causal window(6,0) GQA 4/2 BHSD N=45 " + patterns[pattern];
  if (softcap > 0) label += " softcap " + std::to_string(softcap);
  if (with_sinks) label += " sinks";
  const char *name = label.c_str();
  vcase c{name, BURST_DISTRIBUTION_ZIGZAG, BURST_LAYOUT_BHSD, 1, 6, 0, 4, 2, 1, 16, 45, nullptr, 0};
  const size_t nq = size_t(c.batch * c.hq * c.N * c.d), nk = size_t(c.batch * c.hkv * c.N * c.d);
  auto rounded = [&](double x) { return from_storage(dtype, to_storage(dtype, float(x))); };
  std::vector<double> q(nq), k(nk), v(nk), dout(nq), out(nq), lse(size_t(c.batch * c.hq * c.N)), dq(nq), dk(nk), dv(nk);
  for (size_t i = 0; i < nq; ++i) { q[i] = rounded(vref_value(1, i)); dout[i] = rounded(vref_value(4, i)); }
  for (size_t i = 0; i < nk; ++i) { k[i] = rounded(vref_value(2, i)); v[i] = rounded(vref_value(3, i)); }
  // Sink logits as the library gets them (fp32), widened for the reference.
  std::vector<float> sinks(size_t(c.hq));
  std::vector<double> sinks_d(sinks.size()), ref_dsinks(sinks.size());
  for (size_t h = 0; h < sinks.size(); ++h) { sinks[h] = -1.0f + 1.25f * float(h); sinks_d[h] = sinks[h]; }
  const vmods mods{double(softcap), with_sinks ? sinks_d.data() : nullptr};
  vref_reference_mods(&c, &mods, q.data(), k.data(), v.data(), dout.data(), nullptr, out.data(), lse.data(), dq.data(),
                      dk.data(), dv.data(), nullptr, nullptr);
  std::vector<double> given(nq);
  for (size_t i = 0; i < nq; ++i) given[i] = rounded(out[i]);
  std::fill(out.begin(), out.end(), 0.0);
  std::fill(dq.begin(), dq.end(), 0.0);
  std::fill(dk.begin(), dk.end(), 0.0);
  std::fill(dv.begin(), dv.end(), 0.0);
  vref_reference_mods(&c, &mods, q.data(), k.data(), v.data(), dout.data(), given.data(), out.data(), lse.data(),
                      dq.data(), dk.data(), dv.data(), ref_dsinks.data(), nullptr);
  int64_t n = 0;
  check(burst_shard_positions(c.dist, c.N, nullptr, 0, g_size, g_rank, nullptr, 0, &n), "burst_shard_positions");
  // Rows of head_dim elements: 2 bytes each in the storage type, 8 for the reference.
  auto local_half = [&](const std::vector<double> &full, int64_t heads) {
    std::vector<uint16_t> h(full.size()), part(size_t(c.batch * heads * n * c.d));
    for (size_t i = 0; i < full.size(); ++i) h[i] = to_storage(dtype, float(full[i]));
    check(burst_shard(c.dist, c.N, nullptr, 0, g_size, g_rank, c.batch * heads, 2 * c.d, h.data(), part.data()),
          "burst_shard");
    return part;
  };
  auto local_ref = [&](const std::vector<double> &full, int64_t heads) {
    std::vector<double> part(size_t(c.batch * heads * n * c.d));
    check(burst_shard(c.dist, c.N, nullptr, 0, g_size, g_rank, c.batch * heads, 8 * c.d, full.data(), part.data()),
          "burst_shard");
    return part;
  };
  auto lq = local_half(q, c.hq), lk = local_half(k, c.hkv), lv = local_half(v, c.hkv), ldo = local_half(dout, c.hq);
  auto lgiven = local_half(given, c.hq);
  burst_attention_config cfg;
  burst_attention_config_init(&cfg);
  cfg.layout = c.layout; cfg.mask = BURST_MASK_CAUSAL; cfg.distribution = c.dist; cfg.dtype = dtype;
  cfg.batch = c.batch; cfg.seq_len_local = n; cfg.num_heads_q = c.hq; cfg.num_heads_kv = c.hkv;
  cfg.head_dim = c.d; cfg.window_left = c.wl; cfg.window_right = c.wr; cfg.num_threads = 1; cfg.pattern = pattern;
  cfg.compute = compute;
  cfg.softcap = softcap;
  cfg.sinks = with_sinks ? sinks.data() : nullptr;
  burst_plan *raw = nullptr;
  check(burst_plan_create(ctx, &cfg, &raw), "burst_plan_create");
  plan_ptr plan(raw);
  std::vector<uint16_t> o(size_t(c.batch * c.hq * n * c.d)), gq(o.size()), gk(size_t(c.batch * c.hkv * n * c.d)),
      gv(gk.size());
  std::vector<float> l(size_t(c.batch * c.hq * n));
  check(burst_forward(plan.get(), lq.data(), lk.data(), lv.data(), o.data(), l.data()), "burst_forward");
  check(burst_backward(plan.get(), lq.data(), lk.data(), lv.data(), lgiven.data(), l.data(), ldo.data(), gq.data(),
                       gk.data(), gv.data()),
        "burst_backward");
  const double u = dtype == BURST_DTYPE_BF16 ? 0x1p-8 : 0x1p-11, sub = dtype == BURST_DTYPE_F16 ? 0x1p-24 : 0.0;
  auto within = [&](const char *what, const std::vector<uint16_t> &got, const std::vector<double> &full,
                    const std::vector<double> &want, double tol, double floor_scale) {
    double scale = floor_scale, worst = 0;
    for (double y : full) scale = std::fmax(scale, std::fabs(y));
    if (fast) {  // the FAST bounds: max error against tol * max|ref|
      for (size_t i = 0; i < got.size(); ++i) {
        const double e = std::fabs(from_storage(dtype, got[i]) - want[i]);
        worst = e == e ? std::fmax(worst, e) : INFINITY;
      }
      if (!(worst <= tol * scale)) fail(name, std::string(what) + ": FAST error " + std::to_string(worst) + " > " +
                                                  std::to_string(tol) + " * " + std::to_string(scale));
      return;
    }
    for (size_t i = 0; i < got.size(); ++i) {
      const double ratio = std::fabs(from_storage(dtype, got[i]) - want[i]) / (tol * scale * (1 + u) + u * std::fabs(want[i]) + sub);
      if (!(ratio <= worst)) worst = ratio == ratio ? ratio : INFINITY;
    }
    if (!(worst <= 1.0)) fail(name, std::string(what) + ": error / allowed = " + std::to_string(worst));
  };
  const double out_tol = fast ? VREF_FAST_OUT_TOL : 1e-5, grad_tol = fast ? VREF_FAST_GRAD_TOL : 1e-4;
  // dL/d sinks: every rank's partial, summed over the ranks, against the reference's.
  if (with_sinks) {
    std::vector<float> part(sinks.size());
    std::vector<double> mine(sinks.size()), total(sinks.size());
    const burst_status st = burst_plan_sinks_gradient(plan.get(), part.data());
    if (st != BURST_OK) fail(name, std::string("burst_plan_sinks_gradient: ") + burst_status_string(st) + ": " + burst_last_error());
    for (size_t h = 0; h < part.size(); ++h) mine[h] = st == BURST_OK ? double(part[h]) : NAN;
    MPI_Allreduce(mine.data(), total.data(), int(mine.size()), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    double scale = 1e-3;
    for (double y : ref_dsinks) scale = std::fmax(scale, std::fabs(y));
    for (size_t h = 0; h < total.size(); ++h)
      if (!(std::fabs(total[h] - ref_dsinks[h]) <= grad_tol * scale))
        fail(name, "dsinks[" + std::to_string(h) + "]: sum of the partials over the ranks " + std::to_string(total[h]) +
                       ", reference " + std::to_string(ref_dsinks[h]) + " (tolerance " + std::to_string(grad_tol) +
                       " * " + std::to_string(scale) + ")");
  }
  within("out", o, out, local_ref(out, c.hq), out_tol, 0);
  within("dq", gq, dq, local_ref(dq, c.hq), grad_tol, 1e-3);
  within("dk", gk, dk, local_ref(dk, c.hkv), grad_tol, 1e-3);
  within("dv", gv, dv, local_ref(dv, c.hkv), grad_tol, 1e-3);
  {
    std::vector<double> want_lse(l.size());
    check(burst_shard(c.dist, c.N, nullptr, 0, g_size, g_rank, c.batch * c.hq, 8, lse.data(), want_lse.data()),
          "burst_shard lse");
    double worst = 0;
    for (size_t i = 0; i < l.size(); ++i)
      if (!(double(l[i]) == want_lse[i])) {
        const double e = std::fabs(double(l[i]) - want_lse[i]);
        worst = e == e ? std::fmax(worst, e) : INFINITY;
      }
    const double lse_tol = fast ? VREF_FAST_LSE_TOL : 1e-4;
    if (!(worst <= lse_tol)) fail(name, "lse error " + std::to_string(worst) + " > " + std::to_string(lse_tol));
  }
  // The wire carries the storage type: the forward moves half the bytes of F32 (ring patterns, ALLGATHER).
  if (pattern != BURST_PATTERN_ULYSSES) {
    burst_stats half_stats{};
    half_stats.struct_size = sizeof half_stats;
    std::vector<float> fq(lq.size()), fk(lk.size()), fv(lv.size()), fo(o.size());
    for (size_t i = 0; i < lq.size(); ++i) fq[i] = float(from_storage(dtype, lq[i]));
    for (size_t i = 0; i < lk.size(); ++i) { fk[i] = float(from_storage(dtype, lk[i])); fv[i] = float(from_storage(dtype, lv[i])); }
    check(burst_forward(plan.get(), lq.data(), lk.data(), lv.data(), o.data(), l.data()), "burst_forward");
    half_stats = stats_of(plan.get());
    cfg.dtype = BURST_DTYPE_F32;
    plan_ptr plan32 = make_plan(ctx, cfg);
    check(burst_forward(plan32.get(), fq.data(), fk.data(), fv.data(), fo.data(), l.data()), "burst_forward F32");
    const burst_stats full_stats = stats_of(plan32.get());
    if (2 * half_stats.bytes_sent != full_stats.bytes_sent || 2 * half_stats.bytes_received != full_stats.bytes_received)
      fail(name, "forward bytes " + std::to_string(half_stats.bytes_sent) + " vs F32 " + std::to_string(full_stats.bytes_sent));
  }
}

} // namespace

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  int cases = 0;

  if (burst_version() != BURST_VERSION_NUMBER)
    fail("setup", "burst_version() " + std::to_string(burst_version()) +
                      " != BURST_VERSION_NUMBER " +
                      std::to_string(BURST_VERSION_NUMBER));
  try {
    context_ptr world = make_mpi_context(MPI_COMM_WORLD);
    int32_t r = -1, sz = -1;
    check(burst_context_rank(world.get(), &r, &sz), "burst_context_rank");
    if (r != g_rank || sz != g_size) fail("setup", "burst_context_rank disagrees with MPI");

    const shape shapes[] = {
        {BURST_LAYOUT_BSHD, BURST_MASK_NONE, 2, 2, 32, 50},
        {BURST_LAYOUT_BHSD, BURST_MASK_NONE, 1, 4, 64, 129},
        {BURST_LAYOUT_BSHD, BURST_MASK_CAUSAL, 1, 4, 64, 129},
        {BURST_LAYOUT_BHSD, BURST_MASK_CAUSAL, 3, 1, 16, 23},
    };
    for (const shape &s : shapes) {
      // even shards
      std::vector<int64_t> n(g_size);
      for (int i = 0; i < g_size; ++i) n[i] = s.seq / g_size + (i < s.seq % g_size);
      run_case(world.get(), s, n);
      ++cases;
      // uneven: the first rank holds everything but one token per other rank,
      // the last rank holds nothing
      if (g_size >= 2) {
        std::vector<int64_t> u(g_size, 1);
        u[g_size - 1] = 0;
        u[0] = s.seq - (g_size - 2);
        run_case(world.get(), s, u);
        ++cases;
      }
    }
    run_gqa_zigzag(world.get());
    ++cases;
    // The same problem under every other pattern (ULYSSES where the 2 kv heads
    // divide over the ranks) and, where the world splits in 2-rank groups, the
    // double ring.
    for (int pattern = BURST_PATTERN_RING; pattern <= BURST_PATTERN_AUTO; ++pattern) {
      if (pattern == BURST_PATTERN_ULYSSES && 2 % g_size != 0) continue;
      run_gqa_zigzag(world.get(), pattern);
      ++cases;
    }
    if (g_size % 2 == 0 && g_size > 2) {
      run_gqa_zigzag(world.get(), BURST_PATTERN_BURST, 2);
      run_gqa_zigzag(world.get(), BURST_PATTERN_RING, 2);
      cases += 2;
    }
    for (int dtype = BURST_DTYPE_BF16; dtype <= BURST_DTYPE_F16; ++dtype)
      for (int pattern = BURST_PATTERN_BURST; pattern <= BURST_PATTERN_ULYSSES; ++pattern) {
        if (pattern == BURST_PATTERN_ULYSSES && 2 % g_size != 0) continue;
        run_half(world.get(), dtype, pattern);
        ++cases;
      }
    // BURST_COMPUTE_FAST (0.7): bf16 products.
    run_half(world.get(), BURST_DTYPE_BF16, BURST_PATTERN_BURST, BURST_COMPUTE_FAST);
    ++cases;
    // Score modifiers (0.8): bf16 storage, compute DEFAULT, softcap and sinks.
    run_half(world.get(), BURST_DTYPE_BF16, BURST_PATTERN_BURST, BURST_COMPUTE_DEFAULT, 0.75f, true);
    ++cases;
  } catch (const burst_error &e) {
    fail("setup", e.what());
  }

  int local_fail = g_failures > 0, global_fail = 0;
  MPI_Allreduce(&local_fail, &global_fail, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  std::printf("cpp_client rank %d/%d: %s - %d cases, %d local failures\n", g_rank,
              g_size, global_fail ? "FAILED" : "passed", cases, g_failures);
  std::fflush(stdout);
  MPI_Finalize();
  return global_fail ? 1 : 0;
}
