"""Fashion-MNIST and MNIST: find, download, verify, load into memory, and batch.

Public API::

    data = load_dataset("fashion-mnist")            # Dataset: uint8 images, int64 labels
    for x, y in batches(data.train_images, data.train_labels, 64,
                        shuffle=True, seed=0, epoch=0):
        ...                                          # x: (64, 1, 28, 28) float32 in [-1, 1]

Modules: :mod:`~normlab.data.idx` (IDX reader/writer and checks),
:mod:`~normlab.data.sources` (file names, sizes, checksums, URLs),
:mod:`~normlab.data.discovery` (where files are looked for),
:mod:`~normlab.data.verify` (per-file reports), :mod:`~normlab.data.download`
(verified atomic downloads), :mod:`~normlab.data.dataset` (the in-memory ``Dataset``),
:mod:`~normlab.data.batches` (mini-batches, normalisation).
"""

from normlab.data.batches import (
    batches,
    epoch_order,
    final_batch_size,
    normalize_images,
    num_batches,
)
from normlab.data.dataset import Dataset, load_dataset, synthetic_dataset, write_dataset
from normlab.data.discovery import (
    DataLocationError,
    DataNotFoundError,
    cache_dir,
    find_dataset,
    search,
)
from normlab.data.download import CorruptDownloadError, DownloadError, download_dataset
from normlab.data.idx import read_idx, write_idx
from normlab.data.sources import DATASETS, FASHION_MNIST, MNIST, DatasetSpec, FileSpec, get_spec
from normlab.data.verify import DatasetStatus, FileReport, dataset_status, verify_dataset

__all__ = [
    "DATASETS",
    "FASHION_MNIST",
    "MNIST",
    "CorruptDownloadError",
    "DataLocationError",
    "DataNotFoundError",
    "Dataset",
    "DatasetSpec",
    "DatasetStatus",
    "DownloadError",
    "FileReport",
    "FileSpec",
    "batches",
    "cache_dir",
    "dataset_status",
    "download_dataset",
    "epoch_order",
    "final_batch_size",
    "find_dataset",
    "get_spec",
    "load_dataset",
    "normalize_images",
    "num_batches",
    "read_idx",
    "search",
    "synthetic_dataset",
    "verify_dataset",
    "write_dataset",
    "write_idx",
]
