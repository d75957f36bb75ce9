"""normlab.testing.graph on graphs whose nodes are known."""

from __future__ import annotations

import torch

from normlab.testing.graph import autograd_nodes, node_names


def test_a_graph_is_walked_once_per_node() -> None:
    x = torch.randn(3, requires_grad=True)
    y = x * 2
    z = (y + y).sum()  # y's node is reached twice: counted once
    assert node_names(z) == {"SumBackward0", "AddBackward0", "MulBackward0", "AccumulateGrad"}
    assert len(autograd_nodes([z])) == 4
    assert len(autograd_nodes([z, y])) == 4


def test_tensors_without_a_graph_hold_no_nodes() -> None:
    assert autograd_nodes([torch.randn(3), torch.randn(3, requires_grad=True)]) == []
    with torch.no_grad():
        assert node_names(torch.randn(3, requires_grad=True) * 2) == set()
