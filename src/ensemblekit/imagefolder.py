"""Image folders: one sub-folder per class, any image Pillow reads (``folder:PATH``).

::

    faces/
      alice/  001.jpg 002.png ...
      bob/    a.bmp b.webp ...

Every image is converted to one channel count (1 = greyscale, 3 = RGB; by default 1 when all
images are greyscale or black-and-white, else 3) and resized to one size, then held in memory as
uint8 (N, C, H, W) like every other dataset. Classes are the sub-folder names, sorted. Hidden
files and folders (starting with ".") are ignored; files Pillow cannot read are listed in one
warning and skipped, never a crash.

A usable folder has at least 2 classes and at least 2 readable images in every class (a Siamese
network needs a same-class pair of each); anything less is a `DataError` naming the class.

`data.load("folder:PATH")` returns `Splits` with a stratified, seeded test split of images
(``test_size`` per class); `read_image_folder` gives the whole set for class-wise splitting.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .data import DataError, Split, Splits, make_splits

__all__ = ["ImageFolder", "read_image_folder", "load_folder", "DEFAULT_SIZE"]

DEFAULT_SIZE = 32
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


@dataclass(frozen=True)
class ImageFolder:
    """All readable images of a folder: uint8 (N, C, H, W), labels (N,), class names, skipped files."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    skipped: tuple[str, ...]
    root: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int or a pair."""
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(hw) != 2 or any(not isinstance(s, int) or s < 1 for s in hw):
        raise ValueError(f"image_size={image_size!r}: give a positive int or (height, width)")
    return hw  # type: ignore[return-value]


def read_image_folder(
    root: str | os.PathLike, *, image_size: int | Sequence[int] = DEFAULT_SIZE, channels: int | None = None
) -> ImageFolder:
    """Read every image under ``root/<class>/``, converted to ``channels`` and resized to ``image_size``."""
    from PIL import Image

    height, width = _size(image_size)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels={channels!r}: give 1 (greyscale), 3 (RGB) or None (decide from the images)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; an image folder holds one sub-folder of images per class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise DataError(f"{root}: {len(class_dirs)} class sub-folder(s); an image folder needs at least 2 (one per class)")

    loaded: list[tuple[int, Image.Image]] = []
    skipped: list[str] = []
    counts = [0] * len(class_dirs)
    for label, folder in enumerate(class_dirs):
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            try:
                with Image.open(path) as img:
                    img.load()  # decode now: a truncated file fails here, not later
                    # shrink at once (grey stays "L", anything else becomes "RGB"): memory stays small
                    small = _to_mode(img, "L" if img.mode in _GREY_MODES else "RGB")
                    if small.size != (width, height):
                        small = small.resize((width, height), Image.Resampling.BILINEAR)
                    loaded.append((label, small))
                counts[label] += 1
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                skipped.append(f"{path} ({type(exc).__name__})")
    if skipped:
        shown = "; ".join(skipped[:20]) + (f"; ... ({len(skipped) - 20} more)" if len(skipped) > 20 else "")
        warnings.warn(f"{root}: skipped {len(skipped)} unreadable image(s): {shown}", stacklevel=2)
    too_few = [f"{d.name} ({n})" for d, n in zip(class_dirs, counts) if n < 2]
    if too_few:
        raise DataError(
            f"{root}: every class needs at least 2 readable images (for a same-class pair); "
            f"too few in: {', '.join(too_few)}"
        )
    if channels is None:
        channels = 1 if all(img.mode == "L" for _, img in loaded) else 3
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for _, img in loaded:
        array = np.asarray(img.convert(mode), dtype=np.uint8)
        arrays.append(array[None] if channels == 1 else array.transpose(2, 0, 1))  # (C, H, W)
    images = torch.from_numpy(np.stack(arrays))
    labels = torch.tensor([label for label, _ in loaded], dtype=torch.int64)
    return ImageFolder(images, labels, tuple(d.name for d in class_dirs), tuple(skipped), str(root))


def _to_mode(img, mode: str):
    """Convert to "L" or "RGB"; 16-bit and float greyscale are scaled to 8 bits first."""
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(img, dtype=np.float64)
        span = a.max() - a.min()
        a = np.zeros_like(a) if span == 0 else (a - a.min()) / span * 255.0
        img = Image.fromarray(np.rint(a).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "P", "PA") and mode == "RGB":
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))  # transparent -> white
        img = Image.alpha_composite(background, img)
    return img.convert(mode)


def load_folder(
    path: str,
    *,
    data_dir: str | os.PathLike | None = None,
    val_size: float | int | None = None,
    seed: int = 0,
    image_size: int | Sequence[int] = DEFAULT_SIZE,
    channels: int | None = None,
    test_size: float = 0.2,
) -> Splits:
    """``folder:PATH`` as `Splits`: a seeded, stratified test split of each class's images
    (at least one image of each class stays in training), then a validation split as elsewhere.

    A relative PATH is looked up under ``data_dir`` first, then the working directory.
    """
    if not 0.0 <= test_size < 1.0:
        raise ValueError(f"test_size={test_size}: must lie in [0, 1)")
    folder = Path(path).expanduser()
    if data_dir is not None and not folder.is_absolute() and (Path(data_dir) / folder).is_dir():
        folder = Path(data_dir) / folder
    data = read_image_folder(folder, image_size=image_size, channels=channels)
    gen = torch.Generator().manual_seed(seed)
    is_test = torch.zeros(len(data), dtype=torch.bool)
    for label in range(len(data.classes)):
        members = torch.nonzero(data.labels == label).squeeze(1)
        n_test = min(int(round(test_size * len(members))), len(members) - 1)
        is_test[members[torch.randperm(len(members), generator=gen)[:n_test]]] = True
    train = Split(data.images[~is_test], data.labels[~is_test])
    test = Split(data.images[is_test], data.labels[is_test])
    return make_splits(
        f"folder:{path}", train, test, data.classes, val_size=0.1 if val_size is None else val_size,
        seed=seed, source=str(folder),
    )
