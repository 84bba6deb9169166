"""GenAU model package.

``GenAU`` (the Lightning module) loads on first access, so that deployment can import the
numerical core (``anyres``, ``decoding``, ``checkpoint``) without Lightning or peft. Importing
``lightning_model`` registers ``GenAU`` with anomalib.
"""

from typing import Any

__all__ = ["GenAU"]


def __getattr__(name: str) -> Any:
    """``GenAU`` on first access."""
    if name == "GenAU":
        from .lightning_model import GenAU

        return GenAU
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
