"""The demo configuration trained easy defects first, then all, beside the same phases on all defects.

    python benchmarks/existence_curriculum.py [--workdir existence_curriculum] [--epochs 4 4]

``benchmarks/image_reading.py --curriculum`` shows the stand-in learning a yes/no answer from the
image when loud evidence comes first. This asks the same of GenAU's own training: the demo's
configuration (``configs/genau_tiny.yaml``) trains ``epochs[0]`` epochs on a copy of the
generated source without its subtle defects (``difficulty.csv``), then ``epochs[1]`` epochs on
the whole source; the control trains the same two phases on the whole source. Both are tested
on the held-out target of seed 1 and printed with the demo's part metrics.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "genau_tiny.yaml"
SOURCE = Path("datasets/genau_synthetic/source")
METRICS = ("image_AUROC", "pixel_AUROC", "yes_no_agreement", "clean_answers", "type_WeightedF1")


def without_subtle_defects(source: Path, copy: Path) -> int:
    """Copy a generated MVTec-layout dataset without its subtle images and their masks; how many were left out."""
    from anomalib_genau.data.synthetic import read_difficulty

    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(source, copy)
    subtle = [image for image, level in read_difficulty(source).items() if level == "subtle"]
    for image in subtle:
        path = copy / image
        path.unlink()
        (path.parents[2] / "ground_truth" / path.parent.name / f"{path.stem}_mask.png").unlink()
    return len(subtle)


def train_in_phases(name: str, phases: list[tuple[Path, int]]) -> tuple[dict, float]:
    """Fit one model through ``(source root, epochs)`` phases (each restarts the schedule); part metrics, seconds."""
    from anomalib_genau.data.synthetic import read_difficulty
    from anomalib_genau.evaluation import TestRecorder, part_metrics
    from anomalib_genau.seeded_cli import SeededAnomalibCLI

    start, model = time.perf_counter(), None
    for index, (root, epochs) in enumerate(phases):
        overrides = [f"--data.init_args.source_root={root}", f"--trainer.max_epochs={epochs}"]
        cli = SeededAnomalibCLI(
            ["train", "--config", str(CONFIG), *overrides, f"--default_root_dir=results/{name}_{index}"], run=False
        )
        model = model or cli.model
        model.visualizer = None  # no pictures: the table is the result
        cli.engine.fit(model=model, datamodule=cli.datamodule)
    target_root = Path(cli.config["train"]["data"]["init_args"]["target_root"])
    recorder = TestRecorder(target_root)
    cli.engine.trainer.callbacks.append(recorder)
    cli.engine.test(model=model, datamodule=cli.datamodule, verbose=False)
    return part_metrics(recorder.records, read_difficulty(target_root)), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("existence_curriculum"))
    parser.add_argument("--epochs", type=int, nargs=2, default=[4, 4], metavar=("EASY", "ALL"))
    args = parser.parse_args()

    from demo_settings import enter_workdir

    enter_workdir(args.workdir)
    easy = SOURCE.with_name("source_easy")
    left_out = without_subtle_defects(SOURCE, easy)
    print(f"{left_out} subtle images left out of the easy phase's source")
    runs = {
        "easy first": train_in_phases("easy_first", [(easy, args.epochs[0]), (SOURCE, args.epochs[1])]),
        "all throughout": train_in_phases("all_throughout", [(SOURCE, args.epochs[0]), (SOURCE, args.epochs[1])]),
    }
    header = "| training | part | " + " | ".join(METRICS) + " | train + test |"
    print("\n" + header + "\n" + "|---" * (header.count("|") - 1) + "|")
    for name, (parts, seconds) in runs.items():
        for part in ("all", "easy", "subtle"):
            cells = " | ".join(f"{parts[part][metric]:.3f}" for metric in METRICS)
            print(f"| {name} | {part} | {cells} | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
