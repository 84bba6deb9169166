"""Read any image file as an RGB float tensor, or fail with an error that names the file.

anomalib's ``read_image`` calls ``PIL.Image.convert("RGB")``, which saturates 16-bit
grayscale (``I;16``) images to white; industrial cameras write those. This reader scales
high-bit-depth images to [0, 1] first. Alpha channels are dropped; palette, CMYK and
grayscale images are converted to RGB, and EXIF orientation is applied. Torch predict and the
OpenVINO inferencer read every file through :func:`read_rgb`, so both see the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.tv_tensors import Image as ImageTensor

# PIL modes whose pixel values exceed 8 bits: divisor that maps them onto [0, 1].
_HIGH_BIT_DEPTH = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}

# What PIL raises for a missing, truncated or undecodable file.
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


class BrokenImageError(OSError):
    """An image file is missing, truncated or not an image."""


def read_rgb(path: str | Path) -> ImageTensor:
    """Read an image as a (3, H, W) float32 tensor in [0, 1].

    ``I;16`` images are divided by 65535, 32-bit integer (``I``) images by 65535 when their
    values fit in 16 bits and by their maximum otherwise, float (``F``) images are clipped to
    [0, 1]; everything else goes through ``PIL.Image.convert("RGB")``.

    Raises:
        BrokenImageError: The file cannot be opened or decoded.

    """
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
            if is_high_bit_depth(image.mode):
                gray = _scaled_gray(image)
                array = np.repeat(gray[..., None], 3, axis=-1)
            else:
                array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except DECODE_ERRORS as error:
        msg = f"Cannot read image {path}: {error}"
        raise BrokenImageError(msg) from error
    return ImageTensor(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float())


def is_high_bit_depth(mode: str) -> bool:
    """Whether a PIL mode holds more than 8 bits a pixel (16-bit, 32-bit integer or float grayscale)."""
    return mode in _HIGH_BIT_DEPTH or mode in {"I", "F"}


def check_patch_size(image: torch.Tensor, patch_size: int, name: str) -> None:
    """Refuse a ``(C, H, W)`` image smaller than one vision patch: upscaled, it holds nothing to inspect.

    Torch predict and the OpenVINO inferencer (and so the station) refuse the same images.

    Raises:
        ValueError: The shorter side is below ``patch_size``, with both sizes named.

    """
    if min(image.shape[-2:]) < patch_size:
        msg = f"{name} is {tuple(image.shape[-2:])} pixels, smaller than one {patch_size}-pixel patch."
        raise ValueError(msg)


def _scaled_gray(image: Image.Image) -> np.ndarray:
    """A high-bit-depth single-channel image as (H, W) float32 in [0, 1]."""
    values = np.asarray(image, dtype=np.float32)
    if image.mode == "F":
        return np.clip(values, 0.0, 1.0)
    divisor = _HIGH_BIT_DEPTH.get(image.mode) or (65535.0 if values.max() <= 65535 else float(values.max()))
    return np.clip(values / divisor, 0.0, 1.0)


def image_files(items: Sequence[str | Path]) -> list[Path]:
    """The image files named: files as given, folders searched recursively, in sorted order.

    A folder yields every file whose extension anomalib reads (``IMG_EXTENSIONS``, in any case).

    Raises:
        FileNotFoundError: A path does not exist, or nothing is selected (the message names the
            folders and the extensions searched).

    """
    from anomalib.data.utils.path import IMG_EXTENSIONS

    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            files += sorted(
                path for path in item.rglob("*") if path.is_file() and path.suffix.lower() in IMG_EXTENSIONS
            )
        elif item.exists():
            files.append(item)
        else:
            msg = f"No such image file or folder: {item}"
            raise FileNotFoundError(msg)
    if not files:
        msg = f"No image file in {', '.join(map(str, items))} (searched for {', '.join(IMG_EXTENSIONS)})."
        raise FileNotFoundError(msg)
    return files
