"""Discovery: the search order, the accepted layouts and file names, the error messages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from normlab.data import (
    DataLocationError,
    DataNotFoundError,
    DatasetSpec,
    cache_dir,
    find_dataset,
    get_spec,
    load_dataset,
)
from normlab.data import download as download_module
from normlab.data.discovery import candidate_folders, locate_files, require_dataset
from normlab.errors import UsageError


@pytest.fixture
def spec(make_data: Callable[..., DatasetSpec], isolated: Path) -> DatasetSpec:
    """A tiny spec named fashion-mnist (the name decides the folders searched)."""
    built = make_data(isolated / "scratch")
    return replace(built, name="fashion-mnist", torchvision_dir="FashionMNIST")


def test_search_order(
    spec: DatasetSpec, make_data: Callable[..., DatasetSpec], isolated: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    places = {
        "cache": isolated / "home" / ".cache" / "normlab" / "fashion-mnist",
        "torchvision": isolated / "cwd" / "data" / "FashionMNIST" / "raw",
        "debian": isolated / "debian" / "fashion-mnist",
        "env": isolated / "env",
    }
    assert find_dataset(spec) is None
    for folder in places.values():
        make_data(folder)
    monkeypatch.setenv("NORMLAB_DATA", str(places["env"]))
    explicit = isolated / "explicit"
    make_data(explicit)
    # each place wins over every later one; remove it and the next one is found
    assert find_dataset(spec, explicit) == explicit
    assert find_dataset(spec) == places["env"]
    monkeypatch.delenv("NORMLAB_DATA")
    assert find_dataset(spec) == places["debian"]
    (places["debian"] / "train-images-idx3-ubyte.gz").unlink()  # incomplete: skipped
    assert find_dataset(spec) == places["torchvision"]
    monkeypatch.chdir(isolated)  # ./data/... is relative to the working directory
    assert find_dataset(spec) == places["cache"]


def test_explicit_data_dir_is_exclusive(
    spec: DatasetSpec, make_data: Callable[..., DatasetSpec], isolated: Path
) -> None:
    make_data(isolated / "debian" / "fashion-mnist")
    (isolated / "empty").mkdir()
    assert find_dataset(spec) == isolated / "debian" / "fashion-mnist"
    assert find_dataset(spec, isolated / "empty") is None
    with pytest.raises(DataNotFoundError, match=r"fashion-mnist not found: looked in .*empty"):
        require_dataset(spec, isolated / "empty")


@pytest.mark.parametrize("layout", [".", "fashion-mnist", "FashionMNIST/raw"])
def test_data_dir_layouts(
    spec: DatasetSpec, make_data: Callable[..., DatasetSpec], isolated: Path, layout: str
) -> None:
    make_data(isolated / "root" / layout)
    assert find_dataset(spec, isolated / "root") == isolated / "root" / layout


def test_env_folder_or_subfolder(
    spec: DatasetSpec, make_data: Callable[..., DatasetSpec], isolated: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    make_data(isolated / "env" / "fashion-mnist")
    monkeypatch.setenv("NORMLAB_DATA", str(isolated / "env"))
    assert find_dataset(spec) == isolated / "env" / "fashion-mnist"


def test_xdg_cache_home_is_respected(
    spec: DatasetSpec, make_data: Callable[..., DatasetSpec], isolated: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    assert cache_dir("mnist") == isolated / "home" / ".cache" / "normlab" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", str(isolated / "xdg"))
    assert cache_dir("mnist") == isolated / "xdg" / "normlab" / "mnist"
    make_data(isolated / "xdg" / "normlab" / "fashion-mnist")
    assert find_dataset(spec) == isolated / "xdg" / "normlab" / "fashion-mnist"


def test_candidate_folders_name_their_origin(isolated: Path) -> None:
    origins = [origin for _, origin in candidate_folders("mnist")]
    assert origins == ["Debian package", "torchvision layout", "user cache"]
    folders = [folder for folder, _ in candidate_folders("mnist")]
    assert folders[1] == isolated / "cwd" / "data" / "MNIST" / "raw"


def test_raw_preferred_over_gz_and_dotted_names(
    spec: DatasetSpec, make_data: Callable[..., DatasetSpec], isolated: Path
) -> None:
    folder = isolated / "both"
    make_data(folder, gz=True)
    make_data(folder, gz=False)
    files = locate_files(spec, folder)
    assert files["train_images"].name == "train-images-idx3-ubyte"
    dotted = isolated / "dotted"
    make_data(dotted, gz=False)
    for path in dotted.iterdir():
        path.rename(path.with_name(path.name.replace("-idx", ".idx")))
    assert locate_files(spec, dotted)["test_labels"].name == "t10k-labels.idx1-ubyte"


def test_partial_folder_message(
    spec: DatasetSpec, make_data: Callable[..., DatasetSpec], isolated: Path
) -> None:
    folder = isolated / "partial"
    make_data(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError) as info:
        require_dataset(spec, folder)
    message = str(info.value)
    assert "holds only 3 of its files (missing: t10k-labels-idx1-ubyte[.gz])" in message
    assert "normlab data download --dataset fashion-mnist" in message and "\n" not in message


def test_missing_data_dir_message(isolated: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"--data-dir .*nope is not a folder.*make data"):
        require_dataset("fashion-mnist", isolated / "nope")


def test_env_naming_no_folder_is_an_error(
    make_data: Callable[..., DatasetSpec], isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_data(isolated / "debian" / "fashion-mnist")  # found, were the variable skipped
    (isolated / "a-file").write_text("not a folder")
    for value in (isolated / "nonexistent", isolated / "a-file"):
        monkeypatch.setenv("NORMLAB_DATA", str(value))
        expected = rf"^NORMLAB_DATA={value} is not a folder; unset it, or point it to a folder"
        for look in (find_dataset, require_dataset, candidate_folders):
            with pytest.raises(DataLocationError, match=expected) as info:
                look("fashion-mnist")
            assert isinstance(info.value, UsageError) and "\n" not in str(info.value)
        # an explicit --data-dir is searched alone: the variable does not matter then
        assert find_dataset("fashion-mnist", isolated / "debian") == isolated / "debian" / (
            "fashion-mnist"
        )
    monkeypatch.setenv("NORMLAB_DATA", "")  # empty: unset
    assert find_dataset("fashion-mnist") == isolated / "debian" / "fashion-mnist"


def test_not_found_lists_places_and_ways_out(isolated: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        require_dataset("mnist")
    message = str(info.value)
    assert str(isolated / "debian" / "mnist") in message
    assert "normlab data download --dataset mnist" in message and "NORMLAB_DATA" in message
    assert "make data" not in message  # make data provisions Fashion-MNIST only


def test_get_spec() -> None:
    assert get_spec("FashionMNIST").name == "fashion-mnist"
    assert get_spec("MNIST").name == "mnist"
    with pytest.raises(UsageError, match=r"unknown dataset 'cifar'; valid: fashion-mnist, mnist"):
        get_spec("cifar")
    with pytest.raises(TypeError):
        get_spec(3)  # type: ignore[arg-type]


def test_fallbacks_do_not_swallow_a_bad_env_variable(
    make_data: Callable[..., DatasetSpec], isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Downloading when the data is missing, or generating images instead (``bench train
    --data auto``), is for missing data: a ``$NORMLAB_DATA`` naming no folder is an error
    there too, and nothing is downloaded."""
    from normlab.bench.train import training_images

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("downloaded although NORMLAB_DATA is wrong")

    monkeypatch.setattr(download_module, "download_dataset", no_download)
    monkeypatch.setenv("NORMLAB_DATA", str(isolated / "typo"))
    with pytest.raises(DataLocationError, match=r"NORMLAB_DATA=.*typo is not a folder"):
        load_dataset("fashion-mnist", download=True)
    with pytest.raises(DataLocationError, match=r"NORMLAB_DATA=.*typo is not a folder"):
        training_images("auto")
    monkeypatch.delenv("NORMLAB_DATA")
    assert training_images("auto")[0] == "synthetic"  # nothing found: generated images
