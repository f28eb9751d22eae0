"""The wide-network path agrees with K separate MLPs: forward, loss, and 20 training steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ensemblekit import Recipe, build_model, load
from ensemblekit.ensemble import member_seed, train_members
from ensemblekit.vectorized import WideMLP, wide_loss

CONFIG = {"arch": "mlp", "in_shape": [1, 8, 8], "num_classes": 10, "hidden": [48, 24]}


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def members(k=3, config=CONFIG):
    return [build_model(config, seed=s) for s in range(k)]


def test_forward_equals_each_member():
    ms = members()
    x = torch.randn(17, 1, 8, 8)
    wide = WideMLP(ms).eval()
    with torch.no_grad():
        expected = torch.stack([m(x) for m in ms])
        got = wide(x)
    assert got.shape == (3, 17, 10)
    assert torch.allclose(got, expected, atol=1e-5)


def test_forward_without_hidden_layers():
    ms = members(2, {**CONFIG, "hidden": []})
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(WideMLP(ms)(x), torch.stack([m(x) for m in ms]), atol=1e-5)


def test_to_members_round_trip():
    ms = members()
    back = WideMLP(ms).to_members()
    for a, b in zip(ms, back):
        assert b.config == a.config
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_wide_loss_is_the_sum_of_member_losses():
    logits, targets = torch.randn(4, 9, 10), torch.randint(0, 10, (9,))
    expected = sum(F.cross_entropy(logits[k], targets, label_smoothing=0.1) for k in range(4))
    assert wide_loss(0.1)(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(
    "optimizer, lr, data",
    [("sgd", 0.05, "shared"), ("adamw", 3e-3, "shared"), ("sgd", 0.05, "own order"), ("sgd", 0.05, "bootstrap")],
)
def test_vectorised_training_matches_one_by_one_after_20_steps(digits, optimizer, lr, data):
    # 20 steps: 640 samples at batch 32, one epoch; weight decay on, to check it is per element too
    batches = digits.batches("train", batch_size=32, indices=torch.arange(640))
    recipe = Recipe(epochs=1, batch_size=32, optimizer=optimizer, lr=lr, weight_decay=0.05,
                    label_smoothing=0.05, device="cpu", seed=4)
    options = dict(shared_order=data == "shared", bootstrap=data == "bootstrap")
    wide = train_members(CONFIG, batches, recipe, members=3, vectorize="on", progress=False, **options)
    alone = train_members(CONFIG, batches, recipe, members=3, vectorize="off", progress=False, **options)
    assert wide.vectorized and not alone.vectorized
    assert len(alone.histories[0].lr) == 20
    for a, b, s in zip(wide.ensemble.members, alone.ensemble.members, wide.seeds):
        start = build_model(CONFIG, seed=s)
        moved = max((p - q).abs().max().item() for p, q in zip(b.parameters(), start.parameters()))
        assert moved > 1e-3  # training did something
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.allclose(p, q, atol=1e-4, rtol=0)


def test_own_orders_really_differ_and_the_loss_counts_each_member(digits):
    """With shared_order=False the members' first batches differ, and the recorded train loss is
    the mean over members of each member's loss on its own batch (checked by a plain loop)."""
    from ensemblekit.ensemble import _member_data
    from ensemblekit.vectorized import MemberBatches

    batches = digits.batches("train", batch_size=32, indices=torch.arange(64))
    seeds = [member_seed(4, i) for i in range(3)]
    streams = [_member_data(batches, 4, s, shared_order=False, bootstrap=False)[0].with_options(seed=s) for s in seeds]
    x, y = next(MemberBatches(streams).epoch(0))
    assert x.shape == (3, 32, 1, 8, 8) and y.shape == (3, 32)
    assert not torch.equal(y[0], y[1])
    ms = [build_model(CONFIG, seed=s) for s in seeds]
    wide = WideMLP(ms)
    expected = sum(F.cross_entropy(m(x[k]), y[k]) for k, m in enumerate(ms))
    assert torch.allclose(wide_loss()(wide(x), y), expected, atol=1e-6)
    with pytest.raises(ValueError, match="stream 1"):
        MemberBatches([batches, batches.with_options(indices=torch.arange(32))])
    # moving the streams (fit does, to the model's device) keeps one shared copy of the images
    moved = MemberBatches(streams).with_options(batch_size=16)
    assert all(s.images is moved.streams[0].images for s in moved.streams)
    assert [s.seed for s in moved.streams] == seeds and moved.batch_size == 16


def test_dropout_masks_are_independent_per_member():
    config = {**CONFIG, "dropout": 0.5}
    same = [build_model(config, seed=0) for _ in range(2)]  # identical weights on purpose
    wide = WideMLP(same).train()
    out = wide(torch.randn(8, 1, 8, 8))
    assert not torch.allclose(out[0], out[1])  # only the masks differ
    wide.eval()
    out = wide(torch.randn(8, 1, 8, 8))
    assert torch.allclose(out[0], out[1])


def test_wide_path_rejects_what_it_cannot_do(digits):
    cnn = {"arch": "cnn", "in_shape": [1, 8, 8], "num_classes": 10, "channels": [4]}
    with pytest.raises(ValueError, match="vectorize='on'"):
        train_members(cnn, digits.batches("train"), Recipe(epochs=1), members=2, vectorize="on")
    with pytest.raises(ValueError, match="config"):
        WideMLP([build_model(CONFIG), build_model({**CONFIG, "hidden": [8]})])
    assert member_seed(0, 0) != member_seed(0, 1)
