"""The inspection station: a browser page and an HTTP API on GenAU's OpenVINO export.

``anomalib-genau serve EXPORT`` (the ``app`` extra: ``pip install anomalib-genau[app]``).
:mod:`.station` does the work, :mod:`.page` is the Gradio page and API, :mod:`.serve` starts it.
"""
