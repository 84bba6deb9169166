"""anomalib-genau: the GenAU vision-language anomaly model as an anomalib plugin.

Installing the package registers ``GenAU`` with anomalib: ``anomalib train --model GenAU``,
``anomalib.models.get_model("GenAU")`` and ``{"class_path": "GenAU"}`` configs find it (see
``anomalib_genau.models.genau``). Importing this package loads neither anomalib nor torch:
``GenAU`` is imported on first access, so ``anomalib-genau --help`` and the lightweight
modules (prompts, taxonomy) start at once.
"""

from typing import Any

__all__ = ["GenAU"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``GenAU`` on first access (importing it registers it with anomalib)."""
    if name == "GenAU":
        from anomalib_genau.models.genau import GenAU

        globals()["GenAU"] = GenAU
        return GenAU
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
