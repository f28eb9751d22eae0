"""`ensemblekit occlusion`: no augmentation vs cutout vs random erasing, trained on the same seed,
scored clean and with a random square occluder of growing side; writes the robustness curve and
an occlusion-sensitivity map as PNG."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

import torch

from ..models import build_model
from ..occlusion import (
    ERASING_FILLS, Cutout, RandomErasing, occlusion_robustness, occlusion_sensitivity, plot_robustness,
    plot_sensitivity, scaled_sides,
)
from ..train import Recipe, fit
from .common import (
    add_training_arguments, add_output_arguments, err_console, finish,
    load_from_args, model_config_from_args, model_row, recipe_from_args,
)

NAME = "occlusion"
HELP = "train without augmentation, with cutout and with random erasing; accuracy under occluders"

DEFAULTS = Recipe(epochs=4, batch_size=128, lr=0.05, weight_decay=5e-4, schedule="cosine")
METHODS = ("plain", "cutout", "erasing")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, dataset="fashion-mnist", model="cnn", recipe=DEFAULTS)
    group = parser.add_argument_group("occlusion")
    group.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="default: all three")
    group.add_argument("--cutout-size", type=int, default=None, help="hole side in px (default 12 on 28x28, scaled to the image)")
    group.add_argument("--cutout-holes", type=int, default=1, help="holes per image (default 1)")
    group.add_argument("--cutout-p", type=float, default=0.3, help="probability an image is cut (default 0.3)")
    group.add_argument("--erasing-p", type=float, default=0.5, help="probability an image is erased (default 0.5, as the paper)")
    group.add_argument("--erasing-scale", type=float, nargs=2, default=(0.02, 0.4), metavar=("LOW", "HIGH"), help="area fraction range (default 0.02 0.4)")
    group.add_argument("--erasing-ratio", type=float, nargs=2, default=(0.3, 3.3), metavar=("LOW", "HIGH"), help="aspect ratio range (default 0.3 3.3)")
    group.add_argument("--erasing-fill", choices=ERASING_FILLS, default="noise", help="default noise (per-pixel N(0,1), as the paper's random values)")
    group.add_argument("--sides", type=int, nargs="+", default=None, help="occluder sides in px (default 0 4 8 12 16 on 28x28, scaled to the image)")
    group.add_argument("--occlusion-seed", type=int, default=0, help="seed of the occluder positions (default 0)")
    group.add_argument("--sensitivity-images", type=int, default=6, help="test images in the sensitivity map (default 6)")
    group.add_argument("--plots", default="runs/occlusion", help="folder for robustness.png and sensitivity.png (default runs/occlusion)")
    add_output_arguments(parser)


def make_transforms(args: argparse.Namespace, height: int, width: int) -> dict[str, Callable | None]:
    """Method name -> batch transform, checked on a dummy batch so bad sizes fail before training."""
    size = args.cutout_size if args.cutout_size is not None else max(1, scaled_sides(height, width, (12,))[0])
    transforms: dict[str, Callable | None] = {
        "plain": None,
        # in place: Batches hands the transform a freshly normalised batch (same numbers, less copying)
        "cutout": Cutout(size, holes=args.cutout_holes, p=args.cutout_p, inplace=True),
        "erasing": RandomErasing(p=args.erasing_p, scale=tuple(args.erasing_scale), ratio=tuple(args.erasing_ratio),
                                 fill=args.erasing_fill, inplace=True),
    }
    for transform in transforms.values():
        if transform is not None:
            transform(torch.zeros(2, 1, height, width))
    return {name: transforms[name] for name in args.methods}


def run(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    splits = load_from_args(args)
    _, height, width = splits.image_shape
    sides = tuple(args.sides) if args.sides else scaled_sides(height, width)
    if 0 not in sides:
        sides = (0,) + sides  # the clean accuracy is the baseline of every drop
    if args.sensitivity_images < 0:
        raise ValueError(f"--sensitivity-images={args.sensitivity_images}: must be >= 0")
    transforms = make_transforms(args, height, width)
    config = model_config_from_args(args, splits)
    test_inputs, test_labels = splits.inputs("test"), splits.test.labels
    occlusion_robustness({}, test_inputs[:1], test_labels[:1], sides)  # bad sides fail before training

    models, rows = {}, []
    for name, transform in transforms.items():
        model = build_model(config, seed=recipe.seed)  # same initial weights and batch order for all
        batches = splits.batches("train", batch_size=recipe.batch_size, transform=transform)
        history = fit(model, batches, recipe, progress=False if args.quiet else None,
                      description=f"{name} {args.model} on {splits.name}")
        models[name] = model
        row = model_row(name, model, splits)
        row["augmentation"] = repr(transform) if transform is not None else "none"  # in --json
        row["seconds"] = history.seconds
        rows.append(row)
        if not args.quiet:
            err_console.print(f"{name}: trained in {history.seconds:.0f} s, test accuracy {100 * row['test']['accuracy']:.2f}%")

    robustness = occlusion_robustness(models, test_inputs, test_labels, sides, seed=args.occlusion_seed)
    side_metrics = tuple(f"{s}px accuracy" for s in sides if s)
    for row in rows:
        accuracies = dict(zip(sides, robustness.accuracy[row["name"]]))
        row["test"].update({f"{s}px accuracy": accuracies[s] for s in sides if s})
        row["robustness"] = {"sides": list(sides), "accuracy": list(robustness.accuracy[row["name"]])}

    plots = Path(args.plots)
    written = {"robustness": plot_robustness(
        robustness, plots / "robustness.png",
        title=f"{args.model} on {splits.name} ({height}x{width}): one random grey square per test image")}
    if args.sensitivity_images:
        picks = first_of_each_class(test_labels, args.sensitivity_images)
        patch = max(1, scaled_sides(height, width, (8,))[0])
        maps = {name: occlusion_sensitivity(m, test_inputs[picks], test_labels[picks], patch=patch)
                for name, m in models.items()}
        titles = [splits.classes[int(test_labels[i])] for i in picks]
        written["sensitivity"] = plot_sensitivity(test_inputs[picks], maps, plots / "sensitivity.png", patch=patch, titles=titles)

    clean_at = sides.index(0)
    notes = []
    for name in models:
        notes.append(f"{name}: clean {100 * robustness.accuracy[name][clean_at]:.2f}%, drop "
                     + ", ".join(f"{100 * robustness.drop(name, s):.2f} pts at {s}px" for s in sides if s))
    for name in models:
        if "plain" in models and name != "plain":
            clean = 100 * (robustness.accuracy[name][clean_at] - robustness.accuracy["plain"][clean_at])
            gains = ", ".join(f"{100 * (robustness.drop('plain', s) - robustness.drop(name, s)):.2f} at {s}px"
                              for s in sides if s)
            notes.append(f"{name} vs plain: clean {clean:+.2f} pts; loses less accuracy by {gains} (pts)")
    notes += [f"wrote {path}" for path in written.values()]
    return finish(
        args, rows, title=f"{args.model} on {splits.name}, {recipe.epochs} epochs: accuracy under a random square occluder",
        metrics=("accuracy", "nll") + side_metrics, extra_columns=("seconds",), notes=notes,
        dataset=splits.describe(), recipe=recipe.to_dict(), model=config, robustness=robustness.to_dict(),
        plots=written,
    )


def first_of_each_class(labels: torch.Tensor, count: int) -> list[int]:
    """Indices of the first test image of classes 0, 1, ... (then further images), ``count`` in all."""
    picks = [int(torch.nonzero(labels == c)[0]) for c in labels.unique().tolist() if (labels == c).any()][:count]
    extra = [i for i in range(len(labels)) if i not in picks][: max(0, count - len(picks))]
    return picks + extra


def demo_row(splits, recipe: Recipe, progress: bool | None) -> dict[str, Any]:
    """`ensemblekit demo`'s cutout row: the demo MLP trained with one 3-px hole (8x8 digits), p = 0.5."""
    from .demo import mlp_config

    model = build_model(mlp_config(splits), seed=recipe.seed)
    batches = splits.batches("train", batch_size=recipe.batch_size, transform=Cutout(3, p=0.5, inplace=True))
    fit(model, batches, recipe, progress=progress, description="MLP + cutout")
    return model_row("MLP + cutout (3px, p=0.5)", model, splits)
