"""Does the tiny stand-in's decoder read local evidence from the image? Probes on generic scenes.

    python benchmarks/image_reading.py [BACKBONE] [--finetune-steps 300] [--learning-rate 1e-3] [--train-tower]
        [--reset-projector] [--frozen-projector] [--curriculum] [--recall-steps 200] [--save DIR]

Asks "Are there any marks?" about held-out pre-training scenes (half with marks, half without)
and prints, next to each other, held-out AUROC of:

- logistic probes on the projected image tokens, mean-pooled (what near-uniform attention gives
  the answer) and max-pooled (what sharp attention could give it), and on the decoder's last
  hidden state at the answer position;
- the decoder's own yes/no log-odds, before and after fine-tuning on this one question
  (projector and decoder, or everything with ``--train-tower``), with their spread;
- the greedy answer to "What is the background?": its colour (a global statistic) and its
  pattern (local structure) against chance;
- the greedy answer to "What is at the <position>?" about a mark: its shape (what a defect type
  needs) against chance, and its colour;
- the spectrum of the tower's features and of the projected image tokens: their mean norm, the
  norm of their mean, and their standard deviation along the first principal directions;
- the shape of held-out patches covered by one mark, named by the nearest shape mean of the
  tower's final-layer features, against always naming the commonest shape.

``--reset-projector`` re-initialises the projector before fine-tuning, its output centred (the
bias removes the mean token) and scaled to the text embeddings' norm; ``--frozen-projector``
keeps the projector as it is while the decoder fine-tunes; ``--curriculum`` fine-tunes on scenes
whose marks are all large or thick first, and ``--recall-steps`` then recalls stage 2's questions
at a fifth of the rate (the third stage tried on version 1 of the stand-in,
:func:`~anomalib_genau.pretraining.stages.pretrain_local_reading`); ``--save`` writes the
fine-tuned stand-in, which GenAU trains on with ``--model.backbone DIR``.

No anomaly data is involved: GenAU's yes/no answer needs the same reading of local evidence.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc

from anomalib_genau.backbone import load_backbone, save_backbone
from anomalib_genau.pretraining import SHIPPED_BACKBONE
from anomalib_genau.pretraining.artifact import DIALOGUE_IMAGE_SIZE
from anomalib_genau.pretraining.scenes import (
    BACKGROUNDS,
    COLOURS,
    MARKS_QUESTION,
    SHAPES,
    draw_scene,
    questions,
    render,
)
from anomalib_genau.pretraining.stages import (
    RECALL_SCHEDULE,
    Schedule,
    marks_batch,
    nearest_shape_mean,
    pretrain_local_reading,
    tower_patches,
)


def probe_auroc(train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, test_y: torch.Tensor) -> float:
    """Held-out AUROC of an L2-regularised logistic regression on standardised ``(N, D)`` features."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    train, test = (train - mean) / std, (test - mean) / std
    weight = torch.zeros(train.shape[1] + 1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight], max_iter=200)

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        logits = train @ weight[:-1] + weight[-1]
        value = torch.nn.functional.binary_cross_entropy_with_logits(logits, train_y.float())
        value = value + 1e-2 * weight[:-1].square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    return float(binary_auroc((test @ weight[:-1] + weight[-1]).detach(), test_y))


@torch.no_grad()
def read_marks(model, processor, seed: int, batches: int = 8) -> dict[str, torch.Tensor]:
    """Pooled image tokens, answer-position states, yes/no log-odds and labels of held-out scenes."""
    model.eval()
    tokenizer = processor.tokenizer
    yes, no = (tokenizer(word, add_special_tokens=False).input_ids[0] for word in ("Yes", "No"))
    length = len(tokenizer(f"Yes.{tokenizer.eos_token}", add_special_tokens=False).input_ids)  # "No." is as long
    rng, rows = np.random.default_rng(seed), []
    for _ in range(batches):
        inputs, labels = marks_batch(processor, rng, 16, DIALOGUE_IMAGE_SIZE)
        inputs.pop("labels")
        tokens = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
        output = model(**inputs, output_hidden_states=True)
        logits = output.logits[:, -length - 1]
        rows.append(
            {
                "mean-pooled image tokens": torch.stack([t.mean(0) for t in tokens.pooler_output]),
                "max-pooled image tokens": torch.stack([t.max(0).values for t in tokens.pooler_output]),
                "answer-position state": output.hidden_states[-1][:, -length - 1],
                "log_odds": logits[:, yes] - logits[:, no],
                "labels": labels,
            }
        )
    return {key: torch.cat([row[key] for row in rows]) for key in rows[0]}


def greedy_answer(model, processor, image: np.ndarray, question: str) -> str:
    """The decoder's greedy answer (up to 10 tokens) to one question about one image."""
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True,
    )
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    return processor.tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)


@torch.no_grad()
def background_answers(model, processor, seed: int, count: int = 40) -> tuple[float, float]:
    """Share of greedy answers to "What is the background?" naming its colour, and its pattern."""
    rng, colour, pattern = np.random.default_rng(seed), 0, 0
    for _ in range(count):
        scene = draw_scene(rng)
        question = next(q for q, _ in questions(scene, rng) if q == "What is the background?")
        answer = greedy_answer(model, processor, render(scene, rng), question).split()
        colour += scene.colour in answer
        pattern += scene.background in answer
    return colour / count, pattern / count


@torch.no_grad()
def mark_answers(model, processor, seed: int, count: int = 40) -> tuple[float, float]:
    """Share of greedy answers to "What is at the <position>?" about a mark naming its shape, and its colour."""
    rng, shape, colour, asked = np.random.default_rng(seed), 0, 0, 0
    while asked < count:
        scene = draw_scene(rng)
        if not scene.marks:
            continue
        mark = scene.marks[0]
        answer = greedy_answer(model, processor, render(scene, rng), f"What is at the {mark.position}?")
        words = answer.lower().replace(".", " ").split()
        shape += mark.shape in words
        colour += mark.colour in words
        asked += 1
    return shape / count, colour / count


@torch.no_grad()
def token_spectrum(model, processor, seed: int, count: int = 32) -> str:
    """The projector's input (tower features) and output (image tokens) over ``count`` scenes.

    For each: the mean norm, the norm of the mean, and the deviations' sd along the top 6 principal directions.
    """
    rng = np.random.default_rng(seed)
    seen: list[torch.Tensor] = []
    hook = model.model.multi_modal_projector.register_forward_hook(lambda _, inputs, __: seen.append(inputs[0]))
    tokens = torch.cat(list(image_tokens(model, processor, [render(draw_scene(rng), rng) for _ in range(count)])))
    hook.remove()
    lines = []
    for name, values in (("tower features", seen[0].flatten(0, -2)), ("image tokens", tokens)):
        spreads = torch.linalg.svdvals(values - values.mean(0))[:6] / len(values) ** 0.5
        lines.append(
            f"{name}: mean norm {float(values.norm(dim=-1).mean()):.2f}, norm of the mean "
            f"{float(values.mean(0).norm()):.2f}, sd along the top directions "
            + " ".join(f"{float(value):.3f}" for value in spreads)
        )
    return "\n".join(lines)


def patch_shape_reading(model, seed: int, count: int = 96) -> str:
    """How often the nearest shape mean of the tower's final layer names a held-out marked patch's shape.

    The means come from ``count`` scenes of ``seed``, the test from ``count`` of ``seed + 1``.
    Printed against always naming the commonest shape.
    """
    tower, patch = model.model.vision_tower, model.config.vision_config.patch_size
    named, commonest = nearest_shape_mean(
        tower_patches(tower, patch, seed, count), tower_patches(tower, patch, seed + 1, count)
    )
    return f"tower features: a marked patch's shape named by the nearest mean {named:.2f} (commonest {commonest:.2f})"


def image_tokens(model, processor, images: list[np.ndarray]) -> list[torch.Tensor]:
    """Each image's ``(N, D)`` projected tokens."""
    inputs = processor(images=images, text=["<image>"] * len(images), return_tensors="pt")
    features = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    return list(features.pooler_output)


@torch.no_grad()
def reset_projector(model, processor, seed: int) -> None:
    """A fresh projector whose tokens are centred (zero mean over scenes) with the text embeddings' mean norm."""
    projector = model.model.multi_modal_projector
    torch.manual_seed(seed)
    projector.linear_1.reset_parameters()
    projector.linear_2.reset_parameters()
    rng = np.random.default_rng(seed)
    tokens = torch.cat(image_tokens(model, processor, [render(draw_scene(rng), rng) for _ in range(32)]))
    projector.linear_2.bias.sub_(tokens.mean(0))
    centred = tokens - tokens.mean(0)
    scale = float(model.get_input_embeddings().weight.norm(dim=-1).mean() / centred.norm(dim=-1).mean())
    projector.linear_2.weight.mul_(scale)
    projector.linear_2.bias.mul_(scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backbone", nargs="?", default=str(SHIPPED_BACKBONE))
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--train-tower", action="store_true")
    parser.add_argument("--reset-projector", action="store_true")
    parser.add_argument("--frozen-projector", action="store_true")
    parser.add_argument("--curriculum", action="store_true")
    parser.add_argument("--recall-steps", type=int, default=0, help="then stage 2's questions, at the recall rate")
    parser.add_argument("--save", help="write the fine-tuned stand-in to this directory")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    model, processor = load_backbone(args.backbone)
    train, test = read_marks(model, processor, seed=1), read_marks(model, processor, seed=2)
    print(f"'{MARKS_QUESTION}' on {len(test['labels'])} held-out scenes ({args.backbone}); held-out AUROC:")
    for key in ("mean-pooled image tokens", "max-pooled image tokens", "answer-position state"):
        print(f"  probe on {key:<26} {probe_auroc(train[key], train['labels'], test[key], test['labels']):.3f}")
    print(
        f"  decoder yes/no log-odds            {float(binary_auroc(test['log_odds'], test['labels'])):.3f}"
        f" (spread {float(test['log_odds'].std()):.4f})"
    )
    print(token_spectrum(model, processor, seed=5))
    print(patch_shape_reading(model, seed=6))
    colour, pattern = background_answers(model, processor, seed=3)
    print(
        f"'What is the background?': colour named {colour:.2f} (chance {1 / len(COLOURS):.2f}), "
        f"pattern named {pattern:.2f} (chance {1 / len(BACKGROUNDS):.2f})"
    )
    shape, colour = mark_answers(model, processor, seed=4)
    print(
        f"'What is at the <a mark's position>?': shape named {shape:.2f} (chance {1 / len(SHAPES):.2f}), "
        f"colour named {colour:.2f}"
    )
    if args.finetune_steps:
        frozen = () if args.train_tower else ("vision_tower",)
        frozen += ("multi_modal_projector",) if args.frozen_projector else ()
        parts = [
            word
            for part, word in (("vision_tower", "tower"), ("multi_modal_projector", "projector"))
            if part not in frozen
        ]
        tower = ", ".join([*parts, "decoder"])
        if args.reset_projector:
            reset_projector(model, processor, seed=6)
            tower += ", the projector reset"
            print("reset: " + token_spectrum(model, processor, seed=5))
        tower += ", loud marks first" if args.curriculum else ""
        schedule = Schedule(args.finetune_steps, 16, args.learning_rate)
        recall = Schedule(args.recall_steps, 16, RECALL_SCHEDULE.learning_rate) if args.recall_steps else None
        print(f"fine-tuning {tower} on the marks question: {args.finetune_steps} steps, lr {args.learning_rate}")
        if recall:
            print(f"then on stage 2's questions: {recall.steps} steps, lr {recall.learning_rate}")
        pretrain_local_reading(
            model, processor, DIALOGUE_IMAGE_SIZE, schedule, recall, 0, print, frozen, args.curriculum
        )
        test = read_marks(model, processor, seed=2)
        print(
            f"  decoder yes/no log-odds after      {float(binary_auroc(test['log_odds'], test['labels'])):.3f}"
            f" (spread {float(test['log_odds'].std()):.4f})"
        )
        print("after: " + token_spectrum(model, processor, seed=5))
        colour, pattern = background_answers(model, processor, seed=3)
        print(f"after: 'What is the background?': colour named {colour:.2f}, pattern named {pattern:.2f}")
        shape, colour = mark_answers(model, processor, seed=4)
        print(f"after: 'What is at the <a mark's position>?': shape named {shape:.2f}, colour named {colour:.2f}")
        if args.save:
            print(f"saved to {save_backbone(model, processor, args.save)}")
    print(f"{time.perf_counter() - start:.0f} s, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
