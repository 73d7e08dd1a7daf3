// Grouped scaled weight standardization, CPU kernels: every weight of a model in one parallel
// loop each way, with the row math of ws_row.h.
//
// Layout: each weight is read in its memory order, which must be row-dense (every output channel
// one dense block, blocks in channel order: contiguous and channels_last weights are). The
// standardized weights are written into ONE flat buffer, weight after weight, each in the
// memory order of its weight (the statistics do not depend on the order); mean / rstd are one
// vector over all rows (output channels) of all weights, in the same order. The backward reads
// each weight's gradient where autograd left it (one tensor per weight) and writes one flat
// weight gradient. The loop is parallel over elements, not rows, so that
// layers with short and long rows share the threads evenly: a task takes the rows that start
// in its element range.
#include "ws_row.h"

#include <vector>

namespace fastnofrost {
namespace {

constexpr const char* kWhere = "fastnofrost.ws_grouped";

struct Layout {
  std::vector<at::Tensor> weights;             // row-dense
  std::vector<at::Tensor> gains;               // contiguous, or undefined (no gain)
  std::vector<int64_t> rows, n, elem_off, row_off;  // elem_off / row_off have one more entry (the totals)
};

Layout layout(at::TensorList weights, at::TensorList gains, at::ArrayRef<double> scales,
              at::ArrayRef<double> eps) {
  const size_t count = weights.size();
  TORCH_CHECK(count > 0, kWhere, ": the list of weights is empty");
  TORCH_CHECK(gains.size() == count && scales.size() == count && (eps.empty() || eps.size() == count), kWhere,
              ": weights, gains, scales and eps must have one entry per weight, got ", count, ", ", gains.size(),
              ", ", scales.size(), ", ", eps.size());
  Layout lay;
  lay.elem_off.push_back(0);
  lay.row_off.push_back(0);
  for (size_t i = 0; i < count; ++i) {
    const at::Tensor& w = weights[i];
    // an empty gain tensor: this weight has none
    const std::optional<at::Tensor> g = gains[i].numel() > 0 ? std::optional<at::Tensor>(gains[i]) : std::nullopt;
    check_ws_layer(w, g, eps.empty() ? 1.0 : eps[i], kWhere);
    TORCH_CHECK(w.scalar_type() == weights[0].scalar_type() && w.device() == weights[0].device(), kWhere,
                ": every weight must share one dtype and device; weight ", i, " is ", w.scalar_type(), " on ",
                w.device(), ", weight 0 is ", weights[0].scalar_type(), " on ", weights[0].device());
    TORCH_CHECK(w.is_non_overlapping_and_dense() && w.stride(0) * w.size(0) == w.numel(), kWhere, ": weight ", i,
                " (shape ", w.sizes(), ", strides ", w.strides(), ") is not row-dense: make it contiguous first");
    lay.weights.push_back(w);
    lay.gains.push_back(g.has_value() ? g->contiguous() : at::Tensor());
    lay.rows.push_back(w.size(0));
    lay.n.push_back(w.numel() / w.size(0));
    lay.elem_off.push_back(lay.elem_off.back() + w.numel());
    lay.row_off.push_back(lay.row_off.back() + w.size(0));
  }
  return lay;
}

// f(layer, local row, global row, element offset) for every row, in parallel over elements.
template <typename F>
void for_each_row(const Layout& lay, const F& f) {
  const int64_t layers = static_cast<int64_t>(lay.rows.size());
  at::parallel_for(0, lay.elem_off.back(), kElementGrain / 2, [&](int64_t begin, int64_t end) {
    int64_t l = std::upper_bound(lay.elem_off.begin(), lay.elem_off.end(), begin) - lay.elem_off.begin() - 1;
    int64_t local = (begin - lay.elem_off[l] + lay.n[l] - 1) / lay.n[l];  // first row starting at >= begin
    for (; l < layers; ++l, local = 0) {
      for (; local < lay.rows[l]; ++local) {
        const int64_t offset = lay.elem_off[l] + local * lay.n[l];
        if (offset >= end) break;
        f(l, local, lay.row_off[l] + local, offset);
      }
      if (local < lay.rows[l]) break;  // stopped inside this weight: the task's range is done
    }
    _mm_sfence();  // the task's non-temporal stores are visible before the op returns
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ws_grouped_forward_cpu(
    at::TensorList weights, at::TensorList gains, at::ArrayRef<double> scales,
    at::ArrayRef<double> eps) {
  TORCH_CHECK(eps.size() == weights.size(), kWhere, ": eps must have one entry per weight, got ", eps.size(),
              " for ", weights.size(), " weights");
  const Layout lay = layout(weights, gains, scales, eps);
  const auto options = lay.weights[0].options();
  at::Tensor out = at::empty({lay.elem_off.back()}, options);
  const auto stat_dtype = ws_stat_dtype(options.dtype().toScalarType());
  at::Tensor mean = at::empty({lay.row_off.back()}, options.dtype(stat_dtype));
  at::Tensor rstd = at::empty({lay.row_off.back()}, options.dtype(stat_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "ws_grouped_forward_cpu", [&] {
    using stat_t = ws_stat_t<scalar_t>;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    stat_t* mp = mean.mutable_data_ptr<stat_t>();
    stat_t* sp = rstd.mutable_data_ptr<stat_t>();
    const bool stream = out.nbytes() > kStreamBytes;
    for_each_row(lay, [&](int64_t l, int64_t local, int64_t row, int64_t offset) {
      const int64_t n = lay.n[l];
      const at::Tensor& gn = lay.gains[l];
      const acc_type<scalar_t> g = gn.defined() ? static_cast<acc_type<scalar_t>>(gn.const_data_ptr<scalar_t>()[local]) : 1;
      ws_forward_row<scalar_t>(lay.weights[l].const_data_ptr<scalar_t>() + local * n, n, g, scales[l], eps[l],
                               op + offset, mp + row, sp + row, stream);
    });
  });
  return {out, mean, rstd};
}

// Weight i's gradient in the memory order of weight i and in one dtype for all (the first
// gradient's: the weights' own, or autocast's; the kernel reads it as it is). Each is read at its
// own address: no concatenation. A gradient in another layout or dtype is converted alone.
std::vector<at::Tensor> gradients_like(at::TensorList grads, const Layout& lay) {
  const size_t count = lay.weights.size();
  TORCH_CHECK(grads.size() == count, kWhere, ": grads must have one entry per weight, got ", grads.size(),
              " for ", count, " weights");
  const auto dtype = grads[0].scalar_type();
  TORCH_CHECK(is_supported_float(dtype), kWhere, ": grads must be float64/float32/bfloat16/float16, got ", dtype);
  std::vector<at::Tensor> out;
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    const at::Tensor& w = lay.weights[i];
    const at::Tensor& g = grads[i];
    TORCH_CHECK(g.sizes() == w.sizes() && g.device() == w.device(), kWhere, ": grad ", i,
                " must have its weight's shape ", w.sizes(), " on ", w.device(), ", got ", g.sizes(), " on ",
                g.device());
    bool same_order = true;  // equal strides wherever a dim has more than one element
    for (int64_t d = 0; d < w.dim(); ++d) same_order = same_order && (w.size(d) == 1 || g.stride(d) == w.stride(d));
    if (g.scalar_type() == dtype && same_order) {
      out.push_back(g);
    } else {
      out.push_back(at::empty_strided(w.sizes(), w.strides(), w.options().dtype(dtype)).copy_(g));
    }
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> ws_grouped_backward_cpu(at::TensorList grads, at::TensorList weights,
                                                           at::TensorList gains,
                                                           const at::Tensor& mean, const at::Tensor& rstd,
                                                           at::ArrayRef<double> scales) {
  const Layout lay = layout(weights, gains, scales, {});
  const auto dtype = lay.weights[0].scalar_type();
  const auto stat_dtype = ws_stat_dtype(dtype);
  const int64_t total = lay.elem_off.back(), rows = lay.row_off.back();
  TORCH_CHECK(mean.numel() == rows && rstd.numel() == rows && mean.scalar_type() == stat_dtype &&
                  rstd.scalar_type() == stat_dtype,
              kWhere, ": mean/rstd must be ", stat_dtype, " vectors of length ", rows);
  const std::vector<at::Tensor> g = gradients_like(grads, lay);
  const at::Tensor m = mean.contiguous(), s = rstd.contiguous();
  at::Tensor grad_w = at::empty({total}, lay.weights[0].options());
  at::Tensor grad_gain = at::empty({rows}, lay.weights[0].options().dtype(stat_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "ws_grouped_backward_cpu", [&] {
    using weight_t = scalar_t;
    using stat_t = ws_stat_t<weight_t>;
    const stat_t* mp = m.const_data_ptr<stat_t>();
    const stat_t* sp = s.const_data_ptr<stat_t>();
    weight_t* dw = grad_w.mutable_data_ptr<weight_t>();
    stat_t* dg = grad_gain.mutable_data_ptr<stat_t>();
    const bool stream = grad_w.nbytes() > kStreamBytes;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g[0].scalar_type(), "ws_grouped_backward_cpu", [&] {
      for_each_row(lay, [&](int64_t l, int64_t local, int64_t row, int64_t offset) {
        const int64_t n = lay.n[l];
        const at::Tensor& gn = lay.gains[l];
        const acc_type<weight_t> gain =
            gn.defined() ? static_cast<acc_type<weight_t>>(gn.const_data_ptr<weight_t>()[local]) : 1;
        ws_backward_row<weight_t, scalar_t>(g[l].const_data_ptr<scalar_t>() + local * n,
                                            lay.weights[l].const_data_ptr<weight_t>() + local * n, n, gain, mp[row],
                                            sp[row], scales[l], dw + offset, dg + row, stream);
      });
    });
  });
  return {grad_w, grad_gain};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnofrost, CPU, m) {
  m.impl("ws_grouped_forward", &ws_grouped_forward_cpu);
  m.impl("ws_grouped_backward", &ws_grouped_backward_cpu);
}

}  // namespace fastnofrost
