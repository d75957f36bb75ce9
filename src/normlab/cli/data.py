"""``normlab data status|download|verify``: where the datasets are, fetch them, check them.

Exit codes: 0 fine; 1 a file failed verification (checksum, size or structure);
2 missing data or a bad argument (one line on stderr saying how to get the data).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from normlab.data import FileReport

# The same names as normlab.data.DATASETS (a test checks); repeated here because
# importing normlab.data imports torch, and `normlab --help` must stay instant.
DATASET_NAMES = ("fashion-mnist", "mnist")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "data",
        help="find, download and verify Fashion-MNIST / MNIST",
        description="Find, download and verify the datasets (IDX files, .gz or raw).",
    )
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    status = commands.add_parser(
        "status", help="where each dataset is found, and whether it verifies"
    )
    status.add_argument("--dataset", choices=(*DATASET_NAMES, "all"), default="all")
    status.add_argument("--data-dir", type=Path, help="look only in this folder")

    download = commands.add_parser("download", help="download the official files (verified)")
    download.add_argument("--dataset", choices=(*DATASET_NAMES, "all"), default="fashion-mnist")
    download.add_argument(
        "--dest", type=Path, help="target folder (default: ~/.cache/normlab/<dataset>)"
    )
    download.add_argument("--base-url", help="where the <file>.gz are (default: official site)")
    download.add_argument("--retries", type=int, default=3, help="attempts per file (default 3)")
    download.add_argument("--no-progress", action="store_true", help="no progress bars")

    verify = commands.add_parser("verify", help="check structure, sizes and sha256 checksums")
    verify.add_argument("--dataset", choices=(*DATASET_NAMES, "all"), default="fashion-mnist")
    verify.add_argument("--data-dir", type=Path, help="look only in this folder")

    parser.set_defaults(func=run)
    return parser


def _names(choice: str) -> tuple[str, ...]:
    return DATASET_NAMES if choice == "all" else (choice,)


def _mb(size: int | None) -> str:
    if size is None:
        return "?"
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def _check_word(report: FileReport) -> str:
    if not report.ok:
        return "FAILED"
    return "sha256 ok" if report.expected_sha256 else "size+structure ok (no sha256 on record)"


def _print_reports(reports: Sequence[FileReport]) -> None:
    for report in reports:
        on_disk = report.path.stat().st_size if report.path.exists() else None
        print(
            f"  {report.path.name:<30} {_mb(on_disk):>9} on disk  {_mb(report.size):>9}  "
            f"{_check_word(report)}"
        )


def _status(args: argparse.Namespace) -> int:
    from normlab.data import dataset_status
    from normlab.data.discovery import how_to_get

    failed = 0
    for name in _names(args.dataset):
        status = dataset_status(name, args.data_dir)
        spec, found = status.spec, status.found
        if found is None:
            print(f"{name}: not found; {how_to_get(spec)}")
            for place in status.places:
                held = f"{len(place.files)} of {len(spec.files)} files" if place.files else "-"
                print(f"  searched {place.folder} ({place.origin}): {held}")
            continue
        failed += len(status.problems)
        verdict = (
            "verified" if status.verified else f"{len(status.problems)} file(s) FAILED verification"
        )
        print(f"{name}: {found.folder} ({found.origin}), {verdict}")
        _print_reports(status.reports)
        for problem in status.problems:
            print(f"  problem: {problem}")
    return 1 if failed else 0


def _download(args: argparse.Namespace) -> int:
    from normlab.data import CorruptDownloadError, download_dataset

    for name in _names(args.dataset):
        dest = args.dest
        if dest is not None and args.dataset == "all":
            dest = dest / name
        try:
            folder = download_dataset(
                name,
                dest=dest,
                base_url=args.base_url,
                retries=args.retries,
                progress=not args.no_progress,
            )
        except CorruptDownloadError as error:
            print(f"normlab data download: {error}", file=sys.stderr)
            return 1
        print(f"{name}: downloaded and verified in {folder}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from normlab.data import verify_dataset

    failed = []
    for name in _names(args.dataset):
        reports = verify_dataset(name, args.data_dir)  # DataNotFoundError -> exit 2
        print(f"{name}: {reports[0].path.parent}")
        _print_reports(reports)
        failed += [report for report in reports if not report.ok]
    for report in failed:
        print(f"normlab data verify: {report.problem}", file=sys.stderr)
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    actions = {"status": _status, "download": _download, "verify": _verify}
    return actions[args.data_command](args)
