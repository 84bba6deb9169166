"""DDP on CPU (gloo, 2 processes): training runs, and test metrics aggregate to the 1-process values."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, sys
from pathlib import Path

from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_genau import GenAU
from anomalib_genau.data import CrossDataset

mode, backbone, source, target, root = sys.argv[1:6]
seed_everything(0)
datamodule = CrossDataset(
    source="MVTecAD", source_root=source, target="MVTecAD", target_root=target,
    source_categories=["carpet"], target_categories=["carpet"], train_batch_size=2, eval_batch_size=2,
)
options = {"backbone": backbone, "max_new_tokens": 6, "defect_type_mode": "likelihood", "visualizer": False}
if mode == "ddp":
    model = GenAU(learning_rate=2e-3, **options)
    engine = Engine(default_root_dir=Path(root) / "ddp", accelerator="cpu", strategy="ddp", devices=2,
                    max_epochs=1, logger=False)
    engine.fit(model=model, datamodule=datamodule)
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    engine.trainer.save_checkpoint(Path(root) / "ddp.ckpt")  # collective: every process calls it
    if engine.trainer.is_global_zero:
        report = (Path(engine.trainer.default_root_dir) / "category_report.csv").read_text()
        Path(root, "ddp.json").write_text(json.dumps({"metrics": metrics, "report": report,
            "world_size": engine.trainer.world_size, "steps": engine.trainer.global_step}))
else:
    model = GenAU.load_from_checkpoint(Path(root) / "ddp.ckpt", weights_only=False, **options)
    engine = Engine(default_root_dir=Path(root) / "single", accelerator="cpu", devices=1, logger=False)
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    Path(root, "single.json").write_text(json.dumps({"metrics": metrics}))
"""


def test_ddp_with_two_cpu_processes(tiny_backbone: Path, source_root: Path, target_root: Path, tmp_path: Path) -> None:
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for mode in ("ddp", "single"):
        args = [
            sys.executable,
            str(script),
            mode,
            str(tiny_backbone),
            str(source_root),
            str(target_root),
            str(tmp_path),
        ]
        result = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, check=False, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((tmp_path / "ddp.json").read_text())
    single = json.loads((tmp_path / "single.json").read_text())["metrics"]
    assert metrics["world_size"] == 2
    assert metrics["steps"] > 0
    # the target's 20 test images split 10 + 10 over the ranks (no padding duplicates), and the
    # metric states are gathered: every value equals the single-process test of the same model
    for name, value in single.items():
        assert abs(metrics["metrics"][name] - value) < 1e-5, (name, metrics["metrics"][name], value)
    assert {"image_AUROC", "pixel_AUROC", "pixel_AUPRO", "type_WeightedF1"} <= set(single)
    assert ",carpet," in metrics["report"]
    assert ",20,0,0" in metrics["report"]  # the image count is summed over both processes
