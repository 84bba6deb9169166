"""The cross-dataset protocol: anomalib's four loaders on generated data, defect types, bad input."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import RandomVerticalFlip

from anomalib_genau.data import CrossDataset, GenAUBatch
from anomalib_genau.data.images import BrokenImageError, read_rgb
from anomalib_genau.data.synthetic import DEFAULT_CATEGORIES
from anomalib_genau.data.synthetic_layouts import (
    LAYOUT_GENERATORS,
    MPDD_CATEGORIES,
    REAL_IAD_CATEGORIES,
    VISA_CATEGORIES,
)
from anomalib_genau.taxonomy import UnknownDefectError

COUNTS = {"n_train": 2, "n_test_good": 3, "n_test_per_defect": 2, "image_size": 64}

# Coarse types the taxonomy gives each generated category (VisA adds one two-label image).
EXPECTED_TYPES = {
    "MVTecAD": {"carpet": {"color", "tear", "hole"}, "leather": {"color", "cut", "poke"}},
    "MPDD": {"bracket_black": {"hole", "scratch"}, "metal_plate": {"color", "scratch"}},
    "Visa": {
        "candle": {"hole", "color", "contamination", "hole, color"},
        "pcb1": {"bent", "contamination", "scratch", "bent, contamination"},
    },
    "RealIAD": {"audiojack": {"scratch", "color", "broken"}, "bottle_cap": {"hole", "scratch", "color"}},
}
GENERATED = {
    "MVTecAD": DEFAULT_CATEGORIES,
    "MPDD": MPDD_CATEGORIES,
    "Visa": VISA_CATEGORIES,
    "RealIAD": REAL_IAD_CATEGORIES,
}


@pytest.fixture(scope="session")
def generated_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("generated")
    for layout, generate in LAYOUT_GENERATORS.items():
        generate(root / layout, seed=1, **COUNTS)
    return root


def _cross(root: Path, target: str, **kwargs: object) -> CrossDataset:
    kwargs.setdefault("target_root", root / target)
    datamodule = CrossDataset(source="MVTecAD", source_root=root / "MVTecAD", target=target, **kwargs)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


@pytest.mark.parametrize("layout", list(LAYOUT_GENERATORS))
def test_every_loader_reads_its_generated_layout_with_mapped_types(generated_root: Path, layout: str) -> None:
    datamodule = _cross(generated_root, layout)
    samples = datamodule.test_data.samples
    assert list(dict.fromkeys(samples.category)) == list(GENERATED[layout])  # every category, contiguous
    for category, defects in GENERATED[layout].items():
        rows = samples[samples.category == category]
        anomalous = len(defects) * COUNTS["n_test_per_defect"] + (layout == "Visa")
        assert (rows.label_index == 0).sum() == COUNTS["n_test_good"]  # normal test images kept
        assert (rows.label_index == 1).sum() == anomalous
        if category in EXPECTED_TYPES[layout]:
            assert set(rows.defect_type[rows.label_index == 1]) == EXPECTED_TYPES[layout][category]
    item = datamodule.test_data[len(datamodule.test_data) - 1]
    assert item.category == list(GENERATED[layout])[-1]
    assert item.category.replace("_", " ") in item.instruction  # the object name is the sample's category
    anomalous = next(
        datamodule.test_data[i] for i in range(len(datamodule.test_data)) if datamodule.test_data[i].gt_label
    )
    assert anomalous.gt_mask.sum() > 0
    assert anomalous.response == f"Yes, {anomalous.defect_type}. [SEG_defect] [SEG_normal]"
    assert datamodule.name == f"MVTecAD_to_{layout}"
    assert datamodule.category == "all"


def test_training_covers_every_source_category(generated_root: Path) -> None:
    datamodule = _cross(generated_root, "Visa")
    for subset in (datamodule.train_data, datamodule.val_data):
        assert set(subset.samples.category) == set(DEFAULT_CATEGORIES)
    objects = {datamodule.train_data[i].instruction for i in range(len(datamodule.train_data))}
    for category in DEFAULT_CATEGORIES:
        assert any(category in text for text in objects)
    batch = next(iter(datamodule.train_dataloader()))
    assert isinstance(batch, GenAUBatch)


def test_train_augmentations_reach_the_source_items_only(generated_root: Path) -> None:
    plain = _cross(generated_root, "MPDD")
    flipped = _cross(generated_root, "MPDD", train_augmentations=RandomVerticalFlip(p=1.0))
    assert torch.equal(flipped.train_data[0].image, plain.train_data[0].image.flip(-2))
    assert torch.equal(flipped.test_data[0].image, plain.test_data[0].image)


def test_selected_categories_and_unknown_ones(generated_root: Path) -> None:
    datamodule = _cross(generated_root, "RealIAD", source_categories=["tile"], target_categories=["bottle_cap"])
    assert set(datamodule.train_data.samples.category) == {"tile"}
    assert set(datamodule.test_data.samples.category) == {"bottle_cap"}
    with pytest.raises(ValueError, match="has no category candle; available: audiojack, bottle_cap"):
        _cross(generated_root, "RealIAD", target_categories=["candle"])
    with pytest.raises(ValueError, match="Unknown dataset 'VisA'; supported: MVTecAD, MPDD, Visa, RealIAD"):
        _cross(generated_root, "VisA")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CrossDataset(source="MVTecAD", source_root=generated_root / "nowhere", target=None)


def test_visa_annotation_problems_are_named(generated_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "visa"
    shutil.copytree(generated_root / "Visa", root)
    annotation = root / "candle" / "image_anno.csv"
    annotation.write_text(annotation.read_text().replace("extra wax in candle", "wax drip"))
    with pytest.raises(UnknownDefectError, match="known names: chunk_of_wax_missing"):
        _cross(generated_root, "Visa", target_root=root)
    annotation.unlink()
    with pytest.raises(FileNotFoundError, match=r"annotation file, which is missing: .*candle/image_anno.csv"):
        _cross(generated_root, "Visa", target_root=root)


def test_realiad_code_outside_the_known_codes_is_an_error(generated_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "realiad"
    shutil.copytree(generated_root / "RealIAD", root)
    metadata = root / "realiad_jsons" / "realiad_jsons_sv" / "audiojack.json"
    metadata.write_text(metadata.read_text().replace("_NG_HS_", "_NG_XX_").replace("NG/HS", "NG/XX"))
    for path in (root / "realiad_256" / "audiojack" / "NG" / "HS").rglob("*"):
        if path.is_file():
            path.rename(path.with_name(path.name.replace("_NG_HS_", "_NG_XX_")))
    (root / "realiad_256" / "audiojack" / "NG" / "HS").rename(root / "realiad_256" / "audiojack" / "NG" / "XX")
    with pytest.raises(UnknownDefectError, match=r"No Real-IAD defect code in .*known codes: AK, BX"):
        CrossDataset(
            source="MVTecAD", source_root=generated_root / "MVTecAD", target="RealIAD", target_root=root
        ).setup()


def test_corrupt_images_are_skipped_and_counted(generated_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "corrupt"
    shutil.copytree(generated_root / "MVTecAD", root)
    corrupt = sorted((root / "carpet" / "test" / "good").glob("*.png"))[0]
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    datamodule = CrossDataset(source="MVTecAD", source_root=root, target="MVTecAD", target_root=root, eval_batch_size=1)
    datamodule.setup()
    loader = datamodule.test_dataloader()
    batches = list(loader)
    assert len(batches) == len(datamodule.test_data) - 1  # a batch of nothing but the corrupt image is skipped
    assert all(isinstance(batch, GenAUBatch) for batch in batches)
    assert [(sample.path, sample.category) for sample in loader.unreadable] == [(str(corrupt), "carpet")]


def test_missing_masks_error_or_are_left_out_and_counted(generated_root: Path, tmp_path: Path) -> None:
    mvtec = tmp_path / "mvtec"
    shutil.copytree(generated_root / "MVTecAD", mvtec)
    (mvtec / "carpet" / "ground_truth" / "hole" / "000_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 anomalous image\(s\) in .*carpet have no mask.*hole/000.png"):
        CrossDataset(source="MVTecAD", source_root=mvtec, target=None).setup()
    realiad = tmp_path / "realiad"
    shutil.copytree(generated_root / "RealIAD", realiad)
    next((realiad / "realiad_256" / "bottle_cap" / "NG").rglob("*_mask.png")).unlink()
    datamodule = _cross(generated_root, "RealIAD", target_root=realiad)
    assert datamodule.test_data.without_mask == {"audiojack": 0, "bottle_cap": 1}
    assert len(datamodule.test_data) == 2 * (COUNTS["n_test_good"] + 3 * COUNTS["n_test_per_defect"]) - 1


def test_image_modes_are_converted_by_value(tmp_path: Path) -> None:
    gray16 = np.full((8, 8), 32768, dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "gray16.png")
    image = read_rgb(tmp_path / "gray16.png")
    assert image.shape == (3, 8, 8)
    assert torch.allclose(image, torch.full((3, 8, 8), 32768 / 65535))  # anomalib's reader gives 1.0
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 200, 30)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")  # fully transparent: the colour is kept, alpha dropped
    assert torch.allclose(read_rgb(tmp_path / "rgba.png")[:, 0, 0], torch.tensor([10, 200, 30]) / 255)
    Image.fromarray(np.full((8, 8), 51, dtype=np.uint8)).save(tmp_path / "gray8.png")
    assert torch.allclose(read_rgb(tmp_path / "gray8.png"), torch.full((3, 8, 8), 0.2))
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(BrokenImageError, match=r"text\.png"):
        read_rgb(tmp_path / "text.png")


def test_setup_reads_no_image(generated_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    original = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(str(path)) or original(path, *a, **k))
    datamodule = _cross(generated_root, "RealIAD")
    assert opened == []  # samples stay paths until an item is read
    item = datamodule.test_data[0]
    assert opened == [item.image_path, item.mask_path]  # one item reads its image and its mask only
