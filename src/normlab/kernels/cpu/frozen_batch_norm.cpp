// Frozen batch norm on CPU: evaluation-mode batch norm with fixed statistics and affine
// (src/normlab/functional/frozen.py holds the formula), as one operator whose backward is
// registered for autograd in C++:
//
//   normlab::frozen_batch_norm(input, weight, bias, running_mean, running_var, eps) -> out
//       out = (x - running_mean_c) * scale_c + bias_c,  scale_c = weight_c / sqrt(running_var_c + eps)
//       on (N, C, *) in its own memory format (contiguous or channels-last);
//       dL/dx = dL/dy * scale_c, the only gradient: the four (C) tensors are buffers that
//       must not require a gradient (the Python caller takes the formula when they do)
//
// One pass each way, where the formula in tensor operations makes three forward (centre,
// scale, shift) and autograd records three nodes. The input is centred before it is
// scaled, as in the formula: x * scale + (bias - mean * scale) would lose every digit of
// an output of order one when x and the mean are large and close.
//
// Inputs: float32 or float64 CPU tensors of one dtype, (N, C, *) contiguous or (N, C, H, W)
// channels-last. The scale is computed in double and rounded once to the input's dtype.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>
#include <mutex>
#include <vector>

#include "autograd_node.h"
#include "common.h"

namespace normlab {
namespace {

using at::Tensor;

// Per-channel constants in T: y = (x - centre_c) * scale_c + shift_c.
template <typename T>
struct ChannelAffine {
  std::vector<T> centre, scale, shift;
};

template <typename T>
ChannelAffine<T> frozen_constants(const Tensor& weight, const Tensor& bias, const Tensor& mean,
                                  const Tensor& var, double eps) {
  const int64_t C = weight.numel();
  const T* w = weight.data_ptr<T>();
  const T* b = bias.data_ptr<T>();
  const T* m = mean.data_ptr<T>();
  const T* v = var.data_ptr<T>();
  ChannelAffine<T> k{std::vector<T>(C), std::vector<T>(C), std::vector<T>(C)};
  for (int64_t c = 0; c < C; ++c) {
    k.centre[c] = m[c];
    k.scale[c] = static_cast<T>(static_cast<double>(w[c]) / std::sqrt(static_cast<double>(v[c]) + eps));
    k.shift[c] = b[c];
  }
  return k;
}

// (N, C, S) planes: one channel's constants per plane of S values.
template <typename T>
void affine_planes(const T* __restrict x, T* __restrict y, const ChannelAffine<T>& k,
                   int64_t planes, int64_t C, int64_t S) {
  at::parallel_for(0, planes, grain(S), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % C;
      const T centre = k.centre[c], scale = k.scale[c], shift = k.shift[c];
      const T* xp = x + p * S;
      T* yp = y + p * S;
#pragma omp simd
      for (int64_t i = 0; i < S; ++i) yp[i] = (xp[i] - centre) * scale + shift;
    }
  });
}

// Channels-last rows: C values per row, the constants as vectors along the row.
template <typename T>
void affine_rows(const T* __restrict x, T* __restrict y, const ChannelAffine<T>& k,
                 int64_t rows, int64_t C) {
  const T* centre = k.centre.data();
  const T* scale = k.scale.data();
  const T* shift = k.shift.data();
  at::parallel_for(0, rows, grain(C), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * C;
      T* yr = y + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - centre[c]) * scale[c] + shift[c];
    }
  });
}

bool is_channels_last(const Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// out = (x - centre) * scale + shift per channel, in x's memory format.
template <typename T>
Tensor apply_affine(const Tensor& x, const ChannelAffine<T>& k) {
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / std::max<int64_t>(N * C, 1);
  if (is_channels_last(x)) {
    Tensor out = at::empty_like(x, at::MemoryFormat::ChannelsLast);
    affine_rows<T>(x.const_data_ptr<T>(), out.data_ptr<T>(), k, N * S, C);
    return out;
  }
  if (S == 1) {  // (N, C) features: rows of C, as channels-last
    const Tensor input = x.contiguous();
    Tensor out = at::empty_like(input, at::MemoryFormat::Contiguous);
    affine_rows<T>(input.const_data_ptr<T>(), out.data_ptr<T>(), k, N, C);
    return out;
  }
  const Tensor input = x.contiguous();
  Tensor out = at::empty_like(input, at::MemoryFormat::Contiguous);
  affine_planes<T>(input.const_data_ptr<T>(), out.data_ptr<T>(), k, N * C, C, S);
  return out;
}

void check_arguments(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& m,
                     const Tensor& v) {
  TORCH_CHECK(x.dim() >= 2, "frozen_batch_norm: expected input of shape (N, C, *), got ",
              x.dim(), "D input");
  const int64_t C = x.size(1);
  for (const Tensor* t : {&w, &b, &m, &v}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == C && t->is_contiguous(),
                "frozen_batch_norm: expected contiguous (C) = (", C,
                ") weight, bias, running_mean and running_var, got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(),
                "frozen_batch_norm: every tensor must have the input's dtype and device");
  }
  TORCH_CHECK(x.device().is_cpu() && (x.scalar_type() == at::kFloat ||
                                      x.scalar_type() == at::kDouble),
              "frozen_batch_norm: float32 or float64 CPU tensors expected");
}

// The forward on any of the two dtypes; `unit` gives the backward's constants (scale only).
Tensor frozen_forward(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& m,
                      const Tensor& v, double eps) {
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "frozen_batch_norm", [&] {
    return apply_affine<scalar_t>(x, frozen_constants<scalar_t>(w, b, m, v, eps));
  });
}

// dL/dx = dL/dy * scale_c: the same loop with no centre and no shift.
Tensor frozen_backward(const Tensor& dy, const Tensor& w, const Tensor& v, double eps) {
  return AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "frozen_batch_norm_backward", [&] {
    const Tensor zeros = at::zeros_like(w);
    ChannelAffine<scalar_t> k = frozen_constants<scalar_t>(w, zeros, zeros, v, eps);
    return apply_affine<scalar_t>(dy, k);
  });
}

// The backward of one call, a typed node (as torch's generated nodes are): one next edge,
// the input's (the operator differentiates the input only).
struct FrozenBatchNormBackward : public torch::autograd::Node {
  torch::autograd::SavedVariable weight_, var_;
  double eps_ = 0.0;

  std::string name() const override { return "normlab::FrozenBatchNormBackward"; }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const Tensor& dy = grads[0];
    if (!dy.defined()) return {Tensor()};
    const Tensor w = weight_.unpack(), v = var_.unpack();
    if (torch::autograd::GradMode::is_enabled()) {  // a graph of the backward: differentiable
      std::vector<int64_t> shape(dy.dim(), 1);
      shape[1] = -1;
      return {dy * (w * at::rsqrt(v + eps_)).view(shape)};
    }
    return {frozen_backward(dy, w, v, eps_)};
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    weight_.reset_data();
    var_.reset_data();
  }
};

Tensor frozen_batch_norm(const Tensor& input, const Tensor& weight, const Tensor& bias,
                         const Tensor& mean, const Tensor& var, double eps) {
  check_arguments(input, weight, bias, mean, var);
  TORCH_CHECK(!weight.requires_grad() && !bias.requires_grad() && !mean.requires_grad() &&
                  !var.requires_grad(),
              "frozen_batch_norm: the operator differentiates the input only; weight, bias "
              "and the statistics must not require a gradient (use the formula)");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  Tensor out = frozen_forward(input, weight, bias, mean, var, eps);
  auto save = [&](FrozenBatchNormBackward& node) {
    node.weight_ = torch::autograd::SavedVariable(weight, false);
    node.var_ = torch::autograd::SavedVariable(var, false);
    node.eps_ = eps;
  };
  record_backward<FrozenBatchNormBackward>(out, save, input);
  return out;
}

Tensor frozen_batch_norm_kernel(const Tensor& input, const Tensor& weight, const Tensor& bias,
                                const Tensor& mean, const Tensor& var, double eps) {
  check_arguments(input, weight, bias, mean, var);
  return frozen_forward(input, weight, bias, mean, var, eps);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(normlab, m) {
  m.def("frozen_batch_norm(Tensor input, Tensor weight, Tensor bias, Tensor running_mean,"
        " Tensor running_var, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(normlab, Autograd, m) { m.impl("frozen_batch_norm", &frozen_batch_norm); }

TORCH_LIBRARY_IMPL(normlab, CPU, m) { m.impl("frozen_batch_norm", &frozen_batch_norm_kernel); }

}  // namespace normlab
