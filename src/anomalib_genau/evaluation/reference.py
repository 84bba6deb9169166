"""A training-free reference: nearest-neighbour patches against a category's own normal images.

PatchCore's scoring rule (distance of each test patch to its nearest normal patch, blurred)
on raw colour patches instead of a pre-trained CNN's features: anomalib's models need
downloaded backbones, which this project cannot fetch. Each image's mean colour is
subtracted first, so products that vary in overall tint are compared by their structure
(``benchmarks/feature_reference.py`` scores the stand-in tower's features the same way).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from kornia.filters import gaussian_blur2d
from PIL import Image

from anomalib_genau.evaluation.parts import ImageRecord


class NearestNeighbourPatches:
    """Memory bank of ``patch`` x ``patch`` colour patches of normal images, scored by nearest distance.

    Subclasses score other patch descriptors by overriding :meth:`patches`.
    """

    def __init__(self, size: int = 224, patch: int = 8, stride: int = 4, sigma: float = 4.0) -> None:
        self.size, self.patch, self.stride, self.sigma = size, patch, stride, sigma
        self.bank: torch.Tensor | None = None

    def patches(self, image: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(3, H, W)`` in [0, 1] -> ``(grid**2, 3 * patch**2)`` patches of the mean-centred image, ``grid``."""
        image = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear", antialias=True)
        image = image - image.mean(dim=(2, 3), keepdim=True)
        return F.unfold(image, self.patch, stride=self.stride)[0].T, (self.size - self.patch) // self.stride + 1

    def fit(self, normal_images: Sequence[torch.Tensor]) -> NearestNeighbourPatches:
        """Store every patch of the normal ``(3, H, W)`` images."""
        if not normal_images:
            msg = "The reference needs at least one normal image."
            raise ValueError(msg)
        self.bank = torch.cat([self.patches(image)[0] for image in normal_images])
        return self

    @torch.no_grad()
    def anomaly_map(self, image: torch.Tensor) -> torch.Tensor:
        """``(size, size)`` distance of each location's patch to its nearest normal patch."""
        if self.bank is None:
            msg = "Call fit() with normal images first."
            raise RuntimeError(msg)
        patches, grid = self.patches(image)
        nearest = torch.cat([torch.cdist(chunk, self.bank).amin(dim=1) for chunk in patches.split(1024)])
        distances = nearest.reshape(1, 1, grid, grid)
        upsampled = F.interpolate(distances, size=(self.size, self.size), mode="bilinear", align_corners=False)
        kernel = 2 * round(4 * self.sigma) + 1
        return gaussian_blur2d(upsampled, (kernel, kernel), (self.sigma, self.sigma))[0, 0]


def _read(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


def ground_truth_mask(image: Path, size: int) -> torch.Tensor:
    """``(size, size)`` truth of an MVTec-layout test image: its ``_mask.png`` resized; all False for ``good``."""
    defect = image.parent.name
    if defect == "good":
        return torch.zeros(size, size, dtype=torch.bool)
    path = image.parents[2] / "ground_truth" / defect / f"{image.stem}_mask.png"
    mask = Image.open(path).convert("L").resize((size, size), Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(mask) > 127)


def reference_records(
    root: str | Path,
    categories: Sequence[str],
    size: int = 224,
    detector: Callable[[], NearestNeighbourPatches] | None = None,
) -> list[ImageRecord]:
    """Score every test image of each MVTec-layout category under ``root`` against its ``train/good``.

    ``detector`` makes each category's unfitted detector (default: colour patches at ``size``).
    """
    root, records = Path(root), []
    for category in categories:
        folder = root / category
        model = detector() if detector is not None else NearestNeighbourPatches(size)
        model.fit([_read(p) for p in sorted((folder / "train" / "good").glob("*.png"))])
        for path in sorted((folder / "test").glob("*/*.png")):
            label, mask = int(path.parent.name != "good"), ground_truth_mask(path, size)
            anomaly_map = model.anomaly_map(_read(path))
            key = path.relative_to(root).as_posix()
            records.append(ImageRecord(key, label, mask, anomaly_map, float(anomaly_map.max())))
    return records
