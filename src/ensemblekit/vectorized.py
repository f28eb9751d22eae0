"""K MLPs trained as one wide network: the vectorised path of `ensemble.train_members`.

K separate forward/backward passes of small matrices become one pass of batched ones: every
layer's K weight matrices are stacked to (K, in, out) and applied with one batched matmul
(``torch.baddbmm``) over (K, B, in) activations. When all members read the same batch it is
expanded to K without a copy; with `MemberBatches` (each member's own order, or its own bootstrap
resample) the input is (K, B, C, H, W), one batch per member. Same FLOPs either way; own orders
keep the diversity they give (with a constant lr and a shared order, 5 Fashion-MNIST members end
up nearly identical and their ensemble gains little, see docs/ensembles.md).

Training uses the same `train.fit` as one-by-one training. The loss is the SUM over members of
their cross-entropies, so member k's parameters receive exactly the gradient of its own loss
(the other terms do not depend on them). SGD (momentum, Nesterov, weight decay) and AdamW act
element by element, so one optimiser over the stacked tensors takes exactly the steps K separate
optimisers would. Dropout masks are drawn for the (K, B, h) activations, so they are independent
across members. Afterwards `WideMLP.to_members` unstacks the weights into K ordinary `MLP`s.

Same batches and seeds give the same members as one-by-one training up to float summation
order (tests check 1e-4 after 20 steps). Dropout masks come from one stream for all members
here, so with dropout a member is reproducible with its ensemble, not alone.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Batches
from .dropout import make_dropout
from .models import MLP, build_model
from .train import History, Recipe, fit

__all__ = ["MemberBatches", "WideMLP", "train_vectorized", "wide_loss"]


class WideMLP(nn.Module):
    """K MLPs of one architecture as one network: images -> logits (K, B, num_classes).

    Every linear layer j holds the K members' weights stacked as (K, in, out) and biases as
    (K, 1, out), and runs as one ``torch.baddbmm`` over (K, B, in) activations. The input is
    either one batch (B, C, H, W) that all members read (expanded to K with stride 0: no copy) or
    one batch per member (K, B, C, H, W). Measured on CPU, the (K, in, out) layout makes the
    per-member first layer as fast as one GEMM over concatenated weights (docs/ensembles.md), so
    one layout serves both.
    """

    def __init__(self, members: Sequence[MLP]) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("WideMLP needs at least 1 member")
        config = members[0].config
        for i, m in enumerate(members):
            if not isinstance(m, MLP):
                raise ValueError(f"member {i} is a {type(m).__name__}; only MLPs have a wide path")
            if m.config != config:
                raise ValueError(f"member {i} has config {m.config}, member 0 has {config}; all must match")
        self.config = dict(config)
        self.k = len(members)
        layers = [[layer for layer in m.net if isinstance(layer, nn.Linear)] for m in members]
        with torch.no_grad():
            # (K, in, out): transposed, so baddbmm computes h @ W + b for every member at once
            self.weights = nn.ParameterList(
                [nn.Parameter(torch.stack([ls[j].weight.t() for ls in layers]).contiguous()) for j in range(len(layers[0]))]
            )
            self.biases = nn.ParameterList(
                [nn.Parameter(torch.stack([ls[j].bias for ls in layers]).unsqueeze(1).clone()) for j in range(len(layers[0]))]
            )
        self.dropout = make_dropout(config.get("dropout", 0.0), config.get("dropout_kind", "inverted"))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) shared by all members, or (K, B, C, H, W) one batch per member -> (K, B, classes)."""
        if x.ndim == len(self.config["in_shape"]) + 2:  # one batch per member
            h = x.reshape(x.shape[0], x.shape[1], -1)  # (K, B, in)
        else:
            h = x.reshape(1, x.shape[0], -1).expand(self.k, -1, -1)  # (K, B, in), stride 0 over K
        last = len(self.weights) - 1
        for j, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(bias, h, weight)  # (K, B, in) @ (K, in, out) + (K, 1, out)
            if j < last:
                h = self.dropout(F.relu(h))
        return h  # (K, B, num_classes)

    @torch.no_grad()
    def to_members(self) -> list[MLP]:
        """K ordinary `MLP`s holding this network's current weights (copies, on this device)."""
        device = self.weights[0].device
        members = []
        for k in range(self.k):
            member = build_model(self.config).to(device)
            linears = [layer for layer in member.net if isinstance(layer, nn.Linear)]
            for linear, weight, bias in zip(linears, self.weights, self.biases):
                linear.weight.copy_(weight[k].t())
                linear.bias.copy_(bias[k, 0])
            members.append(member.eval())
        return members


def wide_loss(label_smoothing: float = 0.0):
    """Sum over members of each member's mean cross-entropy: logits (K, B, C), targets (B,) or (K, B) -> scalar."""

    def loss(outputs: Tensor, targets: Tensor) -> Tensor:
        k, b, c = outputs.shape
        targets = targets.reshape(k * b) if targets.ndim == 2 else targets.repeat(k)  # (K*B,), member-major
        per_sample = F.cross_entropy(
            outputs.reshape(k * b, c), targets, label_smoothing=label_smoothing, reduction="none"
        )  # (K*B,), member-major
        return per_sample.view(k, b).mean(dim=1).sum()

    return loss


class MemberBatches:
    """K members' own batch streams side by side: epoch e yields inputs (K, B, ...) and targets (K, B).

    Stream k is the `Batches` member k would train on alone (its own order or bootstrap
    resample), so the wide network sees exactly the batches of one-by-one training. `fit` uses
    the streams as given (``seed`` is None: there is no single order to re-seed).
    """

    seed = None

    def __init__(self, streams: Sequence[Batches]) -> None:
        self.streams = list(streams)
        if not self.streams:
            raise ValueError("MemberBatches needs at least 1 stream")
        first = self.streams[0]
        for i, stream in enumerate(self.streams):
            if (len(stream), stream.batch_size, stream.num_samples) != (len(first), first.batch_size, first.num_samples):
                raise ValueError(
                    f"stream {i} has {stream.num_samples} samples in {len(stream)} batches of {stream.batch_size}, "
                    f"stream 0 {first.num_samples} in {len(first)} of {first.batch_size}; all must match"
                )

    @property
    def device(self) -> torch.device:
        return self.streams[0].device

    @property
    def batch_size(self) -> int:
        return self.streams[0].batch_size

    @property
    def num_samples(self) -> int:
        return self.streams[0].num_samples

    def __len__(self) -> int:
        return len(self.streams[0])

    def _one_dataset(self) -> bool:
        """All streams read the same images with the same transform (they differ by order or resample)."""
        first = self.streams[0]
        return all(s.images is first.images and s.transform is first.transform for s in self.streams)

    def with_options(self, **changes: Any) -> "MemberBatches":
        if not self._one_dataset():
            return MemberBatches([stream.with_options(**changes) for stream in self.streams])
        # one dataset: move it (to another device, say) once and let every stream share the copy
        first = self.streams[0].with_options(**changes)
        own = lambda s: {"seed": s.seed, "indices": s.indices, **changes}  # what sets streams apart, then the changes
        return MemberBatches([first] + [first.with_options(**own(s)) for s in self.streams[1:]])

    def epoch(self, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        first = self.streams[0]
        if not self._one_dataset():
            for pairs in zip(*(stream.epoch(epoch) for stream in self.streams)):  # unrelated streams
                inputs, targets = zip(*pairs)
                yield torch.stack(inputs), torch.stack(targets)  # (K, B, C, H, W), (K, B)
            return
        # the usual case, K orders over one dataset: one gather and one normalisation per step
        orders = torch.stack([stream.order(epoch) for stream in self.streams])  # (K, N)
        k, size = len(self.streams), first.batch_size
        for start in range(0, len(first) * size, size):
            idx = orders[:, start : start + size]  # (K, B)
            x, y = first.take(idx.reshape(-1))
            yield x.view(k, -1, *x.shape[1:]), y.view(k, -1)  # (K, B, C, H, W), (K, B)


def train_vectorized(
    config: dict[str, Any],
    batches: Batches | MemberBatches,
    recipe: Recipe,
    seeds: Sequence[int],
    *,
    progress: bool | None = None,
) -> tuple[list[MLP], History]:
    """Train ``len(seeds)`` MLPs (member k initialised from ``seeds[k]``) as one `WideMLP` with `fit`.

    ``batches``: one `Batches` whose order all members share (``recipe.seed`` seeds it), or a
    `MemberBatches` with one stream per member. ``recipe.seed`` seeds the dropout masks. The
    returned history's ``train_loss`` is the mean over members (fit itself sees their sum).
    """
    if isinstance(batches, MemberBatches) and len(batches.streams) != len(seeds):
        raise ValueError(f"{len(batches.streams)} batch streams for {len(seeds)} members; give one per member")
    if config.get("arch") != "mlp":
        raise ValueError(f"the vectorised path covers MLPs only, got architecture {config.get('arch')!r}")
    wide = WideMLP([build_model(config, seed=s) for s in seeds])
    history = fit(wide, batches, recipe, loss_fn=wide_loss(recipe.label_smoothing), progress=progress,
                  description=f"{len(seeds)} members (vectorised)")
    for record in history.epochs:
        record["train_loss"] /= len(seeds)
    return wide.to_members(), history
