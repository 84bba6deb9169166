"""The commands a user types: ``anomalib-genau`` (tiny backbone, data, demo) and ``anomalib`` train/predict."""

import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False, timeout=900, env=env)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_artifact_commands(tmp_path: Path) -> None:
    _run(str(BIN / "anomalib-genau"), "tiny-backbone", "tiny", "--seed", "3", cwd=tmp_path)
    assert (tmp_path / "tiny" / "config.json").is_file()
    assert (tmp_path / "tiny" / "tokenizer.json").is_file()
    assert (tmp_path / "tiny" / "processor_config.json").is_file()
    _run(str(BIN / "anomalib-genau"), "synthetic-data", "data", "--n-test-per-defect", "2", cwd=tmp_path)
    assert len(list((tmp_path / "data" / "carpet" / "ground_truth" / "hole").glob("*_mask.png"))) == 2


def test_demo_then_anomalib_train_test_and_predict(tmp_path: Path, repo_root: Path) -> None:
    config = str(repo_root / "configs" / "genau_tiny.yaml")
    demo = _run(str(BIN / "anomalib-genau"), "demo", "--config", config, "--epochs", "1", cwd=tmp_path)
    assert "untrained" in demo.stdout
    assert "pixel_AUROC" in demo.stdout
    summary_file = next(tmp_path.rglob("demo_metrics.json"))
    summary = json.loads(summary_file.read_text())
    assert summary["steps"] > 0
    assert {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"} <= set(summary["trained"]) & set(summary["untrained"])
    assert list(summary_file.parent.rglob("images/**/*.png"))
    checkpoint = next(summary_file.parent.rglob("*.ckpt"))

    # the same config through anomalib's own command, after the demo wrote backbone and data
    _run(str(BIN / "anomalib"), "train", "--config", config, "--trainer.max_epochs", "1", cwd=tmp_path)

    tested = _run(str(BIN / "anomalib"), "test", "--config", config, "--ckpt_path", str(checkpoint), cwd=tmp_path)
    assert "pixel_AUROC" in tested.stdout

    images = tmp_path / "datasets" / "genau_synthetic" / "target" / "carpet" / "test" / "hole"
    predicted = _run(
        str(BIN / "anomalib"),
        "predict",
        "--model",
        "GenAU",
        "--model.backbone",
        "./backbones/genau-tiny",
        "--ckpt_path",
        str(checkpoint),
        "--data",
        str(images),
        "--default_root_dir",
        "predictions",
        cwd=tmp_path,
    )
    assert len(list((tmp_path / "predictions").rglob("*.png"))) == len(list(images.glob("*.png"))), predicted.stdout
