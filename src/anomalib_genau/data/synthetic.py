"""Deterministic synthetic datasets in MVTec-AD layout, for demos, tests and smoke runs.

Layout written under ``root``::

    <category>/train/good/000.png
    <category>/test/good/000.png
    <category>/test/<defect>/000.png
    <category>/ground_truth/<defect>/000_mask.png   (0 or 255)

Each category is a procedural texture; each defect folder is drawn by a visually distinct
primitive (a coloured blob, a thin dark line, a dark hole, a glossy stain, a grey stroke).
Category and defect folder names follow MVTec-AD, so the paper's taxonomy maps them
(``carpet/cut -> tear``). The same seed writes the same files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Rng = np.random.Generator
DrawFn = Callable[[ImageDraw.ImageDraw, ImageDraw.ImageDraw, Rng, int], None]

DEFAULT_CATEGORIES: Mapping[str, Sequence[str]] = {
    "carpet": ("color", "cut", "hole"),
    "leather": ("color", "cut", "poke"),
    "tile": ("crack", "oil", "gray_stroke"),
}


def _texture(category: str, rng: Rng, size: int) -> np.ndarray:
    """A (size, size, 3) uint8 texture whose style depends on the category name."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    style = sum(map(ord, category)) % 3
    base = rng.uniform(90, 170, size=3)
    noise = rng.normal(0, 6, size=(size, size, 1))
    if style == 0:  # woven stripes
        period = rng.uniform(5, 8)
        pattern = 18 * np.sin(2 * np.pi * xx / period)[..., None] * np.sin(2 * np.pi * yy / period)[..., None]
    elif style == 1:  # smooth grain
        phase = rng.uniform(0, 2 * np.pi)
        pattern = 10 * np.sin(xx / 9 + np.sin(yy / 13 + phase) * 2)[..., None]
    else:  # tiles with grout lines
        cell = int(rng.integers(20, 28))
        grout = ((xx % cell) < 2) | ((yy % cell) < 2)
        pattern = np.where(grout, -35.0, 0.0)[..., None]
    image = base[None, None, :] + pattern + noise
    return np.clip(image, 0, 255).astype(np.uint8)


def _blob(draw: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw, rng: Rng, size: int, fill: tuple[int, ...]) -> None:
    radius = rng.uniform(0.08, 0.14) * size
    cx, cy = rng.uniform(0.25, 0.75, size=2) * size
    box = [cx - radius, cy - radius * rng.uniform(0.6, 1.0), cx + radius, cy + radius * rng.uniform(0.6, 1.0)]
    draw.ellipse(box, fill=fill)
    mask.ellipse(box, fill=255)


def _line(
    draw: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw, rng: Rng, size: int, fill: tuple[int, ...], width: int
) -> None:
    start = rng.uniform(0.15, 0.45, size=2) * size
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(0.35, 0.5) * size
    end = start + length * np.array([np.cos(angle), np.sin(angle)])
    points = [tuple(start), tuple((start + end) / 2 + rng.normal(0, 3, size=2)), tuple(end)]
    draw.line(points, fill=fill, width=width)
    mask.line(points, fill=255, width=width)


DEFECT_DRAWERS: Mapping[str, DrawFn] = {
    "color": lambda d, m, r, s: _blob(d, m, r, s, fill=(200, 40, 40)),
    "cut": lambda d, m, r, s: _line(d, m, r, s, fill=(20, 20, 20), width=max(4, round(s / 24))),
    "crack": lambda d, m, r, s: _line(d, m, r, s, fill=(35, 25, 20), width=max(4, round(s / 24))),
    "hole": lambda d, m, r, s: _blob(d, m, r, s, fill=(5, 5, 5)),
    "poke": lambda d, m, r, s: _blob(d, m, r, s, fill=(40, 30, 60)),
    "oil": lambda d, m, r, s: _blob(d, m, r, s, fill=(240, 220, 90)),
    "gray_stroke": lambda d, m, r, s: _line(d, m, r, s, fill=(235, 235, 235), width=max(5, s // 20)),
}


def _defective(texture: np.ndarray, defect: str, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``defect`` onto a copy of ``texture``; returns the image and its 0/255 mask."""
    if defect not in DEFECT_DRAWERS:
        msg = f"No drawing for defect '{defect}'; known defects: {', '.join(sorted(DEFECT_DRAWERS))}."
        raise ValueError(msg)
    size = texture.shape[0]
    image = Image.fromarray(texture)
    mask = Image.new("L", (size, size), 0)
    DEFECT_DRAWERS[defect](ImageDraw.Draw(image), ImageDraw.Draw(mask), rng, size)
    image = image.filter(ImageFilter.GaussianBlur(0.6))
    return np.asarray(image), np.asarray(mask)


def generate_mvtec_dataset(
    root: str | Path,
    categories: Mapping[str, Sequence[str]] = DEFAULT_CATEGORIES,
    n_train: int = 8,
    n_test_good: int = 12,
    n_test_per_defect: int = 8,
    image_size: int = 128,
    seed: int = 0,
) -> Path:
    """Write an MVTec-AD-layout dataset of procedural textures with typed, masked defects.

    Args:
        root: Output root; one sub-folder per category.
        categories: Category name -> defect folder names (each must be in ``DEFECT_DRAWERS``).
        n_train: Normal images per category in ``train/good``.
        n_test_good: Normal images per category in ``test/good``.
        n_test_per_defect: Anomalous images per defect folder.
        image_size: Side of the square images, in pixels.
        seed: Seed; the same seed writes byte-identical files.

    Returns:
        ``root`` as a ``Path``.

    """
    root = Path(root)
    for category_index, (category, defects) in enumerate(categories.items()):
        rng = np.random.default_rng([seed, category_index])
        folder = root / category
        for split, count in (("train", n_train), ("test", n_test_good)):
            (folder / split / "good").mkdir(parents=True, exist_ok=True)
            for index in range(count):
                Image.fromarray(_texture(category, rng, image_size)).save(folder / split / "good" / f"{index:03d}.png")
        for defect in defects:
            (folder / "test" / defect).mkdir(parents=True, exist_ok=True)
            (folder / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            for index in range(n_test_per_defect):
                image, mask = _defective(_texture(category, rng, image_size), defect, rng)
                Image.fromarray(image).save(folder / "test" / defect / f"{index:03d}.png")
                Image.fromarray(mask).save(folder / "ground_truth" / defect / f"{index:03d}_mask.png")
    return root
