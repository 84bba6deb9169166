"""GenAU inference on CPU: throughput against batch size, decoding against prefill, FLOPs against peak.

    python benchmarks/inference.py                       # tiny backbone, batches 1, 2, 4, 8
    python benchmarks/inference.py --size qwen2-0.5b     # real-size random weights, 384 px, batch 1

Prints figures and ratios only; nothing is asserted. Measured:

- images per second of ``GenAUModel.inspect`` (prefill, cached greedy decoding of the short
  answer, readout) for each batch size, and the ratio to batch 1;
- within the same calls, the time of the prefill (the decoder's pass over the prompt) and of the
  decoding steps (one cached pass per answer token, the segmentation pair in one), and their ratio;
- the FLOPs of one image's inference, counted from the configuration (2 FLOPs per weight per
  token for the linear layers, plus attention's ``QK^T`` and ``AV`` products), divided by the
  measured time, as a fraction of this machine's measured fp32 and bf16 matmul peak.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from anomalib_genau import prompts
from anomalib_genau.backbone import BACKBONE_SIZES, build_random_backbone
from anomalib_genau.deploy.inferencer import shared_prefix_length
from anomalib_genau.machine import cpu_description
from anomalib_genau.models.genau.anyres import distinct_views
from anomalib_genau.models.genau.torch_model import GenAUModel
from anomalib_genau.models.genau.vision import view_counts
from anomalib_genau.prompts import instruction
from anomalib_genau.taxonomy import product_candidates
from timing import StageClock, median_seconds


def matmul_peak(dtype: torch.dtype, n: int = 2048) -> float:
    """Measured FLOP/s of an ``n x n`` matrix product in ``dtype``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats=9, warmup=20)  # AMX reaches its peak only warm


def transformer_flops(linear_params: int, layers: int, width: int, tokens: int, causal: bool) -> float:
    """Forward FLOPs of ``tokens`` tokens: linear layers plus the two attention products."""
    attention = 4 * layers * tokens * tokens * width * (0.5 if causal else 1.0)
    return 2 * linear_params * tokens + attention


def linear_parameters(module: torch.nn.Module) -> int:
    """Weights of the ``nn.Linear`` layers of ``module``."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def prompt_length(model: GenAUModel, image: torch.Tensor) -> int:
    """Tokens of the inspection prompt on a ``(1, 3, H, W)`` image, its image tokens included."""
    with torch.no_grad():
        return int(model.prompts(model.see(image), [instruction("carpet")]).attention_mask[0].sum())


def image_flops(model: GenAUModel, image: torch.Tensor, answer_tokens: int) -> float:
    """FLOPs of one ``(1, 3, H, W)`` image's inference: vision tower over its views, prefill and decoding."""
    llava = model.llava
    vision_config, text_config = llava.config.vision_config, llava.config.text_config
    processed = model.processor.image_processor(images=list(image), return_tensors="pt", do_rescale=False)
    count = view_counts(llava, processed["image_sizes"])[0]
    views = len(distinct_views(processed["pixel_values"][0][:count], [count])[0])  # the views the tower runs on

    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    vision = views * transformer_flops(
        linear_parameters(llava.model.vision_tower),
        vision_config.num_hidden_layers,
        vision_config.hidden_size,
        patches,
        causal=False,
    )
    decoder = llava.model.language_model
    tokens = prompt_length(model, image)
    prefill = transformer_flops(
        linear_parameters(decoder), text_config.num_hidden_layers, text_config.hidden_size, tokens, causal=True
    )
    projector = 2 * linear_parameters(llava.model.multi_modal_projector) * views * patches
    head = 2 * llava.lm_head.weight.numel() * (1 + answer_tokens)
    per_token = 2 * linear_parameters(decoder) + 4 * text_config.num_hidden_layers * tokens * text_config.hidden_size
    return vision + projector + prefill + head + answer_tokens * per_token


def type_question_flops(model: GenAUModel, image: torch.Tensor, fed_tokens: int) -> float:
    """FLOPs of the type question on a ``(1, 3, H, W)`` image after its inspection question.

    Its prompt's own tokens after the beginning the two prompts share (prefilled once), then
    ``fed_tokens`` decoder steps (greedy answer tokens, or the likelihood mode's option tokens),
    each attending over about the prompt's length.
    """
    llava, text_config = model.llava, model.llava.config.text_config
    candidates = product_candidates("mvtec_ad", "carpet")
    questions = [instruction("carpet"), prompts.type_instruction("carpet", candidates)]
    with torch.no_grad():
        vision = model.see(image)
        prompt_ids = [model.prompts(vision, [question]).input_ids for question in questions]
    tail = prompt_ids[1].shape[1] - shared_prefix_length(prompt_ids)
    tokens = prompt_ids[1].shape[1]
    decoder = llava.model.language_model
    per_token = 2 * linear_parameters(decoder) + 4 * text_config.num_hidden_layers * tokens * text_config.hidden_size
    return (tail + fed_tokens) * per_token + 2 * llava.lm_head.weight.numel() * (1 + fed_tokens)


def decoder_stage(*_: object, **kwargs: object) -> str:
    """A decoder forward given a KV cache is a decoding step; one without, the prefill."""
    return "decoding" if kwargs.get("cache") is not None else "prefill"


def short_answer_tokens(model: GenAUModel) -> int:
    """Tokens of GenAU's short defect answer ("Yes, hole." and the two segmentation tokens).

    What a trained model decodes; a random model never emits the segmentation tokens, so the
    benchmarks give it this budget to decode the same number of tokens.
    """
    tokenizer = model.processor.tokenizer
    return len(tokenizer(prompts.response("carpet", ["hole"]), add_special_tokens=False)["input_ids"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(BACKBONE_SIZES), default="tiny")
    parser.add_argument("--image-size", type=int, default=None, help="default: the backbone's tile size")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated; default 1,2,4,8 (tiny) or 1")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="decoding budget (default: the short answer's length)"
    )
    args = parser.parse_args()
    size = BACKBONE_SIZES[args.size]
    image_size = args.image_size or size.image_size
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1,2,4,8" if args.size == "tiny" else "1")).split(",")]
    repeats = args.repeats or (5 if args.size == "tiny" else 1)

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as directory:
        model = GenAUModel(str(build_random_backbone(Path(directory) / "backbone", size)))
    model.eval()
    model.max_new_tokens = args.max_new_tokens or short_answer_tokens(model)
    print(
        f"GenAU {args.size}, {image_size}px, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"decoding budget {model.max_new_tokens} tokens"
    )
    print(f"CPU: {cpu_description()}")

    throughput = {}
    for batch in batch_sizes:
        images = torch.rand(batch, 3, image_size, image_size)
        prompts = [instruction("carpet")] * batch
        seconds = median_seconds(lambda images=images, prompts=prompts: model.inspect(images, prompts), repeats)
        throughput[batch] = batch / seconds
        print(
            f"batch {batch:>2}: {seconds * 1000:9.1f} ms, {throughput[batch]:7.2f} images/s, "
            f"{throughput[batch] / throughput[batch_sizes[0]]:.2f}x batch {batch_sizes[0]}"
        )

    image = torch.rand(1, 3, image_size, image_size)
    clock = StageClock()
    model.llava.forward = clock.wrap(decoder_stage, model.llava.forward)
    stages = clock.median_stages(lambda: model.inspect(image, [instruction("carpet")]), repeats)
    del model.llava.forward  # the class's own forward again
    generated = model.max_new_tokens  # the random model decodes the whole budget
    flops = image_flops(model, image, generated)
    print(
        f"prefill ({prompt_length(model, image)} tokens): {stages['prefill'] * 1000:.1f} ms; "
        f"decoding {generated} tokens in {clock.calls['decoding']} passes: {stages['decoding'] * 1000:.1f} ms, "
        f"{stages['decoding'] / stages['prefill']:.1%} of the prefill"
    )
    seconds = median_seconds(lambda: model.inspect(image, [instruction("carpet")]), repeats)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_seconds = median_seconds(lambda: model.inspect(image, [instruction("carpet")]), repeats)
    fp32_peak, bf16_peak = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    print(
        f"FLOPs per image: {flops / 1e9:.2f} GFLOP; matmul peak fp32 {fp32_peak / 1e9:.1f} GFLOP/s, "
        f"bf16 {bf16_peak / 1e9:.1f} GFLOP/s"
    )
    print(f"torch eager fp32: {seconds * 1000:.1f} ms/image = {flops / seconds / fp32_peak:.1%} of the fp32 peak")
    print(
        f"torch bf16 autocast: {bf16_seconds * 1000:.1f} ms/image = {flops / bf16_seconds / bf16_peak:.1%} "
        "of the bf16 peak"
    )


if __name__ == "__main__":
    main()
