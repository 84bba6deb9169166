"""Load a LLaVA-OneVision backbone, or write a tiny random one for offline use.

``load_backbone`` accepts a Hugging Face id (``llava-hf/llava-onevision-qwen2-0.5b-ov-hf``)
or a local directory holding ``LlavaOnevisionForConditionalGeneration`` weights and a
``LlavaOnevisionProcessor``. ``build_tiny_backbone`` writes a randomly initialised model of
the *same classes* plus a tokenizer and processor built locally, so tests and the demo run
real code paths without network access.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)

from anomalib_genau.prompts import NORMAL_RESPONSES, PROMPT_TEMPLATES, answer, type_instruction
from anomalib_genau.taxonomy import load_taxonomy, product_candidates

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]

# Qwen-style chat template of the same shape as the one LLaVA-OneVision ships: an image
# placeholder followed by the text, one ``<|im_start|>role ... <|im_end|>`` block per turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class BackboneError(ValueError):
    """Raised when a backbone id or path does not hold a LLaVA-OneVision checkpoint."""


def load_backbone(
    backbone: str | Path,
    dtype: torch.dtype = torch.float32,
) -> tuple[LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor]:
    """Load a LLaVA-OneVision model and its processor from a hub id or a local directory.

    Args:
        backbone: Hugging Face id or local directory.
        dtype: Parameter dtype of the loaded model.

    Raises:
        BackboneError: The path is missing, or the checkpoint is not LLaVA-OneVision.

    """
    path = Path(backbone).expanduser()
    looks_local = path.exists() or str(backbone).startswith((".", "/", "~")) or str(backbone).count("/") != 1
    if looks_local:
        _check_local_checkpoint(path)
        backbone = str(path)
    try:
        config = LlavaOnevisionConfig.from_pretrained(backbone)
    except (OSError, ValueError) as error:
        msg = (
            f"Could not load a LLaVA-OneVision config from '{backbone}': {error}. Expected a Hugging Face id such "
            "as 'llava-hf/llava-onevision-qwen2-0.5b-ov-hf' or a directory written by save_pretrained."
        )
        raise BackboneError(msg) from error
    if config.model_type != "llava_onevision":
        msg = f"'{backbone}' holds a '{config.model_type}' model; GenAU needs a 'llava_onevision' checkpoint."
        raise BackboneError(msg)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(backbone, dtype=dtype)
    processor = LlavaOnevisionProcessor.from_pretrained(backbone)
    return model, processor


def _check_local_checkpoint(path: Path) -> None:
    """Fail early, with one message, when a local directory cannot be a checkpoint."""
    expected = "a directory with config.json (model_type 'llava_onevision'), weights and processor files"
    if not path.is_dir():
        msg = f"Backbone path '{path}' does not exist or is not a directory; expected {expected}."
        raise BackboneError(msg)
    config_file = path / "config.json"
    if not config_file.is_file():
        msg = f"Backbone directory '{path}' has no config.json; expected {expected}."
        raise BackboneError(msg)
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "llava_onevision":
        msg = f"Backbone directory '{path}' holds model_type '{model_type}'; expected {expected}."
        raise BackboneError(msg)


def _tokenizer_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: inspection prompts, answers and object names."""
    words: set[str] = set()
    for products in load_taxonomy().values():
        for product, defects in products.items():
            words.add(product.replace("_", " "))
            for original, coarse in defects.items():
                words.add(str(original).replace("_", " "))
                words.update(c.replace("_", " ") for c in ([coarse] if isinstance(coarse, str) else coarse))
    sentences = [template.format(object=word) for template in PROMPT_TEMPLATES for word in sorted(words)]
    sentences += [response.format(object=word) for response in NORMAL_RESPONSES for word in sorted(words)]
    return sentences + ["user assistant system You are a helpful assistant."] * 4


def _dialogue_corpus() -> list[str]:
    """Every product's type question and defect answers, so that a large vocabulary holds their words whole."""
    sentences = []
    for dataset, products in load_taxonomy().items():
        for product in products:
            types = product_candidates(dataset, product) or []
            sentences.append(type_instruction(product.replace("_", " "), types))
            sentences += [answer(product.replace("_", " "), [name]) for name in types]
    return sentences


def inspection_texts() -> list[str]:
    """GenAU's own texts: its prompts and answers for every product and defect name, and its type questions."""
    return [*_tokenizer_corpus(), *_dialogue_corpus()]


def build_tiny_tokenizer(vocab_size: int = 512, extra_corpus: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer offline, with Qwen's special tokens and chat template.

    At 512 entries most words are split into pieces; a larger ``vocab_size`` holds the corpus's
    words whole, as real tokenizers hold common words. ``extra_corpus`` adds sentences.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([*_tokenizer_corpus(), *extra_corpus], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


@dataclass(frozen=True)
class BackboneSize:
    """Dimensions of a random LLaVA-OneVision (SigLIP vision tower + Qwen2 decoder)."""

    image_size: int
    patch_size: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    max_tiles_per_side: int
    vocab_rows: int | None  # embedding rows; None: exactly the tokenizer's length
    initializer_range: float
    # False: 512 entries, most words in pieces; True: every word of GenAU's dialogues whole, as
    # Qwen2's 151,646-entry tokenizer holds common English words, so that prompts and answers
    # take as many tokens as with the real tokenizer (the real sizes' timings)
    whole_words: bool = False


# Larger than the corpus's words and pieces: every word whole (see ``BackboneSize.whole_words``).
WHOLE_WORDS_VOCAB = 8192
# About 0.7 M parameters. initializer_range = 1/sqrt(hidden): logits of a random 128-wide model
# can then reach the magnitudes a trained one has; Qwen2's 0.02 (made for 896+ wide models)
# caps them near 2.5 and the tiny decoder barely learns.
TINY = BackboneSize(112, 8, 64, 128, 6, 2, 128, 256, 2, 4, 2, 3, None, 128**-0.5)
# The architecture of llava-hf/llava-onevision-qwen2-0.5b-ov-hf (SigLIP-so400m with 26 layers,
# Qwen2-0.5B), for size and speed measurements with random weights.
QWEN2_0_5B = BackboneSize(384, 14, 1152, 4304, 26, 16, 896, 4864, 24, 14, 2, 6, 151936, 0.02, whole_words=True)
# The sizes the benchmarks take by name (``--size``).
BACKBONE_SIZES = {"tiny": TINY, "qwen2-0.5b": QWEN2_0_5B}


def build_tiny_backbone(directory: str | Path, seed: int = 0) -> Path:
    """Write the tiny random LLaVA-OneVision checkpoint and processor (see :func:`build_random_backbone`)."""
    return build_random_backbone(directory, TINY, seed)


def build_random_backbone(directory: str | Path, size: BackboneSize = TINY, seed: int = 0) -> Path:
    """Write a random-initialised LLaVA-OneVision checkpoint and processor to ``directory``.

    The model uses the classes of the real checkpoints (SigLIP vision tower, Qwen2 decoder,
    AnyRes ``anyres_max_9`` with pinpoints up to a ``max_tiles_per_side`` square grid); the
    tokenizer is built offline (:func:`build_tiny_tokenizer`).

    Args:
        directory: Output directory (created).
        size: Dimensions, e.g. :data:`TINY` or :data:`QWEN2_0_5B`.
        seed: Seed of the random weights; the same seed writes the same weights.

    Returns:
        The directory, ready for :func:`load_backbone`.

    """
    tokenizer = (
        build_tiny_tokenizer(WHOLE_WORDS_VOCAB, _dialogue_corpus()) if size.whole_words else build_tiny_tokenizer()
    )
    model, processor = random_backbone(size, tokenizer, seed)
    return save_backbone(model, processor, directory)


def save_backbone(
    model: LlavaOnevisionForConditionalGeneration, processor: LlavaOnevisionProcessor, directory: str | Path
) -> Path:
    """Write ``model`` and ``processor`` to ``directory`` (created) for :func:`load_backbone`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def random_backbone(
    size: BackboneSize, tokenizer: PreTrainedTokenizerFast, seed: int = 0
) -> tuple[LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor]:
    """A random-initialised LLaVA-OneVision of dimensions ``size`` and its processor around ``tokenizer``."""
    image_size, patch_size = size.image_size, size.patch_size
    tiles = range(1, size.max_tiles_per_side + 1)
    pinpoints = [[image_size * rows, image_size * cols] for rows in tiles for cols in tiles]
    image_processor = LlavaOnevisionImageProcessor(
        size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    video_processor = LlavaOnevisionVideoProcessor(size={"height": image_size, "width": image_size})
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )
    vision_config = SiglipVisionConfig(
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_intermediate,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        vision_use_head=False,
    )
    text_config = Qwen2Config(
        hidden_size=size.text_hidden,
        intermediate_size=size.text_intermediate,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        num_key_value_heads=size.text_kv_heads,
        vocab_size=size.vocab_rows or len(tokenizer),
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        initializer_range=size.initializer_range,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=pinpoints,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config)
    # generate() stops at the end of the assistant turn, as with the real checkpoints
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor
