"""The `ensemblekit` command: demo / datasets / train in-process through `cli.main`, bad input
as one line on stderr with exit code 2, and one run of the installed console script."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_idx_dataset
from ensemblekit import __version__, cli, data
from ensemblekit.commands import common, demo


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _check_rows(payload: dict) -> None:
    assert isinstance(payload["rows"], list) and payload["rows"]
    for row in payload["rows"]:
        assert isinstance(row["name"], str)
        test = row["test"]
        assert 0.0 <= test["accuracy"] <= 1.0  # a fraction, not a percentage
        assert {"accuracy", "nll", "brier", "ece"} <= set(test)


def test_demo_writes_the_documented_json(tmp_path, capsys, monkeypatch):
    # only the foundation's row, shortened: the shape is under test here, accuracy in test_train
    monkeypatch.setattr(demo, "demo_rows", lambda: [demo.single_row])
    monkeypatch.setattr(demo, "DEMO_RECIPE", demo.DEMO_RECIPE.replace(epochs=2))
    out_file = tmp_path / "out" / "demo.json"
    code, out, err = _run(capsys, "demo", "--quiet", "--json", str(out_file))
    assert code == 0, err
    payload = json.loads(out_file.read_text())
    _check_rows(payload)
    assert payload["command"] == "demo" and payload["version"] == __version__
    assert [row["name"] for row in payload["rows"]] == ["single MLP"]
    assert "single MLP" in out and str(out_file) in out


def test_train_writes_rows_and_history(tmp_path, capsys):
    out_file = tmp_path / "train.json"
    code, out, err = _run(capsys, "train", "--dataset", "digits", "--epochs", "2", "--hidden", "32",
                          "--quiet", "--json", str(out_file))
    assert code == 0, err
    payload = json.loads(out_file.read_text())
    _check_rows(payload)
    assert payload["rows"][0]["name"] == "mlp" and "val" in payload["rows"][0]
    assert payload["model"]["hidden"] == [32] and payload["recipe"]["epochs"] == 2
    assert len(payload["history"]["epochs"]) == 2


def test_train_reads_an_idx_folder(tmp_path, capsys):
    write_idx_dataset(tmp_path / "mnist")
    code, out, err = _run(capsys, "train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--model", "cnn",
                          "--channels", "4", "--hidden", "8", "--epochs", "1", "--val-size", "10", "--quiet")
    assert code == 0, err
    assert "cnn on mnist" in out


def test_datasets_lists_every_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(common.console, "width", 500)  # one table line per dataset, paths unwrapped
    write_idx_dataset(tmp_path / "kmnist")
    code, out, err = _run(capsys, "datasets", "--data-dir", str(tmp_path))
    assert code == 0, err
    first_lines = {name: next(l for l in out.splitlines() if f" {name} " in l) for name in data.DATASETS}
    assert "yes" in first_lines["kmnist"] and str(tmp_path / "kmnist") in first_lines["kmnist"]
    assert "no" in first_lines["mnist"] and str(tmp_path / "mnist") in out  # where it looked
    assert "yes" in first_lines["digits"]


def _corrupt_mnist(folder: Path) -> Path:
    write_idx_dataset(folder)
    broken = folder / "train-images-idx3-ubyte.gz"
    broken.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 7))  # header cut short
    return folder


@pytest.mark.parametrize(
    "case",
    ["unknown dataset", "epochs 0", "missing files", "corrupt idx", "bad optimizer", "bad val size", "diverging lr",
     "not a device", "absent device", "bad precision", "epochs not a number"],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    if case == "absent device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if case == "corrupt idx":
        _corrupt_mnist(tmp_path / "m")
    argv = {
        "unknown dataset": ["train", "--dataset", "imagenet"],
        "epochs 0": ["train", "--epochs", "0"],
        "missing files": ["train", "--dataset", "mnist", "--data-dir", str(tmp_path)],
        "corrupt idx": ["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "m")],
        "bad optimizer": ["train", "--optimizer", "adam"],
        "bad val size": ["train", "--val-size", "5000"],
        "diverging lr": ["train", "--lr", "1e30", "--epochs", "2"],
        "not a device": ["train", "--device", "gpu0"],
        "absent device": ["train", "--device", "cuda"],
        "bad precision": ["train", "--precision", "fp16"],
        "epochs not a number": ["train", "--epochs", "ten"],
    }[case]
    expect = {
        "unknown dataset": "fashion-mnist", "epochs 0": "epochs", "missing files": str(tmp_path),
        "corrupt idx": "train-images-idx3-ubyte.gz", "bad optimizer": "sgd, adamw", "bad val size": "val_size",
        "diverging lr": "step", "not a device": "gpu0", "absent device": "not available",
        "bad precision": "'fp16'", "epochs not a number": "'ten'",
    }[case]
    code, out, err = _run(capsys, *argv, "--quiet")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ensemblekit train: error: ") and expect in lines[0]
    assert "Traceback" not in err + out


def test_console_script_reports_bad_input_without_a_traceback():
    script = Path(sys.executable).with_name("ensemblekit")
    script = str(script) if script.exists() else shutil.which("ensemblekit")
    if script is None:
        pytest.skip("the ensemblekit console script is not installed (pip install -e .)")
    result = subprocess.run([script, "train", "--dataset", "nope", "--quiet"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "unknown dataset 'nope'" in result.stderr and "digits" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_fashion_mnist_mlp_reaches_88_percent(tmp_path, capsys):
    """The foundation's must-show: `ensemblekit train --dataset fashion-mnist --model mlp --epochs 5`."""
    if data.locate("fashion-mnist") is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    out_file = tmp_path / "fmnist.json"
    code, _, err = _run(capsys, "train", "--dataset", "fashion-mnist", "--model", "mlp", "--epochs", "5",
                        "--quiet", "--json", str(out_file))
    assert code == 0, err
    assert json.loads(out_file.read_text())["rows"][0]["test"]["accuracy"] >= 0.88


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_mode_a_plain_open_would(tmp_path, umask):
    from ensemblekit.report import atomic_write_bytes, write_json

    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        write_json(tmp_path / "b.json", {"k": 1})
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("a.bin", "b.json"):  # not mkstemp's owner-only 0600
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json", "plain"]  # no temporary left
