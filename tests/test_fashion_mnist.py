"""Fashion-MNIST loading and class splits, on tiny hand-written IDX files (no download)."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgunlearn.builders.fashion_mnist as fm
from imgunlearn.builders.fashion_mnist import (
    CLASSES,
    ClassSplit,
    export_split_folders,
    find_fashion_mnist,
    load_fashion_mnist,
    read_idx,
    split_classes,
    to_float_images,
)

N_TRAIN, N_TEST = 40, 20
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """The IDX encoding written out by hand: big-endian magic and dims, then uint8 data."""
    header = struct.pack(">I", magic) + b"".join(struct.pack(">i", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(123)
    train_images = rng.integers(0, 256, size=(N_TRAIN, 28, 28), dtype=np.uint8)
    test_images = rng.integers(0, 256, size=(N_TEST, 28, 28), dtype=np.uint8)
    train_images[0] = 0  # known extremes to check the [-1, 1] mapping
    train_images[1] = 255
    return {
        FILES[0]: train_images,
        FILES[1]: (np.arange(N_TRAIN) % 10).astype(np.uint8),
        FILES[2]: test_images,
        FILES[3]: (np.arange(N_TEST) % 10).astype(np.uint8),
    }


def write_dataset(directory: Path, compress: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in synthetic_arrays().items():
        data = idx_bytes(array, 0x803 if array.ndim == 3 else 0x801)
        if compress:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return directory


@pytest.fixture(autouse=True)
def no_real_locations(tmp_path, monkeypatch):
    # Never pick up a real installation or cache: every test controls where data is.
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(fm, "DEFAULT_CACHE_DIR", tmp_path / "no-cache")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("fmnist") / "gz")


# ----------------------------------------------------------------------------- find


def test_find_direct_directory(data_dir):
    assert find_fashion_mnist(data_dir) == data_dir
    assert find_fashion_mnist(str(data_dir)) == data_dir


def test_find_torchvision_layout(tmp_path):
    raw = write_dataset(tmp_path / "tv" / "FashionMNIST" / "raw", compress=False)
    assert find_fashion_mnist(tmp_path / "tv") == raw


def test_find_env_var_then_debian(tmp_path, monkeypatch, data_dir):
    debian = write_dataset(tmp_path / "debian")
    monkeypatch.setattr(fm, "DEBIAN_DIR", debian)
    assert find_fashion_mnist() == debian
    monkeypatch.setenv(fm.ENV_VAR, str(data_dir))
    assert find_fashion_mnist() == data_dir  # the environment variable wins


def test_missing_dataset_explains_how_to_get_it(tmp_path, monkeypatch):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(Path(__file__), partial / FILES[0])  # only one of four files present
    monkeypatch.setenv(fm.ENV_VAR, str(partial))
    with pytest.raises(FileNotFoundError) as err:
        find_fashion_mnist()
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "download=True" in message and "FashionMNIST/raw" in message
    for place in (partial, fm.DEBIAN_DIR, fm.DEFAULT_CACHE_DIR):
        assert str(place) in message
    assert FILES[1] in message  # says what is missing in the partial folder
    with pytest.raises(FileNotFoundError, match="apt-get"):
        load_fashion_mnist("train", root=tmp_path / "nothing-here")


# ----------------------------------------------------------------------------- read_idx


def test_read_idx_gz_and_raw_agree(data_dir, tmp_path):
    raw_dir = write_dataset(tmp_path / "raw", compress=False)
    expected = synthetic_arrays()
    for name in FILES:
        from_gz = read_idx(data_dir / f"{name}.gz")
        from_raw = read_idx(raw_dir / name)
        assert from_gz.dtype == np.uint8 and from_gz.flags.writeable
        np.testing.assert_array_equal(from_gz, expected[name])
        np.testing.assert_array_equal(from_raw, expected[name])


def test_read_idx_rejects_corrupt_files(tmp_path):
    good = idx_bytes(np.zeros((3, 28, 28), np.uint8), 0x803)

    bad_magic = tmp_path / "bad-magic-idx3-ubyte"
    bad_magic.write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(ValueError, match="bad-magic-idx3-ubyte"):
        read_idx(bad_magic)

    labels = tmp_path / "labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.zeros(3, np.uint8), 0x801))
    with pytest.raises(ValueError, match="expected 0x00000803"):
        read_idx(labels, expect_magic=0x803)

    truncated = tmp_path / "short-idx3-ubyte"
    truncated.write_bytes(good[:-5])
    with pytest.raises(ValueError, match="short-idx3-ubyte.*truncated"):
        read_idx(truncated)

    trailing = tmp_path / "long-idx3-ubyte"
    trailing.write_bytes(good + b"xx")
    with pytest.raises(ValueError, match="trailing"):
        read_idx(trailing)

    cut_gzip = tmp_path / "cut-idx3-ubyte.gz"
    cut_gzip.write_bytes(gzip.compress(good)[:-12])
    with pytest.raises(ValueError, match="cut-idx3-ubyte.gz"):
        read_idx(cut_gzip)

    header_only = tmp_path / "tiny"
    header_only.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(header_only)


# ----------------------------------------------------------------------------- load


def test_load_float_images(data_dir):
    images, labels = load_fashion_mnist("train", root=data_dir)
    assert images.shape == (N_TRAIN, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (N_TRAIN,) and labels.dtype == torch.int64
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    assert torch.all(images[0] == -1.0) and torch.all(images[1] == 1.0)
    assert labels.tolist() == [i % 10 for i in range(N_TRAIN)]

    test_images, test_labels = load_fashion_mnist("test", root=data_dir, size=16)
    assert test_images.shape == (N_TEST, 3, 16, 16) and test_labels.shape == (N_TEST,)


def test_load_uint8_and_exact_size(data_dir):
    raw, labels = load_fashion_mnist("test", root=data_dir, as_uint8=True)
    assert raw.shape == (N_TEST, 1, 28, 28) and raw.dtype == torch.uint8
    np.testing.assert_array_equal(raw[:, 0].numpy(), synthetic_arrays()[FILES[2]])
    # At 28 px no resampling happens: the float images are the pixels, rescaled.
    exact, _ = load_fashion_mnist("test", root=data_dir, size=28)
    assert torch.allclose(exact[:, 0], raw[:, 0].float() / 127.5 - 1.0)
    assert torch.equal(to_float_images(raw, 28), exact)


def test_load_rejects_bad_arguments(data_dir):
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", root=data_dir)
    with pytest.raises(ValueError, match="size"):
        load_fashion_mnist("test", root=data_dir, size=0)


def test_failed_download_is_explained(tmp_path, monkeypatch):
    # No network here: stand in for torchvision failing, and check the message only.
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(RuntimeError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path / "dl", download=True)


# ----------------------------------------------------------------------------- split


def many_labels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 10, size=n)


def test_split_partitions_by_class():
    train, test = many_labels(1000, 1), many_labels(300, 2)
    split = split_classes(train, test, forget_classes=(3, 1), proxy_fraction=0.2, seed=5)
    assert isinstance(split, ClassSplit)
    assert split.forget_classes == (1, 3)
    assert split.retain_classes == (0, 2, 4, 5, 6, 7, 8, 9)
    forget, retain = set(split.forget_classes), set(split.retain_classes)

    parts = [set(split.train_forget), set(split.train_retain), set(split.proxy_retain)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert set().union(*parts) == set(range(len(train)))  # nothing lost without max_per_class
    assert set(train[split.train_forget]) <= forget
    assert set(train[split.train_retain]) <= retain
    assert set(train[split.proxy_retain]) <= retain
    for c in split.retain_classes:  # every retain class contributes ~20% proxy
        n = np.sum(train == c)
        assert np.sum(train[split.proxy_retain] == c) == round(0.2 * n)

    # Test indices address the test array and cover exactly its items of each group.
    for name, arr in vars(split).items():
        if isinstance(arr, np.ndarray):
            assert arr.dtype == np.int64 and not arr.flags.writeable, name
    assert split.test_forget.max() < len(test) and split.test_retain.max() < len(test)
    np.testing.assert_array_equal(split.test_forget, np.flatnonzero(np.isin(test, [1, 3])))
    np.testing.assert_array_equal(split.test_retain, np.flatnonzero(~np.isin(test, [1, 3])))


def test_split_is_deterministic_and_subsamples():
    train, test = many_labels(1000, 3), many_labels(300, 4)
    a = split_classes(train, torch.from_numpy(test), seed=7, max_per_class=20)
    b = split_classes(torch.from_numpy(train), test, seed=7, max_per_class=20)
    c = split_classes(train, test, seed=8, max_per_class=20)
    for name in ("train_forget", "train_retain", "proxy_retain", "test_forget", "test_retain"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.train_retain, c.train_retain)
    train_used = train[np.concatenate([a.train_forget, a.train_retain, a.proxy_retain])]
    test_used = test[np.concatenate([a.test_forget, a.test_retain])]
    assert np.bincount(train_used, minlength=10).tolist() == [20] * 10
    assert np.bincount(test_used, minlength=10).tolist() == [20] * 10
    assert len(a.proxy_retain) == 7 * 2  # 10% of 20, for each of the 7 retain classes


def test_split_rejects_bad_forget_classes():
    train, test = many_labels(200, 5), many_labels(50, 6)
    for bad in ((), (10,), (-1,), tuple(range(10)), ("0",), (True,)):
        with pytest.raises(ValueError, match="forget_classes"):
            split_classes(train, test, forget_classes=bad)
    with pytest.raises(ValueError, match="proxy_fraction"):
        split_classes(train, test, proxy_fraction=1.0)
    with pytest.raises(ValueError, match="outside"):
        split_classes(np.array([0, 1, 11]), test)
    with pytest.raises(ValueError, match="no images of forget classes"):
        split_classes(np.array([5, 6, 7]), test, forget_classes=(0,))
    assert len(CLASSES) == 10


# ----------------------------------------------------------------------------- export


def test_export_writes_rgb_pngs_and_resumes(data_dir, tmp_path, monkeypatch):
    raw, labels = load_fashion_mnist("train", root=data_dir, as_uint8=True)
    split = split_classes(labels, labels[:N_TEST], forget_classes=(0, 1), proxy_fraction=0.0)
    out = export_split_folders(raw, labels, split.train_forget, tmp_path / "forget")
    assert out == tmp_path / "forget"
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == sorted(f"{i:05d}_c{int(labels[i])}.png" for i in split.train_forget)
    assert not [p for p in out.iterdir() if p.suffix != ".png"]  # no temp files left
    with Image.open(out / names[0]) as image:
        assert image.mode == "RGB" and image.size == (32, 32)
        pixels = np.asarray(image)
        assert np.array_equal(pixels[..., 0], pixels[..., 1])
    with Image.open(out / "00000_c0.png") as black:  # image 0 is all zeros
        assert np.asarray(black).max() == 0

    # Resume: delete one file; a second run writes only that one.
    (out / names[-1]).unlink()
    written: list[Path] = []
    real_save = fm.save_png_atomic

    def counting_save(image, path):
        written.append(Path(path))
        real_save(image, path)

    monkeypatch.setattr(fm, "save_png_atomic", counting_save)
    export_split_folders(raw, labels, split.train_forget, out)
    assert written == [out / names[-1]]
    written.clear()
    export_split_folders(raw, labels, split.train_forget, out)
    assert written == []

    # Float images (as load_fashion_mnist returns by default) export the same way.
    floats, _ = load_fashion_mnist("train", root=data_dir, size=16)
    export_split_folders(floats, labels, [1], tmp_path / "float", size=16)
    with Image.open(tmp_path / "float" / "00001_c1.png") as white:
        assert white.mode == "RGB" and white.size == (16, 16) and np.asarray(white).min() == 255
