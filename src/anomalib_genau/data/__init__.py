"""GenAU data: the source/target datamodule, dialogue-carrying batches, synthetic datasets."""

from .dataclasses import GenAUBatch, GenAUItem
from .datamodule import GenAUDataModule, InstructionDataset
from .synthetic import generate_mvtec_dataset

__all__ = ["GenAUBatch", "GenAUDataModule", "GenAUItem", "InstructionDataset", "generate_mvtec_dataset"]
