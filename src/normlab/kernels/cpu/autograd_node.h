// How normlab's C++ operators record their backward for autograd: a node type of their
// own (a torch::autograd::Node with typed fields for what it saves, as torch's generated
// nodes are), created only when an input wants a gradient.
#pragma once

#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

namespace normlab {

// Gives `out` its history through a new NodeT when one of `inputs` (tensors or optional
// tensors, in the order of the node's outputs) wants a gradient: the node's next edges
// are the inputs' (an absent one's empty), and `fill(node)` saves what its backward reads.
template <typename NodeT, typename Fill, typename... Inputs>
void record_backward(const at::Tensor& out, Fill fill, const Inputs&... inputs) {
  if (!torch::autograd::compute_requires_grad(inputs...)) return;
  auto node = c10::make_intrusive<NodeT>();
  node->set_next_edges(torch::autograd::collect_next_edges(inputs...));
  fill(*node);
  torch::autograd::set_history(out, node);
}

}  // namespace normlab
