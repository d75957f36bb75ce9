// Batch, layer and group norm as single operators with their backward in C++: the
// forward and backward kernels of batch_norm.cpp, layer_norm.cpp and group_norm.cpp tied
// together by a backward node of each (a torch::autograd::Node with typed fields, as
// torch's generated nodes are), registered for the Autograd dispatch key. A call costs
// one dispatch, and the backward runs on autograd's thread without Python:
//
//   normlab::batch_norm_train(input, weight?, bias?, running_mean!?, running_var!?,
//                             momentum?, eps, num_batches_tracked!? = None) -> out
//       training-mode batch norm of (N, C, *) over N and the spatial dims, per channel:
//       out = (x - mean) / sqrt(var + eps) * weight + bias (biased var); the running
//       statistics, when given, move by momentum towards mean and the unbiased var;
//       num_batches_tracked, when given, counts the batch first, and no momentum is
//       the cumulative average 1 / num_batches_tracked (0 when not counted)
//   normlab::layer_norm(input, normalized_shape, weight?, bias?, eps) -> out
//       over the trailing dims given by normalized_shape (weight, bias of that shape)
//   normlab::group_norm(input, num_groups, weight?, bias?, eps) -> out
//       (N, C, *) in num_groups groups of C / num_groups channels; weight, bias (C)
//
// Inputs: float32 or float64 CPU tensors of one dtype (any strides: made contiguous).
// The backward is the kernels' closed form; when a graph of it is wanted (create_graph,
// double backward) it is the same closed form in differentiable ATen operations instead.
// Each forward and backward kernel also has a Meta implementation (shapes only), so the
// operators trace under FakeTensor (torch.compile, torch.export).

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <mutex>
#include <optional>
#include <tuple>
#include <vector>

#include "autograd_node.h"

namespace normlab {
namespace {

using at::Tensor;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

using Triple = std::tuple<Tensor, Tensor, Tensor>;
using Pair = std::tuple<Tensor, Tensor>;
using OptTensor = std::optional<Tensor>;

// The kernels through the dispatcher: CPU tensors reach the loops, fake ones the Meta code.
template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

Triple bn_forward(const Tensor& x, const OptTensor& w, const OptTensor& b, const OptTensor& rm,
                  const OptTensor& rv, double momentum, double eps) {
  static auto handle = op<Triple(const Tensor&, const OptTensor&, const OptTensor&,
                                 const OptTensor&, const OptTensor&, double, double)>(
      "normlab::batch_norm_forward");
  return handle.call(x, w, b, rm, rv, momentum, eps);
}

Triple bn_backward(const Tensor& dy, const Tensor& x, const Tensor& m, const Tensor& invstd,
                   const OptTensor& w) {
  static auto handle =
      op<Triple(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&)>(
          "normlab::batch_norm_backward");
  return handle.call(dy, x, m, invstd, w);
}

Pair ln_forward(const Tensor& x, const OptTensor& w, const OptTensor& b, int64_t width,
                double eps) {
  static auto handle =
      op<Pair(const Tensor&, const OptTensor&, const OptTensor&, int64_t, double)>(
          "normlab::layer_norm_forward");
  return handle.call(x, w, b, width, eps);
}

Triple ln_backward(const Tensor& dy, const Tensor& x, const Tensor& stats, const OptTensor& w,
                   bool nx, bool nw, bool nb) {
  static auto handle = op<Triple(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                 bool, bool, bool)>("normlab::layer_norm_backward");
  return handle.call(dy, x, stats, w, nx, nw, nb);
}

Pair gn_forward(const Tensor& x, const OptTensor& w, const OptTensor& b, int64_t groups,
                double eps) {
  static auto handle =
      op<Pair(const Tensor&, const OptTensor&, const OptTensor&, int64_t, double)>(
          "normlab::group_norm_forward");
  return handle.call(x, w, b, groups, eps);
}

Triple gn_backward(const Tensor& dy, const Tensor& x, const Tensor& stats, const OptTensor& w,
                   int64_t groups, bool nx, bool nw, bool nb) {
  static auto handle = op<Triple(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                 int64_t, bool, bool, bool)>("normlab::group_norm_backward");
  return handle.call(dy, x, stats, w, groups, nx, nw, nb);
}

void check_input(const Tensor& x, const OptTensor& w, const OptTensor& b, const char* name) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name,
              ": expected a float32 or float64 input, got ", x.scalar_type());
  for (const OptTensor& p : {w, b}) {
    TORCH_CHECK(!p.has_value() || !p->defined() || p->scalar_type() == x.scalar_type(), name,
                ": weight and bias must have the input's dtype ", x.scalar_type(), ", got ",
                p->scalar_type());
  }
}

OptTensor contiguous(const OptTensor& t) {
  return t.has_value() && t->defined() ? OptTensor(t->contiguous()) : OptTensor();
}

Tensor or_undefined(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

bool given(const OptTensor& t) { return t.has_value() && t->defined(); }

// The backward of one call: the next edges are those of (input, weight, bias), an absent
// parameter's edge empty; the saved tensors and numbers are typed fields (no string-keyed
// map to fill and read on every call); release_variables frees the tensors once used.
struct Needs {
  bool input, weight, bias;
};

struct NormBackward : public torch::autograd::Node {
  SavedVariable x_, weight_;
  double eps_ = 0.0;

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!grads[0].defined()) return {Tensor(), Tensor(), Tensor()};
    const Tensor x = x_.unpack(), w = weight_.unpack();
    const Tensor dy = grads[0].contiguous().to(x.scalar_type());
    const Needs needs{task_should_compute_output(0), task_should_compute_output(1),
                      task_should_compute_output(2)};
    auto [dx, dw, db] = gradients(dy, x, w, needs);
    return {needs.input ? dx : Tensor(), needs.weight ? dw : Tensor(),
            needs.bias ? db : Tensor()};
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    x_.reset_data();
    weight_.reset_data();
    release_statistics();
  }

  // (dx, dw, db) from the output's gradient; with grad mode on (a graph of the backward is
  // wanted: create_graph, double backward) in differentiable ATen operations.
  virtual Triple gradients(const Tensor& dy, const Tensor& x, const Tensor& w,
                           const Needs& needs) = 0;
  virtual void release_statistics() = 0;
};

// Records `out`'s backward as a NodeT over (input, weight, bias): the saved contiguous
// input and weight go into the node with eps; `fill` saves the rest.
template <typename NodeT, typename Fill>
void record(const Tensor& out, const Tensor& input, const OptTensor& weight,
            const OptTensor& bias, const Tensor& x, double eps, Fill fill) {
  auto save = [&](NodeT& node) {
    node.x_ = SavedVariable(x, false);
    node.weight_ = SavedVariable(or_undefined(weight), false);
    node.eps_ = eps;
    fill(node);
  };
  record_backward<NodeT>(out, save, input, weight, bias);
}

// Differentiable closed form of a normalisation's backward, for a graph of the backward:
// the rows of `x` are normalised over `dims` (per row statistics recomputed from x),
// g = dy * weight_view;  dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
Tensor differentiable_dx(const Tensor& x, const Tensor& g, at::IntArrayRef dims, double eps) {
  const Tensor mean = x.mean(dims, true);
  const Tensor centred = x - mean;
  const Tensor rstd = (centred.pow(2).mean(dims, true) + eps).rsqrt();
  const Tensor xhat = centred * rstd;
  return rstd * (g - g.mean(dims, true) - xhat * (g * xhat).mean(dims, true));
}

Tensor differentiable_xhat(const Tensor& x, at::IntArrayRef dims, double eps) {
  const Tensor centred = x - x.mean(dims, true);
  return centred * (centred.pow(2).mean(dims, true) + eps).rsqrt();
}

std::vector<int64_t> batch_dims(const Tensor& x) {
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  return dims;
}

Tensor per_channel(const Tensor& t, int64_t ndim) {
  std::vector<int64_t> shape(ndim, 1);
  shape[1] = -1;
  return t.reshape(shape);
}

// ------------------------------------------------------------------------------------------
// batch norm
// ------------------------------------------------------------------------------------------

struct BatchNormBackward : public NormBackward {
  SavedVariable first_mean_, invstd_;

  std::string name() const override { return "normlab::BatchNormTrainBackward"; }

  Triple gradients(const Tensor& dy, const Tensor& x, const Tensor& w, const Needs&) override {
    if (at::GradMode::is_enabled()) {  // a graph of the backward: differentiable ATen ops
      const std::vector<int64_t> dims = batch_dims(x);
      const Tensor g = w.defined() ? dy * per_channel(w, x.dim()) : dy;
      return {differentiable_dx(x, g, dims, eps_),
              (dy * differentiable_xhat(x, dims, eps_)).sum(dims), dy.sum(dims)};
    }
    return bn_backward(dy, x, first_mean_.unpack(), invstd_.unpack(),
                       w.defined() ? OptTensor(w) : OptTensor());
  }

  void release_statistics() override {
    first_mean_.reset_data();
    invstd_.reset_data();
  }
};

// This step's momentum, after counting the batch in `tracked` when given (a module's
// num_batches_tracked); no momentum is the cumulative average 1 / count (0 uncounted).
double count_batch(const OptTensor& tracked, std::optional<double> momentum) {
  if (!given(tracked)) return momentum.value_or(0.0);
  tracked->add_(1);
  return momentum ? *momentum : 1.0 / static_cast<double>(tracked->item<int64_t>());
}

Tensor batch_norm_train(const Tensor& input, const OptTensor& weight, const OptTensor& bias,
                        const OptTensor& running_mean, const OptTensor& running_var,
                        std::optional<double> momentum, double eps, const OptTensor& tracked) {
  check_input(input, weight, bias, "normlab::batch_norm_train");
  TORCH_CHECK(input.dim() >= 2, "normlab::batch_norm_train: expected (N, C, *) input, got ",
              input.dim(), " dims");
  const double factor = count_batch(tracked, momentum);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Tensor x = input.contiguous();
  auto [out, first_mean, invstd] = bn_forward(x, contiguous(weight), contiguous(bias),
                                              running_mean, running_var, factor, eps);
  record<BatchNormBackward>(out, input, weight, bias, x, eps, [&](BatchNormBackward& node) {
    node.first_mean_ = SavedVariable(first_mean, false);
    node.invstd_ = SavedVariable(invstd, false);
  });
  return out;
}

// Below autograd (no graph recorded): the forward kernel alone.
Tensor batch_norm_train_kernel(const Tensor& input, const OptTensor& weight,
                               const OptTensor& bias, const OptTensor& running_mean,
                               const OptTensor& running_var, std::optional<double> momentum,
                               double eps, const OptTensor& tracked) {
  check_input(input, weight, bias, "normlab::batch_norm_train");
  const double factor = count_batch(tracked, momentum);
  return std::get<0>(bn_forward(input.contiguous(), contiguous(weight), contiguous(bias),
                                running_mean, running_var, factor, eps));
}

// ------------------------------------------------------------------------------------------
// layer norm
// ------------------------------------------------------------------------------------------

// Sizes are read as symbolic ones (sym_size): under FakeTensor tracing with dynamic shapes
// (torch.compile) a size may be a symbol; comparing it with an int fixes it.
bool trailing_dims_are(const Tensor& input, at::IntArrayRef shape) {
  const int64_t k = static_cast<int64_t>(shape.size()), lead = input.dim() - k;
  if (k < 1 || lead < 0) return false;
  for (int64_t i = 0; i < k; ++i) {
    if (input.sym_size(lead + i) != shape[i]) return false;
  }
  return true;
}

int64_t width_of(const Tensor& input, at::IntArrayRef normalized_shape, const char* name) {
  TORCH_CHECK(trailing_dims_are(input, normalized_shape), name, ": normalized_shape ",
              normalized_shape, " must be the trailing dims of the input of shape ",
              input.sym_sizes());
  return c10::multiply_integers(normalized_shape);
}

struct LayerNormBackward : public NormBackward {
  SavedVariable stats_;
  std::vector<int64_t> shape_;

  std::string name() const override { return "normlab::LayerNormBackward"; }

  Triple gradients(const Tensor& dy, const Tensor& x, const Tensor& w,
                   const Needs& needs) override {
    if (at::GradMode::is_enabled()) {
      const int64_t k = static_cast<int64_t>(shape_.size());
      std::vector<int64_t> rows, feature;
      for (int64_t d = 0; d < x.dim(); ++d) (d < x.dim() - k ? rows : feature).push_back(d);
      return {differentiable_dx(x, w.defined() ? dy * w : dy, feature, eps_),
              (dy * differentiable_xhat(x, feature, eps_)).sum(rows), dy.sum(rows)};
    }
    auto [dx, dw, db] = ln_backward(dy, x, stats_.unpack(),
                                    w.defined() ? OptTensor(w) : OptTensor(), needs.input,
                                    needs.weight, needs.bias);
    if (shape_.size() > 1) {  // (D,) vectors as the parameters' shape
      if (dw.defined()) dw = dw.view(shape_);
      if (db.defined()) db = db.view(shape_);
    }
    return {dx, dw, db};
  }

  void release_statistics() override { stats_.reset_data(); }
};

Tensor layer_norm(const Tensor& input, at::IntArrayRef normalized_shape, const OptTensor& weight,
                  const OptTensor& bias, double eps) {
  check_input(input, weight, bias, "normlab::layer_norm");
  const int64_t width = width_of(input, normalized_shape, "normlab::layer_norm");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Tensor x = input.contiguous();
  auto [out, stats] = ln_forward(x, contiguous(weight), contiguous(bias), width, eps);
  record<LayerNormBackward>(out, input, weight, bias, x, eps, [&](LayerNormBackward& node) {
    node.stats_ = SavedVariable(stats, false);
    node.shape_ = normalized_shape.vec();
  });
  return out;
}

Tensor layer_norm_kernel(const Tensor& input, at::IntArrayRef normalized_shape,
                         const OptTensor& weight, const OptTensor& bias, double eps) {
  check_input(input, weight, bias, "normlab::layer_norm");
  const int64_t width = width_of(input, normalized_shape, "normlab::layer_norm");
  return std::get<0>(
      ln_forward(input.contiguous(), contiguous(weight), contiguous(bias), width, eps));
}

// ------------------------------------------------------------------------------------------
// group norm
// ------------------------------------------------------------------------------------------

void check_groups(const Tensor& input, int64_t num_groups) {
  TORCH_CHECK(input.dim() >= 2, "normlab::group_norm: expected (N, C, *) input, got ",
              input.dim(), " dims");
  TORCH_CHECK(num_groups >= 1 && input.sym_size(1) % num_groups == 0,
              "normlab::group_norm: expected the number of channels ", input.sym_size(1),
              " to be divisible by num_groups ", num_groups);
}

struct GroupNormBackward : public NormBackward {
  SavedVariable stats_;
  int64_t groups_ = 1;

  std::string name() const override { return "normlab::GroupNormBackward"; }

  Triple gradients(const Tensor& dy, const Tensor& x, const Tensor& w,
                   const Needs& needs) override {
    if (at::GradMode::is_enabled()) {
      const Tensor rows = x.reshape({x.size(0), groups_, -1});
      const Tensor g = w.defined() ? dy * per_channel(w, x.dim()) : dy;
      const std::vector<int64_t> dims = batch_dims(x);
      return {differentiable_dx(rows, g.reshape({x.size(0), groups_, -1}), {2}, eps_)
                  .reshape(x.sizes()),
              (dy * differentiable_xhat(rows, {2}, eps_).reshape(x.sizes())).sum(dims),
              dy.sum(dims)};
    }
    return gn_backward(dy, x, stats_.unpack(), w.defined() ? OptTensor(w) : OptTensor(),
                       groups_, needs.input, needs.weight, needs.bias);
  }

  void release_statistics() override { stats_.reset_data(); }
};

Tensor group_norm(const Tensor& input, int64_t num_groups, const OptTensor& weight,
                  const OptTensor& bias, double eps) {
  check_input(input, weight, bias, "normlab::group_norm");
  check_groups(input, num_groups);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Tensor x = input.contiguous();
  auto [out, stats] = gn_forward(x, contiguous(weight), contiguous(bias), num_groups, eps);
  record<GroupNormBackward>(out, input, weight, bias, x, eps, [&](GroupNormBackward& node) {
    node.stats_ = SavedVariable(stats, false);
    node.groups_ = num_groups;
  });
  return out;
}

Tensor group_norm_kernel(const Tensor& input, int64_t num_groups, const OptTensor& weight,
                         const OptTensor& bias, double eps) {
  check_input(input, weight, bias, "normlab::group_norm");
  check_groups(input, num_groups);
  return std::get<0>(
      gn_forward(input.contiguous(), contiguous(weight), contiguous(bias), num_groups, eps));
}

// ------------------------------------------------------------------------------------------
// Meta: the kernels' output shapes, for FakeTensor tracing
// ------------------------------------------------------------------------------------------

// Symbolic sizes (dynamic shapes) stay symbolic: sym_size, sym_numel, empty_symint.
Tensor channels_like(const Tensor& x) { return at::empty_symint({x.sym_size(1)}, x.options()); }

Triple bn_forward_meta(const Tensor& x, const OptTensor&, const OptTensor&, const OptTensor&,
                       const OptTensor&, double, double) {
  return {at::empty_like(x), channels_like(x), channels_like(x)};
}

Triple bn_backward_meta(const Tensor&, const Tensor& x, const Tensor&, const Tensor&,
                        const OptTensor&) {
  return {at::empty_like(x), channels_like(x), channels_like(x)};
}

Pair ln_forward_meta(const Tensor& x, const OptTensor&, const OptTensor&, int64_t width,
                     double) {
  return {at::empty_like(x), at::empty_symint({x.sym_numel() / width, 2}, x.options())};
}

Triple ln_backward_meta(const Tensor&, const Tensor& x, const Tensor& stats, const OptTensor&,
                        bool nx, bool nw, bool nb) {
  const c10::SymInt width = x.sym_numel() / stats.sym_size(0);
  return {nx ? at::empty_like(x) : Tensor(),
          nw ? at::empty_symint({width}, x.options()) : Tensor(),
          nb ? at::empty_symint({width}, x.options()) : Tensor()};
}

Pair gn_forward_meta(const Tensor& x, const OptTensor&, const OptTensor&, int64_t groups,
                     double) {
  return {at::empty_like(x), at::empty_symint({x.sym_size(0) * groups, 2}, x.options())};
}

Triple gn_backward_meta(const Tensor&, const Tensor& x, const Tensor&, const OptTensor&,
                        int64_t, bool nx, bool nw, bool nb) {
  return {nx ? at::empty_like(x) : Tensor(), nw ? channels_like(x) : Tensor(),
          nb ? channels_like(x) : Tensor()};
}

Tensor like_input(const Tensor& x) { return at::empty_like(x); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(normlab, m) {
  m.def("batch_norm_train(Tensor input, Tensor? weight, Tensor? bias,"
        " Tensor(a!)? running_mean, Tensor(b!)? running_var, float? momentum, float eps,"
        " Tensor(c!)? num_batches_tracked=None) -> Tensor");
  m.def("layer_norm(Tensor input, int[] normalized_shape, Tensor? weight, Tensor? bias,"
        " float eps) -> Tensor");
  m.def("group_norm(Tensor input, int num_groups, Tensor? weight, Tensor? bias, float eps)"
        " -> Tensor");
}

TORCH_LIBRARY_IMPL(normlab, Autograd, m) {
  m.impl("batch_norm_train", &batch_norm_train);
  m.impl("layer_norm", &layer_norm);
  m.impl("group_norm", &group_norm);
}

TORCH_LIBRARY_IMPL(normlab, CPU, m) {
  m.impl("batch_norm_train", &batch_norm_train_kernel);
  m.impl("layer_norm", &layer_norm_kernel);
  m.impl("group_norm", &group_norm_kernel);
}

TORCH_LIBRARY_IMPL(normlab, Meta, m) {
  m.impl("batch_norm_forward", &bn_forward_meta);
  m.impl("batch_norm_backward", &bn_backward_meta);
  m.impl("layer_norm_forward", &ln_forward_meta);
  m.impl("layer_norm_backward", &ln_backward_meta);
  m.impl("group_norm_forward", &gn_forward_meta);
  m.impl("group_norm_backward", &gn_backward_meta);
  m.impl("batch_norm_train",
         [](const Tensor& x, const OptTensor&, const OptTensor&, const OptTensor&,
            const OptTensor&, std::optional<double>, double,
            const OptTensor&) { return like_input(x); });
  m.impl("layer_norm", [](const Tensor& x, at::IntArrayRef, const OptTensor&, const OptTensor&,
                          double) { return like_input(x); });
  m.impl("group_norm", [](const Tensor& x, int64_t, const OptTensor&, const OptTensor&,
                          double) { return like_input(x); });
}

}  // namespace normlab
