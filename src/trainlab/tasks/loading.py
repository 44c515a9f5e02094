"""Loading a task's data: make_data, then the wrappers, cached per process."""
from __future__ import annotations

import json
from typing import Any

from trainlab.errors import ConfigError
from trainlab.tasks.task import DataBundle, Task

_CACHE: dict[str, DataBundle] = {}
_MAX_CACHED = 4


def _key(task: Task, seed: int) -> str:
    data = {k: v for k, v in task.budget().items()
            if k in ("data_kwargs", "train_subset", "label_noise", "noise_kind", "imbalance", "shift",
                     "holdout_validation")}
    return json.dumps([task.name, repr(task.make_data), data, seed], sort_keys=True, default=repr)


def load_task_data(task: Task, seed: int = 0) -> DataBundle:
    """The task's data with its wrappers applied. Label noise and subsets depend on `seed`, so
    both arms of a claim see the same data for the same seed."""
    key = _key(task, seed)
    if key in _CACHE:
        return _CACHE[key]
    from trainlab.training.validate import call_user

    bundle = call_user(task.make_data, "make_data", task.name, **dict(task.data_kwargs))
    if not isinstance(bundle, DataBundle):
        raise ConfigError(f"task '{task.name}': make_data must return a trainlab DataBundle, got {type(bundle).__name__}")
    if task.train_subset or task.label_noise or task.imbalance or task.shift:
        from trainlab.tasks.wrappers import apply_wrappers

        bundle = apply_wrappers(
            bundle, train_subset=task.train_subset, label_noise=task.label_noise, noise_kind=task.noise_kind,
            imbalance=task.imbalance, shift=task.shift, seed=seed,
        )
    if task.holdout_validation:  # last: the held-out slice comes from the training data as the run would see it
        from trainlab.tasks.wrappers import holdout_split

        bundle = holdout_split(bundle, task.holdout_validation, seed)
    if len(_CACHE) >= _MAX_CACHED:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = bundle
    return bundle


def clear_cache() -> None:
    _CACHE.clear()


def describe(bundle: DataBundle) -> dict[str, Any]:
    return {"name": bundle.name, "train": len(bundle.train_y), "test": len(bundle.test_y),
            "classes": bundle.num_classes, "input_shape": list(bundle.input_shape)}
