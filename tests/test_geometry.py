"""Pixel boxes: one meaning for growing, rasterising and matching them."""

from __future__ import annotations

import numpy as np
import torch

from imgunlearn.geometry import box_pixels, boxes_mask, centres_inside, grow_boxes


def test_grow_by_a_share_of_the_longer_side_at_least_a_floor_plus_pixels():
    boxes = np.array([[10, 10, 30, 20], [0, 0, 4, 4]], np.float32)
    np.testing.assert_allclose(grow_boxes(boxes, share=0.1), [[8, 8, 32, 22], [-0.4, -0.4, 4.4, 4.4]])
    np.testing.assert_allclose(grow_boxes(boxes, share=0.1, at_least=2), [[8, 8, 32, 22], [-2, -2, 6, 6]])
    np.testing.assert_allclose(grow_boxes(boxes, pixels=4), [[6, 6, 34, 24], [-4, -4, 8, 8]])
    assert grow_boxes([]).shape == (0, 4)


def test_boxes_cover_every_pixel_they_touch_clipped_to_the_image():
    assert box_pixels((1.5, 2.0, 3.2, 4.0), 32, 32) == (1, 2, 4, 4)
    assert box_pixels((-5, -5, 40, 3), 32, 32) == (0, 0, 32, 3)
    # A resize's 10.0000001 does not reach into row 10 with a tolerance.
    assert box_pixels((2, 2, 10.0000001, 10.0000001), 32, 32, tolerance=1e-6) == (2, 2, 10, 10)
    mask = boxes_mask([(1.5, 2.0, 3.2, 4.0), (30, 30, 40, 40), (50, 50, 60, 60)], 32, 32)
    assert mask.shape == (1, 32, 32) and float(mask.sum()) == 3 * 2 + 2 * 2
    assert torch.equal(mask[0, 2:4, 1:4], torch.ones(2, 3))


def test_a_detection_counts_when_its_centre_lies_in_the_box():
    boxes = [[0, 0, 10, 10], [20, 20, 30, 30]]
    detections = [[2, 2, 12, 12], [9, 9, 31, 31], [40, 40, 50, 50]]  # centres (7,7), (20,20) on an edge, (45,45)
    assert centres_inside(boxes, detections).tolist() == [[True, False, False], [False, True, False]]
    assert centres_inside(boxes, []).shape == (2, 0)
