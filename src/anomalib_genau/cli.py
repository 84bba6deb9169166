"""``anomalib-genau``: build the tiny backbone, generate data, run the offline demo; export, infer, serve (OpenVINO)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from anomalib_genau.choices import DATASETS, PRECISIONS, QUANTIZED_GRAPHS, WEIGHT_FORMATS


def tiny_backbone(args: argparse.Namespace) -> None:
    """Write the tiny LLaVA-OneVision checkpoint and processor: random, or pre-trained on generic scenes."""
    if args.rebuild and not args.pretrained:
        raise SystemExit("anomalib-genau tiny-backbone: --rebuild goes with --pretrained.")
    if (args.tower_from is not None or args.copy_task) and not args.rebuild:
        raise SystemExit("anomalib-genau tiny-backbone: --tower-from and --copy-task go with --pretrained --rebuild.")
    if not args.pretrained:
        from anomalib_genau.backbone import build_tiny_backbone

        print(build_tiny_backbone(args.directory, seed=args.seed))
        return
    from anomalib_genau.pretraining import PretrainedBackboneError, install_pretrained_backbone, pretrain_tiny_backbone
    from anomalib_genau.pretraining.stages import COPY_SCHEDULE

    try:
        if args.rebuild:
            copying = COPY_SCHEDULE if args.copy_task else None
            print(pretrain_tiny_backbone(args.directory, seed=args.seed, copying=copying, tower_from=args.tower_from))
        else:
            print(install_pretrained_backbone(args.directory))
    except PretrainedBackboneError as error:
        raise SystemExit(str(error)) from None


def synthetic_data(args: argparse.Namespace) -> None:
    """Write a generated dataset in the MVTec-AD, MPDD, VisA or Real-IAD layout (or all four)."""
    from anomalib_genau.data.synthetic_layouts import LAYOUT_GENERATORS

    counts = {
        "n_train": args.n_train,
        "n_test_good": args.n_test_good,
        "n_test_per_defect": args.n_test_per_defect,
        "image_size": args.image_size,
        "subtle_fraction": args.subtle_fraction,
    }
    if args.categories:
        counts["categories"] = _texture_categories(args.categories, args.layout)
    if args.layout == "all":
        for layout, generate in LAYOUT_GENERATORS.items():
            print(generate(args.directory / layout, seed=args.seed, **counts))
    else:
        print(LAYOUT_GENERATORS[args.layout](args.directory, seed=args.seed, **counts))


def _texture_categories(names: list[str], layout: str) -> dict[str, tuple[str, ...]]:
    """The MVTec-AD layout's generated categories called ``names``, with their defect folders."""
    from anomalib_genau.data.synthetic import ALL_CATEGORIES

    if layout != "MVTecAD":
        msg = f"--categories chooses among the MVTecAD layout's textures ({', '.join(ALL_CATEGORIES)}), not {layout}'s."
        raise SystemExit(msg)
    unknown = [name for name in names if name not in ALL_CATEGORIES]
    if unknown:
        msg = f"Unknown generated categories {unknown}; choose among {', '.join(ALL_CATEGORIES)}."
        raise SystemExit(msg)
    return {name: tuple(ALL_CATEGORIES[name]) for name in names}


def demo(args: argparse.Namespace) -> None:
    """Train and test GenAU on generated data with the tiny backbone, offline.

    What ``make demo`` runs; the harness is :func:`anomalib_genau.demo.run_demo`.
    """
    from anomalib_genau.demo import run_demo

    run_demo(args.config, epochs=args.epochs)


def export(args: argparse.Namespace) -> None:
    """Export a GenAU checkpoint to OpenVINO IR (f32, fp16, INT8 or INT4 weights, or INT8 quantization)."""
    from anomalib_genau.data.images import BrokenImageError, read_rgb
    from anomalib_genau.models.genau import GenAU
    from anomalib_genau.prompts import instruction
    from anomalib_genau.taxonomy import object_name

    if (args.weights in QUANTIZED_GRAPHS) != bool(args.quantization_images):
        raise SystemExit(
            f"anomalib-genau export: --quantization-images goes with --weights {' or '.join(QUANTIZED_GRAPHS)}, and "
            "only with them."
        )
    module = GenAU.load_from_checkpoint(args.ckpt_path, map_location="cpu")
    sizes = [_size(text) for text in args.input_size] if args.input_size else None
    images = None
    if args.quantization_images:
        prompt = instruction(object_name(args.category)) if args.category else None
        images, skipped = [], 0
        for path in _image_paths(args.quantization_images):
            try:
                pixels = read_rgb(path)
            except BrokenImageError as error:  # skipped, named and counted: the other images still quantize
                print(f"anomalib-genau export: skipping {error}", file=sys.stderr)
                skipped += 1
                continue
            images.append((module.pre_processed(pixels[None])[0], prompt))
            if len(images) == args.quantization_count:
                break
        if skipped:
            print(f"anomalib-genau export: {skipped} unreadable quantization image(s) skipped", file=sys.stderr)
        if not images:
            raise SystemExit("anomalib-genau export: none of the --quantization-images could be read.")
    try:
        manifest = module.export_openvino(args.export_root, sizes, args.weights, images)
    except ValueError as error:  # a model not ready to export (no thresholds, sizes it cannot take)
        raise SystemExit(f"anomalib-genau export: {error}") from None
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
    """``data.images.image_files``: a missing path or an empty selection ends the command with its message."""
    from anomalib_genau.data.images import image_files

    try:
        return image_files(items)
    except FileNotFoundError as error:
        raise SystemExit(f"anomalib-genau: {error}") from None


def _openvino_properties(pairs: Sequence[str]) -> dict[str, int | str]:
    """``["KEY=VALUE", ...]`` as OpenVINO properties, integer values as integers."""
    properties: dict[str, int | str] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key or not value:
            raise SystemExit(f"anomalib-genau: --property takes KEY=VALUE, got '{pair}'.")
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
            prediction = inferencer.predict(path, args.category, args.dataset, defect_type=args.defect_type)
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
    print(
        f"anomalib-genau infer: {len(paths) - failed} of {len(paths)} images answered, {failed} unreadable skipped",
        file=sys.stderr,
    )


def serve(args: argparse.Namespace) -> None:
    """Serve an OpenVINO export as a browser page and an HTTP API (the ``app`` extra), until Ctrl-C."""
    try:
        from anomalib_genau.app.serve import ServeError, ServeOptions, read_auth
        from anomalib_genau.app.serve import serve as serve_station
    except ModuleNotFoundError as error:  # gradio, the app extra
        raise SystemExit(f"anomalib-genau serve needs {error.name}: pip install 'anomalib-genau[app]'") from None
    try:
        options = ServeOptions(
            export=args.export,
            host=args.host,
            port=args.port,
            precision=args.precision,
            properties=_openvino_properties(args.property or []),
            ckpt=args.ckpt,
            auth=read_auth(args.auth or [], args.auth_file or []),
            workers=args.workers,
            max_queue=args.max_queue,
            max_upload_mb=args.max_upload_mb,
            max_megapixels=args.max_megapixels,
            defect_type=args.defect_type,
        )
        serve_station(options)
    except ServeError as error:
        raise SystemExit(f"anomalib-genau serve: {error}") from None


def _add_serve_command(commands: argparse._SubParsersAction) -> None:
    """The ``serve`` command's options."""
    server = commands.add_parser("serve", help=serve.__doc__)
    server.add_argument("export", type=Path, help="export folder (or its genau.json)")
    server.add_argument("--host", default="127.0.0.1", help="interface to bind (default: localhost only)")
    server.add_argument("--port", type=int, default=7860)
    server.add_argument("--precision", choices=PRECISIONS, default="f32")
    server.add_argument("--property", action="append", help="OpenVINO property KEY=VALUE (repeatable)")
    server.add_argument("--ckpt", type=Path, help="torch checkpoint that answers follow-up questions instead")
    server.add_argument("--auth", action="append", help="USER:PASSWORD required to log in (repeatable)")
    server.add_argument("--auth-file", type=Path, action="append", help="file of USER:PASSWORD lines")
    server.add_argument("--workers", type=int, default=1, help="compiled models answering at the same time")
    server.add_argument("--max-queue", type=int, default=16, help="waiting requests; more are refused at once")
    server.add_argument("--max-upload-mb", type=int, default=20)
    server.add_argument("--max-megapixels", type=int, default=50)
    server.add_argument(
        "--no-defect-type", dest="defect_type", action="store_false", help="leave the type question out (as infer's)"
    )
    server.set_defaults(handler=serve)


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
    backbone.add_argument(
        "--tower-from",
        type=Path,
        help="with --rebuild: take the vision tower from this pre-trained backbone (skips stage 1's 80 minutes)",
    )
    backbone.add_argument(
        "--copy-task",
        action="store_true",
        help="with --rebuild: add the copy task (not in the shipped stand-in; benchmarks/RESULTS.md, issue 18)",
    )
    backbone.set_defaults(handler=tiny_backbone)

    data = commands.add_parser("synthetic-data", help=synthetic_data.__doc__)
    data.add_argument("directory", type=Path)
    data.add_argument(
        "--layout",
        choices=[*DATASETS, "all"],
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
    data.add_argument(
        "--categories",
        nargs="+",
        metavar="NAME",
        help="MVTecAD layout: the textures to write (default carpet leather tile; the demo's target adds wood grid)",
    )
    data.set_defaults(handler=synthetic_data)

    demo_command = commands.add_parser("demo", help=demo.__doc__.splitlines()[0])
    demo_command.add_argument("--config", type=Path, help="anomalib config to run (default: configs/genau_tiny.yaml)")
    demo_command.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    demo_command.set_defaults(handler=demo)

    exporter = commands.add_parser("export", help=export.__doc__)
    exporter.add_argument("--ckpt-path", type=Path, required=True)
    exporter.add_argument("--export-root", type=Path, default=Path("exported"))
    exporter.add_argument("--weights", choices=WEIGHT_FORMATS, default="f32")
    exporter.add_argument(
        "--quantization-images",
        type=Path,
        nargs="+",
        help="int8_ptq(_tower): image files, or folders searched for images",
    )
    exporter.add_argument(
        "--quantization-count", type=int, default=16, help="int8_ptq(_tower): quantize on the first N images"
    )
    exporter.add_argument("--category", help="int8_ptq(_tower): product named in the quantization images' prompt")
    exporter.add_argument(
        "--input-size", action="append", help="HxW to export (repeatable); default: the pre-processor's size"
    )
    exporter.set_defaults(handler=export)

    inference = commands.add_parser("infer", help=infer.__doc__)
    inference.add_argument("export", type=Path, help="export folder (or its genau.json)")
    inference.add_argument(
        "images",
        type=Path,
        nargs="+",
        help="image files, or folders (searched recursively, every format anomalib reads)",
    )
    inference.add_argument(
        "--category", help="product in the prompt; its defect type is asked when the taxonomy has it"
    )
    inference.add_argument("--dataset", choices=DATASETS, default="MVTecAD", help="taxonomy of --category")
    inference.add_argument(
        "--no-defect-type",
        dest="defect_type",
        action="store_false",
        help="leave the type question out: the same label, score, map and answer, sooner",
    )
    inference.add_argument("--precision", choices=PRECISIONS, default="f32")
    inference.add_argument("--masks", type=Path, help="folder for the predicted masks (PNG)")
    inference.add_argument(
        "--property",
        action="append",
        help="OpenVINO property KEY=VALUE for every graph (repeatable), e.g. DYNAMIC_QUANTIZATION_GROUP_SIZE=128",
    )
    inference.set_defaults(handler=infer)

    _add_serve_command(commands)

    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
