"""GenAU model package; importing it registers ``GenAU`` with anomalib."""

import anomalib.models as _anomalib_models

from .lightning_model import GenAU

__all__ = ["GenAU"]

# get_model({"class_path": "GenAU"}) looks the name up on anomalib.models (dotted paths
# outside anomalib.models are refused by its ALLOWED_MODULES), so expose the class there.
if not hasattr(_anomalib_models, "GenAU"):
    _anomalib_models.GenAU = GenAU
