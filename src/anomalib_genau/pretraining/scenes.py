"""Generic generated image-text data for pre-training the tiny stand-in backbone.

A scene is a background pattern in one colour with zero to three marks on it (shapes, lines,
spots and rings of every colour, brighter or darker than the background, large or small,
thick or hair-thin), at named positions. Each scene comes with a caption and questions with
their answers about what is visible. Nothing here knows of anomalies, masks or defect
types: the data plays the role web image-text pairs play for the real checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

Rng = np.random.Generator

COLOURS = {
    "black": (20, 20, 20),
    "white": (235, 235, 235),
    "gray": (128, 128, 128),
    "red": (200, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (220, 200, 40),
    "orange": (230, 130, 30),
    "purple": (130, 50, 160),
    "brown": (120, 80, 40),
}
BACKGROUNDS = ("plain", "striped", "checked", "dotted", "noisy", "wavy")
SHAPES = ("circle", "square", "triangle", "line", "ring", "cross", "spot")
POSITIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
NUMBERS = ("no", "one", "two", "three")
# Faint marks are named by their brightness against the background, not by a colour: a
# "lighter" or "darker" shade of the background's own colour (as low-contrast as its pattern).
FAINT = {"lighter": 1, "darker": -1}
FAINT_SHARE = 0.3
MARKS_QUESTION = "Are there any marks?"
# The copy task's questions: the word in sentences of several shapes, as prompts name an object.
COPY_QUESTIONS = (
    "Is there a mark on the {word}?",
    "Does the {word} have any marks?",
    "Look at the {word}. Are there marks on it?",
    "Check the {word} for marks and name them.",
    "What is on the {word}? If there is a mark, name it.",
)


@dataclass(frozen=True)
class Mark:
    """One mark: a shape, its colour name, its size word and its grid position (row, column)."""

    shape: str
    colour: str
    size: str  # "small" or "large"; for lines "thin" or "thick"
    row: int
    column: int

    @property
    def position(self) -> str:
        """The position in words, e.g. ``"top left"``."""
        return POSITIONS[self.row][self.column]

    @property
    def words(self) -> str:
        """``"a small red circle"``."""
        article = "an" if self.size[0] in "aeiou" else "a"
        return f"{article} {self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A background (pattern and colour name) and its marks, at most one per grid cell."""

    background: str
    colour: str
    marks: tuple[Mark, ...]


def draw_scene(rng: Rng) -> Scene:
    """A random scene: 0-3 marks, each in its own cell, of another colour or (faint) a shade of the background."""
    colour = str(rng.choice(list(COLOURS)))
    cells = rng.permutation(9)[: int(rng.choice(4, p=[0.25, 0.35, 0.25, 0.15]))]
    brightness = float(np.mean(COLOURS[colour]))
    shades = [name for name, sign in FAINT.items() if 50 < brightness + sign * 60 < 205]
    marks = []
    for cell in cells:
        shape = str(rng.choice(SHAPES))
        sizes = ("thin", "thick") if shape == "line" else ("small", "large")
        faint = rng.random() < FAINT_SHARE
        mark_colour = str(rng.choice(shades if faint else [name for name in COLOURS if name != colour]))
        marks.append(Mark(shape, mark_colour, str(rng.choice(sizes)), int(cell) // 3, int(cell) % 3))
    return Scene(str(rng.choice(BACKGROUNDS)), colour, tuple(marks))


def marks_scene(rng: Rng, loud: bool = False) -> Scene:
    """A scene with marks, or (half the time) its background alone; ``loud`` marks are all large or thick."""
    scene = draw_scene(rng)
    while not scene.marks:
        scene = draw_scene(rng)
    if loud:
        marks = tuple(replace(mark, size="thick" if mark.shape == "line" else "large") for mark in scene.marks)
        scene = replace(scene, marks=marks)
    return scene if rng.random() < 0.5 else Scene(scene.background, scene.colour, ())


def _background(scene: Scene, rng: Rng, size: int) -> np.ndarray:
    """The ``(size, size, 3)`` float background: the colour, modulated by the pattern."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(6, 16) * size / 112
    patterns = {
        "plain": np.zeros_like(xx),
        "striped": 25 * np.sign(np.sin(2 * np.pi * (xx if rng.random() < 0.5 else yy) / period)),
        "checked": 25 * np.sign(np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)),
        "dotted": -30 * ((np.sin(2 * np.pi * xx / period) > 0.8) & (np.sin(2 * np.pi * yy / period) > 0.8)),
        "noisy": rng.normal(0, 18, size=xx.shape),
        "wavy": 20 * np.sin(2 * np.pi * (xx + 6 * np.sin(yy / period)) / period),
    }
    base = np.array(COLOURS[scene.colour], dtype=np.float32) + rng.normal(0, 8, size=3)
    return base[None, None, :] + patterns[scene.background][..., None] + rng.normal(0, 3, size=(size, size, 1))


def render(scene: Scene, rng: Rng, size: int = 112) -> np.ndarray:
    """The scene as a ``(size, size, 3)`` uint8 RGB image (positions jitter inside their cells)."""
    return render_with_marks(scene, rng, size)[0]


def render_with_marks(scene: Scene, rng: Rng, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """:func:`render`'s image (the same for the same ``rng``) and the ``(size, size)`` bool pixels its marks cover."""
    image, shapes = render_with_shapes(scene, rng, size)
    return image, shapes > 0


def render_with_shapes(scene: Scene, rng: Rng, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """:func:`render`'s image and the ``(size, size)`` uint8 shape of each pixel: 0 none, ``i + 1`` ``SHAPES[i]``."""
    image = Image.fromarray(np.clip(_background(scene, rng, size), 0, 255).astype(np.uint8))
    covered = Image.new("L", (size, size))
    cell = size / 3
    for mark in scene.marks:
        if mark.colour in FAINT:
            base = np.array(COLOURS[scene.colour]) + FAINT[mark.colour] * rng.uniform(20, 45)
        else:
            base = np.array(COLOURS[mark.colour])
        fill = tuple(int(np.clip(v + rng.normal(0, 10), 0, 255)) for v in base)
        cy, cx = (np.array([mark.row, mark.column]) + rng.uniform(0.3, 0.7, size=2)) * cell
        radius = cell * (rng.uniform(0.3, 0.45) if mark.size == "large" else rng.uniform(0.08, 0.18))
        box = [cx - radius, cy - radius, cx + radius, cy + radius]
        line = (0.0, 0.0, 1)
        if mark.shape == "line":  # 1-2 px or 3-6 px at 112 px, at any angle, about one cell long
            angle, half = rng.uniform(0, np.pi), cell * rng.uniform(0.35, 0.5)
            width = int(rng.integers(1, 3) if mark.size == "thin" else rng.integers(3, 7)) * max(1, size // 112)
            line = (angle, half, width)
        for target, colour in ((image, fill), (covered, SHAPES.index(mark.shape) + 1)):
            _draw_mark(ImageDraw.Draw(target), mark.shape, colour, (cx, cy), radius, box, line)
    return np.asarray(image), np.asarray(covered)


def _draw_mark(
    draw: ImageDraw.ImageDraw,
    shape: str,
    fill: tuple[int, ...] | int,
    centre: tuple[float, float],
    radius: float,
    box: list[float],
    line: tuple[float, float, int],
) -> None:
    """Draw one mark of :func:`render_with_marks`'s geometry; ``line`` is a line's (angle, half length, width)."""
    cx, cy = centre
    if shape in ("circle", "spot"):
        radius = radius if shape == "circle" else max(1.0, radius / 2)
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(1, int(radius / 3)))
    elif shape == "cross":
        width = max(1, int(radius / 3))
        draw.line([(cx - radius, cy), (cx + radius, cy)], fill=fill, width=width)
        draw.line([(cx, cy - radius), (cx, cy + radius)], fill=fill, width=width)
    else:
        angle, half, width = line
        dx, dy = half * np.cos(angle), half * np.sin(angle)
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=fill, width=width)


def _background_words(scene: Scene) -> str:
    """``"a plain gray background"``, ``"a striped red background"``."""
    return f"a {scene.background} {scene.colour} background"


def caption(scene: Scene) -> str:
    """One sentence naming the background and every mark with its position."""
    if not scene.marks:
        return f"{_background_words(scene).capitalize()} with no marks."
    marks = [f"{mark.words} at the {mark.position}" for mark in scene.marks]
    listed = marks[0] if len(marks) == 1 else ", ".join(marks[:-1]) + " and " + marks[-1]
    return f"{listed[0].upper()}{listed[1:]} on {_background_words(scene)}."


def questions(scene: Scene, rng: Rng) -> list[tuple[str, str]]:
    """Question-answer pairs about the scene: description, count, background, colour, position, existence.

    Existence questions are balanced: half of them (where the scene has marks) ask about a mark it has.
    """
    count = len(scene.marks)
    pairs = [
        ("Describe the image.", caption(scene)),
        ("How many marks are there?", f"{NUMBERS[count].capitalize()}."),
        ("What is the background?", f"{_background_words(scene).capitalize()}."),
    ]
    for mark in scene.marks:
        pairs += [
            (f"What colour is the {mark.shape} at the {mark.position}?", f"{mark.colour.capitalize()}."),
            (f"Where is the {mark.colour} {mark.shape}?", f"At the {mark.position}."),
            (f"What is at the {mark.position}?", f"{mark.words[0].upper()}{mark.words[1:]}."),
        ]
    if scene.marks and rng.random() < 0.5:  # half the existence questions name a mark that is there
        asked = scene.marks[int(rng.integers(len(scene.marks)))]
        shape, colour = asked.shape, asked.colour
    else:
        shape, colour = str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS)))
    present = any(mark.shape == shape and mark.colour == colour for mark in scene.marks)
    pairs.append((f"Is there a {colour} {shape}?", "Yes." if present else "No."))
    pairs.append((MARKS_QUESTION, "Yes." if count else "No."))
    empty = [
        POSITIONS[r][c] for r in range(3) for c in range(3) if (r, c) not in {(m.row, m.column) for m in scene.marks}
    ]
    if empty:
        pairs.append((f"What is at the {rng.choice(empty)}?", "Nothing, only the background."))
    return pairs


def copy_dialogue(word: str, marks: tuple[Mark, ...] = (), question: int = 0) -> tuple[str, str]:
    """The copy task's ``question`` (an index of :data:`COPY_QUESTIONS`) about ``word``, answered by repeating it.

    The answer names the first mark, if any. Not part of :func:`corpus`: the tokenizer's vocabulary
    comes first, and the copy task's words are entries of it.
    """
    asked = COPY_QUESTIONS[question].format(word=word)
    if marks:
        return asked, f"Yes, the {word} has {marks[0].words}."
    return asked, f"No, the {word} has no marks."


def corpus() -> list[str]:
    """Every word the scenes' captions, questions and answers use, for the tokenizer."""
    words = [*COLOURS, *FAINT, *BACKGROUNDS, *SHAPES, *NUMBERS, "small", "large", "thin", "thick"]
    words += [position for row in POSITIONS for position in row]
    rng = np.random.default_rng(0)
    sentences = [" ".join(words)]
    for _ in range(200):
        scene = draw_scene(rng)
        sentences += [text for pair in questions(scene, rng) for text in pair]
    return sentences
