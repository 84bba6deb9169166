"""``anomalib-genau``: build the tiny backbone, generate data, run the offline demo, export and infer with OpenVINO."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

DEMO_BACKBONE = Path("backbones/genau-tiny")
DEMO_DATA = Path("datasets/genau_synthetic")
DEMO_CONFIG = Path("configs/genau_tiny.yaml")
DEMO_SOURCE_SEED, DEMO_TARGET_SEED = 0, 1
DEMO_DATA_SIZE = {"n_train": 4, "n_test_good": 12, "n_test_per_defect": 8, "image_size": 224}


def tiny_backbone(args: argparse.Namespace) -> None:
    """Write the tiny LLaVA-OneVision checkpoint and processor: random, or pre-trained on generic scenes."""
    if args.rebuild and not args.pretrained:
        raise SystemExit("anomalib-genau tiny-backbone: --rebuild goes with --pretrained.")
    if not args.pretrained:
        from anomalib_genau.backbone import build_tiny_backbone

        print(build_tiny_backbone(args.directory, seed=args.seed))
        return
    from anomalib_genau.pretraining import PretrainedBackboneError, install_pretrained_backbone, pretrain_tiny_backbone

    if args.rebuild:
        print(pretrain_tiny_backbone(args.directory, seed=args.seed))
        return
    try:
        print(install_pretrained_backbone(args.directory))
    except PretrainedBackboneError as error:
        raise SystemExit(str(error)) from None


def synthetic_data(args: argparse.Namespace) -> None:
    """Write a generated dataset in the MVTec-AD, MPDD, VisA or Real-IAD layout (or all four)."""
    from anomalib_genau.data.synthetic import LAYOUT_GENERATORS

    counts = {
        "n_train": args.n_train,
        "n_test_good": args.n_test_good,
        "n_test_per_defect": args.n_test_per_defect,
        "image_size": args.image_size,
        "subtle_fraction": args.subtle_fraction,
    }
    if args.layout == "all":
        for layout, generate in LAYOUT_GENERATORS.items():
            print(generate(args.directory / layout, seed=args.seed, **counts))
    else:
        print(LAYOUT_GENERATORS[args.layout](args.directory, seed=args.seed, **counts))


def prepare_demo_artifacts(workdir: Path) -> None:
    """Install the demo's pre-trained tiny backbone and write the source/target datasets under ``workdir`` if missing.

    A random tiny backbone left there by an earlier version is replaced.
    """
    from anomalib_genau.data.synthetic import (
        DEFAULT_CATEGORIES,
        DIFFICULTY_FILE,
        UNSEEN_CATEGORIES,
        generate_mvtec_dataset,
    )
    from anomalib_genau.pretraining import MANIFEST, PretrainedBackboneError, install_pretrained_backbone

    if not (workdir / DEMO_BACKBONE / MANIFEST).is_file():
        try:
            install_pretrained_backbone(workdir / DEMO_BACKBONE)
        except PretrainedBackboneError as error:
            raise SystemExit(str(error)) from None
    # the target adds texture families the source never shows
    target_categories = {**DEFAULT_CATEGORIES, **UNSEEN_CATEGORIES}
    splits = (("source", DEMO_SOURCE_SEED, DEFAULT_CATEGORIES), ("target", DEMO_TARGET_SEED, target_categories))
    for split, seed, categories in splits:
        if not (workdir / DEMO_DATA / split / DIFFICULTY_FILE).is_file():
            generate_mvtec_dataset(workdir / DEMO_DATA / split, categories, seed=seed, **DEMO_DATA_SIZE)


INFERENCE_SWITCHES = ("high_res_readout", "score_fusion")


def test_variants(model: object, datamodule: object, root: Path) -> dict[str, dict[str, float]]:
    """Test the trained model again with each inference switch flipped, one at a time (no pictures).

    The map and score switches run without the type question (it does not depend on them);
    a last run answers it by likelihood instead of generation.
    """
    from anomalib.engine import Engine

    results = {}
    visualizer, model.visualizer = model.visualizer, None
    mode = model.defect_type_mode
    variants = [(model.model, switch, not getattr(model.model, switch), None) for switch in INFERENCE_SWITCHES]
    variants.append((model, "defect_type_mode", "likelihood", "likelihood"))
    for owner, name, value, type_mode in variants:
        before = getattr(owner, name)
        setattr(owner, name, value)
        model.defect_type_mode = type_mode
        engine = Engine(default_root_dir=root / "ablations", accelerator="cpu", devices=1, logger=False)
        results[f"{name}={value}"] = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
        setattr(owner, name, before)
        model.defect_type_mode = mode
    model.visualizer = visualizer
    return results


def print_parts(columns: dict[str, dict[str, dict[str, float]]]) -> None:
    """One row per part and metric, one column per model."""
    from anomalib_genau.evaluation import PART_METRICS

    print("\n" + f"{'part':<8}{'metric':<22}" + "".join(f"{name:>12}" for name in columns))
    for part in ("easy", "subtle", "all"):
        for metric in PART_METRICS:
            values = "".join(f"{parts[part][metric]:>12.4f}" for parts in columns.values())
            print(f"{part:<8}{metric:<22}{values}")


def chance_type_scores(datamodule: object, draws: int = 20, seed: int = 0) -> dict[str, float]:
    """Weighted P/R/F1 of answering each test image with a uniformly random option (normal or a candidate)."""
    import random
    from types import SimpleNamespace

    import torch

    from anomalib_genau.data.dataclasses import type_labels
    from anomalib_genau.models.genau.metrics import WeightedF1, WeightedPrecision, WeightedRecall

    samples = datamodule.test_data.samples
    options = {part.category: [[], *([name] for name in part.candidates)] for part in datamodule.test_data.parts}
    truth = torch.stack([type_labels(t.split(", ") if t else []) for t in samples.defect_type])
    rng = random.Random(seed)
    metrics = [WeightedPrecision(prefix="type_"), WeightedRecall(prefix="type_"), WeightedF1(prefix="type_")]
    totals = dict.fromkeys((metric.name for metric in metrics), 0.0)
    for _ in range(draws):
        guess = torch.stack([type_labels(rng.choice(options[category])) for category in samples.category])
        for metric in metrics:
            metric.reset()
            metric.update(SimpleNamespace(pred_types=guess, gt_types=truth))
            totals[metric.name] += float(metric.compute()) / draws
    return totals


def demo(args: argparse.Namespace) -> None:
    """Train and test GenAU on generated data with the tiny backbone, offline.

    Runs ``configs/genau_tiny.yaml`` through anomalib's CLI classes, like ``anomalib train``:
    the model trains on the source test split and is tested on the held-out target. The
    untrained model is tested first, by a separate engine under ``<results>/untrained``, and
    the trained one again with the high-res readout and the score fusion switched and with the
    defect types chosen by likelihood; a chance column gives the type metrics of random
    answers. A second table splits the target into its easy and subtle parts (untrained,
    trained, and the training-free nearest-neighbour reference on the target's own normal
    images). All metric sets go to ``demo_metrics.json`` in the run folder, next to the
    pictures of the visualizer.
    """
    from anomalib.cli import AnomalibCLI
    from anomalib.engine import Engine

    from anomalib_genau.data.synthetic import read_difficulty
    from anomalib_genau.evaluation import TestRecorder, part_metrics, reference_records

    config = Path(args.config)
    if not config.is_file():
        msg = f"Demo config '{config}' not found; run from the repository root or pass --config."
        raise SystemExit(msg)
    prepare_demo_artifacts(Path.cwd())
    overrides = [] if args.epochs is None else [f"--trainer.max_epochs={args.epochs}"]
    cli = AnomalibCLI(["train", "--config", str(config), *overrides], run=False)
    engine, model, datamodule = cli.engine, cli.model, cli.datamodule
    root = Path(cli.config["train"]["default_root_dir"])
    target_root = Path(cli.config["train"]["data"]["init_args"]["target_root"])
    difficulty, recorder = read_difficulty(target_root), TestRecorder(target_root)
    baseline = Engine(
        default_root_dir=root / "untrained", accelerator="cpu", devices=1, logger=False, callbacks=[recorder]
    )
    columns = {"untrained": baseline.test(model=model, datamodule=datamodule)[0]}
    parts = {"untrained": part_metrics(recorder.records, difficulty)}
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    engine.trainer.callbacks.append(recorder)  # the trainer exists once fitting starts
    columns["trained"] = engine.test(model=model, datamodule=datamodule)[0]
    seconds = time.perf_counter() - start
    parts["trained"] = part_metrics(recorder.records, difficulty)
    columns.update(test_variants(model, datamodule, root))
    columns["chance"] = chance_type_scores(datamodule)
    categories = sorted({part.category for part in datamodule.test_data.parts})
    parts["reference"] = part_metrics(reference_records(target_root, categories), difficulty)
    run_dir = Path(engine.trainer.default_root_dir)
    steps = engine.trainer.global_step
    summary = {**columns, "parts": parts, "train_and_test_seconds": seconds, "steps": steps}
    (run_dir / "demo_metrics.json").write_text(json.dumps(summary, indent=2))
    print("\n" + f"{'metric':<34}" + "".join(f"{name:>30}" for name in columns))
    for key in sorted(columns["trained"]):
        print(f"{key:<34}" + "".join(f"{values.get(key, float('nan')):>30.4f}" for values in columns.values()))
    print_parts(parts)
    print(f"{steps} training steps, train + test {seconds:.1f} s; metrics and pictures in {run_dir}")


def export(args: argparse.Namespace) -> None:
    """Export a GenAU checkpoint to OpenVINO IR (f32, fp16, INT8 or INT4 weights, or INT8 quantization)."""
    from anomalib_genau.data.images import read_rgb
    from anomalib_genau.deploy import export_openvino
    from anomalib_genau.models.genau import GenAU
    from anomalib_genau.prompts import instruction
    from anomalib_genau.taxonomy import object_name

    if (args.weights == "int8_ptq") != bool(args.calibration_images):
        raise SystemExit("anomalib-genau export: --calibration-images goes with --weights int8_ptq, and only with it.")
    module = GenAU.load_from_checkpoint(args.ckpt_path, map_location="cpu")
    sizes = [_size(text) for text in args.input_size] if args.input_size else None
    calibration = None
    if args.calibration_images:
        prompt = instruction(object_name(args.category)) if args.category else None
        paths = _image_paths(args.calibration_images)[: args.calibration_count]
        calibration = [(module.pre_processed(read_rgb(path)[None])[0], prompt) for path in paths]
    manifest = export_openvino(module, args.export_root, sizes, args.weights, calibration)
    files = sorted(p for p in manifest.parent.rglob("*") if p.is_file())
    for path in files:
        print(f"{path.stat().st_size:>12,d}  {path.relative_to(manifest.parent)}")
    print(f"GenAU OpenVINO export ({args.weights} weights): {manifest}")


def _size(text: str) -> tuple[int, int]:
    """``"384x768"`` as ``(384, 768)`` (height x width)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        msg = f"--input-size must look like 384x384 (height x width), got '{text}'."
        raise SystemExit(msg) from None
    return height, width


def _image_paths(items: Sequence[Path]) -> list[Path]:
    """Image files, with each folder replaced by the ``*.png`` files under it."""
    return [path for item in items for path in (sorted(item.rglob("*.png")) if item.is_dir() else [item])]


def _openvino_properties(pairs: Sequence[str]) -> dict[str, int | str]:
    """``["KEY=VALUE", ...]`` as OpenVINO properties, integer values as integers."""
    properties: dict[str, int | str] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key or not value:
            raise SystemExit(f"anomalib-genau infer: --property takes KEY=VALUE, got '{pair}'.")
        properties[key] = int(value) if value.lstrip("-").isdigit() else value
    return properties


def infer(args: argparse.Namespace) -> None:
    """Answer images with an OpenVINO export: one JSON line per image, masks written as PNG."""
    import numpy as np
    from PIL import Image

    from anomalib_genau.data.images import BrokenImageError
    from anomalib_genau.deploy import ExportError, GenAUOpenVINOInferencer

    properties = _openvino_properties(args.property or [])
    try:
        inferencer = GenAUOpenVINOInferencer(args.export, precision=args.precision, config=properties)
    except ExportError as error:
        raise SystemExit(f"anomalib-genau infer: {error}") from None
    except RuntimeError as error:  # OpenVINO refused a property; its last line says which and why
        reason = str(error).strip().splitlines()[-1]
        raise SystemExit(f"anomalib-genau infer: cannot compile with {properties}: {reason}") from None
    paths = _image_paths(args.images)
    if args.masks:
        args.masks.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in paths:
        try:
            prediction = inferencer.predict(path, category=args.category, dataset=args.dataset)
        except (BrokenImageError, ValueError) as error:  # one bad image does not stop a production line
            print(json.dumps({"image_path": str(path), "error": str(error)}))
            failed += 1
            continue
        record = {"image_path": str(path), **prediction.summary()}
        if args.masks:
            mask_path = args.masks / f"{path.stem}_mask.png"
            Image.fromarray(prediction.pred_mask.astype(np.uint8) * 255).save(mask_path)
            record["mask_path"] = str(mask_path)
        print(json.dumps(record))
    if failed:
        raise SystemExit(f"anomalib-genau infer: {failed} of {len(paths)} images could not be read.")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``anomalib-genau`` command."""
    parser = argparse.ArgumentParser(prog="anomalib-genau", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    backbone = commands.add_parser("tiny-backbone", help=tiny_backbone.__doc__)
    backbone.add_argument("directory", type=Path)
    backbone.add_argument("--seed", type=int, default=0)
    backbone.add_argument(
        "--pretrained", action="store_true", help="copy the shipped stand-in pre-trained on generic scenes"
    )
    backbone.add_argument(
        "--rebuild", action="store_true", help="with --pretrained: run the pre-training instead of copying"
    )
    backbone.set_defaults(handler=tiny_backbone)

    data = commands.add_parser("synthetic-data", help=synthetic_data.__doc__)
    data.add_argument("directory", type=Path)
    data.add_argument(
        "--layout",
        choices=["MVTecAD", "MPDD", "Visa", "RealIAD", "all"],
        default="MVTecAD",
        help="dataset layout; 'all' writes one sub-folder per layout",
    )
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--n-train", type=int, default=8)
    data.add_argument("--n-test-good", type=int, default=12)
    data.add_argument("--n-test-per-defect", type=int, default=8)
    data.add_argument("--image-size", type=int, default=128)
    data.add_argument(
        "--subtle-fraction", type=float, default=0.5, help="share of subtle (thin, faint, small) defects, in [0, 1]"
    )
    data.set_defaults(handler=synthetic_data)

    run_demo = commands.add_parser("demo", help=demo.__doc__.splitlines()[0])
    run_demo.add_argument("--config", default=str(DEMO_CONFIG))
    run_demo.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    run_demo.set_defaults(handler=demo)

    exporter = commands.add_parser("export", help=export.__doc__)
    exporter.add_argument("--ckpt-path", type=Path, required=True)
    exporter.add_argument("--export-root", type=Path, default=Path("exported"))
    exporter.add_argument("--weights", choices=["f32", "fp16", "int8", "int4", "int8_ptq"], default="f32")
    exporter.add_argument(
        "--calibration-images", type=Path, nargs="+", help="int8_ptq: image files, or folders searched for *.png"
    )
    exporter.add_argument("--calibration-count", type=int, default=16, help="int8_ptq: calibrate on the first N images")
    exporter.add_argument("--category", help="int8_ptq: product named in the calibration prompt")
    exporter.add_argument(
        "--input-size", action="append", help="HxW to export (repeatable); default: the pre-processor's size"
    )
    exporter.set_defaults(handler=export)

    inference = commands.add_parser("infer", help=infer.__doc__)
    inference.add_argument("export", type=Path, help="export folder (or its genau.json)")
    inference.add_argument("images", type=Path, nargs="+", help="image files, or folders searched for *.png")
    inference.add_argument(
        "--category", help="product in the prompt; its defect type is asked when the taxonomy has it"
    )
    inference.add_argument("--dataset", default="MVTecAD", help="taxonomy of --category: MVTecAD, Visa, MPDD, RealIAD")
    inference.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    inference.add_argument("--masks", type=Path, help="folder for the predicted masks (PNG)")
    inference.add_argument(
        "--property",
        action="append",
        help="OpenVINO property KEY=VALUE for every graph (repeatable), e.g. DYNAMIC_QUANTIZATION_GROUP_SIZE=128",
    )
    inference.set_defaults(handler=infer)

    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
