"""anomalib-genau: the GenAU vision-language anomaly model as an anomalib plugin.

Installing the package registers ``GenAU`` with anomalib: ``anomalib train --model GenAU``,
``anomalib.models.get_model("GenAU")`` and ``{"class_path": "GenAU"}`` configs find it.
"""

import anomalib.models as _anomalib_models

from anomalib_genau.models.genau import GenAU

__all__ = ["GenAU"]
__version__ = "0.1.0"

# get_model({"class_path": "GenAU"}) looks the name up on anomalib.models (dotted paths
# outside anomalib.models are refused by its ALLOWED_MODULES), so expose the class there.
if not hasattr(_anomalib_models, "GenAU"):
    _anomalib_models.GenAU = GenAU
