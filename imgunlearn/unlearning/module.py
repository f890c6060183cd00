"""The unlearning LightningModule (docs/design.md §1): a trainable copy of the generator (the
student), the frozen original (the teacher), and the chosen objective."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import lightning as L
import torch

from ..data.augment import Augmentation, augment_batch, resolve_augmentation
from ..errors import InvalidSettingError
from ..generators import Generator, fast_layout
from ..optim import adamw_warmup_cosine
from ..tasks import Task, random_task_masks
from ..vocabulary import DEFAULT_MASK_AREA, ENCODER_ONLY_OBJECTIVES, OBJECTIVES, TARGETS
from . import objectives as obj


class UnlearningModule(L.LightningModule):
    """Fine-tune ``generator`` so the forget set maps to the target and the retain set stays.

    Args:
        generator: the original generator; it becomes the frozen teacher and is never changed.
        objective: ``ours`` or a baseline (``max_loss``, ``noisy_label``, ``retain_label``,
            ``random_encoder``).
        target: what forget images should look like to the encoder: ``noise``, ``blank``, or
            ``fill`` (each forget region its own mean colour).
        alpha: weight of the forget term, ``L = L_R + alpha * L_F``.
        task: the I2I task whose input transform T is applied on both sides, or a list of
            tasks to draw one from per sample (one unlearned model then serves them all).
        mask_area: hidden share of the image for ``center_inpaint`` / ``outpaint``.
        lr, weight_decay, warmup_steps, max_steps: AdamW with warm-up and cosine decay.
        blank_color: RGB in [0, 1] for the ``blank`` target.
        box_dilation: latent cells added around a box for region-level forgetting.
        augment: flips, zoom-out (and optional photometric jitter) of forget and retain
            batches during training, boxes included (``True`` for the defaults of
            :class:`~imgunlearn.data.augment.Augmentation`).
        frozen_encoder_stages: the first N of the generator's ``encoder_modules()`` (from the
            input) keep the original's weights, for every objective. The fewer layers move,
            the less the retained embeddings drift; 0 trains the whole encoder (the paper).
        retain_tail: weight of :func:`~imgunlearn.unlearning.objectives.retain_tail_loss`
            over the retained cells (0: off), which lowers the forget map's threshold.
        tail_share: the share of retained cells that term averages (the largest changes).
        retain_output: weight of :func:`~imgunlearn.unlearning.objectives.retain_output_loss`,
            the retain images' decoded outputs against the original's (0: off). The embedding
            term weighs every latent channel alike; this one weighs a change by what the frozen
            decoder makes of it, i.e. by the pixels it moves.
        forget_margin: weight of :func:`~imgunlearn.unlearning.objectives.forget_margin_loss`
            over the forget cells (0: off): each should move at least ``margin_level`` from the
            original's embedding, so that the forget map finds it.
        margin_level: that least change d per cell.
    """

    def __init__(
        self,
        generator: Generator,
        objective: str = "ours",
        target: str = "noise",
        alpha: float = 0.2,
        task: str | Sequence[str] = "reconstruct",
        mask_area: float = DEFAULT_MASK_AREA,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        max_steps: int = 200,
        blank_color: Sequence[float] = (0.5, 0.5, 0.5),
        box_dilation: int = 1,
        augment: Augmentation | dict | bool | None = None,
        frozen_encoder_stages: int = 0,
        retain_tail: float = 0.0,
        tail_share: float = 0.01,
        retain_output: float = 0.0,
        forget_margin: float = 0.0,
        margin_level: float = 1.0,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise InvalidSettingError(f"unknown objective {objective!r}; choose one of {list(OBJECTIVES)}")
        if target not in TARGETS:
            raise InvalidSettingError(f"unknown target {target!r}; choose one of {list(TARGETS)}")
        if alpha < 0:
            raise InvalidSettingError(f"alpha must be >= 0, got {alpha}")
        if box_dilation < 0:
            raise InvalidSettingError(f"box_dilation must be >= 0 latent cells, got {box_dilation}")
        if retain_tail < 0 or not 0.0 < tail_share <= 1.0:
            raise InvalidSettingError(f"retain_tail must be >= 0 and tail_share in (0, 1], got {retain_tail} and {tail_share}")
        if retain_output < 0:
            raise InvalidSettingError(f"retain_output must be >= 0, got {retain_output}")
        if forget_margin < 0 or margin_level <= 0:
            raise InvalidSettingError(f"forget_margin must be >= 0 and margin_level > 0, got {forget_margin} and "
                                      f"{margin_level}")
        stages = generator.encoder_modules()
        if not 0 <= frozen_encoder_stages < len(stages):
            raise InvalidSettingError(
                f"frozen_encoder_stages must be in 0..{len(stages) - 1}: this {generator.family} generator's "
                f"encoder has {len(stages)} stages and at least one must learn; got {frozen_encoder_stages}")
        self.augmentation = resolve_augmentation(augment)
        self.save_hyperparameters(ignore=["generator", "augment"])
        self.hparams["augment"] = self.augmentation.to_dict() if self.augmentation else None
        names = [task] if isinstance(task, str) else list(task)
        self.tasks = [Task(name, area=mask_area) for name in names]
        self.teacher = generator
        self.student = copy.deepcopy(generator).to(memory_format=torch.contiguous_format)
        self.teacher.requires_grad_(False).eval()
        self.student.requires_grad_(True)
        if objective in ENCODER_ONLY_OBJECTIVES:
            # The decoder stays the original's: only the encoder copy learns.
            for parameter in self.student.decoder_parameters():
                parameter.requires_grad_(False)
        for stage in self.student.encoder_modules()[:frozen_encoder_stages]:
            stage.requires_grad_(False)

    def train(self, mode: bool = True) -> UnlearningModule:
        super().train(mode)
        self.teacher.eval()  # the teacher is a fixed function, whatever the trainer does
        return self

    def on_fit_start(self) -> None:
        # The frozen teacher only runs forward (3 of a step's 5 encoder passes for region-level
        # forgetting): in the layout fastest for that on this device.
        self.teacher.to(memory_format=fast_layout(self.device))

    def teardown(self, stage: str) -> None:
        self.teacher.to(memory_format=torch.contiguous_format)  # the caller's generator, as it came

    # -- the objective --------------------------------------------------------------------
    def _target_images(self, forget_images: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        if self.hparams.target == "blank":
            return obj.blank_images(forget_images, self.hparams.blank_color)
        if self.hparams.target == "fill":
            return obj.region_mean_images(forget_images, region)
        return obj.noise_images(forget_images)

    def compute_losses(self, forget: dict[str, torch.Tensor],
                       retain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The losses of one step; ``loss`` is the one optimised."""
        objective = self.hparams.objective
        x_f, x_r = forget["image"], retain["image"]
        if objective in ENCODER_ONLY_OBJECTIVES:
            return self._encoder_losses(x_f, forget.get("mask"), x_r)
        return self._whole_model_losses(x_f, x_r)

    def _task_transform(self, images: torch.Tensor):
        """T for this batch: one task per sample, the same T for student and teacher."""
        masks = random_task_masks(self.tasks, images.shape[0], *images.shape[-2:]).to(images)
        return lambda x: self.teacher.hide(x, masks, self.tasks[0].fill)

    def _encoder_losses(self, x_f: torch.Tensor, box_mask: torch.Tensor | None,
                        x_r: torch.Tensor) -> dict[str, torch.Tensor]:
        T_r, T = self._task_transform(x_r), self._task_transform(x_f)
        # Student and teacher embed at the same probe (diffusion: timestep, noise and the whole
        # image it noises, so that the hidden pixels are seen as in base training and sampling).
        probe_r, probe_f = self.teacher.draw_probe(x_r), self.teacher.draw_probe(x_f)
        with torch.no_grad():
            retain_teacher = self.teacher.embed(T_r(x_r), probe_r)
        retain_student = self.student.embed(T_r(x_r), probe_r)
        retain_term = obj.retain_loss(retain_student, retain_teacher)
        forget_student = self.student.embed(T(x_f), probe_f)
        tail_parts = [(retain_student, retain_teacher, None)]
        margin_term = None

        if self.hparams.objective == "random_encoder":
            with torch.no_grad():
                target = obj.random_embeddings_like(self.teacher.embed(T(x_f), probe_f))
            forget_term = obj.forget_loss(forget_student, target)
        else:
            region = _region_mask(box_mask, x_f)
            with torch.no_grad():
                hidden = x_f * (1 - region) + self._target_images(x_f, region) * region
                target = self.teacher.embed(T(hidden), self.teacher.probe_on(probe_f, hidden))
            weight = self.student.latent_mask(region, self.hparams.box_dilation)
            forget_term = obj.forget_loss(forget_student, target, weight)
            region_level = bool((weight < 1).any())
            if region_level or self.hparams.forget_margin > 0:
                with torch.no_grad():
                    kept = self.teacher.embed(T(x_f), probe_f)
            if region_level:
                # Region-level: the rest of a forget image is retained like any retain image.
                retain_term = retain_term + obj.retain_loss(forget_student, kept, 1 - weight)
                tail_parts.append((forget_student, kept, (weight == 0).float()))
            if self.hparams.forget_margin > 0:
                # Over the boxes themselves: the dilation's ring may hold background the map should keep.
                margin_term = obj.forget_margin_loss(forget_student, kept, self.hparams.margin_level,
                                                     self.student.latent_mask(region))
        loss = obj.unlearning_loss(retain_term, forget_term, self.hparams.alpha)
        losses = {"retain_loss": retain_term, "forget_loss": forget_term}
        if margin_term is not None:
            loss = loss + self.hparams.forget_margin * margin_term
            losses["forget_margin_loss"] = margin_term
        if self.hparams.retain_output > 0:
            with torch.no_grad():
                teacher_output = self.teacher.decode(retain_teacher, probe_r)
            output_term = obj.retain_output_loss(self.student.decode(retain_student, probe_r), teacher_output)
            loss = loss + self.hparams.retain_output * output_term
            losses["retain_output_loss"] = output_term
        if self.hparams.retain_tail > 0:
            # Over retain images and the cells of forget images outside the (dilated) boxes.
            tail = sum(obj.retain_tail_loss(s, t, self.hparams.tail_share, w) for s, t, w in tail_parts)
            loss = loss + self.hparams.retain_tail * tail
            losses["retain_tail_loss"] = tail
        return {"loss": loss, **losses}

    def _whole_model_losses(self, x_f: torch.Tensor, x_r: torch.Tensor) -> dict[str, torch.Tensor]:
        T_r, T, objective = self._task_transform(x_r), self._task_transform(x_f), self.hparams.objective
        student = self.student
        # prediction(): the output and the targets for the autoencoders; diffusion's predicted
        # and true noise for the targets noised at a drawn timestep.
        retain_term = obj.reconstruction_loss(*student.prediction(T_r(x_r), x_r, student.draw_probe(x_r)))
        forget_inputs, probe = T(x_f), student.draw_probe(x_f)
        if objective == "max_loss":
            forget_term = obj.max_loss_forget_term(*student.prediction(forget_inputs, x_f, probe))
        elif objective == "noisy_label":
            forget_term = obj.noisy_label_forget_term(*student.prediction(forget_inputs, obj.noise_images(x_f), probe))
        else:  # retain_label
            targets = obj.cycled_retain_images(x_r, x_f.shape[0])
            forget_term = obj.retain_label_forget_term(*student.prediction(forget_inputs, targets, probe))
        loss = obj.unlearning_loss(retain_term, forget_term, self.hparams.alpha)
        return {"loss": loss, "retain_loss": retain_term, "forget_loss": forget_term}

    # -- Lightning hooks ------------------------------------------------------------------
    def training_step(self, batch: dict[str, dict[str, torch.Tensor]], batch_idx: int) -> torch.Tensor:
        if self.augmentation is not None:
            # On the device, batched: it costs next to nothing beside the encoders.
            batch = {name: augment_batch(part, self.augmentation) for name, part in batch.items()}
        losses = self.compute_losses(batch["forget"], batch["retain"])
        batch_size = batch["forget"]["image"].shape[0]
        self.log("retain_loss", losses["retain_loss"], prog_bar=True, batch_size=batch_size)
        self.log("forget_loss", losses["forget_loss"], prog_bar=True, batch_size=batch_size)
        self.log("loss", losses["loss"], batch_size=batch_size)
        for extra in ("retain_tail_loss", "retain_output_loss", "forget_margin_loss"):
            if extra in losses:
                self.log(extra, losses[extra], batch_size=batch_size)
        return losses["loss"]

    def configure_optimizers(self) -> dict:
        trainable = [p for p in self.student.parameters() if p.requires_grad]
        h = self.hparams
        return adamw_warmup_cosine(trainable, h.lr, h.weight_decay, h.warmup_steps, h.max_steps)


def _region_mask(box_mask: torch.Tensor | None, images: torch.Tensor) -> torch.Tensor:
    """Per-sample pixel mask of what to forget: the boxes, or the whole image without boxes."""
    whole = torch.ones(images.shape[0], 1, *images.shape[-2:], dtype=images.dtype, device=images.device)
    if box_mask is None:
        return whole
    has_boxes = box_mask.flatten(1).amax(dim=1) > 0
    return torch.where(has_boxes.view(-1, 1, 1, 1), box_mask.to(images), whole)
