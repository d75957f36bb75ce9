"""Shared pieces of every experiment's findings: :class:`Finding`, the verdicts, the norms'
names in sentences and the number formats.

Each experiment writes its own findings (:meth:`normlab.lab.experiment.Experiment.findings`)
from its summary: nothing is written in advance. Every number in a sentence is read from
the summary (and kept in :attr:`Finding.numbers`, so a test can parse the sentence and
compare), and the verdict (``agrees``, ``disagrees``, ``inconclusive``) is computed from
the same numbers. When the data disagrees with the literature, the finding says so.

Numbers in sentences: accuracies as percentages with one decimal (``87.3 %``), learning
rates and steps as they are (``lr 1``), differences in percentage points (``2.1
points``), ratios with two significant digits (``3.4x``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from normlab.lab.seeds import SeedStats

__all__ = [
    "AGREES",
    "DISAGREES",
    "INCONCLUSIVE",
    "Finding",
    "fmt3",
    "fmt_lr",
    "fmt_num",
    "fmt_pct",
    "fmt_pm",
    "label",
    "pct",
    "verdict_counts",
]

AGREES, DISAGREES, INCONCLUSIVE = "agrees", "disagrees", "inconclusive"

NORM_LABELS = {
    "batch": "batch norm",
    "torch-batch": "torch.nn's batch norm",
    "layer": "layer norm",
    "group": "group norm",
    "instance": "instance norm",
    "rms": "RMS norm",
    "none": "no normalization",
    "syncbn": "synchronised batch norm",
    "localbn": "per-process batch norm",
}


def label(norm: str) -> str:
    """``"group norm"`` for ``"group"``; ``torch-<x>`` as ``torch.nn's <x>``."""
    if norm in NORM_LABELS:
        return NORM_LABELS[norm]
    if norm.startswith("torch-"):
        return f"torch.nn's {label(norm.removeprefix('torch-'))}"
    return norm


@dataclass(frozen=True)
class Finding:
    """One conclusion: what the data shows, what the paper claims, and whether they agree.

    ``numbers`` maps a name to every number the sentence cites, as it was printed
    (percentages as percent values), so the sentence can be checked against the data.
    """

    experiment: str
    text: str  # generated from the data
    claim: str = ""  # what the cited paper reports ("" if no claim is compared)
    verdict: str = INCONCLUSIVE  # agrees / disagrees / inconclusive
    numbers: dict[str, float] = field(default_factory=dict)

    def sentence(self) -> str:
        """The finding with the comparison: ``text`` + `` Literature: ... (verdict).``"""
        if not self.claim:
            return self.text
        return f"{self.text} {self.claim} This run {self.verdict_text()}."

    def verdict_text(self) -> str:
        return {
            AGREES: "agrees",
            DISAGREES: "disagrees",
            INCONCLUSIVE: "is inconclusive on this point",
        }[self.verdict]


def pct(fraction: float) -> float:
    """A fraction as the percentage printed in sentences (one decimal)."""
    return round(100.0 * fraction, 1)


def fmt_pct(fraction: float) -> str:
    return f"{pct(fraction):.1f} %"


def fmt_pm(stat: SeedStats) -> str:
    """``"87.3 ± 0.4 %"`` (or ``"87.3 %"`` for one seed) from seed statistics of fractions."""
    assert stat.mean is not None and stat.std is not None
    if stat.n > 1:
        return f"{pct(stat.mean):.1f} ± {pct(stat.std):.1f} %"
    return fmt_pct(stat.mean)


def fmt_num(value: float) -> str:
    """Two significant digits, plain notation where short: ``0.031``, ``1``, ``3e-05``."""
    return f"{value:.2g}"


def fmt3(value: float) -> str:
    """Three significant digits: ``0.301``, ``1.05``, ``12.3``."""
    return f"{value:.3g}"


def fmt_lr(lr: float) -> str:
    return f"{lr:g}"


def verdict_counts(findings: Sequence[Finding]) -> dict[str, int]:
    """How many findings with a claim agree, disagree or are inconclusive."""
    counts = {AGREES: 0, DISAGREES: 0, INCONCLUSIVE: 0}
    for f in findings:
        if f.claim:
            counts[f.verdict] += 1
    return counts
