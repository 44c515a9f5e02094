"""trainlab: training techniques from research papers, each with its paper's claim and a harness
that checks the claim against a baseline, with statistics, on your own hardware."""
__version__ = "0.1.0"

from trainlab.errors import CheckpointError, ConfigError, DataError, UserError  # noqa: E402
from trainlab.tasks.task import DataBundle, Task  # noqa: E402
from trainlab.training.technique import Batch, Paper, Technique, TrainState  # noqa: E402

__all__ = ["Task", "DataBundle", "Technique", "Batch", "TrainState", "Paper", "UserError", "ConfigError",
           "DataError", "CheckpointError", "__version__"]


def __getattr__(name: str):
    # the harness and trainer import lazily, so `import trainlab` stays light
    if name in ("check", "check_all", "run_suite"):
        from trainlab.claims import api

        return getattr(api, name)
    if name == "run_training":
        from trainlab.training.trainer import run_training

        return run_training
    raise AttributeError(f"module 'trainlab' has no attribute '{name}'")
