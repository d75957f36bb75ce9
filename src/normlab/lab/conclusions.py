"""Conclusions written from the numbers: each finding is a sentence generated from an
experiment's summary, set against what the cited paper claims.

Nothing here is written in advance: every number in a sentence is read from the summary
(and kept in :attr:`Finding.numbers`, so a test can parse the sentence and compare), and
the verdict (``agrees``, ``disagrees``, ``inconclusive``) is computed from the same
numbers. When the data disagrees with the literature, the finding says so.

Numbers in sentences: accuracies as percentages with one decimal (``87.3 %``), learning
rates and steps as they are (``lr 1``), differences in percentage points (``2.1
points``), ratios with two significant digits (``3.4x``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from normlab.lab.common import CHANCE_MARGIN

__all__ = [
    "Finding",
    "batch_size_findings",
    "compare_findings",
    "findings_for",
    "lr_findings",
    "momentum_findings",
    "placement_findings",
    "probe_findings",
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


def fmt_pm(stat: Mapping[str, Any]) -> str:
    """``"87.3 ± 0.4 %"`` (or ``"87.3 %"`` for one seed) from a mean_std dict of fractions."""
    if stat["n"] > 1:
        return f"{pct(stat['mean']):.1f} ± {pct(stat['std']):.1f} %"
    return fmt_pct(stat["mean"])


def fmt_num(value: float) -> str:
    """Two significant digits, plain notation where short: ``0.031``, ``1``, ``3e-05``."""
    return f"{value:.2g}"


def fmt3(value: float) -> str:
    """Three significant digits: ``0.301``, ``1.05``, ``12.3``."""
    return f"{value:.3g}"


def fmt_lr(lr: float) -> str:
    return f"{lr:g}"


# ================================================================================= compare
WU_HE_ERROR = {"batch": 23.6, "group": 24.1, "layer": 25.3, "instance": 28.4}  # Table 1


def compare_findings(summary: Mapping[str, Any]) -> list[Finding]:
    """Best norm, normlab against torch.nn, the order against Wu & He, the cost."""
    norms = summary["norms"]
    done = {n: s for n, s in norms.items() if s["final_test_accuracy"]["mean"] is not None}
    findings: list[Finding] = []
    if not done:
        return [Finding("compare", "No norm finished training; nothing to compare.")]
    best = max(done, key=lambda n: done[n]["final_test_accuracy"]["mean"])
    epochs = len(done[best]["per_epoch"]["test_accuracy"]["mean"])
    plural = "s" if epochs != 1 else ""
    text = (
        f"After {epochs} epoch{plural} the best test accuracy is {label(best)}'s "
        f"{fmt_pm(done[best]['final_test_accuracy'])}"
    )
    numbers = {"best_accuracy": pct(done[best]["final_test_accuracy"]["mean"])}
    if "none" in done and best != "none":
        plain = done["none"]["final_test_accuracy"]
        text += f"; without normalization LeNet reaches {fmt_pm(plain)}"
        numbers["none_accuracy"] = pct(plain["mean"])
    findings.append(Finding("compare", text + ".", numbers=numbers))

    if "batch" in done and "torch-batch" in done:
        ours = done["batch"]["final_test_accuracy"]["values"]
        ref = done["torch-batch"]["final_test_accuracy"]["values"]
        pairs = [(a, b) for a, b in zip(ours, ref, strict=False) if a is not None and b is not None]
        if pairs:
            gap = max(abs(a - b) for a, b in pairs) * 100
            ours_mean = done["batch"]["final_test_accuracy"]["mean"]
            ref_mean = done["torch-batch"]["final_test_accuracy"]["mean"]
            findings.append(
                Finding(
                    "compare",
                    f"normlab's batch norm reaches {fmt_pct(ours_mean)}"
                    f" and torch.nn's {fmt_pct(ref_mean)}"
                    f"; with the same seed they differ by at most {gap:.2f} points.",
                    numbers={
                        "batch_accuracy": pct(done["batch"]["final_test_accuracy"]["mean"]),
                        "torch_accuracy": pct(done["torch-batch"]["final_test_accuracy"]["mean"]),
                        "max_seed_gap": round(gap, 2),
                    },
                )
            )

    ranked = [n for n in WU_HE_ERROR if n in done]
    if len(ranked) >= 2:
        ours_order = sorted(ranked, key=lambda n: -done[n]["final_test_accuracy"]["mean"])
        paper_order = sorted(ranked, key=lambda n: WU_HE_ERROR[n])
        # Two neighbours whose means are closer than their seed spread are a tie.
        ties = [
            (a, b)
            for a, b in itertools.pairwise(ours_order)
            if abs(done[a]["final_test_accuracy"]["mean"] - done[b]["final_test_accuracy"]["mean"])
            <= max(done[a]["final_test_accuracy"]["std"], done[b]["final_test_accuracy"]["std"])
        ]
        if ours_order == paper_order and not ties:
            verdict = AGREES
        elif _same_up_to_ties(ours_order, paper_order, ties):
            verdict = INCONCLUSIVE
        else:
            verdict = DISAGREES
        order = " > ".join(
            f"{label(n)} ({fmt_pct(done[n]['final_test_accuracy']['mean'])})" for n in ours_order
        )
        tie_text = (
            f" ({', '.join(f'{label(a)} and {label(b)}' for a, b in ties)} are within one "
            "standard deviation of each other)"
            if ties
            else ""
        )
        claim = (
            "Wu & He (2018, Table 1) rank them "
            + " > ".join(f"{label(n)} ({100 - WU_HE_ERROR[n]:.1f} %)" for n in paper_order)
            + " in ImageNet top-1 accuracy (ResNet-50, 32 images per GPU)."
        )
        findings.append(
            Finding(
                "compare",
                f"Ranked by test accuracy: {order}{tie_text}.",
                claim=claim,
                verdict=verdict,
                numbers={
                    f"{n}_accuracy": pct(done[n]["final_test_accuracy"]["mean"]) for n in ranked
                },
            )
        )

    timed = {n: s["seconds_per_epoch"]["mean"] for n, s in norms.items()}
    timed = {n: t for n, t in timed.items() if t is not None}
    if len(timed) >= 2:
        fast, slow = min(timed, key=timed.get), max(timed, key=timed.get)
        findings.append(
            Finding(
                "compare",
                f"An epoch of training took {timed[fast]:.2f} s with {label(fast)} (the fastest) "
                f"and {timed[slow]:.2f} s with {label(slow)} (the slowest).",
                numbers={
                    "fast_seconds": round(timed[fast], 2),
                    "slow_seconds": round(timed[slow], 2),
                },
            )
        )
    return findings


def _same_up_to_ties(ours: list[str], paper: list[str], ties: list[tuple[str, str]]) -> bool:
    """Whether swapping tied neighbours can turn ``ours`` into ``paper``."""
    tied = {frozenset(t) for t in ties}
    order = list(ours)
    for _ in range(len(order)):
        changed = False
        for i in range(len(order) - 1):
            a, b = order[i], order[i + 1]
            if paper.index(a) > paper.index(b) and frozenset((a, b)) in tied:
                order[i], order[i + 1] = b, a
                changed = True
        if not changed:
            break
    return order == paper


# ================================================================================ lr sweep
def _all_learned(point: Mapping[str, Any]) -> bool:
    return point["learned"] == point["seeds"]


def _failure(point: Mapping[str, Any]) -> str:
    """What the plain network did at a rate where not every seed learned."""
    seeds, diverged, learned = point["seeds"], point["diverged"], point["learned"]
    if diverged == seeds:
        return "diverged"
    parts = []
    if learned:
        parts.append(f"learned in only {learned} of {seeds} seeds")
    if diverged:
        parts.append(f"diverged in {diverged} of {seeds}")
    if not parts or seeds - learned - diverged > 0:
        parts.append("stayed near chance" if not parts else "stayed near chance otherwise")
    return ", ".join(parts)


def lr_findings(summary: Mapping[str, Any]) -> list[Finding]:
    """Where batch norm trained and the plain network did not; the highest rate each
    learned at; compared with Ioffe & Szegedy (2015)."""
    norms = summary["norms"]
    findings: list[Finding] = []
    highest = {}
    for norm, points in norms.items():
        learned = [p["lr"] for p in points if _all_learned(p)]
        highest[norm] = max(learned) if learned else None
    if "batch" in norms and "none" in norms:
        plain = {p["lr"]: p for p in norms["none"]}
        wins = [p for p in norms["batch"] if _all_learned(p) and not _all_learned(plain[p["lr"]])]
        if not any(_all_learned(p) for p in norms["none"]):
            wins = []  # the plain network learned nowhere: its usable rates are unknown
            best = max(
                (p for p in norms["none"] if p["test_accuracy"]["mean"] is not None),
                key=lambda p: p["test_accuracy"]["mean"],
                default=None,
            )
            learned = [p["lr"] for p in norms["batch"] if _all_learned(p)]
            if best is not None:
                findings.append(
                    Finding(
                        "sweep-lr",
                        "Without normalization LeNet learned at no rate in this budget (best "
                        f"{fmt_pct(best['test_accuracy']['mean'])} at lr {fmt_lr(best['lr'])})"
                        + (
                            f"; batch norm learned at {len(learned)} of {len(norms['batch'])} "
                            "rates."
                            if learned
                            else "."
                        ),
                        numbers={"none_accuracy": pct(best["test_accuracy"]["mean"])},
                    )
                )
        for point in wins[-2:]:  # the two highest rates where it matters
            other = plain[point["lr"]]
            acc = other["test_accuracy"]
            other_text = f"the plain network {_failure(other)}" + (
                f" ({fmt_pct(acc['mean'])})" if acc["mean"] is not None else ""
            )
            findings.append(
                Finding(
                    "sweep-lr",
                    f"Batch norm trained at lr {fmt_lr(point['lr'])} "
                    f"({fmt_pm(point['test_accuracy'])}) where {other_text}.",
                    numbers={
                        "lr": point["lr"],
                        "batch_accuracy": pct(point["test_accuracy"]["mean"]),
                        **({"none_accuracy": pct(acc["mean"])} if acc["mean"] is not None else {}),
                    },
                )
            )
        hb, hn = highest["batch"], highest["none"]
        claim = (
            "Ioffe & Szegedy (2015) report that batch norm allows much higher learning rates "
            "(BN-Inception trained at 5x and 30x the base rate, 14x fewer steps)."
        )
        if hn is None:
            verdict = INCONCLUSIVE  # no usable rate without normalization to compare with
        elif hb is not None and hb > hn:
            verdict = AGREES
        elif hn is not None and (hb is None or hn > hb):
            verdict = DISAGREES
        else:
            verdict = INCONCLUSIVE  # both learned up to the same rate, or neither learned
        nb = "no rate" if hb is None else f"lr {fmt_lr(hb)}"
        nn_ = "no rate" if hn is None else f"lr {fmt_lr(hn)}"
        ratio = f" ({hb / hn:g}x higher)" if hb and hn and hb > hn else ""
        findings.append(
            Finding(
                "sweep-lr",
                f"The highest learning rate at which every seed learned: {nb} with batch norm, "
                f"{nn_} without{ratio}.",
                claim=claim,
                verdict=verdict,
                numbers={k: v for k, v in (("batch_lr", hb), ("none_lr", hn)) if v is not None},
            )
        )
    for norm, points in norms.items():
        done = [p for p in points if p["test_accuracy"]["mean"] is not None]
        if done:
            best = max(done, key=lambda p: p["test_accuracy"]["mean"])
            findings.append(
                Finding(
                    "sweep-lr",
                    f"Best accuracy with {label(norm)}: {fmt_pm(best['test_accuracy'])} "
                    f"at lr {fmt_lr(best['lr'])}.",
                    numbers={"accuracy": pct(best["test_accuracy"]["mean"]), "lr": best["lr"]},
                )
            )
    return findings


# ============================================================================= batch size
WU_HE_BN = (32, 23.6, 2, 34.7)  # batch, error %, batch, error %
WU_HE_GN_SPREAD = 0.2  # 24.1 ± 0.1 % over batch sizes 32 ... 2


def reference_batch(sizes: Sequence[int], target: int = WU_HE_BN[0]) -> int:
    """The batch size closest to ``target`` (Wu & He's 32) on a log scale; ties: larger."""
    return min(sizes, key=lambda b: (abs(math.log2(b / target)), -b))


def batch_size_findings(summary: Mapping[str, Any]) -> list[Finding]:
    """How much each arm loses from the reference batch (closest to Wu & He's 32) to the
    smallest (eval mode), compared across arms; batch against running statistics at the
    smallest batch."""
    arms = summary["arms"]
    findings: list[Finding] = []
    drops: dict[str, float] = {}
    learned_any = False
    for arm, points in arms.items():
        done = [p for p in points if p["eval_accuracy"]["mean"] is not None]
        if len(done) < 2:
            continue
        small = done[0]
        ref_size = reference_batch([p["batch_size"] for p in done[1:]])
        ref = next(p for p in done if p["batch_size"] == ref_size)
        drop = round(pct(ref["eval_accuracy"]["mean"]) - pct(small["eval_accuracy"]["mean"]), 1)
        best = max(done, key=lambda p: p["eval_accuracy"]["mean"])
        drops[arm] = drop
        if ref["eval_accuracy"]["mean"] > summary["chance"] + CHANCE_MARGIN:
            learned_any = True
        change = f"{drop:.1f} points lost" if drop >= 0 else f"{-drop:.1f} points gained"
        findings.append(
            Finding(
                "sweep-batch-size",
                f"{label(arm).capitalize()}: {fmt_pm(ref['eval_accuracy'])} with "
                f"{ref['batch_size']} images per batch, {fmt_pm(small['eval_accuracy'])} with "
                f"{small['batch_size']} ({change}); best {fmt_pct(best['eval_accuracy']['mean'])}"
                f" at {best['batch_size']}.",
                numbers={
                    "ref_batch": ref["batch_size"],
                    "ref_accuracy": pct(ref["eval_accuracy"]["mean"]),
                    "small_batch": small["batch_size"],
                    "small_accuracy": pct(small["eval_accuracy"]["mean"]),
                    "change": abs(drop),
                    "best_accuracy": pct(best["eval_accuracy"]["mean"]),
                    "best_batch": best["batch_size"],
                },
            )
        )
    others = {a: d for a, d in drops.items() if a in ("group", "layer")}
    if "batch" in drops and others:
        claim = (
            f"Wu & He (2018) report batch norm's ImageNet error rising from {WU_HE_BN[1]} % "
            f"at {WU_HE_BN[0]} images per batch to {WU_HE_BN[3]} % at {WU_HE_BN[2]} "
            f"(+{WU_HE_BN[3] - WU_HE_BN[1]:.1f} points), while group norm stays at "
            "24.1 ± 0.1 %."
        )
        worst_other = max(others.values())
        if not learned_any:
            verdict = INCONCLUSIVE  # nothing learned at the reference batch: all noise
        elif drops["batch"] > max(worst_other, 0.0) + 1.0:
            verdict = AGREES
        elif drops["batch"] < worst_other + 1.0:
            verdict = DISAGREES
        else:
            verdict = INCONCLUSIVE
        text = (
            "Going down to the smallest batch, batch norm's accuracy changes by "
            f"{-drops['batch']:+.1f} points, "
            + ", ".join(f"{label(a)}'s by {-d:+.1f}" for a, d in others.items())
            + "."
        )
        findings.append(
            Finding(
                "sweep-batch-size",
                text,
                claim=claim,
                verdict=verdict,
                numbers={f"{a}_change": -d for a, d in drops.items()},
            )
        )
    if "syncbn" in arms and "localbn" in arms:
        pairs = [
            (a, b)
            for a, b in zip(arms["syncbn"], arms["localbn"], strict=True)
            if a["eval_accuracy"]["mean"] is not None and b["eval_accuracy"]["mean"] is not None
        ]
        if pairs:
            sync, local = pairs[0]
            findings.append(
                Finding(
                    "sweep-batch-size",
                    f"With {sync['batch_size']} images per step shared by several processes, "
                    f"synchronised batch norm scores {fmt_pm(sync['eval_accuracy'])} and "
                    f"per-process batch norm {fmt_pm(local['eval_accuracy'])}.",
                    numbers={
                        "syncbn_accuracy": pct(sync["eval_accuracy"]["mean"]),
                        "localbn_accuracy": pct(local["eval_accuracy"]["mean"]),
                    },
                )
            )
    if "batch" in arms:
        small = arms["batch"][0]
        eval_acc, batch_acc = small["eval_accuracy"], small["batch_stats_accuracy"]
        if eval_acc["mean"] is not None and batch_acc["mean"] is not None:
            better = "better" if batch_acc["mean"] > eval_acc["mean"] else "worse"
            findings.append(
                Finding(
                    "sweep-batch-size",
                    f"At {small['batch_size']} images per batch, batch norm with the statistics of "
                    f"test batches of {small['batch_size']} scores {fmt_pct(batch_acc['mean'])}, "
                    f"{better} than with its running statistics ({fmt_pct(eval_acc['mean'])}).",
                    numbers={
                        "batch_stats_accuracy": pct(batch_acc["mean"]),
                        "eval_accuracy": pct(eval_acc["mean"]),
                    },
                )
            )
    return findings


# ================================================================================== probes
SMOOTHNESS_NAMES = {
    "loss_variation": "loss variation",
    "gradient_change": "gradient change",
    "beta_smoothness": "effective beta-smoothness",
}


def probe_findings(summary: Mapping[str, Any]) -> list[Finding]:
    """Per activation: Santurkar et al.'s smoothness with and without batch norm,
    saturation (sigmoid) or inactive units (ReLU), and the drift of the pre-activations."""
    findings: list[Finding] = []
    for activation, group in summary["activations"].items():
        findings.extend(_probe_activation_findings(activation, group["norms"]))
    return findings


def _probe_activation_findings(activation: str, norms: Mapping[str, Any]) -> list[Finding]:
    findings: list[Finding] = []
    if "batch" in norms and "none" in norms:
        with_bn, without = norms["batch"]["trajectory_mean"], norms["none"]["trajectory_mean"]
        parts, smaller, numbers = [], 0, {}
        compared = 0
        for key, name in SMOOTHNESS_NAMES.items():
            a, b = with_bn.get(key), without.get(key)
            if a is None or b is None:
                continue
            compared += 1
            smaller += a < b
            ratio = b / a if a > 0 else math.inf
            parts.append(f"{name} {fmt_num(a)} with batch norm vs {fmt_num(b)} without "
                         f"({fmt_num(ratio)}x)")  # fmt: skip
            numbers[f"{key}_batch"] = float(fmt_num(a))
            numbers[f"{key}_none"] = float(fmt_num(b))
        if compared:
            plateau = _plateau_note(norms["none"])
            if plateau:
                verdict = INCONCLUSIVE  # a network that does not learn is no comparison
            elif smaller == compared:
                verdict = AGREES
            elif smaller == 0:
                verdict = DISAGREES
            else:
                verdict = INCONCLUSIVE
            findings.append(
                Finding(
                    "probe",
                    f"With {activation}, along the training trajectory (mean over the probes "
                    "after step 0): " + "; ".join(parts) + "." + plateau,
                    claim=(
                        "Santurkar et al. (2018) find all three much smaller with batch norm: "
                        "a smoother loss landscape, not less internal covariate shift, is what "
                        "helps."
                    ),
                    verdict=verdict,
                    numbers=numbers,
                )
            )
    flat_units = "saturated" if activation in ("sigmoid", "tanh") else "inactive (zero)"
    for norm in ("none", "batch"):
        if norm not in norms or not norms[norm]["layers"]:
            continue
        layers = norms[norm]["layers"]
        final = {name: stats["saturation"]["mean"][-1] for name, stats in layers.items()}
        start = {name: stats["saturation"]["mean"][0] for name, stats in layers.items()}
        worst = max(final, key=final.get)
        findings.append(
            Finding(
                "probe",
                f"With {activation} and {label(norm)}, the layer with the most {flat_units} "
                f"units at the end is {worst}: {fmt_pct(final[worst])} (at the start: "
                f"{fmt_pct(start[worst])}).",
                numbers={"final_fraction": pct(final[worst]), "start_fraction": pct(start[worst])},
            )
        )
    if "batch" in norms and "none" in norms and norms["none"]["layers"]:
        drift = {}
        for norm in ("batch", "none"):
            stds = {name: s["std"]["mean"] for name, s in norms[norm]["layers"].items()}
            drift[norm] = {name: (v[0], v[-1]) for name, v in stds.items()}
        layer = max(drift["none"], key=lambda n: _log_ratio(*drift["none"][n]))
        a0, a1 = drift["none"][layer]
        b0, b1 = drift["batch"][layer]
        findings.append(
            Finding(
                "probe",
                f"With {activation}, the spread of the {layer} pre-activations moves most without "
                f"normalization: its std goes from {fmt3(a0)} to {fmt3(a1)}; with batch norm "
                f"from {fmt3(b0)} to {fmt3(b1)}.",
                claim=(
                    "Ioffe & Szegedy (2015) motivate batch norm by this drift of each layer's "
                    "input distribution during training (their Figure 1: a sigmoid's input, "
                    "drifting without batch norm, stable with it)."
                ),
                verdict=AGREES if _log_ratio(a0, a1) > _log_ratio(b0, b1) else DISAGREES,
                numbers={
                    "none_start": float(fmt3(a0)),
                    "none_end": float(fmt3(a1)),
                    "batch_start": float(fmt3(b0)),
                    "batch_end": float(fmt3(b1)),
                },
            )
        )
    return findings


def _log_ratio(start: float, end: float) -> float:
    """``|ln(end / start)|``: how far a positive quantity moved, up or down (0 if unknown)."""
    if not (start > 0 and end > 0 and math.isfinite(start) and math.isfinite(end)):
        return 0.0
    return abs(math.log(end / start))


PLATEAU_TOLERANCE = 0.05  # nats from ln(classes): the loss of a uniform guess


def _plateau_note(plain: Mapping[str, Any]) -> str:
    """A sentence when the plain network's test loss never left the uniform-guess plateau
    (a flat landscape is smooth for the wrong reason), else ""."""
    losses = [v for v in plain.get("final_test_loss", []) if v is not None and math.isfinite(v)]
    classes = plain.get("num_classes")
    if not losses or not classes:
        return ""
    loss = math.fsum(losses) / len(losses)
    uniform = math.log(classes)
    if abs(loss - uniform) > PLATEAU_TOLERANCE:
        return ""
    return (
        f" Without normalization the test loss ended at {loss:.3f}, within "
        f"{PLATEAU_TOLERANCE} of ln {classes} = {uniform:.3f} (a uniform guess): that "
        "landscape is flat because training has not left the initial plateau."
    )


# =============================================================================== placement
def placement_findings(summary: Mapping[str, Any]) -> list[Finding]:
    """Before against after, per activation, measured against the spread of seeds."""
    rows = summary["rows"]
    findings: list[Finding] = []
    for activation in dict.fromkeys(r["activation"] for r in rows):
        by = {r["placement"]: r for r in rows if r["activation"] == activation}
        if "before" not in by or "after" not in by:
            continue
        a, b = by["before"]["test_accuracy"], by["after"]["test_accuracy"]
        if a["mean"] is None or b["mean"] is None:
            continue
        diff = pct(b["mean"]) - pct(a["mean"])
        noise = pct(max(a["std"], b["std"]))
        winner = "after" if diff > 0 else "before"
        if abs(diff) <= noise:
            verdict_text = "within the spread between seeds"
            verdict = INCONCLUSIVE
        else:
            verdict_text = f"{winner} is better by more than the spread between seeds"
            verdict = AGREES if (activation == "relu") == (winner == "after") else DISAGREES
        if activation == "relu":
            claim = (
                "Mishkin et al. (2017) found batch norm after the ReLU slightly better on "
                "ImageNet; Ioffe & Szegedy (2015) put it before."
            )
        else:
            claim = (
                "Ioffe & Szegedy (2015) put batch norm before the nonlinearity, as the "
                "tutorial does, to keep the sigmoid out of saturation."
            )
        findings.append(
            Finding(
                "placement",
                f"With {activation}, {summary.get('norm', 'batch')} norm before the activation "
                f"reaches {fmt_pm(a)} and after it {fmt_pm(b)}: a difference of {diff:+.1f} "
                f"points, {verdict_text} ({noise:.1f} points).",
                claim=claim,
                verdict=verdict,
                numbers={
                    "before": pct(a["mean"]),
                    "after": pct(b["mean"]),
                    "difference": round(diff, 1),
                    "noise": noise,
                },
            )
        )
    return findings


# ================================================================================ momentum
def momentum_findings(summary: Mapping[str, Any]) -> list[Finding]:
    """How far eval mode lagged, when the lag closed, against the closed form."""
    findings: list[Finding] = []
    closing: list[tuple[float, int | None]] = []
    for item in summary["momenta"]:
        m = item["momentum"]
        gap = item["max_gap_after_start"]
        closed = item["closed_at_step"]
        closing.append((m, closed))
        end = item["gap"]["mean"][-1] if item["gap"]["mean"] else None
        when = (
            f"first came within {pct(summary['tolerance']):.1f} points at step {closed}"
            if closed is not None
            else f"had not closed by step {item['steps'][-1]}"
        ) + f" (last gap {100 * end:.1f} points)"
        findings.append(
            Finding(
                "momentum",
                f"With batch-norm momentum {m:g}, eval mode trailed batch statistics by up to "
                f"{100 * gap:.1f} points; the gap {when}. The running averages forget their "
                f"initial value (to 5 %) after {item['steps_to_forget']:.0f} steps.",
                numbers={
                    "momentum": m,
                    "max_gap": round(100 * gap, 1),
                    **({"closed_at": closed} if closed is not None else {}),
                    "steps_to_forget": round(item["steps_to_forget"]),
                },
            )
        )
    if len(closing) >= 2:
        ordered = sorted(closing)  # by momentum, ascending
        horizon = max(s for it in summary["momenta"] for s in it["steps"]) + 1
        keys = [horizon if c is None else c for _, c in ordered]
        monotone = all(a >= b for a, b in itertools.pairwise(keys))
        findings.append(
            Finding(
                "momentum",
                "A larger momentum closed the gap "
                + ("no later" if monotone else "not always sooner")
                + " than a smaller one ("
                + ", ".join(
                    f"{m:g}: " + ("not closed" if c is None else f"step {c}") for m, c in ordered
                )
                + ").",
                claim=(
                    "The closed form (1 - m)^t predicts that the initial running statistics "
                    "fade after ln 0.05 / ln(1 - m) steps, sooner for a larger momentum."
                ),
                verdict=(
                    INCONCLUSIVE
                    if all(c is None for _, c in ordered)
                    else AGREES
                    if monotone
                    else DISAGREES
                ),
            )
        )
    return findings


FINDERS = {
    "compare": compare_findings,
    "sweep-lr": lr_findings,
    "sweep-batch-size": batch_size_findings,
    "probe": probe_findings,
    "placement": placement_findings,
    "momentum": momentum_findings,
}


def findings_for(experiment: str, summary: Mapping[str, Any]) -> list[Finding]:
    """The findings of one experiment's summary."""
    return FINDERS[experiment](summary)


def all_findings(summaries: Mapping[str, Mapping[str, Any]]) -> list[Finding]:
    """The findings of every experiment in ``summaries``, in the experiments' order."""
    out: list[Finding] = []
    for name, summary in summaries.items():
        out.extend(findings_for(name, summary))
    return out


def verdict_counts(findings: Sequence[Finding]) -> dict[str, int]:
    """How many findings with a claim agree, disagree or are inconclusive."""
    counts = {AGREES: 0, DISAGREES: 0, INCONCLUSIVE: 0}
    for f in findings:
        if f.claim:
            counts[f.verdict] += 1
    return counts
