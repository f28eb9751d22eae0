"""ensemblekit.train: Recipe validation, bit-for-bit determinism, divergence errors, hooks, the lr
history, and the accuracy the demo recipe reaches on digits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ensemblekit import data
from ensemblekit.commands.demo import DEMO_RECIPE, mlp_config
from ensemblekit.models import build_model
from ensemblekit.train import Recipe, TrainingError, evaluate_model, fit, make_optimizer, predict_proba


@pytest.fixture(scope="module")
def digits() -> data.Splits:
    return data.load("digits")


def _small_batches(splits: data.Splits, n: int = 256, batch_size: int = 32) -> data.Batches:
    """The first ``n`` training digits: enough to train on, cheap enough to do it several times."""
    part = splits.train
    return data.Batches(part.images[:n], part.labels[:n], batch_size=batch_size, mean=splits.mean, std=splits.std)


CPU = Recipe(epochs=2, batch_size=32, lr=0.05, device="cpu")


# ----------------------------------------------------------------------------- Recipe


@pytest.mark.parametrize(
    "changes, argument",
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"optimizer": "adam"}, "optimizer='adam'.*sgd, adamw"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -0.1}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"schedule": "linear"}, "schedule='linear'"),
        ({"warmup_epochs": 11}, "warmup_epochs"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"min_lr": 1.0}, "min_lr"),
        ({"precision": "fp16"}, "precision='fp16'.*fp32, bf16"),
    ],
)
def test_recipe_validation_names_the_argument(changes, argument):
    with pytest.raises(ValueError, match=argument):
        Recipe(**changes)
    with pytest.raises(ValueError, match=argument):
        Recipe().replace(**changes)


def test_recipe_round_trips_through_a_dict():
    recipe = Recipe(epochs=3, optimizer="adamw", lr=1e-3, label_smoothing=0.1)
    assert Recipe(**recipe.to_dict()) == recipe
    assert recipe.replace(seed=4).seed == 4 and recipe.seed == 0


# ----------------------------------------------------------------------------- determinism


def _train(splits: data.Splits, config: dict, seed: int) -> dict[str, torch.Tensor]:
    model = build_model(config, seed=seed)
    fit(model, _small_batches(splits), CPU.replace(seed=seed), progress=False)
    return model.state_dict()


@pytest.mark.parametrize(
    "config",
    [
        {"arch": "mlp", "in_shape": [1, 8, 8], "num_classes": 10, "hidden": [64, 64], "dropout": 0.2},
        {"arch": "cnn", "in_shape": [1, 8, 8], "num_classes": 10, "channels": [8, 16], "hidden": 32, "dropout": 0.2},
    ],
    ids=["mlp", "cnn"],
)
def test_same_seed_same_weights_bit_for_bit(digits, config):
    first = _train(digits, config, seed=3)
    torch.manual_seed(999)  # the global RNG state before fit must not matter
    torch.rand(100)
    second = _train(digits, config, seed=3)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    other = _train(digits, config, seed=4)
    assert not all(torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


# ----------------------------------------------------------------------------- divergence


def test_nan_loss_names_epoch_and_step(digits):
    batches = _small_batches(digits, n=64, batch_size=16)  # 4 steps per epoch
    calls = {"n": 0}

    def loss_fn(outputs, targets):
        calls["n"] += 1
        loss = F.cross_entropy(outputs, targets)
        return loss * float("nan") if calls["n"] == 6 else loss

    model = build_model(mlp_config(digits), seed=0)
    with pytest.raises(TrainingError, match=r"nan at epoch 2, step 6"):
        fit(model, batches, CPU.replace(epochs=3), loss_fn=loss_fn, progress=False)


def test_inf_loss_is_caught_too(digits):
    model = build_model(mlp_config(digits), seed=0)
    with pytest.raises(TrainingError, match=r"inf at epoch 1, step 1"):
        fit(model, _small_batches(digits), CPU, loss_fn=lambda out, y: out.sum() * float("inf"), progress=False)


def test_huge_learning_rate_diverges_with_an_error(digits):
    model = build_model(mlp_config(digits), seed=0)
    with pytest.raises(TrainingError, match=r"epoch \d+, step \d+") as excinfo:
        fit(model, _small_batches(digits), CPU.replace(lr=1e30, epochs=5), progress=False)
    assert "lower the learning rate" in str(excinfo.value)


# ----------------------------------------------------------------------------- hooks and history


class Recorder:
    def __init__(self, log: list, tag: str) -> None:
        self.log, self.tag = log, tag

    def on_step_end(self, state) -> None:
        current = state.optimizer.param_groups[0]["lr"]
        self.log.append((self.tag, "step", state.epoch, state.step, state.lr, current))

    def on_epoch_end(self, state) -> None:
        self.log.append((self.tag, "epoch", state.epoch, state.step, len(state.history.epochs), None))


class EpochOnly:
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_epoch_end(self, state) -> None:
        self.epochs.append(state.epoch)


def test_hooks_are_called_at_every_step_and_epoch_end_in_order(digits):
    batches = _small_batches(digits, n=100, batch_size=32)  # 4 steps per epoch, the last one short
    log: list = []
    epoch_only = EpochOnly()
    recipe = CPU.replace(epochs=3, warmup_epochs=1)
    fit(build_model(mlp_config(digits), seed=0), batches, recipe,
        hooks=[Recorder(log, "a"), epoch_only, Recorder(log, "b")], progress=False)
    steps = [e for e in log if e[1] == "step"]
    epochs = [e for e in log if e[1] == "epoch"]
    assert len(steps) == 2 * 12 and len(epochs) == 2 * 3
    assert [e[0] for e in steps[:4]] == ["a", "b", "a", "b"]  # in the order given
    assert [e[3] for e in steps if e[0] == "a"] == list(range(1, 13))  # steps taken so far
    assert [e[2] for e in steps if e[0] == "a"] == [0] * 4 + [1] * 4 + [2] * 4
    assert all(lr == current for *_, lr, current in steps)  # state.lr is what the optimiser used
    assert [(e[2], e[3], e[4]) for e in epochs if e[0] == "a"] == [(0, 4, 1), (1, 8, 2), (2, 12, 3)]
    assert epoch_only.epochs == [0, 1, 2]


@pytest.mark.parametrize("schedule, warmup", [("cosine", 0.0), ("cosine", 1.0), ("step", 0.5), ("constant", 0.0)])
def test_history_lr_equals_the_schedule(digits, schedule, warmup):
    batches = _small_batches(digits, n=96, batch_size=32)
    recipe = CPU.replace(epochs=4, schedule=schedule, warmup_epochs=warmup, min_lr=0.001)
    history = fit(build_model(mlp_config(digits), seed=0), batches, recipe, progress=False)
    expected = recipe.make_schedule(3)
    assert history.lr == [expected(s) for s in range(12)]
    assert len(set(history.lr)) > 1 or schedule == "constant"


def test_custom_schedule_overrides_the_recipe(digits):
    history = fit(build_model(mlp_config(digits), seed=0), _small_batches(digits, n=64), CPU,
                  schedule=lambda step: 0.01 * (step + 1), progress=False)
    assert history.lr == pytest.approx([0.01 * (s + 1) for s in range(4)])


def test_history_records_each_epoch(digits):
    val_inputs = digits.inputs("val")
    validate = lambda m: evaluate_model(m, val_inputs, digits.val.labels)
    model = build_model(mlp_config(digits), seed=0)
    history = fit(model, _small_batches(digits), CPU.replace(epochs=3), validate=validate, progress=False)
    assert [r["epoch"] for r in history.epochs] == [1, 2, 3]
    for record in history.epochs:
        assert {"train_loss", "train_accuracy", "val_accuracy", "val_nll", "seconds"} <= set(record)
        assert 0.0 <= record["train_accuracy"] <= 1.0 and math.isfinite(record["train_loss"])
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    assert history.seconds >= history.epochs[-1]["seconds"] > 0
    assert not model.training  # handed back in eval mode
    assert set(history.to_dict()) == {"epochs", "lr", "seconds"}


def test_label_smoothing_reaches_the_loss(digits):
    batches = _small_batches(digits, n=32, batch_size=32)  # one batch: the first loss is on it
    recipe = CPU.replace(epochs=1, label_smoothing=0.3)
    model = build_model(mlp_config(digits), seed=0)
    x, y = next(iter(batches.with_options(seed=recipe.seed).epoch(0)))
    with torch.no_grad():
        model.train()
        expected = F.cross_entropy(model(x), y, label_smoothing=0.3).item()
        plain = F.cross_entropy(model(x), y).item()

    class FirstLoss:
        def on_step_end(self, state) -> None:
            self.loss = state.loss

    first = FirstLoss()
    fit(model, batches, recipe, hooks=[first], progress=False)
    assert first.loss == pytest.approx(expected, rel=1e-6) and first.loss != pytest.approx(plain, rel=1e-3)


def test_adamw_trains(digits):
    model = build_model(mlp_config(digits), seed=0)
    history = fit(model, _small_batches(digits), CPU.replace(optimizer="adamw", lr=1e-3, epochs=3), progress=False)
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]


@pytest.mark.parametrize("recipe", [CPU, CPU.replace(nesterov=False), CPU.replace(optimizer="adamw", lr=1e-3)],
                         ids=["sgd-nesterov", "sgd", "adamw"])
def test_fused_optimizer_takes_the_same_steps_as_torchs_default(recipe):
    """make_optimizer picks torch's fused kernel on CPU; it must step like the plain for-loop one."""
    torch.manual_seed(0)
    params = [torch.randn(64, 32, requires_grad=True), torch.randn(32, requires_grad=True)]
    reference = [p.detach().clone().requires_grad_() for p in params]
    ours = make_optimizer(params, recipe)
    assert ours.defaults["fused"] is True
    if recipe.optimizer == "sgd":  # torch's default on CPU: the for-loop implementation
        theirs = torch.optim.SGD(reference, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                                 weight_decay=recipe.weight_decay, foreach=False)
    else:
        theirs = torch.optim.AdamW(reference, lr=recipe.lr, betas=(recipe.momentum, 0.999),
                                   weight_decay=recipe.weight_decay, foreach=False)
    for _ in range(20):
        grads = [torch.randn_like(p) for p in params]
        for p, q, g in zip(params, reference, grads):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    for p, q in zip(params, reference):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_bf16_precision_runs_matmuls_in_bfloat16_and_still_learns(digits):
    seen: list[torch.dtype] = []
    model = build_model(mlp_config(digits), seed=0)
    first_linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    handle = first_linear.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    fit(model, digits.batches("train", batch_size=64), CPU.replace(epochs=10, precision="bf16"), progress=False)
    handle.remove()
    assert set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert evaluate_model(model, digits.inputs("test"), digits.test.labels)["accuracy"] >= 0.93


def test_empty_epoch_is_a_value_error(digits):
    batches = _small_batches(digits, n=10, batch_size=32).with_options(drop_last=True)
    with pytest.raises(ValueError, match="no batches"):
        fit(build_model(mlp_config(digits), seed=0), batches, CPU, progress=False)


def test_predict_proba_is_a_distribution_and_restores_the_mode(digits):
    model = build_model({**mlp_config(digits), "dropout": 0.5}, seed=0)
    model.train()
    proba = predict_proba(model, digits.inputs("test"), batch_size=100)
    assert proba.shape == (len(digits.test), 10)
    assert torch.allclose(proba.sum(1), torch.ones(len(digits.test)))
    assert torch.equal(proba, predict_proba(model, digits.inputs("test")))  # eval mode: no dropout noise
    assert model.training


# ----------------------------------------------------------------------------- accuracy


def test_digits_reaches_95_percent_with_the_demo_recipe(digits):
    model = build_model(mlp_config(digits), seed=DEMO_RECIPE.seed)
    fit(model, digits.batches("train", batch_size=DEMO_RECIPE.batch_size), DEMO_RECIPE, progress=False)
    result = evaluate_model(model, digits.inputs("test"), digits.test.labels)
    assert result["accuracy"] >= 0.95, result
