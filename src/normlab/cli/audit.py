"""``normlab audit``: grade anyone's normalization layer against its ``torch.nn`` twin.

``normlab audit TARGET --kind KIND`` imports ``TARGET`` (``package.module:Name`` or
``path/to/file.py:Name``: a layer class, or a function that builds one from the twin's
constructor arguments), runs every check of :mod:`normlab.testing.auditing` and prints the
report card: one row per check with its measured number, and for each failure the pitfall
behind it. ``--json`` prints the card as JSON, ``--html PATH`` also writes it as one
self-contained page. Exit codes: 0 every required check passes, 1 some fail, 2 bad usage
(an unimportable target, an unknown kind, a constructor that raises).
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from normlab.errors import UsageError

KIND_NAMES = ("batch1d", "batch2d", "batch3d", "instance2d", "layer", "group", "rms")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "audit",
        help="grade a normalization layer against its torch.nn twin (a report card)",
        description=(
            "Import TARGET (package.module:Name or path/to/file.py:Name), build it with the "
            "constructor arguments of the torch.nn twin of --kind, and check it against the "
            "twin: forward and gradients in both modes, running statistics, state_dict, "
            ".to(), memory, low precision, bad input, torch.compile and vmap. Exit code 0 "
            "when every required check passes, 1 when some fail."
        ),
    )
    parser.add_argument("target", help="package.module:Name or path/to/file.py:Name")
    parser.add_argument(
        "--kind",
        required=True,
        metavar="KIND",
        help=f"what the layer is: {', '.join(KIND_NAMES)} (its twin: BatchNorm2d, ...)",
    )
    parser.add_argument(
        "--kwarg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra constructor argument for every build, a Python literal "
        "(e.g. --kwarg num_dims=4); repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print the card as JSON")
    parser.add_argument("--html", type=Path, metavar="PATH", help="also write the card as HTML")
    parser.add_argument("--seed", type=int, default=0, help="seed of every input (default 0)")
    parser.set_defaults(func=run)
    return parser


def parse_kwargs(items: list[str]) -> dict[str, Any]:
    """``["num_dims=4", "eps=1e-3"]`` -> ``{"num_dims": 4, "eps": 0.001}``.

    Raises:
        UsageError: an item that is not ``NAME=LITERAL``.
    """
    kwargs: dict[str, Any] = {}
    for item in items:
        name, equals, text = item.partition("=")
        if not equals or not name.isidentifier():
            raise UsageError(f"--kwarg {item!r}: expected NAME=VALUE, e.g. --kwarg num_dims=4")
        try:
            kwargs[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise UsageError(
                f"--kwarg {item!r}: the value must be a Python literal (a number, a string in "
                "quotes, True, None, a tuple)"
            ) from None
    return kwargs


def _module_from_file(path: Path) -> object:
    if not path.is_file():
        raise UsageError(f"no file {path}; give path/to/file.py:Name or package.module:Name")
    spec = importlib.util.spec_from_file_location(f"normlab_audit_target_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path} is not a Python file; give path/to/file.py:Name")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up
    spec.loader.exec_module(module)
    return module


def load_target(target: str) -> Callable[..., Any]:
    """The object ``target`` names: ``package.module:Name`` or ``path/to/file.py:Name``.

    Raises:
        UsageError: a malformed target, a module that cannot be imported (whatever its code
            raised, in one line) or a missing name.
    """
    where, colon, name = target.rpartition(":")
    if not colon or not where or not name:
        raise UsageError(f"target {target!r}: expected package.module:Name or file.py:Name")
    try:
        if where.endswith(".py") or "/" in where:
            module = _module_from_file(Path(where))
        else:
            module = importlib.import_module(where)
    except UsageError:
        raise
    except Exception as error:  # the target's own code failed to import: the user's to fix
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UsageError(f"cannot import {where}: {type(error).__name__}: {first}") from None
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{where} has no {name!r}; check the name after the colon")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{target} is a {type(obj).__name__}, not a class or a function")
    return obj


def run(args: argparse.Namespace) -> int:
    from normlab.testing.auditing import audit
    from normlab.testing.auditing.card import format_card, to_report
    from normlab.testing.auditing.kinds import kind_named

    kind_named(args.kind)  # an unknown kind: one line before the import
    kwargs = parse_kwargs(args.kwarg)
    factory = load_target(args.target)
    if kwargs:
        factory = functools.partial(factory, **kwargs)
    result = audit(factory, args.kind, target=args.target, seed=args.seed)
    print(result.to_json() if args.json else format_card(result))
    if args.html is not None:
        path = to_report(result).write_html(args.html)
        if not args.json:
            print(path)
    return 0 if result.passed else 1
