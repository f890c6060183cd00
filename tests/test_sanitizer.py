"""The Sanitizer on real tiny generators and the real MTCNN post-check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from imgunlearn.data.tiling import tile_positions
from imgunlearn.pipelines import SanitizeReport, Sanitizer

from conftest import tiny_generator


@pytest.fixture(scope="module")
def face_finder():
    from imgunlearn.concepts.faces import FaceFinder

    return FaceFinder()


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())  # one face near x 170-230, y 50-130


def random_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_pil_in_pil_out_same_size():
    sanitizer = Sanitizer(tiny_generator("kl"), tile=32, overlap=8)
    image = Image.fromarray((np.random.default_rng(0).random((37, 50, 3)) * 255).astype(np.uint8))
    before = np.asarray(image).copy()
    output = sanitizer(image)
    assert isinstance(output, Image.Image) and output.mode == "RGB"
    assert output.size == image.size
    assert np.array_equal(np.asarray(image), before)  # input untouched
    assert not np.array_equal(np.asarray(output), before)  # the generator did run
    _, report = sanitizer.sanitize_with_report(image)
    assert report.action == "no-check" and report.faces_before is None


def test_tensor_batch_and_list_kinds_agree():
    sanitizer = Sanitizer(tiny_generator("vq"), tile=16, overlap=4, batch_size=3)
    batch = torch.stack([random_image(20, 30, seed) for seed in range(2)])
    original = batch.clone()
    out_batch = sanitizer(batch)
    assert isinstance(out_batch, torch.Tensor) and out_batch.shape == batch.shape
    assert torch.equal(batch, original)
    out_list = sanitizer([batch[0], batch[1]])
    assert isinstance(out_list, list) and len(out_list) == 2
    out_one = sanitizer(batch[1])
    assert out_one.shape == (3, 20, 30)
    assert float(out_one.min()) >= -1 and float(out_one.max()) <= 1
    torch.testing.assert_close(out_list[1], out_one)
    torch.testing.assert_close(out_batch[0], out_list[0])
    mixed = sanitizer([Image.new("RGB", (18, 14), (200, 10, 10)), batch[0]])
    assert isinstance(mixed[0], Image.Image) and mixed[0].size == (18, 14)
    assert isinstance(mixed[1], torch.Tensor)


def test_from_pretrained_round_trip(tmp_path):
    generator = tiny_generator("kl", seed=3)
    generator.save_pretrained(tmp_path / "gen")
    image = random_image(40, 52, seed=1)
    loaded = Sanitizer.from_pretrained(tmp_path / "gen", face_finder=False, tile=32, overlap=8)
    assert loaded.face_finder is None
    expected = Sanitizer(generator, tile=32, overlap=8)(image)
    torch.testing.assert_close(loaded(image), expected)


def test_default_precision_follows_the_device_and_leaves_the_callers_generator_alone():
    from imgunlearn.generators import fast_dtype

    generator = tiny_generator("kl").eval()
    image = random_image(24, 40)
    with torch.no_grad():
        expected = generator(image[None])
    default = Sanitizer(generator, tile=16, overlap=4)
    assert default.precision == {torch.float32: "32", torch.bfloat16: "bf16"}[fast_dtype("cpu")]
    assert default.settings()["precision"] == default.precision
    assert next(default.generator.parameters()).dtype == fast_dtype("cpu")
    half = Sanitizer(generator, tile=16, overlap=4, precision="bf16")
    output = half.generate(image)
    assert next(half.generator.parameters()).dtype == torch.bfloat16
    assert output.dtype == torch.float32 and output.shape == image.shape
    full = Sanitizer(generator, tile=16, overlap=4, precision="32").generate(image)
    assert (output - full).abs().max() < 0.1  # the same picture, to bf16's 8 bits of mantissa
    # The caller's generator is still float32 and still takes float32 images.
    assert all(p.dtype == torch.float32 for p in generator.parameters())
    with torch.no_grad():
        assert torch.allclose(generator(image[None]), expected, atol=1e-5)


def test_a_half_precision_batch_that_is_not_finite_runs_again_in_float32():
    """bf16 group norms gave NaN on a 1 px wide photo (the hostile folder's thin.png; whether
    they do depends on the threads' summation order): such a batch runs again in float32, so
    nothing is written as garbage. Here the bf16 decoder is made to give NaN (a hook on the
    real model) so that every batch takes that path."""
    from imgunlearn.pipelines import sanitizer as sanitizer_module

    generator = tiny_generator("kl").eval()
    image = random_image(24, 40)
    full = Sanitizer(generator, tile=16, overlap=4, precision="32").generate(image)
    sanitizer = Sanitizer(generator, tile=16, overlap=4, precision="bf16")
    poison = lambda module, args, out: out * float("nan") if out.dtype == torch.bfloat16 else out  # noqa: E731
    sanitizer.generator.model.decoder.register_forward_hook(poison)
    guarded = sanitizer.generate(image)
    assert torch.isfinite(guarded).all() and (guarded - full).abs().max() < 0.1
    assert next(sanitizer.generator.parameters()).dtype == torch.bfloat16  # batches go on in bf16 first
    # The guard itself: not finite in float32 either is an error.
    run = sanitizer_module._finite_or_float32(lambda tiles: tiles * float("nan"), lambda: lambda tiles: tiles + 1)
    assert torch.equal(run(torch.zeros(2, 3, 4, 4, dtype=torch.bfloat16)), torch.ones(2, 3, 4, 4, dtype=torch.bfloat16))
    broken = sanitizer_module._finite_or_float32(lambda tiles: tiles * float("nan"), lambda: lambda tiles: tiles / 0)
    with pytest.raises(ValueError, match="not finite, in float32 too"):
        broken(torch.zeros(1, 3, 4, 4))


def test_bad_arguments_are_refused():
    generator = tiny_generator("kl")
    with pytest.raises(ValueError, match="downsampling factor 2"):
        Sanitizer(generator, tile=33)
    with pytest.raises(ValueError, match="overlap 3 must be a multiple of the generator's downsampling factor 2"):
        Sanitizer(generator, tile=32, overlap=3)
    with pytest.raises(ValueError, match=r"overlap 64 must be at least 0 and smaller than the tile \(64\)"):
        Sanitizer(generator, tile=64, overlap=64)
    with pytest.raises(ValueError, match="face_finder"):
        Sanitizer(generator, fail_closed=True)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        Sanitizer(generator, tile=16, overlap=4)(torch.zeros(1, 16, 16))
    with pytest.raises(TypeError, match="PIL image"):
        Sanitizer(generator, tile=16, overlap=4)("not an image")


def test_random_generator_output_passes_the_face_check(face_finder, astronaut):
    # A random tiny generator keeps no face; the check must see the input's face and pass.
    sanitizer = Sanitizer(tiny_generator("kl"), face_finder=face_finder, tile=128, overlap=16,
                          fail_closed=True)
    crop = astronaut.crop((96, 0, 352, 256))
    output, report = sanitizer.sanitize_with_report(crop)
    assert output.size == crop.size
    assert len(report.faces_before) >= 1
    assert len(report.faces_after) == 0 and report.action == "passed"
    assert report.to_dict()["blanked_boxes"] == []


def test_fail_closed_blanks_faces_that_survive(face_finder, astronaut):
    # Post-check given the real astronaut photo as the "output": the honest stand-in for a
    # generator that failed to forget (training a tiny generator until MTCNN finds faces in
    # its output takes minutes on one core).
    generator = tiny_generator("kl")
    closed = Sanitizer(generator, face_finder=face_finder, fail_closed=True, blank_value=-1.0)
    output, report = closed.post_check(astronaut, astronaut.copy())
    assert isinstance(output, Image.Image) and output.size == astronaut.size
    assert report.action == "blanked" and len(report.faces_after) >= 1
    x0, y0, x1, y1 = report.blanked_boxes[0]
    assert x0 <= 170 and y0 <= 60 and x1 >= 230 and y1 >= 120  # covers the face, dilated
    pixels = np.asarray(output)
    assert (pixels[y0:y1, x0:x1] == 0).all()  # blank_value -1 -> black
    outside = np.ones(pixels.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(pixels[outside], np.asarray(astronaut)[outside])
    assert len(face_finder.detect(output)) == 0

    # Fail-closed off: the same output is flagged, not changed.
    flagged, report_open = closed.post_check(None, astronaut, fail_closed=False)
    assert report_open.action == "flagged" and flagged is astronaut
    assert report_open.faces_before is None
    assert isinstance(report_open, SanitizeReport)


DEMO = Path(__file__).resolve().parent.parent / "assets"


@pytest.mark.skipif(not (DEMO / "demo_base" / "config.json").is_file(), reason="demo assets not in this checkout")
def test_fail_closed_on_a_model_that_keeps_faces(face_finder):
    """The shipped demo base reproduces faces (it has not forgotten anything): fail-closed must
    blank each face the post-check still finds in its output, and say so."""
    from imgunlearn.data import open_rgb, read_manifest

    sanitizer = Sanitizer.from_pretrained(DEMO / "demo_base", face_finder=face_finder, tile=128, overlap=32)
    records = read_manifest(DEMO / "demo_data" / "test" / "manifest.jsonl")["forget"]
    tile = next(open_rgb(r.path) for r in records if r.boxes and max(b[2] - b[0] for b in r.boxes) >= 40)
    kept, report = sanitizer.sanitize_with_report(tile, fail_closed=False)
    assert report.action == "flagged" and len(report.faces_after) >= 1  # the base keeps the face
    blanked, report = sanitizer.sanitize_with_report(tile, fail_closed=True)
    assert report.action == "blanked" and len(report.blanked_boxes) >= 1
    assert len(face_finder.detect(blanked)) == 0
    # Only the blanked boxes changed.
    changed = np.any(np.asarray(blanked) != np.asarray(kept), axis=-1)
    inside = np.zeros_like(changed)
    for x0, y0, x1, y1 in report.blanked_boxes:
        inside[y0:y1, x0:x1] = True
    assert changed.any() and not (changed & ~inside).any()


def test_post_check_blanks_a_face_lying_on_its_side(astronaut):
    """In nadir photos people lie at every angle: the default post-check looks at quarter turns."""
    from imgunlearn.concepts import FaceFinder

    turned = Image.fromarray(np.ascontiguousarray(np.rot90(np.asarray(astronaut), 1)))
    every_angle = Sanitizer(tiny_generator("kl"), face_finder=FaceFinder(rotations=(0, 90, 180, 270)),
                            fail_closed=True)
    output, report = every_angle.post_check(None, turned)
    assert report.action == "blanked" and len(report.blanked_boxes) == 1
    x0, y0, x1, y1 = report.blanked_boxes[0]
    assert x0 <= 62 and x1 >= 172 and y0 <= 245 and y1 >= 330  # the turned face, dilated


def test_progress_counts_every_tile_pass():
    """preprocess shows a photo's progress tile by tile (one 12 MP photo used to sit at 0/1)."""
    generator = tiny_generator("kl")
    image = torch.rand(3, 40, 56) * 2 - 1
    calls = []
    Sanitizer(generator, tile=16, overlap=4).generate_with_map(image, on_tiles=lambda done, total: calls.append(
        (done, total)))
    tiles = len(tile_positions(40, 56, 16, 4))
    assert calls[-1] == (tiles, tiles) and [done for done, _ in calls] == sorted(done for done, _ in calls)
