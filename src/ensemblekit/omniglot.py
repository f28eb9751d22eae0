"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015) read straight from its zip files.

Two things are read:

* a *background* set, ``<root>/<alphabet>/<character>/<id>.png`` inside one or more zips, as
  one labelled image set whose classes are the characters (``"Greek/character01"``). The two
  small background zips share Greek and Latin byte for byte, so a character is counted once even
  when several zips hold it: small1 + small2 give 8 alphabets, 242 characters, 4,840 images.
* the 20 official 20-way one-shot runs of ``all_runs.zip``: per run 20 support images
  (``training/classNN.png``), 20 queries (``test/itemNN.png``) and ``class_labels.txt`` naming
  each query's matching support image. Their characters come from the evaluation alphabets,
  which the background set never shows.

Images are 105x105 one-bit drawings (dark ink on white); they are decoded to greyscale uint8,
shape (N, 1, S, S), and downsampled to ``image_size`` with a box filter (area average, so thin
strokes survive the reduction).

`download` fetches the zips (``file://`` mirrors work too) with SHA-256 checks where the
checksum is known and a layout check always.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .data import DataError, check_digest, cache_dir, fetch, file_digest, search_dirs

__all__ = [
    "SMALL_BACKGROUND",
    "FULL_BACKGROUND",
    "RUNS_ZIP",
    "SHA256",
    "BASE_URL",
    "OmniglotImages",
    "OneShotRuns",
    "decode_image",
    "read_background",
    "read_runs",
    "locate",
    "download",
]

SMALL_BACKGROUND = ("images_background_small1.zip", "images_background_small2.zip")
FULL_BACKGROUND = ("images_background.zip",)
EVALUATION = ("images_evaluation.zip",)
RUNS_ZIP = "all_runs.zip"
BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
# known checksums (brendenlake/omniglot @ 057f034); the full zips are checked by layout only
SHA256 = {
    "images_background_small1.zip": "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
    "images_background_small2.zip": "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
    "all_runs.zip": "437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325",
}
NATIVE_SIZE = 105
_BACKGROUND_LAYOUT = "<root>/<alphabet>/<character>/<id>.png (as in images_background_small1.zip)"
_RUNS_LAYOUT = "runNN/training/classNN.png, runNN/test/itemNN.png and runNN/class_labels.txt (as in all_runs.zip)"


@dataclass(frozen=True)
class OmniglotImages:
    """A labelled image set: uint8 images (N, 1, S, S), labels (N,) indexing ``classes``."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]  # "Alphabet/characterNN"
    sources: tuple[str, ...]  # the zips read

    @property
    def alphabets(self) -> tuple[str, ...]:
        return tuple(sorted({c.split("/")[0] for c in self.classes}))

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class OneShotRuns:
    """N-way one-shot runs: support (R, N, 1, S, S), queries (R, Q, 1, S, S), answers (R, Q).

    ``answers[r, q]`` is the index of the support image of run r that shows query q's character.
    """

    support: Tensor
    queries: Tensor
    answers: Tensor

    @property
    def num_runs(self) -> int:
        return int(self.support.shape[0])

    @property
    def n_way(self) -> int:
        return int(self.support.shape[1])


def decode_image(raw: bytes, image_size: int = NATIVE_SIZE, name: str = "<bytes>") -> np.ndarray:
    """PNG bytes -> greyscale uint8 (S, S), box-downsampled to ``image_size``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as img:
            grey = img.convert("L")
            if grey.size != (image_size, image_size):
                grey = grey.resize((image_size, image_size), Image.Resampling.BOX)
            return np.asarray(grey, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{name}: not a readable image ({exc})") from exc


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or not 4 <= image_size <= NATIVE_SIZE:
        raise ValueError(f"image_size={image_size!r}: give a whole number of pixels in 4..{NATIVE_SIZE} (e.g. 35 or 52)")


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a zip file ({exc})") from exc


def _background_entries(path: Path, archive: zipfile.ZipFile) -> dict[tuple[str, str], list[str]]:
    """(alphabet, character) -> sorted member names, checking the layout."""
    chars: dict[tuple[str, str], list[str]] = {}
    for member in archive.namelist():
        if member.endswith("/") or member.startswith("__MACOSX/") or member.rsplit("/", 1)[-1].startswith("."):
            continue
        parts = member.split("/")
        if len(parts) != 4 or not parts[3].lower().endswith(".png"):
            raise DataError(f"{path}: entry {member!r} is not in Omniglot's layout; expected {_BACKGROUND_LAYOUT}")
        chars.setdefault((parts[1], parts[2]), []).append(member)
    if not chars:
        raise DataError(f"{path}: holds no images; expected {_BACKGROUND_LAYOUT}")
    roots = {m.split("/")[0] for names in chars.values() for m in names}
    if len(roots) != 1:
        raise DataError(f"{path}: {len(roots)} top-level folders {sorted(roots)}; expected {_BACKGROUND_LAYOUT}")
    return {k: sorted(v) for k, v in chars.items()}


def read_background(zips: Sequence[str | os.PathLike], image_size: int = NATIVE_SIZE) -> OmniglotImages:
    """Read background zips as one dataset; a character in several zips is counted once.

    Classes are sorted by (alphabet, character); images within a class by file name.
    """
    _check_size(image_size)
    if not zips:
        raise ValueError("zips: give at least one background zip, e.g. images_background_small1.zip")
    found: dict[tuple[str, str], tuple[Path, zipfile.ZipFile, list[str]]] = {}
    opened = []
    try:
        for z in zips:
            path = Path(z)
            archive = _open_zip(path)
            opened.append(archive)
            for key, members in _background_entries(path, archive).items():
                found.setdefault(key, (path, archive, members))  # first zip wins; duplicates are identical
        images, labels, classes = [], [], []
        for label, key in enumerate(sorted(found)):
            path, archive, members = found[key]
            classes.append(f"{key[0]}/{key[1]}")
            for m in members:
                images.append(decode_image(archive.read(m), image_size, f"{path}:{m}"))
                labels.append(label)
    finally:
        for archive in opened:
            archive.close()
    stacked = torch.from_numpy(np.stack(images)[:, None])  # (N, 1, S, S)
    return OmniglotImages(stacked, torch.tensor(labels, dtype=torch.int64), tuple(classes), tuple(str(z) for z in zips))


_RUN_LINE = re.compile(r"^(run\d+)/test/(item\d+\.png)\s+(run\d+)/training/(class\d+\.png)$")


def read_runs(path: str | os.PathLike, image_size: int = NATIVE_SIZE) -> OneShotRuns:
    """Read the official one-shot runs (``all_runs.zip``), in run order."""
    _check_size(image_size)
    path = Path(path)
    with _open_zip(path) as archive:
        names = set(archive.namelist())
        runs = sorted({n.split("/")[0] for n in names if re.match(r"^run\d+/", n)})
        if not runs:
            raise DataError(f"{path}: no runNN/ folders; expected {_RUNS_LAYOUT}")
        supports, queries, answers = [], [], []
        for run in runs:
            labels_name = f"{run}/class_labels.txt"
            if labels_name not in names:
                raise DataError(f"{path}: missing {labels_name}; expected {_RUNS_LAYOUT}")
            support_names = sorted(n for n in names if re.match(rf"^{run}/training/class\d+\.png$", n))
            if not support_names:
                raise DataError(f"{path}: {run}/training/ holds no classNN.png; expected {_RUNS_LAYOUT}")
            position = {n: i for i, n in enumerate(support_names)}
            q_names, q_answers = [], []
            for line in archive.read(labels_name).decode().splitlines():
                if not line.strip():
                    continue
                match = _RUN_LINE.match(line.strip())
                if match is None or match[1] != run or match[3] != run:
                    raise DataError(f"{path}: {labels_name}: line {line!r} is not 'runNN/test/itemNN.png runNN/training/classNN.png'")
                query, support = f"{run}/test/{match[2]}", f"{run}/training/{match[4]}"
                if query not in names or support not in position:
                    raise DataError(f"{path}: {labels_name} names {query} / {support}, which the zip does not hold")
                q_names.append(query)
                q_answers.append(position[support])
            decode = lambda n: decode_image(archive.read(n), image_size, f"{path}:{n}")
            supports.append(np.stack([decode(n) for n in support_names]))
            queries.append(np.stack([decode(n) for n in q_names]))
            answers.append(q_answers)
    if len({s.shape[0] for s in supports}) != 1 or len({q.shape[0] for q in queries}) != 1:
        raise DataError(f"{path}: runs differ in their number of support images or queries")
    return OneShotRuns(
        torch.from_numpy(np.stack(supports)[:, :, None]),  # (R, N, 1, S, S)
        torch.from_numpy(np.stack(queries)[:, :, None]),  # (R, Q, 1, S, S)
        torch.tensor(answers, dtype=torch.int64),  # (R, Q)
    )


def locate(files: Sequence[str], data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first of `data.search_dirs("omniglot", data_dir)` holding all ``files``, or None."""
    for folder in search_dirs("omniglot", data_dir):
        if all((folder / f).is_file() for f in files):
            return folder
    return None


def download(
    files: Sequence[str] = FULL_BACKGROUND + EVALUATION + (RUNS_ZIP,),
    *,
    root: str | os.PathLike | None = None,
    base_url: str = BASE_URL,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Fetch Omniglot zips into ``root`` (default ``~/.cache/ensemblekit/omniglot``).

    ``base_url`` may be a ``file://`` mirror. Each file is checked against its SHA-256 where
    known (`SHA256`) and always for Omniglot's layout; a file that fails is not kept. Files
    already present and valid are not fetched again.
    """
    folder = Path(root) if root is not None else cache_dir() / "omniglot"
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        target = folder / name
        if target.exists() and _valid(target, name):
            continue
        url = base_url.rstrip("/") + "/" + name
        if progress:
            progress(f"downloading {url}")
        fetch(url, target, check=lambda path, n=name, u=url: _check_download(path, n, u))
    return folder


def _check_download(path: Path, name: str, url: str) -> None:
    if name in SHA256:
        check_digest(path, url, "sha256", SHA256[name])
    _check_layout(path, name)


def _check_layout(path: Path, name: str) -> None:
    with _open_zip(path) as archive:
        if name == RUNS_ZIP:
            if not any(re.match(r"^run\d+/class_labels\.txt$", n) for n in archive.namelist()):
                raise DataError(f"{name}: no runNN/class_labels.txt; expected {_RUNS_LAYOUT}")
        else:
            _background_entries(Path(name), archive)


def _valid(path: Path, name: str) -> bool:
    if name in SHA256:
        return file_digest(path, "sha256") == SHA256[name]
    try:
        _check_layout(path, name)
    except DataError:
        return False
    return True
