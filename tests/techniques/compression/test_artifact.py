import pytest
import torch

from trainlab.errors import CheckpointError, ConfigError
from trainlab.techniques.compression.artifact import (dense_bytes, load_artifact, pack_bits, save_artifact,
                                                      unpack_bits)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("numel", [1, 7, 8, 33])
def test_pack_round_trip_and_size(bits, numel):
    g = torch.Generator().manual_seed(bits * 100 + numel)
    values = torch.randint(0, 2 ** bits, (numel,), generator=g)
    packed = pack_bits(values, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-numel * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, numel), values)


def test_pack_known_bytes():
    # 4-bit values 1, 2 -> one byte 0x21 (low nibble first); 2-bit 3,0,1,2 -> 0b10_01_00_11
    assert pack_bits(torch.tensor([1, 2]), 4).tolist() == [0x21]
    assert pack_bits(torch.tensor([3, 0, 1, 2]), 2).tolist() == [0b10010011]


def test_pack_refuses_out_of_range():
    with pytest.raises(ConfigError):
        pack_bits(torch.tensor([4]), 2)
    with pytest.raises(ConfigError):
        pack_bits(torch.tensor([1]), 9)
    with pytest.raises(ConfigError):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), 4, 3)


def test_artifact_round_trip_and_errors(tmp_path):
    t = {"w": torch.arange(6.0).reshape(2, 3), "idx": pack_bits(torch.tensor([1, 0, 3]), 2)}
    size = save_artifact(tmp_path / "m.pt", "nm-sparsity", t, {"shape": [2, 3], "bits": 2})
    assert size == (tmp_path / "m.pt").stat().st_size
    tensors, meta = load_artifact(tmp_path / "m.pt", method="nm-sparsity")
    assert torch.equal(tensors["w"], t["w"]) and meta == {"shape": [2, 3], "bits": 2}
    with pytest.raises(CheckpointError, match="written by"):
        load_artifact(tmp_path / "m.pt", method="qat")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_artifact(tmp_path / "bad.pt")
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a trainlab"):
        load_artifact(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_artifact(tmp_path / "missing.pt")


def test_dense_bytes_counts_parameters_and_buffers():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    assert dense_bytes(m) == (12 + 4 + 4 + 4) * 4 + (4 + 4) * 4 + 8  # BN num_batches_tracked is int64
