"""Can the stand-in's decoder learn to find a few distinct image tokens among hundreds? A needle test.

    python benchmarks/decoder_needle.py [BACKBONE] [--steps 300] [--learning-rate 1e-3]
        [--strengths 8 16 40] [--needles 1 8] [--curriculum]

GenAU's yes/no answer needs the decoder to attend to the few image tokens of a defect.
``benchmarks/image_reading.py`` shows that the stand-in's decoder does not learn that from the
tower's tokens of marked scenes; this script asks whether the decoder could, given tokens whose
evidence is known. Its image tokens are the stand-in's own projected tokens of mark-free scenes
(their scale and statistics are real); in half of the examples ``needles`` of them are moved by
``strength`` background standard deviations along one fixed direction. Only the decoder (and its
tied embeddings) trains, on the marks question's "Yes." / "No." answer. With ``--curriculum`` it
trains on loud needles (40 sd, 8 of them) for the first third of the steps, ramps to the setting
over the second third, and trains on the setting for the last.

For every (strength, needles) it prints held-out AUROC of:

- the best possible reader, the maximum over tokens of the projection on the direction: what
  sharp attention could reach;
- the mean over tokens of that projection: what uniform attention gives;
- the decoder's yes/no log-odds before and after training.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc

from anomalib_genau.backbone import load_backbone
from anomalib_genau.pretraining import SHIPPED_BACKBONE
from anomalib_genau.pretraining.scenes import MARKS_QUESTION, Scene, draw_scene, render
from anomalib_genau.pretraining.stages import Schedule, dialogue_inputs, loud_share, optimizer_with_schedule
from image_reading import image_tokens

BATCH = 16


@dataclass
class Haystack:
    """Image tokens of mark-free scenes and where a needle goes.

    Attributes:
        tokens: ``(S, N, D)`` projected image tokens of ``S`` scenes.
        direction: ``(D,)`` unit vector the needles move along.
        spread: Standard deviation of the background tokens' projection on ``direction``.

    """

    tokens: torch.Tensor
    direction: torch.Tensor
    spread: float

    def draw(
        self, rng: np.random.Generator, count: int, strength: float, needles: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(count, N, D)`` token sets and ``(count,)`` labels: half carry needles."""
        scenes = self.tokens[rng.integers(len(self.tokens), size=count)].clone()
        labels = torch.from_numpy(rng.random(count) < 0.5)
        for row in torch.nonzero(labels).flatten().tolist():
            where = torch.from_numpy(rng.choice(scenes.shape[1], size=needles, replace=False))
            scenes[row, where] += strength * self.spread * self.direction
        return scenes, labels


@torch.no_grad()
def mark_free_tokens(model, processor, seed: int, count: int) -> torch.Tensor:
    """``(count, N, D)`` projected image tokens of scenes without marks."""
    rng = np.random.default_rng(seed)
    scenes = (draw_scene(rng) for _ in range(count))  # each drawn, then rendered, from one stream
    return torch.stack(image_tokens(model, processor, [render(Scene(s.background, s.colour, ()), rng) for s in scenes]))


class NeedleDialogue:
    """The marks question's embedded prompt with given image tokens, its "Yes." / "No." labels and log-odds."""

    def __init__(self, model, processor, image: np.ndarray) -> None:
        self.model = model
        templates = {
            answer: dialogue_inputs(processor, [image], [(MARKS_QUESTION, answer)]) for answer in ("Yes.", "No.")
        }
        self.input_ids = {answer: inputs["input_ids"][0] for answer, inputs in templates.items()}
        self.labels = {answer: inputs["labels"][0] for answer, inputs in templates.items()}
        self.image_positions = self.input_ids["Yes."] == model.config.image_token_id
        self.answer_position = int(torch.nonzero(self.labels["Yes."] != -100)[0]) - 1  # predicts the first answer token
        self.yes, self.no = (int(self.input_ids[a][self.answer_position + 1]) for a in ("Yes.", "No."))

    def embeds(self, tokens: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, L, D)`` inputs and ``(B, L)`` labels, the image positions holding ``tokens`` ``(B, N, D)``."""
        answers = ["Yes." if label else "No." for label in labels.tolist()]
        ids = torch.stack([self.input_ids[a] for a in answers])
        embeds = self.model.get_input_embeddings()(ids).clone()
        embeds[:, self.image_positions] = tokens.to(embeds.dtype)
        return embeds, torch.stack([self.labels[a] for a in answers])

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeds, targets = self.embeds(tokens, labels)
        return self.model(inputs_embeds=embeds, labels=targets).loss

    @torch.no_grad()
    def log_odds(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B,)`` yes-minus-no logit at the answer position."""
        embeds, _ = self.embeds(tokens, torch.zeros(len(tokens), dtype=torch.bool))
        logits = self.model(inputs_embeds=embeds).logits[:, self.answer_position]
        return logits[:, self.yes] - logits[:, self.no]


def held_out_auroc(dialogue: NeedleDialogue, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    dialogue.model.eval()
    scores = torch.cat([dialogue.log_odds(chunk) for chunk in tokens.split(BATCH)])
    return float(binary_auroc(scores.float(), labels))


def setting(step: int, args, strength: float, needles: int) -> tuple[float, int]:
    """The needles trained on at ``step``; ``--curriculum`` ramps from 40 sd and 8 needles in the middle third."""
    if not args.curriculum:
        return strength, needles
    progress = 1 - loud_share(step, args.steps)
    return 40 + (strength - 40) * progress, round(8 + (needles - 8) * progress)


def run(backbone: str, haystacks: tuple[Haystack, Haystack], strength: float, needles: int, args) -> dict[str, float]:
    """Train a fresh decoder on one needle setting; the four held-out AUROCs."""
    torch.manual_seed(0)
    model, processor = load_backbone(backbone)
    train, test = haystacks
    dialogue = NeedleDialogue(model, processor, render(draw_scene(np.random.default_rng(0)), np.random.default_rng(0)))
    test_tokens, test_labels = test.draw(np.random.default_rng(2), 256, strength, needles)
    projection = test_tokens @ test.direction
    row = {
        "best reader (max)": float(binary_auroc(projection.amax(1), test_labels)),
        "uniform attention (mean)": float(binary_auroc(projection.mean(1), test_labels)),
        "decoder before": held_out_auroc(dialogue, test_tokens, test_labels),
    }
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(("model.language_model.", "lm_head.")))
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = optimizer_with_schedule(parameters, Schedule(args.steps, BATCH, args.learning_rate))
    rng = np.random.default_rng(1)
    for step in range(args.steps):
        model.train()
        loss = dialogue.loss(*train.draw(rng, BATCH, *setting(step, args, strength, needles)))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        if step % 100 == 99:
            auroc = held_out_auroc(dialogue, test_tokens, test_labels)
            print(f"    step {step + 1}: loss {loss.item():.3f}, held-out AUROC {auroc:.3f}", flush=True)
    row["decoder after"] = held_out_auroc(dialogue, test_tokens, test_labels)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backbone", nargs="?", default=str(SHIPPED_BACKBONE))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--strengths", type=float, nargs="+", default=[8.0, 16.0, 40.0])
    parser.add_argument("--needles", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--curriculum", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    model, processor = load_backbone(args.backbone)
    train_tokens, test_tokens = mark_free_tokens(model, processor, 10, 64), mark_free_tokens(model, processor, 11, 32)
    direction = torch.nn.functional.normalize(
        torch.randn(train_tokens.shape[-1], generator=torch.Generator().manual_seed(0)), dim=0
    )
    spread = float((train_tokens @ direction).std())
    haystacks = (Haystack(train_tokens, direction, spread), Haystack(test_tokens, direction, spread))
    print(
        f"{train_tokens.shape[1]} image tokens per scene, width {train_tokens.shape[2]}, mean norm "
        f"{float(train_tokens.norm(dim=-1).mean()):.1f}; spread along the needle direction {spread:.2f}; "
        f"{args.steps} steps of {BATCH}, lr {args.learning_rate}, decoder only"
        + (", curriculum from 40 sd and 8 needles" if args.curriculum else "")
    )
    header = (
        "| strength (sd) | needles | best reader (max) | uniform attention (mean) | decoder before | decoder after |"
    )
    rows = []
    for needles in args.needles:
        for strength in args.strengths:
            print(f"  strength {strength}, needles {needles}", flush=True)
            result = run(args.backbone, haystacks, strength, needles, args)
            rows.append(
                f"| {strength:g} | {needles} | " + " | ".join(f"{value:.3f}" for value in result.values()) + " |"
            )
    print(header, "|---" * 6 + "|", *rows, sep="\n")
    print(f"{time.perf_counter() - start:.0f} s, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
