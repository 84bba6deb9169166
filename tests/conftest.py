"""Shared fixtures: a tiny LLaVA-OneVision checkpoint and small synthetic datasets, built offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomalib_genau.backbone import build_tiny_backbone
from anomalib_genau.data.synthetic import generate_mvtec_dataset
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
