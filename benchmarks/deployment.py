"""GenAU on CPU: torch eager fp32 against its OpenVINO export in f32, bf16 and INT8 weights.

    python benchmarks/deployment.py                       # tiny backbone, 112 px
    python benchmarks/deployment.py --size qwen2-0.5b     # real-size random weights, 384 px
    python benchmarks/deployment.py --visual-tokens anyres global_pooled --backends "OpenVINO INT8 PTQ"

Prints figures and ratios only; nothing is asserted. One image through the whole answer per
call: vision, the inspection question (prefill, greedy decoding of the short answer), readout,
post-processing, and the defect-type question about a carpet (its own prompt tokens after the
shared beginning, then its answer: greedy, or with ``--types likelihood`` the options' tokens;
``--types none`` leaves it out). The decoding budget is the short answer's length
(``--max-new-tokens`` sets another): the random model never stops by itself, a trained one
stops there.


Each ``--visual-tokens`` budget (what the decoder reads of the image, ``choices.VISUAL_TOKENS``)
gets its own torch row and export; the speed-up is against torch on the first budget, the
differences against torch on the same budget.

- latency per image (median) of torch eager fp32 and of the OpenVINO export run as f32
  (f32 weights, f32 inference), bf16 (fp16 weights, bf16 inference), INT8 (NNCF INT8
  weights, bf16 inference), INT8 PTQ (NNCF INT8 weights and activations for the decoder,
  INT8 weights elsewhere, calibrated on ``--quantization-images`` other random images), INT8 PTQ
  + tower (the same, with INT8 activations in the vision tower but for its patch embedding) and, with
  ``--int4``, INT4 (NNCF INT4 decoder weights, bf16 inference) and, with ``--dq-group-size N``,
  INT8 weights with the CPU plugin's dynamic INT8 activations in groups of N (default 32);
- images per second answering one image per call (one over the latency) and answering
  ``--batch`` images per call (the benchmark's image and other random ones; torch as one batch,
  OpenVINO with ``predict_batch``: one decoder batch, the vision graphs image by image);
- each backend's peak resident memory (its own process) answering one image, and the export's IR size on disk;
- the largest map and score differences from torch, and whether label, answer and type agree;
- per backend, within the same timed calls: the vision tower, the prefill (decoder passes over
  the prompt), the decoding steps (one decoder pass per answer token, the segmentation pair in
  one), their ratio, and the rest (processor, image tokens, readout, post-processing); and the
  FLOPs per image (counted from the configuration) per second as a fraction of this machine's
  measured matmul peak in that precision (the better of torch and OpenVINO on large matrix
  products).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from anomalib_genau import prompts
from anomalib_genau.backbone import BACKBONE_SIZES, build_random_backbone
from anomalib_genau.choices import VISUAL_TOKENS
from anomalib_genau.machine import cpu_description
from anomalib_genau.taxonomy import product_candidates
from inference import (
    decoder_stage,
    image_flops,
    matmul_peak,
    prompt_length,
    short_answer_tokens,
    type_question_flops,
)
from timing import StageClock, median_seconds

# backend name -> (export weights, inference precision, further OpenVINO properties)
BACKENDS = {
    "OpenVINO f32": ("f32", "f32", {}),
    "OpenVINO bf16": ("fp16", "bf16", {}),
    "OpenVINO INT8": ("int8", "bf16", {}),
    "OpenVINO INT8 PTQ": ("int8_ptq", "bf16", {}),
    "OpenVINO INT8 PTQ + tower": ("int8_ptq_tower", "bf16", {}),
}
INT4 = {"OpenVINO INT4": ("int4", "bf16", {})}


def dynamic_quantization_backend(group_size: int) -> dict[str, tuple[str, str, dict]]:
    """INT8 weights with the CPU plugin's dynamic INT8 activations in groups of ``group_size`` (default 32)."""
    properties = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": group_size}
    return {f"OpenVINO INT8 DQ{group_size}": ("int8", "bf16", properties)}


def peak_rss_gib() -> float:
    """This process's peak resident memory in GiB: Linux's ``VmHWM`` (KiB).

    Not ``getrusage``'s ``ru_maxrss``: Linux carries it over from the parent through fork and
    exec, so every worker reported at least the exporting parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    msg = "No VmHWM in /proc/self/status: peak memory is measured on Linux only."
    raise RuntimeError(msg)


TYPE_MODES = ("generate", "likelihood", "none")
CATEGORY = "carpet"


def type_tokens(model: torch.nn.Module, types: str, max_new_tokens: int) -> int:
    """Tokens the type question feeds the decoder after its prompt: a random model's whole greedy
    budget, or every option's tokens after its first (``likelihood``), or none."""
    if types == "none":
        return 0
    if types == "generate":
        return max_new_tokens
    options = model.codec.type_options(product_candidates("mvtec_ad", CATEGORY))
    return sum(len(ids) - 1 for ids in model.codec.option_ids(options))


def build_module(
    backbone: Path, max_new_tokens: int | None, visual_tokens: str = "anyres", types: str = "generate"
) -> torch.nn.Module:
    """A GenAU module as training leaves it: calibrated score, post-processing thresholds set.

    ``max_new_tokens=None``: the length of the short answer (see ``inference.short_answer_tokens``).
    """
    from anomalib_genau.models.genau import GenAU

    torch.manual_seed(0)
    type_mode = None if types == "none" else types
    module = GenAU(backbone=str(backbone), visual_tokens=visual_tokens, defect_type_mode=type_mode).eval()
    module.model.max_new_tokens = max_new_tokens or short_answer_tokens(module.model)
    module.model.calibration.estimate(torch.rand(16), torch.randn(16))
    post = module.post_processor
    for name, value in {"image_min": 0.0, "image_max": 1.0, "_image_threshold": 0.5}.items():
        getattr(post, name).fill_(value)
    for name, value in {"pixel_min": 0.0, "pixel_max": 1.0, "_pixel_threshold": 0.5}.items():
        getattr(post, name).fill_(value)
    return module


def batch_images(image: Path, batch: int) -> list[torch.Tensor]:
    """The benchmark's image and ``batch - 1`` other random images of its size, ``(3, H, W)`` each."""
    first = torch.load(image)
    generator = torch.Generator().manual_seed(2)
    return [first, *(torch.rand(first.shape, generator=generator) for _ in range(batch - 1))]


def images_per_second(function: Callable[[], object], images: int) -> float:
    """Images answered per second by one call of ``function`` that answers ``images`` images."""
    start = time.perf_counter()
    function()
    return images / (time.perf_counter() - start)


def torch_worker(
    backbone: Path, image: Path, repeats: int, max_new_tokens: int, visual_tokens: str, types: str, batch: int
) -> dict:
    """Latency of eager fp32 inference, per stage, its outputs (the reference) and images/s at ``batch``."""
    module = build_module(backbone, max_new_tokens, visual_tokens, types)
    candidates = product_candidates("mvtec_ad", CATEGORY)
    pixels = module.pre_processed(torch.load(image)[None])
    llava, clock = module.model.llava, StageClock()
    llava.model.vision_tower.forward = clock.wrap("vision", llava.model.vision_tower.forward)
    llava.forward = clock.wrap(decoder_stage, llava.forward)

    def run(pixels: torch.Tensor = pixels) -> tuple:
        with torch.no_grad():
            count = len(pixels)
            inspection = module.model.inspect(pixels, [prompts.instruction(CATEGORY)] * count)
            defect_type = None
            if module.defect_type_mode is not None:
                question = prompts.type_instruction(CATEGORY, candidates)
                answer = module.model.predict_types(inspection.vision, [question] * count, [candidates] * count, types)
                defect_type = answer.types[0]
            return module.post_processor(inspection.batch), inspection.answers, defect_type

    stages = clock.median_stages(run, repeats)
    outputs, answers, defect_type = run()
    peak = peak_rss_gib()
    several = module.pre_processed(torch.stack(batch_images(image, batch)))
    return {
        "seconds": stages["total"],
        "stages": stages,
        "peak_gib": peak,
        "batch_images_per_second": images_per_second(lambda: run(several), batch),
        "map": outputs.anomaly_map[0, 0].tolist(),
        "score": float(outputs.pred_score[0]),
        "label": bool(outputs.pred_label[0]),
        "answer": answers[0],
        "type": defect_type,
    }


def openvino_worker(export: Path, precision: str, image: Path, repeats: int, properties: dict, batch: int) -> dict:
    """Latency of the OpenVINO inferencer on one image, per stage, its outputs and images/s at ``batch``."""
    from anomalib_genau.deploy import GenAUOpenVINOInferencer

    inferencer = GenAUOpenVINOInferencer(export, precision=precision, config=properties)
    pixels = inferencer.prepare(torch.load(image))
    clock = StageClock()
    inferencer.vision_tower = clock.wrap("vision", inferencer.vision_tower)
    inferencer._infer = clock.wrap("prefill", inferencer._infer)  # a decoder pass outside a decoding step
    inferencer._step = clock.wrap("decoding", inferencer._step)
    category = CATEGORY if inferencer.manifest["defect_types"] else None  # the type question is asked or not
    stages = clock.median_stages(lambda: inferencer.predict(pixels, category), repeats)
    prediction = inferencer.predict(pixels, category)
    peak = peak_rss_gib()
    several = batch_images(image, batch)
    return {
        "seconds": stages["total"],
        "stages": stages,
        "peak_gib": peak,
        "batch_images_per_second": images_per_second(lambda: inferencer.predict_batch(several, category), batch),
        "map": prediction.anomaly_map.tolist(),
        "score": prediction.pred_score,
        "label": prediction.pred_label,
        "answer": prediction.explanation,
        "type": prediction.pred_defect_type,
    }


def openvino_matmul_peak(precision: str, n: int = 2048, depth: int = 8) -> float:
    """FLOP/s of OpenVINO's CPU plugin on a chain of ``depth`` ``n x n`` matrix products."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    node = source = ops.parameter([n, n], np.float32)
    for _ in range(depth):
        node = ops.matmul(node, ops.constant(rng.standard_normal((n, n), dtype=np.float32) / n**0.5), False, False)
    compiled = ov.Core().compile_model(
        ov.Model([node], [source]), "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    )
    request, data = compiled.create_infer_request(), rng.standard_normal((n, n), dtype=np.float32)
    return 2 * depth * n**3 / median_seconds(lambda: request.infer([data]), repeats=9, warmup=5)


def peaks() -> dict[str, float]:
    """The measured matmul peak of this machine per precision: the better of torch and OpenVINO."""
    return {
        "f32": max(matmul_peak(torch.float32), openvino_matmul_peak("f32")),
        "bf16": max(matmul_peak(torch.bfloat16), openvino_matmul_peak("bf16")),
    }


def print_table(rows: list[tuple], batch: int) -> None:
    """Latency, throughput, memory, size and agreement with torch per backend (each budget's first row is its torch)."""
    baseline = rows[0][2]
    references = {}
    for _, budget, record, _, _ in rows:
        references.setdefault(budget, record)
    print()
    print(
        f"| backend | s / image | x torch eager | images/s, batch 1 | images/s, batch {batch} | peak GiB | IR MiB | "
        "export s | max map diff | score diff | label | answer | type |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for backend, budget, record, mib, exported in rows:
        reference = references[budget]
        map_diff = float((torch.tensor(record["map"]) - torch.tensor(reference["map"])).abs().max())
        print(
            f"| {labelled(backend, budget)} | {record['seconds']:.3f} | "
            f"{baseline['seconds'] / record['seconds']:.2f} | {1 / record['seconds']:.3f} | "
            f"{record['batch_images_per_second']:.3f} | {record['peak_gib']:.2f} | "
            f"{'-' if mib is None else f'{mib:.1f}'} | "
            f"{'-' if exported is None else f'{exported:.0f}'} | {map_diff:.2e} | "
            f"{abs(record['score'] - reference['score']):.2e} | "
            f"{'same' if record['label'] == reference['label'] else 'differs'} | "
            f"{'same' if record['answer'] == reference['answer'] else 'differs'} | "
            f"{'same' if record['type'] == reference['type'] else 'differs'} |"
        )


def print_profile(
    rows: list[tuple], work: dict[str, tuple[float, int]], decoded_tokens: str, start_peak: dict[str, float]
) -> None:
    """Per backend: its stages (medians over the timed calls), FLOP/s against the matmul peak.

    The peak is measured before and after the backends; it moves with the (virtual) machine's
    state, and the larger of the two is the one compared against.
    """
    end_peak = peaks()
    peak = {precision: max(start_peak[precision], end_peak[precision]) for precision in end_peak}
    print()
    flops = ", ".join(f"{budget} {flops / 1e9:.0f}" for budget, (flops, _) in work.items())
    print(
        f"GFLOPs per image {flops} (vision on distinct views, prefill, {decoded_tokens} decoded "
        f"tokens); measured matmul peak f32 {start_peak['f32'] / 1e9:.0f} before the backends, "
        f"{end_peak['f32'] / 1e9:.0f} after; bf16 {start_peak['bf16'] / 1e9:.0f} before, "
        f"{end_peak['bf16'] / 1e9:.0f} after (GFLOP/s). OpenVINO feeds the prompts, the type options and "
        "the answer drafts in one prefill pass (the prompts' tokens counted below), torch the options in "
        "decoder passes after its prefill"
    )
    print(
        f"| backend | vision s | prefill s (tokens) | decoding s ({decoded_tokens} tokens) | "
        "decoding / prefill | the rest s | GFLOP/s | of its peak |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for backend, budget, record, _, _ in rows:
        stages = record["stages"]
        flops, prefill_tokens = work[budget]
        achieved = flops / record["seconds"]
        of_peak = achieved / peak["f32" if backend in {"torch eager fp32", "OpenVINO f32"} else "bf16"]
        print(
            f"| {labelled(backend, budget)} | {stages['vision']:.2f} | {stages['prefill']:.2f} ({prefill_tokens}) | "
            f"{stages['decoding']:.2f} | "
            f"{stages['decoding'] / stages['prefill']:.0%} | {stages['other']:.2f} | {achieved / 1e9:.0f} | "
            f"{of_peak:.0%} |"
        )


def print_ratios(rows: list[tuple]) -> None:
    """Each compressed backend against OpenVINO bf16 of its budget (speed, IR size), each OpenVINO one against torch."""
    baseline = labelled(rows[0][0], rows[0][1]), rows[0][2]
    by_row = {(backend, budget): (record, mib) for backend, budget, record, mib, _ in rows}
    print()
    for (backend, budget), (record, mib) in by_row.items():
        bf16 = by_row.get(("OpenVINO bf16", budget))
        if bf16 and backend.startswith("OpenVINO") and backend not in {"OpenVINO f32", "OpenVINO bf16"}:
            print(
                f"{labelled(backend, budget)} vs {labelled('OpenVINO bf16', budget)}: "
                f"{bf16[0]['seconds'] / record['seconds']:.2f}x faster, IR {mib / bf16[1]:.3f} of the size"
            )
    for (backend, budget), (record, _) in by_row.items():
        if backend.startswith("OpenVINO"):
            speed_up = baseline[1]["seconds"] / record["seconds"]
            print(f"{labelled(backend, budget)} vs {baseline[0]}: {speed_up:.2f}x faster")


def in_subprocess(*args: str) -> dict:
    """Run a worker in its own process, so its peak memory is its own."""
    command = [sys.executable, __file__, "--worker", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.suffix in {".xml", ".bin"}) / 2**20


def labelled(name: str, budget: str) -> str:
    """A row's name: the backend, and the visual-token budget where it is not the paper's."""
    return name if budget == "anyres" else f"{name} [{budget}]"


def openvino_rows(
    module: torch.nn.Module,
    root: Path,
    backends: dict,
    quantization_images: list,
    image: Path,
    repeats: int,
    batch: int,
) -> list[tuple]:
    """Export each weight format once and time each backend on it in its own process."""
    budget = module.model.visual_tokens
    root = root / budget
    exports, rows = {}, []  # weights -> (manifest, export seconds)
    for name, (weights, precision, properties) in backends.items():
        if weights not in exports:
            start = time.perf_counter()
            manifest = module.export_openvino(root / weights, weights=weights, quantization_images=quantization_images)
            exports[weights] = (manifest, time.perf_counter() - start)
        manifest, exported = exports[weights]
        record = in_subprocess(
            "openvino", str(manifest.parent), precision, str(image), str(repeats), json.dumps(properties), str(batch)
        )
        rows.append((name, budget, record, folder_mib(manifest.parent), exported))
    return rows


def parse_arguments() -> argparse.Namespace:
    """The command line (``--worker`` runs one timed backend in this process)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(BACKBONE_SIZES), default="tiny")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per backend (default: 5 tiny, 2 real)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="decoding budget (default: the short answer's length)"
    )
    parser.add_argument("--int4", action="store_true", help="also export and time INT4 decoder weights")
    parser.add_argument("--quantization-images", type=int, default=4, help="images that calibrate INT8 PTQ")
    parser.add_argument(
        "--dq-group-size",
        type=int,
        help="also time INT8 weights with OpenVINO's DYNAMIC_QUANTIZATION_GROUP_SIZE set to this (default 32)",
    )
    parser.add_argument(
        "--visual-tokens", nargs="+", choices=VISUAL_TOKENS, default=["anyres"], help="token budgets (rows each)"
    )
    parser.add_argument("--backends", nargs="+", help="OpenVINO backends to time (default: all of BACKENDS)")
    parser.add_argument(
        "--types", choices=TYPE_MODES, default="generate", help="how the type question is answered (none: not asked)"
    )
    parser.add_argument("--batch", type=int, default=8, help="images per call for the images/s column (default 8)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    if args.worker:
        kind, *rest = args.worker
        if kind == "torch":
            record = torch_worker(
                Path(rest[0]), Path(rest[1]), int(rest[2]), int(rest[3]), rest[4], rest[5], int(rest[6])
            )
        else:
            record = openvino_worker(
                Path(rest[0]), rest[1], Path(rest[2]), int(rest[3]), json.loads(rest[4]), int(rest[5])
            )
        print(json.dumps(record))
        return

    size = BACKBONE_SIZES[args.size]
    repeats = args.repeats or (5 if args.size == "tiny" else 2)
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        backbone = build_random_backbone(root / "backbone", size)
        image = root / "image.pt"
        torch.manual_seed(1)
        torch.save(torch.rand(3, size.image_size, size.image_size), image)
        print(f"GenAU {args.size}, one {size.image_size}x{size.image_size} image, {torch.get_num_threads()} threads")
        print(f"CPU: {cpu_description()}")
        quantization_images = [
            (torch.rand(3, size.image_size, size.image_size), None) for _ in range(args.quantization_images)
        ]
        backends = {**BACKENDS, **(INT4 if args.int4 else {})}
        if args.dq_group_size:
            backends |= dynamic_quantization_backend(args.dq_group_size)
        if args.backends:
            backends = {name: backends[name] for name in args.backends}
        start_peak = peaks()
        rows, work = [], {}
        probe = torch.rand(1, 3, size.image_size, size.image_size)
        for budget in args.visual_tokens:
            module = build_module(backbone, args.max_new_tokens, budget, args.types)
            tokens = module.model.max_new_tokens  # the same for every budget: the short answer's length
            worker = (
                "torch",
                str(backbone),
                str(image),
                str(repeats),
                str(tokens),
                budget,
                args.types,
                str(args.batch),
            )
            rows.append(("torch eager fp32", budget, in_subprocess(*worker), None, None))
            rows += openvino_rows(module, root, backends, quantization_images, image, repeats, args.batch)
            # the random model never emits the segmentation tokens: it decodes the whole budget
            fed = type_tokens(module.model, args.types, tokens)
            flops = image_flops(module.model, probe, tokens) + (fed and type_question_flops(module.model, probe, fed))
            work[budget] = (flops, prompt_length(module.model, probe))
        decoded = f"{tokens} + {fed} type" if fed else str(tokens)
        print(f"decoding budget: {tokens} tokens; type question: {args.types} ({fed} tokens fed)")
        print(f"export peak memory (torch model + conversion): {peak_rss_gib():.1f} GiB")

    print_table(rows, args.batch)
    print_profile(rows, work, decoded, start_peak)
    print_ratios(rows)


if __name__ == "__main__":
    main()
