"""Read any image file as an RGB float tensor, or fail with an error that names the file.

anomalib's ``read_image`` calls ``PIL.Image.convert("RGB")``, which saturates 16-bit
grayscale (``I;16``) images to white; industrial cameras write those. This reader scales
high-bit-depth images to [0, 1] first. Alpha channels are dropped; palette, CMYK and
grayscale images are converted to RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.tv_tensors import Image as ImageTensor

# PIL modes whose pixel values exceed 8 bits: divisor that maps them onto [0, 1].
_HIGH_BIT_DEPTH = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}


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
        with Image.open(path) as image:
            image.load()
            if image.mode in _HIGH_BIT_DEPTH or image.mode in {"I", "F"}:
                gray = _scaled_gray(image)
                array = np.repeat(gray[..., None], 3, axis=-1)
            else:
                array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        msg = f"Cannot read image {path}: {error}"
        raise BrokenImageError(msg) from error
    return ImageTensor(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float())


def _scaled_gray(image: Image.Image) -> np.ndarray:
    """A high-bit-depth single-channel image as (H, W) float32 in [0, 1]."""
    values = np.asarray(image, dtype=np.float32)
    if image.mode == "F":
        return np.clip(values, 0.0, 1.0)
    divisor = _HIGH_BIT_DEPTH.get(image.mode) or (65535.0 if values.max() <= 65535 else float(values.max()))
    return np.clip(values / divisor, 0.0, 1.0)
