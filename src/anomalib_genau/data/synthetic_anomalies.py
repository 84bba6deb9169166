"""Synthetic anomalies on normal images, for one-class training and for mixing with real defects.

anomalib's ``PerlinAnomalyGenerator`` (the generator DRAEM trains with) blends a Perlin-noise
shaped patch of a random texture into an image and returns its mask. Without an anomaly source
folder the textures are generated, so nothing is downloaded. A synthetic anomaly has no defect
type: it is asked the binary question only and answered ``"Yes, anomaly."``, with its mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator

from anomalib_genau import prompts


class SyntheticAnomalies:
    """Turn normal images into synthetic anomalies with their masks and binary answers.

    Args:
        probability: Chance that each image is given an anomaly (the rest stay normal).
        anomaly_source_path: Folder of texture images to blend in (e.g. DTD); ``None``
            generates them.
        blend_factor: Opacity range of the blended patch (anomalib's default ``(0.2, 1.0)``).

    Raises:
        ValueError: ``probability`` outside ``[0, 1]``.

    """

    def __init__(
        self,
        probability: float = 0.5,
        anomaly_source_path: str | Path | None = None,
        blend_factor: tuple[float, float] = (0.2, 1.0),
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            msg = f"The synthetic anomaly probability must be in [0, 1], got {probability}."
            raise ValueError(msg)
        self.options = {
            "anomaly_source_path": anomaly_source_path,
            "probability": probability,
            "blend_factor": blend_factor,
        }
        self.generator: PerlinAnomalyGenerator | None = None

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomalies on ``(B, 3, H, W)`` images in ``[0, 1]`` and their ``(B, H, W)`` bool masks (or one image)."""
        if self.generator is None:
            # built on first use: constructing it draws from torch's global generator, which
            # would shift every seeded run that never asks for a synthetic anomaly
            self.generator = PerlinAnomalyGenerator(**self.options)
        augmented, masks = self.generator(images)
        return augmented.clamp(0, 1), masks.squeeze(-3) > 0.5

    @staticmethod
    def responses(object_name: str, masks: torch.Tensor) -> list[str]:
        """The binary answer of each image: ``"Yes, anomaly."`` where ``(B, H, W)`` masks hold an anomaly."""
        return [prompts.response(object_name, [prompts.SYNTHETIC_ANSWER] if bool(mask.any()) else []) for mask in masks]

    @staticmethod
    def check_normal(labels: torch.Tensor | Sequence[int] | None) -> None:
        """Refuse training images with anomalous labels: one-class training sees normal images only.

        Raises:
            ValueError: A label is anomalous.

        """
        if labels is not None and bool(torch.as_tensor(labels).bool().any()):
            msg = (
                "GenAU trains one-class (synthetic anomalies on normal images) on batches without responses, "
                "but this training batch holds anomalous images: use anomalib_genau.data.CrossDataset to train "
                "on real defects with their masks."
            )
            raise ValueError(msg)
