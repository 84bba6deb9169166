"""Each visual-token budget trained from the same seed on the demo's data, beside ``anyres``.

    python benchmarks/visual_tokens.py [--workdir visual_tokens] [--budgets anyres global ...] [--epochs 8]

Runs the demo's configuration (``configs/genau_tiny.yaml``: the pre-trained tiny stand-in,
the generated source and the held-out target of seed 1) once per budget of
``anomalib_genau.choices.VISUAL_TOKENS`` through anomalib's CLI classes, as ``anomalib train``
does, with the same seed. Each trained model is tested on the target; the table gives the
demo's part metrics (image and pixel AUROC, yes/no agreement, the defect type's weighted F1)
on the whole target and on its subtle part, each budget's change against ``anyres``, the
decoder's image tokens per 224 px image and the train + test time. A budget is acceptable
where both AUROCs move by at most 0.01 (issue 21).
"""

from __future__ import annotations

import argparse
from pathlib import Path

METRICS = ("image_AUROC", "pixel_AUROC", "yes_no_agreement", "type_WeightedF1")


def train_and_test(budget: str, epochs: int | None) -> tuple[dict, int, float]:
    """Part metrics of the demo configuration trained with ``budget``; its image tokens; seconds."""
    import torch

    from demo_settings import train_and_test as train_and_test_demo

    overrides = [f"--model.visual_tokens={budget}"]
    overrides += [] if epochs is None else [f"--trainer.max_epochs={epochs}"]
    parts, model, seconds = train_and_test_demo(overrides, budget)
    with torch.no_grad():
        tokens = model.model.see(torch.rand(1, 3, 224, 224)).token_counts[0]
    return parts, tokens, seconds


def main() -> None:
    from anomalib_genau.choices import VISUAL_TOKENS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("visual_tokens"))
    parser.add_argument("--budgets", nargs="+", choices=VISUAL_TOKENS, default=list(VISUAL_TOKENS))
    parser.add_argument("--epochs", type=int, help="training epochs (default: the demo configuration's)")
    args = parser.parse_args()

    from demo_settings import enter_workdir

    enter_workdir(args.workdir)
    rows = {budget: train_and_test(budget, args.epochs) for budget in args.budgets}

    reference = rows.get("anyres", (None,))[0]
    header = "| budget | image tokens | part | " + " | ".join(METRICS) + " | train + test |"
    print("\n" + header + "\n" + "|---" * (header.count("|") - 1) + "|")
    for budget, (parts, tokens, seconds) in rows.items():
        for part in ("all", "subtle"):
            cells = []
            for metric in METRICS:
                value = parts[part][metric]
                change = "" if reference is None or budget == "anyres" else f" ({value - reference[part][metric]:+.3f})"
                cells.append(f"{value:.3f}{change}")
            print(f"| {budget} | {tokens} | {part} | " + " | ".join(cells) + f" | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
