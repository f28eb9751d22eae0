"""`ensemblekit siamese`: train a Siamese network on pairs, then measure verification and one-shot
classification on classes it never saw, next to the pixel nearest-neighbour baseline.

Omniglot: trains on the background characters (minus a validation share, split by class) and
reports the 20 official 20-way one-shot runs. An image folder (``folder:PATH``): classes are
split into train / validation / test by class.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import omniglot
from ..data import DataError, channel_stats, normalize, search_dirs
from ..siamese import (
    HEADS, LOSSES, Distortion, PairBatches, PairModel, SiameseEncoder, balanced_pairs, best_threshold, embed,
    load_pair_model, one_shot_accuracy, pair_loss, pixel_similarity, rotated_classes, sample_nway_tasks,
    save_pair_model, split_classes, task_similarity, verification_metrics,
)
from ..train import Recipe, fit
from .common import add_output_arguments, add_recipe_arguments, console, err_console, finish, recipe_from_args

NAME = "siamese"
HELP = "Siamese network: verification and N-way one-shot accuracy on unseen classes (Omniglot or folder:PATH)"

# the Omniglot must-show setting: under 15 min of training on a 2-core CPU (docs/siamese.md)
DEFAULT_RECIPE = Recipe(
    epochs=28, batch_size=128, optimizer="adamw", lr=0.003, weight_decay=1e-4, schedule="cosine",
    warmup_epochs=0.5, seed=0,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="omniglot", help="omniglot or folder:PATH (one sub-folder per class); default omniglot")
    group.add_argument("--data-dir", default=None, help="folder with the Omniglot zips (else $ENSEMBLEKIT_DATA/omniglot, /usr/share/datasets/omniglot, the cache)")
    group.add_argument("--background", choices=("small", "full"), default="small",
                       help="Omniglot training set: the two small background zips (242 characters) or images_background.zip (964)")
    group.add_argument("--download", action="store_true", help="Omniglot: download the missing zips into the cache first")
    group.add_argument("--image-size", type=int, default=35, help="images are resized to SIZE x SIZE (Omniglot: 105 -> SIZE; default 35)")
    group.add_argument("--image-channels", type=int, choices=(1, 3), default=None, help="folder: 1 (grey) or 3 (RGB); default from the images")
    group.add_argument("--val-classes", type=float, default=0.15, help="share of training classes held out for validation (default 0.15)")
    group.add_argument("--test-classes", type=float, default=0.15, help="folder: share of classes held out for the test (default 0.15)")
    group = parser.add_argument_group("Siamese model")
    group.add_argument("--head", choices=HEADS, default="contrastive", help="contrastive (Hadsell et al. 2006) or koch (L1 + sigmoid, BCE); default contrastive")
    group.add_argument("--widths", type=int, nargs="+", default=[64, 64, 64, 64], help="conv block widths of the encoder (default 64 64 64 64)")
    group.add_argument("--embedding-dim", type=int, default=128, help="default 128")
    group.add_argument("--loss", choices=LOSSES, default="npair",
                       help="contrastive: Hadsell et al.'s margin loss on every pair; npair: each image must pick its partner among "
                            "all images of the all-pairs batch, softmax of cosine / temperature (Sohn 2016; needs --pairs all). Default npair")
    group.add_argument("--margin", type=float, default=1.0, help="contrastive margin m (default 1.0, on unit-length embeddings)")
    group.add_argument("--temperature", type=float, default=0.1, help="npair: temperature of the cosine similarities (default 0.1)")
    group.add_argument("--rotations", type=int, choices=(1, 2, 4), default=4,
                       help="training classes turned by 90/180/270 degrees count as new classes (4: x4 classes; 1: off). Default 4")
    group.add_argument("--no-normalize", action="store_true", help="do not scale embeddings to unit length")
    group.add_argument("--pairs", choices=("all", "balanced"), default="all",
                       help="all: each batch of B same-class pairs (B classes) is scored as all B x B pairs, the loss balanced "
                            "between its B same and B(B-1) different pairs; balanced: B pairs, half same, half different (default all)")
    group.add_argument("--pairs-per-epoch", type=int, default=4096, help="pairs drawn per epoch (default 4096)")
    group.add_argument("--no-distort", action="store_true", help="no random affine distortions (Koch et al.) during training")
    group = parser.add_argument_group("evaluation")
    group.add_argument("--ways", type=int, nargs="+", default=[5, 20], help="N of the random N-way one-shot tasks (default 5 20)")
    group.add_argument("--tasks", type=int, default=1000, help="random tasks per N (default 1000)")
    group.add_argument("--out", default="siamese-out", help="folder for roc.png and embeddings.png (default siamese-out)")
    group.add_argument("--save", metavar="DIR", default=None, help="save the trained model (safetensors + manifest.json) to DIR")
    group.add_argument("--load", metavar="DIR", default=None, help="evaluate a saved model instead of training one")
    add_recipe_arguments(parser, DEFAULT_RECIPE)
    add_output_arguments(parser)


@dataclass
class PairData:
    """Images of one dataset split by class for pair learning; test images may come from elsewhere."""

    name: str
    images: torch.Tensor  # uint8 (N, C, H, W), training and validation classes
    labels: torch.Tensor
    classes: tuple[str, ...]
    train_classes: torch.Tensor
    val_classes: torch.Tensor
    test_images: torch.Tensor  # uint8, held-out test classes
    test_labels: torch.Tensor
    runs: omniglot.OneShotRuns | None  # the official runs (Omniglot only)
    source: str

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "source": self.source, "image_shape": list(self.images.shape[1:]),
            "classes": len(self.classes), "train_classes": len(self.train_classes),
            "val_classes": len(self.val_classes), "test_classes": int(self.test_labels.unique().numel()),
            "train_val_images": int(self.images.shape[0]), "test_images": int(self.test_images.shape[0]),
        }


def load_pair_data(args: argparse.Namespace) -> PairData:
    if args.dataset == "omniglot":
        return _omniglot(args)
    prefix, sep, path = args.dataset.partition(":")
    if prefix == "folder" and sep and path:
        return _folder(args, path)
    raise ValueError(f"--dataset {args.dataset!r}: give omniglot or folder:PATH")


def _omniglot(args: argparse.Namespace) -> PairData:
    background = omniglot.SMALL_BACKGROUND if args.background == "small" else omniglot.FULL_BACKGROUND
    needed = background + (omniglot.RUNS_ZIP,)
    folder = omniglot.locate(needed, args.data_dir)
    if folder is None and args.download:
        folder = omniglot.download(needed, progress=err_console.print)
    if folder is None:
        looked = ", ".join(str(d) for d in search_dirs("omniglot", args.data_dir))
        raise DataError(f"Omniglot zips {', '.join(needed)} not found (looked in {looked}); pass --data-dir or --download")
    bg = omniglot.read_background([folder / z for z in background], args.image_size)
    runs = omniglot.read_runs(folder / omniglot.RUNS_ZIP, args.image_size)
    train_c, val_c = split_classes(len(bg.classes), (args.val_classes,), seed=args.seed)
    # test-class images for verification and random N-way tasks: the runs' 400 characters, 2 drawings each
    R, N = runs.support.shape[:2]
    query_class = runs.answers + torch.arange(R)[:, None] * N  # (R, Q) the support's class id
    test_images = torch.cat([runs.support.flatten(0, 1), runs.queries.flatten(0, 1)])
    test_labels = torch.cat([torch.arange(R * N), query_class.flatten()])
    return PairData("omniglot", bg.images, bg.labels, bg.classes, train_c, val_c, test_images, test_labels, runs, str(folder))


def _folder(args: argparse.Namespace, path: str) -> PairData:
    from ..imagefolder import read_image_folder

    data = read_image_folder(path, image_size=args.image_size, channels=args.image_channels)
    train_c, val_c, test_c = split_classes(len(data.classes), (args.val_classes, args.test_classes), seed=args.seed)
    is_test = torch.isin(data.labels, test_c)
    return PairData(
        f"folder:{path}", data.images[~is_test], data.labels[~is_test], data.classes, train_c, val_c,
        data.images[is_test], data.labels[is_test], None, data.root,
    )


def run(args: argparse.Namespace) -> int:
    manifest: dict[str, Any] = {}
    if args.loss == "npair" and not args.load and (args.pairs != "all" or args.head != "contrastive"):
        raise ValueError(
            f"--loss npair needs --pairs all and --head contrastive (got --pairs {args.pairs}, --head {args.head}); "
            "or pass --loss contrastive"
        )
    if args.load:
        model, manifest = load_pair_model(args.load)
        args.seed = manifest.get("recipe", {}).get("seed", args.seed)  # the class split of the saved model
    recipe = recipe_from_args(args)
    data = load_pair_data(args)
    err_console.print(f"[dim]{data.name}: {data.describe()}[/dim]")
    train_images = data.images[torch.isin(data.labels, data.train_classes)]
    if args.load:
        mean, std = torch.tensor(manifest["mean"]), torch.tensor(manifest["std"])
        if list(manifest["encoder"]["in_shape"]) != list(data.images.shape[1:]):
            raise ValueError(
                f"--load {args.load}: the model takes images of shape {manifest['encoder']['in_shape']}, the data "
                f"has {list(data.images.shape[1:])}; pass --image-size {manifest['encoder']['in_shape'][-1]}"
            )
        if manifest.get("dataset") == data.name and "val_classes" in manifest:
            # evaluate on the classes this model was not trained on, whatever --seed says now
            data.train_classes = torch.tensor(manifest["train_classes"])
            data.val_classes = torch.tensor(manifest["val_classes"])
        train_info: dict[str, Any] = {"loaded": args.load}
    else:
        mean, std = channel_stats(train_images)
        encoder = SiameseEncoder(
            tuple(data.images.shape[1:]), channels=args.widths, embedding_dim=args.embedding_dim,
            normalize=not args.no_normalize,
        )
        torch.manual_seed(recipe.seed)
        model = PairModel(encoder, head=args.head, all_pairs=args.pairs == "all")
        train_info = train_pairs(model, data, recipe, mean, std, args)
        if args.save:
            save_pair_model(model, args.save, mean=mean, std=std, image_size=args.image_size, dataset=data.name,
                            recipe=recipe.to_dict(), train_classes=data.train_classes, val_classes=data.val_classes,
                            loss=args.loss, temperature=args.temperature, margin=args.margin, rotations=args.rotations)
            err_console.print(f"saved the model to {args.save}")
    loss = manifest.get("loss", "contrastive") if args.load else args.loss
    rows, figures = evaluate_pairs(model, data, mean, std, args, name=f"siamese ({model.head}, {loss} loss)")
    rows[0].update({k: v for k, v in train_info.items() if k != "history"})
    out = Path(args.out)
    written = [str(_roc_figure(figures["roc"], out / "roc.png")), str(_pca_figure(figures["pca"], out / "embeddings.png"))]
    notes = [f"figures: {', '.join(written)}"]
    if not console.is_terminal:  # rich wraps at 80 columns off a terminal; this table is wider
        console.width = max(console.width, 170)
    return finish(
        args, rows, title=f"Siamese ({model.head}, {loss} loss) on {data.name}: held-out classes",
        metrics=_metric_columns(rows), extra_columns=("train_s", "train_cpu_s"), notes=notes,
        dataset=data.describe(), recipe=recipe.to_dict(), model=model.encoder.config, head=model.head, loss=loss,
        history=train_info.get("history"), figures=written,
    )


def train_pairs(model: PairModel, data: PairData, recipe: Recipe, mean, std, args) -> dict[str, Any]:
    """Train through `train.fit` on pairs of the training classes (``--pairs``); validate each
    epoch with 200 fixed 20-way (or fewer) one-shot tasks on the validation classes."""
    images, labels, classes = data.images, data.labels, data.train_classes
    if args.rotations > 1:  # turned training characters as extra classes; validation stays unturned
        images, labels, classes = rotated_classes(images, labels, classes, args.rotations)
    pairs = PairBatches(
        images, labels, classes=classes, pairs_per_epoch=args.pairs_per_epoch,
        batch_size=recipe.batch_size, mean=mean, std=std,
        distortion=None if args.no_distort else Distortion(), seed=recipe.seed, all_pairs=model.all_pairs,
    )
    is_val = torch.isin(data.labels, data.val_classes)
    val_x, val_y = normalize(data.images[is_val], mean, std), data.labels[is_val]
    n_way = min(20, len(data.val_classes))
    val_tasks = sample_nway_tasks(val_y, n_way, 200, seed=recipe.seed + 1)

    def validate(m: PairModel) -> dict[str, float]:
        return {f"{n_way}way_accuracy": _nway(m, embed(m.encoder, val_x), val_tasks)}

    cpu_start = time.process_time()
    loss_fn = pair_loss(args.head, args.margin, balance=model.all_pairs, loss=args.loss, temperature=args.temperature)
    history = fit(model, pairs, recipe, loss_fn=loss_fn, validate=validate,
                  hooks=[_EpochLine(n_way)], progress=not args.quiet and None, description=f"siamese ({args.head}, {args.loss} loss) on {data.name}")
    cpu = time.process_time() - cpu_start  # includes the per-epoch validation, a few % of the total
    return {"train_s": history.seconds, "train_cpu_s": cpu, "history": history.to_dict()}


class _EpochLine:
    """A `fit` hook: one line per epoch on stderr (loss, validation one-shot accuracy, seconds)."""

    def __init__(self, n_way: int) -> None:
        self.key = f"val_{n_way}way_accuracy"
        self.n_way = n_way

    def on_epoch_end(self, state) -> None:
        record = state.history.epochs[-1]
        err_console.print(
            f"[dim]epoch {record['epoch']}/{state.recipe.epochs}: loss {record['train_loss']:.4f}, "
            f"val {self.n_way}-way {100 * record[self.key]:.1f}%, {record['seconds']:.0f} s[/dim]"
        )


def _nway(model: PairModel | None, z: torch.Tensor, tasks) -> float:
    """One-shot accuracy of ``tasks`` (support, queries, answers indices) on embeddings or pixels ``z``."""
    support, queries, answers = tasks
    if model is None:
        return one_shot_accuracy(pixel_similarity(z[support], z[queries]), answers)
    with torch.no_grad():
        sim = model.similarity(z[queries][:, :, None, :], z[support][:, None, :, :]).cpu()  # (T, Q, N)
    return one_shot_accuracy(sim, answers)


def evaluate_pairs(
    model: PairModel, data: PairData, mean, std, args, name: str = "siamese"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for the Siamese model and the pixel baseline: verification and N-way one-shot on the
    validation and test classes, and the official runs when there are any."""
    is_val = torch.isin(data.labels, data.val_classes)
    parts = {
        "val": (data.images[is_val], data.labels[is_val]),
        "test": (data.test_images, data.test_labels),
    }
    rows = [{"name": name, "val": {}, "test": {}}, {"name": "pixel nearest neighbour", "val": {}, "test": {}}]
    roc: dict[str, Any] = {}
    thresholds: list[float] = [0.0, 0.0]
    for split, (images, labels) in parts.items():
        x = normalize(images, mean, std)
        feats = [embed(model.encoder, x), images.flatten(1).double() / 255.0]
        first, second, same = balanced_pairs(labels, 4000, seed=args.seed + 2)
        for k, (row, z) in enumerate(zip(rows, feats)):
            scorer = model if k == 0 else None
            if scorer is None:
                scores = -(z[first] - z[second]).pow(2).sum(1)
            else:
                with torch.no_grad():
                    scores = model.similarity(z[first.to(z.device)], z[second.to(z.device)]).cpu()
            if split == "val":
                thresholds[k] = best_threshold(scores, same)
            row[split].update(verification_metrics(scores, same, thresholds[k]))
            if split == "test":
                roc[row["name"]] = (scores, same)
            for n_way in args.ways:
                if labels.unique().numel() >= n_way:
                    tasks = sample_nway_tasks(labels, n_way, args.tasks, seed=args.seed + n_way)
                    row[split][f"{n_way}way_accuracy"] = _nway(scorer, z, tasks)
    if data.runs is not None:
        runs = data.runs
        sim = task_similarity(model, normalize(runs.support, mean, std), normalize(runs.queries, mean, std))
        rows[0]["test"]["official_20way_accuracy"] = one_shot_accuracy(sim, runs.answers)
        rows[1]["test"]["official_20way_accuracy"] = one_shot_accuracy(
            pixel_similarity(runs.support.float() / 255, runs.queries.float() / 255), runs.answers)
    # a few validation classes for the 2-D picture
    images, labels = parts["val"]
    chosen = labels.unique()[:8]
    keep = torch.isin(labels, chosen)
    pca = (embed(model.encoder, normalize(images[keep], mean, std)).cpu(), labels[keep], data.classes)
    return rows, {"roc": roc, "pca": pca}


def _metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    order = ["auc", "eer", "verify_accuracy"]
    keys = {k for row in rows for k in row.get("test", {})}
    ways = sorted((k for k in keys if k.endswith("way_accuracy") and not k.startswith("official")), key=lambda k: int(k.split("way")[0]))
    return [k for k in order if k in keys] + ways + (["official_20way_accuracy"] if "official_20way_accuracy" in keys else [])


def _roc_figure(curves: dict[str, Any], path: Path) -> Path:
    from ..metrics import roc_curve
    from ..report import new_figure, save_figure

    fig, ax = new_figure(figsize=(4.5, 4.5))
    for name, (scores, same) in curves.items():
        fpr, tpr, _ = roc_curve(scores, same)
        ax.plot(fpr.numpy(), tpr.numpy(), label=name)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false accept rate (different pairs called same)")
    ax.set_ylabel("true accept rate")
    ax.set_title("verification on held-out test classes")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def _pca_figure(pca: tuple[torch.Tensor, torch.Tensor, tuple[str, ...]], path: Path) -> Path:
    from ..report import new_figure, save_figure

    z, labels, classes = pca
    z = z.double() - z.double().mean(0)
    _, _, v = torch.linalg.svd(z, full_matrices=False)
    xy = z @ v[:2].T  # (N, 2) the two principal directions
    fig, ax = new_figure(figsize=(5, 4.5))
    for c in labels.unique():
        m = labels == c
        ax.scatter(xy[m, 0].numpy(), xy[m, 1].numpy(), s=12, label=classes[int(c)][-28:])
    ax.set_title("embeddings of held-out validation classes (PCA)")
    ax.legend(fontsize=6, loc="best")
    return save_figure(fig, path)
