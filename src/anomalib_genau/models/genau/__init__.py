"""GenAU model package."""

from .lightning_model import GenAU

__all__ = ["GenAU"]
