// Scaled weight standardization of one row (an output channel over its fan-in), shared by the
// per-layer kernels (ws.cpp) and the grouped kernels (ws_grouped.cpp):
//
//   w_hat[i] = gain * scale * (w[i] - mean) * rstd
//   mean = mean_i w[i],  rstd = 1 / sqrt(var_i w[i] + eps)   (biased variance)
//
// A row is at most a few thousand elements, so it stays in L1/L2 between the statistics pass
// and the write pass: the weight is read from memory once and w_hat written once. Statistics
// are accumulated in double (float64 weights) or float (every other dtype).
#pragma once

#include <emmintrin.h>  // SSE2: non-temporal stores (every x86-64 CPU has them)

#include "common.h"

namespace fastnofrost {

// Statistics in float64 for float64 weights, float32 for every other dtype.
template <typename scalar_t>
using ws_stat_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

inline at::ScalarType ws_stat_dtype(at::ScalarType weight) { return weight == at::kDouble ? at::kDouble : at::kFloat; }

// Outputs larger than this are written with non-temporal stores: they do not fit the caches
// anyway, and a streaming store skips the read-for-ownership of every output line (a third of
// the traffic of the forward, a quarter of the backward). Smaller outputs stay in the cache for
// the convolution that reads them next.
constexpr int64_t kStreamBytes = int64_t(8) << 20;

// A float row written with non-temporal stores: out[i] = f(i) up to a 16-byte boundary, then
// the SSE vector fv(i) (the same IEEE operations in the same order as f, so both give the same
// bits) 4 elements at a time, then f(i) again for the tail. The caller issues the _mm_sfence.
template <typename F, typename FV>
inline void stream_row(float* out, int64_t n, const F& f, const FV& fv) {
  int64_t i = 0;
  for (; i < n && (reinterpret_cast<uintptr_t>(out + i) & 15) != 0; ++i) out[i] = f(i);
  for (; i + 4 <= n; i += 4) _mm_stream_ps(out + i, fv(i));
  for (; i < n; ++i) out[i] = f(i);
}

// Sums of f(i) and h(i) over a row, in kLanes independent partial sums (element i goes to lane
// i % kLanes), added up pairwise at the end. The order is fixed by the code, not by the
// vectorizer (which runs the lanes side by side without reassociating), so every build and
// host gives the same bits, and each partial sum holds n / kLanes terms (accuracy).
constexpr int64_t kLanes = 16;

template <typename acc_t, typename F, typename H>
inline void row_sums(int64_t n, const F& f, const H& h, acc_t* sum_f, acc_t* sum_h) {
  acc_t a[kLanes] = {}, b[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) {
      a[j] += f(i + j);
      b[j] += h(i + j);
    }
  }
  for (int64_t j = 0; i + j < n; ++j) {
    a[j] += f(i + j);
    b[j] += h(i + j);
  }
  for (int64_t width = kLanes / 2; width > 0; width /= 2) {
    for (int64_t j = 0; j < width; ++j) {
      a[j] += a[j + width];
      b[j] += b[j + width];
    }
  }
  *sum_f = a[0];
  *sum_h = b[0];
}

template <typename acc_t, typename stat_t>
inline void store_stats(acc_t mean, acc_t rstd, stat_t* mean_out, stat_t* rstd_out) {
  *mean_out = static_cast<stat_t>(mean);
  *rstd_out = static_cast<stat_t>(rstd);
}

// Standardize row `w` (n elements) into `out`, and store its mean and rstd.
template <typename scalar_t>
inline void ws_forward_row(const scalar_t* w, int64_t n, acc_type<scalar_t> gain, double scale, double eps,
                           scalar_t* out, ws_stat_t<scalar_t>* mean_out, ws_stat_t<scalar_t>* rstd_out,
                           bool stream = false) {
  using acc_t = acc_type<scalar_t>;
  // One pass for both moments, shifted by the row's first element so that a mean far from
  // zero does not cancel the variance: var = E[d^2] - E[d]^2 with d = w - w[0].
  const acc_t shift = static_cast<acc_t>(w[0]);
  acc_t sum, sq;
  row_sums<acc_t>(
      n, [&](int64_t i) { return static_cast<acc_t>(w[i]) - shift; },
      [&](int64_t i) {
        const acc_t d = static_cast<acc_t>(w[i]) - shift;
        return d * d;
      },
      &sum, &sq);
  const acc_t dmean = sum / static_cast<acc_t>(n);
  const acc_t mean = shift + dmean;
  const acc_t var = std::max(sq / static_cast<acc_t>(n) - dmean * dmean, acc_t(0));
  const acc_t rstd = acc_t(1) / std::sqrt(var + static_cast<acc_t>(eps));
  const acc_t a = gain * static_cast<acc_t>(scale) * rstd;
  const acc_t b = -mean * a;
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (stream) {
      stream_row(
          out, n, [&](int64_t i) { return w[i] * a + b; },
          [&](int64_t i) { return _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(w + i), _mm_set1_ps(a)), _mm_set1_ps(b)); });
      return store_stats(mean, rstd, mean_out, rstd_out);
    }
  }
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(static_cast<acc_t>(w[i]) * a + b);
  store_stats(mean, rstd, mean_out, rstd_out);
}

// Gradient of one row from the saved mean / rstd:
//   d w = gain * scale * rstd * (g - mean(g) - x_hat * mean(g * x_hat)),  d gain = scale * sum(g * x_hat)
// The incoming gradient may have its own dtype (grad_t: bf16 gradients of float32 weights under autocast).
template <typename scalar_t, typename grad_t = scalar_t>
inline void ws_backward_row(const grad_t* g, const scalar_t* x, int64_t n, acc_type<scalar_t> gain,
                            ws_stat_t<scalar_t> mean, ws_stat_t<scalar_t> rstd, double scale, scalar_t* grad_w,
                            ws_stat_t<scalar_t>* grad_gain, bool stream = false) {
  using acc_t = acc_type<scalar_t>;
  const acc_t m = static_cast<acc_t>(mean);
  const acc_t s = static_cast<acc_t>(rstd);
  acc_t sum_g, sum_gx;
  row_sums<acc_t>(
      n, [&](int64_t i) { return static_cast<acc_t>(g[i]); },
      [&](int64_t i) { return static_cast<acc_t>(g[i]) * (static_cast<acc_t>(x[i]) - m) * s; }, &sum_g, &sum_gx);
  *grad_gain = static_cast<ws_stat_t<scalar_t>>(static_cast<acc_t>(scale) * sum_gx);
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(n);
  const acc_t k = gain * static_cast<acc_t>(scale) * s;
  const acc_t mg = sum_g * inv_n;
  const acc_t mgx = sum_gx * inv_n;
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<grad_t, float>) {
    if (stream) {
      stream_row(
          grad_w, n, [&](int64_t i) { return k * (g[i] - mg - (x[i] - m) * s * mgx); },
          [&](int64_t i) {
            const __m128 xh = _mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(x + i), _mm_set1_ps(m)), _mm_set1_ps(s));
            const __m128 d =
                _mm_sub_ps(_mm_sub_ps(_mm_loadu_ps(g + i), _mm_set1_ps(mg)), _mm_mul_ps(xh, _mm_set1_ps(mgx)));
            return _mm_mul_ps(_mm_set1_ps(k), d);
          });
      return;
    }
  }
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const acc_t xh = (static_cast<acc_t>(x[i]) - m) * s;
    grad_w[i] = static_cast<scalar_t>(k * (static_cast<acc_t>(g[i]) - mg - xh * mgx));
  }
}

// The checks of one (weight, gain, eps) triple, for both the per-layer and the grouped ops.
inline void check_ws_layer(const at::Tensor& weight, const std::optional<at::Tensor>& gain, double eps,
                           const char* where) {
  TORCH_CHECK(weight.dim() >= 2, where, ": weight must have at least 2 dims (C_out, fan_in...), got shape ",
              weight.sizes());
  TORCH_CHECK(is_supported_float(weight.scalar_type()), where,
              ": weight must be float64/float32/bfloat16/float16, got ", weight.scalar_type());
  TORCH_CHECK(weight.size(0) > 0 && weight.numel() > 0, where, ": weight is empty: ", weight.sizes());
  TORCH_CHECK(eps > 0, where, ": eps must be > 0, got ", eps);
  if (gain.has_value()) {
    TORCH_CHECK(gain->numel() == weight.size(0), where, ": gain must have C_out = ", weight.size(0),
                " elements, got shape ", gain->sizes());
    TORCH_CHECK(gain->scalar_type() == weight.scalar_type(), where, ": gain dtype ", gain->scalar_type(),
                " differs from weight dtype ", weight.scalar_type());
    TORCH_CHECK(gain->device() == weight.device(), where, ": gain is on ", gain->device(),
                " but weight is on ", weight.device());
  }
}

}  // namespace fastnofrost
