"""One-class training: a plain anomalib datamodule's normal images with synthetic anomalies."""

import math
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_genau import GenAU, prompts
from anomalib_genau.data.synthetic_anomalies import SYNTHETIC_ANSWER, SyntheticAnomalies


def test_synthetic_anomalies_come_with_their_masks_and_binary_answers() -> None:
    torch.manual_seed(0)
    images = torch.rand(3, 3, 64, 64) * 0.2 + 0.4
    anomalous, masks = SyntheticAnomalies(probability=1.0)(images)
    assert anomalous.shape == images.shape and masks.shape == (3, 64, 64) and masks.dtype == torch.bool
    assert all(mask.any() for mask in masks)
    changed = (anomalous - images).abs().amax(dim=1) > 1e-6
    assert (changed & ~masks).sum() == 0  # pixels change inside the masks only
    assert SyntheticAnomalies.responses("carpet", masks) == [prompts.response("carpet", [SYNTHETIC_ANSWER])] * 3
    untouched, empty = SyntheticAnomalies(probability=0.0)(images)
    assert torch.equal(untouched, images) and not empty.any()
    assert SyntheticAnomalies.responses("carpet", empty) == [prompts.response("carpet", [])] * 3
    with pytest.raises(ValueError, match=r"in \[0, 1\], got 1.5"):
        SyntheticAnomalies(probability=1.5)
    with pytest.raises(ValueError, match="holds anomalous images"):
        SyntheticAnomalies.check_normal(torch.tensor([0, 1]))


def test_plain_mvtec_trains_one_class_on_its_train_split_and_tests_like_anomalib(
    tiny_backbone: Path, source_root: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = GenAU(backbone=str(tiny_backbone), max_new_tokens=8, anomaly_probability=1.0)
    trained_on, losses = [], []
    step = model.training_step

    def recording_step(batch, *args, **kwargs):
        trained_on.extend(batch.image_path)
        loss = step(batch, *args, **kwargs)
        losses.append(float(loss))
        return loss

    model.training_step = recording_step
    datamodule = MVTecAD(root=source_root, category="carpet", train_batch_size=2, eval_batch_size=8, num_workers=0)
    engine = Engine(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    engine.fit(model=model, datamodule=datamodule)
    assert trained_on and all("/train/good/" in path for path in trained_on)  # no test image is trained on
    assert all(math.isfinite(loss) and loss > 0 for loss in losses)  # finite joint loss on synthetic anomalies
    metrics = engine.test(model=model, datamodule=datamodule)[0]
    assert {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"} <= set(metrics)
    assert all(0.0 <= metrics[name] <= 1.0 for name in ("image_AUROC", "pixel_AUROC"))
