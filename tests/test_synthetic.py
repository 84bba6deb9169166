"""The synthetic MVTec-layout generator: layout, determinism, masks that match the drawing."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_genau.data.synthetic import DEFAULT_CATEGORIES, generate_mvtec_dataset


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_layout_and_determinism(tmp_path: Path) -> None:
    args = {"n_train": 2, "n_test_good": 3, "n_test_per_defect": 2, "image_size": 64}
    first = _files(generate_mvtec_dataset(tmp_path / "a", seed=3, **args))
    again = _files(generate_mvtec_dataset(tmp_path / "b", seed=3, **args))
    other = _files(generate_mvtec_dataset(tmp_path / "c", seed=4, **args))
    assert first == again
    assert first.keys() == other.keys()
    assert first != other
    for category, defects in DEFAULT_CATEGORIES.items():
        assert f"{category}/train/good/001.png" in first
        assert f"{category}/test/good/002.png" in first
        for defect in defects:
            assert f"{category}/test/{defect}/001.png" in first
            assert f"{category}/ground_truth/{defect}/001_mask.png" in first
    assert len(first) == len(DEFAULT_CATEGORIES) * (2 + 3 + 2 * 3 * 2)


def test_masks_cover_the_drawn_defect(tmp_path: Path) -> None:
    root = generate_mvtec_dataset(tmp_path, n_train=0, n_test_good=0, n_test_per_defect=3, image_size=96)
    for category, defects in DEFAULT_CATEGORIES.items():
        for defect in defects:
            for index in range(3):
                image = np.asarray(Image.open(root / category / "test" / defect / f"{index:03d}.png"), dtype=float)
                mask = np.asarray(Image.open(root / category / "ground_truth" / defect / f"{index:03d}_mask.png"))
                assert set(np.unique(mask)) <= {0, 255}
                inside = mask == 255
                assert 0.002 < inside.mean() < 0.3
                # defect pixels stand out from the texture: their colour is far from the background's
                background = image[~inside].mean(axis=0)
                distance = np.linalg.norm(image - background, axis=-1)
                assert distance[inside].mean() > 2 * distance[~inside].mean()
                # and are darker (see DEFECT_DRAWERS: the tiny vision tower cannot flag both polarities)
                assert image[inside].mean() < image[~inside].mean()


def test_unknown_defect_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="No drawing for defect 'glitter'"):
        generate_mvtec_dataset(tmp_path, categories={"carpet": ["glitter"]})
