import pytest
import torch

from imgunlearn.geometry import boxes_mask
from imgunlearn.tasks import Task, apply_mask, border_mask, center_box_mask, random_task_masks


def test_center_inpaint_hides_a_quarter_in_the_middle():
    mask = center_box_mask(32, 32, 0.25)
    assert mask.sum().item() == 16 * 16
    assert mask[0, 8:24, 8:24].all() and mask[0, :8].sum() == 0


def test_outpaint_hides_the_border_and_keeps_the_centre():
    mask = border_mask(32, 32, 0.25)
    assert mask.mean().item() == pytest.approx(0.25, abs=0.02)
    assert mask[0, 0].all() and mask[0, -1].all() and mask[0, 16, 16] == 0


def test_box_masks_cover_float_boxes():
    mask = boxes_mask([(1.5, 2.0, 3.2, 4.0), (30, 30, 40, 40)], 32, 32)
    assert mask[0, 2:4, 1:4].all() and mask[0, 2:4, 1:4].numel() == 6
    assert mask[0, 30:, 30:].all()  # clipped at the edge
    assert mask.sum().item() == 6 + 4


def test_task_applies_fill_under_the_mask_only():
    images = torch.ones(2, 3, 8, 8)
    out = Task("center_inpaint", area=0.25, fill=-1.0)(images)
    assert out[:, :, 2:6, 2:6].eq(-1).all() and out[:, :, 0].eq(1).all()
    assert torch.equal(Task("reconstruct")(images), images)
    assert torch.equal(apply_mask(images, torch.zeros(1, 1, 8, 8)), images)


def test_unknown_task_and_bad_area_are_refused():
    with pytest.raises(ValueError, match="unknown task"):
        Task("deblur")
    with pytest.raises(ValueError, match="area"):
        Task("outpaint", area=1.5)


def test_random_task_masks_mix_tasks_per_sample():
    tasks = [Task("reconstruct"), Task("center_inpaint")]
    masks = random_task_masks(tasks, 64, 8, 8, generator=torch.Generator().manual_seed(0))
    hidden = masks.flatten(1).sum(1)
    assert set(hidden.tolist()) == {0.0, 16.0}
