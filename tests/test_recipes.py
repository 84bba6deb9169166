"""The 0.5B and 7B recipes parse, and run one training step with the tiny backbone swapped in."""

import contextlib
import io
from pathlib import Path

import pytest
import torch
from anomalib.cli import AnomalibCLI

from anomalib_genau.seeded_cli import SeededAnomalibCLI

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


def demo_cli(repo_root: Path, backbone: Path, source_root: Path, target_root: Path, *extra: str) -> SeededAnomalibCLI:
    """The demo's config through the seeded CLI, on the small generated data."""
    data = [
        f"--data.source_root={source_root}",
        f"--data.target_root={target_root}",
        "--data.source_categories=[carpet]",
    ]
    arguments = ["train", "--config", str(repo_root / "configs" / "genau_tiny.yaml"), f"--model.backbone={backbone}"]
    return SeededAnomalibCLI([*arguments, *data, "--data.target_categories=[carpet]", *extra], run=False)


def test_the_config_seed_fixes_the_initial_weights(
    repo_root: Path, tiny_backbone: Path, source_root: Path, target_root: Path
) -> None:
    """``seed_everything: 0`` gives the same readout, LoRA and token weights each time; another seed others."""

    def trainable(*extra: str) -> torch.Tensor:
        model = demo_cli(repo_root, tiny_backbone, source_root, target_root, *extra).model
        return torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])

    first, again, other = trainable(), trainable(), trainable("--seed_everything=1")
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
