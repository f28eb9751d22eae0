"""Averaging against references: torch's AveragedModel / update_bn, the arithmetic mean, the formula."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from ensemblekit.averaging import (
    EMA, SWA, RecordAveraged, ema_decay, ema_update_, plot_averaged_history, recompute_batchnorm, swa_update_,
)
from ensemblekit.commands.averaging import check_swa_lr, check_swa_start
from ensemblekit.data import Batches
from ensemblekit.models import MLP, SmallCNN
from ensemblekit.train import Recipe, evaluate_model, fit


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN((1, 8, 8), 3, channels=(4, 8), hidden=8)  # conv+BN: float and integer buffers


def sgd_steps(model: nn.Module, n: int, seed: int = 1):
    """Yield after each of n SGD steps on random data (so BN statistics move too)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for step in range(n):
        x = torch.randn(16, 1, 8, 8, generator=g)
        y = torch.randint(0, 3, (16,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        yield step + 1


def tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_ema_update_is_the_formula():
    g = torch.Generator().manual_seed(0)
    avg = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    cur = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    expected = [0.9 * a + 0.1 * c for a, c in zip(avg, cur)]
    ema_update_(avg, cur, 0.9)
    for a, e in zip(avg, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-6)


@pytest.mark.parametrize("decay", [0.9, 0.99])
def test_ema_equals_averaged_model_with_copied_buffers(decay):
    model = cnn()
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))  # use_buffers=False: copies buffers
    ema = None
    for step in sgd_steps(model, 25):
        reference.update_parameters(model)
        if ema is None:  # AveragedModel's first update is a copy; our construction is that copy
            ema = EMA(model, decay, buffers="copy")
        else:
            ema.update(model)
    assert ema.updates == 24
    mine, theirs = tensors(ema.module), tensors(reference.module)
    assert mine.keys() == theirs.keys()
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=1e-6, msg=key)
    # and the average really differs from the last iterate (the test can fail)
    assert not torch.allclose(ema.module.head[-1].weight, model.head[-1].weight, atol=1e-4)


def test_averaged_buffers_match_averaged_model_and_integer_buffers_are_copied():
    decay = 0.8
    model = cnn()
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema = None
    for step in sgd_steps(model, 10):
        reference.update_parameters(model)
        if ema is None:
            ema = EMA(model, decay, buffers="average")
        else:
            ema.update(model)
    mine, theirs, raw = tensors(ema.module), tensors(reference.module), tensors(model)
    for key in mine:
        if mine[key].is_floating_point():
            torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=1e-6, msg=key)
        else:  # num_batches_tracked: copied from the model, never averaged (AveragedModel averages it)
            assert torch.equal(mine[key], raw[key]), key
            assert mine[key].item() == 10
            assert theirs[key].item() != 10


def test_copy_policy_copies_float_buffers_from_the_model():
    model = cnn()
    ema = EMA(model, 0.9, buffers="copy")
    for _ in sgd_steps(model, 3):
        ema.update(model)
    bn = model.features[1]
    assert torch.equal(ema.module.features[1].running_mean, bn.running_mean)


def test_a_reassigned_weight_is_picked_up_and_a_wrong_one_refused():
    """EMA caches the model's tensor lists between updates; replacing a weight must not be missed."""
    torch.manual_seed(0)
    model = MLP((1, 4, 4), 3, hidden=[5])
    ema = EMA(model, decay=0.5)
    ema.update(model)
    first = next(m for m in model.net if isinstance(m, nn.Linear))
    key = next(name for name, m in model.named_modules() if m is first) + ".weight"
    before = ema.module.state_dict()[key].clone()
    first.weight = nn.Parameter(torch.full_like(first.weight, 10.0))  # a new Parameter object
    ema.update(model)
    after = ema.module.state_dict()[key]
    torch.testing.assert_close(after, 0.5 * before + 0.5 * 10.0)
    first.weight = nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="does not match"):
        ema.update(model)


def test_every_and_warmup():
    model = cnn()
    ema = EMA(model, 0.99, every=3)
    for _ in sgd_steps(model, 7):
        ema.update(model)
    assert (ema.calls, ema.updates) == (7, 2)
    # warm-up: the first update uses decay 0 (a copy), then 1 - (1 + t)^(-2/3), capped at decay
    assert ema_decay(0.99, 0, warmup=True) == 0.0
    assert ema_decay(0.99, 7, warmup=True) == pytest.approx(1 - 8 ** (-2 / 3))
    assert ema_decay(0.99, 10**6, warmup=True) == 0.99
    warm = EMA(model, 0.99, warmup=True)
    next(sgd_steps(model, 1))
    warm.update(model)
    for p_avg, p in zip(warm.module.parameters(), model.parameters()):
        assert torch.equal(p_avg, p)


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, -0.1, float("nan")])
def test_bad_decay(decay):
    with pytest.raises(ValueError, match="decay="):
        EMA(nn.Linear(2, 2), decay)


def test_bad_options():
    with pytest.raises(ValueError, match="buffers="):
        EMA(nn.Linear(2, 2), 0.9, buffers="mean")
    with pytest.raises(ValueError, match="every="):
        EMA(nn.Linear(2, 2), 0.9, every=0)
    ema = EMA(nn.Linear(2, 2), 0.9)
    with pytest.raises(ValueError, match="model it was made from"):
        ema.update(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="does not match"):
        ema.update(nn.Linear(3, 2))


def test_swa_is_the_arithmetic_mean_of_saved_weights():
    model = cnn()
    swa = SWA(model)
    saved = []
    for _ in sgd_steps(model, 6):
        swa.update(model)
        saved.append([p.detach().clone() for p in model.parameters()])
    assert swa.num_averaged == 6
    for i, p_avg in enumerate(swa.module.parameters()):
        mean = torch.stack([s[i] for s in saved]).mean(0)
        torch.testing.assert_close(p_avg, mean, rtol=0, atol=1e-6)


def test_swa_update_functional_matches_averaged_model_default():
    model = cnn()
    reference = AveragedModel(model)  # default average: the running mean
    averaged = [p.detach().clone() for p in model.parameters()]
    for n, _ in enumerate(sgd_steps(model, 5)):
        reference.update_parameters(model)
        swa_update_(averaged, [p.detach() for p in model.parameters()], n)
    for a, r in zip(averaged, reference.module.parameters()):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-6)


def test_recompute_batchnorm_equals_update_bn():
    model = cnn()
    for _ in sgd_steps(model, 3):
        pass
    g = torch.Generator().manual_seed(5)
    loader = [(torch.randn(16, 1, 8, 8, generator=g) * 2 + 1, torch.zeros(16)) for _ in range(4)]
    mine, theirs = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    recompute_batchnorm(mine, loader)
    update_bn(loader, theirs)
    before, after_mine, after_theirs = tensors(model), tensors(mine), tensors(theirs)
    for key in after_mine:
        torch.testing.assert_close(after_mine[key], after_theirs[key], rtol=0, atol=1e-6, msg=key)
    assert not torch.allclose(after_mine["features.1.running_mean"], before["features.1.running_mean"])
    assert not mine.training  # mode restored
    assert mine.features[1].momentum == 0.1


def test_recompute_batchnorm_max_batches_and_no_bn():
    model = cnn()
    loader = [torch.randn(8, 1, 8, 8) for _ in range(5)]
    recompute_batchnorm(model, loader, max_batches=2)
    assert model.features[1].num_batches_tracked.item() == 2
    mlp = MLP((1, 8, 8), 3)
    assert recompute_batchnorm(mlp, loader) is mlp


def toy_batches(n: int = 96, seed: int = 0) -> Batches:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = (images.float().mean((1, 2, 3)) > 127).long()
    return Batches(images, labels, batch_size=16, mean=torch.tensor([127.5]), std=torch.tensor([74.0]))


def test_ema_and_swa_as_fit_hooks_record_each_epoch():
    batches = toy_batches()
    model = MLP((1, 8, 8), 2, hidden=(16,))
    ema = EMA(model, 0.9)
    swa = SWA(model, start_epoch=2)
    inputs = batches.images.float().sub(127.5).div(74.0)
    validate = lambda m: evaluate_model(m, inputs, batches.labels)
    weights_at_epoch_end = []

    class Capture:
        def on_epoch_end(self, state):
            weights_at_epoch_end.append([p.detach().clone() for p in state.model.parameters()])

    hooks = [ema, swa, RecordAveraged("ema", ema, validate), RecordAveraged("swa", swa, validate), Capture()]
    history = fit(model, batches, Recipe(epochs=4, lr=0.1, device="cpu"), validate=validate, hooks=hooks, progress=False)
    assert ema.updates == 4 * len(batches)
    assert all("ema_val_accuracy" in e and "val_accuracy" in e for e in history.epochs)
    assert ["swa_val_nll" in e for e in history.epochs] == [False, False, True, True]
    assert swa.num_averaged == 2
    for i, p_avg in enumerate(swa.module.parameters()):  # mean of the weights after epochs 3 and 4
        torch.testing.assert_close(p_avg, (weights_at_epoch_end[2][i] + weights_at_epoch_end[3][i]) / 2, rtol=0, atol=1e-6)


def test_plot_averaged_history(tmp_path):
    epochs = [{"epoch": e, "val_accuracy": 0.5 + e / 20, "ema_val_accuracy": 0.55 + e / 20} for e in range(1, 5)]
    path = plot_averaged_history(epochs, str(tmp_path / "h.png"))
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert path.endswith("h.png")


def test_swa_bad_start_and_lr():
    with pytest.raises(ValueError, match=r"swa_start=10 is beyond the last epoch.*0\.\.9"):
        check_swa_start(10, 10)
    check_swa_start(9, 10)
    with pytest.raises(ValueError, match="swa_lr=0.5"):
        check_swa_lr(0.5, 0.1)
    with pytest.raises(ValueError, match="start_epoch="):
        SWA(nn.Linear(2, 2), start_epoch=-1)
