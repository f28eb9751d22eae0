"""Datasets as in-memory tensors, and the batch iterator every training run uses.

A dataset is loaded once into `Splits`: uint8 images of shape (N, C, H, W) and int64 labels for
train / val / test, plus the per-channel mean and std of the training images (in [0, 1] units).
Images stay uint8 until a batch is cut, so a 60k-image dataset costs 47 MB, not 188 MB.

Batches are `index_select` on a seeded permutation of tensors already on the device (the
airbench loader), not a per-sample `DataLoader`: one epoch over Fashion-MNIST is a few hundred
tensor ops instead of 60,000 Python calls.

Look-up order for file-backed datasets (first hit wins):
  1. an explicit ``data_dir`` (the folder holding the files, or its parent with ``<name>/``),
  2. ``$ENSEMBLEKIT_DATA/<name>``,
  3. ``/usr/share/datasets/<name>`` (where Debian's ``dataset-fashion-mnist`` puts its files),
  4. the user cache dir ``~/.cache/ensemblekit/<name>`` (``$XDG_CACHE_HOME`` honoured),
and, only when asked (``download=True``), a download into the cache with checksums verified.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DataError",
    "Split",
    "Splits",
    "DatasetInfo",
    "DATASETS",
    "Batches",
    "load",
    "locate",
    "read_idx",
    "read_cifar10_bin",
    "search_dirs",
    "resolve_device",
    "register",
]


class DataError(ValueError):
    """A dataset file is missing, corrupt, or not in the expected format."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple's MPS, then the CPU; anything else is passed to torch."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    # fail here with a clear message, not with an AssertionError deep inside torch
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available on this machine; use 'auto' or 'cpu'")
    if resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={device!r}: Apple's MPS is not available on this machine; use 'auto' or 'cpu'")
    return resolved


# ----------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    """One split held in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise DataError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"labels shape {tuple(self.labels.shape)} does not match {self.images.shape[0]} images"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: Tensor) -> "Split":
        return Split(self.images[index], self.labels[index])


@dataclass(frozen=True)
class Splits:
    """Train / val / test of one dataset, with what is needed to normalise and name its classes."""

    name: str
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]
    mean: Tensor  # (C,) mean of training pixels in [0, 1] units
    std: Tensor  # (C,)
    source: str = ""  # where the files came from, for reports

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 (N, C, H, W) -> float32, zero mean and unit std per channel (training statistics)."""
        return normalize(images, self.mean, self.std)

    def inputs(self, split: str) -> Tensor:
        """The normalised float images of ``split`` ('train', 'val' or 'test')."""
        return self.normalize(self[split].images)

    def __getitem__(self, split: str) -> Split:
        if split not in ("train", "val", "test"):
            raise KeyError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return getattr(self, split)

    def batches(self, split: str = "train", **kwargs) -> "Batches":
        """A `Batches` iterator over ``split`` with this dataset's normalisation."""
        part = self[split]
        return Batches(part.images, part.labels, mean=self.mean, std=self.std, **kwargs)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "image_shape": list(self.image_shape),
            "classes": list(self.classes),
            "sizes": {s: len(self[s]) for s in ("train", "val", "test")},
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 or [0, 255] images (..., C, H, W) -> float32 standardised per channel."""
    return _standardize(images, *_affine(mean, std, images.device))


def _affine(mean: Tensor, std: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """(scale, shift), each (C, 1, 1), with (x / 255 - mean) / std == x * scale + shift."""
    mean = mean.to(device=device, dtype=torch.float32).view(-1, 1, 1)
    std = std.to(device=device, dtype=torch.float32).view(-1, 1, 1)
    return 1.0 / (255.0 * std), -mean / std


def _standardize(images: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    # one multiply and one add on a fresh float copy: two passes over the batch instead of four,
    # and the caller's tensor is never modified (even when it is float32 already)
    return images.to(torch.float32, copy=True).mul_(scale).add_(shift)


def channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units."""
    x = images.to(torch.float64).div(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)  # a constant channel must not divide by zero
    return mean.float(), std.float()


def make_splits(
    name: str,
    train: Split,
    test: Split,
    classes: Sequence[str],
    *,
    val_size: float | int = 0.1,
    seed: int = 0,
    source: str = "",
) -> Splits:
    """Carve a validation split from ``train`` with a fixed seed; statistics come from what is left."""
    n = len(train)
    n_val = _val_count(val_size, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    fit_part, val_part = train.subset(train_idx), train.subset(val_idx)
    mean, std = channel_stats(fit_part.images)
    return Splits(name, fit_part, val_part, test, tuple(classes), mean, std, source)


def _val_count(val_size: float | int, n: int) -> int:
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise ValueError(f"val_size={val_size!r}: give a fraction in [0, 1) or a count of images")
    if isinstance(val_size, float) and val_size < 1.0:
        if val_size < 0.0:
            raise ValueError(f"val_size={val_size}: a fraction must lie in [0, 1)")
        count = int(round(val_size * n))
    elif float(val_size).is_integer():
        count = int(val_size)
    else:
        raise ValueError(f"val_size={val_size}: give a fraction in [0, 1) or a whole number of images")
    if not 0 <= count < n:
        raise ValueError(f"val_size={val_size}: must leave training images (0 <= val < {n})")
    return count


# ----------------------------------------------------------------------------- batches


class Batches:
    """Seeded mini-batches over in-memory images, cut on the device with index_select.

    Epoch ``e`` uses the permutation drawn from ``seed`` and ``e`` alone, so a run (or one member
    of an ensemble) can be reproduced on its own. Images are normalised per batch; ``transform``
    (a batch-wide augmentation such as cutout) is applied to the normalised batch.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int = 128,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        transform: Callable[[Tensor], Tensor] | None = None,
        indices: Tensor | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be at least 1")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.device = resolve_device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        channels = images.shape[1] if images.ndim == 4 else 1
        self.mean = torch.zeros(channels) if mean is None else mean
        self.std = torch.ones(channels) if std is None else std
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.transform = transform
        # a fixed index list (e.g. a bootstrap resample) that each epoch permutes
        self.indices = None if indices is None else indices.to(self.device)

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0] if self.indices is None else self.indices.shape[0])

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def with_options(self, **changes) -> "Batches":
        """A copy with some options changed (seed, transform, device, ...); tensors are shared."""
        kwargs = dict(
            batch_size=self.batch_size, mean=self.mean, std=self.std, shuffle=self.shuffle,
            seed=self.seed, drop_last=self.drop_last, device=self.device,
            transform=self.transform, indices=self.indices,
        )
        kwargs.update(changes)
        return Batches(self.images, self.labels, **kwargs)

    def order(self, epoch: int) -> Tensor:
        """The sample order of ``epoch``: a permutation seeded by (seed, epoch)."""
        n = self.num_samples
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=generator).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        return order if self.indices is None else self.indices[order]

    def epoch(self, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.order(epoch)
        affine = _affine(self.mean, self.std, self.device)  # once per epoch, not per batch
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self.take(order[start : start + self.batch_size], affine)

    def take(self, idx: Tensor, affine: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Samples ``idx`` (N,) as a batch: normalised (and transformed) images, labels."""
        scale, shift = affine or _affine(self.mean, self.std, self.device)
        x = _standardize(self.images.index_select(0, idx), scale, shift)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels.index_select(0, idx)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.epoch(0)


# ----------------------------------------------------------------------------- readers

_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # zlib.error: corrupt deflate data
            raise DataError(f"{path}: not a valid gzip file ({exc})") from exc
    return raw


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an IDX file (LeCun's MNIST format). Raises `DataError` on any defect."""
    if len(raw) < 4:
        raise DataError(f"{name}: truncated, {len(raw)} bytes is shorter than the 4-byte IDX header")
    zero1, zero2, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero1 != 0 or zero2 != 0 or type_code not in _IDX_TYPES:
        raise DataError(f"{name}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x0000TTDD)")
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares 0 dimensions")
    if ndim > 32:  # numpy's limit is 64; no real IDX file comes close
        raise DataError(f"{name}: IDX header declares {ndim} dimensions (at most 32 supported)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated inside the header ({len(raw)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_TYPES[type_code]
    expected = header + math.prod(dims) * dtype.itemsize  # Python ints: huge dims must not wrap around
    if len(raw) < expected:
        raise DataError(f"{name}: truncated, {len(raw)} bytes but dims {list(dims)} need {expected}")
    if len(raw) > expected:
        raise DataError(f"{name}: {len(raw) - expected} unexpected trailing bytes after dims {list(dims)}")
    try:
        flat = np.frombuffer(raw, dtype=dtype, offset=header)
        return flat.reshape(dims).astype(dtype.newbyteorder("="))
    except ValueError as exc:  # e.g. a zero dim beside dims whose product numpy cannot represent
        raise DataError(f"{name}: dims {list(dims)} do not describe an array ({exc})") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzipped (``.gz``) or raw."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))


CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then R, G and B planes of 32x32


def read_cifar10_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one file of CIFAR-10's binary version: fixed 3073-byte records, no pickle."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) == 0 or len(raw) % CIFAR_RECORD:
        raise DataError(
            f"{path}: {len(raw)} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR-10 records"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)  # (N, 3073)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(f"{path}: label {int(labels.max())} out of range 0..9 (not CIFAR-10 binary?)")
    images = records[:, 1:].reshape(-1, 3, 32, 32)  # (N, C, H, W), planes stored R, G, B
    return images, labels


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    md5: str


@dataclass(frozen=True)
class DatasetInfo:
    """How to find, fetch and read one named dataset."""

    name: str
    description: str
    files: tuple[str, ...]  # files that must be present in its folder
    how_to_get: str
    reader: Callable[[Path], tuple[Split, Split, tuple[str, ...]]] | None = None
    remote: tuple[RemoteFile, ...] = ()
    archive_root: str = ""  # sub-folder an archive unpacks into, if any
    builtin: Callable[[], tuple[Split, Split, tuple[str, ...]]] | None = None
    default_val_size: float | int = 0.1


DATASETS: dict[str, DatasetInfo] = {}


def register(info: DatasetInfo) -> DatasetInfo:
    DATASETS[info.name] = info
    return info


def _digits() -> tuple[Split, Split, tuple[str, ...]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    # no official test split: hold out a fixed, stratified 20%
    gen = np.random.default_rng(20170)
    test_idx = np.concatenate(
        [gen.permutation(np.flatnonzero(labels == c))[: int(round(0.2 * (labels == c).sum()))] for c in range(10)]
    )
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_idx] = True
    to_split = lambda m: Split(torch.from_numpy(images[m].copy()), torch.from_numpy(labels[m].copy()))
    return to_split(~is_test), to_split(is_test), tuple(str(c) for c in range(10))


def _idx_reader(classes: Sequence[str]) -> Callable[[Path], tuple[Split, Split, tuple[str, ...]]]:
    def read(folder: Path) -> tuple[Split, Split, tuple[str, ...]]:
        def part(prefix: str) -> Split:
            images = read_idx(_find_file(folder, f"{prefix}-images-idx3-ubyte"))
            labels = read_idx(_find_file(folder, f"{prefix}-labels-idx1-ubyte"))
            if images.ndim != 3 or labels.ndim != 1:
                raise DataError(
                    f"{folder}: {prefix} images must be 3-D and labels 1-D, got dims "
                    f"{list(images.shape)} and {list(labels.shape)}"
                )
            if images.shape[0] != labels.shape[0]:
                raise DataError(f"{folder}: {images.shape[0]} {prefix} images but {labels.shape[0]} labels")
            if images.dtype != np.uint8:
                raise DataError(f"{folder}: {prefix} images are {images.dtype}, expected unsigned bytes")
            labels = labels.astype(np.int64)
            if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
                raise DataError(f"{folder}: {prefix} labels outside 0..{len(classes) - 1}")
            return Split(torch.from_numpy(images[:, None].copy()), torch.from_numpy(labels))

        return part("train"), part("t10k"), tuple(classes)

    return read


def _cifar10(folder: Path) -> tuple[Split, Split, tuple[str, ...]]:
    def part(names: Sequence[str]) -> Split:
        arrays = [read_cifar10_bin(_find_file(folder, n)) for n in names]
        images = np.concatenate([a[0] for a in arrays])
        labels = np.concatenate([a[1] for a in arrays])
        return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels))

    meta = folder / "batches.meta.txt"
    classes = tuple(l.strip() for l in meta.read_text().splitlines() if l.strip()) if meta.exists() else CIFAR10_CLASSES
    train = part([f"data_batch_{i}.bin" for i in range(1, 6)])
    return train, part(["test_batch.bin"]), classes[:10]


def _find_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise DataError(f"{folder}: missing {stem} (or {stem}.gz)")


IDX_FILES = tuple(
    f"{p}-{k}-idx{d}-ubyte" for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))
)
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
KMNIST_CLASSES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")


def _idx_remote(base: str, md5s: Sequence[str]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(f"{f}.gz", f"{base}{f}.gz", m) for f, m in zip(IDX_FILES, md5s))


register(DatasetInfo(
    name="digits",
    description="scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes)",
    files=(),
    how_to_get="bundled with scikit-learn; nothing to download",
    builtin=_digits,
))
register(DatasetInfo(
    name="fashion-mnist",
    description="Zalando's Fashion-MNIST, 28x28 grey clothing images (60k train / 10k test, 10 classes)",
    files=IDX_FILES,
    how_to_get="Debian/Ubuntu: `apt-get install dataset-fashion-mnist`; or put the four IDX .gz files in "
    "$ENSEMBLEKIT_DATA/fashion-mnist; or pass --download when online",
    reader=_idx_reader(FASHION_CLASSES),
    remote=_idx_remote(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
         "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
    ),
))
register(DatasetInfo(
    name="mnist",
    description="LeCun's MNIST handwritten digits, 28x28 grey (60k / 10k, 10 classes)",
    files=IDX_FILES,
    how_to_get="put the four IDX files (.gz or raw) in $ENSEMBLEKIT_DATA/mnist; or pass --download when online",
    reader=_idx_reader(tuple(str(i) for i in range(10))),
    remote=_idx_remote(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
         "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
    ),
))
register(DatasetInfo(
    name="kmnist",
    description="Kuzushiji-MNIST, 28x28 grey cursive Japanese characters (60k / 10k, 10 classes)",
    files=IDX_FILES,
    how_to_get="put the four IDX files (.gz or raw) in $ENSEMBLEKIT_DATA/kmnist; or pass --download when online",
    reader=_idx_reader(KMNIST_CLASSES),
    remote=_idx_remote(
        "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        ("bdb82020997e1d708af4cf47b453dcf7", "e144d726b3acfaa3e44228e80efcd344",
         "5c965bf0a639b31b8f53240b1b52f4d7", "7320c461ea6c1c855c0b718fb2a4b134"),
    ),
))
register(DatasetInfo(
    name="cifar10",
    description="CIFAR-10, binary version, 32x32 colour (50k / 10k, 10 classes)",
    files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",),
    how_to_get="unpack cifar-10-binary.tar.gz so that $ENSEMBLEKIT_DATA/cifar10 holds data_batch_1.bin ...; "
    "or pass --download when online",
    reader=_cifar10,
    remote=(RemoteFile("cifar-10-binary.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                       "c32a1d4ab5d03f1284b67883e8d87530"),),
    archive_root="cifar-10-batches-bin",
))


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ensemblekit"


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders looked in for dataset ``name``, in order."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs += [Path(data_dir), Path(data_dir) / name]
    if os.environ.get("ENSEMBLEKIT_DATA"):
        dirs.append(Path(os.environ["ENSEMBLEKIT_DATA"]) / name)
    dirs += [Path("/usr/share/datasets") / name, cache_dir() / name]
    return dirs


def _has_files(folder: Path, files: Sequence[str]) -> bool:
    return all((folder / f).exists() or (folder / f"{f}.gz").exists() for f in files)


def info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        known = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown dataset {name!r}; known datasets: {known} (or folder:PATH for an image folder)")
    return DATASETS[name]


def locate(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first folder holding all of ``name``'s files, or None (built-in datasets: None)."""
    meta = info(name)
    if meta.builtin is not None:
        return None
    for folder in search_dirs(name, data_dir):
        if _has_files(folder, meta.files):
            return folder
        if meta.archive_root and _has_files(folder / meta.archive_root, meta.files):
            return folder / meta.archive_root
    return None


def download(name: str, *, root: str | os.PathLike | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """Fetch ``name``'s files into ``root`` (default: the cache), verifying each MD5 checksum.

    URLs may be ``file://`` for mirrors on disk. A file whose checksum does not match is deleted
    and reported; nothing half-written is left behind.
    """
    meta = info(name)
    if not meta.remote:
        raise ValueError(f"dataset {name!r} has nothing to download ({meta.how_to_get})")
    folder = Path(root) if root is not None else cache_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    for remote in meta.remote:
        target = folder / remote.name
        if target.exists() and file_digest(target, "md5") == remote.md5:
            continue
        if progress:
            progress(f"downloading {remote.url}")
        fetch(remote.url, target, check=lambda path, r=remote: check_digest(path, r.url, "md5", r.md5))
        if target.name.endswith(".tar.gz"):
            with tarfile.open(target) as archive:
                archive.extractall(folder, filter="data")
    return folder / meta.archive_root if meta.archive_root else folder


def fetch(url: str, target: Path, *, check: Callable[[Path], None]) -> Path:
    """Download ``url`` (``file://`` works too) to ``target`` atomically.

    The bytes land in a temporary file beside ``target``; ``check(path)`` (which raises
    `DataError`) must accept it before it is renamed into place, so a failed or corrupt download
    never leaves a file behind.
    """
    from .report import temp_file_beside

    fd, tmp = temp_file_beside(target, suffix=".part")
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
        except OSError as exc:
            raise DataError(f"{url}: download failed ({exc})") from exc
        check(Path(tmp))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_digest(path: Path, url: str, algorithm: str, expected: str) -> None:
    got = file_digest(path, algorithm)
    if got != expected:
        label = {"md5": "MD5", "sha256": "SHA-256"}.get(algorithm, algorithm)
        raise DataError(f"{url}: {label} {got} does not match the expected {expected}")


# Loaders for names with a prefix, such as "folder:PATH" (image folders), register here.
PREFIX_LOADERS: dict[str, Callable[..., Splits]] = {}


def _load_image_folder(path: str, **kwargs) -> Splits:
    from .imagefolder import load_folder  # imported on use: imagefolder imports this module

    return load_folder(path, **kwargs)


PREFIX_LOADERS["folder"] = _load_image_folder


def load(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    val_size: float | int | None = None,
    seed: int = 0,
    download_missing: bool = False,
) -> Splits:
    """Load dataset ``name`` as `Splits` (uint8 images in memory, a seeded validation split)."""
    prefix, sep, rest = name.partition(":")
    if sep and prefix in PREFIX_LOADERS:
        return PREFIX_LOADERS[prefix](rest, data_dir=data_dir, val_size=val_size, seed=seed)
    meta = info(name)
    val = meta.default_val_size if val_size is None else val_size
    if meta.builtin is not None:
        train, test, classes = meta.builtin()
        return make_splits(name, train, test, classes, val_size=val, seed=seed, source="built in")
    folder = locate(name, data_dir)
    if folder is None and download_missing:
        folder = download(name)
    if folder is None:
        looked = ", ".join(str(d) for d in search_dirs(name, data_dir))
        raise DataError(f"dataset {name!r} not found (looked in {looked}); to get it: {meta.how_to_get}")
    assert meta.reader is not None
    train, test, classes = meta.reader(folder)
    return make_splits(name, train, test, classes, val_size=val, seed=seed, source=str(folder))
