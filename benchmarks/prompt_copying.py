"""Can the tiny stand-in's decoder copy a word from its prompt, as GenAU's answers need? A text-only probe.

    python benchmarks/prompt_copying.py [BACKBONE] [--steps 3000] [--learning-rate 2e-3] [--frozen-embeddings]
        [--checkpoint CKPT --source ROOT]

GenAU's answers copy words from the question: the product in "No, the {object} is normal.", one
of the listed options in the type answer. A real LLM copies from its prompt before any
fine-tuning. This probe trains the stand-in's decoder (text only: no image, so neither tower nor
projector takes part) on "Is there a mark on the {word}?" answered "No, the {word} has no
marks.", for the vocabulary's whole-word tokens except every seventh, which are held out. It
prints how often the answer's copied word is the most likely next token (teacher-forced), for
trained and held-out words, before and after. A decoder that learned to copy names held-out
words too; one that learned a look-up names only the words it was trained on.

With ``--checkpoint`` (a trained GenAU) and ``--source`` (the generated root it trained on), it
also prints the answers of GenAU's binary question on the source's normal images of each
product: its training set (bar the fifth held back for the score calibration), where each
training answer named the image's own product.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2.functional import resize

from anomalib_genau import prompts
from anomalib_genau.backbone import load_backbone
from anomalib_genau.data.images import read_rgb
from anomalib_genau.machine import cpu_description
from anomalib_genau.models.genau.lightning_model import GenAU
from anomalib_genau.pretraining import SHIPPED_BACKBONE
from anomalib_genau.pretraining.stages import Schedule, train_steps
from anomalib_genau.taxonomy import object_name

WORD_PREFIX = "Ġ"  # byte-level BPE's mark of a leading space: such a token is a whole word


def whole_words(tokenizer) -> list[str]:
    """The vocabulary's single-token words (a leading space and letters only), sorted."""
    vocabulary = tokenizer.get_vocab()
    return sorted(t[1:] for t in vocabulary if t.startswith(WORD_PREFIX) and t[1:].isalpha())


def copy_batch(tokenizer, words: list[str], rng: np.random.Generator, size: int) -> dict[str, torch.Tensor]:
    """``size`` left-padded chats asking about a random word of ``words``; labels on the answers only."""
    texts, answer_lengths = [], []
    for word in rng.choice(words, size):
        question = f"Is there a mark on the {word}?"
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        answer = f"No, the {word} has no marks.{tokenizer.eos_token}"
        texts.append(prompt + answer)
        answer_lengths.append(len(tokenizer(answer, add_special_tokens=False).input_ids))
    inputs = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
    labels = torch.full_like(inputs.input_ids, -100)
    for row, length in enumerate(answer_lengths):  # left padding: every answer ends its row
        labels[row, -length:] = inputs.input_ids[row, -length:]
    return {**inputs, "labels": labels}


@torch.no_grad()
def copy_accuracy(model, tokenizer, words: list[str], seed: int, size: int = 64) -> float:
    """Share of ``size`` chats whose copied word (the answer's fourth token: "No" "," " the" " word") is predicted."""
    batch = copy_batch(tokenizer, words, np.random.default_rng(seed), size)
    predicted = model(**batch).logits[:, :-1].argmax(-1)
    labels = batch["labels"][:, 1:]
    word = (labels != -100).int().argmax(dim=1) + 3  # answers are contiguous: their first token, plus three
    rows = torch.arange(len(word))
    return float((predicted[rows, word] == labels[rows, word]).float().mean())


@torch.no_grad()
def normal_answers(checkpoint: Path, source: Path) -> None:
    """GenAU's binary answers on each product's normal test images of ``source`` (its training set)."""
    genau = GenAU.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False).model.eval()
    for product_dir in sorted(path for path in source.iterdir() if (path / "test" / "good").is_dir()):
        files = sorted((product_dir / "test" / "good").glob("*.png"))
        images = torch.stack([resize(read_rgb(path), [224, 224], antialias=True) for path in files])
        question = prompts.instruction(object_name(product_dir.name))
        answers = genau.ask(genau.see(images), [question] * len(files)).texts
        print(f"  {product_dir.name} normal images ({len(files)}): {dict(Counter(answers).most_common(3))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbone", nargs="?", default=str(SHIPPED_BACKBONE))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--frozen-embeddings", action="store_true", help="train the decoder's layers only")
    parser.add_argument("--checkpoint", type=Path, help="a trained GenAU checkpoint (run where its backbone path is)")
    parser.add_argument("--source", type=Path, help="the generated root the checkpoint trained on")
    args = parser.parse_args()
    if (args.checkpoint is None) != (args.source is None):
        parser.error("--checkpoint and --source go together")
    torch.manual_seed(0)
    if args.checkpoint is not None:
        print(f"GenAU's binary answers on its own training images ({args.checkpoint}):")
        normal_answers(args.checkpoint, args.source)
    start = time.perf_counter()
    model, processor = load_backbone(args.backbone)
    model.eval()
    tokenizer = processor.tokenizer
    words = whole_words(tokenizer)
    held_out = words[::7]
    trained = [word for word in words if word not in held_out]
    print(f"copy probe on {args.backbone}: {len(trained)} trained words, {len(held_out)} held out")
    print(
        f"  before: trained words {copy_accuracy(model, tokenizer, trained, 1):.2f}, "
        f"held out {copy_accuracy(model, tokenizer, held_out, 2):.2f}"
    )
    rng = np.random.default_rng(0)
    frozen = ("vision_tower", "multi_modal_projector", *(("embed_tokens",) if args.frozen_embeddings else ()))
    schedule = Schedule(args.steps, 16, args.learning_rate)
    train_steps(model, schedule, lambda _: copy_batch(tokenizer, trained, rng, 16), frozen, print, "copy")
    print(
        f"  after {args.steps} steps: trained words {copy_accuracy(model, tokenizer, trained, 1):.2f}, "
        f"held out {copy_accuracy(model, tokenizer, held_out, 2):.2f}"
    )
    print(f"{time.perf_counter() - start:.0f} s; CPU: {cpu_description()}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
