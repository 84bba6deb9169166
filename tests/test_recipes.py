"""The 0.5B and 7B recipes parse, and run one training step with the tiny backbone swapped in."""

import contextlib
import io
from pathlib import Path

import pytest
import torch
from anomalib.cli import AnomalibCLI

RECIPES = ["genau_0.5b.yaml", "genau_7b.yaml", "genau_7b_fsdp.yaml"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_parses(recipe: str, repo_root: Path) -> None:
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit):
        AnomalibCLI(["train", "--config", str(repo_root / "configs" / recipe), "--print_config"], run=False)
    printed = output.getvalue()
    assert "llava-hf/llava-onevision-qwen2-" in printed
    assert "precision: bf16-mixed" in printed
    assert "max_epochs: 1" in printed
    assert "class_path: anomalib_genau.data.CrossDataset" in printed


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_one_step_on_cpu_with_the_tiny_backbone(
    recipe: str, repo_root: Path, tiny_backbone: Path, source_root: Path, target_root: Path, tmp_path: Path
) -> None:
    hardware = ["--trainer.accelerator=cpu", "--trainer.strategy=auto", "--trainer.devices=1"]
    data = [
        f"--data.source_root={source_root}",
        "--data.source_categories=[carpet]",
        "--data.target=MVTecAD",
        f"--data.target_root={target_root}",
        "--data.target_categories=[carpet]",
        "--data.num_workers=0",
    ]
    cli = AnomalibCLI(
        [
            "fit",
            "--config",
            str(repo_root / "configs" / recipe),
            f"--model.backbone={tiny_backbone}",
            *hardware,
            *data,
            "--trainer.max_steps=1",
            "--trainer.limit_val_batches=0",
            "--trainer.logger=false",
            f"--default_root_dir={tmp_path}",
        ],
        run=False,
    )
    model, trainer_precision = cli.model, cli.config["fit"]["trainer"]["precision"]
    assert trainer_precision == "bf16-mixed"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cli.engine.fit(model=model, datamodule=cli.datamodule)
    assert cli.engine.trainer.global_step == 1
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed
    assert changed <= trainable
    assert any(n.startswith("model.readout.") for n in changed)
