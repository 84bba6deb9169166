"""Time GenAU's training step and inference on CPU, and print ratios.

    python benchmarks/train_step.py [--batch-size 4] [--steps 20] [--image-size 112]   # tiny backbone
    python benchmarks/train_step.py --size qwen2-0.5b --batch-size 1 --steps 1        # real size, 384 px

Prints the median time of one optimizer step (teacher-forced forward, joint loss, backward,
AdamW) and of one inference pass (prefill + cached decoding + readout) per image.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from anomalib_genau.backbone import BACKBONE_SIZES, build_random_backbone
from anomalib_genau.machine import cpu_description
from anomalib_genau.models.genau.loss import GenAULoss
from anomalib_genau.models.genau.torch_model import GenAUModel
from anomalib_genau.prompts import instruction, response
from timing import median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(BACKBONE_SIZES), default="tiny")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=None, help="default: the backbone's tile size")
    args = parser.parse_args()
    args.image_size = args.image_size or BACKBONE_SIZES[args.size].image_size

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as directory:
        backbone = build_random_backbone(Path(directory) / "backbone", BACKBONE_SIZES[args.size])
        model = GenAUModel(str(backbone), max_new_tokens=16)
    loss = GenAULoss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = args.batch_size
    images = torch.rand(batch, 3, args.image_size, args.image_size)
    masks = torch.zeros(batch, args.image_size, args.image_size)
    masks[: max(1, batch // 2), 20:50, 20:50] = 1
    instructions = [instruction("carpet")] * batch
    responses = [response("carpet", ["hole"] if i < max(1, batch // 2) else []) for i in range(batch)]

    def train_step() -> None:
        model.train()
        output = model(images, instructions, responses)
        loss(output.lm_loss, output.stage_logits, masks)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()

    def inference() -> None:
        model.eval()
        model.inspect(images, instructions)

    warmup = 2 if args.size == "tiny" else 1
    step = median_seconds(train_step, args.steps, warmup=warmup)
    infer = median_seconds(inference, max(warmup, args.steps // 4), warmup=warmup)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"{args.size} GenAU on {torch.get_num_threads()} threads, batch {batch}, {args.image_size}px images")
    print(f"CPU: {cpu_description()}")
    print(f"parameters: {total:,} ({trainable:,} trainable, {trainable / total:.1%})")
    print(f"training step (fwd + bwd + AdamW): {step * 1000:.0f} ms  ({step / batch * 1000:.0f} ms per image)")
    print(f"inference (prefill + decode + readout): {infer * 1000:.0f} ms  ({infer / batch * 1000:.0f} ms per image)")
    print(f"ratio inference / training step: {infer / step:.2f}")


if __name__ == "__main__":
    main()
