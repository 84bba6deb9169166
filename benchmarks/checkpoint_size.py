"""Adapter-only checkpoint size against the full model, for a real-size random 0.5B configuration.

    python benchmarks/checkpoint_size.py [--size tiny|qwen2-0.5b]

Builds a random LLaVA-OneVision with the architecture of llava-onevision-qwen2-0.5b (SigLIP-so400m,
26 layers; Qwen2-0.5B) offline, wraps it in GenAU, and saves what GenAU's checkpoints keep: the
trainable weights (LoRA, new-token deltas, decoder norms, readout projectors) and the
calibration. Prints both sizes and their ratio (target: at most 2 %).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from anomalib_genau import GenAU
from anomalib_genau.backbone import BACKBONE_SIZES, build_random_backbone
from anomalib_genau.models.genau.checkpoint import slim_state_dict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(BACKBONE_SIZES), default="qwen2-0.5b")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        backbone = build_random_backbone(Path(directory) / "backbone", BACKBONE_SIZES[args.size])
        built = time.perf_counter() - start
        model = GenAU(backbone=str(backbone))
        state = model.state_dict()
        full_bytes = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
        slim_state_dict(state, model.trainable_keys())  # exactly what on_save_checkpoint drops
        path = Path(directory) / "adapter.pt"
        torch.save(state, path)
        adapter_bytes = os.path.getsize(path)
        parameters = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"backbone {args.size}: {parameters / 1e6:.1f} M parameters ({trainable / 1e6:.2f} M trainable)")
    print(f"random backbone built in {built:.0f} s")
    print(f"full model state: {full_bytes / 2**20:.1f} MiB (fp32)")
    print(f"GenAU checkpoint weights: {adapter_bytes / 2**20:.2f} MiB")
    ratio = adapter_bytes / full_bytes
    print(f"ratio checkpoint / full model: {ratio:.4f} ({ratio:.2%}; target <= 2%)")


if __name__ == "__main__":
    main()
