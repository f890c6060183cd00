"""MTCNN's three stages on facenet-pytorch's networks, with every candidate crop cut at once.

facenet-pytorch's ``detect_face`` cuts each candidate box of stages 2 and 3 out of the image
and shrinks it with its own ``interpolate(mode="area")`` call. A textured aerial tile gives
P-Net thousands of candidates: that Python loop took a quarter of MTCNN's time on a 2-core
CPU (an aerial photo, 640x480), and on a GPU every box is a kernel launch. An area resize is
the mean of each output cell's input rectangle, so all the crops can be read from one
summed-area table of the images in a few tensor operations. Everything else is facenet-pytorch's own: its networks and
weights, its pyramid, box regression and non-maximum suppression helpers, called in the same
order with the same settings, so the boxes and scores are facenet-pytorch's (tested against
``MTCNN.detect`` on real photos).
"""

from __future__ import annotations

import numpy as np
import torch
from facenet_pytorch import MTCNN
from facenet_pytorch.models.utils.detect_face import (
    bbreg,
    batched_nms_numpy,
    generateBoundingBox,
    imresample,
    pad,
    rerec,
)
from torchvision.ops.boxes import batched_nms

__all__ = ["area_crops", "detect_faces", "facenet_detect", "summed_area_table"]

# Candidates per network pass, as facenet-pytorch batches them (bounds memory on a GPU).
_CHUNK = 512


def summed_area_table(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) images -> (B, H + 1, W + 1, C) table: entry [b, y, x] is the sum of
    ``images[b, :y, :x]``. Sums stay exact: int32 for 8-bit images up to 8 MP (a quarter of
    the memory of float64), int64 for
    larger ones, float64 for other types."""
    if images.dtype == torch.uint8:
        height, width = images.shape[1], images.shape[2]
        sum_type = torch.int32 if 255 * height * width < 2**31 else torch.int64
    else:
        sum_type = torch.float64
    table = images.to(sum_type).cumsum(1, dtype=sum_type).cumsum(2, dtype=sum_type)
    return torch.nn.functional.pad(table, (0, 0, 1, 0, 1, 0))


def _cell_edges(start: torch.Tensor, length: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input rows [first, last) of each of ``size`` output rows, as adaptive average pooling
    (and so ``interpolate(mode="area")``) takes them: floor(i*L/size) to ceil((i+1)*L/size)."""
    index = torch.arange(size, device=start.device)
    first = start[:, None] + (index[None] * length[:, None]) // size
    last = start[:, None] + ((index[None] + 1) * length[:, None] + size - 1) // size
    return first, last


def area_crops(table: torch.Tensor, image_index: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor,
               left: torch.Tensor, right: torch.Tensor, size: int, dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
    """Each box ``[top, bottom) x [left, right)`` of image ``image_index`` (non-empty, inside the
    image) resized to ``size`` x ``size`` by area averaging, read from ``summed_area_table``:
    (N, C, size, size), the values ``interpolate(crop, (size, size), mode="area")`` gives."""
    row0, row1 = _cell_edges(top, bottom - top, size)
    col0, col1 = _cell_edges(left, right - left, size)
    b = image_index[:, None, None]
    r0, r1, c0, c1 = row0[:, :, None], row1[:, :, None], col0[:, None, :], col1[:, None, :]
    sums = table[b, r1, c1] - table[b, r0, c1] - table[b, r1, c0] + table[b, r0, c0]
    # Divided in the pooling kernel's order (by the cell's height, then its width).
    heights = (r1 - r0).to(dtype)[..., None]
    widths = (c1 - c0).to(dtype)[..., None]
    means = sums.to(dtype) / heights / widths
    return means.permute(0, 3, 1, 2)  # channels-last in memory: faster for R-Net and O-Net on a CPU


def _normalised(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - 127.5) * 0.0078125


def _stage_outputs(net: torch.nn.Module, images: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor,
                   size: int, dtype: torch.dtype) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Crop every candidate box of ``images`` (B, H, W, C), clipped to its image as
    facenet-pytorch's ``pad`` does, and run ``net`` on the crops in chunks. Returns which boxes
    had a non-empty crop and the net's outputs for those, in the boxes' order.

    One image's summed-area table at a time, and crops a chunk at a time: what is held stays
    small (facenet-pytorch holds every crop of the batch at once)."""
    height, width = images.shape[1], images.shape[2]
    y, ey, x, ex = (torch.as_tensor(v, device=boxes.device, dtype=torch.int64) for v in pad(boxes, width, height))
    # facenet-pytorch skips an empty crop and then misaligns every later box; we drop the box.
    valid = (ey > y - 1) & (ex > x - 1)
    image_index, y, ey, x, ex = image_index[valid], y[valid], ey[valid], x[valid], ex[valid]
    outputs, order = [], []
    for image in torch.unique(image_index).tolist():
        members = torch.nonzero(image_index == image).flatten()
        table = summed_area_table(images[image:image + 1])
        for start in range(0, len(members), _CHUNK):
            part = members[start:start + _CHUNK]
            crops = area_crops(table, torch.zeros_like(part), y[part] - 1, ey[part], x[part] - 1, ex[part], size, dtype)
            outputs.append(net(_normalised(crops)))
            order.append(part)
    if not outputs:
        return valid, ()
    back = torch.argsort(torch.cat(order))  # from image-by-image order to the boxes' order
    return valid, tuple(torch.cat(parts, dim=0)[back] for parts in zip(*outputs))


@torch.no_grad()
def detect_faces(mtcnn: MTCNN, images: np.ndarray | torch.Tensor) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Faces in a batch of equal-sized images (B, H, W, 3) with ``mtcnn``'s networks and
    settings (``min_face_size``, ``thresholds``, ``factor``, ``device``).

    Returns, per image, float32 boxes (N, 4) ``x0, y0, x1, y1`` and scores (N,), as
    ``mtcnn.detect`` would give them (without its landmarks).
    """
    device = mtcnn.device
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()  # torch warns on read-only arrays; pixels are only read
    raw = torch.as_tensor(images, device=device)
    if raw.ndim == 3:
        raw = raw[None]
    dtype = next(mtcnn.pnet.parameters()).dtype
    pixels = raw.permute(0, 3, 1, 2).to(dtype)
    batch, height, width = pixels.shape[0], pixels.shape[2], pixels.shape[3]
    thresholds = mtcnn.thresholds

    # Stage 1: P-Net over the image pyramid, as facenet-pytorch builds it.
    scale = 12.0 / mtcnn.min_face_size
    side = min(height, width) * scale
    candidates, owners = [], []
    while side >= 12:
        scaled = imresample(pixels, (int(height * scale + 1), int(width * scale + 1)))
        regression, probabilities = mtcnn.pnet(_normalised(scaled))
        found, image_index = generateBoundingBox(regression, probabilities[:, 1], scale, thresholds[0])
        keep = batched_nms(found[:, :4], found[:, 4], image_index, 0.5)
        candidates.append(found[keep])
        owners.append(image_index[keep])
        scale *= mtcnn.factor
        side *= mtcnn.factor
    boxes = torch.cat(candidates) if candidates else torch.zeros((0, 9), device=device)
    image_index = torch.cat(owners) if owners else torch.zeros((0,), dtype=torch.int64, device=device)
    keep = batched_nms(boxes[:, :4], boxes[:, 4], image_index, 0.7)
    boxes, image_index = boxes[keep], image_index[keep]
    box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * box_w, boxes[:, 1] + boxes[:, 6] * box_h,
                         boxes[:, 2] + boxes[:, 7] * box_w, boxes[:, 3] + boxes[:, 8] * box_h, boxes[:, 4]], dim=1)
    boxes = rerec(boxes)

    # Stage 2: R-Net on 24 px crops.
    if len(boxes):
        valid, outputs = _stage_outputs(mtcnn.rnet, raw, image_index, boxes, 24, dtype)
        boxes, image_index = boxes[valid], image_index[valid]
        if len(boxes):
            regression, probabilities = outputs
            score = probabilities[:, 1]
            passed = score > thresholds[1]
            boxes = torch.cat([boxes[passed, :4], score[passed, None]], dim=1)
            image_index, regression = image_index[passed], regression[passed]
            keep = batched_nms(boxes[:, :4], boxes[:, 4], image_index, 0.7)
            boxes = rerec(bbreg(boxes[keep], regression[keep]))
            image_index = image_index[keep]

    # Stage 3: O-Net on 48 px crops, then facenet-pytorch's "Min" suppression.
    if len(boxes):
        valid, outputs = _stage_outputs(mtcnn.onet, raw, image_index, boxes, 48, dtype)
        boxes, image_index = boxes[valid], image_index[valid]
        if len(boxes):
            regression, _landmarks, probabilities = outputs
            score = probabilities[:, 1]
            passed = score > thresholds[2]
            boxes = torch.cat([boxes[passed, :4], score[passed, None]], dim=1)
            image_index = image_index[passed]
            boxes = bbreg(boxes, regression[passed])
            keep = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_index, 0.7, "Min")
            boxes, image_index = boxes[keep], image_index[keep]

    boxes = boxes.float().cpu().numpy()
    image_index = image_index.cpu().numpy()
    per_image = [boxes[image_index == b] for b in range(batch)]
    return ([found[:, :4].astype(np.float32) for found in per_image],
            [found[:, 4].astype(np.float32) for found in per_image])


def facenet_detect(mtcnn: MTCNN, images: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """facenet-pytorch's own ``mtcnn.detect`` in ``detect_faces``'s form: per image, float32
    boxes (N, 4) and scores (N,). Under numpy 2 it returns object arrays, and None where an
    image has no face; both become plain arrays here. The reference the tests and the
    benchmark hold ``detect_faces`` to."""
    batch_boxes, batch_scores = mtcnn.detect(images)
    boxes_out, scores_out = [], []
    for boxes, scores in zip(batch_boxes, batch_scores):
        if boxes is None:
            boxes_out.append(np.zeros((0, 4), np.float32))
            scores_out.append(np.zeros((0,), np.float32))
            continue
        boxes_out.append(np.asarray(boxes, dtype=object).astype(np.float32).reshape(-1, 4))
        scores_out.append(np.asarray(scores, dtype=object).astype(np.float32).reshape(-1))
    return boxes_out, scores_out
