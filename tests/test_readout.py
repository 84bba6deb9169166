"""The anchor readout and the anomaly map, on features whose similarities are known."""

import math

import pytest
import torch

from anomalib_genau.models.genau.readout import DEFECT, NORMAL, AnchorReadout, anomaly_map, upsample_logits
from anomalib_genau.models.genau.torch_model import resolve_vision_layers


def _identity_readout(dim: int, stages: int, temperature: float = 0.07) -> AnchorReadout:
    readout = AnchorReadout(dim, dim, stages, temperature)
    with torch.no_grad():
        for projection in readout.projections:
            projection.weight.copy_(torch.eye(dim))
            projection.bias.zero_()
    return readout


def test_logits_are_cosine_over_temperature() -> None:
    readout = _identity_readout(dim=4, stages=1, temperature=0.1)
    normal, defect = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0])
    anchors = torch.stack([normal, defect])[None]  # (1, 2, 4)
    # 2 x 3 grid: patch 4 (row 1, col 1) points at the defect anchor, patch 0 halfway between
    features = normal.repeat(6, 1) * 3.0
    features[4] = defect * 0.5
    features[0] = normal + defect
    logits = readout([features[None]], anchors, (2, 3))
    assert logits.shape == (1, 1, 2, 2, 3)
    assert logits[0, 0, NORMAL, 0, 1].item() == pytest.approx(10.0)
    assert logits[0, 0, DEFECT, 0, 1].item() == pytest.approx(0.0, abs=1e-6)
    assert logits[0, 0, DEFECT, 1, 1].item() == pytest.approx(10.0)
    assert logits[0, 0, NORMAL, 1, 1].item() == pytest.approx(0.0, abs=1e-6)
    assert logits[0, 0, DEFECT, 0, 0].item() == pytest.approx(10.0 / math.sqrt(2))


def test_map_is_the_stage_mean_of_defect_probabilities() -> None:
    readout = _identity_readout(dim=2, stages=2, temperature=1.0)
    anchors = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    defect_patch = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # top-left patch defective
    normal_only = torch.tensor([[1.0, 0.0]]).repeat(4, 1)
    logits = readout([defect_patch[None], normal_only[None]], anchors, (2, 2))
    maps = anomaly_map(logits, (2, 2))  # no upsampling: one pixel per patch
    high = torch.sigmoid(torch.tensor(1.0))  # softmax of (0, 1)
    low = torch.sigmoid(torch.tensor(-1.0))
    expected = torch.tensor([[(high + low) / 2, low], [low, low]])
    assert maps.shape == (1, 1, 2, 2)
    torch.testing.assert_close(maps[0, 0], expected)
    upsampled = anomaly_map(logits, (8, 8))
    assert upsampled.shape == (1, 1, 8, 8)
    assert upsampled.min() >= 0.0
    assert upsampled.max() <= 1.0
    assert upsampled[0, 0, :4, :4].mean() > upsampled[0, 0, 4:, 4:].mean()


def test_upsample_keeps_stages_and_channels() -> None:
    logits = torch.randn(3, 2, 2, 4, 5)
    assert upsample_logits(logits, (16, 20)).shape == (3, 2, 2, 16, 20)


def test_readout_refuses_a_wrong_number_of_stages() -> None:
    readout = AnchorReadout(4, 4, num_stages=2)
    with pytest.raises(ValueError, match="Expected 2 vision stages, got 1"):
        readout([torch.randn(1, 4, 4)], torch.randn(1, 2, 4), (2, 2))


def test_vision_layers() -> None:
    assert resolve_vision_layers(None, 26) == [7, 13, 19, 26]
    assert resolve_vision_layers(None, 6) == [2, 3, 4, 6]
    assert resolve_vision_layers([3, -1], 6) == [3, 6]
    with pytest.raises(ValueError, match=r"indices in 1\.\.6"):
        resolve_vision_layers([0, 7], 6)
