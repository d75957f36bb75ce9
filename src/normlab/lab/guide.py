"""The where-and-when guide: which normalization the measurements recommend, situation by
situation.

An experiment that answers a situation returns :class:`GuideRow` objects from
:meth:`normlab.lab.experiment.Experiment.guide` (default: none). Every field is computed
from the experiment's summary: the recommendation (the norm or norms the numbers favour,
or that the numbers do not separate them), the evidence (the cells' numbers as a
sentence), the literature (a citation and the paper's number) and the verdict (agrees,
disagrees or inconclusive). The study report opens with these rows in the fixed order of
:data:`SITUATIONS` (:func:`normlab.lab.report.guide_entries`); a situation whose
experiment did not run is left out.

Helpers for the rows: :func:`separated` (two measurements further apart than their
seeds' spread), :func:`leaders` (the norms not separated from the best),
:func:`leader_verdict` (a claim that one norm is the best) and
:func:`recommendation_text`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from normlab.lab.verdicts import AGREES, DISAGREES, INCONCLUSIVE

if TYPE_CHECKING:
    from normlab.lab.seeds import SeedStats

__all__ = [
    "CAUSAL",
    "CNN_LARGE_BATCHES",
    "DEEP_NO_SKIPS",
    "FINE_TUNING",
    "INFERENCE",
    "MICRO_BATCHES",
    "NON_IID",
    "SITUATIONS",
    "SYNCBN",
    "TRANSFORMERS",
    "GuideRow",
    "leader_verdict",
    "leaders",
    "recommendation_text",
    "separated",
]

CNN_LARGE_BATCHES = "CNN with large batches"
MICRO_BATCHES = "micro-batches"
NON_IID = "non-i.i.d. batches"
FINE_TUNING = "fine-tuning with tiny batches"
SYNCBN = "several processes with small per-process batches (SyncBN)"
TRANSFORMERS = "transformers"
CAUSAL = "causal sequence models"
DEEP_NO_SKIPS = "deep networks without skips"
INFERENCE = "inference"

SITUATIONS: tuple[str, ...] = (
    CNN_LARGE_BATCHES,
    MICRO_BATCHES,
    NON_IID,
    FINE_TUNING,
    SYNCBN,
    TRANSFORMERS,
    CAUSAL,
    DEEP_NO_SKIPS,
    INFERENCE,
)
"""The guide's situations, in the order of its table."""

VERDICTS = (AGREES, DISAGREES, INCONCLUSIVE)


@dataclass(frozen=True)
class GuideRow:
    """One row of the guide, every field computed from an experiment's summary.

    Args:
        situation: one of :data:`SITUATIONS` (use the module's constants).
        recommendation: the normalization(s) the measurements recommend, or a statement
            that they separate none (an inconclusive row says so).
        evidence: the cells' numbers as a sentence (the report links it to the
            experiment's section).
        literature: the citation and the paper's number.
        verdict: ``agrees``, ``disagrees`` or ``inconclusive`` (our numbers against the
            literature's).

    Raises:
        ValueError: an unknown situation or verdict.
    """

    situation: str
    recommendation: str
    evidence: str
    literature: str
    verdict: str

    def __post_init__(self) -> None:
        if self.situation not in SITUATIONS:
            raise ValueError(
                f"unknown guide situation {self.situation!r}; valid: {', '.join(SITUATIONS)}"
            )
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}; valid: {', '.join(VERDICTS)}")


def _spread(stat: SeedStats) -> float:
    return stat.std if stat.std is not None else 0.0


def separated(a: SeedStats, b: SeedStats) -> bool:
    """Whether two measurements differ by more than their seeds' spread:
    ``|mean_a - mean_b| > std_a + std_b`` (False when either has no finite mean)."""
    if a.mean is None or b.mean is None:
        return False
    return abs(a.mean - b.mean) > _spread(a) + _spread(b)


def leaders(stats: Mapping[str, SeedStats]) -> list[str]:
    """The keys whose measurement is not :func:`separated` from the highest mean, best
    first (empty when nothing finished)."""
    done = {k: s for k, s in stats.items() if s.mean is not None}
    if not done:
        return []
    order = sorted(done, key=lambda k: -done[k].mean)  # type: ignore[operator]
    best = done[order[0]]
    return [k for k in order if k == order[0] or not separated(done[k], best)]


def leader_verdict(stats: Mapping[str, SeedStats], expected: str) -> str:
    """A claim that ``expected`` is the best of ``stats``: agrees when it has the highest
    mean and the seeds separate some other from it; disagrees when another is
    :func:`separated` above it; inconclusive otherwise (it did not finish, it is second
    within the spread between seeds, or the seeds separate none of them)."""
    done = {k: s for k, s in stats.items() if s.mean is not None}
    if expected not in done or len(done) < 2:
        return INCONCLUSIVE
    best = leaders(done)
    if expected not in best:
        return DISAGREES
    if best[0] == expected and len(best) < len(done):
        return AGREES
    return INCONCLUSIVE


def recommendation_text(
    names: Sequence[str], label: Callable[[str], str], total: int | None = None
) -> str:
    """``"group norm"``, ``"group norm or batch renorm (not separated by the seeds)"``; when
    ``names`` covers all ``total`` candidates (or none finished), the row is inconclusive
    and says so."""
    if not names:
        return "inconclusive: no arm finished"
    if total is not None and len(names) == total and total > 1:
        return "inconclusive: the seeds separate none of " + ", ".join(label(n) for n in names)
    if len(names) == 1:
        return label(names[0])
    return " or ".join(label(n) for n in names) + " (not separated by the seeds)"
