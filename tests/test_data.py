"""Tests for cljax.data: IDX/CIFAR readers, search order, errors and the download path (all offline)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from cljax.data import (
    DATASETS,
    CorruptDataError,
    DataNotFoundError,
    Dataset,
    cache_dir,
    load_dataset,
    locate,
    tfds_source,
)
from cljax.data import download as dl
from cljax.data.cifar import read_cifar_file
from cljax.data.idx import IDX_FILES, read_images, read_labels

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- file writers


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array as IDX (magic 0x0000080<ndim>, big-endian dims)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_folder(folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = True, seed: int = 0) -> dict:
    """Write the four MNIST IDX files into ``folder``; return the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for base, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{base}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / base).write_bytes(data)
    return arrays


def cifar_records(x: np.ndarray, *labels: np.ndarray) -> bytes:
    """Official binary records: label byte(s) then R, G, B planes of 32x32, row-major."""
    planes = x.transpose(0, 3, 1, 2).reshape(len(x), 3072)
    return np.concatenate([np.stack(labels, axis=1).astype(np.uint8), planes], axis=1).tobytes()


def random_images(n: int) -> np.ndarray:
    return RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def write_cifar10_folder(folder: Path, per_batch: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Write a tiny cifar-10-batches-bin folder; return the training (x, y) written."""
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = random_images(per_batch), RNG.integers(0, 10, per_batch)
        (folder / f"data_batch_{i}.bin").write_bytes(cifar_records(x, y))
        xs.append(x)
        ys.append(y)
    (folder / "test_batch.bin").write_bytes(cifar_records(random_images(3), RNG.integers(0, 10, 3)))
    return np.concatenate(xs), np.concatenate(ys)


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Point every search location at empty folders under tmp_path; no tfds, no real network."""
    monkeypatch.setenv("CLJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CLJAX_DATA_DIR", raising=False)
    monkeypatch.setattr(locate, "SYSTEM_DATASETS_DIR", tmp_path / "usr-share-datasets")
    monkeypatch.setattr(tfds_source, "is_available", lambda: False)
    monkeypatch.setattr(dl, "MIRRORS", {name: () for name in DATASETS})
    monkeypatch.setattr(dl, "PROGRESS", False)
    return tmp_path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path):
    """Serve tmp_path/'www' on 127.0.0.1; yields (folder, base_url)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    arrays = write_idx_folder(tmp_path / "mnist", gz=gz)
    ds = load_dataset("mnist", data_dir=tmp_path, download=False)
    assert isinstance(ds, Dataset) and ds.name == "mnist" and ds.num_classes == 10
    assert ds.train_x.shape == (6, 28, 28, 1) and ds.train_x.dtype == np.uint8
    assert ds.train_y.dtype == np.int32 and ds.test_x.shape == (4, 28, 28, 1)
    np.testing.assert_array_equal(ds.train_x[..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.train_y, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.test_x[..., 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.test_y, arrays["t10k-labels-idx1-ubyte"])


def test_real_mnist_loads():
    mnist = SHARED_DATA / "mnist"
    if not all((mnist / f"{base}.gz").is_file() for base in IDX_FILES):
        pytest.skip(f"real MNIST IDX files not present at {mnist}")
    ds = load_dataset("mnist", data_dir=SHARED_DATA, download=False)
    assert ds.train_x.shape == (60000, 28, 28, 1) and ds.test_x.shape == (10000, 28, 28, 1)
    assert ds.train_x.dtype == np.uint8 and ds.train_y.shape == (60000,) and ds.test_y.shape == (10000,)
    assert set(np.unique(ds.train_y)) == set(range(10)) and set(np.unique(ds.test_y)) == set(range(10))
    # data_dir may also be the dataset folder itself
    assert load_dataset("mnist", data_dir=mnist, download=False).test_x.shape == (10000, 28, 28, 1)


def test_idx_truncated(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    full = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    path.write_bytes(gzip.compress(full[:-100]))
    with pytest.raises(CorruptDataError, match="truncated") as err:
        read_images(path)
    assert path.name in str(err.value)
    assert f"expected {len(full)} bytes" in str(err.value) and f"got {len(full) - 100}" in str(err.value)


def test_idx_bad_magic(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.zeros((2, 28, 28), np.uint8)))  # an image file where labels belong
    with pytest.raises(CorruptDataError, match="magic") as err:
        read_labels(path)
    assert path.name in str(err.value)


@pytest.mark.parametrize("damage", ["not gzip", "cut stream"])
def test_idx_bad_gzip(tmp_path, damage):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    good = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8) % 10))
    path.write_bytes(b"this is not gzip data" if damage == "not gzip" else good[: len(good) // 2])
    with pytest.raises(CorruptDataError, match="gzip") as err:
        read_labels(path)
    assert path.name in str(err.value)


def test_idx_count_mismatch(tmp_path):
    write_idx_folder(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(7, np.uint8)))
    )
    with pytest.raises(CorruptDataError, match="4 images but"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


# ---------------------------------------------------------------- CIFAR reader


def test_cifar10_round_trip(isolated):
    x, y = write_cifar10_folder(isolated / "root" / "cifar-10-batches-bin")
    ds = load_dataset("cifar10", data_dir=isolated / "root", download=False)
    assert ds.name == "cifar10" and ds.num_classes == 10
    assert ds.train_x.shape == (10, 32, 32, 3) and ds.train_x.dtype == np.uint8
    assert ds.train_y.dtype == np.int32
    assert ds.test_x.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(ds.train_x, x)
    np.testing.assert_array_equal(ds.train_y, y)


def test_cifar_pixel_layout(tmp_path):
    """Record byte 1 + c*1024 + r*32 + col is pixel (r, col) of channel c (R, G, B planes)."""
    record = np.zeros(3073, np.uint8)
    record[0] = 7
    record[1 + 0 * 1024 + 2 * 32 + 5] = 11  # R at row 2, column 5
    record[1 + 2 * 1024 + 31 * 32 + 0] = 22  # B at row 31, column 0
    (tmp_path / "b.bin").write_bytes(record.tobytes())
    x, y = read_cifar_file(tmp_path / "b.bin", (10,))
    assert y.tolist() == [7] and x[0, 2, 5, 0] == 11 and x[0, 31, 0, 2] == 22 and x.sum() == 33


def test_cifar100_round_trip(isolated):
    folder = isolated / "root" / "cifar-100-binary"
    folder.mkdir(parents=True)
    x, fine, coarse = random_images(5), RNG.integers(0, 100, 5), RNG.integers(0, 20, 5)
    (folder / "train.bin").write_bytes(cifar_records(x, coarse, fine))
    (folder / "test.bin").write_bytes(cifar_records(x[:2], coarse[:2], fine[:2]))
    ds = load_dataset("cifar100", data_dir=isolated / "root", download=False)
    assert ds.num_classes == 100 and ds.train_x.shape == (5, 32, 32, 3) and ds.test_y.shape == (2,)
    np.testing.assert_array_equal(ds.train_x, x)
    np.testing.assert_array_equal(ds.train_y, fine)  # fine labels, not coarse


def test_cifar_truncated(isolated):
    folder = isolated / "root" / "cifar-10-batches-bin"
    write_cifar10_folder(folder)
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptDataError, match="data_batch_3.bin") as err:
        load_dataset("cifar10", data_dir=isolated / "root", download=False)
    assert "3073" in str(err.value) and str(2 * 3073 - 10) in str(err.value)


def test_cifar_label_out_of_range(tmp_path):
    (tmp_path / "t.bin").write_bytes(cifar_records(random_images(2), np.array([3, 10])))
    with pytest.raises(CorruptDataError, match="t.bin"):
        read_cifar_file(tmp_path / "t.bin", (10,))


# ---------------------------------------------------------------- search order & errors


def test_unknown_name():
    with pytest.raises(ValueError, match="mnist, fashion_mnist, cifar10, cifar100"):
        load_dataset("imagenet")


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CLJAX_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CLJAX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "cljax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "cljax"


def test_missing_lists_every_place(isolated, monkeypatch):
    monkeypatch.setenv("CLJAX_DATA_DIR", str(isolated / "envroot"))
    explicit = isolated / "explicit"
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion_mnist", data_dir=explicit, download=False)
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    for place in [
        explicit / "fashion_mnist",
        isolated / "envroot" / "fashion_mnist",
        isolated / "cache" / "fashion_mnist",
        isolated / "usr-share-datasets" / "fashion-mnist",
        isolated / "usr-share-datasets" / "fashion_mnist",
    ]:
        assert str(place) in message
    for hint in ["CLJAX_DATA_DIR", "--data-dir", "prepare.py", "apt-get install dataset-fashion-mnist"]:
        assert hint in message
    assert "cljax[tfds]" in message and "download=False" in message
    assert len(err.value.attempts) >= 6


def test_default_system_paths():
    folders = [str(f) for _, f in locate.candidate_folders("fashion_mnist")]
    assert "/usr/share/datasets/fashion-mnist" in folders and "/usr/share/datasets/fashion_mnist" in folders


def test_system_folder_is_dataset_folder(isolated):
    write_idx_folder(isolated / "usr-share-datasets" / "fashion-mnist", gz=False)
    ds = load_dataset("fashion_mnist", download=False)
    assert ds.name == "fashion_mnist" and ds.train_x.shape == (6, 28, 28, 1)


def test_incomplete_folder_is_reported(isolated):
    write_idx_folder(isolated / "root" / "mnist")
    (isolated / "root" / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\]"):
        load_dataset("mnist", data_dir=isolated / "root", download=False)


def test_search_order(isolated, monkeypatch):
    write_idx_folder(isolated / "explicit" / "mnist", n_train=1)
    write_idx_folder(isolated / "envroot" / "mnist", n_train=2)
    write_idx_folder(isolated / "cache" / "mnist", n_train=3)
    monkeypatch.setenv("CLJAX_DATA_DIR", str(isolated / "envroot"))
    assert len(load_dataset("mnist", data_dir=isolated / "explicit", download=False).train_x) == 1
    assert len(load_dataset("mnist", download=False).train_x) == 2
    monkeypatch.delenv("CLJAX_DATA_DIR")
    assert len(load_dataset("mnist", download=False).train_x) == 3


def test_corrupt_copy_is_not_skipped(isolated):
    write_idx_folder(isolated / "cache" / "mnist")  # a good copy later in the search order
    write_idx_folder(isolated / "explicit" / "mnist")
    (isolated / "explicit" / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(CorruptDataError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", data_dir=isolated / "explicit", download=False)


# ---------------------------------------------------------------- download path


def serve_mnist(www: Path, monkeypatch, base_url: str) -> dict:
    arrays = write_idx_folder(www)
    monkeypatch.setattr(dl, "MIRRORS", {**dl.MIRRORS, "mnist": (base_url,)})
    checksums = {f"{base}.gz": md5(www / f"{base}.gz") for base in IDX_FILES}
    monkeypatch.setattr(dl, "CHECKSUMS", {**dl.CHECKSUMS, "mnist": checksums})
    return arrays


def test_download_idx(isolated, http_dir, monkeypatch):
    www, url = http_dir
    arrays = serve_mnist(www, monkeypatch, url)
    ds = load_dataset("mnist")
    np.testing.assert_array_equal(ds.train_x[..., 0], arrays["train-images-idx3-ubyte"])
    cached = sorted(p.name for p in (isolated / "cache" / "mnist").iterdir())
    assert cached == sorted(f"{base}.gz" for base in IDX_FILES)  # no .part files left
    # the second call finds the cached copy without the server
    monkeypatch.setattr(dl, "MIRRORS", {**dl.MIRRORS, "mnist": ()})
    assert load_dataset("mnist").test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_download_falls_back_to_next_mirror(isolated, http_dir, monkeypatch):
    www, url = http_dir
    serve_mnist(www, monkeypatch, url)
    monkeypatch.setattr(dl, "MIRRORS", {**dl.MIRRORS, "mnist": (url + "missing/", url)})
    assert load_dataset("mnist").train_x.shape == (6, 28, 28, 1)


def test_download_checksum_mismatch(isolated, http_dir, monkeypatch):
    www, url = http_dir
    serve_mnist(www, monkeypatch, url)
    bad = dict(dl.CHECKSUMS["mnist"], **{"t10k-images-idx3-ubyte.gz": "0" * 32})
    monkeypatch.setattr(dl, "CHECKSUMS", {**dl.CHECKSUMS, "mnist": bad})
    with pytest.raises(CorruptDataError, match="checksum mismatch") as err:
        load_dataset("mnist")
    assert "t10k-images-idx3-ubyte.gz" in str(err.value)
    cached = {p.name for p in (isolated / "cache" / "mnist").iterdir()}
    assert "t10k-images-idx3-ubyte.gz" not in cached and not any(n.endswith(".part") for n in cached)


def test_download_unreachable(isolated, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    monkeypatch.setattr(dl, "MIRRORS", {**dl.MIRRORS, "mnist": (url,)})
    monkeypatch.setattr(dl, "TIMEOUT_S", 5.0)
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist")
    message = str(err.value)
    assert f"{url}train-images-idx3-ubyte.gz" in message and "download" in message
    assert not any(p.name.endswith(".part") for p in (isolated / "cache").rglob("*"))
    assert not (isolated / "cache" / "mnist").exists()  # no empty folder left behind


def test_attempts_are_listed_in_search_order(isolated, monkeypatch):
    monkeypatch.delenv("CLJAX_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", data_dir=isolated / "nowhere", download=False)
    labels = [a.split(":")[0] for a in err.value.attempts]
    assert labels[:4] == ["data_dir", "data_dir (as the dataset folder)", "$CLJAX_DATA_DIR", "cache_dir()"]


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_download_cifar_archive(isolated, http_dir, monkeypatch):
    www, url = http_dir
    staging = www / "staging" / "cifar-10-batches-bin"
    x, y = write_cifar10_folder(staging)
    archive = www / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(staging.iterdir()):
            add_file(tar, f"cifar-10-batches-bin/{path.name}", path.read_bytes())
        add_file(tar, "../escaped.txt", b"x")  # unsafe members must be ignored
        add_file(tar, "cifar-10-batches-bin/../../escaped2.txt", b"x")
        add_file(tar, "/tmp/cljax-absolute-escape.txt", b"x")
        link = tarfile.TarInfo("cifar-10-batches-bin/link.bin")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    monkeypatch.setattr(dl, "MIRRORS", {**dl.MIRRORS, "cifar10": (url,)})
    monkeypatch.setattr(dl, "CHECKSUMS", {**dl.CHECKSUMS, "cifar10": {archive.name: md5(archive)}})
    ds = load_dataset("cifar10")
    np.testing.assert_array_equal(ds.train_x, x)
    np.testing.assert_array_equal(ds.train_y, y)
    cache = isolated / "cache"
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-batches-bin"]  # tarball removed
    assert not (cache / "cifar-10-batches-bin" / "link.bin").exists()
    assert not list(isolated.rglob("escaped*.txt")) and not Path("/tmp/cljax-absolute-escape.txt").exists()
