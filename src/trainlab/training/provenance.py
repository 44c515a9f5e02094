"""Where a result came from: code version, torch version, device, threads."""
from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    from trainlab import __version__

    root = Path(__file__).resolve().parents[3]
    if (root / ".git").exists():
        try:
            rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, timeout=5).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            if rev:
                return f"{__version__}+g{rev}{'.dirty' if dirty else ''}"
        except (OSError, subprocess.SubprocessError):
            pass
    return __version__


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def provenance(device: torch.device, world_size: int = 1) -> dict[str, Any]:
    return {
        "code_version": code_version(), "torch_version": torch.__version__, "python": platform.python_version(),
        "device": device_name(device), "threads": torch.get_num_threads(), "world_size": world_size,
    }
