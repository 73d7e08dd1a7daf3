// Shared helpers for the CPU kernels of fastnofrost._C.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <type_traits>

namespace fastnofrost {

// Accumulate float64 tensors in double, every other floating dtype in float.
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kDouble || t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

// Rows per parallel task so that each task touches at least ~32K elements.
inline int64_t grain_rows(int64_t row_len) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_len)); }

// Elements per parallel task for elementwise kernels.
constexpr int64_t kElementGrain = 1 << 16;

}  // namespace fastnofrost
