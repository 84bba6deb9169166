"""How much the OpenVINO export's weight formats change GenAU's metrics, on a test split.

    python benchmarks/deployment_metrics.py --ckpt-path results/.../model.ckpt \\
        --data datasets/genau_synthetic/target --categories carpet leather tile

Runs the checkpoint's torch model (fp32, eager) and its OpenVINO export with f32, INT8 and
INT4 weights and INT8 post-training quantization of the decoder (``int8_ptq``) and of the decoder
and the vision tower (``int8_ptq_tower``), calibrated on ``--quantization-images`` normal training
images of each category, never on test images, over every test image of the MVTec-layout
categories, and prints image AUROC, pixel AUROC, the agreement of labels and defect types with
torch, and the largest and mean map difference. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from anomalib.data import ImageBatch
from anomalib.metrics import AUROC
from PIL import Image

from anomalib_genau import prompts
from anomalib_genau.data.images import read_rgb
from anomalib_genau.deploy import GenAUOpenVINOInferencer
from anomalib_genau.models.genau import GenAU
from anomalib_genau.taxonomy import object_name, product_candidates

WEIGHTS = ("f32", "int8", "int4", "int8_ptq", "int8_ptq_tower")


def test_images(root: Path, category: str) -> list[tuple[Path, Path | None]]:
    """``(image, mask or None)`` of a category's test split in the MVTec-AD layout."""
    items = []
    for path in sorted((root / category / "test").rglob("*.png")):
        defect = path.parent.name
        mask = root / category / "ground_truth" / defect / f"{path.stem}_mask.png"
        items.append((path, None if defect == "good" else mask))
    return items


def torch_answer(module: GenAU, path: Path, category: str) -> tuple[float, bool, np.ndarray, list[str]]:
    pixels = module.pre_processed(read_rgb(path)[None])
    name = object_name(category)
    candidates = product_candidates("mvtec_ad", category)
    with torch.no_grad():
        inspection = module.model.inspect(pixels, [prompts.instruction(name)])
        batch = module.post_processor(inspection.batch)
        question = [prompts.type_instruction(name, candidates)]
        types = module.model.predict_types(inspection.vision, question, [candidates]).types[0]
    return float(batch.pred_score[0]), bool(batch.pred_label[0]), batch.anomaly_map[0, 0].numpy(), types


def quantization_images(module: GenAU, root: Path, categories: list[str], count: int) -> list[tuple]:
    """The first ``count`` normal training images of each category, pre-processed, with its prompt."""
    return [
        (module.pre_processed(read_rgb(path)[None])[0], prompts.instruction(object_name(category)))
        for category in categories
        for path in sorted((root / category / "train" / "good").glob("*.png"))[:count]
    ]


def metrics(records: list[tuple[float, bool, np.ndarray, str]], items: list[tuple[Path, Path | None]]) -> dict:
    """Image and pixel AUROC through anomalib's metric."""
    size = records[0][2].shape
    masks = []
    for _, mask in items:
        if mask is None:
            masks.append(torch.zeros(size))
        else:
            masks.append(torch.from_numpy(np.asarray(Image.open(mask).convert("L").resize(size[::-1]))) > 127)
    batch = ImageBatch(
        image=torch.zeros(len(items), 3, *size),
        gt_label=torch.tensor([mask is not None for _, mask in items]),
        gt_mask=torch.stack(masks).bool(),
        pred_score=torch.tensor([r[0] for r in records]),
        anomaly_map=torch.from_numpy(np.stack([r[2] for r in records]))[:, None],
    )
    image_auroc = AUROC(fields=["pred_score", "gt_label"])
    pixel_auroc = AUROC(fields=["anomaly_map", "gt_mask"])
    image_auroc.update(batch)
    pixel_auroc.update(batch)
    return {"image AUROC": float(image_auroc.compute()), "pixel AUROC": float(pixel_auroc.compute())}


def checkpoint_arguments(description: str) -> argparse.ArgumentParser:
    """The checkpoint, the MVTec-layout data and categories, and the quantization images per category."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt-path", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="MVTec-layout root of the test categories")
    parser.add_argument("--categories", nargs="+", required=True)
    parser.add_argument("--quantization-images", type=int, default=4, help="INT8 PTQ: training images per category")
    return parser


def main() -> None:
    args = checkpoint_arguments(__doc__).parse_args()

    module = GenAU.load_from_checkpoint(args.ckpt_path, map_location="cpu", weights_only=False).eval()
    items = [(category, item) for category in args.categories for item in test_images(args.data, category)]
    reference = [torch_answer(module, path, category) for category, (path, _) in items]
    rows = {"torch eager fp32": reference}
    images = quantization_images(module, args.data, args.categories, args.quantization_images)
    with tempfile.TemporaryDirectory() as tmp:
        for weights in WEIGHTS:
            manifest = module.export_openvino(Path(tmp) / weights, weights=weights, quantization_images=images)
            inferencer = GenAUOpenVINOInferencer(manifest)
            answers = [inferencer.predict(path, category=category) for category, (path, _) in items]
            rows[f"OpenVINO {weights}"] = [
                (a.pred_score, a.pred_label, a.anomaly_map, a.pred_defect_type) for a in answers
            ]
    plain_items = [item for _, item in items]
    print(f"{len(items)} test images of {', '.join(args.categories)}")
    print("| backend | image AUROC | pixel AUROC | labels as torch | types as torch | max map diff | mean map diff |")
    print("|---|---|---|---|---|---|---|")
    for name, records in rows.items():
        values = metrics(records, plain_items)
        labels = np.mean([r[1] == t[1] for r, t in zip(records, reference, strict=True)])
        types = np.mean([r[3] == t[3] for r, t in zip(records, reference, strict=True)])
        differences = [np.abs(r[2] - t[2]) for r, t in zip(records, reference, strict=True)]
        largest, mean = max(float(d.max()) for d in differences), float(np.mean([d.mean() for d in differences]))
        print(
            f"| {name} | {values['image AUROC']:.4f} | {values['pixel AUROC']:.4f} | {labels:.1%} | {types:.1%} | "
            f"{largest:.1e} | {mean:.1e} |"
        )


if __name__ == "__main__":
    main()
