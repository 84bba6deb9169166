"""Build, check and install the pre-trained tiny backbone (a few MB, shipped with the package)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from anomalib_genau.backbone import TINY, build_tiny_tokenizer, random_backbone, save_backbone
from anomalib_genau.machine import cpu_description

from .scenes import corpus
from .stages import (
    COPY_SHARE,
    GROUNDING_POSITIVE_WEIGHT,
    GROUNDING_WEIGHT,
    LANGUAGE_SCHEDULE,
    SHAPE_WEIGHT,
    VISION_SCHEDULE,
    CopyTask,
    Log,
    Schedule,
    pretrain_copying,
    pretrain_language,
    pretrain_vision_tower,
)

# Bump when the scenes, the stages or the architecture change: an artifact of another version is refused.
ARTIFACT_VERSION = 5
MANIFEST = "pretraining.json"
WEIGHTS = "model.safetensors"
SHIPPED_BACKBONE = Path(__file__).resolve().parent.parent / "resources" / "genau-tiny-pretrained"
REBUILD_COMMAND = f"anomalib-genau tiny-backbone {SHIPPED_BACKBONE} --pretrained --rebuild"
TOWER_PREFIX = "vision_tower."  # the tower's keys in a saved backbone's weights
# The whole words of the prompts, answers and scenes fit in under 1024 entries.
PRETRAINED_VOCAB = 1024
# Stage-2 scenes at the tower's own size: one AnyRes tile plus the global view (half the cost of 2 x 2 tiles).
DIALOGUE_IMAGE_SIZE = TINY.image_size


class PretrainedBackboneError(RuntimeError):
    """The pre-trained tiny backbone is missing, corrupt or of another version."""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tower_of(directory: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The vision tower's weights in a pre-trained backbone ``directory``, and what its manifest says of stage 1.

    Raises:
        PretrainedBackboneError: The directory holds no weights or no vision tower, or they or the
            manifest are unreadable.

    """
    weights, manifest_file = directory / WEIGHTS, directory / MANIFEST
    if not weights.is_file():
        msg = f"--tower-from '{directory}' holds no {WEIGHTS}: give a pre-trained tiny backbone's directory."
        raise PretrainedBackboneError(msg)
    try:
        state = load_file(str(weights))
        manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    except (SafetensorError, json.JSONDecodeError) as error:
        msg = f"--tower-from '{directory}' is unreadable ({error}): give a pre-trained tiny backbone's directory."
        raise PretrainedBackboneError(msg) from error
    tower = {k[len(TOWER_PREFIX) :]: v for k, v in state.items() if k.startswith(TOWER_PREFIX)}
    if not tower:
        msg = f"'{weights}' holds no vision tower (no '{TOWER_PREFIX}' weights)."
        raise PretrainedBackboneError(msg)
    stage_one = ("version", "seed", "vision_schedule", "grounding_weight", "grounding_positive_weight", "shape_weight")
    return tower, {**{key: manifest.get(key) for key in stage_one}, "sha256": _digest(weights)}


def pretrain_tiny_backbone(
    directory: str | Path,
    seed: int = 0,
    vision: Schedule = VISION_SCHEDULE,
    language: Schedule = LANGUAGE_SCHEDULE,
    log: Log | None = print,
    copying: Schedule | None = None,
    tower_from: str | Path | None = None,
) -> Path:
    """Pre-train the tiny stand-in and write it with its manifest to ``directory``.

    Stage 1 trains the vision tower (80 min on 2 cores), or ``tower_from``, a pre-trained
    backbone's directory, gives it; stage 2 trains the rest (7 min). ``copying``, the copy task's
    schedule (:data:`~.stages.COPY_SCHEDULE`), adds the copy task, which the shipped stand-in
    has not (:mod:`.stages`). The same seed, schedules and thread count write the same weights
    again on one machine; another machine, even of the same CPU kind, may write other weights of
    the same kind (``benchmarks/RESULTS.md``).

    Raises:
        PretrainedBackboneError: ``tower_from`` holds no tower, or one of another shape; or
            ``copying`` with ``directory`` the shipped stand-in's, which the copy-task build would
            replace while passing :func:`check_pretrained_backbone` like it.

    """
    if copying is not None and Path(directory).resolve() == SHIPPED_BACKBONE:
        msg = (
            "The shipped stand-in is built without the copy task: write a --copy-task build "
            f"elsewhere, not to '{directory}'."
        )
        raise PretrainedBackboneError(msg)
    start = time.perf_counter()
    tokenizer = build_tiny_tokenizer(PRETRAINED_VOCAB, corpus())
    model, processor = random_backbone(TINY, tokenizer, seed)
    if tower_from is None:
        tower = pretrain_vision_tower(model.config.vision_config, processor, vision, seed, log)
        stage_one = {
            "vision_schedule": asdict(vision),
            "grounding_weight": GROUNDING_WEIGHT,
            "grounding_positive_weight": GROUNDING_POSITIVE_WEIGHT,
            "shape_weight": SHAPE_WEIGHT,
        }
    else:
        tower, source = _tower_of(Path(tower_from))
        stage_one = {"vision_tower_from": source}
    try:
        model.model.vision_tower.load_state_dict(tower)
    except RuntimeError as error:
        msg = f"The vision tower of '{tower_from}' does not fit the tiny stand-in's: {error}"
        raise PretrainedBackboneError(msg) from error
    task, copy_task = None, {}
    if copying is not None:
        task = CopyTask.of(tokenizer)
        pretrain_copying(model, tokenizer, task, copying, seed, log)
        copy_task = {"copy_schedule": asdict(copying), "copy_targets": len(task.targets), "copy_share": COPY_SHARE}
    pretrain_language(model, processor, DIALOGUE_IMAGE_SIZE, language, seed, log, task)
    directory = save_backbone(model, processor, directory)
    manifest = {
        "version": ARTIFACT_VERSION,
        "seed": seed,
        **stage_one,
        **copy_task,
        "language_schedule": asdict(language),
        "threads": torch.get_num_threads(),
        "cpu": cpu_description(),  # a rebuild repeats these bytes on one machine, not across machines
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - start, 1),
        "sha256": _digest(directory / WEIGHTS),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def check_pretrained_backbone(directory: str | Path) -> dict:
    """The manifest of a pre-trained backbone directory, after checking its version and weights.

    Raises:
        PretrainedBackboneError: The manifest or weights are missing, of another version or corrupt;
            the message names the command that rebuilds them.

    """
    directory = Path(directory)
    manifest_file, weights = directory / MANIFEST, directory / WEIGHTS
    rebuild = f"Rebuild it with `{REBUILD_COMMAND}`."
    if not manifest_file.is_file() or not weights.is_file():
        msg = f"The pre-trained tiny backbone in '{directory}' is missing ({MANIFEST} or {WEIGHTS}). {rebuild}"
        raise PretrainedBackboneError(msg)
    try:
        manifest = json.loads(manifest_file.read_text())
    except json.JSONDecodeError as error:
        msg = f"'{manifest_file}' is not valid JSON ({error}). {rebuild}"
        raise PretrainedBackboneError(msg) from error
    if manifest.get("version") != ARTIFACT_VERSION:
        msg = (
            f"The pre-trained tiny backbone in '{directory}' is version {manifest.get('version')}; this "
            f"anomalib-genau needs version {ARTIFACT_VERSION}. {rebuild}"
        )
        raise PretrainedBackboneError(msg)
    if manifest.get("sha256") != _digest(weights):
        msg = f"'{weights}' does not match its manifest's checksum (corrupt or changed). {rebuild}"
        raise PretrainedBackboneError(msg)
    return manifest


def install_pretrained_backbone(directory: str | Path, source: str | Path = SHIPPED_BACKBONE) -> Path:
    """Copy the shipped pre-trained tiny backbone to ``directory`` after checking it (offline, no network)."""
    check_pretrained_backbone(source)
    directory = Path(directory)
    shutil.copytree(source, directory, dirs_exist_ok=True)
    check_pretrained_backbone(directory)
    return directory
