// Helpers shared by normlab's CPU kernels.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <optional>

namespace normlab {

// An optional tensor argument's data, or null when it is left out.
template <typename T>
T* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

// Statistics of one row of `count` contiguous values, shifted two-pass:
//   m = sum(x) / count, rounded to T;  v = x - m (exact in T when x is near m)
//   d = sum(v), q = sum(v^2);  mean = m + d / count;  var = (q - d^2 / count) / count
// so xhat = (x - mean) * rstd is computed as (v - d / count) * rstd: accurate far from zero.
template <typename T>
struct RowStats {
  T m;            // the rounded first mean
  double offset;  // d / count: the mean of v
  double var;     // biased variance
  double rstd;    // 1 / sqrt(var + eps)
};

// sum(x - m) over `count` values, in double.
template <typename T>
double sum_centred(const T* __restrict x, T m, int64_t count) {
  double d = 0;
#pragma omp simd reduction(+ : d)
  for (int64_t i = 0; i < count; ++i) d += static_cast<double>(x[i] - m);
  return d;
}

template <typename T>
RowStats<T> row_stats(const T* __restrict x, int64_t count, double eps) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < count; ++i) sum += x[i];
  const T m = static_cast<T>(sum / count);
  double d = 0, q = 0;
#pragma omp simd reduction(+ : d, q)
  for (int64_t i = 0; i < count; ++i) {
    const double v = static_cast<double>(x[i] - m);
    d += v;
    q += v * v;
  }
  const double var = (q - d * d / count) / count;
  return {m, d / count, var, 1.0 / std::sqrt(var + eps)};
}

}  // namespace normlab
