"""The pre-trained tiny stand-in: generic scenes, deterministic pre-training, the shipped artifact's checks."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torchmetrics.functional.classification import binary_auroc

from anomalib_genau.backbone import build_tiny_backbone, build_tiny_tokenizer, inspection_texts, load_backbone
from anomalib_genau.demo import DEMO_BACKBONE, prepare_demo_artifacts
from anomalib_genau.machine import cpu_description
from anomalib_genau.pretraining import (
    REBUILD_COMMAND,
    SHIPPED_BACKBONE,
    PretrainedBackboneError,
    check_pretrained_backbone,
    install_pretrained_backbone,
    pretrain_tiny_backbone,
    stages,
)
from anomalib_genau.pretraining.artifact import PRETRAINED_VOCAB
from anomalib_genau.pretraining.scenes import (
    COPY_QUESTIONS,
    SHAPES,
    Mark,
    Scene,
    caption,
    copy_dialogue,
    corpus,
    draw_scene,
    marks_scene,
    questions,
    render,
    render_with_marks,
    render_with_shapes,
)
from anomalib_genau.pretraining.stages import (
    CopyTask,
    Schedule,
    copy_batch,
    dialogue_inputs,
    loud_share,
    nearest_shape_mean,
    pretrain_copying,
    pretrain_language,
    pretrain_local_reading,
    scene_dialogue,
    tower_patches,
)
from anomalib_genau.taxonomy import load_taxonomy


def test_scene_marks_change_their_cell_only_and_are_captioned():
    mark = Mark("square", "red", "large", row=0, column=2)
    plain, marked = Scene("plain", "blue", ()), Scene("plain", "blue", (mark,))
    background = render(plain, np.random.default_rng(3)).astype(float)
    image = render(marked, np.random.default_rng(3)).astype(float)
    change = np.abs(image - background).sum(-1)
    assert change[:37, 75:].mean() > 50  # the top right cell holds the red square
    assert change[40:, :].max() == 0
    assert caption(marked) == "A large red square at the top right on a plain blue background."
    assert caption(plain) == "A plain blue background with no marks."
    answers = dict(questions(marked, np.random.default_rng(0)))
    assert answers["What colour is the square at the top right?"] == "Red."
    assert answers["How many marks are there?"] == "One."


def test_marks_come_with_the_pixels_they_cover():
    scene = Scene("striped", "blue", (Mark("ring", "red", "large", 0, 2), Mark("line", "yellow", "thin", 2, 0)))
    image, covered = render_with_marks(scene, np.random.default_rng(3))
    assert np.array_equal(image, render(scene, np.random.default_rng(3)))  # the same image as render draws
    background = render(Scene("striped", "blue", ()), np.random.default_rng(3)).astype(float)
    painted = np.abs(image - background).sum(-1) > 0
    assert np.array_equal(covered, painted)
    assert covered[:37, 75:].any() and covered[75:, :37].any() and not covered[37:75].any()
    _, shapes = render_with_shapes(scene, np.random.default_rng(3))
    assert np.array_equal(shapes > 0, covered)  # each covered pixel is labelled with its mark's shape
    assert set(np.unique(shapes[:37, 75:])) == {0, SHAPES.index("ring") + 1}
    assert set(np.unique(shapes[75:, :37])) == {0, SHAPES.index("line") + 1}


def test_faint_marks_are_shades_of_the_background_named_by_their_brightness():
    darker = Mark("circle", "darker", "large", 1, 1)
    image, covered = render_with_marks(Scene("plain", "gray", (darker,)), np.random.default_rng(0))
    shift = image[covered].astype(float).mean(0) - image[~covered].astype(float).mean(0)
    assert np.all((shift > -70) & (shift < -5))  # a shade of gray, darker in every channel: not another colour
    assert (
        caption(Scene("plain", "gray", (darker,))) == "A large darker circle at the center on a plain gray background."
    )
    rng = np.random.default_rng(0)
    scenes = [draw_scene(rng) for _ in range(600)]
    marks = [(scene.colour, mark.colour) for scene in scenes for mark in scene.marks]
    faint = [(background, shade) for background, shade in marks if shade in ("lighter", "darker")]
    assert 0.2 < len(faint) / len(marks) < 0.4
    assert {shade for background, shade in faint if background == "white"} == {"darker"}
    assert {shade for background, shade in faint if background == "black"} == {"lighter"}


def test_local_reading_shows_loud_marks_first_and_scenes_without_marks_half_the_time():
    rng = np.random.default_rng(0)
    loud = [marks_scene(rng, loud=True) for _ in range(200)]
    ordinary = [marks_scene(rng) for _ in range(200)]
    assert all(mark.size in ("large", "thick") for scene in loud for mark in scene.marks)
    assert {mark.size for scene in ordinary for mark in scene.marks} == {"small", "large", "thin", "thick"}
    assert 70 < sum(not scene.marks for scene in loud + ordinary) / 2 < 130
    assert [loud_share(step, 600) for step in (0, 199, 300, 400, 599)] == [1.0, 1.0, 0.5, 0.0, 0.0]


def test_local_reading_trains_projector_and_decoder_with_the_tower_frozen(tmp_path):
    model, processor = load_backbone(build_tiny_backbone(tmp_path / "tiny"))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    schedule = Schedule(steps=2, batch_size=2, learning_rate=1e-2)
    pretrain_local_reading(model, processor, 112, schedule, recall=Schedule(1, 2, 1e-3), log=None)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert not any("vision_tower" in name for name in changed)
    assert any("multi_modal_projector" in name for name in changed)
    assert any("language_model.layers.0.self_attn" in name for name in changed)


def test_scenes_know_no_anomaly_vocabulary():
    """Pre-training must not see defect-type names: GenAU's fine-tuning teaches defects."""
    names = {"anomaly", "anomalous", "defect", "defective", "normal"}
    for products in load_taxonomy().values():
        for defects in products.values():
            names.update(str(name).replace("_", " ") for name in defects)
    rng = np.random.default_rng(0)
    words = set()
    copy_questions = [copy_dialogue("word", draw_scene(rng).marks, index) for index in range(len(COPY_QUESTIONS))]
    for _ in range(300):
        for question, answer in [*questions(draw_scene(rng), rng), *copy_questions]:
            words.update(question.lower().replace("?", "").replace(".", "").replace(",", "").split())
            words.update(answer.lower().replace(".", "").replace(",", "").split())
    # "color"/"colour" and shape words are generic; the taxonomy's defect names otherwise do not occur
    assert words & names <= {"color", "spot", "line"}


def _taxonomy_words() -> set[str]:
    words = set()
    for products in load_taxonomy().values():
        for product, defects in products.items():
            words.update(product.lower().split("_"))
            for original, coarse in defects.items():
                for name in [str(original), *([coarse] if isinstance(coarse, str) else coarse)]:
                    words.update(name.lower().replace("_", " ").split())
    return words


def test_copy_task_repeats_tokens_that_no_genau_text_uses():
    """The targets are many, and none is a product, a defect name or a token of GenAU's own prompts and answers."""
    tokenizer = build_tiny_tokenizer(PRETRAINED_VOCAB, corpus())
    task = CopyTask.of(tokenizer)
    targets = set(tokenizer.convert_ids_to_tokens(list(task.targets)))
    assert len(targets) > 500  # on 157 whole words the decoder learned a look-up, not copying
    names = _taxonomy_words() | {"normal", "anomaly", "defect", "the", "is"}
    assert not targets & {f"Ġ{name}" for name in names}
    assert not targets & {token for text in inspection_texts() for token in tokenizer.tokenize(text)}
    assert not targets & {"<|im_start|>", "<|im_end|>", "<|endoftext|>", "<image>"}

    vocabulary = tokenizer.get_vocab()
    chosen = [vocabulary["Ġcircle"], vocabulary["es"]] * 8  # a whole word and a piece
    batch = copy_batch(tokenizer, task, chosen, np.random.default_rng(0))
    asked = {tokenizer.decode(ids).split("user\n")[1].split("<|im_end|>")[0] for ids in batch["input_ids"]}
    assert len(asked) > 4  # the questions take several sentence shapes
    for ids, labels, target in zip(batch["input_ids"], batch["labels"], chosen, strict=True):
        assert (ids == target).sum() == 2  # named in the question and repeated in the answer
        answer = tokenizer.convert_ids_to_tokens(labels[labels != -100])
        assert answer[:4] == ["No", ",", "Ġthe", tokenizer.convert_ids_to_tokens(target)]
        assert answer[-1] == "<|im_end|>" and len(answer) == 10  # the labels cover the answer alone


def test_stage_two_asks_the_copy_question_of_half_the_scenes(tmp_path):
    _, processor = load_backbone(build_tiny_backbone(tmp_path / "tiny"))
    task = CopyTask.of(processor.tokenizer)
    rng = np.random.default_rng(0)
    scenes = [draw_scene(rng) for _ in range(400)]
    drawn = [scene_dialogue(scene, rng, task) for scene in scenes]
    copied = [(scene, answer, target) for scene, ((_, answer), target) in zip(scenes, drawn, strict=True) if target]
    assert 0.4 < len(copied) / len(scenes) < 0.6
    assert len({target for _, _, target in copied}) > 100
    for scene, answer, target in copied:
        assert target in task.targets
        named = f"has {scene.marks[0].words}" if scene.marks else "has no marks"
        assert answer == f"{'Yes' if scene.marks else 'No'}, the {task.placeholder} {named}."
    assert all(target is None for _, target in (scene_dialogue(scene, rng) for scene in scenes))

    images = [render(scene, rng, 112) for scene in scenes[:2]]
    dialogues = [task.dialogue(scenes[0].marks), ("What is the background?", "Plain.")]
    inputs = dialogue_inputs(processor, images, dialogues)
    swapped = task.swap(inputs, [task.targets[7], None])
    assert (swapped["input_ids"][0] == task.targets[7]).sum() == 2
    assert (swapped["labels"][0] == task.targets[7]).sum() == 1
    assert torch.equal(swapped["input_ids"][1], inputs["input_ids"][1])
    with pytest.raises(ValueError, match="placeholder 0 times"):
        task.swap(inputs, [None, task.targets[7]])


def test_copy_task_trains_the_decoder_layers_and_stage_two_keeps_the_embeddings(tmp_path):
    model, processor = load_backbone(build_tiny_backbone(tmp_path / "tiny"))
    task = CopyTask.of(processor.tokenizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    pretrain_copying(model, processor.tokenizer, task, Schedule(steps=2, batch_size=2, learning_rate=1e-2))
    copied = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any("language_model.layers.0.self_attn" in name for name in copied)
    assert all("language_model.layers" in name or "language_model.norm" in name for name in copied)

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    pretrain_language(model, processor, 112, Schedule(steps=2, batch_size=2, learning_rate=1e-2), task=task)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any("multi_modal_projector" in name for name in changed)
    assert not any("vision_tower" in name or "embed_tokens" in name for name in changed)
    assert torch.equal(model.get_output_embeddings().weight, before["model.language_model.embed_tokens.weight"])


def test_pretraining_is_deterministic_and_checked(tmp_path, monkeypatch, capsys):
    schedule = Schedule(steps=2, batch_size=4, learning_rate=1e-3)
    first = pretrain_tiny_backbone(tmp_path / "a", seed=5, vision=schedule, language=schedule, log=None)
    second = pretrain_tiny_backbone(tmp_path / "b", seed=5, vision=schedule, language=schedule, log=None)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    # stage 1 skipped, its tower taken from the first: the same bytes again
    third = pretrain_tiny_backbone(tmp_path / "t", seed=5, language=schedule, log=None, tower_from=first)
    assert (third / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes()
    source = check_pretrained_backbone(third)["vision_tower_from"]
    assert source["seed"] == 5 and source["sha256"] == check_pretrained_backbone(first)["sha256"]
    assert "copy_schedule" not in check_pretrained_backbone(third)
    copying = pretrain_tiny_backbone(tmp_path / "c", 5, language=schedule, log=None, copying=schedule, tower_from=first)
    assert check_pretrained_backbone(copying)["copy_targets"] > 500
    assert (copying / "model.safetensors").read_bytes() != (first / "model.safetensors").read_bytes()
    # into the shipped stand-in's directory (a stand-in for it here, so that a regression writes nowhere else)
    monkeypatch.setattr("anomalib_genau.pretraining.artifact.SHIPPED_BACKBONE", first.resolve())
    with pytest.raises(PretrainedBackboneError, match="without the copy task"):
        pretrain_tiny_backbone(first, 5, language=schedule, log=None, copying=schedule, tower_from=first)
    monkeypatch.undo()
    # the demo keeps a rebuild found in its work folder (benchmarks use one), and says so
    shutil.copytree(copying, tmp_path / "demo" / DEMO_BACKBONE)
    monkeypatch.setattr("anomalib_genau.data.synthetic.generate_mvtec_dataset", lambda *args, **kwargs: None)
    prepare_demo_artifacts(tmp_path / "demo")
    assert "with the copy task: a rebuild, not the shipped one" in capsys.readouterr().out
    assert (tmp_path / "demo" / DEMO_BACKBONE / "model.safetensors").read_bytes() == (
        copying / "model.safetensors"
    ).read_bytes()
    (tmp_path / "towerless").mkdir()
    save_file({"weight": torch.zeros(2)}, tmp_path / "towerless" / "model.safetensors")
    with pytest.raises(PretrainedBackboneError, match="holds no vision tower"):
        pretrain_tiny_backbone(tmp_path / "x", 5, language=schedule, log=None, tower_from=tmp_path / "towerless")
    (tmp_path / "towerless" / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(PretrainedBackboneError, match="is unreadable"):
        pretrain_tiny_backbone(tmp_path / "x", 5, language=schedule, log=None, tower_from=tmp_path / "towerless")
    built = check_pretrained_backbone(first)
    assert built["seed"] == 5
    assert built["cpu"] == cpu_description()  # a rebuild on another machine need not write these bytes
    _, processor = load_backbone(first)
    assert processor.tokenizer.tokenize("Yes, the carpet is normal.")[:3] == ["Yes", ",", "Ġthe"]

    (second / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(PretrainedBackboneError, match="corrupt") as corrupt:
        check_pretrained_backbone(second)
    assert REBUILD_COMMAND in str(corrupt.value)
    manifest = json.loads((first / "pretraining.json").read_text())
    (first / "pretraining.json").write_text(json.dumps({**manifest, "version": 0}))
    with pytest.raises(PretrainedBackboneError, match="version 0"):
        check_pretrained_backbone(first)
    with pytest.raises(PretrainedBackboneError, match="missing"):
        install_pretrained_backbone(tmp_path / "c", source=tmp_path / "nowhere")


def test_stage_one_learns_from_a_batch_without_marks(tmp_path, monkeypatch):
    """A batch of bare backgrounds has no shape to learn: its shape loss is zero, not NaN."""
    monkeypatch.setattr(stages, "draw_scene", lambda rng: Scene(str(rng.choice(["plain", "noisy"])), "gray", ()))
    model, processor = load_backbone(build_tiny_backbone(tmp_path / "tiny"))
    logs: list[str] = []
    tower = stages.pretrain_vision_tower(model.config.vision_config, processor, Schedule(1, 2, 1e-3), log=logs.append)
    assert logs[0].endswith("shape loss 0.0000")
    assert all(torch.isfinite(value).all() for value in tower.values())


def test_shipped_tower_locates_marks_and_tells_their_shapes_in_its_patch_features():
    """Stage 1's grounding and shape losses: a mark's patches, and its shape, are readable from the final layer.

    On held-out scenes: the mean difference of marked and unmarked patches ranks the marked ones
    (AUROC), and the nearest shape mean names the shape of patches covered by one mark.
    """
    model, _ = load_backbone(SHIPPED_BACKBONE)
    tower, patch = model.model.vision_tower.eval(), model.config.vision_config.patch_size
    features, cover = tower_patches(tower, patch, seed=100, count=48)
    marked = cover.bool().any(-1)
    direction = features[marked].mean(0) - features[~marked].mean(0)  # the simplest linear reader
    held_out, held_out_cover = tower_patches(tower, patch, seed=101, count=48)
    assert binary_auroc(held_out @ direction, held_out_cover.bool().any(-1).long()) > 0.9

    named, commonest = nearest_shape_mean((features, cover), (held_out, held_out_cover))
    assert commonest < 0.4  # every shape occurs: naming the commonest one is far from the bar below
    assert named > 0.6


def test_shipped_backbone_installs_offline_and_reads_images(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory = install_pretrained_backbone(tmp_path / "genau-tiny")
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in SHIPPED_BACKBONE.iterdir())
    model, processor = load_backbone(directory)
    model.eval()
    # pre-trained image reading: the described colour of a lone large mark is the answer
    scene = Scene("plain", "gray", (Mark("circle", "red", "large", 1, 1),))
    image = render(scene, np.random.default_rng(0), 112)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many marks are there?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert processor.tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True) == "One."
    shutil.rmtree(directory)
