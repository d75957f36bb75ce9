"""Run directories: where a training run keeps its config, metrics, log and checkpoint.

Layout of ``runs/<name>-<YYYYmmdd-HHMMSS>/``::

    config.json      {"config": resolved config, "run": {data_dir, checkpoint_every, ...},
                      "versions": {...}, "command": [...], "created": ISO time}
    metrics.jsonl    one JSON object per finished epoch, appended and flushed
    train.log        the log of the run (every resume appends to it)
    checkpoint.pt    model, optimizer, position, RNG states, history; written atomically
    summary.json     written when the run ends: status "finished" or "diverged"

A checkpoint is written to a temporary file in the same directory, flushed, fsync'ed
and renamed over ``checkpoint.pt`` (``os.replace`` is atomic), so a run killed at any
moment leaves either the previous checkpoint or the new one, never a torn file. It holds
only tensors and plain containers and is read with ``torch.load(weights_only=True)``.

Example::

    >>> run = Run.create("runs", "lenet-batch", TrainConfig(epochs=1))
    >>> run.append_metrics({"epoch": 1, "test_accuracy": 0.85})
    >>> Run.open(run.path).read_metrics()
    [{'epoch': 1, 'test_accuracy': 0.85}]
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import pickle
import platform
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from normlab import __version__
from normlab.errors import UsageError
from normlab.train.atomic import write_atomic, write_text_atomic
from normlab.train.config import TrainConfig

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
# what torch.load raises for a truncated zip, a foreign pickle, an empty or unreadable file
UNREADABLE_CHECKPOINT = (
    RuntimeError,
    pickle.UnpicklingError,
    EOFError,
    KeyError,
    IndexError,
    zipfile.BadZipFile,
    OSError,
)
CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "summary.json"
DEFAULT_CHECKPOINT_EVERY = 200  # steps between mid-epoch checkpoints (an epoch at batch 64: 938)


def versions() -> dict[str, str]:
    """Versions of what produced a run's numbers."""
    import numpy
    import torch

    return {
        "normlab": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def unwritable_reason(root: str | os.PathLike[str]) -> str | None:
    """Why run directories cannot be made in ``root`` (e.g. ``"is a file"``,
    ``"is not writable (Permission denied)"``), or None when they can.

    The check is the real thing: ``root`` is created if missing and a temporary file is
    made in it and removed (permission bits alone miss read-only file systems and root).
    """
    path = Path(root)
    if path.exists() and not path.is_dir():
        return "is a file"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except (FileExistsError, NotADirectoryError):
        return "lies under a file"
    except OSError as error:  # EACCES, EPERM, EROFS, ENOSPC...
        return f"is not writable ({error.strerror or error})"
    return None


class Run:
    """One run directory. Build it with :meth:`create` or :meth:`open`, not directly."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta

    # ----------------------------------------------------------------- creation
    @classmethod
    def create(
        cls,
        root: str | os.PathLike[str],
        name: str,
        config: TrainConfig | Mapping[str, Any],
        *,
        data_dir: str | os.PathLike[str] | None = None,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        command: list[str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Run:
        """Make ``root/<name>-<YYYYmmdd-HHMMSS>/`` (``-2``, ``-3``... if taken) with config.json.

        Args:
            root: the parent directory (created if missing), e.g. ``runs``.
            name: the run's name; letters, digits, ``.``, ``_`` and ``-``.
            config: a :class:`TrainConfig` or any JSON-ready mapping (experiments).
            data_dir: where the data came from, so a resume finds it again.
            checkpoint_every: steps between mid-epoch checkpoints (0: only at epoch ends).
            command: the command line; default ``sys.argv``.
            extra: more JSON-ready facts to record under ``"run"``.
        """
        if not name or any(not (c.isalnum() or c in "._-") for c in name):
            raise UsageError(f"run name {name!r} must use only letters, digits, '.', '_', '-'")
        if not isinstance(checkpoint_every, int) or checkpoint_every < 0:
            raise UsageError(
                f"checkpoint_every must be a non-negative integer, got {checkpoint_every!r}"
            )
        kind = "train" if isinstance(config, TrainConfig) else "custom"
        config_dict = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
        root_path = Path(root)
        root_path.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = _make_unique_dir(root_path, f"{name}-{stamp}")
        meta = {
            "kind": kind,
            "name": name,
            "config": config_dict,
            "run": {
                "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
                "checkpoint_every": checkpoint_every,
                **(dict(extra) if extra else {}),
            },
            "versions": versions(),
            "command": list(sys.argv if command is None else command),
            "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        write_text_atomic(path / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
        return cls(path, meta)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Run:
        """Open an existing run directory (one with a readable config.json)."""
        run_path = Path(path)
        if not run_path.is_dir():
            raise UsageError(f"{run_path} is not a directory; give a run directory under runs/")
        config_path = run_path / CONFIG_FILE
        if not config_path.is_file():
            raise UsageError(f"{run_path} is not a run directory (no {CONFIG_FILE})")
        try:
            meta = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UsageError(f"cannot read {config_path}: {error}") from None
        if not isinstance(meta, dict) or "config" not in meta:
            raise UsageError(f"{config_path} is not a normlab run config (no 'config' key)")
        return cls(run_path, meta)

    # ----------------------------------------------------------------- facts
    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.path.name))

    @property
    def config(self) -> TrainConfig:
        """The run's :class:`TrainConfig` (only for runs created from one)."""
        if self.meta.get("kind", "train") != "train":
            raise UsageError(f"{self.path} is not a training run (kind {self.meta.get('kind')!r})")
        return TrainConfig.from_dict(self.meta["config"])

    @property
    def data_dir(self) -> str | None:
        return self.meta.get("run", {}).get("data_dir")

    @property
    def checkpoint_every(self) -> int:
        return int(self.meta.get("run", {}).get("checkpoint_every", DEFAULT_CHECKPOINT_EVERY))

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_FILE

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    # ----------------------------------------------------------------- checkpoints
    def save_checkpoint(self, state: Mapping[str, object]) -> Path:
        """Write ``state`` (tensors and plain containers only) atomically to checkpoint.pt."""
        import torch

        write_atomic(self.checkpoint_path, lambda handle: torch.save(dict(state), handle))
        return self.checkpoint_path

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete temporary files a killed writer left behind (``.*.tmp``); returns them."""
        stale = sorted(self.path.glob(".*.tmp"))
        for path in stale:
            with contextlib.suppress(OSError):
                path.unlink()
        return stale

    def load_checkpoint(self) -> dict[str, Any]:
        """Read checkpoint.pt with ``weights_only=True`` onto the CPU."""
        import torch

        if not self.has_checkpoint():
            raise UsageError(f"{self.path} has no {CHECKPOINT_FILE} yet; the run saved none")
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except UNREADABLE_CHECKPOINT:  # how torch.load reports a damaged or foreign file
            raise UsageError(self._unreadable_checkpoint()) from None
        if not isinstance(state, dict):
            raise UsageError(self._unreadable_checkpoint())
        return state

    def _unreadable_checkpoint(self) -> str:
        return (
            f"checkpoint {self.checkpoint_path} is corrupt or truncated (normlab writes it "
            "atomically, so something else changed it); start the run again without --resume"
        )

    # ----------------------------------------------------------------- metrics
    def append_metrics(self, record: Mapping[str, object]) -> None:
        """Append one JSON line to metrics.jsonl and flush it to disk."""
        line = json.dumps(dict(record), allow_nan=True)
        with open(self.path / METRICS_FILE, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def write_metrics(self, records: Sequence[Mapping[str, object]]) -> None:
        """Replace metrics.jsonl with ``records`` (atomically); used when a run resumes."""
        text = "".join(json.dumps(dict(r), allow_nan=True) + "\n" for r in records)
        write_text_atomic(self.path / METRICS_FILE, text)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl, in order ([] if none yet)."""
        path = self.path / METRICS_FILE
        if not path.is_file():
            return []
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise UsageError(f"{path}:{number}: not a JSON line ({error.msg})") from None
        return records

    # ----------------------------------------------------------------- summary
    def write_summary(self, summary: Mapping[str, object]) -> None:
        """Write summary.json (status and final numbers) atomically."""
        write_text_atomic(
            self.path / SUMMARY_FILE, json.dumps(dict(summary), indent=2, allow_nan=True) + "\n"
        )

    def read_summary(self) -> dict[str, Any] | None:
        """summary.json, or None while the run has not ended."""
        path = self.path / SUMMARY_FILE
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    # ----------------------------------------------------------------- logging
    @contextlib.contextmanager
    def logging_to_file(self, logger_name: str = "normlab") -> Iterator[logging.Logger]:
        """Send the ``normlab`` loggers' records to train.log while the block runs."""
        logger = logging.getLogger(logger_name)
        handler = logging.FileHandler(self.path / LOG_FILE, encoding="utf-8")
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
        previous_level = logger.level
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        try:
            yield logger
        finally:
            logger.removeHandler(handler)
            handler.close()
            logger.setLevel(previous_level)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


def _make_unique_dir(root: Path, base: str) -> Path:
    for attempt in range(1, 1000):
        path = root / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise UsageError(f"cannot make a new run directory {root / base}: too many with that name")
