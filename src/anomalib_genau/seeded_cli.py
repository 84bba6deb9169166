"""anomalib's CLI, seeded as its config says."""

from __future__ import annotations

from anomalib.cli import AnomalibCLI
from lightning.pytorch import seed_everything


class SeededAnomalibCLI(AnomalibCLI):
    """``AnomalibCLI`` that runs Lightning's ``seed_everything`` before it instantiates the classes.

    anomalib's CLI (2.x) accepts ``seed_everything`` in a config but never applies it, so a
    config's ``seed_everything: 0`` left GenAU's initial readout, LoRA and new-token weights,
    and the shuffling, random from run to run. Lightning's own CLI seeds at this point; this
    does the same: an int seeds with that value, ``true`` with a random seed, ``false`` not at all.
    """

    def before_instantiate_classes(self) -> None:
        """Seed, then let anomalib adapt the config."""
        seed = self._get(self.config, "seed_everything")
        if seed is not False and seed is not None:
            seed_everything(None if seed is True else int(seed), workers=True)
        super().before_instantiate_classes()
