"""A griffe extension for the API reference: docstrings as Python sees them, in torch's style.

Some normlab classes complete their docstrings when their module is imported (the batch
norms share one body of Args and Shape; ``_NormBase`` fills placeholders such as
``{args}``). Read from the source alone they would be empty or hold the placeholders. For
every class and function of ``normlab`` this extension imports the module and, where the
imported object's ``__doc__`` differs from the one in the source, uses the imported one.

It also reads the conventions of torch.nn's docstrings that Markdown and the Google style
lack: an ``Example:`` (or ``Example::``) section holds ``>>>`` examples, as ``Examples:``
does; an ``Args`` entry may name several parameters over more than one line
(``in_channels, out_channels,`` then ``kernel_size: ...``); Sphinx roles
(``:math:`x```, ``:class:`~normlab.nn.BatchNorm2d```) are code; and a ``.. math::``
block is shown as the indented formula it holds.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import griffe


def _runtime_doc(path: str) -> str | None:
    """The ``__doc__`` of the object at dotted ``path``, or None if it cannot be reached."""
    module_path, _, qualname = path.partition(":")
    try:
        target: Any = importlib.import_module(module_path)
    except ImportError:
        return None
    for part in qualname.split("."):
        target = getattr(target, part, None)
        if target is None:
            return None
    doc = target.__doc__
    return inspect.cleandoc(doc) if isinstance(doc, str) else None


EXAMPLE_HEADING = re.compile(r"^(?P<indent>[ \t]*)Examples?::?[ \t]*$", re.MULTILINE)
WRAPPED_NAMES = re.compile(
    r"^(?P<indent>[ \t]+)(?P<first>\w+(?:, \w+)*,)[ \t]*\n[ \t]+(?P<rest>\w+(?:, \w+)*:)",
    re.MULTILINE,
)


ROLE = re.compile(r":(?:math|mod|class|func|meth|attr|data|obj|exc|const):`(?P<target>[^`]+)`")
MATH_DIRECTIVE = re.compile(r"^[ \t]*\.\. math::[ \t]*\n", re.MULTILINE)


def _role_as_code(match: re.Match[str]) -> str:
    """``:class:`~a.b.C``` -> ```C```, ``:func:`a.b.f``` -> ```a.b.f```."""
    target = match["target"]
    if target.startswith("~"):
        target = target[1:].rsplit(".", 1)[-1]
    return f"``{target}``"


def torch_style(doc: str) -> str:
    """``doc`` with torch.nn's conventions written as Google-style sections and Markdown."""
    doc = EXAMPLE_HEADING.sub(r"\g<indent>Examples:", doc)
    doc = WRAPPED_NAMES.sub(r"\g<indent>\g<first> \g<rest>", doc)
    doc = ROLE.sub(_role_as_code, doc)
    return MATH_DIRECTIVE.sub("", doc)


def _split(obj: griffe.Object) -> str:
    """``package.module:Class.method`` for a griffe object."""
    module = obj.module.path
    return f"{module}:{obj.path[len(module) + 1 :]}"


class RuntimeDocstrings(griffe.Extension):
    """Replace each normlab class's or function's docstring by its imported ``__doc__``."""

    def _update(
        self, obj: griffe.Object, loader: griffe.GriffeLoader, *, runtime: bool = True
    ) -> None:
        if not obj.path.startswith("normlab"):
            return
        doc = _runtime_doc(_split(obj)) if runtime else None
        if not doc:
            doc = obj.docstring.value if obj.docstring is not None else None
        if not doc:
            return
        doc = torch_style(doc)
        if obj.docstring is None:  # parsed as the loader parses the others
            obj.docstring = griffe.Docstring(
                doc,
                parent=obj,
                parser=loader.docstring_parser,
                parser_options=loader.docstring_options,
            )
        elif obj.docstring.value != doc:
            obj.docstring.value = doc

    def on_module(self, *, mod: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        self._update(mod, loader, runtime=False)

    def on_class(self, *, cls: griffe.Class, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        self._update(cls, loader)

    def on_function(
        self, *, func: griffe.Function, loader: griffe.GriffeLoader, **kwargs: Any
    ) -> None:
        self._update(func, loader)
