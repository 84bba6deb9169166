"""Prepare a LLaVA-OneVision backbone for GenAU: segmentation tokens, LoRA, frozen parts."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import LoraConfig, PeftModel, TrainableTokensConfig, get_peft_model
from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
from tokenizers import AddedToken
from transformers import LlavaOnevisionForConditionalGeneration, PreTrainedTokenizerBase

from anomalib_genau.dialogue import TokenPair
from anomalib_genau.prompts import SEG_DEFECT, SEG_NORMAL

# LoRA goes on the decoder's linear layers only; a plain list of names would also hit
# SigLIP's q/k/v projections.
LLM_LINEAR_LAYERS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def backbone_fingerprint(model: LlavaOnevisionForConditionalGeneration, samples: int = 64) -> str:
    """A short content fingerprint of a backbone's weights, cheap even at 7B.

    Hashes every tensor's name, shape and ``samples`` evenly strided values: two checkpoints
    with the same architecture but different weights get different fingerprints.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().flatten()
        sample = flat[:: max(1, flat.numel() // samples)][:samples]
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(sample.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def add_segmentation_tokens(
    model: LlavaOnevisionForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    seed: int = 0,
) -> TokenPair:
    """Add ``[SEG_defect]`` and ``[SEG_normal]`` and give them fresh embedding rows.

    The embedding matrix grows only when the tokenizer outgrows it (Qwen2 checkpoints carry
    spare rows). New rows start at the mean embedding plus noise of the embeddings' spread,
    so the two tokens differ from the start.

    Returns:
        The ids of ``[SEG_normal]`` and ``[SEG_defect]``.

    """
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False, lstrip=True) for t in (SEG_DEFECT, SEG_NORMAL)],
        special_tokens=True,
    )
    ids = tokenizer.convert_tokens_to_ids([SEG_DEFECT, SEG_NORMAL])
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        known = embeddings[: min(ids)].float()
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(len(ids), embeddings.shape[1], generator=generator)
        embeddings[ids] = (known.mean(0) + noise * known.std(0)).to(embeddings.dtype)
        output = model.get_output_embeddings().weight
        if output.data_ptr() != embeddings.data_ptr():
            output[ids] = (output[: min(ids)].float().mean(0) + noise * output[: min(ids)].float().std(0)).to(
                output.dtype
            )
    return TokenPair(normal=ids[1], defect=ids[0])


def apply_adapters(
    model: LlavaOnevisionForConditionalGeneration,
    token_ids: list[int],
    lora: bool = True,
    rank: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    train_projector: bool = False,
    train_vision: bool = False,
) -> PeftModel:
    """Wrap the model with peft and choose what trains (paper 4.5; ablations of Tables 2 and 13).

    By default: rank-stabilised LoRA on the decoder's linear layers, the new token rows of the
    embedding and LM head (peft's trainable tokens train a delta of those rows only, the base
    rows stay bit-identical) and the decoder norms. The vision tower, the multimodal projector,
    ``image_newline`` and the old token rows stay frozen.

    Args:
        model: LLaVA-OneVision model with the segmentation tokens already added.
        token_ids: Ids of the new tokens.
        lora: LoRA on the decoder; ``False`` keeps only the token rows and norms (ablation).
        rank: LoRA rank (project's choice: 8).
        alpha: LoRA alpha (project's choice: 16).
        dropout: LoRA dropout (project's choice: 0.05).
        train_projector: Also train the multimodal projector (ablation).
        train_vision: Also train the vision tower (ablation).

    """
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    token_modules = ["embed_tokens"] if tied else ["embed_tokens", "lm_head"]
    if lora:
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=dropout,
            use_rslora=True,
            target_modules=LLM_LINEAR_LAYERS,
            trainable_token_indices=dict.fromkeys(token_modules, token_ids),
        )
    else:
        config = TrainableTokensConfig(target_modules=token_modules, token_indices=token_ids)
    peft_model = get_peft_model(model, config)
    base = peft_model.get_base_model()
    for name, parameter in base.model.language_model.named_parameters():
        if "norm" in name:
            parameter.requires_grad_(True)
    for module, trainable in (
        (base.model.multi_modal_projector, train_projector),
        (base.model.vision_tower, train_vision),
    ):
        module.requires_grad_(trainable)
    return peft_model


@contextmanager
def merged_token_rows(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, the embedding (and LM head) hold the new tokens' trained rows: for no-grad passes.

    Unmerged, peft's trainable tokens copy the whole ``(V, D)`` matrix on every forward to put
    the trained rows in: with a tied LM head, two copies per decoding step, two thirds of a
    real-size (Qwen2-0.5B) step. Merged, the layers read their weights directly. Unmerging
    writes peft's saved original rows back, so the base weights stay bit-identical; gradients
    would not reach the rows' deltas while merged, hence no-grad passes only.
    """
    layers = [
        layer
        for layer in model.modules()
        if isinstance(layer, TrainableTokensLayer) and not layer.merged and not layer.disable_adapters
    ]
    for layer in layers:
        layer.merge()
    try:
        yield
    finally:
        for layer in reversed(layers):
            layer.unmerge()
