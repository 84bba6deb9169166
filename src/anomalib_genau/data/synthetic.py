"""Deterministic synthetic datasets: textures, defect drawings and the MVTec-AD layout.

For demos, tests and smoke runs of the cross-dataset protocol, offline. The MVTec-AD layout
written under ``root``::

    <category>/train/good/000.png
    <category>/test/good/000.png
    <category>/test/<defect>/000.png
    <category>/ground_truth/<defect>/000_mask.png   (0 or 255)

Each category is a procedural texture family (weave, grain with pores, tiles with grout,
wood with veins, a printed lattice), whose normal structure looks like defects. Each defect
folder is drawn by one primitive (a blob or a stroke, shifting brightness or colour). Every
defect is lighter or darker than its texture at random; a share of each folder is *subtle*:
1-3 px strokes at 256 px, small blobs, 18-35 grey levels of contrast instead of 60-110.
``difficulty.csv`` at the root lists each anomalous image as ``easy`` or ``subtle``.
Category and defect names follow each dataset, so the paper's taxonomy maps them
(``carpet/cut -> tear``). The same seed writes the same files. The MPDD, VisA and Real-IAD
layouts are written by :mod:`~anomalib_genau.data.synthetic_layouts`.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from anomalib_genau.taxonomy import UnknownDefectError, defect_types, normalize_name

Rng = np.random.Generator

DEFAULT_CATEGORIES: Mapping[str, Sequence[str]] = {
    "carpet": ("color", "cut", "hole"),
    "leather": ("color", "cut", "poke"),
    "tile": ("crack", "oil", "gray_stroke"),
}
# Texture families that DEFAULT_CATEGORIES never shows: the demo's target adds them, so the
# trained model meets products it was not trained on.
UNSEEN_CATEGORIES: Mapping[str, Sequence[str]] = {
    "wood": ("color", "hole", "scratch"),
    "grid": ("bent", "broken", "thread"),
}
# Every texture family the generator draws (the demo's target).
ALL_CATEGORIES: Mapping[str, Sequence[str]] = {**DEFAULT_CATEGORIES, **UNSEEN_CATEGORIES}
DIFFICULTY_FILE = "difficulty.csv"


def _weave(rng: Rng, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Woven threads: a checker of stripes with thread-to-thread jitter."""
    period = rng.uniform(5, 8)
    jitter = rng.normal(0, 4, size=xx.shape[1])[None, :]
    return 18 * np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period) + jitter


def _grain(rng: Rng, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Leather grain with dark pores: pore-like dots are normal here, unlike a poke."""
    phase = rng.uniform(0, 2 * np.pi)
    pattern = 10 * np.sin(xx / 9 + np.sin(yy / 13 + phase) * 2)
    size = xx.shape[0]
    for cy, cx in rng.uniform(0, size, size=(int(size * size / 900), 2)):
        pattern -= 14 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 2.0)
    return pattern


def _tiles(rng: Rng, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Tiles with dark grout lines: straight thin lines are normal here, unlike a crack."""
    cell = int(rng.integers(20, 28))
    offset = rng.integers(0, cell, size=2)
    grout = (((xx + offset[0]) % cell) < 2) | (((yy + offset[1]) % cell) < 2)
    return np.where(grout, -35.0, 0.0) + rng.normal(0, 3, size=xx.shape)


def _wood(rng: Rng, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Wood: wavy growth rings and thin darker and lighter veins along them, like scratches."""
    warp = 6 * np.sin(yy / rng.uniform(20, 40) + rng.uniform(0, 2 * np.pi))
    rings = 14 * np.sin(2 * np.pi * (xx + warp) / rng.uniform(9, 14))
    veins = np.sin(2 * np.pi * (xx + 1.7 * warp) / rng.uniform(25, 40))
    return rings + 22 * np.sign(veins) * (np.abs(veins) > 0.985)


def _print(rng: Rng, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A printed lattice of dots and cross-hairs: small marks are normal here, unlike a stain."""
    cell = int(rng.integers(12, 18))
    u, v = (xx + rng.integers(0, cell)) % cell, (yy + rng.integers(0, cell)) % cell
    dots = ((u - cell / 2) ** 2 + (v - cell / 2) ** 2) < 4
    cross = (np.abs(u - cell / 2) < 0.6) | (np.abs(v - cell / 2) < 0.6)
    return np.where(dots, -45.0, 0.0) + np.where(cross, 20.0, 0.0)


TEXTURE_FAMILIES: Mapping[str, Callable[[Rng, np.ndarray, np.ndarray], np.ndarray]] = {
    "carpet": _weave,
    "leather": _grain,
    "tile": _tiles,
    "wood": _wood,
    "grid": _print,
}


def _texture(category: str, rng: Rng, size: int) -> np.ndarray:
    """A (size, size, 3) float texture; its family is the category's, else one chosen by the name."""
    families = list(TEXTURE_FAMILIES.values())
    family = TEXTURE_FAMILIES.get(category, families[sum(map(ord, category)) % len(families)])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = rng.uniform(90, 170, size=3)
    noise = rng.normal(0, 6, size=(size, size, 1))
    return base[None, None, :] + family(rng, yy, xx)[..., None] + noise


@dataclass(frozen=True)
class Appearance:
    """How a defect differs from its texture: polarity and contrast in grey levels, and its scale."""

    subtle: bool
    sign: float  # +1 lighter, -1 darker than the texture: both occur, as on real products
    contrast: float
    chroma: np.ndarray  # (3,) unit colour direction of the change; (1, 1, 1)/sqrt(3) for grey defects

    @classmethod
    def draw(cls, rng: Rng, subtle: bool, coloured: bool) -> Appearance:
        """A random polarity and contrast (faint when ``subtle``); a random hue when ``coloured``."""
        sign = float(rng.choice([-1.0, 1.0]))
        contrast = rng.uniform(18, 35) if subtle else rng.uniform(60, 110)
        direction = np.abs(rng.normal(size=3)) + (0 if coloured else 10)
        return cls(subtle, sign, float(contrast), direction / np.linalg.norm(direction))


def _blob(shape: ImageDraw.ImageDraw, rng: Rng, size: int, look: Appearance, scale: float = 1.0) -> None:
    """An ellipse: 8-14 % of the side, or 2-5 % when subtle."""
    radius = (rng.uniform(0.02, 0.05) if look.subtle else rng.uniform(0.08, 0.14)) * size * scale
    cx, cy = rng.uniform(0.2, 0.8, size=2) * size
    box = [cx - radius, cy - radius * rng.uniform(0.6, 1.0), cx + radius, cy + radius * rng.uniform(0.6, 1.0)]
    shape.ellipse(box, fill=255)


def _line(shape: ImageDraw.ImageDraw, rng: Rng, size: int, look: Appearance, width: float = 1 / 24) -> None:
    """A bent stroke: ``width`` of the side, or 1-3 px at 256 px when subtle; shorter when subtle."""
    start = rng.uniform(0.15, 0.45, size=2) * size
    angle = rng.uniform(0, np.pi)
    length = (rng.uniform(0.15, 0.3) if look.subtle else rng.uniform(0.35, 0.5)) * size
    end = start + length * np.array([np.cos(angle), np.sin(angle)])
    points = [tuple(start), tuple((start + end) / 2 + rng.normal(0, 3, size=2)), tuple(end)]
    pixels = rng.uniform(1, 3.5) * size / 256 if look.subtle else max(4.0, width * size)
    shape.line(points, fill=255, width=max(1, round(pixels)))


@dataclass(frozen=True)
class Drawing:
    """A defect's primitive (blob or line), its size, and whether it changes colour or brightness."""

    primitive: Callable[..., None]
    coloured: bool = False
    scale: float | None = None  # blob: radius factor; line: width as a fraction of the side

    def __call__(self, shape: ImageDraw.ImageDraw, rng: Rng, size: int, look: Appearance) -> None:
        """Draw the defect's shape (255) onto ``shape``, an ``L`` image of side ``size``."""
        extra = () if self.scale is None else (self.scale,)
        self.primitive(shape, rng, size, look, *extra)


# Drawings by original defect name (MVTec-AD folders) or, failing that, by coarse type.
DEFECT_DRAWERS: Mapping[str, Drawing] = {
    "color": Drawing(_blob, coloured=True),
    "cut": Drawing(_line),
    "crack": Drawing(_line),
    "hole": Drawing(_blob),
    "poke": Drawing(_blob, scale=0.6),
    "oil": Drawing(_blob, coloured=True),
    "gray_stroke": Drawing(_line, scale=1 / 20),
    "contamination": Drawing(_blob, coloured=True),
    "scratch": Drawing(_line, scale=1 / 32),
    "thread": Drawing(_line, scale=1 / 40),
    "broken": Drawing(_line, scale=1 / 16),
    "bent": Drawing(_line, scale=1 / 20),
    "deformed": Drawing(_blob),
    "missing": Drawing(_blob),
}


def _drawer(taxonomy_key: str, category: str, name: str) -> Drawing:
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


def draw_defects(
    texture: np.ndarray, drawings: Sequence[Drawing], rng: Rng, subtle: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Paint every defect onto ``texture`` (``(S, S, 3)`` float); returns the uint8 image and 0/255 mask.

    Each defect shifts the texture under its shape by its own polarity, contrast and colour,
    so lighter and darker, strong and faint defects all keep the texture's structure beneath.
    """
    size = texture.shape[0]
    image, union = texture.copy(), np.zeros((size, size), dtype=bool)
    for drawing in drawings:
        look = Appearance.draw(rng, subtle, drawing.coloured)
        shape = Image.new("L", (size, size), 0)
        drawing(ImageDraw.Draw(shape), rng, size, look)
        alpha = np.asarray(shape.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32) / 255
        image += alpha[..., None] * (look.sign * look.contrast * np.sqrt(3) * look.chroma)
        union |= np.asarray(shape) > 127
    return np.clip(image, 0, 255).astype(np.uint8), union.astype(np.uint8) * 255


@dataclass(frozen=True)
class Counts:
    """Images per category: normal training, normal test, and anomalous test per defect."""

    n_train: int = 8
    n_test_good: int = 12
    n_test_per_defect: int = 8
    image_size: int = 128
    subtle_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.subtle_fraction <= 1:
            msg = f"subtle_fraction must lie in [0, 1], got {self.subtle_fraction}."
            raise ValueError(msg)

    def subtle(self, index: int) -> bool:
        """Whether the ``index``-th anomalous image of a defect is subtle: spread evenly, exactly the fraction."""
        return int((index + 1) * self.subtle_fraction) > int(index * self.subtle_fraction)


class Painter:
    """Normal and defective images of one category, drawn from one seeded generator."""

    def __init__(self, taxonomy_key: str, category: str, seed: int, index: int, size: int) -> None:
        self.taxonomy_key, self.category, self.size = taxonomy_key, category, size
        self.rng = np.random.default_rng([seed, index])

    def texture(self) -> np.ndarray:
        """``(size, size, 3)`` float texture of the category, from the painter's generator."""
        return _texture(self.category, self.rng, self.size)

    def normal(self) -> np.ndarray:
        """A normal image, ``(size, size, 3)`` uint8."""
        return np.clip(self.texture(), 0, 255).astype(np.uint8)

    def defective(self, names: Sequence[str], subtle: bool) -> tuple[np.ndarray, np.ndarray]:
        """An image with the named defects drawn and its mask (0 or 255)."""
        drawings = [_drawer(self.taxonomy_key, self.category, name) for name in names]
        return draw_defects(self.texture(), drawings, self.rng, subtle)


class DifficultyLog:
    """``difficulty.csv`` at a dataset's root: each generated anomalous image and whether it is subtle."""

    def __init__(self, root: Path) -> None:
        self.root, self.rows = root, []

    def add(self, image: Path, subtle: bool) -> None:
        """Record an anomalous image as easy or subtle."""
        self.rows.append([image.relative_to(self.root).as_posix(), "subtle" if subtle else "easy"])

    def write(self) -> None:
        """Write ``difficulty.csv`` at the root."""
        write_csv(self.root / DIFFICULTY_FILE, ["image", "difficulty"], self.rows)


def read_difficulty(root: str | Path) -> dict[str, str]:
    """``{image path relative to root: "easy" | "subtle"}`` from a generated dataset's ``difficulty.csv``."""
    path = Path(root) / DIFFICULTY_FILE
    if not path.is_file():
        msg = f"'{root}' has no {DIFFICULTY_FILE}; it was not written by anomalib-genau synthetic-data."
        raise FileNotFoundError(msg)
    with path.open(encoding="utf-8", newline="") as file:
        return {row["image"]: row["difficulty"] for row in csv.DictReader(file)}


def generate_mvtec_dataset(
    root: str | Path,
    categories: Mapping[str, Sequence[str]] = DEFAULT_CATEGORIES,
    n_train: int = 8,
    n_test_good: int = 12,
    n_test_per_defect: int = 8,
    image_size: int = 128,
    seed: int = 0,
    taxonomy_key: str = "mvtec_ad",
    subtle_fraction: float = 0.5,
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
        subtle_fraction: Share of each defect's images drawn subtle (thin, faint, small) rather
            than easy; which ones is listed in ``root/difficulty.csv``.

    Returns:
        ``root`` as a ``Path``.

    """
    root, sizes = Path(root), Counts(n_train, n_test_good, n_test_per_defect, image_size, subtle_fraction)
    log = DifficultyLog(root)
    for category_index, (category, defects) in enumerate(categories.items()):
        painter = Painter(taxonomy_key, category, seed, category_index, image_size)
        folder = root / category
        for split, count in (("train", n_train), ("test", n_test_good)):
            (folder / split / "good").mkdir(parents=True, exist_ok=True)
            for index in range(count):
                Image.fromarray(painter.normal()).save(folder / split / "good" / f"{index:03d}.png")
        for defect in defects:
            (folder / "test" / defect).mkdir(parents=True, exist_ok=True)
            (folder / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            for index in range(n_test_per_defect):
                image, mask = painter.defective([defect], sizes.subtle(index))
                Image.fromarray(image).save(folder / "test" / defect / f"{index:03d}.png")
                Image.fromarray(mask).save(folder / "ground_truth" / defect / f"{index:03d}_mask.png")
                log.add(folder / "test" / defect / f"{index:03d}.png", sizes.subtle(index))
    log.write()
    return root


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Write ``rows`` under ``header`` as CSV, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
