"""The checks of ``normlab audit``: what each measures, against what, and the pitfall a
failure points to.

Each check is a function ``Bench -> Outcome`` and a sentence that explains a failure in
the course tutorial's line of reasoning: batch norm normalises with the batch's statistics
in training, ``x_hat = (x - mean) / sqrt(var + eps)``, ``y = gamma * x_hat + beta``, keeps
moving averages of those statistics for evaluation, and both the maths and the
bookkeeping (modes, buffers, memory, precision) must hold for the layer to be a drop-in
replacement for ``torch.nn``'s.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from normlab.testing.auditing.bench import (
    DTYPE,
    Bench,
    Mismatch,
    Step,
    max_difference,
    sgd_update,
    step,
)
from normlab.testing.auditing.result import Status
from normlab.testing.graph import autograd_nodes
from normlab.testing.tolerance import sum_tolerance, unit_roundoff

__all__ = ["CHECKS", "Check", "Outcome"]

TRAINING_STEPS = 3  # forward, backward, SGD update: drift accumulates over them
STATISTICS_STEPS = 5  # training forwards before the running statistics are compared
MEMORY_STEPS = (20, 300)  # held memory after the first count must equal it after the second
ROUNDINGS = 4  # extra roundings allowed beyond the twin's error in low precision


@dataclass(frozen=True)
class Outcome:
    """What one check measured."""

    status: Status
    measured: str
    value: float | None = None
    tolerance: float | None = None
    required: bool = True


@dataclass(frozen=True)
class Check:
    """One row of the report card: a name, a measurement and the pitfall it catches."""

    name: str
    measure: Callable[[Bench], Outcome]
    pitfall: str


def within(what: str, value: float, tolerance: float) -> Outcome:
    """Passed when ``value <= tolerance`` (a NaN fails)."""
    status = Status.PASSED if value <= tolerance else Status.FAILED
    return Outcome(status, f"{what} {value:.1e} (tolerance {tolerance:.1e})", value, tolerance)


def not_applicable(reason: str) -> Outcome:
    return Outcome(Status.NOT_APPLICABLE, reason)


def failed(measured: str, value: float | None = None) -> Outcome:
    return Outcome(Status.FAILED, measured, value)


def describe(error: BaseException) -> str:
    """``ValueError: expected 4D input`` (the first line of the message)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


@dataclass
class Worst:
    """The comparison closest to (or furthest beyond) its tolerance."""

    value: float = 0.0
    tolerance: float = math.inf

    def add(self, value: float, tolerance: float) -> None:
        ratio = math.inf if math.isnan(value) else value / tolerance
        if ratio >= self.value / self.tolerance:
            self.value, self.tolerance = (math.inf if math.isnan(value) else value), tolerance

    def outcome(self, what: str) -> Outcome:
        return within(what, self.value, self.tolerance)


# ---------------------------------------------------------------------- forward, gradients


@dataclass
class Trajectory:
    """Differences from the twin over three training steps and one evaluation step."""

    train_output: Worst = field(default_factory=Worst)
    train_grads: Worst = field(default_factory=Worst)
    eval_output: Worst = field(default_factory=Worst)
    eval_grads: Worst = field(default_factory=Worst)


def _compare_steps(
    ours: Step, theirs: Step, output: Worst, grads: Worst, tolerances: tuple[float, float]
) -> None:
    output.add(max_difference(ours.output, theirs.output), tolerances[0])
    if ours.input_grad is None or theirs.input_grad is None:
        return
    grads.add(max_difference(ours.input_grad, theirs.input_grad), tolerances[1])
    for a, b in zip(ours.parameter_grads, theirs.parameter_grads, strict=True):
        grads.add(max_difference(a, b), tolerances[1])


def trajectory(bench: Bench) -> Trajectory:
    """Train the layer and its twin side by side (same parameters, inputs, upstream
    gradients, SGD updates), then evaluate both: outputs without grad, gradients with."""
    cached = bench.memo.get("trajectory")
    if cached is not None:
        return cached
    layer, twin = bench.matched_pair()
    result = Trajectory()
    for _ in range(TRAINING_STEPS):
        x, upstream = bench.input(), bench.randn(bench.kind.shape)
        tol = (bench.output_tolerance(x, twin), bench.grad_tolerance(x, upstream, twin))
        ours, theirs = step(layer, x, upstream), step(twin, x, upstream)
        _compare_steps(ours, theirs, result.train_output, result.train_grads, tol)
        sgd_update(layer)
        sgd_update(twin)
    layer.eval()
    twin.eval()
    x, upstream = bench.input(), bench.randn(bench.kind.shape)
    tol = (bench.output_tolerance(x, twin), bench.grad_tolerance(x, upstream, twin))
    with torch.no_grad():
        _compare_steps(step(layer, x, None), step(twin, x, None), result.eval_output, Worst(), tol)
    _compare_steps(
        step(layer, x, upstream), step(twin, x, upstream), Worst(), result.eval_grads, tol
    )
    bench.memo["trajectory"] = result
    return result


def forward_training(bench: Bench) -> Outcome:
    return trajectory(bench).train_output.outcome("max|layer - twin| over 3 steps")


def gradients_training(bench: Bench) -> Outcome:
    return trajectory(bench).train_grads.outcome("max|layer - twin| over 3 steps")


def forward_evaluation(bench: Bench) -> Outcome:
    return trajectory(bench).eval_output.outcome("max|layer - twin| after 3 steps")


def gradients_evaluation(bench: Bench) -> Outcome:
    return trajectory(bench).eval_grads.outcome("max|layer - twin| after 3 steps")


# ---------------------------------------------------------------------- running statistics


def _statistics_inputs(bench: Bench) -> Iterator[Tensor]:
    """Inputs whose mean and spread move from step to step."""
    for k in range(STATISTICS_STEPS):
        yield bench.input(mean=k - 1.5, std=0.5 + 0.4 * k).requires_grad_()


def recover_running_statistics(layer: nn.Module, bench: Bench, eps: float) -> tuple[Tensor, Tensor]:
    """The running mean and variance a layer evaluates with, read from its outputs.

    With ``gamma = 1`` and ``beta = 0`` (as built), evaluation maps a channel of zeros to
    ``-mean / s`` and a channel of ones to ``(1 - mean) / s``, ``s = sqrt(var + eps)``:
    so ``s = 1 / (y1 - y0)``, ``mean = -y0 * s``, ``var = s^2 - eps``. Reading them this
    way needs no names: a layer whose statistics are plain attributes is graded too.
    """
    shape = (2, *bench.kind.shape[1:])
    probe = torch.zeros(shape, dtype=DTYPE)
    probe[1] = 1
    layer.eval()
    with torch.no_grad():
        y = layer(probe).double()
    per_channel = y.reshape(2, y.shape[1], -1).mean(-1)  # the feature dimension is 1
    y0, y1 = per_channel[0], per_channel[1]
    s = 1 / (y1 - y0)
    return -y0 * s, s.square() - eps


def _running_statistics(bench: Bench, **kwargs: object) -> tuple[float, float, float, float]:
    """Train a fresh layer and twin on the same moving inputs (no parameter updates) and
    return ``(mean difference, its tolerance, var difference, its tolerance)``."""
    key = f"statistics {kwargs}"
    if key not in bench.memo:
        bench.memo[key] = _measure_running_statistics(bench, **kwargs)
    return bench.memo[key]


def _measure_running_statistics(
    bench: Bench, **kwargs: object
) -> tuple[float, float, float, float]:
    layer, twin = bench.layer(**kwargs), bench.twin(**kwargs)
    largest = 0.0
    for x in _statistics_inputs(bench):
        layer(x)
        twin(x)
        largest = max(largest, float(x.detach().abs().max()))
    twin_mean, twin_var, eps = _twin_statistics(twin)
    mean, var = recover_running_statistics(layer, bench, eps)
    m = bench.kind.values_per_statistic
    terms = m * STATISTICS_STEPS
    mean_tol = float(sum_tolerance(DTYPE, terms, terms * largest))
    var_tol = float(sum_tolerance(DTYPE, terms, terms * largest**2)) * m / (m - 1)
    recovery = 16 * unit_roundoff(DTYPE)  # four roundings in y0, y1, their difference, square
    mean_tol += recovery * (1 + float(twin_mean.abs().max()))
    var_tol += recovery * float(twin_var.abs().max())
    mean_diff = max_difference(mean, twin_mean)
    var_diff = max_difference(var, twin_var)
    return mean_diff, mean_tol, var_diff, var_tol


def _twin_statistics(twin: nn.Module) -> tuple[Tensor, Tensor, float]:
    """The twin's ``running_mean``, ``running_var`` and ``eps``."""
    mean, var, eps = twin.running_mean, twin.running_var, twin.eps
    if not (isinstance(mean, Tensor) and isinstance(var, Tensor) and isinstance(eps, float)):
        raise RuntimeError(f"{type(twin).__name__} keeps no running statistics")
    return mean, var, eps


def _needs_running_statistics(bench: Bench) -> Outcome | None:
    if not bench.kind.has_running_stats:
        return not_applicable(f"{bench.kind.signature} keeps no running statistics")
    return None


def running_mean(bench: Bench) -> Outcome:
    if (skip := _needs_running_statistics(bench)) is not None:
        return skip
    mean_diff, mean_tol, _, _ = _running_statistics(bench)
    return within("max|running mean - twin's| after 5 steps", mean_diff, mean_tol)


def running_variance(bench: Bench) -> Outcome:
    if (skip := _needs_running_statistics(bench)) is not None:
        return skip
    _, _, var_diff, var_tol = _running_statistics(bench)
    return within("max|running var - twin's| after 5 steps", var_diff, var_tol)


def _momentum(bench: Bench, momentum: float | None) -> Outcome:
    if (skip := _needs_running_statistics(bench)) is not None:
        return skip
    try:
        mean_diff, mean_tol, var_diff, var_tol = _running_statistics(bench, momentum=momentum)
    except TypeError as error:  # the constructor or the arithmetic refuses the argument
        return not_applicable(f"the layer takes no momentum={momentum} ({type(error).__name__})")
    worst = Worst()
    worst.add(mean_diff, mean_tol)
    worst.add(var_diff, var_tol)
    return worst.outcome("max|running stats - twin's| after 5 steps")


def momentum_argument(bench: Bench) -> Outcome:
    return _momentum(bench, 0.3)


def momentum_none(bench: Bench) -> Outcome:
    return _momentum(bench, None)


# ---------------------------------------------------------------------- modes


def training_without_grad(bench: Bench) -> Outcome:
    """The layer's training output under ``torch.no_grad()`` against its own with grad."""
    x = bench.input()
    with_grad = bench.layer()(x.clone().requires_grad_()).detach()
    with torch.no_grad():
        without = bench.layer()(x)
    tol = bench.output_tolerance(x, bench.twin())
    return within(
        "max|no_grad - grad| of training outputs", max_difference(without, with_grad), tol
    )


def evaluation_with_grad(bench: Bench) -> Outcome:
    """After training, the layer's evaluation output with grad enabled against its own
    under ``torch.no_grad()``."""
    layer = bench.layer()
    for x in _statistics_inputs(bench):
        layer(x)
    layer.eval()
    x = bench.input()
    with torch.no_grad():
        without = layer(x)
    with_grad = layer(x.clone().requires_grad_()).detach()
    tol = bench.output_tolerance(x, bench.twin())
    return within(
        "max|grad - no_grad| of evaluation outputs", max_difference(with_grad, without), tol
    )


def one_sample_evaluation(bench: Bench) -> Outcome:
    """After training, the layer evaluates a batch of one sample as it evaluates that
    sample within a larger batch (evaluation does not depend on the rest of the batch)."""
    layer, twin = bench.matched_pair()
    for x in _statistics_inputs(bench):
        layer(x)
    layer.eval()
    x = bench.input()
    with torch.no_grad():
        in_batch, alone = layer(x)[:1], layer(x[:1])
    tol = bench.output_tolerance(x, twin)
    return within("max|alone - within the batch|", max_difference(alone, in_batch), tol)


# ---------------------------------------------------------------------- state


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v for k, v in module.state_dict().items() if k != "num_batches_tracked"}


def state_correspondence(layer: nn.Module, twin: nn.Module, tolerance: float) -> dict[str, str]:
    """For each of the twin's ``state_dict`` entries, the layer's entry holding the same
    values (any name, any shape with as many elements).

    Raises:
        Mismatch: some entries have no counterpart (the message names them).
    """
    ours = _state(layer)
    found, missing = {}, []
    for name, theirs in _state(twin).items():
        candidates = [
            (max_difference(v.flatten(), theirs.flatten()), k)
            for k, v in ours.items()
            if v.numel() == theirs.numel() and v.is_floating_point()
        ]
        best = min(candidates, default=(math.inf, ""))
        if best[0] <= tolerance:
            found[name] = best[1]
        else:
            missing.append(name)
    if missing:
        raise Mismatch(
            f"no {', '.join(missing)} in the layer's state_dict (keys: {', '.join(ours) or 'none'})"
        )
    return found


def _trained_pair(bench: Bench) -> tuple[nn.Module, nn.Module, float]:
    layer, twin = bench.matched_pair()
    worst = 0.0
    for _ in range(TRAINING_STEPS):
        x, upstream = bench.input(), bench.randn(bench.kind.shape)
        step(layer, x, upstream)
        step(twin, x, upstream)
        worst = max(worst, bench.grad_tolerance(x, upstream, twin), bench.output_tolerance(x, twin))
        sgd_update(layer)
        sgd_update(twin)
    return layer, twin, TRAINING_STEPS * worst


def _evaluate(module: nn.Module, x: Tensor) -> Tensor:
    module.eval()
    with torch.no_grad():
        return module(x)


def state_dict_round_trip(bench: Bench) -> Outcome:
    """The trained twin's state has a counterpart in the layer's; it loads into a fresh
    layer and the layer's into a fresh twin, and each then evaluates like its source."""
    if not _state(bench.twin()):
        return not_applicable(f"{bench.kind.signature} has an empty state_dict")
    layer, twin, tolerance = _trained_pair(bench)
    names = state_correspondence(layer, twin, tolerance)
    twin_state, layer_state = _state(twin), layer.state_dict()
    fresh_layer, fresh_twin = bench.layer(), bench.twin()
    loaded = fresh_layer.state_dict()
    for theirs, ours in names.items():
        loaded[ours] = twin_state[theirs].reshape(loaded[ours].shape)
    fresh_layer.load_state_dict(loaded)
    back = fresh_twin.state_dict()
    for theirs, ours in names.items():
        back[theirs] = layer_state[ours].reshape(back[theirs].shape)
    fresh_twin.load_state_dict(back)
    x = bench.input()
    worst = Worst()
    tol = bench.output_tolerance(x, twin)
    worst.add(max_difference(_evaluate(fresh_layer, x), _evaluate(twin, x)), tol)
    worst.add(max_difference(_evaluate(fresh_twin, x), _evaluate(layer, x)), tol)
    entries = ", ".join(f"{k}->{v}" for k, v in names.items())
    return worst.outcome(f"{len(names)} entries ({entries}); max|loaded - source| in eval")


def _held_tensors(module: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """Every tensor a module holds: parameters, buffers and plain tensor attributes."""
    for prefix, submodule in module.named_modules():
        dot = f"{prefix}." if prefix else ""
        for name, value in vars(submodule).items():
            if isinstance(value, Tensor):
                yield f"{dot}{name}", value
        for name, value in submodule._parameters.items():
            if value is not None:
                yield f"{dot}{name}", value
        for name, value in submodule._buffers.items():
            if value is not None:
                yield f"{dot}{name}", value


def follows_to(bench: Bench) -> Outcome:
    """After ``.to(float64)`` every floating tensor the layer holds is float64 (and after
    ``.to(float32)`` float32): a plain tensor attribute stays behind."""
    stayed = []
    for dtype in (torch.float64, torch.float32):
        layer = bench.layer(dtype=torch.float32 if dtype == torch.float64 else torch.float64)
        layer.to(dtype)
        stayed += [
            f"{name} stays {str(t.dtype).removeprefix('torch.')}"
            for name, t in _held_tensors(layer)
            if t.is_floating_point() and t.dtype != dtype
        ]
    if stayed:
        return failed(f"after .to(): {'; '.join(dict.fromkeys(stayed))}", float(len(stayed)))
    return Outcome(Status.PASSED, "every tensor follows .to(float64) and .to(float32)", 0.0)


# ---------------------------------------------------------------------- memory


class SavedTensors:
    """Counts the tensors autograd has saved for backward and not yet released."""

    def __init__(self) -> None:
        self.alive = 0

    def _released(self) -> None:
        self.alive -= 1

    def pack(self, tensor: Tensor) -> _Saved:
        saved = _Saved(tensor)
        self.alive += 1
        weakref.finalize(saved, self._released)
        return saved

    @staticmethod
    def unpack(saved: _Saved) -> Tensor:
        return saved.tensor


class _Saved:
    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor


def graph_nodes(tensors: Iterable[Tensor]) -> int:
    """Autograd nodes reachable from ``tensors``: the graph they keep alive."""
    return len(autograd_nodes(tensors))


def memory_flat(bench: Bench) -> Outcome:
    """Over 300 training steps, the autograd graph the layer's tensors hold and the saved
    tensors not yet released stay what they were after 20 steps."""
    layer = bench.layer()
    x, upstream = bench.input(), bench.randn(bench.kind.shape)
    counter = SavedTensors()
    held: dict[int, tuple[int, int]] = {}
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        for index in range(1, MEMORY_STEPS[1] + 1):
            step(layer, x, upstream)
            sgd_update(layer, 1e-3)
            if index in MEMORY_STEPS:
                tensors = (t for _, t in _held_tensors(layer))
                held[index] = (graph_nodes(tensors), counter.alive)
    (nodes0, saved0), (nodes1, saved1) = held[MEMORY_STEPS[0]], held[MEMORY_STEPS[1]]
    growth = (nodes1 - nodes0 + saved1 - saved0) / (MEMORY_STEPS[1] - MEMORY_STEPS[0])
    measured = f"graph nodes held {nodes0} -> {nodes1}"
    if saved0 or saved1:
        measured += f", saved tensors alive {saved0} -> {saved1}"
    measured += f" (steps {MEMORY_STEPS[0]} -> {MEMORY_STEPS[1]})"
    if growth > 0:
        return failed(f"{measured}: +{growth:.1f} per step", growth)
    return Outcome(Status.PASSED, measured, growth, 0.0)


# ---------------------------------------------------------------------- precision


def _low_precision(bench: Bench, dtype: torch.dtype, mean: float, std: float) -> Outcome:
    """The layer's training output in ``dtype`` (a training forward: grad enabled) against
    the float64 twin on the same (already rounded) input. Allowed: the twin's own error
    plus a few more roundings, each ``u * |y|`` in the output or ``u * |mean| / std`` in the
    normalised value (the mean rounded once more)."""
    x = bench.input(mean=mean, std=std, dtype=dtype)
    with torch.no_grad():
        exact = bench.twin()(x.double())
        twin_error = max_difference(bench.twin(dtype)(x), exact)
    error = max_difference(bench.layer(dtype)(x.clone().requires_grad_()).detach(), exact)
    u = unit_roundoff(dtype)
    tolerance = twin_error + ROUNDINGS * u * (float(exact.abs().max()) + abs(mean) / std)
    return within(f"max|layer - exact| (twin's {twin_error:.1e})", error, tolerance)


def far_from_zero(bench: Bench) -> Outcome:
    return _low_precision(bench, torch.float32, 1e4, 1e-2)


def bfloat16(bench: Bench) -> Outcome:
    return _low_precision(bench, torch.bfloat16, 16.0, 1.0)


def constant_group(bench: Bench) -> Outcome:
    """A normalised group of equal values (zeros for RMS norm): outputs and gradients
    stay finite."""
    x, upstream = bench.input(), bench.randn(bench.kind.shape)
    x[bench.kind.group] = 0.0 if bench.kind.name == "rms" else 3.0
    layer, _ = bench.matched_pair()
    result = step(layer, x, upstream)
    values = [result.output, result.input_grad, *result.parameter_grads]
    bad = sum(int((~torch.isfinite(v)).sum()) for v in values if v is not None)
    total = sum(v.numel() for v in values if v is not None)
    measured = f"{bad} of {total} outputs and gradients not finite"
    return Outcome(Status.FAILED if bad else Status.PASSED, measured, float(bad), 0.0)


# ---------------------------------------------------------------------- bad input


def _bad_shapes(bench: Bench) -> list[tuple[str, tuple[int, ...]]]:
    shape, feature = bench.kind.shape, bench.kind.feature_dim
    wider = list(shape)
    wider[feature] += 1
    single = tuple(s if d == feature else 1 for d, s in enumerate(shape))
    flat = tuple(s if d in (0, feature) else 1 for d, s in enumerate(shape))
    return [
        ("one dimension fewer", shape[:-1]),
        ("one dimension more", (*shape, 1)),
        ("one feature too many", tuple(wider)),
        ("one value per channel", single),
        ("one value per channel and sample", flat),
    ]


def _outcome_of(module: nn.Module, x: Tensor) -> BaseException | None:
    try:
        module(x)
    except Exception as error:  # what the layer raises is the measurement
        return error
    return None


def bad_input(bench: Bench) -> Outcome:
    """Every input the twin refuses in training is refused by the layer with an exception
    other than ``AssertionError``."""
    layer, twin = bench.layer(), bench.twin()
    refused, asserted, silent = 0, [], []
    for _, shape in _bad_shapes(bench):
        x = bench.input(shape)
        if _outcome_of(twin, x) is None:
            continue  # the twin accepts it: not a bad input for this kind
        refused += 1
        error = _outcome_of(layer, x)
        if error is None:
            silent.append(str(shape))
        elif isinstance(error, AssertionError):
            asserted.append(str(shape))
    if asserted or silent:
        problems = [f"AssertionError on {', '.join(asserted)}"] if asserted else []
        problems += [f"accepted {', '.join(silent)}"] if silent else []
        wrong = len(asserted) + len(silent)
        return failed(f"{'; '.join(problems)} ({wrong} of {refused} bad inputs)", float(wrong))
    return Outcome(Status.PASSED, f"{refused} of {refused} bad inputs refused with exceptions", 0.0)


# ---------------------------------------------------------------------- transforms


def _same_layers(bench: Bench) -> tuple[nn.Module, nn.Module]:
    """Two fresh copies of the layer with the same random parameters."""
    first, second = bench.matched_pair()[0], bench.layer()
    with torch.no_grad():
        for a, b in zip(first.parameters(), second.parameters(), strict=True):
            b.copy_(a)
    return first, second


def _compiled_run(
    bench: Bench, eager: nn.Module, to_compile: nn.Module
) -> tuple[list[tuple[Tensor, Tensor]], float]:
    """Train one step and evaluate ``torch.compile(to_compile)`` and ``eager`` alike.

    Dynamo's caches are reset first: after a few audits in one process its recompile limit
    would otherwise fall back to eager code, and the check would test nothing.
    """
    torch._dynamo.reset()
    compiled = torch.compile(to_compile, backend="aot_eager")
    x, upstream = bench.input(), bench.randn(bench.kind.shape)
    ours, theirs = step(compiled, x, upstream), step(eager, x, upstream)
    pairs = [(ours.output, theirs.output)]
    if ours.input_grad is not None and theirs.input_grad is not None:
        pairs.append((ours.input_grad, theirs.input_grad))
    to_compile.eval()
    eager.eval()
    with torch.no_grad():
        pairs.append((compiled(x), eager(x)))
    twin = bench.twin()
    tol = max(bench.output_tolerance(x, twin), bench.grad_tolerance(x, upstream, twin))
    return pairs, tol


def _twin_manages(run: Callable[[], object]) -> bool:
    try:
        run()
    except Exception:  # the twin's failure only downgrades the row
        return False
    return True


def compiles(bench: Bench) -> Outcome:
    """``torch.compile`` (the ``aot_eager`` backend: tracing and autograd, no code
    generation) trains and evaluates like the same layer run eagerly."""
    try:
        pairs, tol = _compiled_run(bench, *_same_layers(bench))
    except Exception as error:  # the failure is the measurement
        if not _twin_manages(lambda: _compiled_run(bench, bench.twin(), bench.twin())):
            reason = "the twin does not compile either"
            return Outcome(Status.NOT_APPLICABLE, reason, required=False)
        return failed(f"torch.compile failed: {describe(error)}")
    worst = Worst()
    for a, b in pairs:
        worst.add(max_difference(a, b), tol)
    return worst.outcome("max|compiled - eager| (train step, evaluation)")


def _vmapped(module: nn.Module, xs: Tensor, training: bool) -> Tensor:
    module.train(training)
    with torch.no_grad():
        return torch.func.vmap(module)(xs)


def vmaps(bench: Bench) -> Outcome:
    """``torch.func.vmap(layer)`` over a stack of inputs equals the layer applied to each,
    in every mode where the twin itself can be vmapped."""
    layer, twin = bench.matched_pair()
    xs = torch.stack([bench.input() for _ in range(3)])
    worst, modes = Worst(), []
    for training in (False, True):
        if not _twin_manages(functools.partial(_vmapped, twin, xs, training)):
            continue
        mode = "training" if training else "evaluation"
        modes.append(mode)
        try:
            ours = _vmapped(layer, xs, training)
        except Exception as error:  # the failure is the measurement
            return failed(f"vmap in {mode} failed: {describe(error)}")
        with torch.no_grad():
            each = torch.stack([layer(x) for x in xs])
        worst.add(max_difference(ours, each), bench.output_tolerance(xs[0], twin))
    if not modes:
        return Outcome(Status.NOT_APPLICABLE, "the twin cannot be vmapped", required=False)
    return worst.outcome(f"max|vmap(layer) - layer on each| ({', '.join(modes)})")


# ---------------------------------------------------------------------- the card

CHECKS: tuple[Check, ...] = (
    Check(
        "forward, training mode",
        forward_training,
        "In training the layer must normalise with the batch's own statistics, "
        "(x - mean) / sqrt(var + eps) with the biased variance over the batch (and spatial) "
        "dimensions, then scale by gamma and shift by beta: compare your reduction "
        "dimensions, eps and the place of eps with the twin's.",
    ),
    Check(
        "gradients, training mode",
        gradients_training,
        "The batch statistics are functions of the input, so the input gradient must flow "
        "through the mean and the variance too, dx = gamma / sigma * (dy - mean(dy) - "
        "x_hat * mean(dy * x_hat)): do not detach the batch statistics, only the running ones.",
    ),
    Check(
        "forward, evaluation mode",
        forward_evaluation,
        "In evaluation the layer must normalise with its running statistics, "
        "(x - running_mean) / sqrt(running_var + eps), not with the batch's: the same "
        "input must give the same output whatever else is in the batch.",
    ),
    Check(
        "gradients, evaluation mode",
        gradients_evaluation,
        "With the running statistics fixed, evaluation is an affine map and its input "
        "gradient is gamma / sqrt(running_var + eps) * dy: no term may come from batch "
        "statistics, and the running statistics must not carry a gradient.",
    ),
    Check(
        "running mean (momentum 0.1)",
        running_mean,
        "After each training batch, running_mean = (1 - momentum) * running_mean + "
        "momentum * batch_mean, with torch's convention that momentum weighs the new batch.",
    ),
    Check(
        "running variance is unbiased",
        running_variance,
        "The running variance must average the unbiased batch variance var * m / (m - 1) "
        "(m values per channel) while the batch itself is normalised with the biased one: "
        "the biased variance underestimates the population's, so evaluation over-scales.",
    ),
    Check(
        "momentum=0.3",
        momentum_argument,
        "The momentum argument must be used in the running averages, not a constant 0.1.",
    ),
    Check(
        "momentum=None (cumulative average)",
        momentum_none,
        "momentum=None means a cumulative average: after n batches each weighs 1/n "
        "(count them in a num_batches_tracked buffer).",
    ),
    Check(
        "training mode under torch.no_grad()",
        training_without_grad,
        "Batch or running statistics must be chosen by self.training (model.train() / "
        "model.eval()), never by torch.is_grad_enabled(): a training forward under "
        "torch.no_grad() still normalises with the batch and updates the running statistics.",
    ),
    Check(
        "evaluation mode with gradients enabled",
        evaluation_with_grad,
        "model.eval() must switch to the running statistics even when gradients are enabled "
        "(fine-tuning a frozen backbone, saliency maps, adversarial inputs): decide by "
        "self.training, not by grad mode.",
    ),
    Check(
        "one sample in evaluation",
        one_sample_evaluation,
        "Evaluation normalises with the running statistics, so a batch of one sample is "
        "valid; only training needs more than one value per channel.",
    ),
    Check(
        "state_dict with the twin, both ways",
        state_dict_round_trip,
        "Register the running statistics with register_buffer (and the scale and shift as "
        "nn.Parameter) so that state_dict saves them and load_state_dict restores them: "
        "plain tensor attributes are lost when a model is saved and loaded.",
    ),
    Check(
        "follows .to(dtype)",
        follows_to,
        "Every tensor the layer keeps must be a parameter or a buffer so that .to(), "
        ".double() and .cuda() move it; a plain attribute stays behind in its old dtype "
        "and device.",
    ),
    Check(
        "memory flat over 300 steps",
        memory_flat,
        "Update the running statistics under torch.no_grad() (or from detached batch "
        "statistics): an average computed from tensors that require grad chains every "
        "step's autograd graph onto the next, and memory grows with every step.",
    ),
    Check(
        "float32 far from zero (mean 1e4, std 1e-2)",
        far_from_zero,
        "Compute the variance from deviations, mean((x - mean)^2) (two passes or a shifted "
        "sum), not as E[x^2] - E[x]^2, which cancels catastrophically when the mean is "
        "large against the spread.",
    ),
    Check(
        "bfloat16 (mean 16, std 1)",
        bfloat16,
        "For low-precision inputs accumulate the statistics in float32, as torch does, and "
        "take the variance from deviations; round to the input's dtype once, at the end.",
    ),
    Check(
        "constant channel stays finite",
        constant_group,
        "eps belongs inside the square root, sqrt(var + eps): a channel of equal values has "
        "zero variance, and without eps its output and gradient are 0 / 0.",
    ),
    Check(
        "bad input raises an exception",
        bad_input,
        "Check shapes with an explicit raise ValueError(...) naming what was expected: an "
        "assert vanishes under python -O, and a silent result hides the mistake (a batch of "
        "one in training has zero variance).",
    ),
    Check(
        "torch.compile",
        compiles,
        "Keep the forward a tensor program: Python-side state, .item() and branches on "
        "tensor values break torch.compile or change what it computes.",
    ),
    Check(
        "torch.func.vmap",
        vmaps,
        "Write the forward with tensor operations over the given dimensions (no .item(), no "
        "Python loops over values) so that torch.func.vmap can batch it.",
    ),
)
