// RMS norm on CPU: normlab's formulas (src/normlab/functional/rmsnorm.py) as loops, for
// float32 and float64 rows (R, D), and as one operator with its backward in C++.
//
//   forward   per row, in one pass: q = sum(x^2) (lane sums, common.h),
//             rstd = 1 / sqrt(q / D + eps), saved with the input for the backward (one
//             number per row, as torch.nn saves); then in one pass  y = x * rstd * weight
//   backward  per row, with G = dy * weight, in one pass (read dy, x):
//             c = sum(G * x), so that mean(G * xhat) = rstd * c / D; then in one pass
//             (read dy, x; write dx):  dx = rstd * G - x * (rstd^3 * c / D),
//             dweight += dy * x * rstd  (over rows, in per-thread partial sums)
//
//   normlab::rms_norm(input, normalized_shape, weight?, eps) -> out
//       over the trailing dims given by normalized_shape (weight of that shape); any
//       strides (made contiguous); registered for Autograd (a torch::autograd::Function
//       whose backward is the kernels' closed form, or the same closed form in
//       differentiable ATen operations when a graph of the backward is wanted), CPU
//       (the forward kernel alone) and Meta (shapes only, for FakeTensor tracing:
//       torch.compile, torch.export)
//   normlab::rms_norm_forward(input, weight?, width, eps) -> (out, rstd)
//   normlab::rms_norm_backward(grad_out, input, rstd, weight?, width, need_input,
//                              need_weight)
//       -> (dx, dweight)                                       the kernels, on contiguous rows

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <mutex>
#include <optional>
#include <tuple>
#include <vector>

#include "autograd_node.h"
#include "common.h"

namespace normlab {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using Pair = std::tuple<Tensor, Tensor>;

// ------------------------------------------------------------------------------------------
// The kernels
// ------------------------------------------------------------------------------------------

// sum(x^2) over `count` values: one plain vectorized loop for short rows, lanes otherwise.
template <typename T>
double sum_of_squares(const T* __restrict x, int64_t count) {
  if (count < kShortRow<T>) {
    T q = 0;
#pragma omp simd reduction(+ : q)
    for (int64_t i = 0; i < count; ++i) q += x[i] * x[i];
    return q;
  }
  return lane_sums<T>(count, [&](int64_t i, T& a, T&, T&) { a = x[i] * x[i]; })[0];
}

// sum(dy * w * x) over `count` values (kWeight: whether there is a weight).
template <typename T, bool kWeight>
double sum_of_gx(const T* __restrict g, const T* __restrict x, const T* __restrict w,
                 int64_t count) {
  if (count < kShortRow<T>) {
    T c = 0;
#pragma omp simd reduction(+ : c)
    for (int64_t i = 0; i < count; ++i) c += (kWeight ? g[i] * w[i] : g[i]) * x[i];
    return c;
  }
  return lane_sums<T>(count, [&](int64_t i, T& a, T&, T&) {
    a = (kWeight ? g[i] * w[i] : g[i]) * x[i];
  })[0];
}

template <typename T, bool kWeight>
void row_forward(const T* __restrict x, const T* __restrict w, T* __restrict y, T* rstd,
                 int64_t D, double eps) {
  const T k = static_cast<T>(1.0 / std::sqrt(sum_of_squares(x, D) / D + eps));
#pragma omp simd
  for (int64_t i = 0; i < D; ++i) y[i] = kWeight ? x[i] * k * w[i] : x[i] * k;
  *rstd = k;
}

// The rows' count: the product of the leading dims (also when a trailing size is 0).
int64_t rows_of(const Tensor& input, int64_t width) {
  return width == 0 ? 0 : input.numel() / width;
}

Pair rms_norm_forward(const Tensor& input, const OptTensor& weight, int64_t width, double eps) {
  const int64_t R = rows_of(input, width);
  Tensor y = new_cpu(input.sizes(), input);
  Tensor rstd = new_cpu({R}, input);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "normlab::rms_norm_forward", [&] {
    using T = scalar_t;
    const T* x = input.data_ptr<T>();
    const T* w = data_or_null<T>(weight);
    T* out = y.data_ptr<T>();
    T* k = rstd.data_ptr<T>();
    auto row = w ? row_forward<T, true> : row_forward<T, false>;
    at::parallel_for(0, R, grain(width), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        row(x + r * width, w, out + r * width, k + r, width, eps);
    });
  });
  return {y, rstd};
}

// One row's backward: dx (if dx) and the column sums sw += dy * x * rstd (if sw).
template <typename T, bool kWeight>
void row_backward(const T* __restrict g, const T* __restrict x, T k, const T* __restrict w,
                  T* __restrict dx, T* __restrict sw, int64_t D) {
  if (dx) {
    const T kc = static_cast<T>(k * k * k * sum_of_gx<T, kWeight>(g, x, w, D) / D);
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) dx[i] = k * (kWeight ? g[i] * w[i] : g[i]) - x[i] * kc;
  }
  if (sw) {
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) sw[i] += g[i] * (x[i] * k);
  }
}

template <typename T>
void backward_rows(const T* g, const T* x, const T* rstd, const T* w, T* dx, T* dw, int64_t R,
                   int64_t D) {
  // dweight: per-thread column sums in the input dtype, added in a fixed order at the end.
  const int64_t threads = at::get_num_threads();
  const int64_t stride = thread_stride<T>(D);
  std::vector<T> partial(dw ? threads * stride : 0, T(0));
  auto row = w ? row_backward<T, true> : row_backward<T, false>;
  at::parallel_for(0, R, grain(D), [&](int64_t begin, int64_t end) {
    T* sw = dw ? partial.data() + at::get_thread_num() * stride : nullptr;
    for (int64_t r = begin; r < end; ++r)
      row(g + r * D, x + r * D, rstd[r], w, dx ? dx + r * D : nullptr, sw, D);
  });
  for (int64_t i = 0; i < D && dw; ++i) {
    T sum = 0;
    for (int64_t t = 0; t < threads; ++t) sum += partial[t * stride + i];
    dw[i] = sum;
  }
}

Pair rms_norm_backward(const Tensor& grad_out, const Tensor& input, const Tensor& rstd,
                       const OptTensor& weight, int64_t width, bool need_input,
                       bool need_weight) {
  const int64_t R = rstd.size(0), D = width;
  const Tensor g = grad_out.contiguous();
  Tensor dx = need_input ? new_cpu(input.sizes(), input) : Tensor();
  Tensor dw = need_weight ? new_cpu({D}, input) : Tensor();
  if (need_weight && R == 0) dw.zero_();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "normlab::rms_norm_backward", [&] {
    auto ptr = [](Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    backward_rows(g.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>(),
                  data_or_null<scalar_t>(weight), ptr(dx), ptr(dw), R, D);
  });
  return {dx, dw};
}

// ------------------------------------------------------------------------------------------
// The operator: checks, the kernels through the dispatcher, autograd
// ------------------------------------------------------------------------------------------

// Through the dispatcher: CPU tensors reach the loops above, fake ones the Meta code below.
Pair forward_op(const Tensor& x, const OptTensor& w, int64_t width, double eps) {
  static auto handle = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("normlab::rms_norm_forward", "")
                           .typed<Pair(const Tensor&, const OptTensor&, int64_t, double)>();
  return handle.call(x, w, width, eps);
}

Pair backward_op(const Tensor& dy, const Tensor& x, const Tensor& rstd, const OptTensor& w,
                 int64_t width, bool nx, bool nw) {
  static auto handle =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("normlab::rms_norm_backward", "")
          .typed<Pair(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, int64_t,
                      bool, bool)>();
  return handle.call(dy, x, rstd, w, width, nx, nw);
}

bool given(const OptTensor& t) { return t.has_value() && t->defined(); }

OptTensor contiguous(const OptTensor& t) {
  return given(t) ? OptTensor(t->contiguous()) : OptTensor();
}

// Whether `shape` is the trailing sizes of `input` (symbolic sizes too: FakeTensor tracing
// with dynamic shapes, where those sizes are then fixed).
bool trails(const Tensor& input, at::IntArrayRef shape) {
  const int64_t k = static_cast<int64_t>(shape.size()), lead = input.dim() - k;
  if (k < 1 || lead < 0) return false;
  for (int64_t i = 0; i < k; ++i) {
    if (input.sym_size(lead + i) != shape[i]) return false;
  }
  return true;
}

// The width of a row, after the checks of the arguments.
int64_t checked_width(const Tensor& input, at::IntArrayRef shape, const OptTensor& weight) {
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "normlab::rms_norm: expected a float32 or float64 input, got ",
              input.scalar_type());
  TORCH_CHECK(!given(weight) || weight->scalar_type() == input.scalar_type(),
              "normlab::rms_norm: weight must have the input's dtype ", input.scalar_type(),
              ", got ", weight->scalar_type());
  TORCH_CHECK(!given(weight) || (weight->dim() == static_cast<int64_t>(shape.size()) &&
                                 trails(*weight, shape)),
              "normlab::rms_norm: expected weight of shape ", shape, ", got ",
              weight->sym_sizes());
  TORCH_CHECK(trails(input, shape), "normlab::rms_norm: normalized_shape ", shape,
              " must be the trailing dims of the input of shape ", input.sym_sizes());
  return c10::multiply_integers(shape);
}

// Differentiable closed form, for a graph of the backward (double backward):
// xhat = x * rstd, rstd = rsqrt(mean(x^2) + eps) over `feature`;  G = dy * weight;
// dx = rstd * (G - xhat * mean(G * xhat));  dweight = sum over `rows` of dy * xhat.
Pair differentiable_grads(const Tensor& dy, const Tensor& x, const Tensor& w,
                          at::IntArrayRef rows, at::IntArrayRef feature, double eps) {
  const Tensor rstd = (x.pow(2).mean(feature, true) + eps).rsqrt();
  const Tensor xhat = x * rstd;
  const Tensor g = w.defined() ? dy * w : dy;
  const Tensor dx = rstd * (g - xhat * (g * xhat).mean(feature, true));
  return {dx, (dy * xhat).sum(rows)};
}

// The backward of one call, a typed node (as torch's generated nodes are): its next edges
// are those of (input, weight), weight's empty when absent.
struct RMSNormBackward : public torch::autograd::Node {
  torch::autograd::SavedVariable x_, rstd_, weight_;
  std::vector<int64_t> shape_;
  double eps_ = 0.0;

  std::string name() const override { return "normlab::RMSNormBackward"; }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!grads[0].defined()) return {Tensor(), Tensor()};
    const Tensor x = x_.unpack(), w = weight_.unpack();
    const bool need_x = task_should_compute_output(0), need_w = task_should_compute_output(1);
    const Tensor dy = grads[0].contiguous().to(x.scalar_type());
    Tensor dx, dw;
    if (at::GradMode::is_enabled()) {  // a graph of the backward: differentiable ATen ops
      const int64_t k = static_cast<int64_t>(shape_.size());
      std::vector<int64_t> rows, feature;
      for (int64_t d = 0; d < x.dim(); ++d) (d < x.dim() - k ? rows : feature).push_back(d);
      std::tie(dx, dw) = differentiable_grads(dy, x, w, rows, feature, eps_);
    } else {
      std::tie(dx, dw) = backward_op(dy, x, rstd_.unpack(),
                                     w.defined() ? OptTensor(w) : OptTensor(),
                                     c10::multiply_integers(shape_), need_x, need_w);
      if (dw.defined() && shape_.size() > 1) dw = dw.view(shape_);
    }
    return {need_x ? dx : Tensor(), need_w ? dw : Tensor()};
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    x_.reset_data();
    rstd_.reset_data();
    weight_.reset_data();
  }
};

Tensor rms_norm(const Tensor& input, at::IntArrayRef normalized_shape, const OptTensor& weight,
                double eps) {
  const int64_t width = checked_width(input, normalized_shape, weight);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Tensor x = input.contiguous();
  const OptTensor w = contiguous(weight);
  auto [out, rstd] = forward_op(x, w, width, eps);
  auto save = [&](RMSNormBackward& node) {
    node.x_ = torch::autograd::SavedVariable(x, false);
    node.rstd_ = torch::autograd::SavedVariable(rstd, false);
    node.weight_ = torch::autograd::SavedVariable(w.has_value() ? *w : Tensor(), false);
    node.shape_ = normalized_shape.vec();
    node.eps_ = eps;
  };
  record_backward<RMSNormBackward>(out, save, input, weight);
  return out;
}

// Below autograd (no graph recorded): the forward kernel alone.
Tensor rms_norm_kernel(const Tensor& input, at::IntArrayRef normalized_shape,
                       const OptTensor& weight, double eps) {
  const int64_t width = checked_width(input, normalized_shape, weight);
  return std::get<0>(rms_norm_forward(input.contiguous(), contiguous(weight), width, eps));
}

// ------------------------------------------------------------------------------------------
// Meta: the kernels' output shapes, for FakeTensor tracing
// ------------------------------------------------------------------------------------------

// Symbolic sizes (dynamic shapes) are kept symbolic: sym_numel, empty_symint.
Pair forward_meta(const Tensor& x, const OptTensor&, int64_t width, double) {
  const c10::SymInt rows = width == 0 ? c10::SymInt(0) : x.sym_numel() / width;
  return {at::empty_like(x, at::MemoryFormat::Contiguous),
          at::empty_symint({rows}, x.options())};
}

Pair backward_meta(const Tensor&, const Tensor& x, const Tensor&, const OptTensor&,
                   int64_t width, bool nx, bool nw) {
  return {nx ? at::empty_like(x, at::MemoryFormat::Contiguous) : Tensor(),
          nw ? at::empty({width}, x.options()) : Tensor()};
}

Tensor rms_norm_meta(const Tensor& x, at::IntArrayRef normalized_shape, const OptTensor& weight,
                     double) {
  checked_width(x, normalized_shape, weight);
  return at::empty_like(x, at::MemoryFormat::Contiguous);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(normlab, m) {
  m.def("rms_norm(Tensor input, int[] normalized_shape, Tensor? weight, float eps) -> Tensor");
  m.def("rms_norm_forward(Tensor input, Tensor? weight, int width, float eps)"
        " -> (Tensor, Tensor)");
  m.def("rms_norm_backward(Tensor grad_out, Tensor input, Tensor rstd, Tensor? weight,"
        " int width, bool need_input, bool need_weight) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(normlab, Autograd, m) { m.impl("rms_norm", &rms_norm); }

TORCH_LIBRARY_IMPL(normlab, CPU, m) {
  m.impl("rms_norm", &rms_norm_kernel);
  m.impl("rms_norm_forward", &rms_norm_forward);
  m.impl("rms_norm_backward", &rms_norm_backward);
}

TORCH_LIBRARY_IMPL(normlab, Meta, m) {
  m.impl("rms_norm", &rms_norm_meta);
  m.impl("rms_norm_forward", &forward_meta);
  m.impl("rms_norm_backward", &backward_meta);
}

}  // namespace normlab
