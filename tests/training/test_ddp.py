"""Two processes under torchrun (DDP, gloo on CPU) end with the weights of one process that
trains on the same global batch."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from trainlab.tasks.registry import get_task
from trainlab.training.trainer import run_training

TASK = get_task("blobs-mlp").with_overrides({"epochs": 2, "batch_size": 32})

SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from trainlab.tasks.registry import get_task
    from trainlab.training.technique import Technique
    from trainlab.training.trainer import run_training

    class BatchSizes(Technique):
        name = "batch-sizes"
        def __init__(self):
            super().__init__()
            self.sizes = set()
        def transform_batch(self, batch, state):
            self.sizes.add(len(batch.indices))
            return batch

    task = get_task("blobs-mlp").with_overrides({"epochs": 2, "batch_size": 32})
    probe = BatchSizes()
    result = run_training(task, [probe], seed=7, keep_state=True)
    if dist.get_rank() == 0:
        torch.save({"state": result.state, "world": dist.get_world_size(), "status": result.status,
                    "local_batch": sorted(probe.sizes)}, sys.argv[1])
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "ddp_state.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    assert ddp["world"] == 2 and ddp["status"] == "finished"
    assert ddp["local_batch"] == [16]  # each process trained on half of every global batch
    single = run_training(TASK, seed=7, keep_state=True).state
    assert ddp["state"].keys() == single.keys()
    for k in single:
        torch.testing.assert_close(ddp["state"][k], single[k], atol=1e-5, rtol=0)
