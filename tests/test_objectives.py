"""Each loss on hand-made tensors, with the value worked out by hand."""

import pytest
import torch

from imgunlearn.geometry import latent_cells
from imgunlearn.unlearning import objectives as obj


def test_masked_mse_plain_and_weighted():
    a = torch.zeros(1, 2, 2, 2)
    b = torch.ones(1, 2, 2, 2)
    b[..., 0, 0] = 3.0  # squared error 9 at one position (both channels), 1 elsewhere
    assert obj.masked_mse(a, b).item() == pytest.approx((9 * 2 + 1 * 6) / 8)
    weight = torch.zeros(1, 1, 2, 2)
    weight[..., 0, 0] = 1.0
    assert obj.masked_mse(a, b, weight).item() == pytest.approx(9.0)
    assert obj.masked_mse(a, b, torch.zeros(1, 1, 2, 2)).item() == 0.0  # nothing selected: 0, not NaN


def test_retain_and_forget_loss_values_and_gradients():
    student = torch.tensor([[[[1.0, 2.0]]]], requires_grad=True)
    teacher = torch.tensor([[[[0.0, 0.0]]]], requires_grad=True)
    loss = obj.retain_loss(student, teacher)
    assert loss.item() == pytest.approx((1 + 4) / 2)
    loss.backward()
    assert torch.allclose(student.grad, torch.tensor([[[[1.0, 2.0]]]]))
    assert teacher.grad is None  # the teacher side is a constant target
    target = torch.tensor([[[[1.0, 0.0]]]])
    assert obj.forget_loss(student.detach(), target).item() == pytest.approx(2.0)


def test_unlearning_loss_is_retain_plus_alpha_forget():
    assert obj.unlearning_loss(torch.tensor(2.0), torch.tensor(10.0), 0.2).item() == pytest.approx(4.0)


def test_noise_images_follow_batch_statistics_and_range():
    torch.manual_seed(0)
    images = torch.empty(64, 3, 16, 16)
    images[:, 0] = 0.5
    images[:, 1] = torch.rand(64, 16, 16) * 0.4 - 0.2
    images[:, 2] = -0.8
    noise = obj.noise_images(images)
    assert noise.shape == images.shape
    assert noise.min() >= -1 and noise.max() <= 1
    assert noise[:, 0].mean().item() == pytest.approx(0.5, abs=0.01)
    assert noise[:, 1].std().item() == pytest.approx(images[:, 1].std().item(), rel=0.05)
    # Constant channels give a constant, in-range target.
    assert torch.allclose(noise[:, 2], torch.full_like(noise[:, 2], -0.8))
    wide = obj.noise_images(torch.cat([torch.full((8, 3, 4, 4), -1.0), torch.ones(8, 3, 4, 4)]))
    assert wide.min() >= -1 and wide.max() <= 1  # clamped to the data range


def test_blank_images_colour():
    blank = obj.blank_images(torch.zeros(2, 3, 4, 4), color=(1.0, 0.5, 0.0))
    assert torch.equal(blank[:, 0], torch.ones(2, 4, 4))
    assert torch.equal(blank[:, 1], torch.zeros(2, 4, 4))
    assert torch.equal(blank[:, 2], -torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="3 channels"):
        obj.blank_images(torch.zeros(1, 3, 2, 2), color=(0.5, 0.5))


def test_random_embeddings_follow_teacher_statistics():
    torch.manual_seed(0)
    teacher = torch.randn(32, 4, 8, 8) * 3 + 5
    random_target = obj.random_embeddings_like(teacher)
    assert random_target.mean().item() == pytest.approx(5.0, abs=0.1)
    assert random_target.std().item() == pytest.approx(3.0, rel=0.05)
    assert not torch.allclose(random_target, teacher)


def test_reconstruction_and_baseline_terms():
    output = torch.zeros(2, 3, 2, 2)
    images = torch.full((2, 3, 2, 2), 0.5)
    assert obj.reconstruction_loss(output, images).item() == pytest.approx(0.5 + 0.25)
    # MAX LOSS rewards a larger forget error: its term is the negated reconstruction loss.
    assert obj.max_loss_forget_term(output, images).item() == pytest.approx(-0.75)
    assert obj.noisy_label_forget_term(output, images).item() == pytest.approx(0.75)


def test_retain_label_pairs_forget_outputs_with_retain_images():
    forget_output = torch.zeros(3, 1, 1, 1)
    retain_images = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)  # cycled: 1, -1, 1
    targets = obj.cycled_retain_images(retain_images, 3)
    assert torch.equal(targets, retain_images[[0, 1, 0]])
    assert obj.retain_label_forget_term(forget_output, targets).item() == pytest.approx(2.0)
    assert obj.retain_label_forget_term(retain_images[[0, 1, 0]], targets).item() == 0.0


def test_latent_cells_pools_and_dilates():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 0:2, 0:2] = 1.0  # a 2x2-pixel box in the corner
    pooled = latent_cells(mask, (4, 4), dilate=0)
    assert pooled.shape == (1, 1, 4, 4)
    assert pooled.sum().item() == 1.0 and pooled[0, 0, 0, 0] == 1.0
    dilated = latent_cells(mask, (4, 4), dilate=1)
    assert dilated.sum().item() == 4.0  # the corner cell and its three neighbours


def test_retain_tail_loss_is_the_mean_of_the_largest_cell_changes():
    teacher = torch.zeros(1, 2, 2, 5)
    student = torch.zeros(1, 2, 2, 5)
    student[0, :, 0, :] = torch.arange(5.0).sqrt()  # per-cell change d = 0, 1, 2, 3, 4 in row 0
    assert torch.isclose(obj.retain_tail_loss(student, teacher, share=0.1), torch.tensor(4.0))  # top 1 of 10
    assert torch.isclose(obj.retain_tail_loss(student, teacher, share=0.2), torch.tensor(3.5))  # top 2
    assert torch.isclose(obj.retain_tail_loss(student, teacher, share=0.3), torch.tensor(3.0))  # top 3
    assert torch.isclose(obj.retain_tail_loss(student, teacher, share=1.0), torch.tensor(1.0))  # the mean
    row_one = torch.zeros(1, 1, 2, 5)
    row_one[0, 0, 1] = 1  # only the unchanged row is retained
    assert obj.retain_tail_loss(student, teacher, share=0.2, weight=row_one) == 0
    assert obj.retain_tail_loss(student, teacher, weight=torch.zeros(1, 1, 2, 5)) == 0
    student.requires_grad_(True)
    obj.retain_tail_loss(student, teacher, share=0.1).backward()
    assert student.grad[0, :, 0, 4].abs().sum() > 0 and student.grad[0, :, 0, :4].abs().sum() == 0
    with pytest.raises(ValueError, match="share"):
        obj.retain_tail_loss(student, teacher, share=0.0)


def test_region_mean_images_fill_with_the_colour_under_the_region():
    images = torch.zeros(2, 3, 4, 4)
    images[0, 0, :2, :2] = 1.0  # image 0: red in its top-left quarter
    images[1, 2] = -0.5  # image 1: blue channel -0.5 everywhere
    region = torch.zeros(2, 1, 4, 4)
    region[0, :, :2, :] = 1  # the top half: red over half of it
    region[1, :, 3, 3] = 1
    filled = obj.region_mean_images(images, region)
    assert filled.shape == images.shape
    assert torch.allclose(filled[0, :, 0, 0], torch.tensor([0.5, 0.0, 0.0]))
    assert torch.allclose(filled[0], filled[0, :, :1, :1].expand(3, 4, 4))  # one colour everywhere
    assert torch.allclose(filled[1, :, 2, 1], torch.tensor([0.0, 0.0, -0.5]))
    assert torch.equal(obj.region_mean_images(images, torch.zeros(2, 1, 4, 4)), torch.zeros(2, 3, 4, 4))


def test_retain_output_loss_value_and_gradient():
    student = torch.tensor([[[[0.5, -0.5]]]], requires_grad=True)
    teacher = torch.zeros(1, 1, 1, 2, requires_grad=True)
    loss = obj.retain_output_loss(student, teacher)
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    assert torch.allclose(student.grad, torch.tensor([[[[0.5, -0.5]]]]))
    assert teacher.grad is None


def test_forget_margin_loss_is_the_mean_shortfall_under_the_level():
    original = torch.zeros(1, 2, 1, 4)
    student = torch.zeros(1, 2, 1, 4)
    student[0, :, 0, :] = torch.tensor([0.0, 1.0, 2.0, 3.0]).sqrt()  # per-cell change d = 0, 1, 2, 3
    assert torch.allclose(obj.cell_change(student, original), torch.tensor([[[0.0, 1.0, 2.0, 3.0]]]))
    assert torch.isclose(obj.forget_margin_loss(student, original, 1.5), torch.tensor(0.5))  # (1.5 + 0.5 + 0 + 0) / 4
    last_two = torch.tensor([0.0, 0.0, 1.0, 1.0]).view(1, 1, 1, 4)
    assert obj.forget_margin_loss(student, original, 1.5, last_two) == 0  # both moved far enough
    assert obj.forget_margin_loss(student, original, 1.5, torch.zeros(1, 1, 1, 4)) == 0
    student.requires_grad_(True)
    obj.forget_margin_loss(student, original, 1.5).backward()
    # d = 0 has no gradient (the forget term moves a cell first); d = 1 is pushed further.
    assert student.grad[0, :, 0, 0].abs().sum() == 0 and student.grad[0, :, 0, 1].abs().sum() > 0
    assert student.grad[0, :, 0, 2:].abs().sum() == 0
    with pytest.raises(ValueError, match="level"):
        obj.forget_margin_loss(student, original, 0.0)
