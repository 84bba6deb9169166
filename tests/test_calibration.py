"""The fused image score under a frozen calibration (paper Eq. 6)."""

import pytest
import torch

from anomalib_genau.models.genau.calibration import ScoreCalibration


def test_estimate_and_fuse_known_values() -> None:
    calibration = ScoreCalibration(mixing_weight=0.5)
    assert not calibration.calibrated
    calibration.estimate(torch.tensor([0.2, 0.4, 0.6]), torch.tensor([-2.0, 0.0, 2.0]))
    assert calibration.calibrated
    torch.testing.assert_close(calibration.mean, torch.tensor([0.4, 0.0]))
    torch.testing.assert_close(calibration.std, torch.tensor([0.2, 2.0]))
    # z = (1, -0.5) -> sigmoid(0.5 * 1 + 0.5 * -0.5)
    score = calibration(torch.tensor([0.6]), torch.tensor([-1.0]))
    assert score.item() == pytest.approx(torch.sigmoid(torch.tensor(0.25)).item())


def test_score_is_in_unit_interval_and_monotonic_in_both_terms() -> None:
    calibration = ScoreCalibration(mixing_weight=0.3)
    calibration.estimate(torch.rand(50), torch.randn(50) * 3)
    grid = torch.linspace(-10, 10, 21)
    scores = calibration(torch.full_like(grid, 0.5), grid)
    assert (scores.diff() > 0).all()
    scores = calibration(torch.linspace(0, 1, 21), torch.zeros(21))
    assert (scores.diff() > 0).all()
    extreme = calibration(torch.tensor([0.0, 1.0]), torch.tensor([-1e4, 1e4]))
    assert extreme.min() >= 0.0
    assert extreme.max() <= 1.0


def test_calibration_is_part_of_the_state_dict() -> None:
    calibration = ScoreCalibration()
    calibration.estimate(torch.tensor([0.1, 0.3]), torch.tensor([1.0, 3.0]))
    restored = ScoreCalibration()
    restored.load_state_dict(calibration.state_dict())
    assert restored.calibrated
    torch.testing.assert_close(restored.mean, calibration.mean)


def test_estimation_needs_two_images() -> None:
    with pytest.raises(ValueError, match="at least 2 images"):
        ScoreCalibration().estimate(torch.tensor([0.5]), torch.tensor([0.0]))
