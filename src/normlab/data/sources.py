"""What each dataset is: its four IDX files, their sizes and checksums, classes and URLs.

Checksums are sha256 over the *decompressed* IDX bytes, because the gzip packaging of
the same data differs between sources (Debian's package, the official site, mirrors).
The Fashion-MNIST checksums are recorded here, and the test suite checks them against
the files of Debian's ``dataset-fashion-mnist`` package. For MNIST no decompressed sha256 is
recorded here (we could not check one against the real files), so MNIST files are
verified by their exact size and IDX structure only, and reports say so. Every recorded
checksum also identifies a file (:func:`identify`): Fashion-MNIST's files have MNIST's
sizes and structure, and are refused as MNIST by their checksums.
"""

from __future__ import annotations

from dataclasses import dataclass

from normlab.errors import UsageError

ROLES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class FileSpec:
    """One IDX file of a dataset."""

    role: str  # one of ROLES
    stem: str  # file name without ".gz", e.g. "train-images-idx3-ubyte"
    size: int | None  # decompressed bytes; None = not checked
    sha256: str | None  # of the decompressed bytes; None = not checked

    @property
    def names(self) -> tuple[str, ...]:
        """File names accepted on disk, best first: raw (fastest to load), then gzip,
        then the dotted spelling some mirrors use (``train-images.idx3-ubyte``)."""
        dotted = self.stem.replace("-idx", ".idx")
        return (self.stem, f"{self.stem}.gz", dotted, f"{dotted}.gz")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset in the MNIST layout: four IDX files, images ``(N, H, W)`` uint8."""

    name: str  # "fashion-mnist"
    classes: tuple[str, ...]  # class names, index = label
    files: tuple[FileSpec, ...]  # one per role, in ROLES order
    base_url: str | None = None  # where download_dataset fetches "<stem>.gz"
    torchvision_dir: str | None = None  # torchvision's folder name: ./data/<this>/raw
    image_size: tuple[int, int] = (28, 28)
    num_train: int | None = None  # None = not checked
    num_test: int | None = None
    title: str = ""  # as written in prose: "Fashion-MNIST" (default: name)

    @property
    def display_name(self) -> str:
        """The name as written in prose and reports (``"Fashion-MNIST"``)."""
        return self.title or self.name

    def file(self, role: str) -> FileSpec:
        for spec in self.files:
            if spec.role == role:
                return spec
        raise KeyError(role)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def checksummed(self) -> bool:
        """True when every file has a known sha256."""
        return all(spec.sha256 for spec in self.files)


def _files(sizes: dict[str, int], sha256: dict[str, str | None]) -> tuple[FileSpec, ...]:
    stems = {
        "train_images": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }
    return tuple(FileSpec(role, stems[role], sizes[role], sha256[role]) for role in ROLES)


# 16-byte header + N*28*28 pixels; 8-byte header + N labels.
_SIZES = {
    "train_images": 16 + 60000 * 28 * 28,  # 47040016
    "train_labels": 8 + 60000,  # 60008
    "test_images": 16 + 10000 * 28 * 28,  # 7840016
    "test_labels": 8 + 10000,  # 10008
}

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    classes=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    files=_files(
        _SIZES,
        {
            "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
    ),
    base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    torchvision_dir="FashionMNIST",
    num_train=60000,
    num_test=10000,
    title="Fashion-MNIST",
)

MNIST = DatasetSpec(
    name="mnist",
    classes=tuple(str(digit) for digit in range(10)),
    files=_files(_SIZES, dict.fromkeys(ROLES)),  # no recorded sha256: size + structure only
    base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
    torchvision_dir="MNIST",
    num_train=60000,
    num_test=10000,
    title="MNIST",
)

SPECS: dict[str, DatasetSpec] = {spec.name: spec for spec in (FASHION_MNIST, MNIST)}
DATASETS: tuple[str, ...] = tuple(SPECS)


def get_spec(name: str | DatasetSpec) -> DatasetSpec:
    """The spec for a dataset name (``"fashion-mnist"``, ``"mnist"``), or ``name`` itself."""
    if isinstance(name, DatasetSpec):
        return name
    if not isinstance(name, str):
        raise TypeError(f"dataset must be a name or a DatasetSpec, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key == "fashionmnist":
        key = "fashion-mnist"
    if key not in SPECS:
        raise UsageError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return SPECS[key]


@dataclass(frozen=True)
class KnownFile:
    """A file some dataset's spec records by its checksum."""

    dataset: str  # "fashion-mnist"
    role: str  # one of ROLES


def identify(sha256: str) -> KnownFile | None:
    """The dataset file whose recorded sha256 (of the decompressed bytes) is ``sha256``."""
    for spec in SPECS.values():
        for file in spec.files:
            if file.sha256 == sha256:
                return KnownFile(spec.name, file.role)
    return None
