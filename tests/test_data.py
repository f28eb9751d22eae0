"""ensemblekit.data: the IDX and CIFAR-10 readers against files written here with `struct`, the
dataset registry and look-up, downloads from file:// URLs, and the in-memory batch iterator."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import cifar_bytes, idx_bytes, make_idx_arrays, write_idx, write_idx_dataset
from ensemblekit import data
from ensemblekit.data import Batches, DataError, RemoteFile

# ----------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize(
    "dtype, shape",
    [
        (np.uint8, (5, 4, 3)),
        (np.int8, (7,)),
        (np.int16, (3, 2)),
        (np.int32, (2, 3, 2, 2)),
        (np.float32, (4, 5)),
        (np.float64, (6,)),
    ],
)
def test_idx_round_trip(tmp_path, gz, dtype, shape):
    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind == "f":
        array = rng.standard_normal(shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    path = write_idx(tmp_path / ("x.idx.gz" if gz else "x.idx"), array)
    got = data.read_idx(path)
    assert got.dtype == np.dtype(dtype)  # native byte order, same kind and size
    assert got.shape == shape
    np.testing.assert_array_equal(got, array)


def _corrupt(kind: str) -> bytes:
    good = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    if kind == "wrong magic":
        return b"\x01\x02" + good[2:]
    if kind == "unknown type code":
        return good[:2] + b"\x07" + good[3:]
    if kind == "zero dims":
        return good[:3] + b"\x00"
    if kind == "too many dims":
        return struct.pack(">BBBB", 0, 0, 8, 70) + struct.pack(">70I", *[1] * 70) + b"\x00"
    if kind == "dims that overflow int64":  # 2^31 * 2^31 * 4 = 2^64 wraps to 0 in int64 arithmetic
        return struct.pack(">BBBB3I", 0, 0, 8, 3, 2**31, 2**31, 4)
    if kind == "shorter than the magic":
        return good[:3]
    if kind == "truncated header":
        return good[:9]
    if kind == "truncated data":
        return good[:-1]
    if kind == "trailing bytes":
        return good + b"\x00\x00"
    if kind == "empty":
        return b""
    raise AssertionError(kind)


CORRUPTIONS = [
    "wrong magic", "unknown type code", "zero dims", "too many dims", "dims that overflow int64",
    "shorter than the magic", "truncated header", "truncated data", "trailing bytes", "empty",
]


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_idx_raises_data_error_naming_the_file(tmp_path, kind, gz):
    raw = _corrupt(kind)
    path = tmp_path / ("broken-images-idx3-ubyte.gz" if gz else "broken-images-idx3-ubyte")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError) as excinfo:
        data.read_idx(path)
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize("kind", ["wrong magic", "truncated data", "trailing bytes"])
def test_corruption_messages_say_what_is_wrong(kind):
    words = {"wrong magic": "magic", "truncated data": "truncated", "trailing bytes": "trailing"}
    with pytest.raises(DataError, match=words[kind]):
        data.parse_idx(_corrupt(kind), "blob")


def _bad_gzip(kind: str) -> bytes:
    packed = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))
    if kind == "not gzip at all":
        return b"this is not gzip" * 4
    if kind == "corrupt deflate stream":  # valid gzip header, garbage where the blocks are
        return packed[:10] + b"\xff" * 20 + packed[30:]
    if kind == "truncated gzip":
        return packed[: len(packed) // 2]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["not gzip at all", "corrupt deflate stream", "truncated gzip"])
def test_bad_gzip_raises_data_error_naming_the_file(tmp_path, kind):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(_bad_gzip(kind))
    with pytest.raises(DataError) as excinfo:
        data.read_idx(path)
    assert str(path) in str(excinfo.value)


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        data.read_idx(tmp_path / "nope.gz")


# Random bytes, plus byte strings that start like a real IDX header so the fuzzing gets past the
# magic number into the dims / length checks.
_idx_like = st.builds(
    lambda code, ndim, dims, payload: bytes([0, 0, code, ndim]) + b"".join(struct.pack(">I", d) for d in dims) + payload,
    st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07]),
    st.integers(0, 80),
    st.lists(st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1)), max_size=80),
    st.binary(max_size=64),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=128), _idx_like))
def test_parse_idx_on_random_bytes_raises_only_data_error(raw):
    try:
        array = data.parse_idx(raw, "fuzz")
    except DataError:
        return
    # whatever parsed must be exactly what the header says
    assert array.ndim == raw[3]
    assert 4 + 4 * array.ndim + array.nbytes == len(raw)


def test_parse_idx_zero_dim_beside_huge_dims_is_a_data_error():
    """Found by the fuzz test: the product is 0, so the size checks pass, but numpy refuses the shape."""
    dims = [0, 0, 2, 2, 3, 3, 3, 4, 407, 91963, 0x22000000]  # nonzero product ~2e18 * 4 bytes: too big
    raw = bytes([0, 0, 0x08, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    with pytest.raises(DataError, match="do not describe an array"):
        data.parse_idx(raw, "fuzz")


_VALID_GZ = gzip.compress(idx_bytes(np.arange(300, dtype=np.uint8).reshape(3, 10, 10)), mtime=0)
# a valid .gz with a few bytes overwritten and possibly cut short: damage past the gzip header
_damaged_gz = st.builds(
    lambda edits, cut: bytes(
        b if i not in dict(edits) else dict(edits)[i] for i, b in enumerate(_VALID_GZ)
    )[:cut],
    st.lists(st.tuples(st.integers(0, len(_VALID_GZ) - 1), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, len(_VALID_GZ)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=256), _damaged_gz))
def test_read_idx_on_random_gz_files_raises_only_data_error(tmp_path, raw):
    path = tmp_path / "fuzz.gz"
    path.write_bytes(raw)
    try:
        data.read_idx(path)
    except DataError as exc:
        assert str(path) in str(exc)


# ----------------------------------------------------------------------------- CIFAR-10 reader


def _cifar_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def test_cifar10_reader_round_trip(tmp_path):
    images, labels = _cifar_arrays(4)
    images[1, 0, 0, 0], images[1, 1, 0, 0], images[1, 2, 31, 31] = 11, 22, 33  # R, G, B planes in order
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(cifar_bytes(images, labels))
    got_images, got_labels = data.read_cifar10_bin(path)
    assert got_images.shape == (4, 3, 32, 32) and got_images.dtype == np.uint8
    assert got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert (got_images[1, 0, 0, 0], got_images[1, 1, 0, 0], got_images[1, 2, 31, 31]) == (11, 22, 33)


@pytest.mark.parametrize("kind", ["empty", "truncated record", "trailing bytes", "label out of range", "bad gzip"])
def test_corrupt_cifar10_raises_data_error_naming_the_file(tmp_path, kind):
    images, labels = _cifar_arrays(3)
    raw = cifar_bytes(images, labels)
    name = "data_batch_1.bin"
    if kind == "empty":
        raw = b""
    elif kind == "truncated record":
        raw = raw[:-5]
    elif kind == "trailing bytes":
        raw = raw + b"\x00"
    elif kind == "label out of range":
        raw = b"\x0a" + raw[1:]
    elif kind == "bad gzip":
        name += ".gz"
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(DataError) as excinfo:
        data.read_cifar10_bin(path)
    assert str(path) in str(excinfo.value)


def _write_cifar_folder(folder: Path, per_file: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for seed, name in enumerate([f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]):
        images, labels = _cifar_arrays(per_file, seed)
        (folder / name).write_bytes(cifar_bytes(images, labels))
        written[name] = (images, labels)
    return written


def test_load_cifar10_folder(tmp_path):
    written = _write_cifar_folder(tmp_path / "cifar10")
    splits = data.load("cifar10", data_dir=tmp_path, val_size=0)
    assert splits.image_shape == (3, 32, 32) and splits.classes == data.CIFAR10_CLASSES
    train_images = np.concatenate([written[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(splits.train.images.numpy(), train_images)
    np.testing.assert_array_equal(splits.test.labels.numpy(), written["test_batch.bin"][1])
    assert splits.mean.shape == (3,)


# ----------------------------------------------------------------------------- registry and look-up


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_load_idx_dataset_folder(tmp_path, gz):
    arrays = write_idx_dataset(tmp_path / "mnist", gz=gz)
    splits = data.load("mnist", data_dir=tmp_path, val_size=0.2, seed=3)
    train_images, train_labels = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]

    assert splits.image_shape == (1, 28, 28) and splits.num_classes == 10
    assert (len(splits.train), len(splits.val), len(splits.test)) == (48, 12, 20)
    for part in (splits.train, splits.val, splits.test):
        assert part.images.dtype == torch.uint8 and part.labels.dtype == torch.int64
    np.testing.assert_array_equal(splits.test.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(splits.test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])

    # train + val is a partition of the file's training images, each still with its own label
    both = torch.cat([splits.train.images, splits.val.images])[:, 0].numpy()
    both_labels = torch.cat([splits.train.labels, splits.val.labels]).numpy()
    position = {img.tobytes(): i for i, img in enumerate(train_images)}
    rows = [position[img.tobytes()] for img in both]
    assert sorted(rows) == list(range(60))
    np.testing.assert_array_equal(both_labels, train_labels[rows])

    # normalisation statistics come from the training part only, in [0, 1] units
    fit_part = splits.train.images.numpy().astype(np.float64) / 255.0
    np.testing.assert_allclose(splits.mean.numpy(), [fit_part.mean()], rtol=1e-6)
    np.testing.assert_allclose(splits.std.numpy(), [fit_part.std(ddof=1)], rtol=1e-5)
    expected = (arrays["t10k-images-idx3-ubyte"][:, None] / 255.0 - fit_part.mean()) / fit_part.std(ddof=1)
    np.testing.assert_allclose(splits.inputs("test").numpy(), expected, rtol=1e-5, atol=1e-5)


def test_val_split_is_seeded_and_sized(tmp_path):
    write_idx_dataset(tmp_path)  # the folder itself, not <dir>/mnist
    a = data.load("mnist", data_dir=tmp_path, val_size=7, seed=0)
    b = data.load("mnist", data_dir=tmp_path, val_size=7, seed=0)
    c = data.load("mnist", data_dir=tmp_path, val_size=7, seed=1)
    assert len(a.val) == 7 and len(a.train) == 53
    assert torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)
    assert len(data.load("mnist", data_dir=tmp_path).val) == 6  # default 10%
    assert len(data.load("mnist", data_dir=tmp_path, val_size=0).val) == 0


@pytest.mark.parametrize("val_size", [-0.1, 60, 61, 2.5, "10"])
def test_bad_val_size_is_a_value_error(tmp_path, val_size):
    write_idx_dataset(tmp_path)
    with pytest.raises(ValueError, match="val_size"):
        data.load("mnist", data_dir=tmp_path, val_size=val_size)


def test_env_var_folder_is_searched(tmp_path, monkeypatch):
    write_idx_dataset(tmp_path / "kmnist")
    monkeypatch.setenv("ENSEMBLEKIT_DATA", str(tmp_path))
    splits = data.load("kmnist")
    assert splits.source == str(tmp_path / "kmnist") and splits.classes == data.KMNIST_CLASSES


@pytest.mark.parametrize(
    "stem, array, problem",
    [
        ("train-images-idx3-ubyte", np.zeros((60, 784), np.uint8), "3-D"),  # wrong dims
        ("train-labels-idx1-ubyte", np.zeros(59, np.uint8), "59 labels"),  # images / labels mismatch
        ("train-labels-idx1-ubyte", np.full(60, 10, np.uint8), "labels outside"),
        ("train-images-idx3-ubyte", np.zeros((60, 28, 28), np.int16), "unsigned bytes"),
    ],
)
def test_inconsistent_idx_dataset_raises_data_error(tmp_path, stem, array, problem):
    arrays = make_idx_arrays()
    arrays[stem] = array
    write_idx_dataset(tmp_path, arrays)
    with pytest.raises(DataError, match=problem) as excinfo:
        data.load("mnist", data_dir=tmp_path)
    assert str(tmp_path) in str(excinfo.value)


def test_corrupt_file_in_dataset_names_the_file(tmp_path):
    write_idx_dataset(tmp_path)
    broken = tmp_path / "t10k-labels-idx1-ubyte.gz"
    broken.write_bytes(gzip.compress(gzip.decompress(broken.read_bytes())[:-3]))
    with pytest.raises(DataError, match="truncated") as excinfo:
        data.load("mnist", data_dir=tmp_path)
    assert str(broken) in str(excinfo.value)


def test_missing_files_error_says_where_and_how(tmp_path):
    write_idx_dataset(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()  # three of four files is not a dataset
    with pytest.raises(DataError) as excinfo:
        data.load("mnist", data_dir=tmp_path)
    message = str(excinfo.value)
    for folder in data.search_dirs("mnist", tmp_path):
        assert str(folder) in message
    assert "ENSEMBLEKIT_DATA" in message and "--download" in message


def test_missing_fashion_mnist_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "locate", lambda name, data_dir=None: None)  # even if Debian's copy is installed
    with pytest.raises(DataError) as excinfo:
        data.load("fashion-mnist", data_dir=tmp_path)
    message = str(excinfo.value)
    assert "dataset-fashion-mnist" in message and "/usr/share/datasets/fashion-mnist" in message


def test_search_order(tmp_path, isolated_data_env):
    dirs = data.search_dirs("mnist", tmp_path)
    assert dirs == [
        tmp_path, tmp_path / "mnist", isolated_data_env / "data" / "mnist",
        Path("/usr/share/datasets/mnist"), isolated_data_env / "cache" / "ensemblekit" / "mnist",
    ]


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError) as excinfo:
        data.load("imagenet")
    message = str(excinfo.value)
    assert "imagenet" in message
    for name in data.DATASETS:
        assert name in message


def test_digits_is_built_in():
    splits = data.load("digits")
    assert splits.image_shape == (1, 8, 8) and splits.num_classes == 10
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert splits.train.images.dtype == torch.uint8 and int(splits.train.images.max()) == 255
    assert data.locate("digits") is None


# ----------------------------------------------------------------------------- downloads (file:// URLs)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def local_mirror(tmp_path, monkeypatch):
    """mnist's registry entry pointed at gzipped IDX files under tmp_path/mirror."""
    mirror = tmp_path / "mirror"
    arrays = write_idx_dataset(mirror)
    remote = tuple(
        RemoteFile(f"{stem}.gz", (mirror / f"{stem}.gz").as_uri(), _md5(mirror / f"{stem}.gz")) for stem in arrays
    )
    monkeypatch.setitem(data.DATASETS, "mnist", dataclasses.replace(data.DATASETS["mnist"], remote=remote))
    return mirror, arrays


def test_download_from_file_urls(tmp_path, local_mirror):
    mirror, arrays = local_mirror
    folder = data.download("mnist", root=tmp_path / "got")
    for stem in arrays:
        assert (folder / f"{stem}.gz").read_bytes() == (mirror / f"{stem}.gz").read_bytes()
    assert not list(folder.glob("*.part"))
    # files already there with the right checksum are not fetched again
    (mirror / "t10k-images-idx3-ubyte.gz").unlink()
    assert data.download("mnist", root=tmp_path / "got") == folder


def test_load_downloads_into_the_cache_when_asked(local_mirror, isolated_data_env):
    _, arrays = local_mirror
    with pytest.raises(DataError, match="not found"):
        data.load("mnist")
    splits = data.load("mnist", download_missing=True, val_size=0)
    assert splits.source == str(isolated_data_env / "cache" / "ensemblekit" / "mnist")
    np.testing.assert_array_equal(splits.test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_wrong_checksum_raises_and_leaves_nothing_behind(tmp_path, local_mirror, monkeypatch):
    info = data.DATASETS["mnist"]
    bad = dataclasses.replace(info.remote[0], md5="0" * 32)
    monkeypatch.setitem(data.DATASETS, "mnist", dataclasses.replace(info, remote=(bad,) + info.remote[1:]))
    target = tmp_path / "got"
    with pytest.raises(DataError, match="MD5") as excinfo:
        data.download("mnist", root=target)
    assert bad.url in str(excinfo.value)
    assert list(target.iterdir()) == []


def test_unreachable_url_raises_data_error(tmp_path, monkeypatch):
    info = data.DATASETS["mnist"]
    gone = RemoteFile("train-images-idx3-ubyte.gz", (tmp_path / "gone.gz").as_uri(), "0" * 32)
    monkeypatch.setitem(data.DATASETS, "mnist", dataclasses.replace(info, remote=(gone,)))
    with pytest.raises(DataError, match="download failed"):
        data.download("mnist", root=tmp_path / "got")
    assert list((tmp_path / "got").iterdir()) == []


def test_download_unpacks_cifar10_archive(tmp_path, monkeypatch):
    source = tmp_path / "src" / "cifar-10-batches-bin"
    written = _write_cifar_folder(source, per_file=2)
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="cifar-10-batches-bin")
    remote = (RemoteFile("cifar-10-binary.tar.gz", archive.as_uri(), _md5(archive)),)
    monkeypatch.setitem(data.DATASETS, "cifar10", dataclasses.replace(data.DATASETS["cifar10"], remote=remote))
    folder = data.download("cifar10", root=tmp_path / "got")
    assert folder == tmp_path / "got" / "cifar-10-batches-bin"
    splits = data.load("cifar10", data_dir=tmp_path / "got", val_size=0)  # found via archive_root
    np.testing.assert_array_equal(splits.test.labels.numpy(), written["test_batch.bin"][1])


def test_builtin_dataset_has_nothing_to_download():
    with pytest.raises(ValueError, match="nothing to download"):
        data.download("digits")


# ----------------------------------------------------------------------------- batches


def _indexed(n: int, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose every pixel is the sample index (mod 256) and labels equal to the index."""
    labels = torch.arange(n)
    images = (labels % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, channels, 2, 2).contiguous()
    return images, labels


def _epoch_labels(batches: Batches, epoch: int) -> list[torch.Tensor]:
    return [y for _, y in batches.epoch(epoch)]


def test_every_sample_exactly_once_per_epoch():
    images, labels = _indexed(103)
    batches = Batches(images, labels, batch_size=10, seed=5)
    assert len(batches) == 11
    for epoch in range(3):
        parts = list(batches.epoch(epoch))
        assert [y.shape[0] for _, y in parts] == [10] * 10 + [3]
        seen = torch.cat([y for _, y in parts])
        assert torch.equal(seen.sort().values, labels)
        for x, y in parts:  # each image travels with its own label
            assert torch.equal((x[:, 0, 0, 0] * 255).round().long(), y % 256)  # default mean 0, std 1


def test_batches_are_deterministic_for_a_seed_and_differ_between_epochs_and_seeds():
    images, labels = _indexed(64)
    a, b = Batches(images, labels, batch_size=16, seed=1), Batches(images, labels, batch_size=16, seed=1)
    for epoch in range(3):
        assert all(torch.equal(p, q) for p, q in zip(_epoch_labels(a, epoch), _epoch_labels(b, epoch)))
    assert not torch.equal(torch.cat(_epoch_labels(a, 0)), torch.cat(_epoch_labels(a, 1)))
    other = Batches(images, labels, batch_size=16, seed=2)
    assert not torch.equal(torch.cat(_epoch_labels(a, 0)), torch.cat(_epoch_labels(other, 0)))
    assert torch.equal(torch.cat(_epoch_labels(a, 0)), torch.cat([y for _, y in a]))  # iter() is epoch 0
    # the order depends on (seed, epoch) alone, not on the global RNG
    torch.manual_seed(123)
    first = torch.cat(_epoch_labels(a, 2))
    torch.manual_seed(456)
    assert torch.equal(first, torch.cat(_epoch_labels(a, 2)))


def test_no_shuffle_keeps_the_order():
    images, labels = _indexed(10)
    got = torch.cat(_epoch_labels(Batches(images, labels, batch_size=3, shuffle=False), 4))
    assert torch.equal(got, labels)


def test_drop_last():
    images, labels = _indexed(10)
    batches = Batches(images, labels, batch_size=4, drop_last=True)
    assert len(batches) == 2
    parts = _epoch_labels(batches, 0)
    assert [p.shape[0] for p in parts] == [4, 4]
    assert torch.cat(parts).unique().numel() == 8
    assert len(Batches(images, labels, batch_size=11, drop_last=True)) == 0


def test_bootstrap_indices_are_used_as_the_epoch_multiset():
    images, labels = _indexed(20)
    bootstrap = torch.randint(0, 20, (20,), generator=torch.Generator().manual_seed(0))
    assert bootstrap.unique().numel() < 20  # has repeats, or the test shows nothing
    batches = Batches(images, labels, batch_size=6, indices=bootstrap, seed=3)
    assert batches.num_samples == 20 and len(batches) == 4
    for epoch in range(2):
        assert torch.equal(torch.cat(_epoch_labels(batches, epoch)).sort().values, bootstrap.sort().values)
    half = Batches(images, labels, batch_size=4, indices=torch.arange(0, 20, 2))
    assert torch.equal(torch.cat(_epoch_labels(half, 0)).sort().values, torch.arange(0, 20, 2))


def test_batches_normalise_and_then_transform():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (12, 3, 4, 4), dtype=np.uint8))
    labels = torch.arange(12)
    mean, std = torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.2, 0.3, 0.4])
    batches = Batches(images, labels, batch_size=5, mean=mean, std=std, seed=0)
    for x, y in batches.epoch(1):
        assert x.dtype == torch.float32
        ref = (images[y].numpy() / 255.0 - mean.numpy()[:, None, None]) / std.numpy()[:, None, None]
        np.testing.assert_allclose(x.numpy(), ref, rtol=1e-5, atol=1e-6)
    flipped = batches.with_options(transform=lambda x: -x)
    for (x, _), (fx, _) in zip(batches.epoch(1), flipped.epoch(1)):
        assert torch.equal(fx, -x)


def test_normalize_matches_numpy_and_leaves_its_input_alone():
    images = torch.tensor([[[[0.0, 51.0], [255.0, 127.5]]]])  # float32 in [0, 255], (1, 1, 2, 2)
    before = images.clone()
    got = data.normalize(images, torch.tensor([0.2]), torch.tensor([0.5]))
    np.testing.assert_allclose(got.numpy(), (before.numpy() / 255.0 - 0.2) / 0.5, rtol=1e-6, atol=1e-6)
    assert torch.equal(images, before)


def test_with_options_shares_tensors_and_keeps_other_options():
    images, labels = _indexed(30)
    batches = Batches(images, labels, batch_size=7, seed=4, drop_last=True)
    copy = batches.with_options(seed=9)
    assert copy.images is batches.images and copy.labels is batches.labels
    assert (copy.batch_size, copy.drop_last, copy.seed) == (7, True, 9)


def test_splits_batches_use_the_dataset_statistics():
    splits = data.load("digits")
    x, y = next(iter(splits.batches("train", batch_size=len(splits.train), shuffle=False)))
    assert torch.allclose(x, splits.inputs("train"))
    assert torch.equal(y, splits.train.labels)


def test_bad_batches_arguments():
    images, labels = _indexed(10)
    with pytest.raises(ValueError, match="batch_size"):
        Batches(images, labels, batch_size=0)
    with pytest.raises(ValueError, match="labels"):
        Batches(images, labels[:5])
