"""Deterministic synthetic datasets in the MVTec-AD, MPDD, VisA and Real-IAD layouts.

For demos, tests and smoke runs of the cross-dataset protocol, offline. The MVTec-AD layout
written under ``root``::

    <category>/train/good/000.png
    <category>/test/good/000.png
    <category>/test/<defect>/000.png
    <category>/ground_truth/<defect>/000_mask.png   (0 or 255)

Each category is a procedural texture; each defect folder is drawn by a visually distinct
primitive (a coloured blob, a thin dark line, a dark hole, a stain, a grey stroke).
Category and defect names follow each dataset, so the paper's taxonomy maps them
(``carpet/cut -> tear``). The same seed writes the same files.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from anomalib_genau.taxonomy import REAL_IAD_CODES, UnknownDefectError, defect_types, normalize_name

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


def _dark_line(width_divisor: int) -> DrawFn:
    return lambda d, m, r, s: _line(d, m, r, s, fill=(25, 20, 20), width=max(4, round(s / width_divisor)))


# Drawings by original defect name (MVTec-AD folders) or, failing that, by coarse type. Every
# drawing is darker than the textures: the tiny random vision tower encodes brightness almost
# linearly, and one anchor direction cannot flag both brighter and darker defects (measured:
# a light stroke on "tile" scored pixel AUROC 0.06, inverted, while dark defects scored 0.99).
# Real SigLIP features do not need this.
DEFECT_DRAWERS: Mapping[str, DrawFn] = {
    "color": lambda d, m, r, s: _blob(d, m, r, s, fill=(200, 40, 40)),
    "cut": lambda d, m, r, s: _line(d, m, r, s, fill=(20, 20, 20), width=max(4, round(s / 24))),
    "crack": lambda d, m, r, s: _line(d, m, r, s, fill=(35, 25, 20), width=max(4, round(s / 24))),
    "hole": lambda d, m, r, s: _blob(d, m, r, s, fill=(5, 5, 5)),
    "poke": lambda d, m, r, s: _blob(d, m, r, s, fill=(40, 30, 60)),
    "oil": lambda d, m, r, s: _blob(d, m, r, s, fill=(70, 50, 20)),
    "gray_stroke": lambda d, m, r, s: _line(d, m, r, s, fill=(60, 60, 60), width=max(5, s // 20)),
    "contamination": lambda d, m, r, s: _blob(d, m, r, s, fill=(100, 80, 20)),
    "scratch": lambda d, m, r, s: _line(d, m, r, s, fill=(45, 45, 60), width=max(3, s // 32)),
    "broken": _dark_line(16),
    "bent": _dark_line(20),
    "deformed": lambda d, m, r, s: _blob(d, m, r, s, fill=(90, 60, 30)),
    "missing": lambda d, m, r, s: _blob(d, m, r, s, fill=(55, 55, 55)),
}

# Generated categories per layout: category -> original defect names as each dataset records
# them (MVTec-AD/MPDD folders, VisA annotation labels, Real-IAD codes), all in the taxonomy.
MPDD_CATEGORIES: Mapping[str, Sequence[str]] = {
    "bracket_black": ("hole", "scratches"),
    "metal_plate": ("major_rust", "scratches"),
}
VISA_CATEGORIES: Mapping[str, Sequence[str]] = {
    "candle": ("chunk of wax missing", "different color spot", "extra wax in candle"),
    "pcb1": ("bent", "melt", "scratch"),
}
REAL_IAD_CATEGORIES: Mapping[str, Sequence[str]] = {
    "audiojack": ("HS", "ZW", "QS"),
    "bottle_cap": ("AK", "HS", "ZW"),
}


def _drawer(taxonomy_key: str, category: str, name: str) -> DrawFn:
    """The drawing of an original defect name: by the name itself, else by its first coarse type."""
    try:
        coarse = defect_types(taxonomy_key, category, name)
    except UnknownDefectError:
        coarse = []
    for key in (normalize_name(name), *coarse):
        if key in DEFECT_DRAWERS:
            return DEFECT_DRAWERS[key]
    msg = f"No drawing for defect '{name}'; known: {', '.join(sorted(DEFECT_DRAWERS))} (or their coarse types)."
    raise ValueError(msg)


def _defective(texture: np.ndarray, drawers: Sequence[DrawFn], rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    """Draw every defect onto a copy of ``texture``; returns the image and the 0/255 union mask."""
    size = texture.shape[0]
    image = Image.fromarray(texture)
    mask = Image.new("L", (size, size), 0)
    for draw in drawers:
        draw(ImageDraw.Draw(image), ImageDraw.Draw(mask), rng, size)
    image = image.filter(ImageFilter.GaussianBlur(0.6))
    return np.asarray(image), np.asarray(mask)


@dataclass(frozen=True)
class Counts:
    """Images per category: normal training, normal test, and anomalous test per defect."""

    n_train: int = 8
    n_test_good: int = 12
    n_test_per_defect: int = 8
    image_size: int = 128


class _Painter:
    """Normal and defective images of one category, drawn from one seeded generator."""

    def __init__(self, taxonomy_key: str, category: str, seed: int, index: int, size: int) -> None:
        self.taxonomy_key, self.category, self.size = taxonomy_key, category, size
        self.rng = np.random.default_rng([seed, index])

    def normal(self) -> np.ndarray:
        return _texture(self.category, self.rng, self.size)

    def defective(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        drawers = [_drawer(self.taxonomy_key, self.category, name) for name in names]
        return _defective(self.normal(), drawers, self.rng)


def generate_mvtec_dataset(
    root: str | Path,
    categories: Mapping[str, Sequence[str]] = DEFAULT_CATEGORIES,
    n_train: int = 8,
    n_test_good: int = 12,
    n_test_per_defect: int = 8,
    image_size: int = 128,
    seed: int = 0,
    taxonomy_key: str = "mvtec_ad",
) -> Path:
    """Write an MVTec-AD-layout dataset of procedural textures with typed, masked defects.

    Args:
        root: Output root; one sub-folder per category.
        categories: Category name -> defect folder names.
        n_train: Normal images per category in ``train/good``.
        n_test_good: Normal images per category in ``test/good``.
        n_test_per_defect: Anomalous images per defect folder.
        image_size: Side of the square images, in pixels.
        seed: Seed; the same seed writes byte-identical files.
        taxonomy_key: Taxonomy dataset whose coarse types choose a drawing for folder names
            without one of their own (``"mpdd"`` for the MPDD layout, which is the same).

    Returns:
        ``root`` as a ``Path``.

    """
    root = Path(root)
    for category_index, (category, defects) in enumerate(categories.items()):
        painter = _Painter(taxonomy_key, category, seed, category_index, image_size)
        folder = root / category
        for split, count in (("train", n_train), ("test", n_test_good)):
            (folder / split / "good").mkdir(parents=True, exist_ok=True)
            for index in range(count):
                Image.fromarray(painter.normal()).save(folder / split / "good" / f"{index:03d}.png")
        for defect in defects:
            (folder / "test" / defect).mkdir(parents=True, exist_ok=True)
            (folder / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            for index in range(n_test_per_defect):
                image, mask = painter.defective([defect])
                Image.fromarray(image).save(folder / "test" / defect / f"{index:03d}.png")
                Image.fromarray(mask).save(folder / "ground_truth" / defect / f"{index:03d}_mask.png")
    return root


def generate_mpdd_dataset(
    root: str | Path, categories: Mapping[str, Sequence[str]] = MPDD_CATEGORIES, seed: int = 0, **counts: int
) -> Path:
    """Write an MPDD-layout dataset (MVTec-AD's layout, MPDD's categories and defect folders)."""
    return generate_mvtec_dataset(root, categories, seed=seed, taxonomy_key="mpdd", **counts)


def generate_visa_dataset(
    root: str | Path, categories: Mapping[str, Sequence[str]] = VISA_CATEGORIES, seed: int = 0, **counts: int
) -> Path:
    """Write a raw VisA-layout dataset, as anomalib's ``Visa`` datamodule expects before its split.

    Layout::

        split_csv/1cls.csv                         object,split,label,image,mask
        <category>/image_anno.csv                  image,label,mask (labels are free text)
        <category>/Data/Images/Normal/0000.JPG
        <category>/Data/Images/Anomaly/000.JPG
        <category>/Data/Masks/Anomaly/000.png

    Every category also gets one image with two defects, labelled ``"<first>,<second>"``.
    """
    root, sizes = Path(root), Counts(**counts)
    split_rows = []
    for category_index, (category, defects) in enumerate(categories.items()):
        painter = _Painter("visa", category, seed, category_index, sizes.image_size)
        images, masks = root / category / "Data" / "Images", root / category / "Data" / "Masks" / "Anomaly"
        for folder in (images / "Normal", images / "Anomaly", masks):
            folder.mkdir(parents=True, exist_ok=True)
        annotation_rows = []
        for index in range(sizes.n_train + sizes.n_test_good):
            image_path = f"{category}/Data/Images/Normal/{index:04d}.JPG"
            Image.fromarray(painter.normal()).save(root / image_path, quality=95)
            split = "train" if index < sizes.n_train else "test"
            split_rows.append([category, split, "normal", image_path, ""])
            annotation_rows.append([image_path, "normal", ""])
        labels = [[name] for name in defects for _ in range(sizes.n_test_per_defect)]
        labels.append(list(defects[:2]))
        for index, names in enumerate(labels):
            image_path = f"{category}/Data/Images/Anomaly/{index:03d}.JPG"
            mask_path = f"{category}/Data/Masks/Anomaly/{index:03d}.png"
            image, mask = painter.defective(names)
            Image.fromarray(image).save(root / image_path, quality=95)
            Image.fromarray(mask).save(root / mask_path)
            split_rows.append([category, "test", "anomaly", image_path, mask_path])
            annotation_rows.append([image_path, ",".join(names), mask_path])
        _write_csv(root / category / "image_anno.csv", ["image", "label", "mask"], annotation_rows)
    _write_csv(root / "split_csv" / "1cls.csv", ["object", "split", "label", "image", "mask"], split_rows)
    return root


def generate_realiad_dataset(
    root: str | Path,
    categories: Mapping[str, Sequence[str]] = REAL_IAD_CATEGORIES,
    seed: int = 0,
    resolution: str = "256",
    **counts: int,
) -> Path:
    """Write a Real-IAD-layout dataset with single-view metadata, as anomalib's ``RealIAD`` reads it.

    Layout (``categories`` maps each category to Real-IAD defect codes such as ``"AK"``)::

        realiad_<resolution>/<category>/OK/S0001/<category>_0001_OK_C1_20240101000000.jpg
        realiad_<resolution>/<category>/NG/<code>/S0009/<category>_0009_NG_<code>_C1_20240101000000.jpg
        realiad_<resolution>/<category>/NG/<code>/S0009/<category>_0009_NG_<code>_C1_20240101000000_mask.png
        realiad_jsons/realiad_jsons_sv/<category>.json   {"meta", "train", "test"}

    The images are ``image_size`` pixels whatever ``resolution`` says (it only names the folder).
    """
    root, sizes = Path(root), Counts(**counts)
    for category_index, (category, codes) in enumerate(categories.items()):
        painter = _Painter("real_iad", category, seed, category_index, sizes.image_size)
        folder = root / f"realiad_{resolution}" / category
        metadata: dict[str, object] = {"meta": {"prefix": "", "normal_class": "OK"}, "train": [], "test": []}
        kinds = ["OK"] * (sizes.n_train + sizes.n_test_good) + [
            code for code in codes for _ in range(sizes.n_test_per_defect)
        ]
        for number, kind in enumerate(kinds, start=1):
            stem = f"{category}_{number:04d}_{'OK' if kind == 'OK' else 'NG_' + kind}_C1_20240101000000"
            relative = Path("OK" if kind == "OK" else f"NG/{kind}") / f"S{number:04d}"
            (folder / relative).mkdir(parents=True, exist_ok=True)
            record = {"category": category, "anomaly_class": kind, "image_path": f"{relative}/{stem}.jpg"}
            if kind == "OK":
                Image.fromarray(painter.normal()).save(folder / relative / f"{stem}.jpg", quality=95)
                record["mask_path"] = None
            else:
                image, mask = painter.defective([REAL_IAD_CODES[kind]])
                Image.fromarray(image).save(folder / relative / f"{stem}.jpg", quality=95)
                Image.fromarray(mask).save(folder / relative / f"{stem}_mask.png")
                record["mask_path"] = f"{relative}/{stem}_mask.png"
            metadata["train" if number <= sizes.n_train else "test"].append(record)
        json_path = root / "realiad_jsons" / "realiad_jsons_sv" / f"{category}.json"
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(metadata, indent=1))
    return root


LAYOUT_GENERATORS: Mapping[str, Callable[..., Path]] = {
    "MVTecAD": generate_mvtec_dataset,
    "MPDD": generate_mpdd_dataset,
    "Visa": generate_visa_dataset,
    "RealIAD": generate_realiad_dataset,
}


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
