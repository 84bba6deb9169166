"""Shared fixtures: a tiny LLaVA-OneVision checkpoint and small synthetic datasets, built offline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from anomalib_genau.backbone import build_tiny_backbone
from anomalib_genau.data.synthetic import generate_mvtec_dataset
from anomalib_genau.models.genau import GenAU
from anomalib_genau.models.genau.torch_model import GenAUModel

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_DATA = {"n_train": 2, "n_test_good": 8, "n_test_per_defect": 4, "image_size": 112}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_backbone(tmp_path_factory.mktemp("backbone") / "genau-tiny")


@pytest.fixture(scope="session")
def source_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_mvtec_dataset(tmp_path_factory.mktemp("data") / "source", seed=0, **SMALL_DATA)


@pytest.fixture(scope="session")
def target_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_mvtec_dataset(tmp_path_factory.mktemp("data") / "target", seed=1, **SMALL_DATA)


@pytest.fixture
def torch_model(tiny_backbone: Path) -> GenAUModel:
    torch.manual_seed(0)
    return GenAUModel(str(tiny_backbone))


def build_as_trained(tiny_backbone: Path, **arguments) -> GenAU:
    """A GenAU module as training leaves it: non-zero LoRA, token deltas, calibration and thresholds."""
    torch.manual_seed(0)
    module = GenAU(backbone=str(tiny_backbone), **arguments).eval()
    with torch.no_grad():
        for name, parameter in module.model.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                parameter.normal_(0, 0.05)
    module.model.calibration.estimate(torch.rand(16), torch.randn(16))
    post = module.post_processor
    for name, value in {"image_min": 0.2, "image_max": 0.8, "_image_threshold": 0.45}.items():
        getattr(post, name).fill_(value)
    for name, value in {"pixel_min": 0.1, "pixel_max": 0.9, "_pixel_threshold": 0.5}.items():
        getattr(post, name).fill_(value)
    return module


@pytest.fixture(scope="session")
def as_trained() -> Callable[..., GenAU]:
    """``as_trained(backbone, **arguments)``: a GenAU module with trained-looking weights, ready to export."""
    return build_as_trained
