"""The demo's configuration trained with other model settings, each from the same seed, side by side.

    python benchmarks/demo_settings.py [--workdir demo_settings] [--target ROOT [ROOT ...]] [--seeds 0 1]
        --settings "temperature=0.07" "temperature=2.0" "data.multi_type_ratio=0.5 trainer.max_epochs=16"

Each setting is a space-separated list of ``GenAU`` arguments (``key=value``, passed as
``--model.key=value``) or of datamodule and trainer arguments (``data.key=value`` and
``trainer.key=value``, passed as they are), applied to ``configs/genau_tiny.yaml``: the pre-trained
tiny stand-in trained on the generated source. Every setting and seed is fitted once through
anomalib's CLI classes (seeded by ``SeededAnomalibCLI``, so a setting run twice gives the same
figures) and tested on the demo's held-out target, or on each ``--target``, a generated MVTec-layout
root with its ``difficulty.csv`` (``anomalib-genau synthetic-data`` with another seed): a setting
judged on one target can gain there and not on another. The target does not enter training, so a
seed's rows on several targets share one fitted model: they are one training, not several. The
table gives pixel AUROC and the map maximum's image AUROC on the target's easy and subtle parts and
on all of it, the image AUROC of the model's own score on the subtle part and on all of it (the
fused score with ``score_fusion=true``), the yes/no answer's agreement with the label and the map
maximum's at its best threshold (what an answer that followed the map could reach), the share of
clean answers, the defect type's weighted F1 (the configuration's ``generate`` mode) on the easy
part and on all of it, and the fit + test time; a "mean" row per target over its seeds, and one
per setting over every target, close each setting.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "genau_tiny.yaml"
PARTS = ("easy", "subtle", "all")


def configured(overrides: list[str], name: str) -> Any:
    """anomalib's CLI objects (engine, model, datamodule) of the demo configuration with ``overrides``."""
    from anomalib_genau.seeded_cli import SeededAnomalibCLI

    return SeededAnomalibCLI(
        ["train", "--config", str(CONFIG), *overrides, f"--default_root_dir=results/{name}"], run=False
    )


def fit(cli: Any) -> float:
    """Fit the CLI's model on its datamodule's source; return the seconds."""
    cli.model.visualizer = None  # no pictures: the table is the result
    start = time.perf_counter()
    cli.engine.fit(model=cli.model, datamodule=cli.datamodule)
    return time.perf_counter() - start


def test(cli: Any, target: Any) -> tuple[dict, float]:
    """Part metrics of the fitted ``cli``'s model on the target of ``target`` (a CLI's datamodule), and the seconds."""
    from anomalib_genau.data.synthetic import read_difficulty
    from anomalib_genau.evaluation import TestRecorder, part_metrics

    target_root = Path(target.config["train"]["data"]["init_args"]["target_root"])
    recorder = TestRecorder(target_root)
    cli.engine.trainer.callbacks.append(recorder)
    start = time.perf_counter()
    cli.engine.test(model=cli.model, datamodule=target.datamodule, verbose=False)
    cli.engine.trainer.callbacks.remove(recorder)
    return part_metrics(recorder.records, read_difficulty(target_root)), time.perf_counter() - start


def enter_workdir(workdir: Path) -> None:
    """Work in ``workdir`` with the demo's backbone and data (the configuration's paths are relative); print the CPU."""
    import torch

    from anomalib_genau.demo import prepare_demo_artifacts
    from anomalib_genau.machine import cpu_description

    workdir.mkdir(parents=True, exist_ok=True)
    cpu = cpu_description()
    os.chdir(workdir)
    prepare_demo_artifacts(Path.cwd())
    print(f"CPU: {cpu}; torch {torch.__version__}, {torch.get_num_threads()} threads")


def flag(assignment: str) -> str:
    """The CLI flag of a setting's ``key=value``: ``model.`` unless it names ``data.`` or ``trainer.``."""
    return assignment if assignment.startswith(("data.", "trainer.")) else f"model.{assignment}"


def main() -> None:
    """Prepare the demo's artifacts in the work folder, run every setting and seed, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("demo_settings"))
    parser.add_argument("--settings", nargs="+", required=True, help='e.g. "temperature=2.0 lora_dropout=0.0"')
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--target",
        type=Path,
        nargs="+",
        help="generated MVTec-layout targets, each tested in turn (default: the demo's)",
    )
    args = parser.parse_args()

    targets = [root.resolve() for root in args.target] if args.target else [None]
    enter_workdir(args.workdir)
    columns = [f"{part} {kind}" for part in PARTS for kind in ("pixel", "image")]
    header = (
        "| setting | target | seed | " + " | ".join(columns) + " | subtle score | all score | yes/no agreement "
        "| map max at its best threshold | clean answers | easy type F1 | all type F1 | fit + test |"
    )
    print("\n" + header + "\n" + "|---" * (header.count("|") - 1) + "|", flush=True)
    names = ["demo" if target is None else target.name for target in targets]
    target_flags = [[] if target is None else [f"--data.target_root={target}"] for target in targets]
    for index, setting in enumerate(args.settings):
        setting_flags = [f"--{flag(assignment)}" for assignment in setting.split()]
        rows: list[list[list[float]]] = [[] for _ in targets]  # per target, one row per seed
        for seed in args.seeds:
            run = [*setting_flags, f"--seed_everything={seed}"]
            cli = configured([*run, *target_flags[0]], f"setting{index}_seed{seed}")
            fit_seconds = fit(cli)
            for number, name in enumerate(names):
                # a later target's datamodule comes from the same configuration with its root
                target = cli if number == 0 else configured([*run, *target_flags[number]], name)
                parts, test_seconds = test(cli, target)
                rows[number].append([*table_values(parts), fit_seconds + test_seconds])
                print_row(setting, name, str(seed), rows[number][-1])
        for name, target_rows in zip(names, rows, strict=True):
            if len(target_rows) > 1:
                print_row(setting, name, "mean", mean_row(target_rows))
        if len(targets) > 1:
            print_row(setting, "all targets", "mean", mean_row([row for target_rows in rows for row in target_rows]))


def table_values(parts: dict) -> list[float]:
    """One run's figures in the table's column order, without the time."""
    values = [parts[part][metric] for part in PARTS for metric in ("pixel_AUROC", "image_AUROC_map_max")]
    values += [parts[part]["image_AUROC"] for part in ("subtle", "all")]
    values += [parts["all"][metric] for metric in ("yes_no_agreement", "map_max_best_agreement", "clean_answers")]
    return values + [parts[part]["type_WeightedF1"] for part in ("easy", "all")]


def mean_row(rows: list[list[float]]) -> list[float]:
    """The column means of several runs' rows."""
    return [sum(column) / len(column) for column in zip(*rows, strict=True)]


def print_row(setting: str, target: str, seed: str, values: list[float]) -> None:
    """One table row: the figures to three decimals, the last value as seconds."""
    cells = [f"{value:.3f}" for value in values[:-1]] + [f"{values[-1]:.0f} s"]
    print(f"| {setting} | {target} | {seed} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
