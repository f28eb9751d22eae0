"""Omniglot zips: counts against the shipped files, the official runs' answers, layout errors,
and the downloader against the local files through file:// URLs."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemblekit import omniglot
from ensemblekit.data import DataError

DATA = Path(__file__).resolve().parents[2] / "shared/data/omniglot"
needs_data = pytest.mark.skipif(
    not (DATA / "all_runs.zip").exists(),
    reason=f"Omniglot zips not found at {DATA} (CI puts ../shared beside the clone)",
)


@pytest.fixture(scope="module")
def background():
    return omniglot.read_background([DATA / z for z in omniglot.SMALL_BACKGROUND], image_size=28)


@pytest.fixture(scope="module")
def runs_native():
    return omniglot.read_runs(DATA / omniglot.RUNS_ZIP)


@needs_data
def test_two_small_backgrounds_are_242_characters_and_4840_images(background):
    assert len(background.classes) == 242
    assert len(background) == 4840
    assert background.images.shape == (4840, 1, 28, 28) and background.images.dtype == torch.uint8
    assert torch.equal(torch.bincount(background.labels), torch.full((242,), 20))
    assert len(background.alphabets) == 8 and {"Greek", "Latin"} <= set(background.alphabets)


@needs_data
def test_shared_alphabets_are_counted_once():
    one = omniglot.read_background([DATA / omniglot.SMALL_BACKGROUND[0]], image_size=8)
    two = omniglot.read_background([DATA / omniglot.SMALL_BACKGROUND[1]], image_size=8)
    shared = set(one.classes) & set(two.classes)
    assert {c.split("/")[0] for c in shared} == {"Greek", "Latin"}
    assert len(one.classes) + len(two.classes) - len(shared) == 242


@needs_data
def test_twenty_runs_of_twenty_queries_each_with_its_answer(runs_native):
    assert runs_native.support.shape == (20, 20, 1, 105, 105)
    assert runs_native.queries.shape == (20, 20, 1, 105, 105)
    # every run asks each of its 20 characters exactly once
    assert torch.equal(runs_native.answers.sort(dim=1).values, torch.arange(20).expand(20, 20))
    # run01/class_labels.txt begins: item01 -> class08, item02 -> class09, item03 -> class02
    assert runs_native.answers[0, :3].tolist() == [7, 8, 1]


@needs_data
def test_images_decode_to_the_png_pixels(runs_native):
    from PIL import Image

    with zipfile.ZipFile(DATA / omniglot.RUNS_ZIP) as z:
        png = Image.open(io.BytesIO(z.read("run03/test/item05.png"))).convert("L")
    assert np.array_equal(runs_native.queries[2, 4, 0].numpy(), np.asarray(png))
    assert set(np.unique(np.asarray(png)).tolist()) <= {0, 255}  # one-bit drawings


def _zip(path: Path, names: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in names.items():
            z.writestr(name, data)
    return path


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (105, 105), 255).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_zip_not_in_omniglot_layout_names_what_was_expected(tmp_path):
    flat = _zip(tmp_path / "flat.zip", {"images/a.png": _png()})
    with pytest.raises(DataError, match=r"expected <root>/<alphabet>/<character>/<id>\.png"):
        omniglot.read_background([flat])
    with pytest.raises(DataError, match="runNN/training"):
        omniglot.read_runs(flat)
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a zip"):
        omniglot.read_background([garbage])


def test_a_tiny_zip_in_the_right_layout_reads(tmp_path):
    png = _png()
    good = _zip(tmp_path / "bg.zip", {f"bg/Alpha/character0{c}/{i}.png": png for c in (1, 2) for i in range(3)})
    data = omniglot.read_background([good], image_size=35)
    assert data.classes == ("Alpha/character01", "Alpha/character02") and data.images.shape == (6, 1, 35, 35)
    with pytest.raises(ValueError, match="image_size"):
        omniglot.read_background([good], image_size=200)


@needs_data
def test_download_from_a_file_url_verifies_checksums(tmp_path):
    files = (omniglot.SMALL_BACKGROUND[0], omniglot.RUNS_ZIP)
    folder = omniglot.download(files, root=tmp_path / "cache", base_url=DATA.as_uri())
    for name in files:
        assert (folder / name).read_bytes() == (DATA / name).read_bytes()
    assert omniglot.locate(files, folder) == folder
    # a mirror whose file is corrupt: an error naming the checksum, nothing left behind
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / omniglot.RUNS_ZIP).write_bytes((DATA / omniglot.RUNS_ZIP).read_bytes()[:-10])
    with pytest.raises(DataError, match="SHA-256"):
        omniglot.download((omniglot.RUNS_ZIP,), root=tmp_path / "other", base_url=mirror.as_uri())
    assert list((tmp_path / "other").iterdir()) == []


def test_download_of_a_zip_without_a_known_checksum_checks_its_layout(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _zip(mirror / "images_background.zip", {"notes/readme.txt": b"hello"})
    with pytest.raises(DataError, match="expected"):
        omniglot.download(("images_background.zip",), root=tmp_path / "cache", base_url=mirror.as_uri())
    _zip(mirror / "images_background.zip", {"images_background/A/character01/1.png": _png()})
    folder = omniglot.download(("images_background.zip",), root=tmp_path / "cache", base_url=mirror.as_uri())
    assert (folder / "images_background.zip").exists()
    with pytest.raises(DataError, match="download failed"):
        omniglot.download(("images_evaluation.zip",), root=tmp_path / "cache", base_url=mirror.as_uri())
