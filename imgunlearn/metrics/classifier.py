"""The small classifier we train ourselves on the dataset (docs/design.md §3): its accuracy on generator
outputs tells whether a class is still recognisable, and its penultimate layer is an offline
feature space for Fréchet distance when no pretrained backbone is available."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidSettingError
from ..fileio import write_json_atomic

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _block(cin: int, cout: int) -> nn.Sequential:
    # GroupNorm rather than BatchNorm: no running statistics, so a model trained for a handful of
    # steps behaves the same in eval mode as in training, and batches of one image are fine.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.GroupNorm(min(8, cout), cout),
        nn.ReLU(inplace=True),
    )


class SmallClassifier(nn.Module):
    """Three conv blocks and a linear head. Inputs: RGB in [-1, 1], any H×W (resized to in_size)."""

    def __init__(self, num_classes: int = 10, in_size: int = 32, width: int = 32) -> None:
        super().__init__()
        if num_classes < 1 or in_size < 4 or width < 1:
            raise InvalidSettingError(f"bad SmallClassifier config: num_classes={num_classes}, in_size={in_size}, "
                                      f"width={width}")
        self.num_classes = num_classes
        self.in_size = in_size
        self.width = width
        self.feature_dim = 4 * width
        self.body = nn.Sequential(
            _block(3, width), nn.MaxPool2d(2),
            _block(width, 2 * width), nn.MaxPool2d(2),
            _block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(self.feature_dim, num_classes)
        # Where the weights came from (set by load_classifier); extractors use it in their name.
        self.source: str | None = None

    def config(self) -> dict[str, int]:
        return {"num_classes": self.num_classes, "in_size": self.in_size, "width": self.width}

    def _prepare(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise InvalidSettingError(f"expected RGB images (B, 3, H, W), got shape {tuple(x.shape)}")
        if x.shape[-2:] != (self.in_size, self.in_size):
            # antialias only matters when shrinking; it keeps small-detail aliasing out of features
            x = F.interpolate(x, size=(self.in_size, self.in_size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.in_size or x.shape[-2] > self.in_size)
        return x

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (B, 4·width)."""
        return self.body(self._prepare(x.float()))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes)."""
        return self.head(self.features(x))


def train_classifier(images: Tensor, labels: Tensor, *, num_classes: int = 10, epochs: int = 5,
                     batch_size: int = 128, lr: float = 2e-3, seed: int = 0, progress: bool = True,
                     in_size: int = 32, width: int = 32) -> SmallClassifier:
    """Train a SmallClassifier with AdamW on (images in [-1,1], integer labels); eval-mode result.

    Deterministic for a given seed: initialisation and shuffling use their own seeded RNGs, so
    the global RNG is neither consumed nor relied upon.
    """
    from tqdm.auto import tqdm

    if images.ndim != 4 or images.shape[0] != labels.shape[0]:
        raise InvalidSettingError(f"images (N,3,H,W) and labels (N,) must match; got {tuple(images.shape)} "
                                  f"and {tuple(labels.shape)}")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise InvalidSettingError(f"labels must lie in [0, {num_classes}); got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")

    device = images.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallClassifier(num_classes=num_classes, in_size=in_size, width=width).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    shuffle = torch.Generator().manual_seed(seed)
    n = images.shape[0]

    model.train()
    bar = tqdm(range(epochs), desc="training classifier", unit="epoch", disable=not progress)
    for _ in bar:
        order = torch.randperm(n, generator=shuffle).to(device)
        total_loss, correct = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            logits = model(images[idx])
            loss = F.cross_entropy(logits, labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * idx.numel()
            correct += int((logits.detach().argmax(1) == labels[idx]).sum())
        bar.set_postfix(loss=f"{total_loss / max(n, 1):.4f}", acc=f"{correct / max(n, 1):.3f}")
    return model.eval()


def save_classifier(model: SmallClassifier, directory: str | Path) -> Path:
    """Write config.json and model.safetensors (no pickle) to ``directory``; returns it."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(model.config(), directory / CONFIG_NAME)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME))
    return directory


def load_classifier(directory: str | Path, map_location: str | torch.device = "cpu") -> SmallClassifier:
    """Rebuild a classifier saved by save_classifier; eval mode."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"classifier file missing: {directory / name}")
    config = json.loads((directory / CONFIG_NAME).read_text())
    model = SmallClassifier(**{k: int(config[k]) for k in ("num_classes", "in_size", "width")})
    model.load_state_dict(load_file(str(directory / WEIGHTS_NAME), device=str(map_location)))
    model.source = str(directory)
    return model.to(map_location).eval()
