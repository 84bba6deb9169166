"""What a GenAU checkpoint or export must agree on, and the slim adapter checkpoint.

A checkpoint keeps only what training changed (LoRA, new-token deltas, decoder norms, the
readout, the score calibration, post-processing) plus a reference to its base backbone;
loading fills the frozen weights back from that backbone. The same configuration check
guards checkpoints (``GenAU.on_load_checkpoint``) and OpenVINO exports (the inferencer).
Imports only torch: deployment uses it without the training stack.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch

logger = logging.getLogger(__name__)

# Constructor arguments that shape the trained weights or their outputs: a checkpoint only
# loads onto a model built with the same values.
ARCHITECTURE_ARGUMENTS = (
    "vision_layers",
    "visual_tokens",
    "temperature",
    "lora",
    "lora_rank",
    "lora_alpha",
    "train_projector",
    "train_vision",
)
# Architecture arguments added after checkpoints and exports were first saved: the value those were made with.
LEGACY_ARCHITECTURE = {"visual_tokens": "anyres"}
# Inference switches a checkpoint was trained and tested with: `anomalib predict/test --ckpt_path`
# builds the model from its own arguments, so these are restored from the checkpoint unless set.
INFERENCE_SETTINGS = ("score_fusion", "high_res_readout", "defect_type_mode", "max_new_tokens")
# The checkpoint entry that names the base backbone and the architecture it was trained with.
BACKBONE_ENTRY = "genau_backbone"
# Prefix of the backbone's weights in the Lightning module's state dict.
BACKBONE_PREFIX = "model.vlm."


def plain_value(value: Any) -> Any:
    """Lists and tuples compare equal (a checkpoint stores sequences as lists)."""
    return list(value) if isinstance(value, tuple | list) else value


def architecture(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The ``ARCHITECTURE_ARGUMENTS`` of a model's constructor arguments, as plain values."""
    return {key: plain_value(arguments[key]) for key in ARCHITECTURE_ARGUMENTS}


def differing_keys(saved: Mapping[str, Any], built: Mapping[str, Any]) -> list[str]:
    """Keys of ``saved`` whose value differs in ``built`` (a key missing from ``built`` differs)."""
    return [key for key in saved if plain_value(saved[key]) != plain_value(built.get(key))]


def check_architecture(saved: Mapping[str, Any], built: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose adapter or readout arguments differ from the model's.

    They change the weights' shapes or, silently, the outputs (``lora_alpha``, ``temperature``).

    Raises:
        ValueError: Names the differing arguments and the flags that rebuild the model as trained.

    """
    saved = {**LEGACY_ARCHITECTURE, **saved}
    differing = differing_keys({k: v for k, v in saved.items() if k in ARCHITECTURE_ARGUMENTS}, built)
    if differing:
        trained = ", ".join(f"{key}={plain_value(saved[key])}" for key in differing)
        model = ", ".join(f"{key}={plain_value(built.get(key))}" for key in differing)
        flags = " ".join(f"--model.{key} {plain_value(saved[key])}" for key in differing)
        msg = (
            f"This checkpoint was trained with {trained}, but the model was built with {model}. "
            f"Pass {flags}, or load it with GenAU.load_from_checkpoint, which restores them."
        )
        raise ValueError(msg)


def backbone_reference(
    backbone: str, fingerprint: str, arguments: Mapping[str, Any], inference: Mapping[str, Any]
) -> dict[str, Any]:
    """The checkpoint entry ``BACKBONE_ENTRY``: backbone, fingerprint, architecture, inference settings.

    The inference settings (``INFERENCE_SETTINGS``) are those in use when it was saved. The entry
    is kept apart from ``hyper_parameters``, which ``load_from_checkpoint`` overwrites with its kwargs.
    """
    return {
        "backbone": backbone,
        "fingerprint": fingerprint,
        "architecture": architecture(arguments),
        "inference": {key: plain_value(inference[key]) for key in INFERENCE_SETTINGS},
    }


def settings_to_restore(
    saved: Mapping[str, Any], current: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """The saved inference settings to restore; differing ones the model's own arguments override are logged.

    anomalib's CLI builds the model before it reads ``--ckpt_path`` and cannot say which
    arguments were given: a setting still at its constructor default takes the checkpoint's
    value; one set to anything else was chosen and wins.

    Returns:
        Setting -> the checkpoint's value.

    """
    restore = {}
    for key, value in saved.items():
        if key not in INFERENCE_SETTINGS or plain_value(current[key]) == plain_value(value):
            continue
        if plain_value(current[key]) == plain_value(defaults[key]):
            restore[key] = value
        else:
            logger.warning("GenAU's %s=%r overrides the checkpoint's %s=%r.", key, current[key], key, value)
    if restore:
        logger.info("GenAU restores the checkpoint's inference settings %s.", restore)
    return restore


def load_reference(
    checkpoint: dict[str, Any],
    arguments: Mapping[str, Any],
    fingerprint: str,
    own_state: Mapping[str, torch.Tensor],
    trainable: set[str],
) -> dict[str, Any] | None:
    """Check a checkpoint's ``BACKBONE_ENTRY`` against the model and fill its frozen weights, in place.

    Args:
        checkpoint: The Lightning checkpoint dictionary.
        arguments: The model's constructor arguments (``hparams``).
        fingerprint: The loaded backbone's fingerprint.
        own_state: The model's state dict, whose frozen backbone weights fill the slim one.
        trainable: State-dict keys training changes.

    Returns:
        The entry, or ``None`` for a checkpoint without one (saved before the entry existed).

    Raises:
        ValueError: Another backbone, or other adapter or readout arguments.

    """
    reference = checkpoint.get(BACKBONE_ENTRY)
    if reference is not None:
        check_architecture(reference.get("architecture", {}), arguments)
        check_backbone(reference, str(arguments["backbone"]), fingerprint)
        restore_state_dict(checkpoint["state_dict"], own_state, trainable)
    return reference


def check_backbone(reference: Mapping[str, Any], backbone: str, fingerprint: str) -> None:
    """Refuse a checkpoint trained on a backbone with other weights.

    Raises:
        ValueError: The fingerprints differ; the message names both backbones.

    """
    if reference["fingerprint"] != fingerprint:
        msg = (
            f"This checkpoint was trained on backbone '{reference['backbone']}' (fingerprint "
            f"{reference['fingerprint']}), but the model loaded '{backbone}' (fingerprint "
            f"{fingerprint}). Load it with --model.backbone set to its backbone."
        )
        raise ValueError(msg)


def frozen_backbone_keys(keys: Iterable[str], trainable: set[str]) -> set[str]:
    """The keys the base backbone restores: its weights and buffers that training leaves alone."""
    return {key for key in keys if key.startswith(BACKBONE_PREFIX) and key not in trainable}


def slim_state_dict(state_dict: dict[str, torch.Tensor], trainable: set[str]) -> None:
    """Drop the frozen backbone weights from a checkpoint's state dict, in place."""
    for key in frozen_backbone_keys(state_dict, trainable):
        del state_dict[key]


def restore_state_dict(
    state_dict: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor], trainable: set[str]
) -> None:
    """Fill a slim state dict's frozen backbone weights from the model's own, in place."""
    for key in frozen_backbone_keys(own, trainable):
        state_dict.setdefault(key, own[key])
