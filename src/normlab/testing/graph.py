"""What an autograd graph holds: the nodes reachable from some tensors.

A test asks which functions recorded a result (``"DynamicTanhFunctionBackward" in
node_names(y)``: the fast path ran) or how large a graph stored tensors keep alive (a
layer's buffers should keep none: ``len(autograd_nodes(buffers)) == 0``).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor


def autograd_nodes(tensors: Iterable[Tensor]) -> list[object]:
    """The autograd nodes reachable from ``tensors``' ``grad_fn`` (each once, depth first):
    the graph they keep alive."""
    seen: dict[int, object] = {}
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        stack.extend(following for following, _ in node.next_functions)
    return list(seen.values())


def node_names(tensor: Tensor) -> set[str]:
    """The class names of the autograd nodes behind ``tensor`` (``"MulBackward0"``, ...)."""
    return {type(node).__name__ for node in autograd_nodes([tensor])}
