// Scaled weight standardization, CPU kernels.
//
//   w_hat[o, i] = gain[o] * scale * (w[o, i] - mean[o]) * rstd[o]
//   mean[o] = mean_i w[o, i],  rstd[o] = 1 / sqrt(var_i w[o, i] + eps)   (biased variance)
//
// One row (output channel) per task. A row is at most a few thousand elements, so it stays
// in L1/L2 between the statistics pass and the write pass: the weight is read from memory
// once and w_hat written once. Statistics are accumulated in double (float64 weights) or
// float (every other dtype). Backward reuses the saved mean / rstd.
#include "common.h"

namespace fastnofrost {
namespace {

template <typename scalar_t, typename stat_t>
void ws_forward_rows(const scalar_t* w, const scalar_t* gain, double scale, double eps, int64_t rows,
                     int64_t n, scalar_t* out, stat_t* mean_out, stat_t* rstd_out) {
  using acc_t = acc_type<scalar_t>;
  at::parallel_for(0, rows, grain_rows(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* row = w + r * n;
      // One pass for both moments, shifted by the row's first element so that a mean far
      // from zero does not cancel the variance: var = E[d^2] - E[d]^2 with d = w - w[0].
      const acc_t shift = static_cast<acc_t>(row[0]);
      acc_t sum = 0, sq = 0;
#pragma omp simd reduction(+ : sum, sq)
      for (int64_t i = 0; i < n; ++i) {
        const acc_t d = static_cast<acc_t>(row[i]) - shift;
        sum += d;
        sq += d * d;
      }
      const acc_t dmean = sum / static_cast<acc_t>(n);
      const acc_t mean = shift + dmean;
      const acc_t var = std::max(sq / static_cast<acc_t>(n) - dmean * dmean, acc_t(0));
      const acc_t rstd = acc_t(1) / std::sqrt(var + static_cast<acc_t>(eps));
      const acc_t g = gain ? static_cast<acc_t>(gain[r]) : acc_t(1);
      const acc_t a = g * static_cast<acc_t>(scale) * rstd;
      const acc_t b = -mean * a;
      scalar_t* o = out + r * n;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) o[i] = static_cast<scalar_t>(static_cast<acc_t>(row[i]) * a + b);
      mean_out[r] = static_cast<stat_t>(mean);
      rstd_out[r] = static_cast<stat_t>(rstd);
    }
  });
}

template <typename scalar_t, typename stat_t>
void ws_backward_rows(const scalar_t* grad, const scalar_t* w, const scalar_t* gain,
                      const stat_t* mean, const stat_t* rstd, double scale, int64_t rows,
                      int64_t n, scalar_t* grad_w, stat_t* grad_gain) {
  using acc_t = acc_type<scalar_t>;
  at::parallel_for(0, rows, grain_rows(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* g = grad + r * n;
      const scalar_t* x = w + r * n;
      const acc_t m = static_cast<acc_t>(mean[r]);
      const acc_t s = static_cast<acc_t>(rstd[r]);
      // sum_g = sum g, sum_gx = sum g * x_hat  (x_hat = (w - mean) * rstd)
      acc_t sum_g = 0, sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (int64_t i = 0; i < n; ++i) {
        const acc_t gi = static_cast<acc_t>(g[i]);
        sum_g += gi;
        sum_gx += gi * (static_cast<acc_t>(x[i]) - m) * s;
      }
      const acc_t gn = gain ? static_cast<acc_t>(gain[r]) : acc_t(1);
      const acc_t a = gn * static_cast<acc_t>(scale);
      grad_gain[r] = static_cast<stat_t>(static_cast<acc_t>(scale) * sum_gx);
      // d w = a * rstd * (g - mean(g) - x_hat * mean(g * x_hat))
      const acc_t inv_n = acc_t(1) / static_cast<acc_t>(n);
      const acc_t k = a * s;
      const acc_t mg = sum_g * inv_n;
      const acc_t mgx = sum_gx * inv_n;
      scalar_t* o = grad_w + r * n;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const acc_t xh = (static_cast<acc_t>(x[i]) - m) * s;
        o[i] = static_cast<scalar_t>(k * (static_cast<acc_t>(g[i]) - mg - xh * mgx));
      }
    }
  });
}

void check_ws_args(const at::Tensor& weight, const std::optional<at::Tensor>& gain, double eps) {
  TORCH_CHECK(weight.dim() >= 2, "fastnofrost.ws: weight must have at least 2 dims (C_out, fan_in...), got shape ",
              weight.sizes());
  TORCH_CHECK(is_supported_float(weight.scalar_type()),
              "fastnofrost.ws: weight must be float64/float32/bfloat16/float16, got ", weight.scalar_type());
  TORCH_CHECK(weight.size(0) > 0 && weight.numel() > 0, "fastnofrost.ws: weight is empty: ", weight.sizes());
  TORCH_CHECK(eps > 0, "fastnofrost.ws: eps must be > 0, got ", eps);
  if (gain.has_value()) {
    TORCH_CHECK(gain->numel() == weight.size(0), "fastnofrost.ws: gain must have C_out = ", weight.size(0),
                " elements, got shape ", gain->sizes());
    TORCH_CHECK(gain->scalar_type() == weight.scalar_type(), "fastnofrost.ws: gain dtype ", gain->scalar_type(),
                " differs from weight dtype ", weight.scalar_type());
    TORCH_CHECK(gain->device() == weight.device(), "fastnofrost.ws: gain is on ", gain->device(),
                " but weight is on ", weight.device());
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ws_forward_cpu(const at::Tensor& weight,
                                                               const std::optional<at::Tensor>& gain,
                                                               double scale, double eps) {
  check_ws_args(weight, gain, eps);
  const at::Tensor w = weight.contiguous();
  const at::Tensor gn = gain.has_value() ? gain->contiguous() : at::Tensor();
  const int64_t rows = w.size(0), n = w.numel() / rows;
  at::Tensor out = at::empty_like(w);
  const auto stat_dtype = w.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor mean = at::empty({rows}, w.options().dtype(stat_dtype));
  at::Tensor rstd = at::empty({rows}, w.options().dtype(stat_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "ws_forward_cpu", [&] {
    const scalar_t* gp = gn.defined() ? gn.const_data_ptr<scalar_t>() : nullptr;
    // float64 weights keep float64 statistics (gradcheck); every other dtype keeps float32.
    using stat_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    ws_forward_rows<scalar_t, stat_t>(w.const_data_ptr<scalar_t>(), gp, scale, eps, rows, n,
                                      out.mutable_data_ptr<scalar_t>(), mean.mutable_data_ptr<stat_t>(),
                                      rstd.mutable_data_ptr<stat_t>());
  });
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor> ws_backward_cpu(const at::Tensor& grad_out, const at::Tensor& weight,
                                                   const std::optional<at::Tensor>& gain, const at::Tensor& mean,
                                                   const at::Tensor& rstd, double scale) {
  check_ws_args(weight, gain, 1.0);
  TORCH_CHECK(grad_out.sizes() == weight.sizes(), "fastnofrost.ws_backward: grad shape ", grad_out.sizes(),
              " differs from weight shape ", weight.sizes());
  const int64_t rows = weight.size(0), n = weight.numel() / rows;
  const auto stat_dtype = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(mean.numel() == rows && rstd.numel() == rows && mean.scalar_type() == stat_dtype &&
                  rstd.scalar_type() == stat_dtype,
              "fastnofrost.ws_backward: mean/rstd must be ", stat_dtype, " vectors of length ", rows);
  const at::Tensor g = grad_out.to(weight.scalar_type()).contiguous();
  const at::Tensor w = weight.contiguous();
  const at::Tensor gn = gain.has_value() ? gain->contiguous() : at::Tensor();
  const at::Tensor m = mean.contiguous(), s = rstd.contiguous();
  at::Tensor grad_w = at::empty_like(w);
  at::Tensor grad_gain = at::empty({rows}, w.options().dtype(stat_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "ws_backward_cpu", [&] {
    const scalar_t* gp = gn.defined() ? gn.const_data_ptr<scalar_t>() : nullptr;
    using stat_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    ws_backward_rows<scalar_t, stat_t>(g.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), gp,
                                       m.const_data_ptr<stat_t>(), s.const_data_ptr<stat_t>(), scale, rows, n,
                                       grad_w.mutable_data_ptr<scalar_t>(), grad_gain.mutable_data_ptr<stat_t>());
  });
  return {grad_w, grad_gain};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnofrost, CPU, m) {
  m.impl("ws_forward", &ws_forward_cpu);
  m.impl("ws_backward", &ws_backward_cpu);
}

}  // namespace fastnofrost
