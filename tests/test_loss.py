"""Segmentation losses on inputs whose values are known."""

import pytest
import torch

from anomalib_genau.models.genau.loss import GenAULoss, dice_loss, tversky_loss


def _mask() -> torch.Tensor:
    mask = torch.zeros(1, 8, 8)
    mask[0, 2:6, 2:6] = 1
    return mask


def test_tversky_is_zero_when_perfect_and_near_one_when_inverted() -> None:
    mask = _mask()
    assert tversky_loss(mask, mask, 0.3, 0.7).item() == pytest.approx(0.0, abs=1e-6)
    assert tversky_loss(1 - mask, mask, 0.3, 0.7).item() > 0.95


def test_tversky_weighs_false_negatives_more_than_false_positives() -> None:
    mask = _mask()
    missed = mask.clone()
    missed[0, 2, 2:6] = 0  # 4 false negatives
    extra = mask.clone()
    extra[0, 0, 0:4] = 1  # 4 false positives
    # hand computation: TP = 12, FN = 4 -> 1 - 13 / (12 + 0.7 * 4 + 1); TP = 16, FP = 4 -> 1 - 17 / (16 + 0.3 * 4 + 1)
    assert tversky_loss(missed, mask, 0.3, 0.7).item() == pytest.approx(1 - 13 / 15.8)
    assert tversky_loss(extra, mask, 0.3, 0.7).item() == pytest.approx(1 - 17 / 18.2)
    assert tversky_loss(missed, mask, 0.3, 0.7) > tversky_loss(extra, mask, 0.3, 0.7)


def test_all_zero_masks_still_penalise_false_positives() -> None:
    empty = torch.zeros(1, 8, 8)
    assert tversky_loss(empty, empty, 0.3, 0.7).item() == pytest.approx(0.0)
    assert tversky_loss(torch.full((1, 8, 8), 0.5), empty, 0.3, 0.7).item() == pytest.approx(1 - 1 / (0.3 * 32 + 1))


def test_dice_is_symmetric_tversky() -> None:
    probability, target = torch.rand(2, 8, 8), (torch.rand(2, 8, 8) > 0.5).float()
    assert dice_loss(probability, target).item() == pytest.approx(tversky_loss(probability, target, 0.5, 0.5).item())


def test_joint_loss_and_its_gradient() -> None:
    loss = GenAULoss(seg_weight=2.0)
    mask = _mask()
    good = torch.zeros(1, 1, 2, 8, 8)
    good[0, 0, 1] = mask[0] * 20 - 10  # defect logit high inside the mask
    good[0, 0, 0] = -good[0, 0, 1]
    bad = -good.clone()
    lm_loss = torch.tensor(1.5)
    low, high = loss(lm_loss, good, mask), loss(lm_loss, bad, mask)
    assert low["loss"].item() == pytest.approx(1.5 + 2.0 * low["seg_loss"].item())
    assert low["seg_loss"] < 0.01
    assert high["seg_loss"] > 1.0
    logits = torch.zeros(2, 1, 2, 4, 4, requires_grad=True)  # two stages on a coarser grid
    loss(lm_loss, logits, mask)["loss"].backward()
    assert logits.grad is not None
    assert logits.grad.abs().sum() > 0
    # the defect channel's logits are pushed up inside the mask (upsampled to 8x8, centre of the grid)
    assert logits.grad[0, 0, 1, 1:3, 1:3].mean() < 0
