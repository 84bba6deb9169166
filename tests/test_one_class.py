"""One-class training: a plain anomalib datamodule's normal images with synthetic anomalies."""

import math
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_genau import GenAU, prompts
from anomalib_genau.data.synthetic_anomalies import SyntheticAnomalies
from anomalib_genau.taxonomy import object_name


def test_synthetic_anomalies_come_with_their_masks_and_binary_answers() -> None:
    torch.manual_seed(0)
    images = torch.rand(3, 3, 64, 64) * 0.2 + 0.4
    anomalous, masks = SyntheticAnomalies(probability=1.0)(images)
    assert anomalous.shape == images.shape and masks.shape == (3, 64, 64) and masks.dtype == torch.bool
    assert all(mask.any() for mask in masks)
    changed = (anomalous - images).abs().amax(dim=1) > 1e-6
    assert (changed & ~masks).sum() == 0  # pixels change inside the masks only
    assert SyntheticAnomalies.responses("carpet", masks) == [prompts.response("carpet", [prompts.SYNTHETIC_ANSWER])] * 3
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


def test_unusable_files_of_an_anomalib_datamodule_are_skipped_logged_and_counted(
    tiny_backbone: Path, source_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import csv
    import json
    import shutil

    import numpy as np
    from PIL import Image

    from anomalib_genau.data.unusable_files import dropped_samples

    root = tmp_path / "data"
    shutil.copytree(source_root / "carpet", root / "carpet")
    for index in range(2):  # two more normal training images, so that two are left usable
        shutil.copy(
            root / "carpet" / "test" / "good" / f"{index:03d}.png",
            root / "carpet" / "train" / "good" / f"1{index:02d}.png",
        )
    good = sorted((root / "carpet" / "train" / "good").glob("*.png"))
    good[0].write_bytes(good[0].read_bytes()[:200])  # truncated
    gray = np.asarray(Image.open(good[1]).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray).save(good[1])  # 16 bit: anomalib's reader would saturate it to white
    defects = sorted(path for path in (root / "carpet" / "test").rglob("*.png") if path.parent.name != "good")
    defects[0].write_bytes(b"not an image")
    mask = root / "carpet" / "ground_truth" / defects[1].parent.name / f"{defects[1].stem}_mask.png"
    mask.write_bytes(mask.read_bytes()[:100])
    torch.manual_seed(0)
    model = GenAU(backbone=str(tiny_backbone), max_new_tokens=8)
    trained_on: list[str] = []
    step = model.training_step

    def recording_step(batch, *args, **kwargs):
        trained_on.extend(batch.image_path)
        return step(batch, *args, **kwargs)

    model.training_step = recording_step
    datamodule = MVTecAD(root=root, category="carpet", train_batch_size=2, eval_batch_size=8, num_workers=0)
    engine = Engine(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    with caplog.at_level("WARNING"):
        engine.fit(model=model, datamodule=datamodule)
        engine.test(model=model, datamodule=datamodule)
    assert sorted(set(trained_on)) == sorted(map(str, good[2:]))  # every usable one, no other
    messages = caplog.text
    assert f"Skipping {good[0]} of the train split: cannot read the image" in messages
    assert f"Skipping {good[1]} of the train split: pixels of more than 8 bits (PIL mode I;16)" in messages
    assert f"cannot read its mask {mask}" in messages
    broken = sorted(map(str, defects[:2]))
    assert sorted(sample.path for sample in dropped_samples(datamodule.test_data)) == broken
    for split in (datamodule.val_data, datamodule.test_data):  # MVTecAD validates on its test split
        assert not set(split.samples.image_path) & set(broken)
    assert len(datamodule.test_data) == len(list((root / "carpet" / "test").rglob("*.png"))) - 2
    report = list(csv.DictReader((Path(engine.trainer.default_root_dir) / "category_report.csv").open()))
    assert (report[0]["Category"], report[0]["Unreadable"]) == ("carpet", "2")
    assert int(report[0]["Images"]) == len(datamodule.test_data)
    engine.predict(model=model, datamodule=datamodule)
    records = [json.loads(line) for line in (Path(engine.trainer.default_root_dir) / "predictions.jsonl").open()]
    assert len(records) == len(datamodule.test_data) + 2
    assert sorted(record["image_path"] for record in records if "error" in record) == broken


def test_an_anomalib_split_without_a_usable_file_is_refused_by_name(source_root: Path, tmp_path: Path) -> None:
    import shutil

    from anomalib_genau.data.unusable_files import drop_unusable

    root = tmp_path / "data"
    shutil.copytree(source_root / "carpet", root / "carpet")
    for path in (root / "carpet" / "train" / "good").glob("*.png"):
        path.write_bytes(b"")
    datamodule = MVTecAD(root=root, category="carpet", num_workers=0)
    datamodule.setup()
    with pytest.raises(ValueError, match=r"No file of the train split \(\d+\) can be used, e.g. .*cannot read"):
        drop_unusable(datamodule.train_data, "train", "carpet")


def test_cross_dataset_mixes_synthetic_anomalies_into_its_normal_training_images(source_root: Path) -> None:
    from anomalib_genau.data import CrossDataset

    with pytest.raises(ValueError, match=r"synthetic_ratio must be in \[0, 1\], got -0.1"):
        CrossDataset(source="MVTecAD", source_root=source_root, target=None, synthetic_ratio=-0.1)
    datamodule = CrossDataset(
        source="MVTecAD", source_root=source_root, target=None, synthetic_ratio=1.0, multi_type_ratio=0.0
    )
    datamodule.setup()
    train = [datamodule.train_data[i] for i in range(len(datamodule.train_data))]
    synthetic = [item for item in train if item.response == prompts.response("carpet", [prompts.SYNTHETIC_ANSWER])]
    real = [item for item in train if item.defect_type]
    assert synthetic and real and len(synthetic) + len(real) == len(train)  # every normal item became synthetic
    for item in synthetic:  # a mask, and the binary question only
        binary = {template.format(object=object_name(item.category)) for template in prompts.PROMPT_TEMPLATES}
        assert item.gt_mask.any() and item.instruction in binary
    evaluation = [datamodule.val_data[i] for i in range(len(datamodule.val_data))]
    assert not any(item.response.startswith("Yes, anomaly") for item in evaluation)  # never in validation


def test_a_mask_of_another_size_is_resized_to_its_image(source_root: Path, tmp_path: Path) -> None:
    import shutil

    from PIL import Image

    from anomalib_genau.data import CrossDataset

    root = tmp_path / "data"
    shutil.copytree(source_root / "carpet", root / "carpet")
    mask_path = sorted((root / "carpet" / "ground_truth").rglob("*.png"))[0]
    Image.open(mask_path).resize((40, 56)).save(mask_path)
    datamodule = CrossDataset(source="MVTecAD", source_root=root, target="MVTecAD", target_root=root)
    datamodule.setup()
    items = [datamodule.test_data[i] for i in range(len(datamodule.test_data))]
    item = next(item for item in items if item.mask_path == str(mask_path))
    assert item.gt_mask.shape == item.image.shape[-2:] and item.gt_mask.any()


def test_anomalib_benchmark_pipeline_runs_the_shipped_one_class_config(
    tiny_backbone: Path, source_root: Path, repo_root: Path, tmp_path: Path
) -> None:
    """``anomalib benchmark`` with the shipped one-class config on the tiny stand-in: one epoch, one category."""
    import csv
    import subprocess
    import sys

    import yaml

    config = yaml.safe_load((repo_root / "configs" / "benchmark_one_class.yaml").read_text())
    model, data = config["benchmark"]["model"]["init_args"], config["benchmark"]["data"]["init_args"]
    model.update(backbone=str(tiny_backbone), max_epochs=1, max_new_tokens=4)
    model["image_size"] = [112, 112]
    data.update(root=str(source_root), category={"grid": ["carpet"]})
    path = tmp_path / "benchmark.yaml"
    path.write_text(yaml.safe_dump(config))
    anomalib = Path(sys.executable).with_name("anomalib")
    subprocess.run([str(anomalib), "benchmark", "--config", str(path)], cwd=tmp_path, check=True, capture_output=True)
    (results,) = (tmp_path / "runs" / "benchmark").rglob("results.csv")
    rows = list(csv.DictReader(results.open()))
    assert [row["data.init_args.category"] for row in rows] == ["carpet"]
    assert all(0.0 <= float(row["image_AUROC"]) <= 1.0 and 0.0 <= float(row["pixel_AUROC"]) <= 1.0 for row in rows)
