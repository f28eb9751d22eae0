"""Siamese (conjoined) networks: one encoder with shared weights compares two inputs.

Pieces, each usable alone:

* `SiameseEncoder`: Conv3x3-BN-ReLU-MaxPool blocks, adaptive pooling to a fixed grid and a
  linear embedding, so any (C, H, W) works (8x8 digits, 35x35 Omniglot, 64x64 faces).
* `PairModel`: both inputs go through the *one* encoder in a single batched forward
  (concatenate, encode, split), then a head turns the two embeddings into one number per pair:
  - ``"contrastive"``: the Euclidean distance D, trained with `contrastive_loss`
    (Hadsell, Chopra & LeCun 2006);
  - ``"koch"``: a linear layer on the element-wise L1 distance |z1 - z2|, whose sigmoid is the
    probability of "same" (Koch, Zemel & Salakhutdinov 2015), trained with binary cross-entropy.
* `PairBatches`: balanced same/different pairs drawn on the fly from classes given by index,
  with Koch's random affine distortions applied batch-wide on the device (`random_affine`). It
  has the members `train.fit` uses, so pairs train through the one loop. Its ``all_pairs`` mode
  (with ``PairModel(all_pairs=True)`` and ``pair_loss(balance=True)``) scores every x1[i]
  against every x2[j] of a batch: B^2 pairs from 2B encodings. On Omniglot it reached a given
  one-shot accuracy with about a third of the pairs (docs/siamese.md). On that matrix
  `npair_loss` (a softmax over cosine / temperature, Sohn 2016) trains the contrastive head's
  encoder far better than the margin loss: 92% against 55% official 20-way (docs/siamese.md).
* `rotated_classes`: turned copies of the training classes as new classes (x4 classes).
* Evaluation: verification (ROC-AUC, equal error rate, accuracy at a threshold chosen on
  validation), N-way one-shot accuracy (the query goes to the support image of highest
  similarity, Koch's protocol) and the pixel nearest-neighbour baseline.

Label convention: everywhere in this module ``same = 1`` means the two images show the same
class and ``same = 0`` different classes. Hadsell et al. write Y = 0 for similar and Y = 1 for
dissimilar pairs, i.e. ``same = 1 - Y``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import DataError, normalize, resolve_device
from .train import predict_logits

__all__ = [
    "HEADS",
    "LOSSES",
    "contrastive_loss",
    "npair_loss",
    "rotated_classes",
    "koch_loss",
    "triplet_loss",
    "pair_loss",
    "SiameseEncoder",
    "PairModel",
    "Distortion",
    "random_affine",
    "PairBatches",
    "split_classes",
    "balanced_pairs",
    "embed",
    "pair_similarity",
    "one_shot_accuracy",
    "task_similarity",
    "roc_auc",
    "sample_nway_tasks",
    "pixel_similarity",
    "verification_metrics",
    "best_threshold",
    "save_pair_model",
    "load_pair_model",
]

HEADS = ("contrastive", "koch")
LOSSES = ("contrastive", "npair")
DISTANCE_EPS = 1e-9  # inside the square root, so D = 0 (identical inputs) still has a gradient


# ----------------------------------------------------------------------------- losses


def contrastive_loss(distance: Tensor, same: Tensor, margin: float = 1.0, *, balance: bool = False) -> Tensor:
    """Hadsell, Chopra & LeCun (2006), eq. 4, averaged over pairs.

    L = same * D^2 / 2 + (1 - same) * max(0, margin - D)^2 / 2

    ``distance`` D >= 0 (any shape), ``same`` (same shape) is 1 for a same-class pair and 0
    otherwise (the paper's Y is 1 - same). Similar pairs are pulled together; dissimilar pairs
    are pushed apart only while closer than the margin. ``balance=True`` averages the similar
    and the dissimilar terms separately and weighs them 1/2 each, which equals the plain mean
    on balanced pairs and keeps the all-pairs matrix (one same pair per row) from being
    swamped by its B - 1 different pairs.
    """
    if margin <= 0:
        raise ValueError(f"margin={margin}: must be positive")
    same = same.to(distance.dtype)
    pull = 0.5 * distance.pow(2)
    push = 0.5 * (margin - distance).clamp_min(0).pow(2)
    if balance:
        return 0.5 * (_masked_mean(pull, same) + _masked_mean(push, 1 - same))
    return (same * pull + (1 - same) * push).mean()


def _masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    return (values * weights).sum() / weights.sum().clamp_min(1)


def koch_loss(logit: Tensor, same: Tensor, *, balance: bool = False) -> Tensor:
    """Binary cross-entropy of p = sigmoid(logit) against ``same`` (Koch et al. 2015);
    ``balance`` as in `contrastive_loss`."""
    same = same.to(logit.dtype)
    losses = F.binary_cross_entropy_with_logits(logit, same, reduction="none")
    if balance:
        return 0.5 * (_masked_mean(losses, same) + _masked_mean(losses, 1 - same))
    return losses.mean()


def triplet_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 1.0) -> Tensor:
    """Triplet margin loss (Schroff et al. 2015): mean of max(0, |a - p| - |a - n| + margin)."""
    d_pos = _euclidean(anchor, positive)
    d_neg = _euclidean(anchor, negative)
    return (d_pos - d_neg + margin).clamp_min(0).mean()


def npair_loss(distance: Tensor, same: Tensor, temperature: float = 0.1) -> Tensor:
    """Multi-class N-pair loss (Sohn 2016) on an all-pairs distance matrix of unit-length embeddings.

    ``distance`` (B, B) holds D_ij = |z1_i - z2_j| and ``same`` (B, B) marks same-class pairs.
    On the unit sphere D^2 = 2 - 2 cos, so the logit -D^2 / (2 * temperature) is the cosine
    similarity over the temperature (up to a constant per row, which softmax ignores). Each x1[i]
    must pick its partners among all x2[j] (and each x2[j] among all x1[i]): cross-entropy against
    ``same`` spread evenly over the row's positives, averaged over both directions. Every
    different pair in the batch pushes, weighted by how close it is.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: must be positive")
    if distance.ndim != 2 or distance.shape != same.shape:
        raise ValueError(f"npair loss needs the (B, B) all-pairs matrix, got distance {tuple(distance.shape)}, same {tuple(same.shape)}")
    logits = -distance.pow(2) / (2 * temperature)  # (B, B)
    same = same.to(logits.dtype)
    rows = -(same / same.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1)
    cols = -(same / same.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0)
    return 0.5 * (rows.mean() + cols.mean())


def pair_loss(
    head: str, margin: float = 1.0, *, balance: bool = False, loss: str = "contrastive", temperature: float = 0.1
) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss that trains ``head``: ``loss_fn(outputs, same)`` as `train.fit` calls it.

    The contrastive head's distances train with ``loss="contrastive"`` (Hadsell et al.) or, on
    all-pairs batches, ``loss="npair"`` (`npair_loss`).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}: choose one of {', '.join(LOSSES)}")
    if loss == "npair":
        if head != "contrastive":
            raise ValueError(f"loss='npair' works on the contrastive head's distances, not head={head!r}")
        return lambda distance, same: npair_loss(distance, same, temperature)
    if head == "contrastive":
        return lambda distance, same: contrastive_loss(distance, same, margin, balance=balance)
    if head == "koch":
        return lambda logit, same: koch_loss(logit, same, balance=balance)
    raise ValueError(f"head={head!r}: choose one of {', '.join(HEADS)}")


def _euclidean(a: Tensor, b: Tensor) -> Tensor:
    return ((a - b).pow(2).sum(dim=-1) + DISTANCE_EPS).sqrt()


# ----------------------------------------------------------------------------- models


class SiameseEncoder(nn.Module):
    """[Conv3x3 -> BN -> ReLU -> MaxPool2] per width -> AdaptiveAvgPool(pooled) -> Linear -> embedding
    (optionally scaled to unit length).

    Pooling stops once the map is 1 pixel wide; the adaptive pool then gives a ``pooled`` x
    ``pooled`` grid whatever the input size, so one architecture serves any (C, H, W).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        channels: Sequence[int] = (64, 64, 64, 64),
        embedding_dim: int = 128,
        pooled: int = 2,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        if len(in_shape) != 3 or any(int(s) < 1 for s in in_shape):
            raise ValueError(f"in_shape={list(in_shape)}: expected (channels, height, width), all positive")
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"channels={list(channels)}: give one or more positive widths")
        if embedding_dim < 1 or pooled < 1:
            raise ValueError(f"embedding_dim={embedding_dim}, pooled={pooled}: both must be >= 1")
        self.config = {
            "arch": "siamese-encoder", "in_shape": [int(s) for s in in_shape], "channels": list(channels),
            "embedding_dim": embedding_dim, "pooled": pooled, "normalize": normalize,
        }
        c_in, h, w = (int(s) for s in in_shape)
        blocks: list[nn.Module] = []
        for c_out in channels:
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if min(h, w) >= 2:
                blocks.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(pooled)
        self.embed = nn.Linear(c_in * pooled * pooled, embedding_dim)
        self.embedding_dim, self.normalize = embedding_dim, normalize

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, embedding_dim)
        z = self.embed(self.pool(self.features(x)).flatten(1))
        # on the unit sphere distances lie in [0, 2], so a contrastive margin of about 1 means the same at any width
        return F.normalize(z, dim=1) if self.normalize else z


class PairModel(nn.Module):
    """One shared encoder and a pair head; ``forward(x1, x2)`` returns one number per pair.

    ``"contrastive"`` returns the distance D (B,), ``"koch"`` the logit of "same" (B,). With
    ``all_pairs=True`` every x1[i] is compared with every x2[j], (B, B): the B encodings of a
    batch then give B^2 pairs for the price of B (the matching `PairBatches` mode is
    ``all_pairs=True`` too).
    `similarity` turns either into a score where higher means "more alike", and works on
    embeddings with any leading dimensions, so evaluation encodes each image only once.
    """

    def __init__(self, encoder: nn.Module, head: str = "contrastive", *, all_pairs: bool = False) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head={head!r}: choose one of {', '.join(HEADS)}")
        self.encoder = encoder
        self.head = head
        self.all_pairs = all_pairs  # forward compares every x1[i] with every x2[j]: (B, B)
        dim = getattr(encoder, "embedding_dim", None)
        if head == "koch":
            if dim is None:
                raise ValueError("head='koch' needs an encoder with an `embedding_dim` attribute")
            self.l1_weights = nn.Linear(dim, 1)  # Koch's alpha_j over |z1_j - z2_j|, plus a bias

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:  # (B, C, H, W) x 2 -> (B,)
        if x1.shape != x2.shape:
            raise ValueError(f"pair inputs differ in shape: {tuple(x1.shape)} vs {tuple(x2.shape)}")
        z = self.encoder(torch.cat([x1, x2]))  # (2B, D): one forward, shared weights, shared BN batch
        z1, z2 = z.split(x1.shape[0])  # (B, D) each
        if self.all_pairs:
            return self.compare(z1[:, None, :], z2[None, :, :])  # (B, B)
        return self.compare(z1, z2)

    def compare(self, z1: Tensor, z2: Tensor) -> Tensor:
        """The head's raw output on embeddings (..., D) -> (...): distance or logit."""
        if self.head == "contrastive":
            return _euclidean(z1, z2)
        return self.l1_weights((z1 - z2).abs()).squeeze(-1)

    def similarity(self, z1: Tensor, z2: Tensor) -> Tensor:
        """Higher = more alike: -distance (contrastive) or the logit of "same" (koch)."""
        out = self.compare(z1, z2)
        return -out if self.head == "contrastive" else out


# ----------------------------------------------------------------------------- distortions


@dataclass(frozen=True)
class Distortion:
    """Koch et al.'s random affine distortions; each component is applied with probability ``p``.

    Defaults are Koch's: rotation in [-10, 10] degrees, shear in [-0.3, 0.3], scale in
    [0.8, 1.2] per axis, translation up to 2 of 105 pixels (given as a fraction of the width, so
    it means the same at any resolution).
    """

    rotation_deg: float = 10.0
    shear: float = 0.3
    scale: tuple[float, float] = (0.8, 1.2)
    translate: float = 2.0 / 105.0
    p: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p={self.p}: must lie in [0, 1]")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale={self.scale}: need 0 < low <= high")


def random_affine(x: Tensor, distortion: Distortion, generator: torch.Generator) -> Tensor:
    """Distort every image of ``x`` (B, C, H, W) by its own random affine map, in one grid_sample.

    Random numbers come from the CPU ``generator`` (reproducible on any device); the warp runs
    where ``x`` is. Borders are extended (``padding_mode="border"``), so the background stays
    background whatever its colour or normalisation.
    """
    b = x.shape[0]
    d = distortion
    u = lambda *shape: torch.rand(*shape, generator=generator, dtype=torch.float64)
    on = lambda *shape: (u(*shape) < d.p).to(torch.float64)  # each component kept with prob p
    angle = math.radians(d.rotation_deg) * (2 * u(b) - 1) * on(b)
    shear = d.shear * (2 * u(b, 2) - 1) * on(b, 1)
    lo, hi = d.scale
    scale = 1 + (lo + (hi - lo) * u(b, 2) - 1) * on(b, 1)
    shift = 2 * d.translate * (2 * u(b, 2) - 1) * on(b, 1)  # grid units: the width spans 2
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
    one = torch.ones(b, dtype=torch.float64)
    shearing = torch.stack([torch.stack([one, shear[:, 0]], -1), torch.stack([shear[:, 1], one], -1)], -2)
    linear = rotation @ shearing @ torch.diag_embed(scale)  # (B, 2, 2)
    theta = torch.cat([linear, shift[:, :, None]], dim=2).to(device=x.device, dtype=x.dtype)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ----------------------------------------------------------------------------- pairs


def split_classes(
    num_classes: int, fractions: Sequence[float] = (0.15,), seed: int = 0, minimum: int = 2
) -> list[Tensor]:
    """Split class ids 0..num_classes-1 at random into [rest, part_1, part_2, ...] by class.

    Part i gets ``round(fractions[i] * num_classes)`` classes but at least ``minimum`` (two
    classes are needed for a "different" pair); the rest (first) trains. Whole classes move,
    never single images, so held-out classes are truly unseen.
    """
    sizes = [max(minimum, int(round(f * num_classes))) for f in fractions]
    if num_classes - sum(sizes) < minimum:
        raise ValueError(
            f"{num_classes} classes cannot be split into {len(sizes)} held-out part(s) of {sizes} classes "
            f"and at least {minimum} training classes; use more classes or smaller fractions"
        )
    perm = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed))
    parts, start = [], sum(sizes)
    parts.append(perm[start:].sort().values)
    for size in sizes:
        start -= size
        parts.append(perm[start : start + size].sort().values)
    return parts


def rotated_classes(images: Tensor, labels: Tensor, classes: Tensor, rotations: int = 4) -> tuple[Tensor, Tensor, Tensor]:
    """Add each class turned by 90, 180, 270 degrees as a class of its own (``rotations`` = 2 or 4).

    A character turned on its side is a new character (Vinyals et al. 2016, Snell et al. 2017
    train on Omniglot this way); unlike a small affine distortion it is never the same class.
    Returns (images, labels, classes) of the original images followed by the turned copies of
    those in ``classes``; copy r of class k gets label ``k + r * num_labels``.
    """
    if rotations not in (1, 2, 4):
        raise ValueError(f"rotations={rotations}: give 1 (none), 2 (0 and 180 degrees) or 4 (every 90 degrees)")
    offset = int(labels.max()) + 1
    keep = torch.isin(labels, classes)
    turns = (2,) if rotations == 2 else tuple(range(1, rotations))
    all_images, all_labels, all_classes = [images], [labels], [classes]
    for k, turn in enumerate(turns, start=1):
        all_images.append(torch.rot90(images[keep], turn, dims=(-2, -1)))
        all_labels.append(labels[keep] + k * offset)
        all_classes.append(classes + k * offset)
    return torch.cat(all_images), torch.cat(all_labels), torch.cat(all_classes)


class _ClassIndex:
    """Image indices grouped by class: ``members[offsets[k] : offsets[k] + counts[k]]`` is class k."""

    def __init__(self, labels: Tensor) -> None:
        labels = labels.cpu()
        self.class_ids, self.counts = torch.unique(labels, return_counts=True)
        if len(self.class_ids) < 2:
            raise ValueError(f"pairs need at least 2 classes, got {len(self.class_ids)}")
        if int(self.counts.min()) < 2:
            bad = self.class_ids[self.counts < 2].tolist()
            raise ValueError(f"classes {bad[:10]} have a single image: no same-class pair can be formed; drop them or add images")
        self.members = torch.argsort(labels, stable=True)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts

    def pick(self, k: Tensor, generator: torch.Generator, avoid: Tensor | None = None) -> Tensor:
        """One random image index of each class ``k`` (B,); with ``avoid``, a different one."""
        count = self.counts[k]
        if avoid is None:
            pos = (torch.rand(len(k), generator=generator) * count).long()
        else:
            pos = (avoid + 1 + (torch.rand(len(k), generator=generator) * (count - 1)).long()) % count
        return pos

    def sample(self, num_pairs: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Balanced pairs: (first (P,), second (P,), same (P,)); even positions same, odd different."""
        K = len(self.class_ids)
        same = torch.arange(num_pairs) % 2 == 0
        k1 = torch.randint(K, (num_pairs,), generator=generator)
        k2 = (k1 + 1 + torch.randint(K - 1, (num_pairs,), generator=generator)) % K  # any other class
        k2 = torch.where(same, k1, k2)
        pos1 = self.pick(k1, generator)
        pos2 = torch.where(same, self.pick(k1, generator, avoid=pos1), self.pick(k2, generator))
        first = self.members[self.offsets[k1] + pos1]
        second = self.members[self.offsets[k2] + pos2]
        return first, second, same.to(torch.float32)

    def sample_matched(self, num_pairs: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Same-class pairs of distinct classes (repeats only when there are fewer classes than
        pairs): (first (P,), second (P,), same (P, P)) with same[i, j] = class i == class j."""
        K = len(self.class_ids)
        if K >= num_pairs:
            k = torch.randperm(K, generator=generator)[:num_pairs]
        else:
            k = torch.randint(K, (num_pairs,), generator=generator)
        pos1 = self.pick(k, generator)
        pos2 = self.pick(k, generator, avoid=pos1)
        same = (k[:, None] == k[None, :]).to(torch.float32)  # (P, P), ones on the diagonal
        return self.members[self.offsets[k] + pos1], self.members[self.offsets[k] + pos2], same


class PairBatches:
    """Balanced same/different pairs of images, drawn afresh each epoch; a source for `train.fit`.

    ``epoch(e)`` yields ``((x1, x2), same)`` with x normalised (and distorted, if asked) and
    ``same`` float (B,) in {0, 1}, half ones. With ``all_pairs=True`` (for a `PairModel` with
    ``all_pairs=True``) x1[i], x2[i] are a same-class pair of a class of its own and ``same`` is
    the (B, B) matrix of "x1[i] and x2[j] share a class": B same and B(B - 1) different pairs
    per batch, balanced by ``pair_loss(..., balance=True)``. The pairs of epoch e follow from (seed, e) alone. Only the
    images whose labels are in ``classes`` are used (all when None), which is how training and
    held-out classes are kept apart.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        classes: Tensor | None = None,
        pairs_per_epoch: int = 10_000,
        batch_size: int = 128,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        distortion: Distortion | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        all_pairs: bool = False,
    ) -> None:
        if batch_size < 2 or (batch_size % 2 and not all_pairs):
            raise ValueError(f"batch_size={batch_size}: give an even number >= 2 (half same, half different pairs)")
        if pairs_per_epoch < batch_size:
            raise ValueError(f"pairs_per_epoch={pairs_per_epoch}: must be at least batch_size={batch_size}")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self._all_images, self._all_labels, self.classes = images, labels, classes
        if classes is not None:
            keep = torch.isin(labels.cpu(), classes.cpu())
            images, labels = images[keep], labels[keep]
        self.index = _ClassIndex(labels)
        self.device = resolve_device(device)
        self.images = images.to(self.device)
        channels = images.shape[1]
        self.mean = torch.zeros(channels) if mean is None else mean
        self.std = torch.ones(channels) if std is None else std
        self.pairs_per_epoch, self.batch_size = pairs_per_epoch, batch_size
        self.distortion, self.seed, self.all_pairs = distortion, seed, all_pairs

    @property
    def num_samples(self) -> int:
        return self.pairs_per_epoch

    def __len__(self) -> int:
        return self.pairs_per_epoch // self.batch_size

    def with_options(self, **changes: Any) -> "PairBatches":
        kwargs = dict(
            classes=self.classes, pairs_per_epoch=self.pairs_per_epoch, batch_size=self.batch_size,
            mean=self.mean, std=self.std, distortion=self.distortion, seed=self.seed, device=self.device,
            all_pairs=self.all_pairs,
        )
        kwargs.update(changes)
        return PairBatches(self._all_images, self._all_labels, **kwargs)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[tuple[Tensor, Tensor], Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        for _ in range(len(self)):
            sample = self.index.sample_matched if self.all_pairs else self.index.sample
            first, second, same = sample(self.batch_size, generator)
            x = normalize(self.images.index_select(0, torch.cat([first, second]).to(self.device)), self.mean, self.std)
            if self.distortion is not None:
                x = random_affine(x, self.distortion, generator)
            x1, x2 = x.split(self.batch_size)
            yield (x1, x2), same.to(self.device)

    def __iter__(self) -> Iterator[tuple[tuple[Tensor, Tensor], Tensor]]:
        return self.epoch(0)


def balanced_pairs(labels: Tensor, max_pairs: int = 4000, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Fixed evaluation pairs: distinct same-class pairs (all of them, or a random ``max_pairs // 2``)
    and as many random different-class pairs. Returns (first, second, same).

    Memory grows with the pairs kept, not with N^2: large classes are sampled, not enumerated.
    """
    labels = labels.cpu()
    gen = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    if len(classes) < 2 or int(counts.max()) < 2:
        raise ValueError("evaluation pairs need at least 2 classes and a class with 2 or more images")
    half = max_pairs // 2
    same_i, same_j = [], []
    for c, n in zip(classes.tolist(), counts.tolist()):
        if n < 2:
            continue
        members = torch.nonzero(labels == c).squeeze(1)
        if n * (n - 1) // 2 <= half:
            i, j = torch.triu_indices(n, n, offset=1)
        else:  # too many to list: random distinct pairs (repeats are rare and harmless)
            i = torch.randint(n, (half,), generator=gen)
            j = (i + 1 + torch.randint(n - 1, (half,), generator=gen)) % n
        same_i.append(members[i])
        same_j.append(members[j])
    first_same, second_same = torch.cat(same_i), torch.cat(same_j)
    keep = torch.randperm(len(first_same), generator=gen)[:half]
    first_same, second_same = first_same[keep], second_same[keep]
    k = len(first_same)
    diff_i, diff_j = [], []
    while sum(len(d) for d in diff_i) < k:  # rejection sampling; at least 2 classes, so it ends
        i = torch.randint(len(labels), (2 * k,), generator=gen)
        j = torch.randint(len(labels), (2 * k,), generator=gen)
        ok = labels[i] != labels[j]
        diff_i.append(i[ok])
        diff_j.append(j[ok])
    first = torch.cat([first_same, torch.cat(diff_i)[:k]])
    second = torch.cat([second_same, torch.cat(diff_j)[:k]])
    same = torch.cat([torch.ones(k), torch.zeros(k)])
    return first, second, same


# ----------------------------------------------------------------------------- evaluation


def embed(encoder: nn.Module, inputs: Tensor, *, batch_size: int = 512) -> Tensor:
    """Eval-mode embeddings (N, D) of normalised ``inputs`` (N, C, H, W), computed in chunks."""
    return predict_logits(encoder, inputs, batch_size=batch_size)  # an encoder's outputs are its embeddings


@torch.no_grad()
def pair_similarity(model: PairModel, inputs: Tensor, first: Tensor, second: Tensor) -> Tensor:
    """Similarity of pairs (first[p], second[p]) of ``inputs``, each image encoded once."""
    z = embed(model.encoder, inputs)
    first, second = first.to(z.device), second.to(z.device)
    return model.similarity(z[first], z[second]).cpu()


def one_shot_accuracy(similarity: Tensor, answers: Tensor) -> float:
    """N-way one-shot accuracy: each query goes to the support image of highest similarity.

    ``similarity`` (T, Q, N) scores query q of task t against its N support images;
    ``answers`` (T, Q) is the index of the right one.
    """
    if similarity.ndim != 3 or answers.shape != similarity.shape[:2]:
        raise ValueError(f"expected similarity (T, Q, N) and answers (T, Q), got {tuple(similarity.shape)} and {tuple(answers.shape)}")
    return (similarity.argmax(dim=2) == answers.to(similarity.device)).double().mean().item()


def task_similarity(model: PairModel, support: Tensor, queries: Tensor) -> Tensor:
    """Model similarity (T, Q, N) for normalised support (T, N, C, H, W) and queries (T, Q, C, H, W)."""
    T, N = support.shape[:2]
    Q = queries.shape[1]
    z_support = embed(model.encoder, support.flatten(0, 1)).view(T, N, -1)
    z_queries = embed(model.encoder, queries.flatten(0, 1)).view(T, Q, -1)
    with torch.no_grad():
        return model.similarity(z_queries[:, :, None, :], z_support[:, None, :, :]).cpu()  # (T, Q, N)


def pixel_similarity(support: Tensor, queries: Tensor) -> Tensor:
    """The pixel nearest-neighbour baseline: -squared Euclidean distance of raw pixels, (T, Q, N)."""
    s = support.flatten(2).double()  # (T, N, P)
    q = queries.flatten(2).double()  # (T, Q, P)
    return -torch.cdist(q, s).pow(2)


def sample_nway_tasks(
    labels: Tensor, n_way: int, num_tasks: int, *, queries_per_task: int = 1, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Random N-way one-shot tasks from the classes in ``labels``.

    Each task picks ``n_way`` distinct classes and one support image of each, then
    ``queries_per_task`` of those classes and, for each, another image of it. Returns image
    indices support (T, N), queries (T, Q) and answers (T, Q) (the matching support column).
    """
    labels = labels.cpu()
    classes, counts = torch.unique(labels, return_counts=True)
    classes = classes[counts >= 2]
    if len(classes) < n_way:
        raise ValueError(f"{n_way}-way tasks need {n_way} classes with 2+ images; only {len(classes)} available")
    if not 1 <= queries_per_task <= n_way:
        raise ValueError(f"queries_per_task={queries_per_task}: must lie in 1..{n_way}")
    members = {int(c): torch.nonzero(labels == c).squeeze(1).numpy() for c in classes}
    rng = np.random.default_rng(seed)
    support = np.empty((num_tasks, n_way), dtype=np.int64)
    queries = np.empty((num_tasks, queries_per_task), dtype=np.int64)
    answers = np.empty((num_tasks, queries_per_task), dtype=np.int64)
    for t in range(num_tasks):
        chosen = rng.choice(classes.numpy(), size=n_way, replace=False)
        pairs = [rng.choice(members[int(c)], size=2, replace=False) for c in chosen]
        support[t] = [p[0] for p in pairs]
        answers[t] = rng.choice(n_way, size=queries_per_task, replace=False)
        queries[t] = [pairs[a][1] for a in answers[t]]
    return torch.from_numpy(support), torch.from_numpy(queries), torch.from_numpy(answers)


def roc_auc(scores: Tensor, same: Tensor) -> float:
    """Area under the ROC curve of ``scores`` (higher = same) against ``same``."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(same.cpu().numpy(), scores.double().cpu().numpy()))


def best_threshold(scores: Tensor, same: Tensor) -> float:
    """The score threshold (predict same when score >= t) of highest accuracy on these pairs."""
    s, y = scores.double().cpu(), same.cpu().bool()
    candidates = torch.unique(s)
    # accuracy for each threshold at once: (T, P) comparisons are fine for a few thousand pairs
    acc = ((s[None, :] >= candidates[:, None]) == y[None, :]).double().mean(1)
    best = int(acc.argmax())
    return float(candidates[best])


def verification_metrics(scores: Tensor, same: Tensor, threshold: float | None = None) -> dict[str, float]:
    """ROC-AUC, equal error rate and, given a threshold, the accuracy of "same iff score >= t"."""
    from .metrics import equal_error_rate

    out = {"auc": roc_auc(scores, same), "eer": equal_error_rate(scores, same)}
    if threshold is not None:
        out["verify_accuracy"] = ((scores.double() >= threshold) == same.bool()).double().mean().item()
    return out


# ----------------------------------------------------------------------------- save / load

WEIGHTS_FILE = "encoder.safetensors"
MANIFEST_FILE = "manifest.json"


def save_pair_model(model: PairModel, folder: str | os.PathLike, **extra: Any) -> Path:
    """Write the pair model's weights (safetensors) and a manifest that rebuilds it (JSON).

    ``extra`` (JSON-safe: normalisation mean/std, image size, class split, ...) goes into the
    manifest. Both files are written atomically.
    """
    from safetensors.torch import save

    from .report import atomic_write_bytes

    config = getattr(model.encoder, "config", None)
    if config is None:
        raise ValueError("the encoder has no `config`; only SiameseEncoder-style encoders can be saved")
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_FILE, save(state))
    manifest = {"format": "ensemblekit-siamese", "format_version": 1, "encoder": config, "head": model.head, **extra}
    atomic_write_bytes(folder / MANIFEST_FILE, (json.dumps(manifest, indent=2, default=_jsonable) + "\n").encode())
    return folder


def load_pair_model(folder: str | os.PathLike) -> tuple[PairModel, dict[str, Any]]:
    """Rebuild a model written by `save_pair_model`; returns (model in eval mode, manifest)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except FileNotFoundError as exc:
        raise DataError(f"{folder}: no {MANIFEST_FILE}; not a saved Siamese model") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{folder / MANIFEST_FILE}: not valid JSON ({exc})") from exc
    if manifest.get("format") != "ensemblekit-siamese":
        raise DataError(f"{folder / MANIFEST_FILE}: format {manifest.get('format')!r}, expected 'ensemblekit-siamese'")
    config = {k: v for k, v in manifest["encoder"].items() if k != "arch"}
    model = PairModel(SiameseEncoder(**config), head=manifest["head"])
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model.eval(), manifest


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)
