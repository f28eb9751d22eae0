"""Cyclic schedule against torch's CosineAnnealingWarmRestarts; snapshots exactly at cycle ends."""

from __future__ import annotations

import pytest
import torch

from ensemblekit.cli import main
from ensemblekit.data import Batches
from ensemblekit.models import MLP
from ensemblekit.schedules import CosineRestarts
from ensemblekit.snapshots import SnapshotHook, check_snapshot_plan, plot_lr_schedule, train_snapshot_ensemble
from ensemblekit.train import Recipe


@pytest.mark.parametrize("t0, t_mult, min_lr", [(7, 1, 0.0), (5, 2, 0.001), (3, 3, 0.01), (1, 1, 0.0)])
def test_schedule_equals_torch_step_by_step(t0, t_mult, min_lr):
    schedule = CosineRestarts(0.1, t0, t_mult, min_lr)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    torch_schedule = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=t0, T_mult=t_mult, eta_min=min_lr)
    restarts = []
    for step in range(300):
        assert schedule(step) == pytest.approx(opt.param_groups[0]["lr"], rel=0, abs=1e-12), step
        if step > 0 and opt.param_groups[0]["lr"] > previous:  # torch restarted before this step
            restarts.append(step)
        previous = opt.param_groups[0]["lr"]
        opt.step()
        torch_schedule.step()
    # the cycle ends the schedule reports are exactly where torch's lr jumps back up
    if t0 > 1:
        assert list(schedule.cycle_ends(299)) == restarts
    assert [s for s in range(1, 300) if schedule.is_cycle_end(s)] == list(schedule.cycle_ends(299))


def test_schedule_bad_values():
    with pytest.raises(ValueError, match="cycle_steps=0"):
        CosineRestarts(0.1, 0)
    with pytest.raises(ValueError, match="t_mult=0"):
        CosineRestarts(0.1, 5, 0)
    with pytest.raises(ValueError, match="min_lr=0.5"):
        CosineRestarts(0.1, 5, 1, 0.5)


def toy_batches(n: int = 64) -> Batches:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 6, 6), generator=g, dtype=torch.uint8)
    labels = (images.float().mean((1, 2, 3)) > 127).long()
    return Batches(images, labels, batch_size=16, mean=torch.tensor([127.5]), std=torch.tensor([74.0]))


def test_snapshots_taken_exactly_at_cycle_ends_and_last_m_kept():
    batches = toy_batches()  # 4 steps per epoch
    model = MLP((1, 6, 6), 2, hidden=(8,))
    weights_after_step = {}

    class Capture:  # runs after the snapshot hook: the weights right after each step
        def on_step_end(self, state):
            weights_after_step[state.step] = [p.detach().clone() for p in state.model.parameters()]

    recipe = Recipe(epochs=8, lr=0.2, device="cpu")
    run = train_snapshot_ensemble(model, batches, recipe, snapshots=3, cycle_epochs=2, hooks=[Capture()], progress=False)
    assert run.snapshot_steps == [8, 16, 24, 32]  # 4 cycles of 2 epochs x 4 steps
    lr = run.history.lr
    for s in run.snapshot_steps:
        assert lr[s - 1] == min(lr[s - 8 : s])  # the lowest lr of its cycle
        if s < len(lr):
            assert lr[s] == pytest.approx(0.2)  # then the restart
    assert len(run.ensemble) == 3
    for member, step in zip(run.ensemble.members, run.snapshot_steps[-3:]):
        for p, expected in zip(member.parameters(), weights_after_step[step]):
            assert torch.equal(p, expected)
    # the ensemble predicts the mean of its members' probabilities
    x = torch.randn(5, 1, 6, 6)
    torch.testing.assert_close(run.ensemble.predict_proba(x), run.ensemble.members_proba(x).mean(0))
    assert not torch.equal(run.ensemble.members[0].net[1].weight, run.ensemble.members[2].net[1].weight)


def test_snapshot_hook_with_t_mult_and_validation():
    batches = toy_batches()
    model = MLP((1, 6, 6), 2, hidden=(8,))
    scored = []
    validate = lambda ens: scored.append(len(ens)) or {"accuracy": 1.0}
    # cycles of 1, 2, 4 epochs = 7 epochs
    run = train_snapshot_ensemble(model, batches, Recipe(epochs=7, lr=0.1, device="cpu"), snapshots=2, cycle_epochs=1,
                                  t_mult=2, validate_ensemble=validate, progress=False)
    assert run.snapshot_steps == [4, 12, 28]
    assert scored == [1, 2, 2]
    assert [e.get("snapshots") for e in run.history.epochs] == [1, None, 2, None, None, None, 2]
    with pytest.raises(ValueError, match="no snapshot yet"):
        SnapshotHook(CosineRestarts(0.1, 4), 2).ensemble()


def test_bad_plans_say_what_fits():
    assert check_snapshot_plan(30, 6, 5) == 5
    assert check_snapshot_plan(7, 1, 3, t_mult=2) == 3
    with pytest.raises(ValueError, match=r"cycle_epochs=3 does not fit epochs=10.*1, 2, 5, 10 epochs.*epochs to 9 or 12"):
        check_snapshot_plan(10, 3, 2)
    with pytest.raises(ValueError, match=r"snapshots=6 .* only 5 cycle.*cycle_epochs=1 \(10 cycles\).*epochs=12"):
        check_snapshot_plan(10, 2, 6)
    with pytest.raises(ValueError, match=r"t_mult=2 cycles of 1 epochs fill 3 or 7"):
        check_snapshot_plan(5, 1, 2, t_mult=2)
    with pytest.raises(ValueError, match="snapshots=0"):
        check_snapshot_plan(10, 2, 0)


def test_plot_lr_schedule(tmp_path):
    schedule = CosineRestarts(0.1, 10)
    lr = [schedule(s) for s in range(40)]
    plot_lr_schedule(lr, str(tmp_path / "lr.png"), steps_per_epoch=5, snapshot_steps=schedule.cycle_ends(40),
                     compare={"cosine": [0.1] * 40})
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "10", "--snapshots", "4", "--cycle-epochs", "3"], "does not fit epochs=10"),
    (["train", "--epochs", "10", "--snapshots", "6", "--cycle-epochs", "2"], "only 5 cycle"),
    (["train", "--epochs", "10", "--swa-start", "10"], "beyond the last epoch"),
    (["train", "--ema", "1.5"], "decay=1.5"),
    (["train", "--snapshots", "2", "--swa-start", "3"], "use one of them"),
    (["averaging", "--epochs", "10", "--swa-start", "12"], "beyond the last epoch"),
    (["averaging", "--ema", "0"], "decay=0.0"),
])
def test_cli_bad_input(argv, message, capsys):
    assert main(argv + ["--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_cli_train_with_snapshots_and_ema(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["train", "--epochs", "4", "--snapshots", "2", "--cycle-epochs", "2", "--ema", "0.9", "--hidden", "32",
                 "--quiet", "--plot-dir", str(tmp_path), "--json", str(out)])
    assert code == 0
    import json

    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["mlp (last iterate)", "snapshot ensemble (2 snapshots)", "EMA 0.9"]
    assert (tmp_path / "lr_schedule.png").exists() and (tmp_path / "averaged_history.png").exists()


def test_cli_averaging_end_to_end(tmp_path):
    import json

    out = tmp_path / "avg.json"
    code = main(["averaging", "--epochs", "4", "--snapshots", "2", "--swa-start", "2", "--hidden", "32", "--lrs", "0.05", "0.1",
                 "--seeds", "0", "1", "--quiet", "--plot-dir", str(tmp_path), "--json", str(out)])
    assert code == 0
    payload = json.loads(out.read_text())
    rows = {r["method"]: r for r in payload["rows"]}
    assert list(rows) == ["single", "ema", "swa", "snapshots", "last snapshot"]
    assert rows["ema"]["lr"] == rows["single"]["lr"] and rows["last snapshot"]["lr"] == rows["snapshots"]["lr"]
    for r in rows.values():
        assert r["lr"] in (0.05, 0.1) and r["seeds"] == 2 and len(r["per_seed_test"]) == 2
        assert 0.0 <= r["test"]["accuracy"] <= 1.0 and "accuracy" in r["test_std"]
    # the selection really is the best validation accuracy of the search
    single = [s for s in payload["search"] if s["method"] == "single"]
    assert rows["single"]["lr"] == max(single, key=lambda s: (s["val"]["accuracy"], -s["val"]["nll"]))["lr"]
    for png in ("lr_schedule.png", "snapshot_history.png", "ema_history.png", "swa_history.png"):
        assert (tmp_path / png).exists(), png


def test_demo_rows():
    from ensemblekit.commands.averaging import ema_demo_row, snapshot_demo_row
    from ensemblekit.commands.demo import DEMO_RECIPE
    from ensemblekit.data import load

    splits = load("digits")
    recipe = DEMO_RECIPE.replace(epochs=5)
    for make_row, name in ((snapshot_demo_row, "snapshot ensemble (5)"), (ema_demo_row, "EMA 0.99 of single MLP")):
        row = make_row(splits, recipe, False)
        assert row["name"] == name and 0.5 < row["test"]["accuracy"] <= 1.0
