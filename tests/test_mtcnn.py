"""Our batched MTCNN stages against facenet-pytorch's own ``MTCNN.detect``, on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from facenet_pytorch import MTCNN
from skimage import data

from imgunlearn.concepts.mtcnn import area_crops, detect_faces, facenet_detect, summed_area_table

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mtcnn() -> MTCNN:
    # FaceFinder's settings: small faces, every face kept.
    return MTCNN(keep_all=True, min_face_size=12, thresholds=[0.6, 0.7, 0.7], select_largest=False,
                 post_process=False).eval()


def facenet_detections(mtcnn: MTCNN, images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """facenet-pytorch's result per image, best score first."""
    results = []
    for boxes, scores in zip(*facenet_detect(mtcnn, images)):
        order = np.argsort(-scores, kind="stable")
        results.append((boxes[order], scores[order]))
    return results


def test_area_crops_equal_area_interpolation_of_each_crop():
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (2, 50, 70, 3), generator=generator, dtype=torch.uint8)
    images = pixels.permute(0, 3, 1, 2).float()
    tables = [summed_area_table(pixels), summed_area_table(pixels.float())]
    assert tables[0].dtype == torch.int32 and tables[1].dtype == torch.float64
    count = 300
    owner = torch.randint(0, 2, (count,), generator=generator)
    top = torch.randint(0, 49, (count,), generator=generator)
    left = torch.randint(0, 69, (count,), generator=generator)
    # Crops from 1 px up to the whole image: smaller, equal to and larger than the output.
    bottom = torch.minimum(top + torch.randint(1, 50, (count,), generator=generator), torch.tensor(50))
    right = torch.minimum(left + torch.randint(1, 70, (count,), generator=generator), torch.tensor(70))
    for size in (24, 48):
        expected = torch.cat([
            torch.nn.functional.interpolate(images[b:b + 1, :, t:u, l:r], (size, size), mode="area")
            for b, t, u, l, r in zip(owner.tolist(), top.tolist(), bottom.tolist(), left.tolist(), right.tolist())
        ])
        for table in tables:  # integer sums of 8-bit images, float sums of anything else
            ours = area_crops(table, owner, top, bottom, left, right, size)
            assert ours.shape == (count, 3, size, size)
            assert torch.equal(ours, expected)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_detect_faces_gives_facenet_pytorchs_boxes_and_scores(mtcnn, name):
    photo = getattr(data, name)()
    # Upright and turned (another shape), one at a time and as a batch of two.
    turned = np.ascontiguousarray(np.rot90(photo))
    batches = [photo[None], turned[None], np.stack([photo, photo[:, ::-1]])]
    found_any = 0
    for images in batches:
        expected = facenet_detections(mtcnn, images)
        boxes, scores = detect_faces(mtcnn, images)
        assert len(boxes) == len(scores) == len(images)
        for (want_boxes, want_scores), got_boxes, got_scores in zip(expected, boxes, scores):
            order = np.argsort(-got_scores, kind="stable")
            assert got_boxes.dtype == np.float32 and got_boxes.shape == want_boxes.shape
            np.testing.assert_allclose(got_boxes[order], want_boxes, atol=1e-3)
            np.testing.assert_allclose(got_scores[order], want_scores, atol=1e-5)
            found_any += len(want_boxes)
    if name == "astronaut":
        assert found_any >= 1  # the comparison covers a real face, not only empty results


def test_detect_faces_on_a_flat_image_finds_nothing(mtcnn):
    boxes, scores = detect_faces(mtcnn, np.full((1, 40, 60, 3), 127, np.uint8))
    assert boxes[0].shape == (0, 4) and scores[0].shape == (0,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_detect_faces_on_cuda_gives_the_cpu_boxes(mtcnn):
    photos = np.stack([data.astronaut(), data.astronaut()[:, ::-1]])  # upright, mirrored
    on_cpu = detect_faces(mtcnn, photos)
    gpu = MTCNN(keep_all=True, min_face_size=12, thresholds=[0.6, 0.7, 0.7], select_largest=False,
                post_process=False, device="cuda").eval()
    on_gpu = detect_faces(gpu, photos)
    # cuDNN may convolve in TF32: compare what FaceFinder keeps (score >= 0.9), not borderline candidates.
    for cpu_boxes, cpu_scores, gpu_boxes, gpu_scores in zip(*on_cpu, *on_gpu):
        cpu_boxes, cpu_scores = cpu_boxes[cpu_scores >= 0.9], cpu_scores[cpu_scores >= 0.9]
        gpu_boxes, gpu_scores = gpu_boxes[gpu_scores >= 0.9], gpu_scores[gpu_scores >= 0.9]
        order_cpu, order_gpu = np.argsort(-cpu_scores), np.argsort(-gpu_scores)
        assert len(cpu_boxes) >= 1 and cpu_boxes.shape == gpu_boxes.shape
        np.testing.assert_allclose(gpu_boxes[order_gpu], cpu_boxes[order_cpu], atol=0.5)
        np.testing.assert_allclose(gpu_scores[order_gpu], cpu_scores[order_cpu], atol=1e-2)
