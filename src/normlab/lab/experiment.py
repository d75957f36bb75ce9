"""The experiment contract: one class per experiment module, one object in the plan.

An experiment is a subclass of :class:`Experiment` that says, in one place, everything
the lab needs to run it and report it:

- ``name``, ``title``, ``introduction``: its cell directory and report anchor, its
  report section, the paragraph that opens the section;
- ``config_type``: a frozen dataclass with a ``validate()`` method (its settings);
- :meth:`Experiment.study_config`: the config the study runs (full or quick budget);
- :meth:`Experiment.models`: the networks the config trains (the study report's
  subtitle names them);
- :meth:`Experiment.cells`: the work, one :class:`~normlab.lab.cells.Cell` per
  setting x seed;
- :meth:`Experiment.run_cell`: one training run; a JSON-ready dict kept in the cell file;
- :meth:`Experiment.summarize`: the cells' results as the experiment's own summary
  dataclass (mean ± std across seeds);
- :meth:`Experiment.findings`: sentences computed from the summary, set against the
  literature (:mod:`normlab.lab.verdicts`);
- :meth:`Experiment.table` and :meth:`Experiment.figures`: what the terminal and the
  report show;
- :meth:`Experiment.guide` (optional): rows of the report's where-and-when guide
  (:mod:`normlab.lab.guide`), computed from the summary;
- ``command`` and ``options``: how ``normlab`` runs it on its own.

The plan (:mod:`normlab.lab.plan`) lists the experiment objects in order; the runner
(:mod:`normlab.lab.study`), the report (:mod:`normlab.lab.report`) and the commands
iterate over it and know no experiment by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from normlab.lab.cells import Cell
from normlab.lab.seeds import Curve, SeedStats

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from normlab.data import Dataset
    from normlab.lab.guide import GuideRow
    from normlab.lab.verdicts import Finding
    from normlab.report import Column

__all__ = [
    "CellTask",
    "Curve",
    "Experiment",
    "ExperimentConfig",
    "ExperimentResult",
    "FigureSpec",
    "Option",
    "SeedStats",
    "TableSpec",
]


class ExperimentConfig(Protocol):
    """What every experiment's config dataclass has: the fields the runner reads (data,
    seeds, device) and ``validate()``, which raises ``UsageError`` with one line."""

    @property
    def seeds(self) -> int: ...
    @property
    def dataset(self) -> str: ...
    @property
    def train_subset(self) -> int | None: ...
    @property
    def test_subset(self) -> int | None: ...
    @property
    def device(self) -> str: ...
    def validate(self) -> None: ...


ConfigT = TypeVar("ConfigT", bound=ExperimentConfig)
SummaryT = TypeVar("SummaryT")


@dataclass(frozen=True)
class FigureSpec:
    """One figure of an experiment: its file stem (``figures/<stem>.png``), the figure
    and its caption."""

    stem: str
    figure: Figure
    caption: str


@dataclass(frozen=True)
class TableSpec:
    """An experiment's table: rows (column key -> value) and the columns to show."""

    rows: list[dict[str, Any]]
    columns: list[Column]


@dataclass(frozen=True)
class Option:
    """A command-line flag that sets one config field.

    Args:
        flag: ``"--lrs"``.
        field: the config field it sets, ``"lrs"``.
        parse: ``parse(flag, text) -> value`` (None: the flag was not given); the
            parsers are in :mod:`normlab.cli._lab`, named here by kind: ``"int"``,
            ``"int>=2"``, ``"float"``, ``"str"``, ``"list"``, ``"float-list"``,
            ``"int-list"``.
        help: the flag's help line.
        metavar: shown in ``--help``.
    """

    flag: str
    field: str
    parse: str
    help: str
    metavar: str | None = None


@dataclass(frozen=True)
class ExperimentResult(Generic[ConfigT, SummaryT]):
    """What running one experiment gives: its config, the summary and the bookkeeping.

    ``cell_seconds`` is the measured compute time summed over the cells (across resumes;
    None when no cell files were kept).
    """

    experiment: str
    config: ConfigT
    cells: int
    summary: SummaryT
    cell_seconds: float | None = None


class Experiment(ABC, Generic[ConfigT, SummaryT]):
    """The base class of every lab experiment (subclass it once per experiment module).

    Class attributes to set: ``name``, ``title``, ``introduction``, ``config_type``,
    ``summary_type``, ``command``, ``options`` (and ``refused``, for a sweep that turns
    down a sibling's flag with its own reason). Methods to write: :meth:`study_config`,
    :meth:`models`, :meth:`cells`, :meth:`run_cell`, :meth:`summarize`, :meth:`findings`,
    :meth:`table`, :meth:`figures` (abstract: a subclass that forgets one cannot be
    created). Instances hold no state: the plan keeps one.
    """

    name: ClassVar[str]  # "compare", "sweep-lr": cell directory, report anchor, --only
    title: ClassVar[str]  # "Which normalization?": the report section
    introduction: ClassVar[str]  # the section's first paragraph (Markdown)
    config_type: ClassVar[type]  # a frozen dataclass with validate()
    summary_type: ClassVar[type]  # the dataclass summarize() returns
    command: ClassVar[tuple[str, ...]]  # ("compare",) or ("sweep", "lr"): the CLI words
    options: ClassVar[tuple[Option, ...]] = ()  # the command's experiment-specific flags
    refused: ClassVar[tuple[tuple[str, str], ...]] = ()  # (flag, why the command refuses it)

    @abstractmethod
    def study_config(self, *, quick: bool, dataset: str, device: str, syncbn: bool) -> ConfigT:
        """The config ``normlab study`` runs: the default budget, or the reduced one
        (``quick``: under 2 minutes for the whole study). ``syncbn`` asks for the
        multi-process arms where an experiment has them."""

    @abstractmethod
    def models(self, config: ConfigT) -> tuple[str, ...]:
        """The networks ``config`` trains, in words, as the study report's subtitle names
        them: ``("LeNet",)``, ``("vision transformer", "next-row transformer")``."""

    @abstractmethod
    def cells(self, config: ConfigT) -> list[Cell]:
        """One cell per setting x seed, each with its estimated seconds."""

    @abstractmethod
    def run_cell(self, config: ConfigT, data: Dataset, cell: Cell) -> dict[str, Any]:
        """One training run; its numbers as a JSON-ready dict (stored in the cell file)."""

    @abstractmethod
    def summarize(
        self, config: ConfigT, cells: list[Cell], results: Mapping[str, Mapping[str, Any]]
    ) -> SummaryT:
        """The cells' results (``{cell.key: result}``) as the summary dataclass."""

    @abstractmethod
    def findings(self, summary: SummaryT) -> list[Finding]:
        """Sentences generated from the summary, each with its claim and verdict."""

    @abstractmethod
    def table(self, summary: SummaryT) -> TableSpec:
        """The rows and columns printed in the terminal and in the report."""

    @abstractmethod
    def figures(self, summary: SummaryT) -> list[FigureSpec]:
        """The report's figures (import matplotlib inside: it is optional and slow)."""

    def guide(self, summary: SummaryT) -> list[GuideRow]:
        """Rows of the study report's "Where and when to normalize" table for the
        situations this experiment answers (:data:`normlab.lab.guide.SITUATIONS`), every
        field computed from ``summary``; default: none."""
        del summary
        return []

    # Process-wide state a worker process needs (e.g. registered arms): taken in the
    # parent, given to each spawned worker before it computes a cell.
    def worker_state(self) -> Any:
        return None

    def set_worker_state(self, state: Any) -> None:
        del state

    def __repr__(self) -> str:
        return f"<experiment {self.name}>"

    def __reduce__(self) -> tuple[Callable[[], Experiment], tuple[()]]:
        return (type(self), ())


@dataclass(frozen=True)
class CellTask:
    """A cell and what computing it needs; picklable, so a worker process can run it."""

    cell: Cell
    config: ExperimentConfig  # the experiment's frozen config dataclass
    data: Dataset | None = None  # a Dataset to use; None: load config.dataset in the worker
    data_dir: str | None = None  # where to look for config.dataset
    experiment: Experiment | None = None  # the Experiment whose run_cell computes the cell
