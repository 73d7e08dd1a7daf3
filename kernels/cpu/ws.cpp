// Scaled weight standardization, per-layer CPU kernels: one row (output channel) per task,
// with the row math of ws_row.h. Backward reuses the saved mean / rstd.
#include "ws_row.h"

namespace fastnofrost {
namespace {

void check_ws_args(const at::Tensor& weight, const std::optional<at::Tensor>& gain, double eps) {
  check_ws_layer(weight, gain, eps, "fastnofrost.ws");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ws_forward_cpu(const at::Tensor& weight,
                                                               const std::optional<at::Tensor>& gain,
                                                               double scale, double eps) {
  check_ws_args(weight, gain, eps);
  const at::Tensor w = weight.contiguous();
  const at::Tensor gn = gain.has_value() ? gain->contiguous() : at::Tensor();
  const int64_t rows = w.size(0), n = w.numel() / rows;
  at::Tensor out = at::empty_like(w);
  const auto stat_dtype = ws_stat_dtype(w.scalar_type());
  at::Tensor mean = at::empty({rows}, w.options().dtype(stat_dtype));
  at::Tensor rstd = at::empty({rows}, w.options().dtype(stat_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "ws_forward_cpu", [&] {
    const scalar_t* gp = gn.defined() ? gn.const_data_ptr<scalar_t>() : nullptr;
    using stat_t = ws_stat_t<scalar_t>;
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    stat_t* mp = mean.mutable_data_ptr<stat_t>();
    stat_t* sp = rstd.mutable_data_ptr<stat_t>();
    const bool stream = out.nbytes() > kStreamBytes;
    at::parallel_for(0, rows, grain_rows(n), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        ws_forward_row<scalar_t>(wp + r * n, n, gp ? static_cast<acc_type<scalar_t>>(gp[r]) : 1, scale, eps,
                                 op + r * n, mp + r, sp + r, stream);
      _mm_sfence();
    });
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
  const auto stat_dtype = ws_stat_dtype(weight.scalar_type());
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
    using stat_t = ws_stat_t<scalar_t>;
    const scalar_t* gr = g.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const stat_t* mp = m.const_data_ptr<stat_t>();
    const stat_t* sp = s.const_data_ptr<stat_t>();
    scalar_t* dw = grad_w.mutable_data_ptr<scalar_t>();
    stat_t* dg = grad_gain.mutable_data_ptr<stat_t>();
    const bool stream = grad_w.nbytes() > kStreamBytes;
    at::parallel_for(0, rows, grain_rows(n), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        ws_backward_row<scalar_t>(gr + r * n, wp + r * n, n, gp ? static_cast<acc_type<scalar_t>>(gp[r]) : 1,
                                  mp[r], sp[r], scale, dw + r * n, dg + r, stream);
      _mm_sfence();
    });
  });
  return {grad_w, grad_gain};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnofrost, CPU, m) {
  m.impl("ws_forward", &ws_forward_cpu);
  m.impl("ws_backward", &ws_backward_cpu);
}

}  // namespace fastnofrost
