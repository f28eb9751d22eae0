"""Image folders (`folder:PATH`): loading, conversion to one size and channel count, and the
error cases (too few classes, a single-image class, unreadable files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ensemblekit.data import DataError, load
from ensemblekit.imagefolder import read_image_folder


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def _rgb(h, w, value):
    return np.full((h, w, 3), value, dtype=np.uint8)


def test_reads_classes_converts_size_and_channels(tmp_path):
    _save(tmp_path / "cat" / "a.png", _rgb(20, 30, (200, 10, 10)))
    _save(tmp_path / "cat" / "b.jpg", _rgb(40, 40, (200, 10, 10)))
    _save(tmp_path / "dog" / "a.bmp", np.full((10, 10), 77, dtype=np.uint8))  # greyscale
    _save(tmp_path / "dog" / "sub" / "b.png", _rgb(16, 16, (0, 0, 250)))  # nested files count too
    data = read_image_folder(tmp_path, image_size=(8, 12))
    assert data.classes == ("cat", "dog")
    assert data.images.shape == (4, 3, 8, 12) and data.images.dtype == torch.uint8  # colour present -> RGB
    assert data.labels.tolist() == [0, 0, 1, 1]
    assert data.images[0, :, 4, 6].tolist() == [200, 10, 10]
    assert data.images[2, :, 4, 6].tolist() == [77, 77, 77]  # grey broadcast to RGB
    grey = read_image_folder(tmp_path, image_size=8, channels=1)
    assert grey.images.shape == (4, 1, 8, 8)


def test_all_grey_images_give_one_channel(tmp_path):
    for c in ("a", "b"):
        for i in range(2):
            _save(tmp_path / c / f"{i}.png", np.full((9, 9), 10 * i, dtype=np.uint8))
    assert read_image_folder(tmp_path, image_size=9).images.shape == (4, 1, 9, 9)


def test_data_load_folder_gives_stratified_splits(tmp_path):
    for c in ("x", "y", "z"):
        for i in range(10):
            _save(tmp_path / c / f"{i}.png", np.full((6, 6), 20 * i, dtype=np.uint8))
    splits = load(f"folder:{tmp_path}", val_size=0.0)
    assert splits.classes == ("x", "y", "z") and splits.image_shape == (1, 32, 32)
    assert torch.bincount(splits.test.labels).tolist() == [2, 2, 2]  # 20% of each class
    assert len(splits.train) == 24 and len(splits.val) == 0


def test_corrupt_and_non_image_files_are_listed_and_skipped(tmp_path):
    for c in ("a", "b"):
        for i in range(2):
            _save(tmp_path / c / f"{i}.png", np.zeros((5, 5), dtype=np.uint8))
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (tmp_path / "b" / "notes.txt").write_text("hello")
    (tmp_path / "b" / ".hidden.png").write_bytes(b"ignored entirely")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\).*broken\.png.*notes\.txt"):
        data = read_image_folder(tmp_path, image_size=5)
    assert len(data) == 4 and len(data.skipped) == 2


def test_truncated_image_is_skipped(tmp_path):
    for c in ("a", "b"):
        for i in range(2):
            _save(tmp_path / c / f"{i}.png", (np.random.default_rng(i).random((30, 30)) * 255).astype(np.uint8))
    whole = (tmp_path / "a" / "0.png").read_bytes()
    (tmp_path / "a" / "cut.png").write_bytes(whole[: len(whole) // 2])
    with pytest.warns(UserWarning, match="cut.png"):
        assert len(read_image_folder(tmp_path)) == 4


def test_fewer_than_two_classes_is_an_error(tmp_path):
    for i in range(3):
        _save(tmp_path / "only" / f"{i}.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match="at least 2"):
        read_image_folder(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        read_image_folder(tmp_path / "missing")


def test_a_class_with_a_single_image_is_an_error_naming_it(tmp_path):
    for i in range(3):
        _save(tmp_path / "many" / f"{i}.png", np.zeros((4, 4), dtype=np.uint8))
    _save(tmp_path / "lonely" / "0.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match=r"lonely \(1\)"):
        read_image_folder(tmp_path)
    # a class whose second image is unreadable has, in effect, a single image too
    (tmp_path / "lonely" / "1.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="lonely"):
        read_image_folder(tmp_path)


def test_bad_options_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="channels"):
        read_image_folder(tmp_path, channels=2)
    with pytest.raises(ValueError, match="image_size"):
        read_image_folder(tmp_path, image_size=0)
