// Group norm on CPU: normlab's formulas (src/normlab/functional/feature.py) as loops, for
// float32 and float64 contiguous inputs (N, C, P) (P: the product of the spatial sizes),
// G groups of K = C / G channels; each (sample, group) row of S = K * P values is
// normalised, and the affine parameters are per channel.
//
//   forward   per row: shifted one-pass statistics (common.h): m (the shift, a rounded mean),
//             offset (the mean of x - m) and rstd; m and rstd are saved with the input for
//             the backward (as many bytes as torch.nn saves); then in one pass
//             xhat = (x - m - offset) * rstd,  y = xhat * weight_c + bias_c
//   backward  per row, with v = x - m, sums per channel c of the group over its P
//             positions and over the row, in one pass (read dy, x):
//             sg_c = sum(dy);  sum(dy * v);  d = sum(v), offset = d / S (as in the forward)
//             sgx_c = sum(dy * xhat) = rstd * (sum(dy * v) - offset * sg_c)
//             a = sum_c w_c sg_c / S;  b = sum_c w_c sgx_c / S
//             dx = rstd * (w_c * dy - a - xhat * b)                  (pass 2: write dx)
//             dweight_c = sum over samples of sgx_c;  dbias_c = sum of sg_c (per-thread
//             partial sums in double, added in thread order)

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

struct Groups {
  int64_t N, C, P, G, K, S;  // K = C / G channels per group, S = K * P values per row
};

// A row's fixed cost (its statistics, the square root, each loop's set-up), in values'
// worth of work (about 20 ns, measured on rows of 3 values): groups of a few values cost
// mostly that, so a task's size counts it, and those inputs use several threads sooner.
constexpr int64_t kRowCost = 32;

int64_t row_grain(int64_t S) { return grain(S + kRowCost); }

Groups groups_of(const Tensor& input, int64_t G) {
  const int64_t N = input.size(0), C = input.size(1);
  const int64_t P = N * C == 0 ? 0 : input.numel() / (N * C);
  return {N, C, P, G, C / G, C / G * P};
}

// y = (x - m - offset) * k * w + b over one row with a weight per value (P = 1).
template <typename T>
void affine_row(const T* __restrict x, T m, T offset, T k, const T* __restrict w,
                const T* __restrict b, T* __restrict y, int64_t count) {
  if (w && b) {
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) y[i] = (x[i] - m - offset) * k * w[i] + b[i];
    return;
  }
#pragma omp simd
  for (int64_t i = 0; i < count; ++i)
    y[i] = (x[i] - m - offset) * k * (w ? w[i] : T(1)) + (b ? b[i] : T(0));
}

template <typename T>
void forward_rows(const T* x, const T* w, const T* b, T* y, T* stats, Groups L, double eps) {
  at::parallel_for(0, L.N * L.G, row_grain(L.S), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* row = x + r * L.S;
      const RowStats<T> s = row_stats(row, L.S, eps);
      const T m = s.m, offset = static_cast<T>(s.offset), k = static_cast<T>(s.rstd);
      const int64_t first_channel = (r % L.G) * L.K;
      if (L.P == 1) {  // (N, C) features: the row runs over the group's channels
        affine_row(row, m, offset, k, w ? w + first_channel : nullptr,
                   b ? b + first_channel : nullptr, y + r * L.S, L.K);
        stats[r * 2] = m;
        stats[r * 2 + 1] = k;
        continue;
      }
      for (int64_t j = 0; j < L.K; ++j) {
        const int64_t c = first_channel + j;
        const T wc = w ? w[c] : T(1), bc = b ? b[c] : T(0);
        const T* __restrict p = row + j * L.P;
        T* __restrict out = y + r * L.S + j * L.P;
#pragma omp simd
        for (int64_t i = 0; i < L.P; ++i) out[i] = (p[i] - m - offset) * k * wc + bc;
      }
      stats[r * 2] = m;
      stats[r * 2 + 1] = k;
    }
  });
}

std::tuple<Tensor, Tensor> group_norm_forward(const Tensor& input,
                                              const std::optional<Tensor>& weight,
                                              const std::optional<Tensor>& bias,
                                              int64_t num_groups, double eps) {
  const Groups L = groups_of(input, num_groups);
  Tensor y = new_cpu(input.sizes(), input);
  Tensor stats = new_cpu({L.N * L.G, 2}, input);  // per row: m, rstd
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "normlab::group_norm_forward", [&] {
    forward_rows(input.data_ptr<scalar_t>(), data_or_null<scalar_t>(weight),
                 data_or_null<scalar_t>(bias), y.data_ptr<scalar_t>(),
                 stats.data_ptr<scalar_t>(), L, eps);
  });
  return {y, stats};
}

// Over one channel's P positions of a row, with v = x - m: sum(dy), sum(dy * v), sum(v)
// (lane sums, common.h, for channels of more than a few vectors).
template <typename T>
std::array<double, 3> channel_sums(const T* __restrict g, const T* __restrict x, T m,
                                   int64_t P) {
  if (P < kShortRow<T>) {
    T sg = 0, sgv = 0, sv = 0;
#pragma omp simd reduction(+ : sg, sgv, sv)
    for (int64_t i = 0; i < P; ++i) {
      const T v = x[i] - m;
      sg += g[i];
      sgv += g[i] * v;
      sv += v;
    }
    return {sg, sgv, sv};
  }
  return lane_sums<T>(P, [&](int64_t i, T& a, T& b, T& c) {
    const T v = x[i] - m;
    a = g[i];
    b = g[i] * v;
    c = v;
  });
}

// dx over one channel's P positions: rstd * (w_c * dy - a - xhat * b).
template <typename T>
void channel_grad(const T* __restrict g, const T* __restrict x, T m, T offset, T k, T wc, T ka,
                  T kb, T* __restrict dx, int64_t P) {
#pragma omp simd
  for (int64_t i = 0; i < P; ++i) dx[i] = k * (wc * g[i] - ka - (x[i] - m - offset) * k * kb);
}

// One row of (N, C) features (P = 1): each value its own channel. sg, sgx add dy and
// dy * xhat per channel; dx = k * (w dy - a - xhat b), a = mean(w dy), b = mean(w dy xhat).
template <typename T>
void row_backward_per_value(const T* __restrict g, const T* __restrict x, T m, T offset, T k,
                            const T* __restrict w, T* __restrict dx, double* __restrict sg,
                            double* __restrict sgx, int64_t count) {
  T a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
  for (int64_t i = 0; i < count; ++i) {
    const T gw = w ? g[i] * w[i] : g[i];
    const T xhat = (x[i] - m - offset) * k;
    a += gw;
    b += gw * xhat;
    sg[i] += g[i];
    sgx[i] += g[i] * xhat;
  }
  if (!dx) return;
  const T ka = static_cast<T>(a / count), kb = static_cast<T>(b / count);
#pragma omp simd
  for (int64_t i = 0; i < count; ++i)
    dx[i] = k * ((w ? w[i] : T(1)) * g[i] - ka - (x[i] - m - offset) * k * kb);
}

// Rows of (sample, group), with the per-channel sums of dy and dy * xhat over each task's
// samples added into `partial` (per thread: C sums of dy, then C of dy * xhat, in double).
template <typename T>
void backward_rows(const T* g, const T* x, const T* stats, const T* w, T* dx, double* partial,
                   int64_t stride, Groups L) {
  at::parallel_for(0, L.N * L.G, row_grain(L.S), [&](int64_t begin, int64_t end) {
    double* sg = partial + at::get_thread_num() * stride;
    double* sgx = sg + L.C;
    std::vector<double> row_g(L.P == 1 ? 0 : L.K), row_gv(L.P == 1 ? 0 : L.K);  // per channel
    for (int64_t r = begin; r < end; ++r) {
      const int64_t first_channel = (r % L.G) * L.K;
      const T m = stats[r * 2], k = stats[r * 2 + 1];
      if (L.P == 1) {
        const T offset = static_cast<T>(sum_centred(x + r * L.S, m, L.S) / L.S);
        row_backward_per_value(g + r * L.S, x + r * L.S, m, offset, k,
                               w ? w + first_channel : nullptr, dx ? dx + r * L.S : nullptr,
                               sg + first_channel, sgx + first_channel, L.K);
        continue;
      }
      // pass 1: per channel sum(dy) and sum(dy * v), and d = sum(v) over the row; then
      // offset = d / S and sum(dy * xhat) = k * (sum(dy * v) - offset * sum(dy))
      double d = 0;
      for (int64_t j = 0; j < L.K; ++j) {
        const int64_t start = r * L.S + j * L.P;
        const auto [sum_g, sum_gv, sum_v] = channel_sums(g + start, x + start, m, L.P);
        row_g[j] = sum_g;
        row_gv[j] = sum_gv;
        d += sum_v;
      }
      const double offset_exact = d / L.S;
      double a = 0, b = 0;
      for (int64_t j = 0; j < L.K; ++j) {
        const int64_t c = first_channel + j;
        const double sum_gx = k * (row_gv[j] - offset_exact * row_g[j]);
        sg[c] += row_g[j];
        sgx[c] += sum_gx;
        const double wc = w ? w[c] : 1.0;
        a += wc * row_g[j];
        b += wc * sum_gx;
      }
      if (!dx) continue;
      const T offset = static_cast<T>(offset_exact);
      const T ka = static_cast<T>(a / L.S), kb = static_cast<T>(b / L.S);
      for (int64_t j = 0; j < L.K; ++j) {
        const int64_t c = first_channel + j, start = r * L.S + j * L.P;
        channel_grad(g + start, x + start, m, offset, k, w ? w[c] : T(1), ka, kb, dx + start,
                     L.P);
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> group_norm_backward(const Tensor& grad_out,
                                                       const Tensor& input, const Tensor& stats,
                                                       const std::optional<Tensor>& weight,
                                                       int64_t num_groups, bool need_input,
                                                       bool need_weight, bool need_bias) {
  Tensor g = grad_out.contiguous();
  const Groups L = groups_of(g, num_groups);
  Tensor dx = need_input ? new_cpu(g.sizes(), input) : Tensor();
  Tensor dw = need_weight ? new_cpu({L.C}, input) : Tensor();
  Tensor db = need_bias ? new_cpu({L.C}, input) : Tensor();
  // dweight, dbias: per-thread sums over the samples (no races), added in thread order
  const int64_t threads = at::get_num_threads();
  const int64_t stride = thread_stride<double>(2 * L.C);
  std::vector<double> partial(threads * stride, 0.0);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "normlab::group_norm_backward", [&] {
    using T = scalar_t;
    backward_rows(g.data_ptr<T>(), input.data_ptr<T>(), stats.data_ptr<T>(),
                  data_or_null<T>(weight), dx.defined() ? dx.data_ptr<T>() : nullptr,
                  partial.data(), stride, L);
    T* out_w = need_weight ? dw.data_ptr<T>() : nullptr;
    T* out_b = need_bias ? db.data_ptr<T>() : nullptr;
    for (int64_t c = 0; c < L.C; ++c) {
      double sum_b = 0, sum_w = 0;
      for (int64_t t = 0; t < threads; ++t) {
        sum_b += partial[t * stride + c];
        sum_w += partial[t * stride + L.C + c];
      }
      if (out_w) out_w[c] = static_cast<T>(sum_w);
      if (out_b) out_b[c] = static_cast<T>(sum_b);
    }
  });
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(normlab, m) {
  m.def("group_norm_forward(Tensor input, Tensor? weight, Tensor? bias, int num_groups,"
        " float eps) -> (Tensor, Tensor)");
  m.def("group_norm_backward(Tensor grad_out, Tensor input, Tensor stats, Tensor? weight,"
        " int num_groups, bool need_input, bool need_weight, bool need_bias)"
        " -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(normlab, CPU, m) {
  m.impl("group_norm_forward", &group_norm_forward);
  m.impl("group_norm_backward", &group_norm_backward);
}

}  // namespace normlab
