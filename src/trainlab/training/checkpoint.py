"""Checkpoints: written atomically (temp file + rename), read with weights_only=True."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from trainlab.errors import CheckpointError


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write `payload` so that a crash leaves either the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True; any problem becomes one CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # corrupt, truncated, not a torch file, or holding arbitrary objects
        raise CheckpointError(
            f"checkpoint '{path}' is unreadable or corrupt (or holds objects other than tensors and plain values)"
        ) from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(f"checkpoint '{path}' is not a trainlab checkpoint")
    if "removed_groups" in payload and "identity" not in payload:
        raise CheckpointError(f"checkpoint '{path}' is a pruned subnet file, not a training checkpoint "
                              "(load it with trainlab.techniques.pruning.cli.load_subnet)")
    return payload
