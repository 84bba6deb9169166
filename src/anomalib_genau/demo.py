"""The offline demo behind ``anomalib-genau demo`` and ``make demo``: its data, ablations and tables.

The demo trains the tiny GenAU on generated source data and tests it on a held-out target,
untrained and trained, with each inference switch flipped, against random type answers and
against a training-free reference. Torch and anomalib are imported inside the functions, so
importing this module stays as light as the command's ``--help``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEMO_BACKBONE = Path("backbones/genau-tiny")
DEMO_DATA = Path("datasets/genau_synthetic")
DEMO_CONFIG = Path("configs/genau_tiny.yaml")
DEMO_SOURCE_SEED, DEMO_TARGET_SEED = 0, 1
DEMO_DATA_SIZE = {"n_train": 4, "n_test_good": 12, "n_test_per_defect": 8, "image_size": 224}

# The torch model's inference switches that the demo's ablation flips, one at a time.
INFERENCE_SWITCHES = ("high_res_readout", "score_fusion")

# One test pass: (Lightning module, datamodule) -> its metrics.
TestRun = Callable[[Any, Any], dict[str, float]]


def prepare_demo_artifacts(workdir: Path) -> None:
    """Install the demo's pre-trained tiny backbone and write the source/target datasets under ``workdir`` if missing.

    A random tiny backbone or an outdated pre-trained one left there by an earlier version is replaced;
    a current rebuild other than the shipped stand-in is kept, and a line says so.
    """
    from anomalib_genau.data.synthetic import (
        ALL_CATEGORIES,
        DEFAULT_CATEGORIES,
        DIFFICULTY_FILE,
        generate_mvtec_dataset,
    )
    from anomalib_genau.pretraining import (
        SHIPPED_BACKBONE,
        PretrainedBackboneError,
        check_pretrained_backbone,
        install_pretrained_backbone,
    )

    try:
        manifest = check_pretrained_backbone(workdir / DEMO_BACKBONE)
    except PretrainedBackboneError:
        try:
            install_pretrained_backbone(workdir / DEMO_BACKBONE)
        except PretrainedBackboneError as error:
            raise SystemExit(str(error)) from None
    else:
        if manifest["sha256"] != check_pretrained_backbone(SHIPPED_BACKBONE)["sha256"]:
            # a rebuild left there (another seed, --tower-from, --copy-task) is kept: benchmarks use it
            task = ", with the copy task" if "copy_schedule" in manifest else ""
            print(f"Using the stand-in in {workdir / DEMO_BACKBONE}{task}: a rebuild, not the shipped one.")
    # the target adds texture families the source never shows
    splits = (("source", DEMO_SOURCE_SEED, DEFAULT_CATEGORIES), ("target", DEMO_TARGET_SEED, ALL_CATEGORIES))
    for split, seed, categories in splits:
        if not (workdir / DEMO_DATA / split / DIFFICULTY_FILE).is_file():
            generate_mvtec_dataset(workdir / DEMO_DATA / split, categories, seed=seed, **DEMO_DATA_SIZE)


@contextmanager
def switched(owner: object, name: str, value: object) -> Iterator[None]:
    """``owner.name`` set to ``value`` inside the block and restored after it, also when the block raises.

    The demo's model goes on to be saved and reported after its ablations: a run that fails must
    not leave it with a switch flipped.
    """
    before = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, before)


def ablation_engine_test(root: Path) -> TestRun:
    """A test pass on a fresh CPU engine under ``root / "ablations"``, without logger or metric table."""

    def run(model: Any, datamodule: Any) -> dict[str, float]:
        from anomalib.engine import Engine

        engine = Engine(default_root_dir=root / "ablations", accelerator="cpu", devices=1, logger=False)
        return engine.test(model=model, datamodule=datamodule, verbose=False)[0]

    return run


def run_ablations(model: Any, datamodule: Any, root: Path, run: TestRun | None = None) -> dict[str, dict[str, float]]:
    """Test the trained model again with each inference switch flipped, one at a time (no pictures).

    The map and score switches run without the type question (it does not depend on them);
    a last run answers it by likelihood instead of generation. ``run`` tests once (default: a
    fresh engine per variant, :func:`ablation_engine_test`); every switch, the type mode and the
    visualizer are restored afterwards, also when a run fails.
    """
    run = ablation_engine_test(root) if run is None else run
    results = {}
    variants = [(model.model, switch, not getattr(model.model, switch), None) for switch in INFERENCE_SWITCHES]
    variants.append((model, "defect_type_mode", "likelihood", "likelihood"))
    with switched(model, "visualizer", None):
        for owner, name, value, type_mode in variants:
            with switched(model, "defect_type_mode", type_mode), switched(owner, name, value):
                results[f"{name}={value}"] = run(model, datamodule)
    return results


def print_parts(columns: dict[str, dict[str, dict[str, float]]]) -> None:
    """One row per part and metric, one column per model."""
    from anomalib_genau.evaluation import PART_METRICS

    print("\n" + f"{'part':<8}{'metric':<22}" + "".join(f"{name:>12}" for name in columns))
    for part in ("easy", "subtle", "all"):
        for metric in PART_METRICS:
            values = "".join(f"{parts[part][metric]:>12.4f}" for parts in columns.values())
            print(f"{part:<8}{metric:<22}{values}")


def chance_type_scores(datamodule: Any, draws: int = 20, seed: int = 0) -> dict[str, float]:
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


def run_demo(config: Path | str | None = None, epochs: int | None = None) -> None:
    """Train and test GenAU on generated data with the tiny backbone, offline.

    Runs ``config`` (default ``configs/genau_tiny.yaml``) through anomalib's CLI classes, like
    ``anomalib train``, with ``epochs`` overriding ``trainer.max_epochs``: the model trains on
    the source test split and is tested on the held-out target. The untrained model is tested
    first, by a separate engine under ``<results>/untrained``, and the trained one again with
    the high-res readout and the score fusion switched and with the defect types chosen by
    likelihood; a chance column gives the type metrics of random answers. A second table splits
    the target into its easy and subtle parts (untrained, trained, and the training-free
    nearest-neighbour reference on the target's own normal images). All metric sets go to
    ``demo_metrics.json`` in the run folder, next to the pictures of the visualizer.
    """
    import torch
    from anomalib.engine import Engine

    from anomalib_genau.data.synthetic import read_difficulty
    from anomalib_genau.evaluation import TestRecorder, part_metrics, reference_records
    from anomalib_genau.seeded_cli import SeededAnomalibCLI

    config = DEMO_CONFIG if config is None else Path(config)
    if not config.is_file():
        msg = f"Demo config '{config}' not found; run from the repository root or pass --config."
        raise SystemExit(msg)
    prepare_demo_artifacts(Path.cwd())
    overrides = [] if epochs is None else [f"--trainer.max_epochs={epochs}"]
    cli = SeededAnomalibCLI(["train", "--config", str(config), *overrides], run=False)
    engine, model, datamodule = cli.engine, cli.model, cli.datamodule
    root = Path(cli.config["train"]["default_root_dir"])
    target_root = Path(cli.config["train"]["data"]["init_args"]["target_root"])
    difficulty, recorder = read_difficulty(target_root), TestRecorder(target_root)
    baseline = Engine(
        default_root_dir=root / "untrained", accelerator="cpu", devices=1, logger=False, callbacks=[recorder]
    )
    # the untrained test draws from torch's generator: forked, so that training starts from the
    # config's seeded state, as benchmarks/demo_settings.py's runs of the same config and seed do
    with torch.random.fork_rng(devices=[]):
        columns = {"untrained": baseline.test(model=model, datamodule=datamodule)[0]}
    parts = {"untrained": part_metrics(recorder.records, difficulty)}
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    engine.trainer.callbacks.append(recorder)  # the trainer exists once fitting starts
    columns["trained"] = engine.test(model=model, datamodule=datamodule)[0]
    seconds = time.perf_counter() - start
    parts["trained"] = part_metrics(recorder.records, difficulty)
    columns.update(run_ablations(model, datamodule, root))
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
