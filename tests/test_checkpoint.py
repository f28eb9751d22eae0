"""Saving and loading ensembles: round trip, and a clear error for every damaged directory."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import save as save_safetensors

from ensemblekit import build_model, load
from ensemblekit.checkpoint import CheckpointError, load_ensemble, save_ensemble
from ensemblekit.cli import main
from ensemblekit.ensemble import Ensemble

CNN = {"arch": "cnn", "in_shape": [1, 8, 8], "num_classes": 10, "channels": [4, 8], "hidden": 16}


@pytest.fixture(scope="module")
def digits():
    return load("digits")


@pytest.fixture
def saved(tmp_path, digits):
    members = [build_model(CNN, seed=s) for s in range(3)]
    for m in members:  # non-trivial BatchNorm statistics, so buffers must round-trip too
        m.train()
        with torch.no_grad():
            m(digits.inputs("train")[:64])
    ensemble = Ensemble(members, "weighted", [0.5, 0.3, 0.2])
    path = save_ensemble(ensemble, tmp_path / "ens", splits=digits, metrics={"test": {"accuracy": 0.5}})
    return ensemble, path


def test_round_trip_gives_identical_predictions(saved, digits):
    ensemble, path = saved
    loaded = Ensemble.load(path)
    x = digits.inputs("test")
    assert torch.equal(loaded.predict_proba(x), ensemble.predict_proba(x))
    assert torch.equal(loaded.members_proba(x), ensemble.members_proba(x))
    assert loaded.combine == "weighted" and loaded.weights.tolist() == pytest.approx([0.5, 0.3, 0.2])
    assert loaded.info["classes"] == list(digits.classes)
    assert loaded.info["normalization"]["mean"] == pytest.approx(digits.mean.tolist())
    assert loaded.info["metrics"] == {"test": {"accuracy": 0.5}}
    assert sorted(p.name for p in path.iterdir()) == [
        "manifest.json", "member_00.safetensors", "member_01.safetensors", "member_02.safetensors"]  # no temp files


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path, manifest):
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_missing_member(saved):
    _, path = saved
    (path / "member_01.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"member_01\.safetensors: member 1 file is missing"):
        load_ensemble(path)


def test_truncated_member(saved):
    _, path = saved
    file = path / "member_02.safetensors"
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"member_02\.safetensors: SHA-256 .* truncated or changed"):
        load_ensemble(path)


def test_tampered_member(saved):
    _, path = saved
    file = path / "member_00.safetensors"
    raw = bytearray(file.read_bytes())
    raw[-3] ^= 0xFF
    file.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"member_00\.safetensors: SHA-256"):
        load_ensemble(path)


def _replace_member(path, index: int, payload: bytes) -> None:
    """Overwrite member ``index`` and update its hash in the manifest, so only the content is wrong."""
    (path / f"member_{index:02d}.safetensors").write_bytes(payload)
    manifest = _manifest(path)
    manifest["members"][index]["sha256"] = hashlib.sha256(payload).hexdigest()
    _write_manifest(path, manifest)


def test_member_with_wrong_shapes_even_if_the_hash_is_updated(saved):
    _, path = saved
    wrong = build_model({**CNN, "channels": [4, 16]}).state_dict()
    _replace_member(path, 1, save_safetensors({k: v.contiguous() for k, v in wrong.items()}))
    with pytest.raises(CheckpointError, match=r"member_01\.safetensors: tensor .* has shape \[16, 4, 3, 3\]"):
        load_ensemble(path)


def test_member_that_is_not_safetensors(saved):
    _, path = saved
    _replace_member(path, 0, b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match=r"member_00\.safetensors: not a valid safetensors file"):
        load_ensemble(path)


def test_unknown_architecture(saved):
    _, path = saved
    manifest = _manifest(path)
    manifest["members"][2]["config"]["arch"] = "transformer"
    _write_manifest(path, manifest)
    with pytest.raises(CheckpointError, match=r"manifest\.json: member 2 config .*unknown architecture 'transformer'"):
        load_ensemble(path)


def test_missing_truncated_and_foreign_manifest(saved, tmp_path):
    _, path = saved
    text = (path / "manifest.json").read_text()
    (path / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=r"manifest\.json: not valid JSON"):
        load_ensemble(path)
    _write_manifest(path, {"hello": "world"})
    with pytest.raises(CheckpointError, match=r"manifest\.json: not an ensemblekit ensemble manifest"):
        load_ensemble(path)
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"manifest\.json: missing"):
        load_ensemble(path)
    with pytest.raises(CheckpointError, match="no such ensemble directory"):
        load_ensemble(tmp_path / "nowhere")


def test_manifest_cannot_point_outside_the_directory(saved):
    _, path = saved
    manifest = _manifest(path)
    manifest["members"][0]["file"] = "../elsewhere.safetensors"
    _write_manifest(path, manifest)
    with pytest.raises(CheckpointError, match="plain file name"):
        load_ensemble(path)


def test_members_with_different_outputs_are_refused(saved):
    _, path = saved
    manifest = _manifest(path)
    manifest["members"][1]["config"]["num_classes"] = 5
    _write_manifest(path, manifest)
    with pytest.raises(CheckpointError):
        load_ensemble(path)


def test_only_library_models_can_be_saved(tmp_path):
    with pytest.raises(CheckpointError, match="has no .config"):
        save_ensemble(Ensemble([torch.nn.Linear(3, 2)]), tmp_path / "x")


def test_cli_predict_images_and_bad_files(saved, tmp_path, capsys):
    _, path = saved
    image = tmp_path / "digit.png"
    Image.new("RGB", (32, 20), (200, 10, 10)).save(image)  # colour, wrong size: converted to 1x8x8
    assert main(["predict", str(path), "--images", str(image), "--top", "2", "--json", str(tmp_path / "p.json")]) == 0
    top = json.loads((tmp_path / "p.json").read_text())["images"][0]["top"]
    assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"]
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["predict", str(path), "--images", str(bad)]) == 2
    assert "bad.png: not an image" in capsys.readouterr().err
    (path / "member_00.safetensors").unlink()
    assert main(["predict", str(path), "--dataset", "digits"]) == 2
    assert "member_00.safetensors" in capsys.readouterr().err
