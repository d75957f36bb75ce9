// Batch norm on CPU in three passes forward and two backward: normlab's formulas
// (src/normlab/functional/batch.py) as loops, for float32 and float64 contiguous tensors.
//
// The input is viewed as (N, C, S): S = the product of the spatial sizes (1 for (N, C)).
// Per channel c, over its n = N * S values:
//
//   forward   m  = sum(x) / n, rounded to the input dtype            (pass 1: read x)
//             v  = x - m;  d = sum(v);  q = sum(v^2)                  (pass 2: read x)
//             mean = m + d / n;  var = (q - d^2 / n) / n;  invstd = 1 / sqrt(var + eps)
//             y  = v * a + (bias - d / n * a),  a = weight * invstd   (pass 3: write y)
//             running_mean += momentum * (mean - running_mean)         (if given, in place)
//             running_var  += momentum * (var * n / (n - 1) - running_var)
//   backward  from m, saved with invstd and the input (the bytes of a mean), in pass 1:
//             sum_dy = sum(dy);  offset = sum(x - m) / n (d again, exactly as forward)
//             dot = sum(dy * (x - m)) - offset * sum_dy                      (pass 1)
//             dweight = dot * invstd;  dbias = sum_dy
//             dx = dy * a + (x - m - offset) * k2 + k3                 (pass 2: write dx)
//             k2 = -a * invstd * dweight / n;  k3 = -a * sum_dy / n
//
// Sums run per (sample, channel) block of S values in the input dtype (vectorized) and
// across blocks in double. v = x - m is exact in the input dtype when x is
// near m (Sterbenz), so inputs far from zero (mean 1e4, std 1e-2 in float32) normalise as
// accurately as in double; the backward centres on m + offset the same way (the mean
// rounded to float32 would be off by half its ulp: 5 % of such a standard deviation).
// Passes 2 and 3 read x while it is still in cache for a channel of up to a few hundred
// kilobytes. Channels run in parallel (at::parallel_for); the (N, C) layout walks
// rows and keeps per-channel accumulators instead (in the input dtype for 32 rows at a
// time, then in double).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

namespace normlab {
namespace {

using at::Tensor;

struct Layout {
  int64_t N, C, S;
};

Layout layout_of(const Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1);
  const int64_t S = N * C == 0 ? 0 : x.numel() / (N * C);
  return {N, C, S};
}

// Per-channel statistics and the output's scale and shift, from the three sums.
struct ChannelForward {
  double mean, var, invstd, scale, shift;
};

inline ChannelForward finish_forward(double m, double d, double q, double n, double eps,
                                     double weight, double bias) {
  const double var = (q - d * d / n) / n;
  const double invstd = 1.0 / std::sqrt(var + eps);
  const double scale = weight * invstd;
  return {m + d / n, var, invstd, scale, bias - d / n * scale};
}

template <typename T>
void forward_channels(const T* x, T* y, const T* w, const T* b, T* mean, T* invstd, T* var,
                      T* first_mean, Layout L, double eps) {
  const double n = static_cast<double>(L.N * L.S);
  at::parallel_for(0, L.C, grain(L.N * L.S), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      // Sums per (sample, channel) block in the input dtype (vectorized), across blocks in
      // double: each block is short, the total may be long.
      double sum = 0;
      for (int64_t i = 0; i < L.N; ++i) {
        const T* __restrict p = x + (i * L.C + c) * L.S;
        T block = 0;
#pragma omp simd reduction(+ : block)
        for (int64_t s = 0; s < L.S; ++s) block += p[s];
        sum += block;
      }
      const T m = static_cast<T>(sum / n);
      double d = 0, q = 0;
      for (int64_t i = 0; i < L.N; ++i) {
        const T* __restrict p = x + (i * L.C + c) * L.S;
        T block_d = 0, block_q = 0;
#pragma omp simd reduction(+ : block_d, block_q)
        for (int64_t s = 0; s < L.S; ++s) {
          const T v = p[s] - m;
          block_d += v;
          block_q += v * v;
        }
        d += block_d;
        q += block_q;
      }
      const ChannelForward f =
          finish_forward(m, d, q, n, eps, w ? w[c] : 1.0, b ? b[c] : 0.0);
      const T scale = static_cast<T>(f.scale), shift = static_cast<T>(f.shift);
      for (int64_t i = 0; i < L.N; ++i) {
        const T* __restrict p = x + (i * L.C + c) * L.S;
        T* __restrict out = y + (i * L.C + c) * L.S;
#pragma omp simd
        for (int64_t s = 0; s < L.S; ++s) out[s] = (p[s] - m) * scale + shift;
      }
      mean[c] = static_cast<T>(f.mean);
      invstd[c] = static_cast<T>(f.invstd);
      var[c] = static_cast<T>(f.var);
      first_mean[c] = m;
    }
  });
}

// Per-column sums over `rows` rows of `width` columns: term(i, c, a, b, e) sets the terms
// of row i, column c (T&, up to three sums). Vectorized across the columns; each column
// adds up to kRowBlock rows in T, then moves on in double (the lanes' rule of common.h).
// A term left unset is -0, which x + (-0) leaves exactly as it was: the compiler drops
// the additions of unused sums (x + 0 would turn -0 into +0, so it must keep those).
constexpr int64_t kRowBlock = 32;

template <typename T, typename Term>
void column_sums(int64_t rows, int64_t width, Term term, double* __restrict total_a,
                 double* __restrict total_b, double* __restrict total_c) {
  std::vector<T> scratch(3 * width);
  T* __restrict block_a = scratch.data();
  T* __restrict block_b = block_a + width;
  T* __restrict block_c = block_b + width;
  for (int64_t first = 0; first < rows; first += kRowBlock) {
    std::fill(scratch.begin(), scratch.end(), T(0));
    const int64_t last = std::min(rows, first + kRowBlock);
    for (int64_t i = first; i < last; ++i) {
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) {
        T a = T(-0.0), b = T(-0.0), e = T(-0.0);
        term(i, c, a, b, e);
        block_a[c] += a;
        block_b[c] += b;
        block_c[c] += e;
      }
    }
#pragma omp simd
    for (int64_t c = 0; c < width; ++c) {
      total_a[c] += block_a[c];
      total_b[c] += block_b[c];
      total_c[c] += block_c[c];
    }
  }
}

template <typename T>
void forward_rows(const T* x, T* y, const T* w, const T* b, T* mean, T* invstd, T* var,
                  T* first_mean, Layout L, double eps) {
  const double n = static_cast<double>(L.N);
  at::parallel_for(0, L.C, grain(L.N, 64), [&](int64_t begin, int64_t end) {
    const int64_t width = end - begin;
    std::vector<double> sums(4 * width, 0.0);  // sum, d, q, unused
    double *sum = sums.data(), *d = sum + width, *q = d + width, *unused = q + width;
    std::vector<T> columns(3 * width);
    T *m = columns.data(), *scale = m + width, *shift = scale + width;
    const T* base = x + begin;
    column_sums<T>(
        L.N, width, [&](int64_t i, int64_t c, T& a, T&, T&) { a = base[i * L.C + c]; }, sum,
        unused, unused);
    for (int64_t c = 0; c < width; ++c) m[c] = static_cast<T>(sum[c] / n);
    column_sums<T>(
        L.N, width,
        [&](int64_t i, int64_t c, T& a, T& e, T&) {
          const T v = base[i * L.C + c] - m[c];
          a = v;
          e = v * v;
        },
        d, q, unused);
    for (int64_t c = 0; c < width; ++c) {
      const int64_t k = begin + c;
      const ChannelForward f =
          finish_forward(m[c], d[c], q[c], n, eps, w ? w[k] : 1.0, b ? b[k] : 0.0);
      scale[c] = static_cast<T>(f.scale);
      shift[c] = static_cast<T>(f.shift);
      mean[k] = static_cast<T>(f.mean);
      invstd[k] = static_cast<T>(f.invstd);
      var[k] = static_cast<T>(f.var);
      first_mean[k] = m[c];
    }
    for (int64_t i = 0; i < L.N; ++i) {
      const T* __restrict row = x + i * L.C + begin;
      T* __restrict out = y + i * L.C + begin;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) out[c] = (row[c] - m[c]) * scale[c] + shift[c];
    }
  });
}

template <typename T>
void update_running_stats(T* running_mean, T* running_var, const T* mean, const T* var,
                          Layout L, double momentum) {
  const double n = static_cast<double>(L.N * L.S);
  const double unbias = n > 1 ? n / (n - 1) : 1.0;  // n == 1 is rejected before, in Python
  for (int64_t c = 0; c < L.C; ++c) {
    if (running_mean) running_mean[c] += static_cast<T>(momentum * (mean[c] - running_mean[c]));
    if (running_var)
      running_var[c] += static_cast<T>(momentum * (var[c] * unbias - running_var[c]));
  }
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_forward(
    const Tensor& input, const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
    const std::optional<Tensor>& running_mean, const std::optional<Tensor>& running_var,
    double momentum, double eps) {
  const Layout L = layout_of(input);
  Tensor out = at::empty_like(input);
  Tensor mean = at::empty({L.C}, input.options());
  Tensor invstd = at::empty({L.C}, input.options());
  Tensor var = at::empty({L.C}, input.options());
  Tensor first_mean = at::empty({L.C}, input.options());  // m: the backward centres on it
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "normlab::batch_norm_forward", [&] {
    auto run = L.S == 1 ? forward_rows<scalar_t> : forward_channels<scalar_t>;
    run(input.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), data_or_null<scalar_t>(weight),
        data_or_null<scalar_t>(bias), mean.data_ptr<scalar_t>(), invstd.data_ptr<scalar_t>(),
        var.data_ptr<scalar_t>(), first_mean.data_ptr<scalar_t>(), L, eps);
    update_running_stats(data_or_null<scalar_t>(running_mean),
                         data_or_null<scalar_t>(running_var), mean.data_ptr<scalar_t>(),
                         var.data_ptr<scalar_t>(), L, momentum);
  });
  return {out, first_mean, invstd};
}

// Backward: per channel coefficients from the two sums.
struct ChannelBackward {
  double dweight, dbias, a, k2, k3;
};

inline ChannelBackward finish_backward(double sum_dy, double dot, double n, double invstd,
                                       double weight) {
  const double dweight = dot * invstd;
  const double a = weight * invstd;
  return {dweight, sum_dy, a, -a * invstd * dweight / n, -a * sum_dy / n};
}

template <typename T>
void backward_channels(const T* dy, const T* x, const T* first_mean, const T* invstd,
                       const T* w, T* dx, T* dweight, T* dbias, Layout L) {
  const double n = static_cast<double>(L.N * L.S);
  at::parallel_for(0, L.C, grain(L.N * L.S), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const T m = first_mean[c];
      double sum_dy = 0, dot = 0, d = 0;  // per block in the input dtype, then double
      for (int64_t i = 0; i < L.N; ++i) {
        const T* __restrict g = dy + (i * L.C + c) * L.S;
        const T* __restrict p = x + (i * L.C + c) * L.S;
        T block_dy = 0, block_dot = 0, block_d = 0;
#pragma omp simd reduction(+ : block_dy, block_dot, block_d)
        for (int64_t s = 0; s < L.S; ++s) {
          const T v = p[s] - m;
          block_dy += g[s];
          block_dot += g[s] * v;
          block_d += v;
        }
        sum_dy += block_dy;
        dot += block_dot;
        d += block_d;
      }
      const T offset = static_cast<T>(d / n);  // mean = m + offset
      dot -= offset * sum_dy;                  // sum(dy * (x - mean))
      const ChannelBackward k = finish_backward(sum_dy, dot, n, invstd[c], w ? w[c] : 1.0);
      const T a = static_cast<T>(k.a), k2 = static_cast<T>(k.k2), k3 = static_cast<T>(k.k3);
      for (int64_t i = 0; i < L.N; ++i) {
        const T* __restrict g = dy + (i * L.C + c) * L.S;
        const T* __restrict p = x + (i * L.C + c) * L.S;
        T* __restrict out = dx + (i * L.C + c) * L.S;
#pragma omp simd
        for (int64_t s = 0; s < L.S; ++s) out[s] = g[s] * a + (p[s] - m - offset) * k2 + k3;
      }
      dweight[c] = static_cast<T>(k.dweight);
      dbias[c] = static_cast<T>(k.dbias);
    }
  });
}

template <typename T>
void backward_rows(const T* dy, const T* x, const T* first_mean, const T* invstd, const T* w,
                   T* dx, T* dweight, T* dbias, Layout L) {
  const double n = static_cast<double>(L.N);
  at::parallel_for(0, L.C, grain(L.N, 64), [&](int64_t begin, int64_t end) {
    const int64_t width = end - begin;
    std::vector<double> sums(3 * width, 0.0);
    double *sum_dy = sums.data(), *dot = sum_dy + width, *d = dot + width;
    std::vector<T> columns(4 * width);
    T *a = columns.data(), *k2 = a + width, *k3 = k2 + width, *offset = k3 + width;
    const T* m = first_mean + begin;
    const T* g_base = dy + begin;
    const T* x_base = x + begin;
    column_sums<T>(
        L.N, width,
        [&](int64_t i, int64_t c, T& sa, T& sb, T& se) {
          const T g = g_base[i * L.C + c];
          const T v = x_base[i * L.C + c] - m[c];
          sa = g;
          sb = g * v;
          se = v;
        },
        sum_dy, dot, d);
    for (int64_t c = 0; c < width; ++c) {
      const int64_t k = begin + c;
      offset[c] = static_cast<T>(d[c] / n);
      const double centred_dot = dot[c] - offset[c] * sum_dy[c];
      const ChannelBackward f =
          finish_backward(sum_dy[c], centred_dot, n, invstd[k], w ? w[k] : 1.0);
      a[c] = static_cast<T>(f.a);
      k2[c] = static_cast<T>(f.k2);
      k3[c] = static_cast<T>(f.k3);
      dweight[k] = static_cast<T>(f.dweight);
      dbias[k] = static_cast<T>(f.dbias);
    }
    for (int64_t i = 0; i < L.N; ++i) {
      const T* __restrict g = dy + i * L.C + begin;
      const T* __restrict row = x + i * L.C + begin;
      T* __restrict out = dx + i * L.C + begin;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c)
        out[c] = g[c] * a[c] + (row[c] - m[c] - offset[c]) * k2[c] + k3[c];
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_backward(const Tensor& grad_out,
                                                       const Tensor& input,
                                                       const Tensor& first_mean,
                                                       const Tensor& invstd,
                                                       const std::optional<Tensor>& weight) {
  const Layout L = layout_of(input);
  Tensor dy = grad_out.contiguous();
  Tensor dx = at::empty_like(input);
  Tensor dweight = at::empty({L.C}, input.options());
  Tensor dbias = at::empty({L.C}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "normlab::batch_norm_backward", [&] {
    auto run = L.S == 1 ? backward_rows<scalar_t> : backward_channels<scalar_t>;
    run(dy.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), first_mean.data_ptr<scalar_t>(),
        invstd.data_ptr<scalar_t>(), data_or_null<scalar_t>(weight), dx.data_ptr<scalar_t>(),
        dweight.data_ptr<scalar_t>(), dbias.data_ptr<scalar_t>(), L);
  });
  return {dx, dweight, dbias};
}

// y = x * scale[c] + shift[c]: batch norm in evaluation, in one pass.
template <typename T>
void affine_blocks(const T* x, const T* scale, const T* shift, T* y, Layout L) {
  at::parallel_for(0, L.N * L.C, grain(L.S), [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t c = block % L.C;
      const T a = scale[c], b = shift[c];
      const T* p = x + block * L.S;
      T* q = y + block * L.S;
#pragma omp simd
      for (int64_t s = 0; s < L.S; ++s) q[s] = p[s] * a + b;
    }
  });
}

Tensor channel_affine(const Tensor& input, const Tensor& scale, const Tensor& shift) {
  Tensor out = at::empty_like(input);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "normlab::channel_affine", [&] {
    affine_blocks(input.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
                  shift.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), layout_of(input));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(normlab, m) {
  m.def("batch_norm_forward(Tensor input, Tensor? weight, Tensor? bias,"
        " Tensor(a!)? running_mean, Tensor(b!)? running_var, float momentum, float eps)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("batch_norm_backward(Tensor grad_out, Tensor input, Tensor first_mean, Tensor invstd,"
        " Tensor? weight) -> (Tensor, Tensor, Tensor)");
  m.def("channel_affine(Tensor input, Tensor scale, Tensor shift) -> Tensor");
}

TORCH_LIBRARY_IMPL(normlab, CPU, m) {
  m.impl("batch_norm_forward", &batch_norm_forward);
  m.impl("batch_norm_backward", &batch_norm_backward);
  m.impl("channel_affine", &channel_affine);
}

}  // namespace normlab
