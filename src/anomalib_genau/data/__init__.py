"""GenAU data: source/target datamodules, dialogue-carrying batches, generated datasets."""

from .dataclasses import GenAUBatch, GenAUItem
from .datamodule import CrossDataset, GenAUDataModule, InstructionDataset
from .synthetic import generate_mvtec_dataset

__all__ = ["CrossDataset", "GenAUBatch", "GenAUDataModule", "GenAUItem", "InstructionDataset", "generate_mvtec_dataset"]
