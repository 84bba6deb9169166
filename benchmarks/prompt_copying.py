"""Can the tiny stand-in's decoder copy a word from its prompt, as GenAU's answers need? A text-only probe.

    python benchmarks/prompt_copying.py [BACKBONE] [--steps 3000] [--learning-rate 2e-3] [--frozen-embeddings]
        [--targets words|tokens] [--checkpoint CKPT --source ROOT]

GenAU's answers copy words from the question: the product in "No, the {object} is normal.", one
of the listed options in the type answer. A real LLM copies from its prompt before any
fine-tuning. This probe trains the stand-in's decoder (text only: no image, so neither tower nor
projector takes part) on the stand-in's copy questions ("Is there a mark on the {word}?" and four
other sentences) answered "No, the {word} has no marks.", for the vocabulary's whole-word tokens
(``--targets words``) or for every entry of the stand-in's copy task (``--targets tokens``: pieces
of words too, :class:`CopyTask`), except the held-out words: every seventh whole word and the
taxonomy's products. It prints how often the answer's copied token is the most likely next token
(teacher-forced), for trained targets and held-out words, before and after. A decoder that learned
to copy names held-out words too; one that learned a look-up names only the targets it was
trained on. With ``--steps 0`` it measures a stand-in's own copying.

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
from anomalib_genau.pretraining.stages import (
    COPY_FROZEN,
    WORD_PREFIX,
    CopyTask,
    Schedule,
    copy_batch,
    train_steps,
)
from anomalib_genau.taxonomy import load_taxonomy, object_name


def whole_words(tokenizer) -> list[str]:
    """The vocabulary's single-token words (a leading space and letters only), sorted."""
    vocabulary = tokenizer.get_vocab()
    return sorted(t[1:] for t in vocabulary if t.startswith(WORD_PREFIX) and t[1:].isalpha())


def word_ids(tokenizer, words: list[str]) -> list[int]:
    """The token ids of single-token ``words`` (with their leading space)."""
    return tokenizer.convert_tokens_to_ids([WORD_PREFIX + word for word in words])


@torch.no_grad()
def copy_accuracy(model, tokenizer, task: CopyTask, targets: list[int], seed: int, size: int = 64) -> float:
    """Share of ``size`` chats whose copied token (the answer's fourth: "No" "," " the" target) is predicted."""
    rng = np.random.default_rng(seed)
    batch = copy_batch(tokenizer, task, rng.choice(targets, size).tolist(), rng)
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
    parser.add_argument("--targets", choices=("words", "tokens"), default="words", help="what the probe copies")
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
    task = CopyTask.of(tokenizer)
    words = whole_words(tokenizer)
    products = sorted({object_name(product) for products in load_taxonomy().values() for product in products})
    held_out = word_ids(tokenizer, [*words[::7], *(product for product in products if product in words)])
    candidates = word_ids(tokenizer, words) if args.targets == "words" else list(task.targets)
    trained = [target for target in candidates if target not in held_out]
    print(f"copy probe on {args.backbone}: {len(trained)} trained {args.targets}, {len(held_out)} held-out words")

    def report(when: str) -> None:
        print(
            f"  {when}: trained {args.targets} {copy_accuracy(model, tokenizer, task, trained, 1):.2f}, "
            f"held-out words {copy_accuracy(model, tokenizer, task, held_out, 2):.2f}"
        )

    report("before")
    rng = np.random.default_rng(0)
    # the copy task's frozen parts; the token embeddings train unless --frozen-embeddings
    frozen = tuple(part for part in COPY_FROZEN if args.frozen_embeddings or part != "embed_tokens")

    def batches(_: int) -> dict[str, torch.Tensor]:
        return copy_batch(tokenizer, task, rng.choice(trained, 16).tolist(), rng)

    if args.steps > 0:
        train_steps(model, Schedule(args.steps, 16, args.learning_rate), batches, frozen, print, "copy")
        report(f"after {args.steps} steps")
    print(f"{time.perf_counter() - start:.0f} s; CPU: {cpu_description()}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
