"""One-class GenAU per generated category beside the cross-dataset GenAU, on the same test splits.

    python benchmarks/one_class.py [--workdir one_class] [--epochs 10] [--n-train 32] [--size 224]

Writes, under ``--workdir``: the pre-trained tiny stand-in, a source dataset (the demo's,
seed 0) and a target dataset (seed 1, every texture family, ``--n-train`` normal training
images per category). The cross-dataset model trains on the source's test splits with
``CrossDataset`` and its defaults (``multi_type_ratio`` 0.25, where the demo's config sets 0.5);
each one-class model trains on one target category's ``train/good`` only, through a plain
anomalib ``MVTecAD`` datamodule (synthetic anomalies).
Both are tested on each target category's test split with anomalib's metrics. The model's
hyper-parameters are those of ``configs/genau_tiny.yaml``; ``--size`` is the side the images are
resized to (224: the data's own; 336: AnyRes's largest grid of the stand-in, 3 x 3 tiles). Beside
anomalib's metrics (the image AUROC of the model's score: the configuration's fused score), the
one-class model's image AUROC by the map maximum alone is given, both split into the test split's
easy and subtle parts, and its yes/no answer's agreement with the label.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import yaml

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "genau_tiny.yaml"
TEST_SIZE = {"n_test_good": 12, "n_test_per_defect": 8, "image_size": 224}


def model_arguments() -> dict[str, Any]:
    """``configs/genau_tiny.yaml``'s GenAU arguments, without the backbone and pre-processor."""
    arguments = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]
    return {key: value for key, value in arguments.items() if key not in {"backbone", "pre_processor"}}


def build_model(backbone: Path, size: int) -> Any:
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Resize

    from anomalib_genau import GenAU

    pre_processor = PreProcessor(transform=Resize((size, size), antialias=True))
    return GenAU(backbone=str(backbone), pre_processor=pre_processor, **model_arguments())


def engine(root: Path, epochs: int, callbacks: list | None = None) -> Any:
    from anomalib.engine import Engine

    return Engine(
        max_epochs=epochs,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        devices=1,
        callbacks=callbacks or [],
    )


def scores(metrics: dict[str, float]) -> tuple[float, float]:
    return metrics["image_AUROC"], metrics["pixel_AUROC"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("one_class"))
    parser.add_argument("--epochs", type=int, default=10, help="one-class training epochs per category")
    parser.add_argument("--cross-epochs", type=int, default=8, help="cross-dataset training epochs (the demo's)")
    parser.add_argument("--n-train", type=int, default=32, help="normal training images per target category")
    parser.add_argument("--categories", nargs="+", help="target categories (default: every texture family)")
    parser.add_argument("--size", type=int, default=TEST_SIZE["image_size"], help="side the images are resized to")
    args = parser.parse_args()

    import torch
    from anomalib.data import MVTecAD
    from lightning.pytorch import seed_everything

    from anomalib_genau.data import CrossDataset
    from anomalib_genau.data.synthetic import (
        ALL_CATEGORIES,
        DEFAULT_CATEGORIES,
        generate_mvtec_dataset,
        read_difficulty,
    )
    from anomalib_genau.evaluation import TestRecorder, part_metrics
    from anomalib_genau.machine import cpu_description
    from anomalib_genau.pretraining import install_pretrained_backbone

    root = args.workdir
    backbone = install_pretrained_backbone(root / "backbone")
    source = generate_mvtec_dataset(root / "source", DEFAULT_CATEGORIES, n_train=4, seed=0, **TEST_SIZE)
    categories = args.categories or list(ALL_CATEGORIES)
    target = generate_mvtec_dataset(
        root / "target", {name: ALL_CATEGORIES[name] for name in categories}, n_train=args.n_train, seed=1, **TEST_SIZE
    )
    print(f"CPU: {cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads")

    start = time.perf_counter()
    seed_everything(0)
    cross = build_model(backbone, args.size)
    cross_data = CrossDataset(
        source="MVTecAD", source_root=source, target="MVTecAD", target_root=target, num_workers=0, seed=0
    )
    engine(root / "runs" / "cross", args.cross_epochs).fit(model=cross, datamodule=cross_data)
    cross_seconds = time.perf_counter() - start

    rows = []
    for category in categories:
        test_data = MVTecAD(root=target, category=category, eval_batch_size=8, num_workers=0)
        cross_scores = scores(engine(root / "runs" / "cross_test", 1).test(model=cross, datamodule=test_data)[0])
        start = time.perf_counter()
        seed_everything(0)
        model = build_model(backbone, args.size)
        data = MVTecAD(root=target, category=category, train_batch_size=4, eval_batch_size=8, num_workers=0)
        recorder = TestRecorder(target)
        run = engine(root / "runs" / category, args.epochs, [recorder])
        run.fit(model=model, datamodule=data)
        one_class = scores(run.test(model=model, datamodule=data)[0])
        parts = part_metrics(recorder.records, read_difficulty(target))
        parts_cells = (
            parts["all"]["image_AUROC_map_max"],
            parts["easy"]["image_AUROC"],
            parts["subtle"]["image_AUROC"],
            parts["subtle"]["image_AUROC_map_max"],
            parts["all"]["yes_no_agreement"],
        )
        seconds = time.perf_counter() - start
        rows.append((category, category in DEFAULT_CATEGORIES, one_class, parts_cells, cross_scores, seconds))

    print(f"\ncross-dataset model: trained {args.cross_epochs} epochs on the source in {cross_seconds:.0f} s")
    print(
        f"one-class models: {args.epochs} epochs on {args.n_train} normal images each (synthetic anomalies), "
        f"{args.size} px\n"
    )
    print(
        "| category | in source | one-class image AUROC | by map max | one-class pixel AUROC | easy image AUROC | "
        "subtle image AUROC | by map max | yes/no agreement | cross image AUROC | cross pixel AUROC | "
        "one-class train + test |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for category, seen, (image, pixel), cells, (cross_image, cross_pixel), seconds in rows:
        image_max, easy, subtle, subtle_max, agreement = cells
        print(
            f"| {category} | {'yes' if seen else 'no'} | {image:.3f} | {image_max:.3f} | {pixel:.3f} | {easy:.3f} | "
            f"{subtle:.3f} | {subtle_max:.3f} | {agreement:.3f} | {cross_image:.3f} | {cross_pixel:.3f} | "
            f"{seconds:.0f} s |"
        )


if __name__ == "__main__":
    main()
