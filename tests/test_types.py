"""Defect types and reasoning: likelihood scoring, the training mix, the instruction file, the outputs."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from anomalib_genau import GenAU, prompts
from anomalib_genau.data import CrossDataset, GenAUBatch
from anomalib_genau.data.instruction_file import InstructionFileError
from anomalib_genau.data.synthetic import generate_mvtec_dataset
from anomalib_genau.models.genau.torch_decoding import option_log_likelihoods
from anomalib_genau.models.genau.torch_model import GenAUModel

CANDIDATES = [["color", "hole", "tear"], ["crack", "contamination"]]


def _type_prompts() -> list[str]:
    return [prompts.type_instruction("carpet", CANDIDATES[0]), prompts.type_instruction("tile", CANDIDATES[1])]


def test_option_likelihoods_equal_a_full_forward(torch_model: GenAUModel) -> None:
    torch_model.eval()
    images = torch.rand(2, 3, 112, 140)
    chats = [torch_model.codec.chat(text) for text in _type_prompts()]
    encoded = torch_model.processor(
        images=list(images), text=chats, return_tensors="pt", padding=True, do_rescale=False
    )
    vision = torch_model.see(images)
    tokenizer = torch_model.processor.tokenizer
    options = [[[], *([name] for name in names)] for names in CANDIDATES]
    ids = [[tokenizer(prompts.type_answer(t), add_special_tokens=False)["input_ids"] for t in o] for o in options]
    prefill = torch_model.prefill_inputs(torch_model.prompts(vision, _type_prompts()), vision)
    scores = option_log_likelihoods(torch_model.llava, prefill, ids, torch_model.codec.pad_id)
    assert [score.shape[0] for score in scores] == [4, 3]
    for row in range(2):
        for k, option in enumerate(ids[row]):
            sequence = torch.cat([encoded["input_ids"][row : row + 1], torch.tensor([option])], dim=1)
            mask = torch.ones_like(sequence)
            mask[:, : encoded["input_ids"].shape[1]] = encoded["attention_mask"][row]
            with torch.no_grad():
                logits = torch_model.llava(
                    input_ids=sequence,
                    attention_mask=mask,
                    position_ids=torch_model.position_ids(mask),
                    pixel_values=encoded["pixel_values"][row : row + 1],
                    image_sizes=encoded["image_sizes"][row : row + 1],
                ).logits[0]
            log_probs = logits[-len(option) - 1 : -1].float().log_softmax(-1)
            expected = log_probs.gather(1, torch.tensor(option)[:, None]).sum()
            assert float(scores[row][k]) == pytest.approx(float(expected), abs=1e-4)


def test_both_type_modes_answer_within_the_candidates(torch_model: GenAUModel) -> None:
    torch_model.eval()
    vision = torch_model.see(torch.rand(2, 3, 112, 112))
    for mode in ("generate", "likelihood"):
        prediction = torch_model.predict_types(vision, _type_prompts(), CANDIDATES, mode)
        assert len(prediction.types) == len(prediction.outcomes) == len(prediction.texts) == 2
        for types, names in zip(prediction.types, CANDIDATES, strict=True):
            assert set(types) <= set(names)
    assert set(prediction.outcomes) == {"likelihood"}
    assert len(torch_model.predict_types(vision, _type_prompts(), CANDIDATES, "likelihood").types[0]) <= 1
    with pytest.raises(ValueError, match="Unknown defect type mode 'vote'"):
        torch_model.predict_types(vision, _type_prompts(), CANDIDATES, "vote")


@pytest.fixture(scope="module")
def mix_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_mvtec_dataset(tmp_path_factory.mktemp("mix"), n_train=0, n_test_good=4, n_test_per_defect=4)


@pytest.mark.parametrize(("ratio", "expected"), [(0.0, 0), (1.0, 1), (0.5, 0.5)])
def test_training_mixes_binary_and_multi_type_instructions(mix_root: Path, ratio: float, expected: float) -> None:
    datamodule = CrossDataset(source="MVTecAD", source_root=mix_root, target=None, multi_type_ratio=ratio)
    datamodule.setup()
    items = [datamodule.train_data[i] for i in range(len(datamodule.train_data))]
    typed = [item for item in items if item.instruction == item.type_instruction]
    assert len(typed) / len(items) == pytest.approx(expected, abs=0.15)
    for item in typed:
        assert item.response == prompts.with_segmentation_tokens(
            prompts.type_answer(item.defect_type.split(", ") if item.defect_type else [])
        )
    validation = [datamodule.val_data[i] for i in range(len(datamodule.val_data))]
    assert all(item.instruction.startswith("Is there any anomaly") for item in validation)  # evaluation: binary


def test_instruction_file_adds_question_answer_records(mix_root: Path, tmp_path: Path) -> None:
    shutil.copytree(mix_root / "carpet", tmp_path / "carpet")
    records = [
        {
            "image": "carpet/test/hole/000.png",
            "mask": "carpet/ground_truth/hole/000_mask.png",
            "question": "Describe the defect.",
            "answer": "A dark round hole in the weave.",
            "category": "carpet",
        },
        {
            "image": "carpet/test/good/000.png",
            "label": "normal",
            "question": "Describe the defect.",
            "answer": "There is no defect.",
        },
    ]
    file = tmp_path / "descriptions.jsonl"
    file.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    datamodule = CrossDataset(source="MVTecAD", source_root=mix_root, target=None, instruction_file=file)
    datamodule.setup()
    samples = datamodule.train_data.samples
    described = samples[samples.question.notna()] if "question" in samples else samples.iloc[:0]
    assert len(described) == 2
    items = [
        datamodule.train_data[i]
        for i in range(len(datamodule.train_data))
        if "Describe" in datamodule.train_data[i].instruction
    ]
    answers = {item.response for item in items}
    assert answers == {
        "A dark round hole in the weave. [SEG_defect] [SEG_normal]",
        "There is no defect. [SEG_defect] [SEG_normal]",
    }
    assert {int(item.gt_mask.sum() > 0) for item in items} == {0, 1}
    file.write_text(json.dumps({"image": "carpet/test/hole/000.png", "question": "Q", "answer": "A"}) + "\n")
    with pytest.raises(InstructionFileError, match=r"line 1: an anomalous image needs a \"mask\""):
        CrossDataset(source="MVTecAD", source_root=mix_root, target=None, instruction_file=file).setup()


def test_test_step_fills_types_and_reasoning_and_the_map(tiny_backbone: Path, mix_root: Path) -> None:
    model = GenAU(
        backbone=str(tiny_backbone),
        max_new_tokens=6,
        defect_type_mode="likelihood",
        reasoning_questions=["Describe the defect."],
        max_reasoning_tokens=5,
    ).eval()
    datamodule = CrossDataset(
        source="MVTecAD", source_root=mix_root, target="MVTecAD", target_root=mix_root, eval_batch_size=3
    )
    datamodule.setup()
    batch: GenAUBatch = next(iter(datamodule.test_dataloader()))
    batch = batch.update(image=model.pre_processor.transform(batch.image))
    tower_calls, processor_calls = [], []
    model.model.llava.model.vision_tower.register_forward_hook(lambda *_: tower_calls.append(1))
    image_processor = model.model.processor.image_processor
    preprocess = image_processor.preprocess
    image_processor.preprocess = lambda *args, **kwargs: processor_calls.append(1) or preprocess(*args, **kwargs)
    output = model.test_step(batch, 0)
    del image_processor.preprocess
    # the binary, type and reasoning questions share one image processing and one vision pass
    assert len(tower_calls) == len(processor_calls) == 1
    assert all(isinstance(names, list) and names for names in batch.type_candidates)
    unshared = model.model.predict_types(
        model.model.see(batch.image), batch.type_instruction, batch.type_candidates, "likelihood"
    )
    assert output.pred_defect_type == unshared.types
    assert output.pred_types.shape == output.gt_types.shape == (3, output.gt_types.shape[1])
    assert (output.pred_types.sum(dim=1) == 1).all()  # likelihood: exactly one option
    assert all(" Describe the defect. " in text for text in output.explanation)
    assert output.anomaly_map.shape[0] == 3
    assert output.pred_defect_type is not None
    assert len(output.pred_defect_type) == 3


def test_drafts_are_the_trained_responses(torch_model: GenAUModel) -> None:
    """The answers ``drafted_decode`` checks: the responses training teaches, each once, with the segmentation pair."""
    codec = torch_model.codec
    pair = [codec.seg_ids.defect, codec.seg_ids.normal]
    drafts = codec.answer_drafts("carpet", ["hole", "color", "hole"])
    texts = [codec.texts([ids[:-2]])[0] for ids in drafts]
    assert texts == ["No, the carpet is normal.", "Yes, anomaly.", "Yes, hole.", "Yes, color."]
    assert all(ids[-2:] == pair for ids in drafts)
    assert drafts[2] == codec.tokenizer(prompts.response("carpet", ["hole"]), add_special_tokens=False)["input_ids"]
    types = codec.type_drafts(["hole", "metal_contamination"])
    assert [codec.texts([ids[:-2]])[0] for ids in types] == ["normal.", "hole.", "metal contamination."]
    assert all(ids[-2:] == pair for ids in types)
