"""`ensemblekit predict`: a saved ensemble on a dataset's test split, or on image files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from rich.table import Table

from ..data import load, normalize
from ..ensemble import Ensemble, evaluate_members
from .common import console, finish
from .ensemble import ensemble_rows, extra_performance_line

NAME = "predict"
HELP = "predict with a saved ensemble: metrics on a dataset's test split, or top classes of image files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="directory written by `ensemblekit ensemble --out` (or Ensemble.save)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="score the ensemble on this dataset's test split")
    source.add_argument("--images", nargs="+", metavar="FILE", help="image files to classify (any format Pillow reads)")
    parser.add_argument("--data-dir", default=None, help="folder holding the dataset files (searched first)")
    parser.add_argument("--top", type=int, default=3, help="classes to show per image (default 3)")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the results to FILE as JSON")


def run(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ValueError(f"--top {args.top}: must be >= 1")
    ensemble = Ensemble.load(args.path)
    if args.dataset:
        return _score_dataset(args, ensemble)
    return _classify_images(args, ensemble)


def _score_dataset(args: argparse.Namespace, ensemble: Ensemble) -> int:
    info = ensemble.info
    splits = load(args.dataset, data_dir=args.data_dir)
    shape = list(splits.image_shape)
    if info.get("image_shape") and list(info["image_shape"]) != shape:
        raise ValueError(f"{args.path} was trained on images {info['image_shape']}, {args.dataset} has {shape}")
    if info.get("classes") and list(info["classes"]) != list(splits.classes):
        raise ValueError(f"{args.path} predicts classes {info['classes']}, {args.dataset} has {list(splits.classes)}")
    mean, std = _normalization(ensemble, fallback=(splits.mean, splits.std))
    inputs = normalize(splits.test.images, mean, std)
    evaluation = evaluate_members(ensemble, inputs, splits.test.labels)
    rows = ensemble_rows({"test": evaluation}, label=f"ensemble ({len(ensemble)}, {ensemble.combine})")
    return finish(
        args, rows, title=f"{args.path} on {splits.name} test ({len(splits.test)} images)",
        notes=[extra_performance_line(evaluation)], dataset=splits.describe(), path=str(args.path),
        extra_performance=evaluation["extra_performance"], diversity=evaluation["diversity"],
    )


def _classify_images(args: argparse.Namespace, ensemble: Ensemble) -> int:
    info = ensemble.info
    if not info.get("image_shape"):
        raise ValueError(f"{args.path}/manifest.json records no image_shape; cannot prepare image files")
    images = torch.stack([read_image(f, info["image_shape"]) for f in args.images])  # (N, C, H, W) uint8
    mean, std = _normalization(ensemble)
    proba = ensemble.predict_proba(normalize(images, mean, std))
    classes = info.get("classes") or [str(c) for c in range(proba.shape[1])]
    top = min(args.top, proba.shape[1])
    values, indices = proba.topk(top, dim=1)
    table = Table(title=f"{args.path}: top {top} classes", title_justify="left")
    table.add_column("image", style="bold")
    for r in range(top):
        table.add_column(f"#{r + 1}")
    results = []
    for file, p, idx in zip(args.images, values.tolist(), indices.tolist()):
        table.add_row(file, *[f"{classes[i]} ({100 * q:.1f}%)" for i, q in zip(idx, p)])
        results.append({"image": file, "top": [{"class": classes[i], "probability": q} for i, q in zip(idx, p)]})
    console.print(table)
    if args.json:
        from .. import __version__
        from ..report import write_json

        write_json(args.json, {"command": "predict", "version": __version__, "path": str(args.path), "images": results})
        console.print(f"wrote {args.json}")
    return 0


def read_image(file: str | Path, image_shape: Sequence[int]) -> torch.Tensor:
    """An image file as uint8 (C, H, W) with the ensemble's channel count and size (Pillow, bilinear)."""
    from PIL import Image, UnidentifiedImageError

    channels, height, width = (int(v) for v in image_shape)
    if channels not in (1, 3):
        raise ValueError(f"models with {channels} input channels cannot read image files (1 or 3 supported)")
    try:
        with Image.open(file) as image:
            image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise ValueError(f"{file}: no such image file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{file}: not an image Pillow can read ({exc})") from exc
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (H, W[, C]) -> (C, H, W)
    return torch.from_numpy(array.copy())


def _normalization(ensemble: Ensemble, fallback: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    norm = ensemble.info.get("normalization")
    if norm:
        return torch.tensor(norm["mean"]), torch.tensor(norm["std"])
    if fallback is not None:
        return fallback
    raise ValueError(f"{ensemble.info.get('path')}/manifest.json records no normalization; cannot prepare image files")
