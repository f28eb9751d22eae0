"""K MLPs trained as one wide network: the vectorised path of `ensemble.train_members`.

When all members see the same batch, K separate forward/backward passes of small matrices can
become one pass of bigger ones:

- the first layer of every member reads the same input, so the K weight matrices (h, in) are
  concatenated into one (K*h, in) and applied with ONE GEMM: (B, in) @ (in, K*h);
- later layers read member-specific activations, so their weights are stacked to (K, in, out)
  and applied with one batched matmul (``torch.baddbmm``) over (K, B, in).

Training uses the same `train.fit` as one-by-one training. The loss is the SUM over members of
their cross-entropies, so member k's parameters receive exactly the gradient of its own loss
(the other terms do not depend on them). SGD (momentum, Nesterov, weight decay) and AdamW act
element by element, so one optimiser over the stacked tensors takes exactly the steps K separate
optimisers would. Dropout masks are drawn for the (K, B, h) activations, so they are independent
across members. Afterwards `WideMLP.to_members` unstacks the weights into K ordinary `MLP`s.

Same batch order and seeds give the same members as one-by-one training up to float summation
order (tests check 1e-4 after 20 steps). Dropout masks come from one stream for all members
here, so with dropout a member is reproducible with its ensemble, not alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Batches
from .dropout import make_dropout
from .models import MLP, build_model
from .train import History, Recipe, fit

__all__ = ["WideMLP", "train_vectorized", "wide_loss"]


class WideMLP(nn.Module):
    """K MLPs of one architecture as one network: (B, C, H, W) -> logits (K, B, num_classes)."""

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
        first = [ls[0] for ls in layers]
        with torch.no_grad():
            # (K*h1, in): rows k*h1 .. (k+1)*h1 are member k's first layer
            self.first_weight = nn.Parameter(torch.cat([l.weight for l in first]).clone())
            self.first_bias = nn.Parameter(torch.cat([l.bias for l in first]).clone())
            # (K, in, out) and (K, 1, out) per later layer: transposed so baddbmm computes h @ W + b
            self.weights = nn.ParameterList(
                [nn.Parameter(torch.stack([ls[j].weight.t() for ls in layers]).contiguous()) for j in range(1, len(layers[0]))]
            )
            self.biases = nn.ParameterList(
                [nn.Parameter(torch.stack([ls[j].bias for ls in layers]).unsqueeze(1).clone()) for j in range(1, len(layers[0]))]
            )
        self.dropout = make_dropout(config.get("dropout", 0.0), config.get("dropout_kind", "inverted"))

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        h = F.linear(x.reshape(b, -1), self.first_weight, self.first_bias)  # (B, K*h1): one GEMM
        h = h.view(b, self.k, -1).transpose(0, 1)  # (K, B, h1)
        if not len(self.weights):  # hidden=(): the first layer is the output layer
            return h
        h = self.dropout(F.relu(h))
        last = len(self.weights) - 1
        for j, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(bias, h, weight)  # (K, B, in) @ (K, in, out) + (K, 1, out)
            if j < last:
                h = self.dropout(F.relu(h))
        return h  # (K, B, num_classes)

    @torch.no_grad()
    def to_members(self) -> list[MLP]:
        """K ordinary `MLP`s holding this network's current weights (copies, on this device)."""
        device = self.first_weight.device
        h1 = self.first_weight.shape[0] // self.k
        members = []
        for k in range(self.k):
            member = build_model(self.config).to(device)
            linears = [layer for layer in member.net if isinstance(layer, nn.Linear)]
            linears[0].weight.copy_(self.first_weight[k * h1 : (k + 1) * h1])
            linears[0].bias.copy_(self.first_bias[k * h1 : (k + 1) * h1])
            for linear, weight, bias in zip(linears[1:], self.weights, self.biases):
                linear.weight.copy_(weight[k].t())
                linear.bias.copy_(bias[k, 0])
            members.append(member.eval())
        return members


def wide_loss(label_smoothing: float = 0.0):
    """Sum over members of each member's mean cross-entropy: logits (K, B, C), targets (B,) -> scalar."""

    def loss(outputs: Tensor, targets: Tensor) -> Tensor:
        k, b, c = outputs.shape
        per_sample = F.cross_entropy(
            outputs.reshape(k * b, c), targets.repeat(k), label_smoothing=label_smoothing, reduction="none"
        )  # (K*B,), member-major
        return per_sample.view(k, b).mean(dim=1).sum()

    return loss


def train_vectorized(
    config: dict[str, Any],
    batches: Batches,
    recipe: Recipe,
    seeds: Sequence[int],
    *,
    progress: bool | None = None,
) -> tuple[list[MLP], History]:
    """Train ``len(seeds)`` MLPs (member k initialised from ``seeds[k]``) as one `WideMLP` with `fit`.

    ``batches`` supplies the shared order; ``recipe.seed`` seeds the dropout masks. The returned
    history's ``train_loss`` is the mean over members (fit itself sees their sum).
    """
    if config.get("arch") != "mlp":
        raise ValueError(f"the vectorised path covers MLPs only, got architecture {config.get('arch')!r}")
    wide = WideMLP([build_model(config, seed=s) for s in seeds])
    history = fit(wide, batches, recipe, loss_fn=wide_loss(recipe.label_smoothing), progress=progress,
                  description=f"{len(seeds)} members (vectorised)")
    for record in history.epochs:
        record["train_loss"] /= len(seeds)
    return wide.to_members(), history
