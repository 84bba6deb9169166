"""GenAU's training objective (paper 4.5, Eq. 7-9): LM cross-entropy + lambda * segmentation."""

from __future__ import annotations

import torch
from kornia.losses import focal_loss
from torch import nn

from .readout import DEFECT, NORMAL, upsample_logits


def tversky_loss(
    probability: torch.Tensor, target: torch.Tensor, alpha: float, beta: float, smooth: float = 1.0
) -> torch.Tensor:
    """Binary Tversky loss of one probability channel, per image, averaged over the batch.

    Written here because kornia's ``tversky_loss`` averages the index over the classes
    *present* in each target: on a normal image (no defect pixel) the defect channel would
    drop out, while the paper applies Tversky to the defect channel of every image.
    ``smooth`` keeps the index defined, and its gradient non-zero, on all-zero masks.

    Args:
        probability: ``(B, H, W)`` channel probability.
        target: ``(B, H, W)`` binary target of that channel.
        alpha: Weight of false positives.
        beta: Weight of false negatives.
        smooth: Additive smoothing of numerator and denominator.

    """
    dims = (1, 2)
    true_positive = (probability * target).sum(dims)
    false_positive = (probability * (1 - target)).sum(dims)
    false_negative = ((1 - probability) * target).sum(dims)
    index = (true_positive + smooth) / (true_positive + alpha * false_positive + beta * false_negative + smooth)
    return (1 - index).mean()


def dice_loss(probability: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Binary soft Dice loss of one probability channel (Tversky with ``alpha = beta = 0.5``).

    Hand-written for the same reason as :func:`tversky_loss`: the paper's Dice term is on
    the normal channel alone, which kornia's class-averaged ``dice_loss`` cannot express.
    """
    return tversky_loss(probability, target, alpha=0.5, beta=0.5, smooth=smooth)


class GenAULoss(nn.Module):
    """``L = L_LM + seg_weight * sum_s [focal + Tversky(defect) + Dice(normal)]``.

    Args:
        seg_weight: ``lambda`` between the text and segmentation terms (1.0, "balanced").
        focal_alpha: kornia focal ``alpha`` (project's choice: 0.25, RetinaNet's value).
        focal_gamma: Focal ``gamma`` (project's choice: 2.0).
        tversky_alpha: Tversky false-positive weight (project's choice: 0.3).
        tversky_beta: Tversky false-negative weight (project's choice: 0.7).

    """

    def __init__(
        self,
        seg_weight: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        tversky_alpha: float = 0.3,
        tversky_beta: float = 0.7,
    ) -> None:
        super().__init__()
        self.seg_weight = seg_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.tversky_alpha = tversky_alpha
        self.tversky_beta = tversky_beta

    def segmentation(self, stage_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Sum over stages of focal + Tversky(defect) + Dice(normal).

        Args:
            stage_logits: ``(S, B, 2, h, w)`` similarity logits.
            masks: ``(B, H, W)`` binary ground truth; all-zero for normal images.

        """
        target = (masks > 0).long()
        logits = upsample_logits(stage_logits, tuple(masks.shape[-2:]))
        total = logits.new_zeros(())
        for stage in logits:  # (B, 2, H, W)
            probabilities = stage.softmax(dim=1)
            total = total + focal_loss(stage, target, self.focal_alpha, self.focal_gamma, reduction="mean")
            total = total + tversky_loss(
                probabilities[:, DEFECT], target.float(), self.tversky_alpha, self.tversky_beta
            )
            total = total + dice_loss(probabilities[:, NORMAL], 1.0 - target.float())
        return total

    def forward(
        self, lm_loss: torch.Tensor, stage_logits: torch.Tensor, masks: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Return ``{"loss", "lm_loss", "seg_loss"}``; ``loss`` is the one to back-propagate."""
        seg_loss = self.segmentation(stage_logits, masks)
        return {
            "loss": lm_loss + self.seg_weight * seg_loss,
            "lm_loss": lm_loss.detach(),
            "seg_loss": seg_loss.detach(),
        }
