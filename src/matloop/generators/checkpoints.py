"""Checkpoint files before torch reads them: the sha256 beside them, and the error type.

Kept free of torch, so the pre-flight can refuse a checkpoint without a matching
``<path>.sha256`` in well under a second; only a file that passes is handed to
``torch.load(..., weights_only=True)`` (see :mod:`matloop.generators.torch_common`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class CheckpointError(ValueError):
    """A checkpoint that must not be loaded; the message is one line saying why and what
    to do."""


def check_checkpoint_hash(path: str | Path, trust: bool = False) -> str:
    """The file's sha256, refused unless ``<path>.sha256`` beside it records the same.

    ``trust=True`` (``--trust-checkpoint``, ``trust: true``) accepts a missing or wrong
    sidecar: the file's bytes were then checked by someone, not by matloop.
    """
    path = Path(path)
    sha = file_sha256(path)
    if trust:
        return sha
    sidecar = Path(f"{path}.sha256")
    if not sidecar.is_file():
        raise CheckpointError(
            f"{path}: no {sidecar.name} beside it, so its contents cannot be checked; "
            "use the file `matloop train` wrote, or pass --trust-checkpoint (trust: true "
            "in the campaign file) if you made it yourself"
        )
    recorded = (sidecar.read_text().split() or [""])[0]
    if recorded != sha:
        raise CheckpointError(
            f"{path}: does not match its recorded sha256 ({sidecar.name}); the file was "
            "changed after it was written. Retrain it, or pass --trust-checkpoint if you "
            "changed it on purpose"
        )
    return sha
