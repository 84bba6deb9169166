"""Frozen calibration of GenAU's fused image score (paper 4.3, Eq. 6, Appendix B)."""

from __future__ import annotations

import torch
from torch import nn


class ScoreCalibration(nn.Module):
    """``score = sigmoid(w * z(map_max) + (1 - w) * z(log_odds))`` with frozen z-score statistics.

    The statistics are estimated once, on the *source* data after training: GenAU estimates
    them during fitting on the validation part of the source test split (the calibration
    split), right before each validation pass, so anomalib's thresholds are computed on the
    calibrated score. They are buffers: they are saved in the checkpoint, and testing or
    predicting on any dataset never changes them.

    Args:
        mixing_weight: ``w``, weight of the map term (0.5: the project's choice; the paper's
            value is lost). The convex combination and the sigmoid, which puts the score in
            ``[0, 1]`` as anomalib's metrics expect, are the project's choices too.

    """

    def __init__(self, mixing_weight: float = 0.5) -> None:
        super().__init__()
        self.mixing_weight = mixing_weight
        self.register_buffer("mean", torch.zeros(2))
        self.register_buffer("std", torch.ones(2))
        self.register_buffer("num_samples", torch.zeros((), dtype=torch.long))

    @property
    def calibrated(self) -> bool:
        """Whether statistics have been estimated."""
        return bool(self.num_samples > 0)

    @torch.no_grad()
    def estimate(self, map_max: torch.Tensor, log_odds: torch.Tensor) -> None:
        """Estimate and store the statistics from ``(N,)`` map maxima and ``(N,)`` log-odds (N >= 2)."""
        if map_max.numel() < 2:
            msg = f"Calibration needs at least 2 images, got {map_max.numel()}."
            raise ValueError(msg)
        values = torch.stack([map_max.float(), log_odds.float()], dim=1)
        self.mean.copy_(values.mean(dim=0))
        self.std.copy_(values.std(dim=0).clamp_min(1e-6))
        self.num_samples.fill_(values.shape[0])

    def forward(self, map_max: torch.Tensor, log_odds: torch.Tensor) -> torch.Tensor:
        """Fused score ``(B,)`` in ``[0, 1]`` from ``(B,)`` map maxima and decoder log-odds."""
        z_map = (map_max.float() - self.mean[0]) / self.std[0]
        z_text = (log_odds.float() - self.mean[1]) / self.std[1]
        return torch.sigmoid(self.mixing_weight * z_map + (1 - self.mixing_weight) * z_text)
