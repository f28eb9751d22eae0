"""Shared test helpers: IDX and CIFAR-10 files written byte by byte with `struct` (an encoder that
shares no code with the reader under test), and an environment that never sees the user's data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

# IDX type code and the struct format of one element (big-endian on disk)
IDX_TYPES = {
    np.dtype(np.uint8): (0x08, "B"),
    np.dtype(np.int8): (0x09, "b"),
    np.dtype(np.int16): (0x0B, "h"),
    np.dtype(np.int32): (0x0C, "i"),
    np.dtype(np.float32): (0x0D, "f"),
    np.dtype(np.float64): (0x0E, "d"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``: magic 0x0000TTDD, big-endian uint32 dims, big-endian data."""
    array = np.asarray(array)
    code, fmt = IDX_TYPES[array.dtype]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    flat = array.reshape(-1).tolist()
    return header + struct.pack(f">{len(flat)}{fmt}", *flat)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as IDX to ``path``, gzipped when the name ends in ``.gz``."""
    payload = idx_bytes(array)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def make_idx_arrays(n_train: int = 60, n_test: int = 20, size: int = 28, seed: int = 0) -> dict[str, np.ndarray]:
    """Random uint8 images and labels 0..9 for a tiny MNIST-like dataset."""
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def write_idx_dataset(folder: Path, arrays: dict[str, np.ndarray] | None = None, *, gz: bool = True) -> dict[str, np.ndarray]:
    """The four IDX files of an MNIST-like dataset in ``folder``; returns the arrays written."""
    arrays = make_idx_arrays() if arrays is None else arrays
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(folder / (f"{stem}.gz" if gz else stem), array)
    return arrays


def cifar_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """CIFAR-10 binary records: one label byte, then 1024 R, 1024 G, 1024 B bytes, row-major."""
    out = bytearray()
    for image, label in zip(images, labels):  # image (3, 32, 32)
        out += struct.pack("B", int(label))
        out += struct.pack("3072B", *image.reshape(-1).tolist())
    return bytes(out)


@pytest.fixture(autouse=True)
def isolated_data_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$ENSEMBLEKIT_DATA and the user cache point at empty temporary folders in every test."""
    root = tmp_path_factory.mktemp("env")
    monkeypatch.setenv("ENSEMBLEKIT_DATA", str(root / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "cache"))
    return root
