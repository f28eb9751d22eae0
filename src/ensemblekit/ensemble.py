"""Deep ensembles: K independently trained members, one prediction.

"Train multiple independent models; at test time average their results." An `Ensemble` holds K
members (any modules mapping the same normalised inputs to logits of the same shape) and a
combination rule:

- ``mean_proba`` (default): average the members' softmax probabilities (Lakshminarayanan et al.
  2017). Robust and the best default for accuracy and NLL.
- ``mean_logits``: average the logits, then softmax; a geometric mean of the probabilities, a
  little more confident than ``mean_proba``.
- ``vote``: majority vote of the members' argmax. Ties are broken by the mean probability. The
  returned distribution is the vote share smoothed by half a vote spread over the mean probability,
  ``(votes + 0.5 * mean_proba) / (K + 0.5)``, so its argmax is the (tie-broken) vote winner and its
  NLL stays finite.
- ``weighted``: ``sum_k w_k p_k`` with non-negative weights summing to one, fitted on validation
  data to minimise NLL (`fit_weights`). Helps when members differ in quality (say snapshots of
  one run); for equally good independent members it stays close to uniform.

Training K members (`train_members`) goes through the one loop, `train.fit`: member i's initial
weights, dropout masks and (with ``shared_order=False`` or ``bootstrap=True``) its data follow
``member_seed(seed, i)`` alone, so member i can be retrained on its own. MLP members can instead
train as one wide network (`ensemblekit.vectorized`), sharing the batch order or each with its
own; ``vectorize="auto"`` picks whichever `bench/bench_ensemble.py` measured to be faster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Batches
from .metrics import evaluate
from .models import build_model
from .train import History, Recipe, fit

__all__ = [
    "COMBINE_RULES",
    "VECTORIZE_MODES",
    "Ensemble",
    "combine",
    "fit_weights",
    "member_seed",
    "train_members",
    "TrainedEnsemble",
    "pairwise_disagreement",
    "evaluate_members",
    "size_curve",
    "plot_size_curve",
]

COMBINE_RULES = ("mean_proba", "mean_logits", "vote", "weighted")
VECTORIZE_MODES = ("auto", "on", "off")
VOTE_SMOOTHING = 0.5  # half a vote: breaks ties by mean probability without overturning a majority


# ----------------------------------------------------------------------------- combination rules


def combine(logits: Tensor, rule: str = "mean_proba", weights: Tensor | None = None) -> Tensor:
    """Members' logits (K, B, C) -> ensemble probabilities (B, C) by ``rule`` (see `COMBINE_RULES`)."""
    if logits.ndim != 3:
        raise ValueError(f"expected member logits (K, B, C), got shape {tuple(logits.shape)}")
    k = logits.shape[0]
    if rule == "mean_proba":
        return logits.softmax(dim=2).mean(dim=0)
    if rule == "mean_logits":
        return logits.mean(dim=0).softmax(dim=1)
    if rule == "vote":
        mean_proba = logits.softmax(dim=2).mean(dim=0)  # (B, C)
        votes = F.one_hot(logits.argmax(dim=2), logits.shape[2]).sum(dim=0).to(mean_proba.dtype)  # (B, C)
        return (votes + VOTE_SMOOTHING * mean_proba) / (k + VOTE_SMOOTHING)
    if rule == "weighted":
        if weights is None:
            raise ValueError("combine='weighted' needs weights; fit them with Ensemble.fit_weights(x_val, y_val)")
        w = _check_weights(weights, k).to(device=logits.device, dtype=logits.dtype)
        return torch.einsum("k,kbc->bc", w, logits.softmax(dim=2))
    raise ValueError(f"combine={rule!r}: choose one of {', '.join(COMBINE_RULES)}")


def _check_weights(weights: Tensor | Sequence[float], k: int) -> Tensor:
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.numel() != k:
        raise ValueError(f"weights has {w.numel()} entries for {k} members; give one weight per member")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights={w.tolist()}: must be finite and non-negative")
    if abs(w.sum().item() - 1.0) > 1e-4:
        raise ValueError(f"weights={w.tolist()} sum to {w.sum().item():.6f}; they must sum to 1")
    return w.float()


def fit_weights(members_proba: Tensor, labels: Tensor, *, max_iter: int = 200) -> Tensor:
    """Non-negative weights (K,) summing to 1 that minimise the NLL of ``sum_k w_k p_k`` on held-out data.

    ``members_proba`` is (K, N, C). The weights are ``softmax(theta)`` (so the simplex constraint
    holds by construction), started at uniform and optimised with L-BFGS; the NLL is convex in w,
    so the only risk is a slow approach to a vertex, which ``max_iter`` bounds.
    """
    if members_proba.ndim != 3 or labels.shape != members_proba.shape[1:2]:
        raise ValueError(f"expected proba (K, N, C) and labels (N,), got {tuple(members_proba.shape)} and {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise ValueError("fit_weights needs at least one validation sample (is the validation split empty?)")
    p_true = members_proba.double().gather(2, labels.view(1, -1, 1).expand(members_proba.shape[0], -1, 1))
    p_true = p_true.squeeze(2).detach()  # (K, N): only the true-class probabilities matter for NLL
    theta = torch.zeros(members_proba.shape[0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = -(theta.softmax(0) @ p_true).clamp_min(1e-12).log().mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return theta.detach().softmax(0).float()


# ----------------------------------------------------------------------------- the predictor


class Ensemble(nn.Module):
    """K members, one prediction: ``predict_proba(x)`` (B, C) and ``members_proba(x)`` (K, B, C).

    ``x`` is a batch of normalised float inputs; predictions run in eval mode, without gradients,
    in chunks of ``batch_size`` on the members' device. Members are kept as given (not copied).
    ``info`` holds what a checkpoint records beside the weights (classes, normalisation, metrics).
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        combine: str = "mean_proba",
        weights: Tensor | Sequence[float] | None = None,
        *,
        batch_size: int = 1024,
    ) -> None:
        super().__init__()
        members = list(members)
        if len(members) < 1:
            raise ValueError("an ensemble needs at least 1 member, got 0")
        for i, m in enumerate(members):
            if not isinstance(m, nn.Module):
                raise ValueError(f"member {i} is a {type(m).__name__}, not a torch.nn.Module")
        if combine not in COMBINE_RULES:
            raise ValueError(f"combine={combine!r}: choose one of {', '.join(COMBINE_RULES)}")
        if combine == "weighted" and weights is None:
            raise ValueError("combine='weighted' needs weights; fit them with Ensemble.fit_weights(x_val, y_val)")
        # ensemblekit models declare their outputs: refuse a mismatch now, not at the first prediction
        declared = [(getattr(m, "config", None) or {}).get("num_classes") for m in members]
        for i, n in enumerate(declared):
            if n is not None and declared[0] is not None and n != declared[0]:
                raise ValueError(f"member {i} outputs {n} classes, member 0 outputs {declared[0]}; members must agree")
        self.members = nn.ModuleList(members)
        self.combine = combine
        self.weights = None if weights is None else _check_weights(weights, len(members))
        self.batch_size = batch_size
        self.info: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.members)

    @torch.no_grad()
    def members_logits(self, x: Tensor) -> Tensor:
        """Logits of every member, (K, B, C), eval mode, chunked. Members must agree on the shape."""
        chunks = []
        for start in range(0, x.shape[0], self.batch_size):
            chunks.append(self._chunk_logits(x[start : start + self.batch_size]))
        if not chunks:  # empty input: still (K, 0, C) if the class count is known
            return torch.empty(len(self), 0, self._num_classes_hint())
        return torch.cat(chunks, dim=1)

    def _chunk_logits(self, x: Tensor) -> Tensor:
        outputs = []
        for i, member in enumerate(self.members):
            device = _module_device(member)
            was_training = member.training
            member.eval()
            try:
                out = member(x.to(device)).float()
            finally:
                member.train(was_training)
            if out.ndim != 2 or (outputs and out.shape != outputs[0].shape):
                raise ValueError(
                    f"member {i} outputs shape {tuple(out.shape)}, but member 0 outputs "
                    f"{tuple(outputs[0].shape) if outputs else '(B, C)'}; all members must give logits (B, C) "
                    "for the same classes"
                )
            outputs.append(out.to(x.device))
        return torch.stack(outputs)  # (K, B, C)

    def _num_classes_hint(self) -> int:
        config = getattr(self.members[0], "config", {}) or {}
        return int(config.get("num_classes", 0))

    def members_proba(self, x: Tensor) -> Tensor:
        """Softmax probabilities of every member, (K, B, C)."""
        return self.members_logits(x).softmax(dim=2)

    def predict_proba(self, x: Tensor) -> Tensor:
        """The ensemble's probabilities (B, C) under its combination rule."""
        return combine(self.members_logits(x), self.combine, self.weights)

    def forward(self, x: Tensor) -> Tensor:
        return self.predict_proba(x)

    def with_combine(self, combine: str, weights: Tensor | Sequence[float] | None = None) -> "Ensemble":
        """The same members (shared, not copied) under another combination rule."""
        other = Ensemble(list(self.members), combine, weights, batch_size=self.batch_size)
        other.info = dict(self.info)
        return other

    def fit_weights(self, x_val: Tensor, y_val: Tensor) -> Tensor:
        """Fit validation-NLL-optimal weights (`fit_weights`), switch to ``combine='weighted'``; the weights."""
        self.weights = fit_weights(self.members_proba(x_val), y_val.to(x_val.device))
        self.combine = "weighted"
        return self.weights

    def save(self, path: Any, **manifest_extra: Any) -> Any:
        """Write one safetensors file per member and a manifest.json (see `ensemblekit.checkpoint`)."""
        from .checkpoint import save_ensemble

        return save_ensemble(self, path, **manifest_extra)

    @classmethod
    def load(cls, path: Any, *, device: str | torch.device = "cpu") -> "Ensemble":
        """Load a saved ensemble; a clear `CheckpointError` naming the file if anything is wrong."""
        from .checkpoint import load_ensemble

        return load_ensemble(path, device=device)


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


# ----------------------------------------------------------------------------- training K members


def member_seed(seed: int, index: int) -> int:
    """The seed of member ``index`` of an ensemble seeded ``seed``: a function of the pair alone.

    Mixed through NumPy's SeedSequence, so (seed, i) and (seed + 1, i - 1) do not collide the way
    ``seed + i`` would, and member i of a 5-ensemble equals member i of a 10-ensemble.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed={seed}, index={index}: both must be >= 0")
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0] & 0x7FFF_FFFF)


@dataclass
class TrainedEnsemble:
    """What `train_members` returns: the ensemble and how it was made."""

    ensemble: Ensemble
    histories: list[History]
    seeds: list[int]  # member_seed(seed, i) of each member
    vectorized: bool  # trained as one wide network
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)


def train_members(
    config: dict[str, Any],
    batches: Batches,
    recipe: Recipe,
    *,
    members: int = 5,
    seed: int | None = None,
    shared_order: bool = True,
    bootstrap: bool = False,
    vectorize: str = "auto",
    combine: str = "mean_proba",
    validate: Callable[[nn.Module], dict[str, float]] | None = None,
    progress: bool | None = None,
    on_member_end: Callable[[int, nn.Module, History], None] | None = None,
) -> TrainedEnsemble:
    """Train ``members`` models of architecture ``config`` with `train.fit`; an `Ensemble` of them.

    Member i starts from ``build_model(config, seed=member_seed(seed, i))`` (``seed`` defaults to
    ``recipe.seed``), so no two members share initial weights; its dropout masks follow the same
    seed. Data order: with ``shared_order`` (default) every member sees the batches in the order
    seeded by ``seed``; otherwise each member shuffles with its own seed. ``bootstrap=True`` trains each member on its own
    resample with replacement of the training set (bagging, Breiman 1996), which also implies its
    own order. ``validate(model)`` is recorded per epoch for members trained one by one.
    ``on_member_end(i, model, history)`` is called as each member finishes (all at the end when
    vectorised), for progress lines.

    ``vectorize``: "on" trains all members as one wide network (MLPs only; shared order, own
    orders and bootstrap alike, each member seeing exactly its one-by-one batches); "off" trains
    them one by one; "auto" takes "on" where `bench/bench_ensemble.py` measured it to be faster
    (MLPs) and "off" otherwise (CNNs).
    """
    import time

    if not isinstance(members, int) or members < 1:
        raise ValueError(f"members={members!r}: an ensemble needs at least 1 member")
    if vectorize not in VECTORIZE_MODES:
        raise ValueError(f"vectorize={vectorize!r}: choose one of {', '.join(VECTORIZE_MODES)}")
    if combine not in COMBINE_RULES or combine == "weighted":
        raise ValueError(f"combine={combine!r}: train with one of mean_proba, mean_logits, vote; fit weights afterwards")
    seed = recipe.seed if seed is None else seed
    seeds = [member_seed(seed, i) for i in range(members)]
    build_model(config)  # a bad config fails here, before any training
    use_wide = _choose_vectorized(config, vectorize)

    started = time.perf_counter()
    if use_wide:
        from .vectorized import MemberBatches, train_vectorized

        if shared_order and not bootstrap:
            wide_batches = batches  # one order: every member reads the same batch
        else:  # each member's own stream, exactly as it would train alone
            streams = []
            for s in seeds:
                member_batches, order_seed = _member_data(batches, seed, s, shared_order=shared_order, bootstrap=bootstrap)
                streams.append(member_batches.with_options(seed=order_seed))
            wide_batches = MemberBatches(streams)
        models, history = train_vectorized(
            config, wide_batches, recipe.replace(seed=seed), seeds,
            progress=progress,
        )
        histories = [history]
        for i, model in enumerate(models):
            if on_member_end is not None:
                on_member_end(i, model, history)
    else:
        models, histories = [], []
        for i, s in enumerate(seeds):
            model = build_model(config, seed=s)
            member_batches, order_seed = _member_data(batches, seed, s, shared_order=shared_order, bootstrap=bootstrap)
            histories.append(fit(
                model, member_batches, recipe.replace(seed=s, data_seed=order_seed), validate=validate, progress=progress,
                description=f"member {i + 1}/{members}",
            ))
            models.append(model)
            if on_member_end is not None:
                on_member_end(i, model, histories[-1])
    ensemble = Ensemble(models, combine)
    return TrainedEnsemble(ensemble, histories, seeds, use_wide, time.perf_counter() - started, dict(config))


def _choose_vectorized(config: dict[str, Any], vectorize: str) -> bool:
    if vectorize == "off":
        return False
    if config.get("arch") != "mlp":
        if vectorize == "on":
            raise ValueError(
                f"vectorize='on' is not possible with architecture {config.get('arch')!r} "
                "(only MLPs have a wide path); use vectorize='auto' or 'off'"
            )
        return False
    # auto: bench/bench_ensemble.py measured the wide MLP faster on CPU at every size tried,
    # with a shared order and with each member's own order or resample alike
    return True


def _member_data(batches: Batches, seed: int, own_seed: int, *, shared_order: bool, bootstrap: bool) -> tuple[Batches, int]:
    """Member's batches and the seed of their order: the ensemble's (shared) or its own."""
    if bootstrap:
        n = batches.num_samples
        draw = torch.randint(n, (n,), generator=torch.Generator().manual_seed(own_seed))
        pool = torch.arange(n) if batches.indices is None else batches.indices.cpu()
        return batches.with_options(indices=pool[draw]), own_seed
    return batches, seed if shared_order else own_seed


# ----------------------------------------------------------------------------- evaluation


def pairwise_disagreement(members_proba: Tensor) -> float:
    """Mean over member pairs of the fraction of samples on which their argmax differs; 0 for K = 1."""
    predictions = members_proba.argmax(dim=2)  # (K, N)
    k = predictions.shape[0]
    if k < 2:
        return 0.0
    differ = (predictions[:, None, :] != predictions[None, :, :]).double().mean(dim=2)  # (K, K)
    return (differ.sum() / (k * (k - 1))).item()  # the diagonal is 0


def evaluate_members(ensemble: Ensemble, inputs: Tensor, labels: Tensor) -> dict[str, Any]:
    """Ensemble, each member and the mean member (accuracy, NLL, Brier, ECE), diversity, extra performance.

    ``extra_performance`` is ensemble accuracy minus mean member accuracy; ``nll_gain`` is mean
    member NLL minus ensemble NLL (positive: the ensemble is better calibrated on average).
    """
    logits = ensemble.members_logits(inputs)  # (K, N, C)
    labels = labels.to(logits.device)
    members_proba = logits.softmax(dim=2)
    members = [evaluate(p, labels) for p in members_proba]
    mean_member = {m: float(np.mean([r[m] for r in members])) for m in members[0]}
    result = evaluate(combine(logits, ensemble.combine, ensemble.weights), labels)
    return {
        "ensemble": result,
        "members": members,
        "mean_member": mean_member,
        "best_member": max(members, key=lambda r: r["accuracy"]),
        "extra_performance": result["accuracy"] - mean_member["accuracy"],
        "diversity": {
            "disagreement": pairwise_disagreement(members_proba),
            "ensemble_nll": result["nll"],
            "mean_member_nll": mean_member["nll"],
            "nll_gain": mean_member["nll"] - result["nll"],
        },
        "size_curve": size_curve(logits, labels, ensemble.combine if ensemble.combine != "weighted" else "mean_proba"),
    }


def size_curve(logits: Tensor, labels: Tensor, rule: str = "mean_proba") -> list[dict[str, float]]:
    """Metrics of the ensemble of the first k members, k = 1..K, from member logits (K, N, C)."""
    return [{"k": k, **evaluate(combine(logits[:k], rule), labels)} for k in range(1, logits.shape[0] + 1)]


def plot_size_curve(curve: Sequence[dict[str, float]], path: Any, *, title: str = "") -> Any:
    """A PNG of test accuracy and NLL against ensemble size k."""
    from .report import new_figure, save_figure

    fig, (left, right) = new_figure(1, 2, figsize=(9, 3.5))
    ks = [row["k"] for row in curve]
    left.plot(ks, [100 * row["accuracy"] for row in curve], "o-")
    left.set_xlabel("members k")
    left.set_ylabel("accuracy (%)")
    right.plot(ks, [row["nll"] for row in curve], "o-", color="tab:red")
    right.set_xlabel("members k")
    right.set_ylabel("NLL")
    for ax in (left, right):
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
