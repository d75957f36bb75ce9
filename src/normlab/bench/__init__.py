"""Benchmarks with ratios measured side by side in one process.

- :mod:`~normlab.bench.timing`: the harness - candidates timed interleaved (each once per
  repeat, in balanced orders), min/median/max over repeats, ratio of medians and
  per-repeat ratios.
- :mod:`~normlab.bench.memory`: bytes a forward pass saves for its backward.
- :mod:`~normlab.bench.layers`: ``normlab bench layers`` (every layer of the registry vs
  its torch.nn twin, or vs :mod:`~normlab.bench.references`, the plain torch code of its
  formula where torch.nn has none).
- :mod:`~normlab.bench.train`: ``normlab bench train`` (training images/second).
- :mod:`~normlab.bench.bandwidth`: ``normlab bench bandwidth`` (batch norm's GB/s against
  a copy of the same tensor and the GPU's datasheet peak).
- :mod:`~normlab.bench.original`: the course tutorial's pipeline (normlab's re-creation),
  the baseline.
- :mod:`~normlab.bench.report`, :mod:`~normlab.bench.table`: tables and JSON.

Example::

    >>> from normlab.bench import compare, measure
    >>> m = measure({"slow": lambda: sum(range(20_000)), "fast": lambda: sum(range(2_000))})
    >>> compare(m, "slow", "fast").of_medians > 1
    True
"""

from normlab.bench.memory import saved_bytes
from normlab.bench.timing import Measurement, Ratio, Summary, Timing, compare, measure

__all__ = ["Measurement", "Ratio", "Summary", "Timing", "compare", "measure", "saved_bytes"]
