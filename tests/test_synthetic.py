"""The synthetic MVTec-layout generator: layout, determinism, masks that match the drawing."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from anomalib_genau.data.synthetic import (
    ALL_CATEGORIES,
    DEFAULT_CATEGORIES,
    DEFECT_DRAWERS,
    _texture,
    draw_defects,
    generate_mvtec_dataset,
    read_difficulty,
)


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


@pytest.mark.parametrize("subtle", [False, True])
def test_masks_cover_the_drawn_defect(subtle: bool) -> None:
    """Inside the mask the texture changed by the defect's contrast; away from it, not at all."""
    size, rng = 256, np.random.default_rng(0)
    signs = set()
    for category, defects in ALL_CATEGORIES.items():
        for defect in defects:
            texture = np.clip(_texture(category, rng, size), 0, 255)
            image, mask = draw_defects(texture, [DEFECT_DRAWERS.get(defect, DEFECT_DRAWERS["broken"])], rng, subtle)
            assert set(np.unique(mask)) <= {0, 255}
            inside = mask == 255
            assert (0.00002 if subtle else 0.002) < inside.mean() < (0.02 if subtle else 0.3)
            change = image.astype(float).mean(axis=-1) - texture.mean(axis=-1)
            far = ~np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(7))).astype(bool)
            assert np.abs(change[far]).max() < 1  # uint8 rounding only
            strength = np.abs(change[inside]).mean()
            assert (5 < strength < 40) if subtle else (strength > 20), (category, defect, strength)
            signs.add(np.sign(change[inside].mean()))
    assert signs == {-1.0, 1.0}  # lighter and darker defects both occur


def test_difficulty_file_lists_the_subtle_share(tmp_path: Path) -> None:
    root = generate_mvtec_dataset(tmp_path, n_train=0, n_test_good=0, n_test_per_defect=4, subtle_fraction=0.25)
    difficulty = read_difficulty(root)
    anomalous = {p.relative_to(root).as_posix() for p in root.glob("*/test/*/*.png")}
    assert set(difficulty) == anomalous
    assert sorted(difficulty.values()).count("subtle") == len(anomalous) // 4
    with pytest.raises(ValueError, match="subtle_fraction must lie in"):
        generate_mvtec_dataset(tmp_path / "bad", subtle_fraction=1.5)
    with pytest.raises(FileNotFoundError, match=r"difficulty\.csv"):
        read_difficulty(tmp_path / "missing")


def test_unknown_defect_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="No drawing for defect 'glitter'"):
        generate_mvtec_dataset(tmp_path, categories={"carpet": ["glitter"]})
