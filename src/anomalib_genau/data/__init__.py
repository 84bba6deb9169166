"""GenAU data: source/target datamodules, dialogue-carrying batches, generated datasets.

The datamodules load on first access, so that deployment can read images
(``anomalib_genau.data.images``) without anomalib's data stack and Lightning.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "CrossDataset": "datamodule",
    "GenAUBatch": "dataclasses",
    "GenAUDataModule": "datamodule",
    "GenAUItem": "dataclasses",
    "InstructionDataset": "instruction_dataset",
    "generate_mvtec_dataset": "synthetic",
}
__all__ = ["CrossDataset", "GenAUBatch", "GenAUDataModule", "GenAUItem", "InstructionDataset", "generate_mvtec_dataset"]


def __getattr__(name: str) -> Any:
    """The datamodules, batches and generator on first access."""
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
