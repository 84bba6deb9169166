"""GenAUDataModule: source test split for training, target test split for testing, dialogue per item."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from PIL import Image
from torchvision.transforms.v2 import RandomHorizontalFlip

from anomalib_genau.data import GenAUBatch, GenAUDataModule
from anomalib_genau.taxonomy import UnknownDefectError


def _datamodule(source: Path, target: Path | None, category: str = "carpet", **arguments) -> GenAUDataModule:
    datamodule = GenAUDataModule(
        source=MVTecAD(root=source, category=category),
        target=None if target is None else MVTecAD(root=target, category=category),
        train_batch_size=4,
        eval_batch_size=4,
        **arguments,
    )
    datamodule.setup()
    return datamodule


def test_splits(source_root: Path, target_root: Path) -> None:
    datamodule = _datamodule(source_root, target_root)
    source_test = MVTecAD(root=source_root, category="carpet")
    source_test.setup()
    train, val, test = datamodule.train_data, datamodule.val_data, datamodule.test_data
    # the source test split (8 good + 3 x 4 defective) is divided, label-stratified
    assert len(train) + len(val) == 20
    assert set(train.samples.image_path).isdisjoint(val.samples.image_path)
    for subset in (train, val):
        assert set(subset.samples.label_index) == {0, 1}
    # the target's test split is kept whole, normal images included
    assert len(test) == 20
    assert all(str(target_root) in path for path in test.samples.image_path)
    assert set(test.samples.label_index) == {0, 1}


def test_items_carry_the_dialogue_and_mapped_types(source_root: Path, target_root: Path) -> None:
    datamodule = _datamodule(source_root, target_root)
    items = [datamodule.test_data[i] for i in range(len(datamodule.test_data))]
    by_folder = {Path(item.image_path).parent.name: item for item in items}
    assert by_folder["cut"].defect_type == "tear"  # MVTec-AD carpet: cut -> tear
    assert by_folder["cut"].response == "Yes, tear. [SEG_defect] [SEG_normal]"
    assert by_folder["good"].defect_type == ""
    assert by_folder["good"].response == "No, the carpet is normal. [SEG_defect] [SEG_normal]"
    assert {item.instruction for item in items} == {"Is there any anomaly on the carpet? If yes, segment it."}
    assert all(item.category == "carpet" for item in items)
    assert by_folder["cut"].gt_mask.sum() > 0
    assert by_folder["good"].gt_mask.sum() == 0
    train_instructions = {datamodule.train_data[i].instruction for i in range(len(datamodule.train_data))}
    assert len(train_instructions) > 1  # paraphrased for training
    assert train_instructions == {datamodule.train_data[i].instruction for i in range(len(datamodule.train_data))}
    batch = next(iter(datamodule.train_dataloader()))
    assert isinstance(batch, GenAUBatch)
    assert len(batch.response) == len(batch.instruction) == batch.image.shape[0] == 4


def test_train_augmentations_change_the_training_items_only(source_root: Path, target_root: Path) -> None:
    plain = _datamodule(source_root, target_root)
    flipped = _datamodule(source_root, target_root, train_augmentations=RandomHorizontalFlip(p=1.0))
    defective = [i for i in range(len(plain.train_data)) if plain.train_data[i].gt_label == 1]
    for index in (0, defective[0]):
        item, reference = flipped.train_data[index], plain.train_data[index]
        assert item.image_path == reference.image_path
        assert torch.equal(item.image, reference.image.flip(-1))
        assert torch.equal(item.gt_mask, reference.gt_mask.flip(-1))
    mask = flipped.train_data[defective[0]].gt_mask
    assert not torch.equal(mask, mask.flip(-1))  # the generated defect is not mirror-symmetric
    for split in ("val_data", "test_data"):
        item, reference = getattr(flipped, split)[0], getattr(plain, split)[0]
        assert torch.equal(item.image, reference.image)


def test_without_target_tests_on_the_held_out_source_images(source_root: Path) -> None:
    datamodule = _datamodule(source_root, None)
    assert datamodule.test_data is datamodule.val_data


def test_grayscale_and_rgba_images_are_converted(source_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "modes"
    shutil.copytree(source_root / "leather", root / "leather")
    good = sorted((root / "leather" / "test" / "good").glob("*.png"))
    Image.open(good[0]).convert("L").save(good[0])
    Image.open(good[1]).convert("RGBA").save(good[1])
    datamodule = _datamodule(root, root, category="leather")
    items = {Path(datamodule.test_data[i].image_path).name: datamodule.test_data[i] for i in range(20)}
    for path in good[:2]:
        assert items[path.name].image.shape[0] == 3


def test_unknown_defect_folder_of_a_taxonomy_product_fails_with_the_known_names(
    source_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "unknown"
    shutil.copytree(source_root / "carpet", root / "carpet")
    for kind in ("test", "ground_truth"):
        (root / "carpet" / kind / "cut").rename(root / "carpet" / kind / "scuff")
    with pytest.raises(UnknownDefectError, match="known names: color, cut, hole"):
        _datamodule(root, root)  # at setup, before any epoch starts


def test_products_outside_the_taxonomy_use_their_folder_names(source_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "custom"
    shutil.copytree(source_root / "tile", root / "bracket_plate")
    datamodule = _datamodule(root, root, category="bracket_plate")
    types = {datamodule.test_data[i].defect_type for i in range(len(datamodule.test_data))}
    assert types == {"", "crack", "oil", "gray_stroke"}
    item = datamodule.test_data[0]
    assert "bracket plate" in item.instruction
    assert np.asarray(item.image).shape[0] == 3
