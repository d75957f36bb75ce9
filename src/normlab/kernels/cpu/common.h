// Helpers shared by normlab's CPU kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <optional>

namespace normlab {

// An optional tensor argument's data, or null when it is left out.
template <typename T>
T* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

// A new contiguous CPU tensor of `sizes` in `like`'s dtype, straight from the CPU
// allocator: at::empty and at::empty_like go through the dispatcher first, a cost a
// small layer's call (a few microseconds in all) feels.
inline at::Tensor new_cpu(at::IntArrayRef sizes, const at::Tensor& like) {
  return at::Tensor(at::detail::empty_cpu(sizes, like.scalar_type()));
}

// at::parallel_for's grain: how many of `items` (each `item_size` values) make a task, so
// that a task has at least kGrainValues values (torch's own at::internal::GRAIN_SIZE).
// Below that, waking a second thread costs more than the work: small inputs run on one.
inline constexpr int64_t kGrainValues = 32768;

inline int64_t grain(int64_t item_size, int64_t at_least = 1) {
  return std::max(at_least, kGrainValues / std::max<int64_t>(item_size, 1));
}

// Per-thread partial sums side by side in one buffer: the number of values from one
// thread's block to the next, for blocks of `count` values of T. Rounded up to whole
// 64-byte cache lines plus one line more, so that no two threads' blocks share a line
// (wherever the buffer starts): threads adding into a shared line take turns owning it,
// which costs more than the additions when rows are short.
template <typename T>
int64_t thread_stride(int64_t count) {
  constexpr int64_t per_line = 64 / static_cast<int64_t>(sizeof(T));
  return (count + per_line - 1) / per_line * per_line + per_line;
}

// Sums of many values, fast and accurate:
//
//   kLanes<T> partial sums in T side by side (four 64-byte vectors' worth: 64 floats or
//   32 doubles), so that consecutive additions do not wait for each other; after 32
//   values per lane the lanes are added up and the total moves on in double.
//
// A lane adds at most 32 values in T before its sum goes to double, so the error of a
// sum of n values is that of a float sum of 32 terms plus a double sum of n / 32: about
// what pairwise summation gives, far below a plain float loop's (n terms in one chain),
// at the speed of a vectorized loop. Tails shorter than the lanes are added in double;
// rows shorter than kShortRow are summed in one plain vectorized loop in T.
template <typename T>
inline constexpr int64_t kLanes = 256 / static_cast<int64_t>(sizeof(T));

// Up to three sums over i in [0, n), each as above: `term(i, a, b, c)` sets the terms of
// value i (T&, one per sum); it is inlined into the vectorized loop. (Named accumulators:
// an array of terms per value would keep GCC from vectorizing the loop.)
template <typename T, int64_t W, typename Term>
inline std::array<double, 3> lane_sums_of_width(int64_t n, Term term) {
  double total_a = 0, total_b = 0, total_c = 0;
  int64_t i = 0;
  while (i + W <= n) {
    T lane_a[W] = {}, lane_b[W] = {}, lane_c[W] = {};
    const int64_t stop = std::min(n - W + 1, i + 32 * W);
    for (; i < stop; i += W) {
#pragma omp simd
      for (int64_t j = 0; j < W; ++j) {
        T a = 0, b = 0, c = 0;
        term(i + j, a, b, c);
        lane_a[j] += a;
        lane_b[j] += b;
        lane_c[j] += c;
      }
    }
    T part_a = 0, part_b = 0, part_c = 0;
#pragma omp simd reduction(+ : part_a, part_b, part_c)
    for (int64_t j = 0; j < W; ++j) {
      part_a += lane_a[j];
      part_b += lane_b[j];
      part_c += lane_c[j];
    }
    total_a += part_a;
    total_b += part_b;
    total_c += part_c;
  }
  for (; i < n; ++i) {
    T a = 0, b = 0, c = 0;
    term(i, a, b, c);
    total_a += a;
    total_b += b;
    total_c += c;
  }
  return {total_a, total_b, total_c};
}

template <typename T, typename Term>
inline std::array<double, 3> lane_sums(int64_t n, Term term) {
  return lane_sums_of_width<T, kLanes<T>>(n, term);
}

// Rows shorter than this many values (a few vectors) take one plain vectorized loop in
// T: there the lanes' set-up and final additions cost more than they save.
template <typename T>
inline constexpr int64_t kShortRow = 4 * kLanes<T>;

// sum(x) over `count` values.
template <typename T>
double sum_of(const T* __restrict x, int64_t count) {
  if (count < kShortRow<T>) {
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < count; ++i) sum += x[i];
    return sum;
  }
  return lane_sums<T>(count, [&](int64_t i, T& a, T&, T&) { a = x[i]; })[0];
}

// sum(x - m) over `count` values.
template <typename T>
double sum_centred(const T* __restrict x, T m, int64_t count) {
  if (count < kShortRow<T>) {
    T d = 0;
#pragma omp simd reduction(+ : d)
    for (int64_t i = 0; i < count; ++i) d += x[i] - m;
    return d;
  }
  return lane_sums<T>(count, [&](int64_t i, T& a, T&, T&) { a = x[i] - m; })[0];
}

// d = sum(x - m) and q = sum((x - m)^2) over `count` values.
template <typename T>
std::array<double, 2> centred_sums(const T* __restrict x, T m, int64_t count) {
  if (count < kShortRow<T>) {
    T d = 0, q = 0;
#pragma omp simd reduction(+ : d, q)
    for (int64_t i = 0; i < count; ++i) {
      const T v = x[i] - m;
      d += v;
      q += v * v;
    }
    return {d, q};
  }
  const auto sums = lane_sums<T>(count, [&](int64_t i, T& a, T& b, T&) {
    const T v = x[i] - m;
    a = v;
    b = v * v;
  });
  return {sums[0], sums[1]};
}

// Statistics of one row of `count` contiguous values, shifted, in one pass over the row:
//   m = the mean of its first kShiftHead values, rounded to T;  v = x - m (exact in T when
//   x is near m);  d = sum(v), q = sum(v^2);  mean = m + d / count;
//   var = q / count - (d / count)^2
// so xhat = (x - mean) * rstd is computed as (v - d / count) * rstd: accurate far from zero.
//
// Error: q / count = var + offset^2 (offset = d / count = mean - m), so the rounding errors
// of the sums, relative to q, reach var magnified by 1 + offset^2 / var. When the shift is
// within one standard deviation of the mean (offset^2 <= var: for random rows, a head of
// 16 values misses by std / 4) that is at most 2, and var is as accurate as with the exact
// mean as the shift; otherwise (a row whose head is not like the rest) the sums are taken
// again around m = the mean rounded to T, a second pass over the row with offset^2 at most
// half an ulp of the mean squared, far below var.
template <typename T>
struct RowStats {
  T m;            // the shift: the head's rounded mean, or the rounded mean
  double offset;  // d / count: the mean of v
  double var;     // biased variance
  double rstd;    // 1 / sqrt(var + eps)
};

inline constexpr int64_t kShiftHead = 16;

template <typename T>
RowStats<T> stats_around(const T* __restrict x, T m, int64_t count, double eps) {
  const auto [d, q] = centred_sums(x, m, count);
  const double offset = d / count;
  const double var = q / count - offset * offset;
  return {m, offset, var, 1.0 / std::sqrt(std::max(var, 0.0) + eps)};
}

template <typename T>
RowStats<T> row_stats(const T* __restrict x, int64_t count, double eps) {
  const int64_t head = std::min(count, kShiftHead);
  RowStats<T> s = stats_around(x, static_cast<T>(sum_of(x, head) / head), count, eps);
  if (s.offset * s.offset > s.var) {  // the shift is far from the mean: around the mean
    s = stats_around(x, static_cast<T>(s.m + s.offset), count, eps);
  }
  s.var = std::max(s.var, 0.0);
  return s;
}

}  // namespace normlab
