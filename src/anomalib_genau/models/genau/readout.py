"""Anchor-grounded segmentation readout (paper 4.2, Eq. 2-4).

Shapes: ``S`` stages, ``B`` images, ``N = h * w`` patches of one view, ``C`` vision width,
``D`` decoder width, ``(H, W)`` mask size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

NORMAL, DEFECT = 0, 1  # channel order of the similarity logits and of the anchors


class AnchorReadout(nn.Module):
    """Per-stage linear projections and cosine-similarity logits against the two anchors.

    Args:
        vision_dim: Width ``C`` of the vision-encoder hidden states.
        text_dim: Width ``D`` of the decoder hidden states (the anchors).
        num_stages: Number of vision stages ``S``; each gets its own projection.
        temperature: Fixed similarity temperature; logits are ``cos / temperature``.
            0.07 is the project's choice (CLIP's convention): the paper's value is lost.

    """

    def __init__(self, vision_dim: int, text_dim: int, num_stages: int, temperature: float = 0.07) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Linear(vision_dim, text_dim) for _ in range(num_stages))
        self.temperature = temperature

    def forward(
        self, stage_features: Sequence[torch.Tensor], anchors: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Similarity logits of every patch against the (normal, defect) anchors.

        Args:
            stage_features: ``S`` tensors of shape ``(B, N, C)``, patches in row-major order.
            anchors: ``(B, 2, D)``, row 0 the ``[SEG_normal]`` and row 1 the ``[SEG_defect]`` state.
            grid: Patch grid ``(h, w)`` with ``h * w == N``.

        Returns:
            Logits of shape ``(S, B, 2, h, w)``; channel 0 normal, channel 1 defect.

        """
        if len(stage_features) != len(self.projections):
            msg = f"Expected {len(self.projections)} vision stages, got {len(stage_features)}."
            raise ValueError(msg)
        anchors = F.normalize(anchors.float(), dim=-1)
        logits = []
        for projection, features in zip(self.projections, stage_features, strict=True):
            patches = F.normalize(projection(features.to(projection.weight.dtype)).float(), dim=-1)
            similarity = torch.einsum("bnd,bkd->bkn", patches, anchors) / self.temperature
            logits.append(similarity.reshape(similarity.shape[0], 2, *grid))
        return torch.stack(logits)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly upsample stage logits ``(S, B, 2, h, w)`` to ``(S, B, 2, H, W)``."""
    stages, batch = logits.shape[:2]
    upsampled = F.interpolate(logits.flatten(0, 1), size=size, mode="bilinear", align_corners=False)
    return upsampled.view(stages, batch, 2, *size)


def defect_probabilities(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-stage defect probability at mask size: upsample ``(S, B, 2, h, w)``, softmax, defect channel.

    Returns:
        ``(S, B, H, W)`` in ``[0, 1]``.

    """
    return upsample_logits(logits, size).softmax(dim=2)[:, :, DEFECT]


def anomaly_map(
    logits: torch.Tensor,
    size: tuple[int, int],
    high_res_logits: Sequence[torch.Tensor] | None = None,
    high_res_weight: float = 0.5,
) -> torch.Tensor:
    """The anomaly map: stage defect probabilities, optionally fused with the high-res readout.

    Per stage, ``p = w * p_high_res + (1 - w) * p_global`` when high-res logits are given
    (paper 4.2; both maps are first upsampled to the mask, since the global view is a plain
    resize and the high-res grid covers the image once unpadded). The paper sums the stage
    maps; we divide the sum by ``S`` so the map, and its maximum, stay in ``[0, 1]``: pixel and
    image rankings are unchanged.

    Args:
        logits: Global-view stage logits ``(S, B, 2, h, w)``.
        size: Mask size ``(H, W)``.
        high_res_logits: Per image, high-res stage logits ``(S, 1, 2, h_i, w_i)``, or ``None``.
        high_res_weight: Weight ``w`` of the high-res map (0.5: the project's choice).

    Returns:
        ``(B, 1, H, W)`` map in ``[0, 1]``.

    """
    probabilities = defect_probabilities(logits, size)
    if high_res_logits is not None:
        high_res = torch.cat([defect_probabilities(item, size) for item in high_res_logits], dim=1)
        probabilities = high_res_weight * high_res + (1 - high_res_weight) * probabilities
    return probabilities.mean(dim=0).unsqueeze(1)


def pad_maps(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack ``(1, 1, H_i, W_i)`` maps into ``(B, 1, max H, max W)``, zero-padded at the bottom and right."""
    height = max(m.shape[-2] for m in maps)
    width = max(m.shape[-1] for m in maps)
    return torch.cat([F.pad(m, (0, width - m.shape[-1], 0, height - m.shape[-2])) for m in maps])
