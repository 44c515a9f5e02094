"""RunResult: everything one training run produced, as plain data (JSON-serializable)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunResult:
    status: str                                   # finished | diverged | failed
    epochs: list[dict[str, float]] = field(default_factory=list)  # one row per epoch, "epoch" is 1-based
    final: dict[str, float] = field(default_factory=dict)        # metrics after the last epoch
    time_per_step: float = float("nan")           # seconds, mean over training steps after warm-up
    train_seconds: float = 0.0                    # training time, evaluation excluded
    peak_memory: int = 0                          # bytes: CUDA max allocated, or process peak RSS on CPU
    params: int = 0
    trainable_params: int = 0
    optimizer_state_bytes: int = 0
    diverged_step: int | None = None
    error: str | None = None
    data_fingerprint: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] | None = None           # final model state_dict, only when asked for (tests)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("state", None)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
