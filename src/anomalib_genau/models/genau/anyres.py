"""Reassemble the patch features of LLaVA-OneVision's AnyRes tiles into one high-resolution grid.

The processor resizes an ``(H, W)`` image, keeping its aspect ratio, into the best-fitting
pinpoint ``(rows * s, cols * s)``, pads it centred, and cuts ``rows x cols`` tiles of ``s``
pixels (row-major). Each tile gives a ``g x g`` patch grid (``g = s / patch``). Putting the
tiles back side by side gives a ``(rows * g, cols * g)`` grid, and cropping the padding as
LLaVA-OneVision does (``unpad_image``) leaves a grid that covers exactly the image.
"""

from __future__ import annotations

import torch
from transformers.models.llava_onevision.modeling_llava_onevision import get_anyres_image_grid_shape, unpad_image


def tile_layout(image_size: tuple[int, int], pinpoints: list[list[int]], tile_size: int) -> tuple[int, int]:
    """``(rows, cols)`` of the tile grid the processor uses for an ``(H, W)`` image."""
    rows, cols = get_anyres_image_grid_shape([int(image_size[0]), int(image_size[1])], pinpoints, tile_size)
    return int(rows), int(cols)


def reassemble_tiles(
    tile_features: torch.Tensor,
    image_size: tuple[int, int],
    pinpoints: list[list[int]],
    tile_size: int,
) -> torch.Tensor:
    """Stitch tile features into the image's high-resolution patch grid.

    Args:
        tile_features: ``(rows * cols, g * g, C)`` features of the tiles, row-major, without
            the global view.
        image_size: ``(H, W)`` of the image given to the processor.
        pinpoints: The processor's ``image_grid_pinpoints``.
        tile_size: Tile side ``s`` in pixels (the vision encoder's ``image_size``).

    Returns:
        ``(h, w, C)`` grid covering the image without padding, ``h <= rows * g``, ``w <= cols * g``.

    """
    rows, cols = tile_layout(image_size, pinpoints, tile_size)
    tiles, patches, channels = tile_features.shape
    side = round(patches**0.5)
    if tiles != rows * cols or side * side != patches:
        msg = (
            f"Expected {rows} x {cols} tiles of square patch grids for an image of {tuple(image_size)}, "
            f"got features of shape {tuple(tile_features.shape)}."
        )
        raise ValueError(msg)
    grid = tile_features.view(rows, cols, side, side, channels)
    grid = grid.permute(4, 0, 2, 1, 3).reshape(channels, rows * side, cols * side)
    grid = unpad_image(grid, (int(image_size[0]), int(image_size[1])))
    return grid.permute(1, 2, 0)


def distinct_views(views: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the AnyRes tiles that equal their image's global view.

    An image already at the tile size gets a 1 x 1 grid whose one tile is the global view
    again, pixel for pixel; the vision tower need see it only once.

    Args:
        views: ``(sum P_i, 3, s, s)``: each image's ``P_i`` views, global view first.
        counts: ``P_i`` per image.

    Returns:
        The distinct views ``(U, 3, s, s)`` and ``(sum P_i,)`` indices into them that give
        back every view.

    """
    keep: list[int] = []
    inverse: list[int] = []
    start = 0
    for count in counts:
        global_slot = len(keep)
        keep.append(start)
        inverse.append(global_slot)
        for index in range(start + 1, start + count):
            if torch.equal(views[index], views[start]):
                inverse.append(global_slot)
            else:
                inverse.append(len(keep))
                keep.append(index)
        start += count
    return views[keep], torch.tensor(inverse, device=views.device)
