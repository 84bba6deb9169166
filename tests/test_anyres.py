"""AnyRes reassembly, checked exactly with features that encode their own grid position."""

import pytest
import torch
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from anomalib_genau.backbone import load_backbone
from anomalib_genau.models.genau.anyres import distinct_views, reassemble_tiles, tile_layout

TILE, GRID = 112, 14
PINPOINTS = [[TILE * r, TILE * c] for r in range(1, 4) for c in range(1, 4)]


def _positional_tiles(rows: int, cols: int) -> torch.Tensor:
    """Tile features whose channels are the (row, col) of the patch in the padded full grid."""
    r, c = torch.meshgrid(torch.arange(rows * GRID), torch.arange(cols * GRID), indexing="ij")
    full = torch.stack([r, c], dim=-1).float()  # (rows*g, cols*g, 2)
    tiles = full.view(rows, GRID, cols, GRID, 2).permute(0, 2, 1, 3, 4)
    return tiles.reshape(rows * cols, GRID * GRID, 2)


@pytest.mark.parametrize(
    "image_size",
    [(112, 112), (200, 100), (100, 200), (300, 140), (224, 336), (336, 336), (90, 330), (336, 120), (250, 251)],
)
def test_reassembly_places_every_patch_and_crops_the_padding(image_size: tuple[int, int]) -> None:
    rows, cols = tile_layout(image_size, PINPOINTS, TILE)
    grid = reassemble_tiles(_positional_tiles(rows, cols), image_size, PINPOINTS, TILE)
    height, width = grid.shape[:2]
    # aspect ratio kept: the cropped grid is the image scaled into the pinpoint
    scale = min(rows * TILE / image_size[0], cols * TILE / image_size[1])
    assert height == pytest.approx(image_size[0] * scale / TILE * GRID, abs=1.01)
    assert width == pytest.approx(image_size[1] * scale / TILE * GRID, abs=1.01)
    # every patch is where it belongs: a contiguous window of the padded grid, centred
    top, left = int(grid[0, 0, 0]), int(grid[0, 0, 1])
    expected_rows = torch.arange(top, top + height).view(-1, 1).expand(height, width)
    expected_cols = torch.arange(left, left + width).view(1, -1).expand(height, width)
    assert torch.equal(grid[..., 0], expected_rows.float())
    assert torch.equal(grid[..., 1], expected_cols.float())
    assert abs(top - (rows * GRID - height - top)) <= 1
    assert abs(left - (cols * GRID - width - left)) <= 1


def test_every_pinpoint_grid_is_reachable_and_consistent_with_the_processor(tiny_backbone) -> None:
    _, processor = load_backbone(tiny_backbone)
    pinpoints = processor.image_processor.image_grid_pinpoints
    seen = set()
    for height, width in pinpoints:
        image_size = (height - 5, width - 5)  # just inside the pinpoint, so it is the best fit
        rows, cols = tile_layout(image_size, pinpoints, TILE)
        seen.add((rows, cols))
        encoded = processor.image_processor(torch.rand(3, *image_size), do_rescale=False, return_tensors="pt")
        assert image_size_to_num_patches(image_size, pinpoints, TILE) == rows * cols + 1
        assert encoded["pixel_values"].shape[1] == rows * cols + 1
        grid = reassemble_tiles(_positional_tiles(rows, cols), image_size, pinpoints, TILE)
        assert grid.shape[-1] == 2
    assert seen == {(h // TILE, w // TILE) for h, w in pinpoints}


def test_wrong_tile_count_is_refused() -> None:
    with pytest.raises(ValueError, match="Expected 1 x 2 tiles"):
        reassemble_tiles(torch.zeros(3, GRID * GRID, 4), (100, 200), PINPOINTS, TILE)


def test_distinct_views_drop_only_tiles_equal_to_their_global_view() -> None:
    torch.manual_seed(0)
    square = torch.rand(1, 3, 4, 4).expand(2, -1, -1, -1)  # 1 x 1 grid: the tile is the global view
    wide = torch.rand(3, 3, 4, 4)  # 1 x 2 grid: three different views
    views = torch.cat([square, wide, wide[[0, 0, 1]]])  # third image: one tile equals its global view
    distinct, inverse = distinct_views(views, [2, 3, 3])
    # only a tile equal to its own image's global view is dropped (wide[1] is kept twice)
    assert inverse.tolist() == [0, 0, 1, 2, 3, 4, 4, 5]
    assert len(distinct) == 6
    assert torch.equal(distinct[inverse], views)
