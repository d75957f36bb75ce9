"""Where a dataset's files are: the places normlab looks, in order, and what it finds.

Order (the first folder holding all four files wins):

1. an explicit ``data_dir`` (``--data-dir``): the folder itself, ``<data_dir>/<name>``, or
   torchvision's ``<data_dir>/<FashionMNIST|MNIST>/raw``. When given, *only* these are
   searched: asking for a folder and silently getting data from elsewhere would hide
   a mistake;
2. ``$NORMLAB_DATA``: the folder itself or ``$NORMLAB_DATA/<name>``; set to something that
   is not a folder, it is an error (like a missing ``--data-dir``), not silently skipped;
3. Debian's package: ``/usr/share/datasets/<name>`` (``DEBIAN_ROOT``, patchable);
4. torchvision's layout under the working directory: ``./data/FashionMNIST/raw``;
5. the user cache ``~/.cache/normlab/<name>`` (``$XDG_CACHE_HOME`` respected), where
   ``normlab data download`` puts files.

Files may be ``.gz`` or raw; a raw file is preferred when both exist (no decompression).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from normlab.data.sources import DatasetSpec, get_spec
from normlab.errors import UsageError

DEBIAN_ROOT = Path("/usr/share/datasets")  # Debian's dataset-* packages install here


class DataNotFoundError(UsageError):
    """A dataset's files are in none of the places normlab looks."""


class DataLocationError(UsageError):
    """``$NORMLAB_DATA`` names something that is not a folder.

    Not a :class:`DataNotFoundError`: a caller that downloads or falls back when the data is
    missing must not do so here, where the user asked for a place that does not exist.
    """


@dataclass(frozen=True)
class Place:
    """A folder that was searched, why, and which of the dataset's files it holds."""

    folder: Path
    origin: str  # "--data-dir", "$NORMLAB_DATA", "Debian package", "torchvision layout", ...
    files: dict[str, Path]  # role -> file found there

    def complete(self, spec: DatasetSpec) -> bool:
        return len(self.files) == len(spec.files)


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/normlab`` or ``~/.cache/normlab``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "normlab"


def cache_dir(name: str | DatasetSpec) -> Path:
    """The folder ``normlab data download`` writes a dataset into by default."""
    return cache_root() / get_spec(name).name


def env_data_root(spec: DatasetSpec) -> Path | None:
    """The folder ``$NORMLAB_DATA`` names, or None when it is unset or empty.

    Raises:
        DataLocationError: it names something that is not a folder (a typo would otherwise
            silently fall through to the other places).
    """
    value = os.environ.get("NORMLAB_DATA")
    if not value:
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        raise DataLocationError(
            f"NORMLAB_DATA={value} is not a folder; unset it, or point it to a folder holding "
            f"{spec.name}'s four IDX files"
        )
    return root


def candidate_folders(
    name: str | DatasetSpec, data_dir: str | Path | None = None
) -> list[tuple[Path, str]]:
    """The folders searched for a dataset, in order, each with the reason it is searched."""
    spec = get_spec(name)
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        folders = [(root, "--data-dir"), (root / spec.name, "--data-dir")]
        if spec.torchvision_dir:
            folders.append((root / spec.torchvision_dir / "raw", "--data-dir"))
        return folders
    folders = []
    root = env_data_root(spec)
    if root is not None:
        folders += [(root, "$NORMLAB_DATA"), (root / spec.name, "$NORMLAB_DATA")]
    folders.append((DEBIAN_ROOT / spec.name, "Debian package"))
    if spec.torchvision_dir:
        folders.append((Path.cwd() / "data" / spec.torchvision_dir / "raw", "torchvision layout"))
    folders.append((cache_dir(spec), "user cache"))
    return folders


def locate_files(spec: DatasetSpec, folder: Path) -> dict[str, Path]:
    """The dataset's files present in ``folder``: role -> path (raw preferred over .gz)."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for file in spec.files:
        for file_name in file.names:
            path = folder / file_name
            if path.is_file():
                found[file.role] = path
                break
    return found


def search(name: str | DatasetSpec, data_dir: str | Path | None = None) -> list[Place]:
    """Every candidate folder with the files it holds, in search order."""
    spec = get_spec(name)
    return [
        Place(folder, origin, locate_files(spec, folder))
        for folder, origin in candidate_folders(spec, data_dir)
    ]


def find_dataset(name: str | DatasetSpec, data_dir: str | Path | None = None) -> Path | None:
    """The first folder holding all of the dataset's files, or None. Discovery only:
    nothing is read or verified. A ``$NORMLAB_DATA`` that is not a folder raises
    DataLocationError."""
    spec = get_spec(name)
    for place in search(spec, data_dir):
        if place.complete(spec):
            return place.folder
    return None


def how_to_get(spec: DatasetSpec) -> str:
    """The ways out, for error messages."""
    make = "`make data` or " if spec.name == "fashion-mnist" else ""  # make data: Debian's
    return (
        f"get it with {make}`normlab data download --dataset {spec.name}`, "
        "or point --data-dir or NORMLAB_DATA to a folder holding its four IDX files"
    )


def require_dataset(
    name: str | DatasetSpec, data_dir: str | Path | None = None
) -> tuple[Path, dict[str, Path]]:
    """The folder and files of a dataset; raises DataNotFoundError with a one-line way out."""
    spec = get_spec(name)
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise DataNotFoundError(f"--data-dir {data_dir} is not a folder; {how_to_get(spec)}")
    places = search(spec, data_dir)
    for place in places:
        if place.complete(spec):
            return place.folder, place.files
    partial = [place for place in places if place.files]
    if partial:
        place = partial[0]
        missing = [f.stem for f in spec.files if f.role not in place.files]
        detail = f"{place.folder} holds only {len(place.files)} of its files (missing: "
        detail += ", ".join(f"{stem}[.gz]" for stem in missing) + ")"
    else:
        looked = ", ".join(str(folder) for folder, _ in candidate_folders(spec, data_dir))
        detail = f"looked in {looked}"
    raise DataNotFoundError(f"{spec.name} not found: {detail}; {how_to_get(spec)}")
