"""Siamese pairs: losses against their formulas, weight sharing, pair sampling, distortions,
one-shot and verification evaluation on constructed cases, save/load, the CLI on a tiny folder."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ensemblekit.metrics import equal_error_rate
from ensemblekit.siamese import (
    Distortion, PairBatches, PairModel, SiameseEncoder, balanced_pairs, best_threshold, contrastive_loss,
    koch_loss, load_pair_model, npair_loss, one_shot_accuracy, pair_loss, pixel_similarity, random_affine,
    rotated_classes,
    sample_nway_tasks, save_pair_model, split_classes, task_similarity, triplet_loss, verification_metrics,
)
from ensemblekit.train import Recipe, fit


# ----------------------------------------------------------------------------- losses


def test_contrastive_loss_matches_hadsell_formula_on_hand_values():
    # same=1: D^2/2 ; same=0: max(0, m - D)^2/2, m = 1
    distance = torch.tensor([0.5, 2.0, 0.3, 1.5])
    same = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # 0.125 + 2.0 + 0.5 * 0.7^2 + 0 = 2.37, mean over 4 pairs
    assert contrastive_loss(distance, same, margin=1.0).item() == pytest.approx(2.37 / 4, abs=1e-6)
    # margin 2: 0.125 + 2.0 + 0.5 * 1.7^2 + 0.5 * 0.5^2 = 3.695
    assert contrastive_loss(distance, same, margin=2.0).item() == pytest.approx(3.695 / 4, abs=1e-6)


def test_contrastive_loss_pulls_similar_and_pushes_dissimilar_only_inside_the_margin():
    d = torch.tensor([0.4, 0.4, 1.4], requires_grad=True)
    contrastive_loss(d, torch.tensor([1.0, 0.0, 0.0]), margin=1.0).backward()
    g = d.grad
    assert g[0] > 0  # similar: lowering D lowers the loss
    assert g[1] < 0  # dissimilar inside the margin: raising D lowers it
    assert g[2] == 0  # dissimilar beyond the margin: no force


def test_balanced_contrastive_loss_weighs_same_and_different_pairs_equally():
    d = torch.tensor([[0.2, 0.5, 1.2], [0.9, 0.4, 0.1]])
    same = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    pull = (0.5 * 0.2**2 + 0.5 * 0.4**2) / 2
    push = (0.5 * 0.5**2 + 0 + 0.5 * 0.1**2 + 0.5 * 0.9**2) / 4  # 1.2 lies beyond the margin
    assert contrastive_loss(d, same, 1.0, balance=True).item() == pytest.approx(0.5 * (pull + push), abs=1e-6)
    # on balanced pairs it is the plain mean
    flat, lab = torch.tensor([0.3, 0.8, 0.1, 0.6]), torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert contrastive_loss(flat, lab, balance=True).item() == pytest.approx(contrastive_loss(flat, lab).item())


def test_contrastive_loss_rejects_bad_margin():
    with pytest.raises(ValueError, match="margin"):
        contrastive_loss(torch.ones(2), torch.ones(2), margin=0.0)


def test_npair_loss_is_cross_entropy_of_cosine_over_temperature_both_ways():
    z1 = F.normalize(torch.randn(4, 6, generator=torch.Generator().manual_seed(0)), dim=1)
    z2 = F.normalize(torch.randn(4, 6, generator=torch.Generator().manual_seed(1)), dim=1)
    distance = torch.cdist(z1, z2)
    tau = 0.2
    logits = z1 @ z2.T / tau  # each x1[i]'s partner is x2[i]
    target = torch.arange(4)
    expected = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert npair_loss(distance, torch.eye(4), tau).item() == pytest.approx(expected.item(), abs=1e-5)
    # repeated classes: the target mass is spread over the row's positives
    same = torch.tensor([[1.0, 1.0, 0, 0], [1.0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    row0 = -0.5 * (logits[0].log_softmax(0)[0] + logits[0].log_softmax(0)[1])
    rows = torch.stack([row0, -0.5 * logits[1].log_softmax(0)[:2].sum()] + [-logits[i].log_softmax(0)[i] for i in (2, 3)])
    cols = torch.stack([-0.5 * logits[:, j].log_softmax(0)[:2].sum() for j in (0, 1)] + [-logits[:, j].log_softmax(0)[j] for j in (2, 3)])
    assert npair_loss(distance, same, tau).item() == pytest.approx(0.5 * (rows.mean() + cols.mean()).item(), abs=1e-5)


def test_npair_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        npair_loss(torch.ones(2, 2), torch.eye(2), 0.0)
    with pytest.raises(ValueError, match="all-pairs"):
        npair_loss(torch.ones(4), torch.ones(4))
    with pytest.raises(ValueError, match="loss"):
        pair_loss("contrastive", loss="hinge")
    with pytest.raises(ValueError, match="koch"):
        pair_loss("koch", loss="npair")


def test_rotated_classes_are_new_classes_of_turned_images():
    images = torch.arange(3 * 4 * 4, dtype=torch.uint8).view(3, 1, 4, 4)
    labels = torch.tensor([0, 1, 2])
    out, out_labels, out_classes = rotated_classes(images, labels, torch.tensor([0, 2]), rotations=4)
    assert out.shape == (3 + 3 * 2, 1, 4, 4)
    torch.testing.assert_close(out[:3], images)  # the originals first, all of them (validation too)
    assert out_labels.tolist() == [0, 1, 2, 3, 5, 6, 8, 9, 11]
    assert sorted(out_classes.tolist()) == [0, 2, 3, 5, 6, 8, 9, 11]
    for k, turn in enumerate((1, 2, 3)):  # copy k of image 2 is image 2 turned k + 1 quarter turns
        torch.testing.assert_close(out[out_labels == 2 + 3 * (k + 1)][0, 0], torch.rot90(images[2, 0], turn))
    _, halves, _ = rotated_classes(images, labels, labels, rotations=2)
    assert halves.tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="rotations"):
        rotated_classes(images, labels, labels, rotations=3)


def test_koch_loss_is_binary_cross_entropy_of_the_sigmoid():
    logit = torch.tensor([2.0, -1.0, 0.3])
    same = torch.tensor([1.0, 0.0, 0.0])
    p = 1 / (1 + torch.exp(-logit))
    expected = -(same * p.log() + (1 - same) * (1 - p).log()).mean()
    assert koch_loss(logit, same).item() == pytest.approx(expected.item(), abs=1e-6)


def test_triplet_loss_matches_torch():
    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.randn(16, 8, generator=g) for _ in range(3))
    ours = triplet_loss(a, p, n, margin=0.7)
    ref = F.triplet_margin_loss(a, p, n, margin=0.7, eps=0.0)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)


def test_pair_loss_rejects_unknown_head():
    with pytest.raises(ValueError, match="head="):
        pair_loss("cosine")


# ----------------------------------------------------------------------------- weight sharing


def _model(head="contrastive", shape=(1, 12, 12), seed=0):
    torch.manual_seed(seed)
    return PairModel(SiameseEncoder(shape, channels=(4, 6), embedding_dim=5), head=head)


@pytest.mark.parametrize("head", ["contrastive", "koch"])
def test_one_parameter_set_and_batched_forward_equals_two_forwards(head):
    model = _model(head).eval()  # eval: BatchNorm uses running statistics, so batch composition cannot matter
    encoder_params = {id(p) for p in model.encoder.parameters()}
    head_params = [p for p in model.parameters() if id(p) not in encoder_params]
    assert len(head_params) == (2 if head == "koch" else 0)  # no second copy of the encoder
    x1, x2 = torch.randn(3, 1, 12, 12), torch.randn(3, 1, 12, 12)
    batched = model(x1, x2)
    separate = model.compare(model.encoder(x1), model.encoder(x2))
    torch.testing.assert_close(batched, separate, rtol=1e-5, atol=1e-6)


def test_all_pairs_forward_is_the_full_comparison_matrix():
    model = _model().eval()
    x1, x2 = torch.randn(3, 1, 12, 12), torch.randn(3, 1, 12, 12)
    matched = model(x1, x2)
    model.all_pairs = True
    full = model(x1, x2)
    assert full.shape == (3, 3)
    torch.testing.assert_close(full.diagonal(), matched)
    torch.testing.assert_close(full[0, 2], model.compare(model.encoder(x1[:1]), model.encoder(x2[2:]))[0])


def test_all_pairs_batches_hold_one_same_pair_per_class():
    images, labels = _toy(num_classes=6, per_class=4)
    pairs = PairBatches(images, labels, pairs_per_epoch=10, batch_size=5, all_pairs=True)
    first, second, same = pairs.index.sample_matched(5, torch.Generator().manual_seed(0))
    assert torch.equal(same, torch.eye(5))  # 6 classes >= 5 pairs: all distinct
    assert torch.equal(labels[first], labels[second]) and not bool((first == second).any())
    (x1, x2), target = next(pairs.epoch(0))
    assert x1.shape == (5, 1, 10, 10) and target.shape == (5, 5)
    # fewer classes than pairs: classes repeat, and `same` marks every repeat
    first, second, same = pairs.index.sample_matched(9, torch.Generator().manual_seed(1))
    torch.testing.assert_close(same, (labels[first][:, None] == labels[second][None, :]).float())


def test_batched_forward_is_one_encoder_call():
    model = _model()
    calls = []
    model.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    model(torch.randn(3, 1, 12, 12), torch.randn(3, 1, 12, 12))
    assert calls == [6]


def test_gradients_from_both_branches_add_up():
    model = _model().eval()
    x1, x2 = torch.randn(4, 1, 12, 12), torch.randn(4, 1, 12, 12)
    params = list(model.encoder.parameters())

    def grads(loss):
        return torch.autograd.grad(loss, params, allow_unused=True)

    both = grads(model(x1, x2).pow(2).sum())
    z1, z2 = model.encoder(x1), model.encoder(x2)
    from_first = grads(model.compare(z1, z2.detach()).pow(2).sum())
    from_second = grads(model.compare(z1.detach(), z2).pow(2).sum())
    for g, a, b in zip(both, from_first, from_second):
        torch.testing.assert_close(g, a + b, rtol=1e-4, atol=1e-6)
    assert any(a.abs().sum() > 0 for a in from_first) and any(b.abs().sum() > 0 for b in from_second)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 35, 35), (3, 20, 31), (1, 1, 1)])
def test_encoder_works_for_any_shape(shape):
    encoder = SiameseEncoder(shape, channels=(4, 4, 4), embedding_dim=7)
    assert encoder(torch.randn(2, *shape)).shape == (2, 7)


def test_normalized_embeddings_have_unit_length():
    encoder = SiameseEncoder((1, 10, 10), channels=(4,), embedding_dim=6, normalize=True)
    torch.testing.assert_close(encoder(torch.randn(5, 1, 10, 10)).norm(dim=1), torch.ones(5))


# ----------------------------------------------------------------------------- pairs and distortions


def _toy(num_classes=6, per_class=5, size=10, seed=0):
    """Each class is a fixed random pattern plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand(num_classes, 1, size, size, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    noisy = patterns[labels] + 0.05 * torch.randn(len(labels), 1, size, size, generator=g)
    return (noisy.clamp(0, 1) * 255).round().to(torch.uint8), labels


def test_pairs_are_balanced_correct_and_from_the_given_classes_only():
    images, labels = _toy()
    pairs = PairBatches(images, labels, classes=torch.tensor([0, 2, 3, 5]), pairs_per_epoch=400, batch_size=40)
    seen_same = seen_total = 0
    index = pairs.index
    for _ in range(5):
        first, second, same = index.sample(40, torch.Generator().manual_seed(_))
        subset_labels = labels[torch.isin(labels, torch.tensor([0, 2, 3, 5]))]
        l1, l2 = subset_labels[first], subset_labels[second]
        assert torch.equal(l1 == l2, same.bool())
        assert not bool((first == second).any())  # a same pair is two different images
        seen_same += int(same.sum())
        seen_total += len(same)
    assert seen_same * 2 == seen_total
    (x1, x2), target = next(pairs.epoch(0))
    assert x1.shape == x2.shape == (40, 1, 10, 10) and target.shape == (40,)
    # only the images of the given classes are held, so held-out classes can never be drawn
    assert torch.equal(pairs.images, images[torch.isin(labels, torch.tensor([0, 2, 3, 5]))])


def test_pair_epochs_are_reproducible_and_differ_between_epochs():
    images, labels = _toy()
    pairs = PairBatches(images, labels, pairs_per_epoch=64, batch_size=32, distortion=Distortion(), seed=3)
    a = [x[0][0] for x in pairs.epoch(1)]
    b = [x[0][0] for x in pairs.epoch(1)]
    c = [x[0][0] for x in pairs.epoch(2)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert pairs.with_options(seed=4).seed == 4 and len(pairs) == 2 and pairs.num_samples == 64


def test_pair_sampler_rejects_single_image_classes_and_odd_batches():
    images, labels = _toy(num_classes=3, per_class=2)
    with pytest.raises(ValueError, match="single image"):
        PairBatches(images[:-1], labels[:-1])
    with pytest.raises(ValueError, match="even"):
        PairBatches(images, labels, batch_size=7)


def test_random_affine_identity_when_off_and_per_image_when_on():
    x = torch.rand(1, 1, 16, 16).expand(6, 1, 16, 16).contiguous()
    off = random_affine(x, Distortion(p=0.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(off, x, atol=1e-5, rtol=0)
    on = random_affine(x, Distortion(p=1.0), torch.Generator().manual_seed(0))
    assert on.shape == x.shape
    assert not torch.allclose(on[0], on[1])  # each image drew its own map
    again = random_affine(x, Distortion(p=1.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(on, again)


def test_random_affine_translation_moves_a_dot():
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 10] = 1.0
    # translation only, always on, at most 5 of 21 pixels
    d = Distortion(rotation_deg=0.0, shear=0.0, scale=(1.0, 1.0), translate=5 / 21, p=1.0)
    y = random_affine(x, d, torch.Generator().manual_seed(1))
    assert y.sum().item() == pytest.approx(1.0, abs=1e-4)  # bilinear keeps the mass of an interior dot
    assert y[0, 0, 10, 10] < 0.99


def test_split_classes_is_by_class_disjoint_and_complete():
    train, val, test = split_classes(40, (0.15, 0.2), seed=1)
    assert (len(train), len(val), len(test)) == (40 - 6 - 8, 6, 8)
    assert sorted(torch.cat([train, val, test]).tolist()) == list(range(40))
    with pytest.raises(ValueError, match="cannot be split"):
        split_classes(5, (0.15, 0.15))


def test_fit_trains_pairs_through_the_one_loop():
    images, labels = _toy(num_classes=6, per_class=6)
    torch.manual_seed(0)
    model = PairModel(SiameseEncoder((1, 10, 10), channels=(8, 8), embedding_dim=8, normalize=True))
    pairs = PairBatches(images, labels, pairs_per_epoch=128, batch_size=32)
    history = fit(model, pairs, Recipe(epochs=3, batch_size=32, optimizer="adamw", lr=0.01, device="cpu"),
                  loss_fn=pair_loss("contrastive"), progress=False)
    losses = [e["train_loss"] for e in history.epochs]
    assert losses[-1] < losses[0]


# ----------------------------------------------------------------------------- evaluation


def test_one_shot_accuracy_on_a_constructed_similarity():
    sim = torch.tensor([[[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], [[0.0, 0.2, 0.3], [0.5, 0.4, 0.1]]])  # (T=2, Q=2, N=3)
    answers = torch.tensor([[1, 0], [1, 0]])  # right, right, wrong (2 wins), right
    assert one_shot_accuracy(sim, answers) == pytest.approx(0.75)


def test_one_shot_pipeline_with_a_known_answer():
    # support images are one-hot "pixels"; each query is its class's image plus small noise,
    # except the queries of task 1, which are built to sit nearest the wrong support image
    support = torch.eye(4).view(1, 4, 1, 2, 2).repeat(2, 1, 1, 1, 1)  # (T=2, N=4, 1, 2, 2)
    answers = torch.tensor([[2, 0, 3], [1, 1, 1]])
    queries = support[0][answers] + 0.1  # (T, Q, 1, 2, 2), all correct so far
    queries[1, 0] = support[1, 3] + 0.05  # points at 3, answer 1 -> wrong
    sim = pixel_similarity(support, queries)
    assert one_shot_accuracy(sim, answers) == pytest.approx(5 / 6)


def test_task_similarity_uses_the_model_and_matches_pair_outputs():
    model = _model().eval()
    support, queries = torch.randn(2, 3, 1, 12, 12), torch.randn(2, 4, 1, 12, 12)
    sim = task_similarity(model, support, queries)
    assert sim.shape == (2, 4, 3)
    direct = -model(queries[1, 2:3], support[1, 0:1])
    assert sim[1, 2, 0].item() == pytest.approx(direct.item(), abs=1e-5)


def test_sampled_nway_tasks_are_valid():
    labels = torch.arange(30).repeat_interleave(3)
    support, queries, answers = sample_nway_tasks(labels, 5, 50, queries_per_task=2, seed=0)
    assert support.shape == (50, 5) and queries.shape == answers.shape == (50, 2)
    for t in range(50):
        assert len(set(labels[support[t]].tolist())) == 5
        for q in range(2):
            assert labels[queries[t, q]] == labels[support[t, answers[t, q]]]
            assert queries[t, q] != support[t, answers[t, q]]
    with pytest.raises(ValueError, match="40-way"):
        sample_nway_tasks(labels, 40, 1)


def test_equal_error_rate_against_a_brute_force_sweep():
    assert equal_error_rate(torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([0, 0, 1, 1])) == 0.0
    g = torch.Generator().manual_seed(0)
    same = torch.rand(400, generator=g) < 0.5
    scores = same.double() + torch.randn(400, generator=g, dtype=torch.float64)
    eer = equal_error_rate(scores, same)
    # brute force: the threshold where false accepts and false rejects are closest
    t = torch.sort(scores).values
    far = ((scores[None] >= t[:, None]) & ~same[None]).double().sum(1) / (~same).sum()
    frr = ((scores[None] < t[:, None]) & same[None]).double().sum(1) / same.sum()
    k = int((far - frr).abs().argmin())
    assert eer == pytest.approx(float((far[k] + frr[k]) / 2), abs=0.01)
    assert 0.2 < eer < 0.45  # d' = 1: the theoretical EER is Phi(-0.5) = 0.31


def test_best_threshold_and_verification_accuracy():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.9])
    same = torch.tensor([0, 0, 1, 1, 1])
    t = best_threshold(scores, same)
    assert t == pytest.approx(0.8) or t == pytest.approx(0.35)  # both give 4/5
    out = verification_metrics(scores, same, threshold=t)
    assert out["verify_accuracy"] == pytest.approx(0.8)
    assert out["auc"] == pytest.approx(5 / 6)  # 5 of 6 (same, different) pairs ordered right


def test_balanced_pairs_enumerate_same_pairs_and_match_them_with_different_ones():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    first, second, same = balanced_pairs(labels, max_pairs=100)
    assert int(same.sum()) == 4 and len(same) == 8  # C(2,2) + C(3,2) same pairs
    assert torch.equal(labels[first] == labels[second], same.bool())


def test_save_and_load_round_trip(tmp_path):
    model = _model("koch").eval()
    save_pair_model(model, tmp_path / "m", mean=torch.tensor([0.5]), std=torch.tensor([0.2]))
    loaded, manifest = load_pair_model(tmp_path / "m")
    x1, x2 = torch.randn(2, 1, 12, 12), torch.randn(2, 1, 12, 12)
    torch.testing.assert_close(loaded(x1, x2), model(x1, x2))
    assert manifest["head"] == "koch" and manifest["mean"] == [0.5]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["encoder.safetensors", "manifest.json"]


# ----------------------------------------------------------------------------- CLI


def _write_folder(root, num_classes=8, per_class=4, size=12):
    from PIL import Image

    images, labels = _toy(num_classes, per_class, size)
    for k, (img, label) in enumerate(zip(images, labels)):
        folder = root / f"class{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(folder / f"{k}.png")


def test_cli_on_an_image_folder(tmp_path):
    from ensemblekit.cli import main

    _write_folder(tmp_path / "data")
    out = tmp_path / "res.json"
    code = main([
        "siamese", "--dataset", f"folder:{tmp_path / 'data'}", "--image-size", "12", "--epochs", "1",
        "--pairs-per-epoch", "64", "--batch-size", "32", "--widths", "4", "4", "--ways", "2", "--tasks", "20",
        "--device", "cpu", "--out", str(tmp_path / "figs"), "--save", str(tmp_path / "model"),
        "--json", str(out), "--quiet",
    ])
    assert code == 0
    payload = json.loads(out.read_text())
    names = [r["name"] for r in payload["rows"]]
    assert names == ["siamese (contrastive, npair loss)", "pixel nearest neighbour"]  # the defaults
    assert {"auc", "eer", "verify_accuracy", "2way_accuracy"} <= set(payload["rows"][0]["test"])
    assert (tmp_path / "figs" / "roc.png").stat().st_size > 0 and (tmp_path / "figs" / "embeddings.png").exists()
    # the saved model evaluates again without training
    code = main(["siamese", "--dataset", f"folder:{tmp_path / 'data'}", "--image-size", "12", "--ways", "2",
                 "--tasks", "20", "--load", str(tmp_path / "model"), "--out", str(tmp_path / "figs2"), "--quiet"])
    assert code == 0


def test_cli_rejects_npair_loss_without_all_pairs(tmp_path, capsys):
    from ensemblekit.cli import main

    code = main(["siamese", "--dataset", f"folder:{tmp_path}", "--pairs", "balanced", "--quiet"])
    assert code == 2
    assert "--loss npair needs --pairs all" in capsys.readouterr().err


def test_cli_reports_missing_omniglot_in_one_line(tmp_path, monkeypatch, capsys):
    from ensemblekit.cli import main

    monkeypatch.setenv("ENSEMBLEKIT_DATA", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code = main(["siamese", "--data-dir", str(tmp_path / "nowhere"), "--quiet"])
    assert code == 2
    assert "not found" in capsys.readouterr().err
