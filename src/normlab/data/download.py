"""Downloads of a dataset's IDX files: progress, verification, retries, atomic writes.

Each file is streamed into a hidden temporary file in the destination folder
(``.<name>.<random>.part``, a name discovery never accepts), fsynced, read back and
verified exactly as the loader does (IDX structure, size, sha256 of the decompressed
bytes), and only then renamed onto its final name with :func:`os.replace`. A download
killed at any point leaves at most a ``.part`` file, which the next download removes;
never a file that passes as good.

Network failures, server errors (5xx, 408, 429) and transfers cut short (fewer bytes
than Content-Length, or a truncated gzip stream) are retried with exponential backoff.
A complete file whose content is wrong (checksum mismatch, bad structure) and client
errors such as 404 are not retried: the same request would return the same bytes.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from normlab import __version__
from normlab.data.discovery import cache_dir, locate_files
from normlab.data.idx import gunzip, is_gzip
from normlab.data.sources import DatasetSpec, FileSpec, get_spec
from normlab.data.verify import check_content, inspect_file, sha256_hex

CHUNK = 1 << 16  # bytes per read
RETRYABLE_HTTP = frozenset({408, 429, 500, 502, 503, 504})


class DownloadError(OSError):
    """A download failed for good (after retries, or a non-retryable HTTP error)."""


class CorruptDownloadError(ValueError):
    """A complete download whose content is wrong (checksum, size or IDX structure)."""


class _Transient(Exception):
    """A failure worth retrying."""


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets you open a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fetch(url: str, out: BinaryIO, *, desc: str, progress: bool, timeout: float) -> None:
    """Stream ``url`` into the open binary file ``out``; raises _Transient or DownloadError."""
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": f"normlab/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = 0
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=desc, disable=not progress,
                leave=False, file=sys.stderr,
            ) as bar:  # fmt: skip
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        if error.code in RETRYABLE_HTTP:
            raise _Transient(f"HTTP {error.code} {error.reason}") from None
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        raise _Transient(f"{type(e).__name__}: {reason}") from None
    # http.client returns b"" when the server closes early instead of raising: count bytes.
    if total is not None and received != total:
        raise _Transient(f"connection closed after {received} of {total} bytes")


def _verify_download(spec: DatasetSpec, file: FileSpec, tmp: Path, final: Path) -> None:
    """Verify a downloaded temp file as if it were ``final``; raises _Transient for a
    truncated gzip stream and CorruptDownloadError for wrong content."""
    raw = tmp.read_bytes()
    try:
        data = gunzip(raw, final) if is_gzip(final) else raw
    except ValueError as error:
        raise _Transient(str(error)) from None
    try:
        _, problem = check_content(spec, file, final, data, sha256_hex(data))
    except ValueError as error:
        problem = str(error)
    if problem:
        raise CorruptDownloadError(f"downloaded {problem}")


def download_file(
    spec: DatasetSpec,
    file: FileSpec,
    url: str,
    final: Path,
    *,
    retries: int = 3,
    backoff: float = 1.0,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``final`` atomically, verified against ``file``.

    Args:
        retries: attempts in all (>= 1).
        backoff: seconds before the 2nd attempt; doubled before each later one.

    Raises:
        DownloadError: every attempt failed, or a non-retryable HTTP error.
        CorruptDownloadError: the complete file's content is wrong.
    """
    if retries < 1:
        raise ValueError(f"retries must be >= 1, got {retries}")
    last = ""
    for attempt in range(1, retries + 1):
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                _fetch(url, out, desc=final.name, progress=progress, timeout=timeout)
                out.flush()
                os.fsync(out.fileno())
            _verify_download(spec, file, tmp, final)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            return final
        except _Transient as error:
            last = str(error)
            if attempt < retries:
                print(
                    f"normlab: {url}: {last}; retrying ({attempt + 1}/{retries})",
                    file=sys.stderr,
                )
                time.sleep(backoff * 2 ** (attempt - 1))
        finally:
            tmp.unlink(missing_ok=True)
    raise DownloadError(f"{url}: failed after {retries} attempts: {last}")


def _remove_stale_parts(folder: Path, spec: DatasetSpec) -> None:
    for file in spec.files:
        for part in folder.glob(f".{file.stem}*.part"):
            part.unlink(missing_ok=True)


def download_dataset(
    name: str | DatasetSpec = "fashion-mnist",
    dest: str | Path | None = None,
    base_url: str | None = None,
    retries: int = 3,
    progress: bool = True,
    *,
    backoff: float = 1.0,
    timeout: float = 60.0,
) -> Path:
    """Download a dataset's four ``<stem>.gz`` files into ``dest`` and verify them.

    Files already in ``dest`` that verify are kept; ones that fail verification are
    renamed to ``<name>.bad`` (never deleted) and downloaded again.

    Args:
        name: ``"fashion-mnist"``, ``"mnist"`` or a :class:`DatasetSpec`.
        dest: target folder; default: the user cache ``~/.cache/normlab/<name>``.
        base_url: where ``<stem>.gz`` files live; default: the dataset's official URL.
        retries: attempts per file. backoff: first wait in seconds, doubled each retry.
        progress: show tqdm progress bars (on stderr).

    Returns:
        ``dest``, a folder :func:`load_dataset` accepts as ``data_dir``.
    """
    spec = get_spec(name)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 1:
        raise ValueError(f"retries must be >= 1, got {retries!r}")
    folder = Path(dest).expanduser() if dest is not None else cache_dir(spec)
    base = base_url or spec.base_url
    if not base:
        raise ValueError(f"{spec.name} has no download URL; pass base_url")
    base = base if base.endswith("/") else base + "/"
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(folder, spec)
    present = locate_files(spec, folder)
    for file in spec.files:
        if file.role in present:
            _, report = inspect_file(spec, file, present[file.role])
            if report.ok:
                continue
            bad = present[file.role].with_name(present[file.role].name + ".bad")
            os.replace(present[file.role], bad)
            print(f"normlab: {report.problem}; moved aside to {bad.name}", file=sys.stderr)
        final = folder / f"{file.stem}.gz"
        download_file(
            spec, file, base + final.name, final,
            retries=retries, backoff=backoff, progress=progress, timeout=timeout,
        )  # fmt: skip
    return folder
