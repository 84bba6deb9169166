"""Pre-train the tiny stand-in on generic scenes: SigLIP's sigmoid loss, then LLaVA-style captioning and VQA.

The real checkpoints read images because SigLIP was trained contrastively on image-text
pairs and LLaVA-OneVision's projector and decoder on captions and visual questions. The
tiny stand-in gets the same two stages, on :mod:`~anomalib_genau.pretraining.scenes`:

1. the vision tower, inside a ``SiglipModel`` with a small text tower, learns the sigmoid
   image-text loss on scene captions (transformers computes it: ``return_loss=True``), and a
   dense grounding loss: a linear head on each final-layer patch says whether a mark covers it.
   SigLIP 2 adds location-aware losses (LocCa's grounded captions) to SigLIP for the same
   reason: the sigmoid loss alone, a loss on the whole image, leaves patch features in which
   local structure is not linearly readable, and GenAU's readout is linear. Trained on the
   sigmoid loss alone, the stand-in's features held the generated defects only for a detector
   that compares distances (benchmarks/RESULTS.md, issue 18);
2. the tower is frozen in a ``LlavaOnevisionForConditionalGeneration``, and the projector,
   ``image_newline`` and the decoder learn to answer captions and questions, with the LM
   loss on the answer tokens only.

The copy task (:class:`CopyTask`) is an option, not part of the shipped stand-in: before stage 2
the decoder alone learns, text only, to repeat a token its prompt names
(:func:`pretrain_copying`), and stage 2 asks the copy question of half its scenes. GenAU's
answers repeat words of its prompt (the product, a listed type); a real LLM copies before any
fine-tuning, and the tiny decoder trained on the scenes alone does not. The token embeddings
stay random and frozen from the copy task on: with trained embeddings the decoder learned a
look-up of the words it trained on, not copying. With the task, GenAU named its own product in
more normal answers and its type F1 rose, but its yes/no agreement fell (benchmarks/RESULTS.md,
issue 18).

:func:`pretrain_local_reading` is the third stage that ``benchmarks/image_reading.py`` tried on
version 1 of the stand-in (without the grounding loss), not part of the shipped one: the same
parts learn to answer "Are there any marks?" alone, loud marks first, then recall stage 2's
questions at a lower rate. After version 1's stage 2 the 2-layer decoder read only what
averaging over the image tokens keeps (the background's colour), never a small mark, and this
stage taught it the look-up. With the grounding loss, the image tokens carry the marks and
stage 2 alone reads them (benchmarks/RESULTS.md, issue 18).

The loops are written here rather than with Lightning's Trainer: each is a plain AdamW loop
over freshly generated batches, deterministic by seed, without checkpoints or logging.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import (
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    PreTrainedTokenizerBase,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
)

from anomalib_genau.backbone import SPECIAL_TOKENS, inspection_texts

from .scenes import (
    COPY_QUESTIONS,
    MARKS_QUESTION,
    SHAPES,
    Mark,
    Scene,
    caption,
    copy_dialogue,
    draw_scene,
    marks_scene,
    questions,
    render,
    render_with_shapes,
)


@dataclass(frozen=True)
class Schedule:
    """Steps, batch size and peak learning rate of one stage (linear warm-up, cosine decay)."""

    steps: int
    batch_size: int
    learning_rate: float


# 12800 steps (version 5): each doubling of stage 1 raised what GenAU's readout finds of faint, thin
# defects in the features (benchmarks/RESULTS.md, "Stand-in version 3" to "version 5"); a wider
# tower did not.
VISION_SCHEDULE = Schedule(steps=12800, batch_size=64, learning_rate=2e-3)
COPY_SCHEDULE = Schedule(steps=1000, batch_size=16, learning_rate=2e-3)
LANGUAGE_SCHEDULE = Schedule(steps=1500, batch_size=16, learning_rate=2e-3)
# Stage 2's share of copy questions, with the copy task: with a quarter, GenAU's type F1 and
# yes/no agreement were lower than with a half (benchmarks/RESULTS.md, issue 18, fourteenth session).
COPY_SHARE = 0.5
# Frozen in the copy task: the tower, the projector and the token embeddings (tied to the output
# layer), which stay random; stage 2 with the copy task keeps the embeddings frozen too.
COPY_FROZEN = ("vision_tower", "multi_modal_projector", "embed_tokens")
WORD_PREFIX = "Ġ"  # byte-level BPE's mark of a leading space: such a token is a whole word
READING_SCHEDULE = Schedule(steps=600, batch_size=16, learning_rate=1e-3)
RECALL_SCHEDULE = Schedule(steps=200, batch_size=16, learning_rate=2e-4)
# The grounding loss's weight against the sigmoid loss (about 7 per image at the end of stage 1),
# and the weight of its positives: about 5 % of the patches hold a mark.
GROUNDING_WEIGHT = 10.0
GROUNDING_POSITIVE_WEIGHT = 4.0
# The weight of the shape loss: which shapes cover each marked patch (version 5). Captions name a
# mark's shape, but a loss on whole images left a patch's shape barely readable, and a defect's
# type is mostly its shape.
SHAPE_WEIGHT = 5.0
Log = Callable[[str], None]


def optimizer_with_schedule(
    parameters: list[torch.nn.Parameter], schedule: Schedule
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (weight decay 0.01) with the schedule's linear warm-up over 5 % of the steps, then cosine decay."""
    optimizer = torch.optim.AdamW(parameters, lr=schedule.learning_rate, weight_decay=0.01)
    warmup = max(1, schedule.steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, schedule.steps - warmup)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def patch_shapes(shapes: Sequence[np.ndarray], patch_size: int) -> torch.Tensor:
    """``(B, N, S)`` whether each of the ``S`` scene shapes covers a pixel of each patch (row-major).

    Args:
        shapes: :func:`~.scenes.render_with_shapes`'s ``(H, W)`` shape maps, one per image.
        patch_size: The tower's patch size in pixels.

    """
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(np.stack(shapes)).long(), len(SHAPES) + 1)[..., 1:]
    cover = torch.nn.functional.max_pool2d(one_hot.permute(0, 3, 1, 2).float(), patch_size)
    return cover.flatten(2).transpose(1, 2)


def scene_pixels(images: Sequence[np.ndarray]) -> torch.Tensor:
    """``(B, 3, s, s)`` in [-1, 1], as the processor normalises (mean 0.5, std 0.5)."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def tower_patches(tower: torch.nn.Module, patch_size: int, seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Final-layer features ``(N, D)`` of the patches of ``count`` scenes of ``seed``, and ``(N, S)`` their shapes."""
    rng = np.random.default_rng(seed)
    images, shapes = zip(*(render_with_shapes(draw_scene(rng), rng) for _ in range(count)), strict=True)
    features = tower(scene_pixels(images), output_hidden_states=True).hidden_states[-1]
    return features.flatten(0, 1), patch_shapes(shapes, patch_size).flatten(0, 1)


def nearest_shape_mean(
    patches: tuple[torch.Tensor, torch.Tensor], held_out: tuple[torch.Tensor, torch.Tensor]
) -> tuple[float, float]:
    """How well stage 1's shape loss reads back: patches covered by one shape, named by the nearest shape mean.

    Args:
        patches: :func:`tower_patches` whose one-shape patches give each shape's mean feature.
        held_out: :func:`tower_patches` of other scenes, whose one-shape patches are named.

    Returns:
        The share of held-out patches named right, and the share of the commonest shape among them.

    """

    def one_shape(features: torch.Tensor, cover: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        single = cover.sum(-1) == 1
        return features[single], cover[single].float().argmax(-1)

    (features, shape), (test, test_shape) = one_shape(*patches), one_shape(*held_out)
    means = torch.stack([features[shape == index].mean(0) for index in range(len(SHAPES))])
    named = float((torch.cdist(test, means).argmin(-1) == test_shape).float().mean())
    return named, float(torch.bincount(test_shape).max() / len(test_shape))


def pretrain_vision_tower(
    vision_config: SiglipVisionConfig,
    processor: LlavaOnevisionProcessor,
    schedule: Schedule = VISION_SCHEDULE,
    seed: int = 0,
    log: Log | None = None,
) -> dict[str, torch.Tensor]:
    """Train a SigLIP vision tower with the sigmoid image-text loss and the marks' grounding and shape losses.

    Returns:
        The tower's state dict, without SigLIP's pooling head (LLaVA's tower has none) and
        without the grounding and shape heads.

    """
    tokenizer = processor.tokenizer
    text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
    special = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id}
    config = SiglipConfig(
        text_config={**text, **special, "vocab_size": len(tokenizer), "max_position_embeddings": 48},
        vision_config={**vision_config.to_dict(), "vision_use_head": True},
    )
    torch.manual_seed(seed)
    model = SiglipModel(config).train()
    grounding = torch.nn.Linear(vision_config.hidden_size, 1)
    shape = torch.nn.Linear(vision_config.hidden_size, len(SHAPES))
    heads = [*grounding.parameters(), *shape.parameters()]
    optimizer, scheduler = optimizer_with_schedule([*model.parameters(), *heads], schedule)
    positive = torch.tensor(GROUNDING_POSITIVE_WEIGHT)
    rng = np.random.default_rng(seed)
    size = vision_config.image_size
    for step in range(schedule.steps):
        scenes = [draw_scene(rng) for _ in range(schedule.batch_size)]
        images, shapes = zip(*(render_with_shapes(scene, rng, size) for scene in scenes), strict=True)
        shape_cover = patch_shapes(shapes, vision_config.patch_size)
        covered = shape_cover.amax(-1)  # (B, N): whether any mark covers the patch
        tokens = tokenizer([caption(s) for s in scenes], padding="max_length", max_length=48, return_tensors="pt")
        output = model(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            pixel_values=scene_pixels(images),
            return_loss=True,
            output_hidden_states=True,
        )
        patches = output.vision_model_output.hidden_states[-1]
        grounding_loss = torch.nn.functional.binary_cross_entropy_with_logits(
            grounding(patches).squeeze(-1), covered, pos_weight=positive
        )
        marked = covered.bool()
        shape_logits = shape(patches[marked])  # (M, S); a batch without marks has M = 0 and no shape loss
        shape_loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(shape_logits, shape_cover[marked])
            if marked.any()
            else shape_logits.sum()
        )
        loss = output.loss + GROUNDING_WEIGHT * grounding_loss + SHAPE_WEIGHT * shape_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if log is not None and (step % 100 == 0 or step == schedule.steps - 1):
            losses = f"sigmoid loss {output.loss.item():.4f}, grounding loss {grounding_loss.item():.4f}"
            losses += f", shape loss {shape_loss.item():.4f}"
            log(f"vision tower step {step}: {losses}")
    return {k: v for k, v in model.vision_model.state_dict().items() if not k.startswith("head.")}


@dataclass(frozen=True)
class CopyTask:
    """The copy question about one vocabulary entry, answered by repeating it.

    Its targets are every entry that no text of GenAU's tokenizes to (its prompts, answers,
    product and defect names), pieces of words included: pre-training names no product and no
    defect, and where GenAU repeats its product that is copying learned on other tokens. On the
    157 whole words among them the tiny decoder learned a look-up and copied no held-out word;
    on all of them (690) it copies held-out words too (benchmarks/RESULTS.md, issue 18).

    The dialogue is written with ``placeholder``, a target that is a whole word on its own, and
    :meth:`swap` puts each row's target in its place in the token ids.
    """

    targets: tuple[int, ...]
    placeholder: str
    placeholder_id: int

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase) -> CopyTask:
        """The task on ``tokenizer``'s vocabulary."""
        used = {token for text in inspection_texts() for token in tokenizer.tokenize(text)}
        unused = set(tokenizer.get_vocab()) - used - set(SPECIAL_TOKENS)
        targets = tuple(sorted(tokenizer.convert_tokens_to_ids(list(unused))))
        for target in targets:
            token = tokenizer.convert_ids_to_tokens(target)
            word = token.removeprefix(WORD_PREFIX)
            if token.startswith(WORD_PREFIX) and word.isalpha() and tokenizer.tokenize(f" {word}") == [token]:
                return cls(targets, word, target)
        msg = "The vocabulary holds no whole word that GenAU's texts leave unused, for the copy task."
        raise ValueError(msg)

    def dialogue(self, marks: tuple[Mark, ...] = (), question: int = 0) -> tuple[str, str]:
        """The question (an index of :data:`~.scenes.COPY_QUESTIONS`) and answer, the placeholder for the target."""
        return copy_dialogue(self.placeholder, marks, question)

    def swap(self, inputs: dict[str, torch.Tensor], targets: Sequence[int | None]) -> dict[str, torch.Tensor]:
        """``inputs`` with row ``b``'s placeholder (in its question and answer) swapped for ``targets[b]``.

        Rows whose target is ``None`` asked another question and stay as they are.
        """
        input_ids, labels = inputs["input_ids"].clone(), inputs["labels"].clone()
        for row, target in enumerate(targets):
            if target is None:
                continue
            at = input_ids[row] == self.placeholder_id
            if int(at.sum()) != 2:
                msg = f"A copy row holds the placeholder {int(at.sum())} times, not twice (question and answer)."
                raise ValueError(msg)
            input_ids[row, at] = target
            labels[row, labels[row] == self.placeholder_id] = target
        return {**inputs, "input_ids": input_ids, "labels": labels}


def answer_labels(input_ids: torch.Tensor, answer_lengths: Sequence[int]) -> torch.Tensor:
    """``(B, T)`` LM labels: the last ``answer_lengths[b]`` tokens of each left-padded row ``b``, -100 elsewhere."""
    labels = torch.full_like(input_ids, -100)
    for row, count in enumerate(answer_lengths):
        labels[row, -count:] = input_ids[row, -count:]
    return labels


def _answer_length(tokenizer: PreTrainedTokenizerBase, answer: str) -> int:
    """Tokens of ``answer`` and the end-of-turn token that closes it."""
    return len(tokenizer(f"{answer}{tokenizer.eos_token}", add_special_tokens=False).input_ids)


def dialogue_inputs(
    processor: LlavaOnevisionProcessor, images: list[np.ndarray], dialogues: list[tuple[str, str]]
) -> dict[str, torch.Tensor]:
    """Processor inputs of one (question, answer) per image, with ``labels`` on the answer tokens only."""
    tokenizer = processor.tokenizer
    texts = []
    for question, answer in dialogues:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        texts.append(f"{prompt}{answer}{tokenizer.eos_token}")
    inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
    lengths = [_answer_length(tokenizer, answer) for _, answer in dialogues]
    return {**inputs, "labels": answer_labels(inputs.input_ids, lengths)}


def copy_batch(
    tokenizer: PreTrainedTokenizerBase, task: CopyTask, targets: Sequence[int], rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """Left-padded text-only chats, a random copy question about each token id in ``targets``; labels on the answers."""
    dialogues = [task.dialogue(question=int(rng.integers(len(COPY_QUESTIONS)))) for _ in targets]
    chats = [[{"role": "user", "content": question}] for question, _ in dialogues]
    prompts = tokenizer.apply_chat_template(chats, add_generation_prompt=True, tokenize=False)
    texts = [f"{prompt}{answer}{tokenizer.eos_token}" for prompt, (_, answer) in zip(prompts, dialogues, strict=True)]
    inputs = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
    labels = answer_labels(inputs.input_ids, [_answer_length(tokenizer, answer) for _, answer in dialogues])
    return task.swap({**inputs, "labels": labels}, targets)


def scene_dialogue(
    scene: Scene, rng: np.random.Generator, task: CopyTask | None = None
) -> tuple[tuple[str, str], int | None]:
    """One of the scene's questions, or (a share :data:`COPY_SHARE`, given ``task``) the copy question.

    Returns:
        The question and answer, and the copy question's target token id (``None`` for the scene's own questions).

    """
    if task is not None and rng.random() < COPY_SHARE:
        question = int(rng.integers(len(COPY_QUESTIONS)))
        return task.dialogue(scene.marks, question), int(rng.choice(task.targets))
    pairs = questions(scene, rng)
    return pairs[int(rng.integers(len(pairs)))], None


def _dialogue_batch(
    processor: LlavaOnevisionProcessor,
    rng: np.random.Generator,
    batch_size: int,
    size: int,
    task: CopyTask | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`dialogue_inputs` of random scenes, one question each (:func:`scene_dialogue`)."""
    images, dialogues, targets = [], [], []
    for _ in range(batch_size):
        scene = draw_scene(rng)
        dialogue, target = scene_dialogue(scene, rng, task)
        dialogues.append(dialogue)
        targets.append(target)
        images.append(render(scene, rng, size))
    inputs = dialogue_inputs(processor, images, dialogues)
    return inputs if task is None else task.swap(inputs, targets)


@torch.no_grad()
def image_token_norms(
    model: LlavaOnevisionForConditionalGeneration, inputs: dict[str, torch.Tensor]
) -> tuple[float, float]:
    """Mean norm of the image tokens of ``inputs``'s images and of the text embeddings."""
    features = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    image = float(torch.cat(list(features.pooler_output)).norm(dim=-1).mean())
    return image, float(model.get_input_embeddings().weight.norm(dim=-1).mean())


@torch.no_grad()
def match_image_token_scale(model: LlavaOnevisionForConditionalGeneration, inputs: dict[str, torch.Tensor]) -> float:
    """Scale the projector's output layer so image tokens have the text embeddings' mean norm; returns the factor.

    A random projector on the tower's features emits tokens about 40x the norm of the text
    embeddings, so the image, not the prompt, fills each position's residual stream. Real
    checkpoints learned the balance in pre-training; the tiny one starts from it.
    """
    image, text = image_token_norms(model, inputs)
    output_layer = model.model.multi_modal_projector.linear_2
    output_layer.weight.mul_(text / image)
    if output_layer.bias is not None:
        output_layer.bias.mul_(text / image)
    return text / image


def train_steps(
    model: LlavaOnevisionForConditionalGeneration,
    schedule: Schedule,
    batches: Callable[[int], dict[str, torch.Tensor]],
    frozen: tuple[str, ...],
    log: Log | None,
    name: str,
) -> None:
    """Train on ``batches(step)`` with the schedule, the parameters whose names contain a ``frozen`` part frozen."""
    for parameter_name, parameter in model.named_parameters():
        parameter.requires_grad_(not any(part in parameter_name for part in frozen))
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = optimizer_with_schedule(parameters, schedule)
    model.train()
    for step in range(schedule.steps):
        loss = model(**batches(step)).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        if log is not None and (step % 100 == 0 or step == schedule.steps - 1):
            log(f"{name} step {step}: LM loss {loss.item():.4f}")
    model.eval()


def pretrain_copying(
    model: LlavaOnevisionForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    task: CopyTask,
    schedule: Schedule = COPY_SCHEDULE,
    seed: int = 0,
    log: Log | None = None,
) -> None:
    """Train the decoder's layers alone, text only, to repeat the token its prompt names (:class:`CopyTask`)."""
    rng = np.random.default_rng(seed + 2)

    def batches(_: int) -> dict[str, torch.Tensor]:
        return copy_batch(tokenizer, task, rng.choice(task.targets, schedule.batch_size).tolist(), rng)

    train_steps(model, schedule, batches, COPY_FROZEN, log, "copying")


def pretrain_language(
    model: LlavaOnevisionForConditionalGeneration,
    processor: LlavaOnevisionProcessor,
    image_size: int,
    schedule: Schedule = LANGUAGE_SCHEDULE,
    seed: int = 0,
    log: Log | None = None,
    task: CopyTask | None = None,
) -> None:
    """Train the projector, ``image_newline`` and decoder to caption scenes and answer questions (tower frozen).

    Given ``task``, about half the questions are its copy question, and the token embeddings stay frozen.
    """
    rng = np.random.default_rng(seed + 1)
    torch.manual_seed(seed + 1)
    probe = _dialogue_batch(processor, rng, schedule.batch_size, image_size, task)
    factor = match_image_token_scale(model, probe)
    norms = "image tokens' and text embeddings' mean norms {:.2f}, {:.2f}"
    if log is not None:
        log(f"projector output scaled by {factor:.4f}: " + norms.format(*image_token_norms(model, probe)))

    def batches(_: int) -> dict[str, torch.Tensor]:
        return _dialogue_batch(processor, rng, schedule.batch_size, image_size, task)

    frozen = ("vision_tower",) if task is None else ("vision_tower", "embed_tokens")
    train_steps(model, schedule, batches, frozen, log, "language")
    if log is not None:
        log("after training: " + norms.format(*image_token_norms(model, probe)))


def loud_share(step: int, steps: int) -> float:
    """The share of loud scenes at ``step`` of local reading: all for the first third, none from two thirds on."""
    return min(1.0, max(0.0, 2 - 3 * step / steps))


def marks_batch(
    processor: LlavaOnevisionProcessor, rng: np.random.Generator, count: int, size: int, loud: float = 0.0
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """:func:`dialogue_inputs` of the marks question about ``count`` scenes (a share ``loud`` of them loud).

    Returns:
        The inputs with ``labels`` on the answers, and the scenes' ``(count,)`` has-marks labels.

    """
    scenes = [marks_scene(rng, loud=rng.random() < loud) for _ in range(count)]
    dialogues = [(MARKS_QUESTION, "Yes." if scene.marks else "No.") for scene in scenes]
    inputs = dialogue_inputs(processor, [render(scene, rng, size) for scene in scenes], dialogues)
    return inputs, torch.tensor([bool(scene.marks) for scene in scenes])


def pretrain_local_reading(
    model: LlavaOnevisionForConditionalGeneration,
    processor: LlavaOnevisionProcessor,
    image_size: int,
    schedule: Schedule = READING_SCHEDULE,
    recall: Schedule | None = RECALL_SCHEDULE,
    seed: int = 0,
    log: Log | None = None,
    frozen: tuple[str, ...] = ("vision_tower",),
    curriculum: bool = True,
) -> None:
    """Train on the marks question alone, then (``recall``) on stage 2's questions; ``frozen`` parts stay frozen.

    With ``curriculum``, the scenes' marks are all loud for the first third of the
    steps, and their share falls to none over the second third (:func:`loud_share`). Asked the
    marks question alone, the decoder answers every question "Yes." or "No."; the recall phase,
    at a lower rate, brings its other answers back. The two phases draw scenes with the seeds
    ``seed + 4`` and ``seed + 5``.
    """
    rng = np.random.default_rng(seed + 4)

    def marks(step: int) -> dict[str, torch.Tensor]:
        loud = loud_share(step, schedule.steps) if curriculum else 0.0
        return marks_batch(processor, rng, schedule.batch_size, image_size, loud)[0]

    train_steps(model, schedule, marks, frozen, log, "local reading")
    recall_rng = np.random.default_rng(seed + 5)
    if recall is not None:
        train_steps(
            model,
            recall,
            lambda _: _dialogue_batch(processor, recall_rng, recall.batch_size, image_size),
            frozen,
            log,
            "recall",
        )
