"""MC dropout: the batched (T*B) forward against a plain loop of T passes with the same masks,
the uncertainty summaries against their formulas, and which modules get switched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ensemblekit.dropout import Dropout, InvertedDropout
from ensemblekit.mc_dropout import (
    MCDropout, dropout_modules, dropout_train_mode, iter_mc_samples, mc_samples, summarize,
)
from ensemblekit.models import MLP, SmallCNN


class Recorder:
    """A mask sampler that draws Bernoulli masks and keeps each one."""

    def __init__(self, keep: float) -> None:
        self.keep, self.masks = keep, []

    def __call__(self, shape, like):
        mask = torch.empty(shape, dtype=like.dtype).bernoulli_(self.keep)
        self.masks.append(mask)
        return mask


def loop_of_passes(model, x, masks_per_layer, t):
    """The reference: T ordinary passes over x (B rows), pass k replaying rows k*B..(k+1)*B-1 of
    the recorded (T*B, ...) masks of each layer."""
    layers = [m for m in model.modules() if isinstance(m, Dropout)]
    b = x.shape[0]
    out = []
    with dropout_train_mode(model), torch.no_grad():
        for k in range(t):
            for layer, masks in zip(layers, masks_per_layer):
                layer.mask_sampler = lambda shape, like, m=masks[k * b : (k + 1) * b]: m
            out.append(model(x).softmax(dim=1))
    return torch.stack(out)  # (T, B, C)


@pytest.mark.parametrize("max_batch", [10_000, 12, 5])  # one forward; t copies per forward; input chunks
def test_batched_mc_equals_loop_of_passes_with_same_masks(max_batch):
    torch.manual_seed(0)
    model = MLP((1, 5, 5), 4, hidden=(16, 12), dropout=0.4)
    layers = [m for m in model.modules() if isinstance(m, Dropout)]
    for layer in layers:
        layer.mask_sampler = Recorder(layer.keep)
    x = torch.randn(6, 1, 5, 5)
    t = 7
    recorders = [layer.mask_sampler for layer in layers]
    covered = torch.zeros(6, dtype=torch.long)
    with dropout_train_mode(model):
        for where, proba in iter_mc_samples(model, x, t, max_batch=max_batch):
            masks = [rec.masks[-1] for rec in recorders]  # this forward's masks, each (t*b, units)
            reference = loop_of_passes(model, x[where], masks, proba.shape[0])
            assert proba.shape == reference.shape  # (t, b, C)
            assert torch.allclose(proba, reference, atol=1e-6)
            covered[where] += proba.shape[0]
            for layer, rec in zip(layers, recorders):
                layer.mask_sampler = rec  # loop_of_passes replaced it
            if max_batch == 10_000:
                assert proba.shape[:2] == (t, 6)  # all T copies in one forward
        assert (covered == t).all()  # every input got exactly T passes


def test_mc_samples_layout_is_T_by_N_and_copies_are_independent():
    torch.manual_seed(0)
    model = MLP((1, 5, 5), 4, hidden=(32,), dropout=0.5)
    layer = next(m for m in model.modules() if isinstance(m, Dropout))
    rec = Recorder(layer.keep)
    layer.mask_sampler = rec
    x = torch.randn(3, 1, 5, 5)
    samples = mc_samples(model, x, 4)  # one forward of 12 rows
    assert samples.shape == (4, 3, 4)
    masks = rec.masks[0].view(4, 3, 32)  # (T, B, units): copy-major, as the shape comment says
    assert not torch.equal(masks[0], masks[1])  # each copy its own mask
    layer.mask_sampler = None
    with torch.no_grad():
        w, b = model.net[-1].weight, model.net[-1].bias
        h = model.net[:-1].eval()(x)  # dropout in eval is the identity (inverted)
        for k in range(4):
            expected = (h * masks[k] / layer.keep) @ w.T + b
            assert torch.allclose(samples[k], expected.softmax(1), atol=1e-6)


def test_summaries_match_their_formulas():
    torch.manual_seed(0)
    samples = torch.rand(9, 5, 3).softmax(dim=-1)  # (T, N, C)
    s = summarize(samples)
    for n in range(5):
        p = [samples[t, n].double() for t in range(9)]
        mean = sum(p) / 9
        h = lambda q: -sum(float(v) * torch.log(v).item() for v in q)
        assert torch.allclose(s.proba[n], mean)
        assert s.entropy[n].item() == pytest.approx(h(mean))
        assert s.expected_entropy[n].item() == pytest.approx(sum(h(q) for q in p) / 9)
        assert s.mutual_information[n].item() == pytest.approx(h(mean) - sum(h(q) for q in p) / 9)
        var = sum((q - mean) ** 2 for q in p) / 9
        assert torch.allclose(s.variance[n], var)
    same = summarize(samples[:1].expand(6, 5, 3))
    assert torch.allclose(same.mutual_information, torch.zeros(5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(same.variance, torch.zeros(5, 3, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("max_batch", [4096, 7])
def test_streaming_predict_equals_summary_of_all_samples(max_batch):
    model = MLP((1, 5, 5), 4, hidden=(16,), dropout=0.5)
    x = torch.randn(10, 1, 5, 5)
    full = summarize(MCDropout(model, 13, max_batch=max_batch, seed=3).members_proba(x))
    streamed = MCDropout(model, 13, max_batch=max_batch, seed=3).predict(x)
    for field in ("proba", "entropy", "expected_entropy", "mutual_information", "variance"):
        assert torch.allclose(getattr(full, field), getattr(streamed, field), atol=1e-9), field
    assert streamed.samples == 13
    # seeded: reproducible, and different seeds give different masks
    again = MCDropout(model, 13, max_batch=max_batch, seed=3).predict_proba(x)
    assert torch.equal(again, streamed.proba.float())
    assert not torch.allclose(MCDropout(model, 13, seed=4).predict_proba(x), again)


def test_only_dropout_modules_switch_batchnorm_stays_in_eval():
    torch.manual_seed(0)
    model = SmallCNN((1, 8, 8), 3, channels=(4,), hidden=8, batchnorm=True, dropout=0.5)
    model.train()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    stats = bn.running_mean.clone(), bn.running_var.clone()
    seen = []
    bn.register_forward_hook(lambda m, i, o: seen.append(m.training))
    MCDropout(model, 5).predict(torch.randn(4, 1, 8, 8))
    assert seen and not any(seen)  # BatchNorm ran in eval mode
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert all(m.training for m in model.modules())  # modes restored afterwards


def test_torch_dropout_modules_are_switched_too():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(25, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3)).eval()
    samples = mc_samples(model, torch.randn(4, 1, 5, 5), 6)
    assert samples.shape == (6, 4, 3)
    assert not torch.allclose(samples[0], samples[1])
    assert not model.training and not model[3].training  # restored
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Dropout2d(0.5), InvertedDropout(drop=0.2, channelwise=True),
                         nn.Flatten(), nn.Linear(4 * 9, 2))
    assert len(dropout_modules(conv)) == 2
    assert mc_samples(conv, torch.randn(3, 1, 5, 5), 4).shape == (4, 3, 2)


class FunctionalDropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.dropout(x, 0.5, training=self.training))


def test_no_dropout_module_is_an_error():
    for model in (FunctionalDropoutNet(), MLP((1, 2, 2), 2, hidden=(4,), dropout=0.0)):
        with pytest.raises(ValueError, match="F.dropout"):
            MCDropout(model, 10)


@pytest.mark.parametrize("samples", [0, -3, 2.5])
def test_bad_sample_counts_name_the_value(samples):
    model = MLP((1, 2, 2), 2, hidden=(4,), dropout=0.5)
    with pytest.raises(ValueError, match=f"samples={samples}"):
        MCDropout(model, samples)
    with pytest.raises(ValueError, match=f"samples={samples}"):
        mc_samples(model, torch.randn(2, 1, 2, 2), samples)
    with pytest.raises(ValueError, match="max_batch=0"):
        MCDropout(model, 5, max_batch=0)
