"""Do the stand-in tower's stage features hold the generated defects? Nearest-neighbour patches on them.

    python benchmarks/feature_reference.py [ROOT] [--backbone DIR] [--size 224]
        [--stages all 0 3] [--modes raw centred normalised] [--vision-layers 1 2 3 4 5 6]

The reference's scoring rule (``benchmarks/reference.py``: each test patch's distance to its
nearest patch of the category's own ``train/good`` images, blurred) on the features GenAU's
readout reads: the vision tower's ``hidden_states`` of the high-resolution AnyRes grid, as
``GenAUModel.see`` computes them (at 224 px, 2 x 2 tiles of the tiny stand-in: 28 x 28 patches).
Per stage, or all of GenAU's readout stages side by side (``all``), each feature taken:

- ``raw``: as the tower gives it;
- ``centred``: minus the image's mean feature of that stage, as the colour reference subtracts
  the image's mean colour;
- ``normalised``: scaled to unit length, as the readout's cosine compares it.

It bounds what the features hold for a detector that saw the target's normals; GenAU, trained
on another dataset, must find the defects with its linear readout and its two anchors.
"""

from __future__ import annotations

import argparse
import time
from itertools import product
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_genau.data.synthetic import read_difficulty
from anomalib_genau.evaluation import NearestNeighbourPatches, part_metrics, reference_records
from anomalib_genau.models.genau.torch_model import GenAUModel
from anomalib_genau.pretraining import SHIPPED_BACKBONE

MODES = ("raw", "centred", "normalised")


class TowerPatches(NearestNeighbourPatches):
    """Nearest-neighbour patches on the tower's high-resolution stage features of the image resized to ``size``."""

    def __init__(self, model: GenAUModel, stages: list[int], mode: str, size: int = 224) -> None:
        super().__init__(size)
        self.model, self.stages, self.mode = model, stages, mode

    @torch.no_grad()
    def patches(self, image: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(3, H, W)`` in [0, 1] -> ``(grid**2, len(stages) * C)`` features of the high-res grid, and ``grid``."""
        image = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear", antialias=True)
        grids = self.model.high_res_grids(self.model.see(image), 0)
        stages = []
        for stage in self.stages:
            grid = grids[stage]
            features = grid.flatten(0, 1)
            if self.mode == "centred":
                features = features - features.mean(dim=0)
            elif self.mode == "normalised":
                features = F.normalize(features, dim=-1)
            stages.append(features)
        return torch.cat(stages, dim=-1), grid.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, nargs="?", default=Path("datasets/genau_synthetic/target"))
    parser.add_argument("--backbone", default=str(SHIPPED_BACKBONE))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--stages", nargs="+", default=["all"], help="indices into GenAU's readout stages, or all")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument(
        "--vision-layers", type=int, nargs="+", help="the tower's hidden_states to read (default: GenAU's stages)"
    )
    args = parser.parse_args()
    difficulty = read_difficulty(args.root)
    categories = sorted(path.name for path in args.root.iterdir() if (path / "train").is_dir())
    model = GenAUModel(args.backbone, lora=False, vision_layers=args.vision_layers).eval()
    layers = model.vision_layers
    print(f"{args.backbone}: readout stages (hidden_states) {list(layers)}; {args.root}, {args.size} px")
    print("| stages | features | easy pixel | easy image | subtle pixel | subtle image | seconds |")
    print("|---|---|---|---|---|---|---|")
    for stage, mode in product(args.stages, args.modes):
        stages = list(range(len(layers))) if stage == "all" else [int(stage)]
        start = time.perf_counter()
        records = reference_records(
            args.root, categories, args.size, lambda s=stages, m=mode: TowerPatches(model, s, m, args.size)
        )
        parts = part_metrics(records, difficulty)
        cells = [f"{parts[p][m]:.3f}" for p in ("easy", "subtle") for m in ("pixel_AUROC", "image_AUROC")]
        named = ", ".join(str(layers[s]) for s in stages)
        print(f"| {named} | {mode} | {' | '.join(cells)} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
