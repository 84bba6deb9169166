"""The commands a user types: ``anomalib-genau`` (tiny backbone, data, demo) and ``anomalib`` train/predict."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from anomalib_genau import choices
from anomalib_genau.cli import main
from anomalib_genau.demo import DEMO_CONFIG, INFERENCE_SWITCHES, run_ablations

BIN = Path(sys.executable).parent


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False, timeout=900, env=env)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


AFTER_DEMO_MARKER = "<!-- after-demo commands: run verbatim by tests/test_cli.py -->"


def _readme_block(repo_root: Path, marker: str) -> str:
    """The bash block that follows ``marker`` in the README."""
    return (repo_root / "README.md").read_text().split(f"{marker}\n```bash\n")[1].split("```")[0]


def _check_predictions_and_deployment(root: Path, images: Path) -> None:
    """``anomalib predict``'s pictures and records, the f32 export and the infer records of ``images``."""
    count = len(list(images.glob("*.png")))
    assert len(list((root / "predictions").rglob("images/**/*.png"))) == count
    records = [json.loads(line) for line in next((root / "predictions").rglob("predictions.jsonl")).open()]
    assert len(records) == count
    assert set(records[0]) == {"image_path", "pred_score", "pred_label", "pred_defect_type", "explanation", "mask_path"}
    assert all(Path(root, record["mask_path"]).is_file() for record in records)
    paths = {path.resolve() for path in images.glob("*.png")}
    assert {Path(root, record["image_path"]).resolve() for record in records} == paths
    assert json.loads((root / "exported" / "weights" / "openvino" / "genau.json").read_text())["weights"] == "f32"
    deployed = {record["image_path"]: record for record in map(json.loads, (root / "deployed.jsonl").open())}
    assert {Path(root, path).resolve() for path in deployed} == paths
    for record in deployed.values():  # parity with torch is tested image by image in test_openvino.py
        assert set(record) == set(records[0]) | {"input_size"}  # one schema: predictions.jsonl's fields
        assert 0.0 <= record["pred_score"] <= 1.0
        assert isinstance(record["pred_label"], bool)
        assert record["input_size"] == [224, 224]  # the pre-processor's size of genau_tiny.yaml
        assert Path(root, record["mask_path"]).is_file()


def test_artifact_commands(tmp_path: Path) -> None:
    _run(str(BIN / "anomalib-genau"), "tiny-backbone", "tiny", "--seed", "3", cwd=tmp_path)
    assert (tmp_path / "tiny" / "config.json").is_file()
    assert (tmp_path / "tiny" / "tokenizer.json").is_file()
    assert (tmp_path / "tiny" / "processor_config.json").is_file()
    _run(str(BIN / "anomalib-genau"), "tiny-backbone", "pretrained", "--pretrained", cwd=tmp_path)
    assert (tmp_path / "pretrained" / "pretraining.json").is_file()
    _run(str(BIN / "anomalib-genau"), "synthetic-data", "data", "--n-test-per-defect", "2", cwd=tmp_path)
    assert len(list((tmp_path / "data" / "carpet" / "ground_truth" / "hole").glob("*_mask.png"))) == 2
    _run(str(BIN / "anomalib-genau"), "synthetic-data", "all", "--layout", "all", "--image-size", "32", cwd=tmp_path)
    assert (tmp_path / "all" / "MPDD" / "bracket_black" / "ground_truth" / "hole").is_dir()
    assert (tmp_path / "all" / "Visa" / "split_csv" / "1cls.csv").is_file()
    assert (tmp_path / "all" / "Visa" / "candle" / "image_anno.csv").is_file()
    assert (tmp_path / "all" / "RealIAD" / "realiad_jsons" / "realiad_jsons_sv" / "audiojack.json").is_file()


def test_synthetic_data_writes_the_chosen_textures_and_refuses_unknown_ones(tmp_path: Path) -> None:
    sizes = ["--n-train", "1", "--n-test-good", "1", "--n-test-per-defect", "1", "--image-size", "32"]
    main(["synthetic-data", str(tmp_path / "target"), "--categories", "wood", "grid", *sizes])
    assert sorted(p.name for p in (tmp_path / "target").iterdir() if p.is_dir()) == ["grid", "wood"]
    assert (tmp_path / "target" / "grid" / "ground_truth" / "thread").is_dir()
    with pytest.raises(SystemExit, match=r"Unknown generated categories \['bottle'\]; choose among carpet"):
        main(["synthetic-data", str(tmp_path / "other"), "--categories", "bottle", *sizes])
    with pytest.raises(SystemExit, match="not Visa's"):
        main(["synthetic-data", str(tmp_path / "other"), "--layout", "Visa", "--categories", "wood", *sizes])
    assert not (tmp_path / "other").exists()


def test_tiny_backbone_refuses_a_tower_without_a_rebuild_and_a_missing_tower(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--tower-from and --copy-task go with --pretrained --rebuild"):
        main(["tiny-backbone", str(tmp_path / "out"), "--pretrained", "--tower-from", str(tmp_path)])
    with pytest.raises(SystemExit, match="--tower-from and --copy-task go with --pretrained --rebuild"):
        main(["tiny-backbone", str(tmp_path / "out"), "--copy-task"])
    with pytest.raises(SystemExit, match=r"holds no model\.safetensors"):
        main(["tiny-backbone", str(tmp_path / "out"), "--pretrained", "--rebuild", "--tower-from", str(tmp_path)])
    assert not (tmp_path / "out").exists()


def test_demo_then_anomalib_train_test_and_predict(tmp_path: Path, repo_root: Path) -> None:
    config = str(repo_root / "configs" / "genau_tiny.yaml")
    demo = _run(str(BIN / "anomalib-genau"), "demo", "--config", config, "--epochs", "1", cwd=tmp_path)
    assert "untrained" in demo.stdout
    assert "pixel_AUROC" in demo.stdout
    summary_file = next(tmp_path.rglob("demo_metrics.json"))
    summary = json.loads(summary_file.read_text())
    assert summary["steps"] > 0
    assert {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"} <= set(summary["trained"]) & set(summary["untrained"])
    pictures = list((summary_file.parent / "images").rglob("*.png"))
    assert {picture.relative_to(summary_file.parent / "images").parts[0] for picture in pictures} == {
        "carpet",
        "leather",
        "tile",
        "wood",  # texture families the source never shows
        "grid",
    }
    assert len(pictures) == 5 * (12 + 3 * 8)  # one per test image: categories do not overwrite each other
    # the easy and subtle parts, for the untrained and trained model and the training-free reference
    parts = summary["parts"]
    assert set(parts) == {"untrained", "trained", "reference"}
    for part in ("easy", "subtle", "all"):
        assert 0.5 < parts["reference"][part]["pixel_AUROC"] <= 1
        assert 0 <= parts["trained"][part]["yes_no_agreement"] <= 1
        assert "image_AUROC_map_max" in parts["trained"][part]
    checkpoint = next(summary_file.parent.rglob("*.ckpt"))

    # the README's after-demo block, verbatim: anomalib test, predict and export, then OpenVINO infer
    (tmp_path / "configs").symlink_to(repo_root / "configs")
    (tmp_path / "after_demo.sh").write_text(_readme_block(repo_root, AFTER_DEMO_MARKER))
    tested = _run("bash", "-euo", "pipefail", "after_demo.sh", cwd=tmp_path)
    assert "pixel_AUROC" in tested.stdout
    assert "| mvtec_ad | carpet |" in tested.stdout
    assert "| mvtec_ad | tile |" in tested.stdout
    assert (summary_file.parent.parent / "latest" / "category_report.csv").is_file()  # the test run's folder
    # the checkpoint's own inference settings, restored: the demo trains and tests with score_fusion false
    assert "restores the checkpoint's inference settings" in tested.stdout + tested.stderr
    images = tmp_path / "datasets" / "genau_synthetic" / "target" / "carpet" / "test" / "hole"
    _check_predictions_and_deployment(tmp_path, images)

    # the same config through anomalib's own training command, after the demo wrote backbone and data
    _run(str(BIN / "anomalib"), "train", "--config", config, "--trainer.max_epochs", "1", cwd=tmp_path)

    # quantized deployment through anomalib-genau's command, calibrated on image files (anomalib's own
    # INT8_PTQ export, calibrated on the datamodule, is tested in test_openvino.py)
    quantization = images.parents[1] / "train" / "good"
    listed = _run(
        *(str(BIN / "anomalib-genau"), "export", "--ckpt-path", str(checkpoint), "--export-root", "exported_cli"),
        *("--weights", "int8_ptq", "--quantization-images", str(quantization), "--quantization-count", "2"),
        *("--category", "carpet"),
        cwd=tmp_path,
    )
    manifest = json.loads((tmp_path / "exported_cli" / "genau.json").read_text())
    assert manifest["weights"] == "int8_ptq"
    assert "language_model.bin" in listed.stdout
    assert 'type="FakeQuantize"' in (tmp_path / "exported_cli" / "language_model.xml").read_text()
    inferred = _run(
        str(BIN / "anomalib-genau"),
        *("infer", "exported_cli", str(images), "--property", "INFERENCE_NUM_THREADS=1"),
        *("--category", "carpet", "--no-defect-type"),
        cwd=tmp_path,
    )
    records = [json.loads(line) for line in inferred.stdout.strip().splitlines()]
    assert len(records) == len(list(images.glob("*.png")))
    assert all(record["pred_defect_type"] is None for record in records)  # carpet's type was not asked


def test_export_takes_quantization_images_with_int8_ptq_only(tmp_path: Path) -> None:
    checkpoint = str(tmp_path / "model.ckpt")  # refused before it is read
    with pytest.raises(SystemExit, match="--quantization-images goes with --weights int8_ptq"):
        main(["export", "--ckpt-path", checkpoint, "--weights", "int8_ptq"])
    with pytest.raises(SystemExit, match="--quantization-images goes with --weights int8_ptq"):
        main(["export", "--ckpt-path", checkpoint, "--weights", "int8", "--quantization-images", str(tmp_path)])


def test_infer_refuses_a_property_that_is_not_key_value(tmp_path: Path) -> None:
    image = str(tmp_path / "image.png")  # refused before the export or the image is read
    with pytest.raises(SystemExit, match="--property takes KEY=VALUE, got 'INFERENCE_NUM_THREADS'"):
        main(["infer", str(tmp_path), image, "--property", "INFERENCE_NUM_THREADS"])


def _ablation_model() -> SimpleNamespace:
    """The attributes of a GenAU module that the ablations flip, with no model behind them."""
    switches = SimpleNamespace(high_res_readout=True, score_fusion=True)
    return SimpleNamespace(model=switches, defect_type_mode="generate", visualizer="pictures")


def _switch_state(model: SimpleNamespace) -> tuple:
    return (*(getattr(model.model, switch) for switch in INFERENCE_SWITCHES), model.defect_type_mode, model.visualizer)


def test_ablations_flip_one_switch_at_a_time(tmp_path: Path) -> None:
    model, seen = _ablation_model(), []

    def run(module: SimpleNamespace, datamodule: object) -> dict[str, float]:
        seen.append(_switch_state(module))
        return {"run": float(len(seen))}

    results = run_ablations(model, "datamodule", tmp_path, run=run)
    assert seen == [(False, True, None, None), (True, False, None, None), (True, True, "likelihood", None)]
    assert results == {
        "high_res_readout=False": {"run": 1.0},
        "score_fusion=False": {"run": 2.0},
        "defect_type_mode=likelihood": {"run": 3.0},
    }
    assert _switch_state(model) == (True, True, "generate", "pictures")


@pytest.mark.parametrize("failing_run", [0, 1, 2])
def test_ablation_switches_are_restored_when_a_run_fails(tmp_path: Path, failing_run: int) -> None:
    model, calls = _ablation_model(), []

    def run(module: SimpleNamespace, datamodule: object) -> dict[str, float]:
        calls.append(_switch_state(module))
        if len(calls) > failing_run:
            raise RuntimeError("test pass failed")
        return {}

    with pytest.raises(RuntimeError, match="test pass failed"):
        run_ablations(model, "datamodule", tmp_path, run=run)
    assert len(calls) == failing_run + 1
    assert _switch_state(model) == (True, True, "generate", "pictures")


def test_command_choices_are_the_values_of_the_modules_that_take_them() -> None:
    from anomalib_genau.data.sources import DATASET_SOURCES
    from anomalib_genau.data.synthetic_layouts import LAYOUT_GENERATORS
    from anomalib_genau.deploy import export, inferencer, quantization
    from anomalib_genau.taxonomy import DATASET_KEYS

    assert tuple(DATASET_SOURCES) == tuple(LAYOUT_GENERATORS) == tuple(DATASET_KEYS) == choices.DATASETS
    assert tuple(export.WEIGHT_FORMATS) == choices.WEIGHT_FORMATS
    assert set(choices.QUANTIZED_GRAPHS) <= set(export.WEIGHT_FORMATS)
    quantized = {graph for graphs in choices.QUANTIZED_GRAPHS.values() for graph in graphs}
    assert quantized == set(quantization.FLOAT_SCOPES)
    assert tuple(inferencer.PRECISIONS) == choices.PRECISIONS


def test_the_commands_offer_those_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "{" + ",".join(choices.WEIGHT_FORMATS) + "}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["infer", "--help"])
    out = capsys.readouterr().out
    assert "{" + ",".join(choices.PRECISIONS) + "}" in out
    assert "{" + ",".join(choices.DATASETS) + "}" in out
    with pytest.raises(SystemExit):
        main(["synthetic-data", "--help"])
    assert "{" + ",".join([*choices.DATASETS, "all"]) + "}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert f"(default: {DEMO_CONFIG})" in capsys.readouterr().out


def test_export_of_a_model_without_thresholds_is_one_line(tiny_backbone: Path, tmp_path: Path) -> None:
    """A checkpoint never validated (no thresholds) is refused by name, not with a traceback."""
    import lightning

    from anomalib_genau import GenAU

    trainer = lightning.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(GenAU(backbone=str(tiny_backbone)))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    with pytest.raises(SystemExit, match=r"^anomalib-genau export: .*no image threshold"):
        main(["export", "--ckpt-path", str(tmp_path / "model.ckpt"), "--export-root", str(tmp_path / "export")])
    assert not (tmp_path / "export" / "genau.json").exists()
