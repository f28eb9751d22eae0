"""Saving and loading ensembles: one safetensors file per member plus a ``manifest.json``.

Layout of a saved ensemble directory::

    manifest.json            format, library version, combine rule and weights, classes,
                             normalisation mean/std, image shape, metrics, and per member:
                             its file, its SHA-256 and its architecture config
    member_00.safetensors    the state dict of member 0 (weights and BatchNorm buffers)
    member_01.safetensors    ...

Safetensors, never pickle: loading a checkpoint cannot run code. Every file is written to a
temporary name and renamed, and the manifest is written last, so an interrupted save leaves either
the previous checkpoint or a directory without a valid manifest, never one that half-loads.

`load_ensemble` checks everything before returning: the manifest parses and names a known format;
each member file exists, matches its recorded SHA-256 (catches truncation and tampering), parses
as safetensors, and fits the architecture its config builds (names and shapes). Any failure raises
`CheckpointError` naming the file and the problem; there is no partial ensemble.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from . import __version__
from .ensemble import Ensemble
from .models import build_model
from .report import atomic_write_bytes

__all__ = ["CheckpointError", "MANIFEST", "FORMAT", "save_ensemble", "load_ensemble", "read_manifest"]

MANIFEST = "manifest.json"
FORMAT = "ensemblekit.ensemble"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A saved ensemble is missing, truncated, tampered with or inconsistent."""


def save_ensemble(
    ensemble: Ensemble,
    path: str | os.PathLike,
    *,
    splits: Any = None,
    classes: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``ensemble`` to the directory ``path``; return it.

    ``splits`` (a `data.Splits`) supplies the class names and the normalisation that inputs need
    at prediction time; ``classes`` / ``mean`` / ``std`` give them directly. Members must be
    `ensemblekit.models` networks (they carry the ``config`` that rebuilds them).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a directory")
    if splits is not None:
        classes = list(splits.classes) if classes is None else classes
        mean = splits.mean.tolist() if mean is None else mean
        std = splits.std.tolist() if std is None else std
    info = dict(ensemble.info)
    classes = list(classes) if classes is not None else info.get("classes")
    normalization = info.get("normalization")
    if mean is not None and std is not None:
        normalization = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}

    entries = []
    payloads = []
    for i, member in enumerate(ensemble.members):
        config = getattr(member, "config", None)
        if not isinstance(config, dict) or "arch" not in config:
            raise CheckpointError(
                f"member {i} ({type(member).__name__}) has no .config; only ensemblekit.models networks can be saved"
            )
        state = {k: v.detach().cpu().contiguous().clone() for k, v in member.state_dict().items()}
        payload = save_safetensors(state, metadata={"format": FORMAT, "member": str(i)})
        name = f"member_{i:02d}.safetensors"
        entries.append({"file": name, "sha256": hashlib.sha256(payload).hexdigest(), "config": config})
        payloads.append((name, payload))
    if classes is not None and len(classes) != entries[0]["config"].get("num_classes", len(classes)):
        raise CheckpointError(f"{len(classes)} class names for members with {entries[0]['config']['num_classes']} outputs")

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "combine": ensemble.combine,
        "weights": None if ensemble.weights is None else ensemble.weights.tolist(),
        "classes": classes,
        "normalization": normalization,
        "image_shape": entries[0]["config"].get("in_shape"),
        "metrics": metrics if metrics is not None else info.get("metrics", {}),
        "members": entries,
        **(extra or {}),
    }
    path.mkdir(parents=True, exist_ok=True)
    for name, payload in payloads:
        atomic_write_bytes(path / name, payload)
    # written last: a save that dies before here leaves no manifest that points at missing members
    atomic_write_bytes(path / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return path


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed and checked ``manifest.json`` of a saved ensemble directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such ensemble directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (an ensemble is a directory with {MANIFEST})")
    file = path / MANIFEST
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing; is {path} a directory written by Ensemble.save?") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file}: cannot read ({exc})") from exc
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: not valid JSON, truncated or edited? ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{file}: not an ensemblekit ensemble manifest (format should be {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{file}: format_version {manifest.get('format_version')!r}; this ensemblekit reads version {FORMAT_VERSION}"
        )
    members = manifest.get("members")
    if not isinstance(members, list) or not members:
        raise CheckpointError(f"{file}: 'members' must be a non-empty list")
    for i, entry in enumerate(members):
        if not isinstance(entry, dict) or not {"file", "sha256", "config"} <= entry.keys():
            raise CheckpointError(f"{file}: member {i} needs 'file', 'sha256' and 'config'")
        name = entry["file"]
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise CheckpointError(f"{file}: member {i} file {name!r} must be a plain file name inside the directory")
    return manifest


def load_ensemble(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Ensemble:
    """Load the ensemble saved in directory ``path``; `CheckpointError` naming the file if anything is off."""
    path = Path(path)
    manifest = read_manifest(path)
    manifest_file = path / MANIFEST
    models = []
    for i, entry in enumerate(manifest["members"]):
        file = path / entry["file"]
        try:
            payload = file.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"{file}: member {i} file is missing") from None
        except OSError as exc:
            raise CheckpointError(f"{file}: cannot read member {i} ({exc})") from exc
        digest = hashlib.sha256(payload).hexdigest()
        if digest != entry["sha256"]:
            raise CheckpointError(
                f"{file}: SHA-256 {digest[:12]}... does not match the manifest's {str(entry['sha256'])[:12]}... "
                f"({len(payload)} bytes): the file was truncated or changed after saving"
            )
        try:
            state = load_safetensors(payload)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{file}: not a valid safetensors file ({exc})") from exc
        config = entry["config"]
        try:
            model = build_model(config)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{manifest_file}: member {i} config {config!r} does not build a model ({exc})") from exc
        _check_state(model.state_dict(), state, file)
        model.load_state_dict(state)
        models.append(model.to(device).eval())
    _check_same_outputs(manifest, manifest_file)
    try:
        ensemble = Ensemble(models, manifest.get("combine", "mean_proba"), manifest.get("weights"))
    except ValueError as exc:
        raise CheckpointError(f"{manifest_file}: {exc}") from exc
    ensemble.info = {k: v for k, v in manifest.items() if k != "members"}
    ensemble.info["path"] = str(path)
    return ensemble


def _check_state(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], file: Path) -> None:
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"{file}: tensors do not match the architecture in the manifest "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    for name, tensor in expected.items():
        if got[name].shape != tensor.shape:
            raise CheckpointError(
                f"{file}: tensor {name!r} has shape {list(got[name].shape)}, the manifest's architecture needs {list(tensor.shape)}"
            )
        if got[name].dtype.is_floating_point != tensor.dtype.is_floating_point:
            raise CheckpointError(f"{file}: tensor {name!r} has dtype {got[name].dtype}, expected {tensor.dtype}")
        if got[name].dtype.is_floating_point and not torch.isfinite(got[name]).all():
            raise CheckpointError(f"{file}: tensor {name!r} holds NaN or infinite values")


def _check_same_outputs(manifest: dict[str, Any], manifest_file: Path) -> None:
    shapes = [(e["config"].get("num_classes"), e["config"].get("in_shape")) for e in manifest["members"]]
    for i, shape in enumerate(shapes):
        if shape != shapes[0]:
            raise CheckpointError(
                f"{manifest_file}: member {i} maps {shape[1]} to {shape[0]} classes, member 0 maps "
                f"{shapes[0][1]} to {shapes[0][0]}; members must share inputs and classes"
            )
    classes = manifest.get("classes")
    if classes is not None and len(classes) != shapes[0][0]:
        raise CheckpointError(f"{manifest_file}: {len(classes)} class names for members with {shapes[0][0]} outputs")
