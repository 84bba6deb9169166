"""Where does the tiny stand-in lose the defect type? Linear type heads on what it can read, source -> target.

    python benchmarks/type_reading.py SOURCE TARGET [--backbone DIR] [--checkpoint CKPT] [--l2 0.1 0.01 0.001]

SOURCE and TARGET are generated MVTec-layout roots (``anomalib-genau synthetic-data``; the demo's
``datasets/genau_synthetic/source`` and ``target``). Every test image's type (``normal`` for a
good image, else its folder's first coarse type) is predicted by a multinomial logistic head,
fitted on the source's test images (what GenAU trains on) and scored on the target's, from:

- ``decoder state``: the decoder's final-layer state at the end of GenAU's multi-type question,
  what its LM head reads to choose the answer's first token; of ``--checkpoint`` (a trained GenAU,
  adapters on) or of the untrained ``--backbone``.
- ``tower stages, mask-pooled``: the vision tower's stage features of the AnyRes grid (what GenAU's
  readout reads) averaged over the ground-truth mask, minus their average outside it: what a
  decoder that found the defect could read. A normal image has no mask, so this row names the
  defect images' types and takes every normal image as answered right; its F1 is an upper bound.
- ``tower's last stage, mask-pooled``: the last stage alone, the projector's input.
- ``image tokens, mask-pooled``: the same for the projector's output on the tiles, the image
  tokens the decoder attends to: what the projector keeps of the tower's last stage.
- ``stand-in's own words``: which words the untrained ``--backbone`` uses when asked stage 2's
  "Describe the image." about the image (greedy, its own caption vocabulary: a mark's size, shape,
  tone and place, or "no marks"): what the decoder can say of the image over several tokens
  before GenAU trains, without a type name or a mask.
- with ``--checkpoint``, GenAU's own greedy type answer (``generate`` mode), for comparison.

As GenAU's answer is, each head's choice is limited to the image's product candidates and
``normal``; types the source never shows cannot be chosen. Printed per head and L2 weight:
weighted type F1 on the target (GenAU's ``WeightedF1``), and the defect images'
accuracy on the target's easy and subtle parts. Nothing is asserted.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F  # noqa: N812
from torchvision.transforms.v2.functional import resize

from anomalib_genau import prompts
from anomalib_genau.backbone import load_backbone
from anomalib_genau.data.dataclasses import type_labels
from anomalib_genau.data.images import read_rgb
from anomalib_genau.data.synthetic import read_difficulty
from anomalib_genau.evaluation.reference import ground_truth_mask
from anomalib_genau.models.genau.lightning_model import GenAU
from anomalib_genau.models.genau.metrics import WeightedF1
from anomalib_genau.models.genau.torch_model import GenAUModel
from anomalib_genau.pretraining import SHIPPED_BACKBONE
from anomalib_genau.taxonomy import NORMAL_LABEL, defect_types, object_name, product_candidates
from image_reading import greedy_answer

TAXONOMY = "mvtec_ad"  # the generator writes MVTec AD's products and defect folders
DESCRIBE = "Describe the image."  # a stage-2 question: the stand-in answers it with a caption


@dataclass
class Readings:
    """Per test image: its product, truth, part, and the features each head reads."""

    products: list[str] = field(default_factory=list)
    truths: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    decoder: list[torch.Tensor] = field(default_factory=list)  # (D,) each
    tower: list[torch.Tensor] = field(default_factory=list)  # (S * C,) each; zeros for normal images
    last_stage: list[torch.Tensor] = field(default_factory=list)  # (C,) each; zeros for normal images
    tokens: list[torch.Tensor] = field(default_factory=list)  # (D,) each; zeros for normal images
    answers: list[str] = field(default_factory=list)  # GenAU's first parsed type, or normal


def mask_pooled(grids: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Each ``(h, w, C)`` grid averaged inside ``mask`` minus outside it, concatenated; zeros without a mask."""
    height, width = grids[0].shape[:2]
    cover = F.interpolate(mask[None, None].float(), size=(height, width), mode="area")[0, 0]
    if cover.sum() == 0:
        return torch.zeros(sum(grid.shape[-1] for grid in grids))
    inside, outside = cover / cover.sum(), (cover == 0).float() / (cover == 0).sum().clamp_min(1)
    return torch.cat([((inside - outside)[..., None] * grid).sum((0, 1)) for grid in grids])


def test_folders(root: Path) -> list[tuple[Path, list[Path]]]:
    """Every ``<product>/test/<defect>`` folder of ``root`` with its images, in a fixed order."""
    folders = sorted(path for path in root.glob("*/test/*") if path.is_dir())
    return [(folder, sorted(folder.glob("*.png"))) for folder in folders]


@torch.no_grad()
def read(model: GenAUModel, root: Path, size: int, generate: bool) -> Readings:
    """Every test image of ``root`` at ``size`` px (as the demo's pre-processor resizes), one folder at a time."""
    readings, difficulty = Readings(), read_difficulty(root)
    for folder, files in test_folders(root):
        product, defect = folder.parents[1].name, folder.name
        candidates = product_candidates(TAXONOMY, product)
        if candidates is None:
            msg = f"'{product}' is not an MVTec AD product: pass roots written by `anomalib-genau synthetic-data`."
            raise SystemExit(msg)
        question = prompts.type_instruction(object_name(product), candidates)
        images = torch.stack([resize(read_rgb(path), [size, size], antialias=True) for path in files])
        vision = model.see(images)
        fed = model.llava(
            **model.prefill_inputs(model.prompts(vision, [question] * len(files)), vision), output_hidden_states=True
        )
        readings.decoder += list(fed.hidden_states[-1][:, -1].float())
        truth = NORMAL_LABEL if defect == "good" else defect_types(TAXONOMY, product, defect)[0]
        for index, path in enumerate(files):
            mask = ground_truth_mask(path, size)
            grids = model.high_res_grids(vision, index)  # the last stage is the projector's input
            readings.tower.append(mask_pooled(grids, mask))
            readings.last_stage.append(mask_pooled(grids[-1:], mask))
            readings.tokens.append(mask_pooled([model.llava.model.multi_modal_projector(grids[-1])], mask))
            readings.products.append(product)
            readings.truths.append(truth)
            readings.parts.append(difficulty.get(path.relative_to(root).as_posix(), "normal"))
        if generate:
            answers = model.predict_types(vision, [question] * len(files), [candidates] * len(files)).types
            readings.answers += [types[0] if types else NORMAL_LABEL for types in answers]
    return readings


@torch.no_grad()
def descriptions(model, processor, root: Path, size: int) -> list[str]:
    """A backbone's greedy answer to :data:`DESCRIBE` about each test image of ``root``, in :func:`read`'s order."""
    answers = []
    for _, files in test_folders(root):
        for path in files:
            image = resize(read_rgb(path), [size, size], antialias=True).permute(1, 2, 0)
            answers.append(greedy_answer(model, processor, (image * 255).round().byte().numpy(), DESCRIBE))
    return answers


def words_of(text: str) -> set[str]:
    """The lower-case words of ``text``, without punctuation."""
    return set(text.lower().replace(".", " ").replace(",", " ").split())


def words_used(texts: list[str], vocabulary: list[str]) -> torch.Tensor:
    """``(N, V)``: 1 where a text uses a vocabulary word, else 0."""
    return torch.tensor([[float(word in words) for word in vocabulary] for words in map(words_of, texts)])


Scorer = Callable[[torch.Tensor], torch.Tensor]


def fit_head(features: torch.Tensor, labels: list[str], l2: float) -> tuple[list[str], Scorer]:
    """A multinomial logistic head on standardised ``(N, F)`` features; returns its classes and its scorer.

    Written here to keep scikit-learn out of the project's dependencies: L-BFGS on the
    cross-entropy plus ``l2`` times the squared weights.
    """
    classes = sorted(set(labels))
    target = torch.tensor([classes.index(label) for label in labels])
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    weight = torch.zeros(features.shape[1], len(classes), requires_grad=True)
    bias = torch.zeros(len(classes), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")
    standardised = (features - mean) / std

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(standardised @ weight + bias, target) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()
    return classes, lambda x: ((x - mean) / std) @ weight + bias


def choose(classes: list[str], scores: torch.Tensor, products: list[str]) -> list[str]:
    """Each row's best class among its product's candidates and ``normal`` (``normal`` if none is known)."""
    chosen = []
    for row, product in zip(scores, products, strict=True):
        allowed = {NORMAL_LABEL, *product_candidates(TAXONOMY, product)}
        known = [(float(score), name) for score, name in zip(row, classes, strict=True) if name in allowed]
        chosen.append(max(known)[1] if known else NORMAL_LABEL)
    return chosen


def type_f1(truths: list[str], predictions: list[str]) -> float:
    """GenAU's weighted type F1 (its ``WeightedF1`` metric), one type per image."""
    metric = WeightedF1()
    metric.update(
        SimpleNamespace(
            pred_types=torch.stack([type_labels([name]) for name in predictions]),
            gt_types=torch.stack([type_labels([name]) for name in truths]),
        )
    )
    return float(metric.compute())


def report(name: str, target: Readings, predictions: list[str]) -> None:
    """One table row: type F1, and the defect images' accuracy per part."""

    def accuracy(part: str) -> float:
        pairs = [(p, t) for p, t, q in zip(predictions, target.truths, target.parts, strict=True) if q == part]
        return sum(p == t for p, t in pairs) / max(len(pairs), 1)

    print(f"| {name} | {type_f1(target.truths, predictions):.3f} | {accuracy('easy'):.2f} | {accuracy('subtle'):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument(
        "--backbone",
        default=str(SHIPPED_BACKBONE),
        help="the untrained stand-in: read without --checkpoint, and asked to describe the images",
    )
    parser.add_argument("--checkpoint", type=Path, help="a trained GenAU checkpoint")
    parser.add_argument("--size", type=int, default=224, help="input side, as configs/genau_tiny.yaml resizes")
    parser.add_argument("--l2", type=float, nargs="+", default=[0.1, 0.01, 0.001])
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.checkpoint is not None:
        model = GenAU.load_from_checkpoint(args.checkpoint, map_location="cpu", weights_only=False).model.eval()
    else:
        model = GenAUModel(args.backbone).eval()
    source = read(model, args.source, args.size, generate=False)
    target = read(model, args.target, args.size, generate=args.checkpoint is not None)
    print("| head | type F1 | defect accuracy, easy | defect accuracy, subtle |\n|---|---|---|---|")
    if target.answers:
        report("GenAU's generated answer", target, target.answers)
    for l2 in args.l2:
        classes, score = fit_head(torch.stack(source.decoder), source.truths, l2)
        chosen = choose(classes, score(torch.stack(target.decoder)), target.products)
        report(f"decoder state, L2 {l2:g}", target, chosen)
    backbone, processor = load_backbone(args.backbone)
    said_source, said_target = (
        descriptions(backbone.eval(), processor, root, args.size) for root in (args.source, args.target)
    )
    vocabulary = sorted(set().union(*map(words_of, said_source)))
    for l2 in args.l2:
        classes, score = fit_head(words_used(said_source, vocabulary), source.truths, l2)
        chosen = choose(classes, score(words_used(said_target, vocabulary)), target.products)
        report(f"stand-in's own words, L2 {l2:g}", target, chosen)
    defects = [i for i, truth in enumerate(source.truths) if truth != NORMAL_LABEL]
    names = [source.truths[i] for i in defects]
    for name, train, test in (
        ("tower stages", source.tower, target.tower),
        ("tower's last stage", source.last_stage, target.last_stage),
        ("image tokens", source.tokens, target.tokens),
    ):
        for l2 in args.l2:
            classes, score = fit_head(torch.stack([train[i] for i in defects]), names, l2)
            chosen = choose(classes, score(torch.stack(test)), target.products)
            truths = target.truths
            predictions = [NORMAL_LABEL if t == NORMAL_LABEL else c for t, c in zip(truths, chosen, strict=True)]
            report(f"{name}, mask-pooled (normal images given), L2 {l2:g}", target, predictions)


if __name__ == "__main__":
    main()
