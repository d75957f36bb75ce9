"""The plain-torch twin of each normlab layer that ``torch.nn`` lacks, for timing.

``normlab bench layers`` times every layer of the registry against a twin: the
``torch.nn`` layer of the same name where there is one, else the layer's formula written
the plainest way in torch operations. Those formulas live in one place, the oracles of
:mod:`normlab.testing.references` (the same classes ``normlab check`` and the tests compare
normlab's layers with); this module only builds one next to a normlab module::

    oracle = references.<class of the same name>(**constructor arguments read off module)
    oracle.load_state_dict(module.state_dict())

so both sides start from the same parameters and buffers (same names, same order, same
values), in the module's dtype, device and training mode.

A registry entry may bring its own: a builder with a ``reference`` attribute (a callable
``reference(module) -> nn.Module``) takes precedence over this.
"""

from __future__ import annotations

import copy
import inspect

from torch import Tensor, nn

from normlab.testing import references as oracles

#: Constructor arguments the oracles take and modules do not keep under the same name.
_SKIPPED = frozenset({"self", "device", "dtype"})


class Reference(nn.Module):
    """An oracle of :mod:`normlab.testing.references` built next to a normlab module, named
    for tables.

    Args:
        oracle: the oracle, already holding the module's state.
        name: what the twin is called in tables.

    Shape:
        as the oracle's.
    """

    def __init__(self, oracle: nn.Module, name: str) -> None:
        super().__init__()
        self.oracle = oracle
        self.name = name

    def forward(self, input: Tensor) -> Tensor:
        return self.oracle(input)

    def extra_repr(self) -> str:
        return self.name


def _constructor_arguments(oracle: type[nn.Module], module: nn.Module) -> dict[str, object]:
    """The oracle's constructor arguments read off ``module`` by name (``bias``: whether it
    has one); arguments the module does not keep take the oracle's default."""
    arguments: dict[str, object] = {}
    for name, parameter in inspect.signature(oracle.__init__).parameters.items():
        if name in _SKIPPED or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name == "bias":
            arguments[name] = getattr(module, "bias", None) is not None
        elif hasattr(module, name):
            arguments[name] = getattr(module, name)
    return arguments


def _oracle_for(module: nn.Module) -> type[nn.Module] | None:
    oracle = getattr(oracles, type(module).__name__, None)
    return oracle if isinstance(oracle, type) and issubclass(oracle, nn.Module) else None


def _build(oracle: type[nn.Module], module: nn.Module) -> Reference:
    state = module.state_dict()
    first = next((t for t in state.values() if t.is_floating_point()), None)
    factory = {} if first is None else {"device": first.device, "dtype": first.dtype}
    built = oracle(**_constructor_arguments(oracle, module), **factory)
    built.load_state_dict(state)
    built.train(module.training)
    return Reference(built, f"{oracle.__module__}.{oracle.__name__}")


def reference_for(module: nn.Module) -> nn.Module | None:
    """The oracle of the same class name as ``module``, holding its state, or None if
    :mod:`normlab.testing.references` has none.

    A wrapper of one layer (the registry's ``AsImage``, ``ChannelsLast``) gets a copy of
    itself around the reference of the layer it wraps.
    """
    oracle = _oracle_for(module)
    if oracle is not None:
        return _build(oracle, module)
    children = list(module.named_children())
    if len(children) != 1:
        return None
    child_name, child = children[0]
    inner = reference_for(child)
    if inner is None:
        return None
    wrapper = copy.deepcopy(module)
    setattr(wrapper, child_name, inner)
    return wrapper
