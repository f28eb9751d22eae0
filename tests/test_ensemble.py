"""Ensemble predictor, combination rules, weight fitting, member training and evaluation."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ensemblekit import Recipe, build_model, load
from ensemblekit.cli import main
from ensemblekit.ensemble import (
    Ensemble, combine, evaluate_members, fit_weights, member_seed,
    pairwise_disagreement, size_curve, train_members,
)
from ensemblekit.metrics import evaluate, nll
from ensemblekit.train import fit

# three members, two samples, three classes
LOGITS = torch.tensor([
    [[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]],
    [[0.0, 2.0, 1.0], [1.0, 0.0, 0.0]],
    [[0.5, 1.5, 0.0], [0.0, 2.0, 0.0]],
])


def _softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def _hand_proba(k, b):
    return _softmax(LOGITS[k, b].tolist())


class Constant(nn.Module):
    """A 'model' that returns fixed logits for each input row (inputs are indices)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x):
        return self.logits[x.long().view(-1)]


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def mlp_config(splits, hidden=(32,)):
    return {"arch": "mlp", "in_shape": list(splits.image_shape), "num_classes": splits.num_classes, "hidden": list(hidden)}


# ----------------------------------------------------------------------------- combination rules


def test_mean_proba_matches_hand_computation():
    got = combine(LOGITS, "mean_proba")
    for b in range(2):
        expected = [sum(_hand_proba(k, b)[c] for k in range(3)) / 3 for c in range(3)]
        assert got[b].tolist() == pytest.approx(expected, abs=1e-6)


def test_mean_logits_matches_hand_computation():
    got = combine(LOGITS, "mean_logits")
    for b in range(2):
        mean_logits = [sum(LOGITS[k, b, c].item() for k in range(3)) / 3 for c in range(3)]
        assert got[b].tolist() == pytest.approx(_softmax(mean_logits), abs=1e-6)


def test_vote_majority_and_smoothing_formula():
    # sample 0: argmaxes 0, 1, 1 -> class 1 has 2 of 3 votes
    got = combine(LOGITS, "vote")
    assert got.argmax(1)[0].item() == 1
    mean = [sum(_hand_proba(k, 0)[c] for k in range(3)) / 3 for c in range(3)]
    votes = [1, 2, 0]
    assert got[0].tolist() == pytest.approx([(v + 0.5 * m) / 3.5 for v, m in zip(votes, mean)], abs=1e-6)
    assert got.sum(1).tolist() == pytest.approx([1.0, 1.0])


def test_vote_tie_is_broken_by_mean_probability():
    # two members disagree (class 0 vs class 1); member 1 is far more confident, so class 1 wins
    logits = torch.tensor([[[1.0, 0.9, 0.0]], [[0.0, 5.0, 0.0]]])
    assert combine(logits, "vote").argmax(1).item() == 1
    logits = torch.tensor([[[5.0, 0.0, 0.0]], [[0.0, 0.1, 0.0]]])
    assert combine(logits, "vote").argmax(1).item() == 0


def test_vote_never_overturns_a_majority():
    # two weakly confident votes for class 0 beat one certain vote for class 2
    logits = torch.tensor([[[0.1, 0.0, 0.0]], [[0.1, 0.0, 0.0]], [[-9.0, -9.0, 30.0]]])
    assert combine(logits, "vote").argmax(1).item() == 0


def test_weighted_matches_hand_computation_and_checks_weights():
    w = [0.5, 0.25, 0.25]
    got = combine(LOGITS, "weighted", torch.tensor(w))
    for b in range(2):
        expected = [sum(w[k] * _hand_proba(k, b)[c] for k in range(3)) for c in range(3)]
        assert got[b].tolist() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="sum to"):
        combine(LOGITS, "weighted", torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="non-negative"):
        combine(LOGITS, "weighted", torch.tensor([1.5, -0.25, -0.25]))
    with pytest.raises(ValueError, match="one weight per member"):
        combine(LOGITS, "weighted", torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="needs weights"):
        combine(LOGITS, "weighted")
    with pytest.raises(ValueError, match="choose one of"):
        combine(LOGITS, "median")


def test_fit_weights_beats_uniform_and_matches_a_grid_search():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (400,), generator=gen)
    good = torch.full((400, 3), 0.1).scatter_(1, labels.view(-1, 1), 0.8)  # right 80% of the mass
    noisy = torch.softmax(torch.randn(400, 3, generator=gen) * 2, dim=1)  # unrelated to the labels
    proba = torch.stack([good, noisy])  # (K=2, N, C)
    w = fit_weights(proba, labels)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-5) and (w >= 0).all()
    uniform_nll = nll(proba.mean(0), labels)
    fitted_nll = nll(torch.einsum("k,knc->nc", w, proba), labels)
    assert fitted_nll < uniform_nll - 0.05
    # reference: brute-force search over w0 in [0, 1]
    grid = [i / 1000 for i in range(1001)]
    best = min(grid, key=lambda a: nll(a * good + (1 - a) * noisy, labels))
    assert w[0].item() == pytest.approx(best, abs=2e-3)
    assert fitted_nll <= nll(best * good + (1 - best) * noisy, labels) + 1e-6


def test_ensemble_fit_weights_improves_validation_nll():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    good = torch.eye(3)[labels] * 4.0
    bad = torch.roll(good, 1, dims=1)
    ensemble = Ensemble([Constant(good), Constant(bad)])
    x = torch.arange(6).float()
    before = nll(ensemble.predict_proba(x), labels)
    w = ensemble.fit_weights(x, labels)
    assert ensemble.combine == "weighted" and w[0] > 0.95
    assert nll(ensemble.predict_proba(x), labels) < before


# ----------------------------------------------------------------------------- the predictor


def test_members_proba_shapes_chunking_and_eval_mode(digits):
    config = {**mlp_config(digits), "dropout": 0.5}
    members = [build_model(config, seed=s) for s in range(3)]
    for m in members:
        m.train()
    x = digits.inputs("test")[:50]
    ensemble = Ensemble(members, batch_size=7)
    proba = ensemble.members_proba(x)
    assert proba.shape == (3, 50, 10)
    assert torch.allclose(proba, Ensemble(members, batch_size=1000).members_proba(x), atol=1e-6)
    assert torch.equal(ensemble.predict_proba(x), ensemble.predict_proba(x))  # eval mode: no dropout noise
    assert all(m.training for m in members)  # the caller's mode is restored
    with torch.no_grad():
        reference = torch.stack([m.eval()(x).softmax(1) for m in members])
    assert torch.allclose(proba, reference, atol=1e-6)
    assert torch.allclose(ensemble.predict_proba(x), reference.mean(0), atol=1e-6)


def test_bad_members_are_rejected(digits):
    with pytest.raises(ValueError, match="at least 1 member"):
        Ensemble([])
    with pytest.raises(ValueError, match="not a torch.nn.Module"):
        Ensemble([lambda x: x])
    ten = build_model(mlp_config(digits))
    five = build_model({**mlp_config(digits), "num_classes": 5})
    with pytest.raises(ValueError, match="member 1 outputs 5 classes, member 0 outputs 10"):
        Ensemble([ten, five])
    five.config = None  # a module that does not declare its outputs is caught at the first prediction
    with pytest.raises(ValueError, match=r"member 1 outputs shape \(4, 5\)"):
        Ensemble([ten, five]).predict_proba(digits.inputs("test")[:4])
    with pytest.raises(ValueError, match="combine="):
        Ensemble([ten], combine="max")
    with pytest.raises(ValueError, match="at least 1 member"):
        train_members(mlp_config(digits), digits.batches("train"), Recipe(epochs=1), members=0)


# ----------------------------------------------------------------------------- training members


def test_member_seed_depends_on_both_and_is_stable():
    seeds = {member_seed(s, i) for s, i in itertools.product(range(20), range(20))}
    assert len(seeds) == 400
    assert member_seed(3, 2) == member_seed(3, 2)


def test_members_differ_and_member_i_is_reproducible_alone(digits):
    config = mlp_config(digits)
    recipe = Recipe(epochs=1, batch_size=64, device="cpu")
    batches = digits.batches("train", batch_size=64)
    three = train_members(config, batches, recipe, members=3, seed=7, vectorize="off", progress=False)
    two = train_members(config, batches, recipe, members=2, seed=7, vectorize="off", progress=False)
    first = [build_model(config, seed=s) for s in three.seeds]
    assert not torch.equal(first[0].net[1].weight, first[1].net[1].weight)  # never shared initial weights
    for a, b in zip(three.ensemble.members[:2], two.ensemble.members):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    # member 1 alone: its own initial weights and dropout seed, the ensemble's shared batch order
    alone = build_model(config, seed=member_seed(7, 1))
    fit(alone, batches, recipe.replace(seed=member_seed(7, 1), data_seed=7), progress=False)
    assert all(torch.equal(p, q) for p, q in zip(alone.parameters(), three.ensemble.members[1].parameters()))


def test_data_seed_sets_the_batch_order_apart_from_the_seed(digits):
    batches = digits.batches("train", batch_size=32)
    orders = []
    for seed in (1, 2):
        seen = []
        recipe = Recipe(epochs=1, batch_size=32, device="cpu", seed=seed, data_seed=3)
        model = build_model(mlp_config(digits), seed=seed)
        fit(model, batches, recipe, loss_fn=lambda out, y: (seen.append(y.clone()), F.cross_entropy(out, y))[1],
            progress=False)
        orders.append(torch.cat(seen))
    assert torch.equal(orders[0], orders[1])
    assert torch.equal(orders[0], digits.train.labels[digits.batches("train", batch_size=32, seed=3).order(0)])


def test_bootstrap_gives_each_member_its_own_resample(digits, monkeypatch):
    seen = []
    import ensemblekit.ensemble as module

    def spy(model, batches, recipe, **kwargs):
        seen.append(batches.indices.clone())
        return module.History()

    monkeypatch.setattr(module, "fit", spy)
    config = mlp_config(digits)
    train_members(config, digits.batches("train"), Recipe(epochs=1), members=3, bootstrap=True, vectorize="off",
                  progress=False)
    n = len(digits.train)
    assert len(seen) == 3 and all(len(idx) == n for idx in seen)
    assert not torch.equal(seen[0], seen[1])
    assert len(torch.unique(seen[0])) < n  # drawn with replacement: about 63% unique


def test_ensemble_on_digits_is_at_least_as_accurate_as_the_mean_member(digits):
    # 359 test images: one image is 0.28 pt, so a single 5-member ensemble can land a hair under its
    # mean member by chance; averaged over three ensembles it must not
    recipe = Recipe(epochs=4, batch_size=64, lr=0.05, device="cpu")
    gains = []
    for seed in range(3):
        trained = train_members(mlp_config(digits, (64,)), digits.batches("train", batch_size=64),
                                recipe.replace(seed=seed), members=5, progress=False)
        ev = evaluate_members(trained.ensemble, digits.inputs("test"), digits.test.labels)
        gains.append(ev["extra_performance"])
        assert ev["ensemble"]["nll"] < ev["mean_member"]["nll"]  # averaging probabilities: Jensen's inequality
        assert ev["extra_performance"] == pytest.approx(ev["ensemble"]["accuracy"] - ev["mean_member"]["accuracy"])
        assert ev["mean_member"]["accuracy"] == pytest.approx(sum(m["accuracy"] for m in ev["members"]) / 5)
        assert ev["size_curve"][-1]["accuracy"] == pytest.approx(ev["ensemble"]["accuracy"])
        assert ev["size_curve"][0]["nll"] == pytest.approx(ev["members"][0]["nll"])
    assert sum(gains) / len(gains) >= 0.0, gains


# ----------------------------------------------------------------------------- evaluation


def test_pairwise_disagreement_matches_a_plain_loop():
    proba = torch.softmax(torch.randn(4, 300, 5, generator=torch.Generator().manual_seed(1)), dim=2)
    pred = proba.argmax(2)
    pairs = list(itertools.combinations(range(4), 2))
    expected = sum((pred[i] != pred[j]).double().mean().item() for i, j in pairs) / len(pairs)
    assert pairwise_disagreement(proba) == pytest.approx(expected, abs=1e-9)
    assert pairwise_disagreement(proba[:1]) == 0.0


def test_size_curve_uses_the_first_k_members():
    labels = torch.tensor([0, 1])
    curve = size_curve(LOGITS, labels)
    assert [row["k"] for row in curve] == [1, 2, 3]
    assert curve[1] == {"k": 2, **evaluate(combine(LOGITS[:2]), labels)}


def test_cli_ensemble_and_predict_round_trip(tmp_path, capsys):
    out, report = tmp_path / "ens", tmp_path / "r.json"
    code = main(["ensemble", "--dataset", "digits", "--members", "3", "--epochs", "2", "--hidden", "32",
                 "--quiet", "--out", str(out), "--json", str(report)])
    assert code == 0
    text = capsys.readouterr().out
    assert "extra performance" in text and "mean member" in text
    result = json.loads(report.read_text())
    names = [r["name"] for r in result["rows"]]
    assert names[:3] == ["member 1", "member 2", "member 3"] and names[3] == "mean member"
    assert (out / "manifest.json").exists() and (out / "size_curve.png").stat().st_size > 1000
    code = main(["predict", str(out), "--dataset", "digits", "--json", str(tmp_path / "p.json")])
    assert code == 0
    predicted = json.loads((tmp_path / "p.json").read_text())["rows"][-1]["test"]
    assert predicted == pytest.approx(result["rows"][4]["test"])


def test_cli_bad_input_exits_2(capsys):
    assert main(["ensemble", "--members", "0"]) == 2
    assert "--members 0" in capsys.readouterr().err
    assert main(["ensemble", "--model", "cnn", "--vectorize", "on", "--epochs", "1"]) == 2
    assert "vectorize='on'" in capsys.readouterr().err
