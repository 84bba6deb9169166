"""How well can GenAU's readout segment with the stand-in's tower features, and where does the map lose?

    python benchmarks/readout_probe.py SOURCE TARGET [--backbone DIR] [--steps 184 2000]
        [--learning-rates 2e-3] [--temperatures 0.07] [--batch-size 4] [--views global high-res fused]
        [--anchors constant image]

SOURCE and TARGET are generated MVTec-layout roots (``anomalib-genau synthetic-data``; the
demo's ``datasets/genau_synthetic/source`` and ``target``). The frozen tower's stage features
of every source test image (what GenAU trains on) and target test image are computed once by
``GenAUModel.see``. Then GenAU's own readout (``AnchorReadout``) learns with GenAU's own
segmentation loss, as in training, but with the two anchors as free parameters instead of the
decoder's ``[SEG]`` states. It is the best case of a decoder that gives good constant anchors;
the readout's output is GenAU's map (``anomaly_map``), so its held-out figures bound what the
end-to-end model can reach on these features with this loss.

``--anchors image`` adds to the two free anchors a learned linear map of the image's mean
stage features (the global view's patches averaged, per stage): anchors that know what the image
looks like on the whole, as a decoder whose attention averages the image tokens could give them.
It bounds what image-conditioned anchors add over constant ones.

Printed per number of steps, on the target's easy and subtle parts (every normal image in
both): pixel AUROC and image AUROC of the map maximum for the global view alone, the
high-resolution AnyRes readout alone and GenAU's fusion of the two, for a readout trained on the
global view (as GenAU trains) and one trained on both views.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from anomalib_genau.data.images import read_rgb
from anomalib_genau.data.synthetic import read_difficulty
from anomalib_genau.evaluation.parts import ImageRecord, part_metrics
from anomalib_genau.evaluation.reference import ground_truth_mask
from anomalib_genau.models.genau.loss import GenAULoss
from anomalib_genau.models.genau.readout import AnchorReadout, anomaly_map
from anomalib_genau.models.genau.torch_model import GenAUModel
from anomalib_genau.pretraining import SHIPPED_BACKBONE

VIEWS = ("global", "high-res", "fused")
ANCHORS = ("constant", "image")
PARTS = ("easy", "subtle")


@dataclass
class Example:
    """One test image's frozen stage features, mask and truth."""

    key: str
    label: int
    mask: torch.Tensor  # (H, W) bool
    global_stages: list[torch.Tensor]  # S x (N, C)
    high_res_stages: list[torch.Tensor]  # S x (h * w, C), the reassembled AnyRes grid
    high_res_grid: tuple[int, int]


@torch.no_grad()
def examples(model: GenAUModel, root: Path) -> list[Example]:
    """Every test image under ``root``, through the model's vision pass."""
    result = []
    for path in sorted(root.glob("*/test/*/*.png")):
        image = read_rgb(path)
        vision = model.see(image[None])
        grids = model.high_res_grids(vision, 0)
        result.append(
            Example(
                key=path.relative_to(root).as_posix(),
                label=int(path.parent.name != "good"),
                mask=ground_truth_mask(path, image.shape[-1]),  # generated images are square
                global_stages=[stage[0] for stage in vision.global_stages],
                high_res_stages=[grid.flatten(0, 1) for grid in grids],
                high_res_grid=tuple(grids[0].shape[:2]),
            )
        )
    return result


def stacked(batch: list[Example], high_res: bool) -> list[torch.Tensor]:
    """Per stage ``(B, N, C)`` features of the batch's global views or high-res grids."""
    attribute = "high_res_stages" if high_res else "global_stages"
    return [torch.stack(stage) for stage in zip(*(getattr(e, attribute) for e in batch), strict=True)]


@dataclass(frozen=True)
class Setting:
    """One training run of the readout."""

    steps: int
    learning_rate: float
    temperature: float
    both_views: bool
    anchors: str = "constant"


class Anchors(torch.nn.Module):
    """Two free ``(2, D)`` anchors, plus (``image_conditioned``) a linear map of each image's mean stage features."""

    def __init__(self, vision_dim: int, text_dim: int, num_stages: int, image_conditioned: bool) -> None:
        super().__init__()
        self.free = torch.nn.Parameter(torch.randn(1, 2, text_dim))
        self.from_image = torch.nn.Linear(num_stages * vision_dim, 2 * text_dim) if image_conditioned else None

    def forward(self, global_stages: list[torch.Tensor]) -> torch.Tensor:
        """``(B, 2, D)`` anchors of the images whose per-stage ``(B, N, C)`` global-view features are given."""
        batch = global_stages[0].shape[0]
        anchors = self.free.expand(batch, -1, -1)
        if self.from_image is None:
            return anchors
        means = torch.cat([stage.mean(dim=1) for stage in global_stages], dim=-1)
        return anchors + self.from_image(means).view(batch, 2, -1)


def train_readout(
    model: GenAUModel, source: list[Example], setting: Setting, batch_size: int
) -> tuple[AnchorReadout, Anchors]:
    """GenAU's readout and its anchors, trained with GenAU's segmentation loss and schedule."""
    torch.manual_seed(0)
    projection = model.readout.projections[0]
    readout = AnchorReadout(
        projection.in_features, projection.out_features, len(model.vision_layers), setting.temperature
    )
    anchors = Anchors(
        projection.in_features, projection.out_features, len(model.vision_layers), setting.anchors == "image"
    )
    optimizer = torch.optim.AdamW(
        [*readout.parameters(), *anchors.parameters()], lr=setting.learning_rate, weight_decay=0.0
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(0.03 * setting.steps), setting.steps)
    loss = GenAULoss()
    rng = np.random.default_rng(0)
    order: list[int] = []
    for _ in range(setting.steps):
        if len(order) < batch_size:
            order += rng.permutation(len(source)).tolist()
        batch = [source[i] for i in order[:batch_size]]
        del order[:batch_size]
        masks = torch.stack([e.mask for e in batch]).float()
        global_stages = stacked(batch, False)
        expanded = anchors(global_stages)
        value = loss.segmentation(readout(global_stages, expanded, model.grid), masks)
        if setting.both_views:
            logits = readout(stacked(batch, True), expanded, batch[0].high_res_grid)
            value = value + loss.segmentation(logits, masks)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        scheduler.step()
    return readout, anchors


@torch.no_grad()
def records(
    readout: AnchorReadout, anchors: Anchors, model: GenAUModel, target: list[Example], view: str
) -> list[ImageRecord]:
    """Per-image maps of one view (``global``, ``high-res`` or ``fused`` as GenAU fuses them)."""
    result = []
    for example in target:
        size = tuple(example.mask.shape)
        global_stages = [s[None] for s in example.global_stages]
        image_anchors = anchors(global_stages)
        logits = readout(global_stages, image_anchors, model.grid)
        high_res = readout([s[None] for s in example.high_res_stages], image_anchors, example.high_res_grid)
        if view == "global":
            heat = anomaly_map(logits, size)
        elif view == "high-res":
            heat = anomaly_map(high_res, size)
        else:
            heat = anomaly_map(logits, size, [high_res], model.high_res_weight)
        heat = heat[0, 0]
        result.append(ImageRecord(example.key, example.label, example.mask, heat, float(heat.max())))
    return result


def main() -> None:
    """Extract features once, train the readout for each step count, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--backbone", default=str(SHIPPED_BACKBONE))
    parser.add_argument("--steps", type=int, nargs="+", default=[184, 2000])
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[2e-3])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.07])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--views", nargs="+", default=list(VIEWS), choices=VIEWS)
    parser.add_argument("--anchors", nargs="+", default=["constant"], choices=ANCHORS)
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    model = GenAUModel(args.backbone, lora=False).eval()
    start = time.perf_counter()
    source, target = examples(model, args.source), examples(model, args.target)
    parts = read_difficulty(args.target)
    print(f"features of {len(source)} source and {len(target)} target images: {time.perf_counter() - start:.0f} s")
    columns = (
        "steps",
        "learning rate",
        "temperature",
        "trained on",
        "anchors",
        "view",
        *(f"{p} {m}" for p in PARTS for m in ("pixel", "image")),
    )
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")
    for steps, learning_rate, temperature, both_views, kind in product(
        args.steps, args.learning_rates, args.temperatures, (False, True), args.anchors
    ):
        setting = Setting(steps, learning_rate, temperature, both_views, kind)
        readout, anchors = train_readout(model, source, setting, args.batch_size)
        for view in args.views:
            metrics = part_metrics(records(readout, anchors, model, target, view), parts)
            cells = [f"{metrics[part][name]:.3f}" for part in PARTS for name in ("pixel_AUROC", "image_AUROC")]
            trained = "both views" if both_views else "global view"
            row = [str(steps), f"{learning_rate:g}", f"{temperature:g}", trained, kind, view, *cells]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
