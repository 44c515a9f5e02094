"""Named benchmark tasks, and users' own tasks given as `path/to/file.py:name`.

Budgets are sized for a 2-core laptop CPU; `suite_seconds` records the measured time of one run
here (the harness uses it to plan and to report expected suite times).
"""
from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from typing import Any

from torch import nn

from trainlab.errors import ConfigError
from trainlab.tasks.task import DataBundle, Task


# Factories are module-level functions (not lambdas) so tasks pickle for worker processes.
def _data(name: str, **kwargs: Any) -> DataBundle:
    if name == "blobs":
        from trainlab.tasks.synthetic import blobs

        return blobs(**kwargs)
    from trainlab.tasks import datasets

    return getattr(datasets, name)(**kwargs)


def _model(kind: str, input_shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> nn.Module:
    from trainlab.tasks.models import build_model

    return build_model(kind, input_shape, num_classes, **kwargs)


def _task(name: str, data: str, model: str, **fields: Any) -> Task:
    return Task(name=name, make_data=functools.partial(_data, data), make_model=functools.partial(_model, model), **fields)


def _stdlib_lm_task() -> Task:
    from trainlab.tasks.language import char_gru, lm_evaluate, lm_loss

    return Task(name="stdlib-char-gru", make_data=functools.partial(_data, "stdlib_text"), make_model=char_gru,
                loss_fn=lm_loss, evaluate=lm_evaluate, epochs=4, batch_size=64, optimizer="adam", lr=3e-3,
                weight_decay=0.0, schedule="cosine", data_kwargs={"seq_len": 64},
                model_kwargs={"embed": 32, "hidden": 128},
                description="next-character prediction on Python standard-library source files, 1-layer GRU, "
                            "Adam; not classification: reports test_ppl (perplexity) and test_bits_per_char")


def _maestro_tasks() -> list[Task]:
    # the linear-autoencoder task of the Maestro PCA claims (trainlab.techniques.compression.maestro)
    from trainlab.techniques.compression.maestro import pca_task

    return [pca_task()]


def _stability_tasks() -> list[Task]:
    # square-loss tasks of the dynamical-stability claims (trainlab.diagnostics.stability)
    from trainlab.diagnostics.stability import digits_parity, half_squared_error, scalar_mlp, square_loss_evaluate

    plain = dict(optimizer="sgd", momentum=0.0, weight_decay=0.0, schedule="constant", train_subset=1000,
                 evaluate=square_loss_evaluate)
    return [
        Task(name="digits-tanh-mse", make_data=functools.partial(_data, "digits"),
             make_model=functools.partial(_model, "mlp"), loss_fn=half_squared_error, epochs=600, batch_size=1000,
             lr=0.1, model_kwargs={"width": 128, "depth": 2, "activation": "tanh"}, **plain,
             description="digits, 1000 training images, tanh MLP, half squared error on one-hot targets, "
                         "full-batch GD (one step per epoch): the edge-of-stability setting"),
        Task(name="digits-parity-mse", make_data=digits_parity, make_model=scalar_mlp, loss_fn=half_squared_error,
             epochs=10, batch_size=1, lr=0.05, model_kwargs={"width": 128, "depth": 2}, **plain,
             description="digits, 1000 training images, scalar target (+1 odd, -1 even), ReLU MLP with one output, "
                         "half squared error, SGD batch size 1: the SGD linear-stability setting"),
    ]


def _transfer_tasks() -> list[Task]:
    # pretrain-then-adapt tasks of the adapter claims (trainlab.techniques.compression.adapters)
    from trainlab.techniques.compression.adapters import transfer_tasks

    return transfer_tasks()


def _taxonomy_tasks() -> list[Task]:
    # taxonomy-shift tasks (new target classes, few target labels): trajectory distillation's module
    from trainlab.techniques.domain.trajectory_distillation import taxonomy_tasks

    return taxonomy_tasks()


def _domain_tasks() -> list[Task]:
    # multi-domain tasks (Rotated / Colored MNIST, MNIST <-> digits): trainlab.tasks.domains
    from trainlab.tasks.domains import domain_tasks

    return domain_tasks()


TASKS: dict[str, Task] = {t.name: t for t in [
    _task("blobs-mlp", "blobs", "mlp", epochs=4, batch_size=32, lr=0.05, weight_decay=0.0,
          model_kwargs={"width": 32, "depth": 2},
          description="Gaussian blobs (16-dim, 4 classes), small MLP: a sub-second smoke task"),
    _task("digits-mlp", "digits", "mlp", epochs=10, batch_size=64, lr=0.05, weight_decay=5e-4,
          model_kwargs={"width": 128, "depth": 2},
          description="scikit-learn digits (8x8), 2-layer MLP, SGD+momentum, 10 epochs"),
    _task("digits-cnn", "digits", "cnn", epochs=15, batch_size=64, lr=0.05, weight_decay=5e-4,
          model_kwargs={"channels": (32, 64)},
          description="scikit-learn digits (8x8), small BatchNorm CNN, SGD+momentum, 15 epochs"),
    _task("mnist1d-mlp", "mnist1d", "mlp", epochs=20, batch_size=128, optimizer="adam", lr=2e-3, weight_decay=0.0,
          model_kwargs={"width": 256, "depth": 2},
          description="MNIST-1D (generated locally, 40-dim signals), MLP, Adam, 20 epochs"),
    _task("mnist1d-cnn", "mnist1d", "cnn", epochs=15, batch_size=128, optimizer="adam", lr=3e-3, weight_decay=0.0,
          model_kwargs={"channels": (32, 64, 64)}, augment="shift",
          description="MNIST-1D, 1-D BatchNorm CNN, Adam, 15 epochs"),
    _task("cifar10-cnn", "cifar10", "cnn", epochs=8, batch_size=128, lr=0.05, weight_decay=5e-4, train_subset=10_000,
          model_kwargs={"channels": (16, 32, 64)}, augment="crop-flip",
          description="CIFAR-10, 10k-image train subset, small BatchNorm CNN, 8 epochs"),
    _task("cifar10-resnet", "cifar10", "resnet", epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4,
          model_kwargs={"depth": 20, "width": 16}, augment="crop-flip",
          description="CIFAR-10, full data, ResNet-20, SGD+momentum, 30 epochs"),
    _task("modarith-transformer", "modular_arithmetic", "transformer", epochs=60, batch_size=256, optimizer="adamw",
          lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98), schedule="constant", warmup_epochs=2,
          data_kwargs={"p": 97, "op": "+", "train_fraction": 0.4},
          model_kwargs={"vocab_size": 99, "dim": 128, "depth": 2, "heads": 4},
          description="(a + b) mod 97 from 40% of pairs, 2-layer transformer, AdamW wd=1 (grokking setting)"),
    _task("seq-transformer", "synthetic_sequence", "transformer", epochs=15, batch_size=128, optimizer="adamw",
          lr=1e-3, weight_decay=0.01, schedule="cosine", warmup_epochs=1,
          model_kwargs={"vocab_size": 8, "dim": 64, "depth": 2, "heads": 4},
          description="synthetic sequence classification needing attention, 2-layer transformer"),
    _stdlib_lm_task(),
    *_stability_tasks(),
    *_maestro_tasks(),
    *_transfer_tasks(),
    *_domain_tasks(),
    *_taxonomy_tasks(),
]}


def task_names() -> list[str]:
    return sorted(TASKS)


def get_task(ref: str | Task) -> Task:
    """A named task, or `file.py:attr` naming a Task (or a function returning one) in a user's file."""
    if isinstance(ref, Task):
        return ref
    if ref in TASKS:
        return TASKS[ref]
    if ":" in ref and ref.split(":", 1)[0].endswith(".py"):
        return load_user_task(ref)
    raise ConfigError(f"unknown task '{ref}' (known: {', '.join(task_names())}; or give file.py:name)")


def load_user_task(ref: str) -> Task:
    path_str, attr = ref.rsplit(":", 1)
    path = Path(path_str).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"task file '{path_str}' does not exist")
    mod_name = f"trainlab_user_tasks_{abs(hash(str(path)))}"
    module = sys.modules.get(mod_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"task file '{path_str}' cannot be imported")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[mod_name]
            raise ConfigError(f"task file '{path_str}' failed to import: {type(e).__name__}: {e}") from None
        import cloudpickle

        # the file is not importable by name in worker processes: send its functions by value
        cloudpickle.register_pickle_by_value(module)
    obj = getattr(module, attr, None)
    if obj is None:
        raise ConfigError(f"task file '{path_str}' has no '{attr}'")
    if callable(obj) and not isinstance(obj, Task):
        obj = obj()
    if not isinstance(obj, Task):
        raise ConfigError(f"'{ref}' is not a trainlab Task (got {type(obj).__name__})")
    return obj
