"""Seeded: what the pre-trained tiny stand-in learns of GenAU's map and answer, on held-out images."""

from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_genau import GenAU
from anomalib_genau.data import GenAUDataModule
from anomalib_genau.data.synthetic import generate_mvtec_dataset, read_difficulty
from anomalib_genau.evaluation import TestRecorder, part_metrics
from anomalib_genau.pretraining import install_pretrained_backbone

# as many normal as anomalous test images (18 each)
SIZE = {"n_train": 1, "n_test_good": 18, "n_test_per_defect": 6, "image_size": 112}


@pytest.fixture(scope="module")
def pretrained_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_pretrained_backbone(tmp_path_factory.mktemp("pretrained") / "genau-tiny")


@pytest.mark.slow
def test_pretrained_stand_in_learns_maps_and_answers_cleanly_on_held_out_images(
    pretrained_backbone: Path, tmp_path: Path
) -> None:
    """After short training the maps beat the untrained model's, the yes/no answer follows the image, all answers clean.

    GenAU takes the demo configuration's settings for the tiny stand-in (``configs/genau_tiny.yaml``:
    LoRA rank 32, alpha 64, readout temperature 2).
    """
    # the held-out target is generated with another seed, half of its defects subtle
    source = generate_mvtec_dataset(tmp_path / "source", {"carpet": ("color", "cut", "hole")}, seed=20, **SIZE)
    target = generate_mvtec_dataset(tmp_path / "target", {"carpet": ("color", "cut", "hole")}, seed=21, **SIZE)
    datamodule = GenAUDataModule(
        source=MVTecAD(root=source, category="carpet"),
        target=MVTecAD(root=target, category="carpet"),
        train_batch_size=4,
        eval_batch_size=12,
    )
    torch.manual_seed(0)
    model = GenAU(
        backbone=str(pretrained_backbone),
        learning_rate=2e-3,
        max_new_tokens=8,
        defect_type_mode=None,
        lora_rank=32,
        lora_alpha=64,
        temperature=2.0,
    )
    recorder = TestRecorder(target)
    engine = Engine(max_epochs=6, default_root_dir=tmp_path / "results", logger=False, callbacks=[recorder])
    engine.test(model=model, datamodule=datamodule)
    before = part_metrics(recorder.records, read_difficulty(target))
    engine.fit(model=model, datamodule=datamodule)
    engine.test(model=model, datamodule=datamodule)
    after = part_metrics(recorder.records, read_difficulty(target))
    assert len(recorder.records) == 36
    assert after["all"]["pixel_AUROC"] > before["all"]["pixel_AUROC"] + 0.05, (before, after)
    assert after["easy"]["pixel_AUROC"] > before["easy"]["pixel_AUROC"] + 0.05, (before, after)
    # half of the images are normal, so 0.5 is chance (measured: 0.69, and 0.89 on the easy part)
    assert after["all"]["yes_no_agreement"] > 0.6, after
    # the template is learned: every answer is a clean "Yes, <type>." or "No, the <object> is normal."
    assert after["all"]["clean_answers"] == 1.0, after
    answers = {record.answer for record in recorder.records}
    assert all(answer.startswith(("Yes,", "No,")) for answer in answers), answers
