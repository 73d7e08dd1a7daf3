// L-inf PGD step and random start, CPU kernels: one pass over memory each.
//
//   step:  x_adv <- clip(clip(x_adv + alpha * sign(grad), x - eps, x + eps), lo, hi)
//   start: x_adv  = clip(x + eps * (2u - 1), lo, hi),  u ~ U[0, 1) from Philox-4x32-10
//
// The random start draws u from Philox-4x32-10 keyed by the seed: element i takes output i % 4
// of counter c = i / 4, given as (c mod 2^32, c >> 32, 0, 0), mapped to [0, 1) as tl.rand maps
// bits. The Triton kernel draws the same way (tl.randint4x of int64 offsets), so CPU and CUDA give
// the same noise for the same seed.
#include "common.h"

namespace fastnofrost {
namespace {

// Branch-free forms (selects, not std::min/std::max references or nested ternaries) so that the
// step loop vectorizes. A NaN gradient gives a NaN pixel (sign(NaN) = NaN, and a NaN survives
// the clips), as in the Triton kernel: a broken gradient shows up downstream (training's
// non-finite loss check) instead of silently freezing the pixel as torch.sign's 0 would.
template <typename acc_t>
inline acc_t sign_of(acc_t g) {
  const acc_t s = static_cast<acc_t>(g > 0) - static_cast<acc_t>(g < 0);
  return g != g ? g : s;
}

template <typename acc_t>
inline acc_t clip(acc_t v, acc_t lo, acc_t hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

template <typename scalar_t>
void pgd_step_kernel(const scalar_t* xa, const scalar_t* g, const scalar_t* x, scalar_t* out, int64_t n,
                     double alpha_d, double eps_d, double lo_d, double hi_d) {
  using acc_t = acc_type<scalar_t>;
  const acc_t alpha = alpha_d, eps = eps_d, lo = lo_d, hi = hi_d;
  at::parallel_for(0, n, kElementGrain, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const acc_t xi = static_cast<acc_t>(x[i]);
      const acc_t v = static_cast<acc_t>(xa[i]) + alpha * sign_of(static_cast<acc_t>(g[i]));
      out[i] = static_cast<scalar_t>(clip(clip(v, xi - eps, xi + eps), lo, hi));
    }
  });
}

inline uint32_t mulhi32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

// Philox-4x32-10 with counters c = first + j, j < kLanes, as (c mod 2^32, c >> 32, 0, 0), and
// key = seed: four 32-bit outputs per counter, out[k][j] = output k of counter first + j. The
// rounds run on kLanes counters side by side, a loop the compiler vectorizes.
constexpr int kLanes = 16;

inline void philox4_block(uint64_t seed, uint64_t first, uint32_t out[4][kLanes]) {
  uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
  for (int j = 0; j < kLanes; ++j) {
    const uint64_t c = first + static_cast<uint64_t>(j);
    c0[j] = static_cast<uint32_t>(c);
    c1[j] = static_cast<uint32_t>(c >> 32);
    c2[j] = c3[j] = 0;
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) {
      const uint32_t p0 = c0[j], p2 = c2[j];
      c0[j] = mulhi32(0xCD9E8D57u, p2) ^ c1[j] ^ k0;
      c2[j] = mulhi32(0xD2511F53u, p0) ^ c3[j] ^ k1;
      c1[j] = 0xCD9E8D57u * p2;
      c3[j] = 0xD2511F53u * p0;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  for (int j = 0; j < kLanes; ++j) {
    out[0][j] = c0[j];
    out[1][j] = c1[j];
    out[2][j] = c2[j];
    out[3][j] = c3[j];
  }
}

// Map 32 random bits to [0, 1) the way tl.rand does.
inline float uniform_from_bits(uint32_t bits) {
  int32_t v = static_cast<int32_t>(bits);
  v = v < 0 ? ~v : v;
  return static_cast<float>(v) * 4.6566127342e-10f;
}

template <typename scalar_t>
void random_start_kernel(const scalar_t* x, scalar_t* out, int64_t n, double eps_d, double lo_d, double hi_d,
                         uint64_t seed) {
  using acc_t = acc_type<scalar_t>;
  const acc_t eps = eps_d, lo = lo_d, hi = hi_d;
  const int64_t n_counters = (n + 3) / 4;
  // Tasks start at multiples of kLanes counters, so every block but the last is whole.
  const int64_t n_blocks = (n_counters + kLanes - 1) / kLanes;
  at::parallel_for(0, n_blocks, std::max<int64_t>(1, kElementGrain / (4 * kLanes)), [&](int64_t begin, int64_t end) {
    uint32_t bits[4][kLanes];
    float u[4 * kLanes];
    for (int64_t b = begin; b < end; ++b) {
      philox4_block(seed, static_cast<uint64_t>(b) * kLanes, bits);
      for (int j = 0; j < kLanes; ++j)  // element 4 c + k takes output k of counter c
        for (int k = 0; k < 4; ++k) u[4 * j + k] = uniform_from_bits(bits[k][j]);
      const int64_t first = 4 * kLanes * b, count = std::min<int64_t>(4 * kLanes, n - first);
#pragma omp simd
      for (int64_t i = 0; i < count; ++i) {
        const acc_t noise = static_cast<acc_t>(u[i] * 2.0f - 1.0f) * eps;
        out[first + i] = static_cast<scalar_t>(clip(static_cast<acc_t>(x[first + i]) + noise, lo, hi));
      }
    }
  });
}

void check_bounds(double eps, double lo, double hi, const char* op) {
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and >= 0, got ", eps);
  TORCH_CHECK(lo <= hi, op, ": clip range must satisfy lo <= hi, got lo=", lo, " hi=", hi);
}

// Inputs that are dense with identical strides are processed in storage order (this covers
// contiguous and channels_last alike); anything else goes through contiguous copies.
bool same_dense_layout(const at::Tensor& a, const at::Tensor& b) {
  return a.is_non_overlapping_and_dense() && b.is_non_overlapping_and_dense() && a.strides() == b.strides();
}

void check_step_args(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x, double eps, double lo,
                     double hi) {
  const char* op = "fastnofrost.pgd_step";
  TORCH_CHECK(x_adv.sizes() == x.sizes() && grad.sizes() == x.sizes(), op,
              ": x_adv, grad and x must have the same shape, got ", x_adv.sizes(), ", ", grad.sizes(), ", ",
              x.sizes());
  TORCH_CHECK(x_adv.scalar_type() == x.scalar_type() && grad.scalar_type() == x.scalar_type(), op,
              ": x_adv, grad and x must have the same dtype, got ", x_adv.scalar_type(), ", ", grad.scalar_type(),
              ", ", x.scalar_type());
  TORCH_CHECK(is_supported_float(x.scalar_type()), op, ": dtype must be float64/float32/bfloat16/float16, got ",
              x.scalar_type());
  check_bounds(eps, lo, hi, op);
}

void pgd_step_into(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x, double alpha, double eps,
                   double lo, double hi, at::Tensor& out) {
  auto run = [&](const at::Tensor& xa, const at::Tensor& g, const at::Tensor& xx, at::Tensor& o) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xx.scalar_type(), "pgd_step_cpu", [&] {
      pgd_step_kernel<scalar_t>(xa.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(),
                                xx.const_data_ptr<scalar_t>(), o.mutable_data_ptr<scalar_t>(), o.numel(), alpha, eps,
                                lo, hi);
    });
  };
  if (same_dense_layout(x_adv, out) && same_dense_layout(grad, out) && same_dense_layout(x, out)) {
    run(x_adv, grad, x, out);
  } else {
    at::Tensor tmp = at::empty(out.sizes(), out.options());
    run(x_adv.contiguous(), grad.contiguous(), x.contiguous(), tmp);
    out.copy_(tmp);
  }
}

at::Tensor pgd_step_cpu(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x, double alpha,
                        double eps, double lo, double hi) {
  check_step_args(x_adv, grad, x, eps, lo, hi);
  at::Tensor out = at::empty_like(x_adv);
  pgd_step_into(x_adv, grad, x, alpha, eps, lo, hi, out);
  return out;
}

void pgd_step_inplace_cpu(at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x, double alpha, double eps,
                          double lo, double hi) {
  check_step_args(x_adv, grad, x, eps, lo, hi);
  pgd_step_into(x_adv, grad, x, alpha, eps, lo, hi, x_adv);
}

at::Tensor pgd_random_start_cpu(const at::Tensor& x, double eps, double lo, double hi, int64_t seed) {
  check_bounds(eps, lo, hi, "fastnofrost.pgd_random_start");
  TORCH_CHECK(is_supported_float(x.scalar_type()),
              "fastnofrost.pgd_random_start: dtype must be float64/float32/bfloat16/float16, got ", x.scalar_type());
  TORCH_CHECK(x.numel() < (int64_t(1) << 31), "fastnofrost.pgd_random_start: at most 2^31 - 1 elements, got ",
              x.numel());
  TORCH_CHECK(seed >= 0 && seed < (int64_t(1) << 31), "fastnofrost.pgd_random_start: seed must be in [0, 2^31), got ",
              seed);
  // Noise is indexed in storage order, so dense inputs (contiguous or channels_last) keep their layout.
  at::Tensor out = at::empty_like(x);
  auto run = [&](const at::Tensor& xx, at::Tensor& o) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xx.scalar_type(), "pgd_random_start_cpu", [&] {
      random_start_kernel<scalar_t>(xx.const_data_ptr<scalar_t>(), o.mutable_data_ptr<scalar_t>(), o.numel(), eps, lo,
                                    hi, static_cast<uint64_t>(seed));
    });
  };
  if (same_dense_layout(x, out)) {
    run(x, out);
  } else {
    at::Tensor tmp = at::empty(out.sizes(), out.options());
    run(x.contiguous(), tmp);
    out.copy_(tmp);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnofrost, CPU, m) {
  m.impl("pgd_step", &pgd_step_cpu);
  m.impl("pgd_step_", &pgd_step_inplace_cpu);
  m.impl("pgd_random_start", &pgd_random_start_cpu);
}

}  // namespace fastnofrost
