"""Run every check of the audit on one layer and gather the report card."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable

from torch import nn

from normlab.errors import UsageError
from normlab.testing.auditing.bench import Bench, Mismatch, seeded
from normlab.testing.auditing.checks import CHECKS, Check, Outcome, describe, failed
from normlab.testing.auditing.kinds import Kind, kind_named
from normlab.testing.auditing.result import AuditResult, CheckResult, Status

__all__ = ["audit"]


def _name_of(factory: Callable[..., nn.Module]) -> str:
    return getattr(factory, "__qualname__", None) or type(factory).__name__


def _check_constructor(factory: Callable[..., nn.Module], kind: Kind, name: str) -> None:
    """Build the layer once with the twin's arguments.

    Raises:
        UsageError: the constructor raises, or builds something that is not a module.
    """
    arguments = ", ".join(str(a) for a in kind.args)
    try:
        with seeded(0):
            layer = factory(*kind.args)
    except Exception as error:  # any failure here is the user's constructor
        raise UsageError(
            f"{name}({arguments}) raised {describe(error)}; the layer is built with the "
            f"arguments of torch.nn.{kind.signature} (give other arguments with a factory "
            "function, or --kwarg NAME=VALUE)"
        ) from error
    if not isinstance(layer, nn.Module):
        raise UsageError(
            f"{name}({arguments}) returned {type(layer).__name__}, not a torch.nn.Module"
        )


def _run(check: Check, bench: Bench) -> CheckResult:
    """One check; whatever the audited layer raises is its measurement (a failure)."""
    try:
        with warnings.catch_warnings():  # the card reports; the layer's warnings are noise
            warnings.simplefilter("ignore")
            outcome = check.measure(bench)
    except Mismatch as error:
        outcome = failed(str(error))
    except Exception as error:  # the audited code raised: report, go on
        outcome = failed(f"raised {describe(error)}")
    return _row(check, outcome)


def _row(check: Check, outcome: Outcome) -> CheckResult:
    return CheckResult(
        name=check.name,
        status=outcome.status,
        measured=outcome.measured,
        value=outcome.value,
        tolerance=outcome.tolerance,
        required=outcome.required,
        pitfall=check.pitfall if outcome.status is Status.FAILED else "",
    )


def _select(names: Iterable[str] | None) -> tuple[Check, ...]:
    if names is None:
        return CHECKS
    wanted = list(names)
    known = {check.name for check in CHECKS}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise UsageError(
            f"unknown check {unknown[0]!r}; the checks are: {', '.join(c.name for c in CHECKS)}"
        )
    return tuple(check for check in CHECKS if check.name in wanted)


def audit(
    factory: Callable[..., nn.Module],
    kind: str,
    *,
    target: str | None = None,
    seed: int = 0,
    checks: Iterable[str] | None = None,
) -> AuditResult:
    """Grade a normalization layer against its ``torch.nn`` twin, check by check.

    ``factory`` is called like the twin's class (``BatchNorm2d(4)``, ``GroupNorm(3, 6)``,
    ``LayerNorm(8)``, ...; ``momentum=`` for the running-statistics checks): a layer
    class, or a function that builds one. Every check compares with the twin in float64
    except those about float32 and bfloat16; see :data:`~normlab.testing.auditing.CHECKS`.

    Args:
        factory: builds the layer from the twin's constructor arguments.
        kind: one of ``batch1d``, ``batch2d``, ``batch3d``, ``instance2d``, ``layer``,
            ``group``, ``rms``.
        target: the name shown on the card. Default: the factory's name.
        seed: seeds every input.
        checks: names of the checks to run (``CHECKS[i].name``). Default: all.

    Returns:
        The report card; ``result.assert_passes()`` raises with the failed checks.

    Raises:
        ValueError: an unknown kind or check name, or a constructor that raises with the
            twin's arguments.

    Example:
        >>> from torch import nn
        >>> result = audit(nn.BatchNorm2d, "batch2d")
        >>> result.passed
        True
    """
    started = time.perf_counter()
    chosen = kind_named(kind)
    name = target or _name_of(factory)
    _check_constructor(factory, chosen, name)
    selected = _select(checks)
    bench = Bench(factory, chosen, seed)
    rows = tuple(_run(check, bench) for check in selected)
    elapsed = time.perf_counter() - started
    return AuditResult(name, chosen.name, chosen.signature, rows, elapsed)
