"""Compressed-model files, and the bit packing they use.

A compressed model is written as one file holding tensors and plain values only (so it loads with
`torch.load(weights_only=True)`): {"format": "trainlab-compressed", "version": 1, "method": str,
"meta": dict, "tensors": {name: tensor}}. Each method decides what its tensors are (N:M values
and packed in-group indices, packed integer weights and scales, low-rank factors) and rebuilds its
layers from them; the file's size on disk is the size to compare with the dense model's.

Bit packing: integers in [0, 2**bits) stored `bits` bits each in a uint8 tensor, for any bits in
1..8 (an in-group index of 1:16 sparsity needs 4 bits, a 3-bit weight 3 bits).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from trainlab.errors import CheckpointError, ConfigError

ARTIFACT_FORMAT = "trainlab-compressed"
ARTIFACT_VERSION = 1


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integers in [0, 2**bits) into a flat uint8 tensor of ceil(numel * bits / 8) bytes
    (little-endian bit order). Unpack with unpack_bits(packed, bits, numel)."""
    _check_bits(bits)
    flat = values.detach().reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2 ** bits):
        raise ConfigError(f"pack_bits: values must lie in [0, {2 ** bits}) for {bits} bits")
    if bits == 8:
        return flat.to(torch.uint8)
    shifts = torch.arange(bits, dtype=torch.int64)
    bitstream = ((flat.unsqueeze(1) >> shifts) & 1).reshape(-1)        # bits of each value, low first
    pad = (-bitstream.numel()) % 8
    bitstream = torch.cat([bitstream, bitstream.new_zeros(pad)]).reshape(-1, 8)
    return (bitstream << torch.arange(8, dtype=torch.int64)).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """The int64 values pack_bits packed (the first `numel` of them)."""
    _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise ConfigError(f"unpack_bits: expected a uint8 tensor, got {packed.dtype}")
    if packed.numel() * 8 < numel * bits:
        raise ConfigError(f"unpack_bits: {packed.numel()} bytes cannot hold {numel} values of {bits} bits")
    if bits == 8:
        return packed[:numel].to(torch.int64)
    bitstream = ((packed.to(torch.int64).unsqueeze(1) >> torch.arange(8, dtype=torch.int64)) & 1).reshape(-1)
    bitstream = bitstream[:numel * bits].reshape(numel, bits)
    return (bitstream << torch.arange(bits, dtype=torch.int64)).sum(1)


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ConfigError(f"bits must be a whole number from 1 to 8, got {bits!r}")


def save_artifact(path: str | os.PathLike, method: str, tensors: Mapping[str, torch.Tensor],
                  meta: Mapping[str, Any] | None = None) -> int:
    """Write a compressed model atomically; returns the file's size in bytes. `meta` holds plain
    values only (numbers, strings, lists, dicts), e.g. layer shapes and bit widths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION, "method": method,
               "meta": dict(meta or {}), "tensors": {k: v.detach().cpu().contiguous() for k, v in tensors.items()}}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path.stat().st_size


def load_artifact(path: str | os.PathLike, method: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a compressed-model file, read with weights_only=True; a missing, corrupt
    or foreign file (or one written by another method than `method`) is one CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"compressed model '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise CheckpointError(f"compressed model '{path}' is unreadable or corrupt") from None
    if not isinstance(payload, dict) or payload.get("format") != ARTIFACT_FORMAT:
        raise CheckpointError(f"'{path}' is not a trainlab compressed-model file")
    if payload.get("version") != ARTIFACT_VERSION:
        raise CheckpointError(f"compressed model '{path}' has version {payload.get('version')}, "
                              f"this trainlab reads version {ARTIFACT_VERSION}")
    if method is not None and payload.get("method") != method:
        raise CheckpointError(f"compressed model '{path}' was written by '{payload.get('method')}', not '{method}'")
    return dict(payload["tensors"]), dict(payload["meta"])


def dense_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers as stored densely (the comparison for a
    compressed file's size)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
