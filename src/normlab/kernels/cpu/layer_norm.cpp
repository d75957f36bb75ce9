// Layer norm on CPU: normlab's formulas (src/normlab/functional/feature.py) as loops, for
// float32 and float64 contiguous rows (R, D): each row of D values is normalised.
//
//   forward   per row: shifted one-pass statistics (common.h): m (the shift, a rounded mean),
//             offset (the mean of x - m) and rstd; m and rstd are saved with the input for
//             the backward (as many bytes as torch.nn saves: input, mean, rstd); then in
//             one pass  xhat = (x - m - offset) * rstd,  y = xhat * weight + bias
//   backward  per row, G = dy * weight and, in one pass (read dy, x), offset = mean(x - m)
//             again, a = sum(G) / D and b = sum(G * xhat) / D (from sum(G * (x - m)));
//             then in one pass (read dy, x; write dx), with xhat recomputed as forward:
//             dx = rstd * (G - a - xhat * b);  dweight += dy * xhat;  dbias += dy
//             (dweight, dbias over rows, in per-thread partial sums)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <vector>

#include "common.h"

namespace normlab {
namespace {

using at::Tensor;

// One row's y; kWeight/kBias: whether there is a weight/bias (copies of the loop without
// branches, so that each vectorizes). Writes m and rstd to stats[0..1].
template <typename T, bool kWeight, bool kBias>
void row_forward(const T* __restrict x, const T* __restrict w, const T* __restrict b,
                 T* __restrict y, T* __restrict stats, int64_t D, double eps) {
  const RowStats<T> s = row_stats(x, D, eps);
  const T m = s.m, offset = static_cast<T>(s.offset), k = static_cast<T>(s.rstd);
#pragma omp simd
  for (int64_t i = 0; i < D; ++i) {
    const T v = (x[i] - m - offset) * k;
    y[i] = (kWeight ? v * w[i] : v) + (kBias ? b[i] : T(0));
  }
  stats[0] = m;
  stats[1] = k;
}

std::tuple<Tensor, Tensor> layer_norm_forward(const Tensor& input,
                                              const std::optional<Tensor>& weight,
                                              const std::optional<Tensor>& bias, int64_t width,
                                              double eps) {
  const int64_t R = input.numel() / width;
  Tensor y = new_cpu(input.sizes(), input);
  Tensor stats = new_cpu({R, 2}, input);  // per row: m, rstd
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "normlab::layer_norm_forward", [&] {
    using T = scalar_t;
    const T* x = input.data_ptr<T>();
    const T* w = data_or_null<T>(weight);
    const T* b = data_or_null<T>(bias);
    T* out = y.data_ptr<T>();
    T* st = stats.data_ptr<T>();
    auto row = w ? (b ? row_forward<T, true, true> : row_forward<T, true, false>)
                 : (b ? row_forward<T, false, true> : row_forward<T, false, false>);
    at::parallel_for(0, R, grain(width), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        row(x + r * width, w, b, out + r * width, st + r * 2, width, eps);
    });
  });
  return {y, stats};
}

// Pass 1 of a row's backward: sum(x - m), sum(G) and sum(G * (x - m)), G = dy * weight
// (kWeight) or dy: one vectorized loop in T for short rows, lane sums (common.h) for long
// ones, whose several partial sums per value keep the additions from waiting on each other.
template <typename T, bool kWeight>
std::array<double, 3> gradient_sums(const T* __restrict g, const T* __restrict x, T m,
                                    const T* __restrict w, int64_t D) {
  if (D < kShortRow<T>) {
    T d = 0, a = 0, c = 0;
#pragma omp simd reduction(+ : d, a, c)
    for (int64_t i = 0; i < D; ++i) {
      const T v = x[i] - m;
      const T gw = kWeight ? g[i] * w[i] : g[i];
      d += v;
      a += gw;
      c += gw * v;
    }
    return {d, a, c};
  }
  return lane_sums<T>(D, [&](int64_t i, T& d, T& a, T& c) {
    const T v = x[i] - m;
    const T gw = kWeight ? g[i] * w[i] : g[i];
    d = v;
    a = gw;
    c = gw * v;
  });
}

// One row's backward (kWeight: whether G = dy * weight or G = dy), in two passes:
//   pass 1 (read dy, x):  d = sum(x - m),  a = sum(G),  c = sum(G * (x - m))
//            offset = d / D;  b = sum(G * xhat) = k * (c - offset * a)
//   pass 2 (read dy, x):  dx = k * (G - a / D - xhat * b / D) (if dx), and the column
//            sums sw += dy * xhat, sb += dy (if sw)
template <typename T, bool kWeight>
void row_backward(const T* __restrict g, const T* __restrict x, T m, T k,
                  const T* __restrict w, T* __restrict dx, T* __restrict sw,
                  T* __restrict sb, int64_t D) {
  const auto [d, a, c] = gradient_sums<T, kWeight>(g, x, m, w, D);
  const T offset = static_cast<T>(d / D);
  const T ka = static_cast<T>(a / D), kb = static_cast<T>(k * (c - d / D * a) / D);
  if (dx && sw) {
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) {
      const T xhat = (x[i] - m - offset) * k;
      const T gw = kWeight ? g[i] * w[i] : g[i];
      dx[i] = k * (gw - ka - xhat * kb);
      sw[i] += g[i] * xhat;
      sb[i] += g[i];
    }
  } else if (dx) {
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) {
      const T gw = kWeight ? g[i] * w[i] : g[i];
      dx[i] = k * (gw - ka - (x[i] - m - offset) * k * kb);
    }
  } else if (sw) {
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) {
      sw[i] += g[i] * ((x[i] - m - offset) * k);
      sb[i] += g[i];
    }
  }
}

template <typename T>
void backward_rows(const T* g, const T* x, const T* stats, const T* w, T* dx, T* dw, T* db,
                   int64_t R, int64_t D) {
  // dweight and dbias: per-thread column sums, added at the end (no races, fixed order),
  // in the input dtype as torch.nn does (a sum over rows, not within one).
  const int64_t threads = at::get_num_threads();
  const bool sums = dw || db;
  const int64_t stride = thread_stride<T>(2 * D);
  std::vector<T> partial(sums ? threads * stride : 0, T(0));
  auto row = w ? row_backward<T, true> : row_backward<T, false>;
  at::parallel_for(0, R, grain(D), [&](int64_t begin, int64_t end) {
    T* sw = sums ? partial.data() + at::get_thread_num() * stride : nullptr;
    T* sb = sums ? sw + D : nullptr;
    for (int64_t r = begin; r < end; ++r) {
      row(g + r * D, x + r * D, stats[r * 2], stats[r * 2 + 1], w, dx ? dx + r * D : nullptr,
          sw, sb, D);
    }
  });
  for (int64_t i = 0; i < D && sums; ++i) {
    T sum_w = 0, sum_b = 0;
    for (int64_t t = 0; t < threads; ++t) {
      sum_w += partial[t * stride + i];
      sum_b += partial[t * stride + D + i];
    }
    if (dw) dw[i] = sum_w;
    if (db) db[i] = sum_b;
  }
}

std::tuple<Tensor, Tensor, Tensor> layer_norm_backward(const Tensor& grad_out,
                                                       const Tensor& input, const Tensor& stats,
                                                       const std::optional<Tensor>& weight,
                                                       bool need_input, bool need_weight,
                                                       bool need_bias) {
  const int64_t R = stats.size(0), D = input.numel() / R;
  Tensor g = grad_out.contiguous();
  Tensor dx = need_input ? new_cpu(input.sizes(), input) : Tensor();
  Tensor dw = need_weight ? new_cpu({D}, input) : Tensor();
  Tensor db = need_bias ? new_cpu({D}, input) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "normlab::layer_norm_backward", [&] {
    auto ptr = [](Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    backward_rows(g.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(),
                  stats.data_ptr<scalar_t>(), data_or_null<scalar_t>(weight), ptr(dx), ptr(dw),
                  ptr(db), R, D);
  });
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(normlab, m) {
  m.def("layer_norm_forward(Tensor input, Tensor? weight, Tensor? bias, int width, float eps)"
        " -> (Tensor, Tensor)");
  m.def("layer_norm_backward(Tensor grad_out, Tensor input, Tensor stats, Tensor? weight,"
        " bool need_input, bool need_weight, bool need_bias) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(normlab, CPU, m) {
  m.impl("layer_norm_forward", &layer_norm_forward);
  m.impl("layer_norm_backward", &layer_norm_backward);
}

}  // namespace normlab
