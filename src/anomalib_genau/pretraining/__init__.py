"""A pre-trained tiny stand-in: the tiny LLaVA-OneVision trained offline on generic generated scenes.

``pretrain_tiny_backbone`` runs the stages (:mod:`.stages`) and writes the checkpoint with a
manifest; the repository ships the result (:data:`SHIPPED_BACKBONE`) and
``install_pretrained_backbone`` copies it after checking the manifest.
"""

from .artifact import (
    ARTIFACT_VERSION,
    MANIFEST,
    REBUILD_COMMAND,
    SHIPPED_BACKBONE,
    PretrainedBackboneError,
    check_pretrained_backbone,
    install_pretrained_backbone,
    pretrain_tiny_backbone,
)

__all__ = [
    "ARTIFACT_VERSION",
    "MANIFEST",
    "REBUILD_COMMAND",
    "SHIPPED_BACKBONE",
    "PretrainedBackboneError",
    "check_pretrained_backbone",
    "install_pretrained_backbone",
    "pretrain_tiny_backbone",
]
