"""`trainlab prune`: train a task with HESSO, build the subnet, report and save it.

    from trainlab.techniques.pruning.cli import prune_command, load_subnet
    report = prune_command("cifar10-resnet", sparsity=0.5, epochs=10, out="resnet20-half.pt")
    subnet = load_subnet("resnet20-half.pt")       # a smaller nn.Module, ready for eval

The saved file holds plain data only (loads with torch.load(weights_only=True)): the task name,
the model's input shape and class count, the ids of the removed groups, the subnet's state_dict
and the measured numbers. `load_subnet` rebuilds the dense model from the task, traces it,
removes the same groups and loads the weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainlab.errors import CheckpointError, ConfigError
from trainlab.techniques.pruning.accounting import compare
from trainlab.techniques.pruning.hesso import HESSOTechnique
from trainlab.techniques.pruning.space import PruningSpace

FORMAT = 1


def prune_command(task_name: str, sparsity: float, epochs: int | None = None, out: str | Path | None = None,
                  seed: int = 0, latency_batch: int = 32, print_report: bool = True) -> dict[str, Any]:
    """Train `task_name` with HESSO to `sparsity` group sparsity, build and save the subnet.

    Returns the report: parameters, FLOPs, test accuracy and CPU latency of the full (group-sparse)
    model and of the subnet, plus the saved path.
    """
    from trainlab.tasks.loading import load_task_data
    from trainlab.tasks.registry import get_task
    from trainlab.training.metrics import evaluate
    from trainlab.training.trainer import run_training

    if not 0.0 < float(sparsity) < 1.0:
        raise ConfigError(f"--sparsity must be in (0, 1), got {sparsity}")
    task = get_task(task_name)
    if epochs is not None:
        task = task.with_overrides({"epochs": int(epochs)})
    technique = HESSOTechnique(target_group_sparsity=float(sparsity))
    result = run_training(task, [technique], seed=seed)
    if result.status != "finished":
        raise ConfigError(f"training {task.name} with HESSO {result.status} (step {result.diverged_step})")
    space: PruningSpace = technique.space
    model = space.model.eval()
    removed = space.zero_groups()
    subnet = space.construct_subnet(removed).eval()

    data = load_task_data(task, seed)
    batch = data.test_x[:latency_batch]
    report: dict[str, Any] = {
        "task": task.name, "target_group_sparsity": float(sparsity), "group_sparsity": space.group_sparsity(),
        "groups": space.num_groups, "removed_groups": len(removed), "epochs": task.epochs, "seed": seed,
    }
    report["latency_batch"] = len(batch)
    report.update(compare(model, subnet, batch))
    report["test_acc_full"] = evaluate(model, data.test_x, data.test_y, task.eval_batch_size, torch.device("cpu"))["acc"]
    report["test_acc_subnet"] = evaluate(subnet, data.test_x, data.test_y, task.eval_batch_size, torch.device("cpu"))["acc"]
    path = Path(out) if out is not None else Path(f"{task.name}-hesso-{sparsity:g}.pt")
    save_subnet(path, subnet, task.name, data.input_shape, data.num_classes, removed, report, task.model_kwargs)
    report["saved"] = str(path)
    if print_report:
        print(format_report(report))
    return report


def format_report(r: dict[str, Any]) -> str:
    rows = [
        ("parameters", f"{r['params_full']:,}", f"{r['params_subnet']:,}", f"{r['params_ratio']:.3f}"),
        ("FLOPs / sample", f"{r['flops_full'] / max(1, _batch(r)):,.0f}", f"{r['flops_subnet'] / max(1, _batch(r)):,.0f}",
         f"{r['flops_ratio']:.3f}"),
        ("test accuracy", f"{r['test_acc_full']:.4f}", f"{r['test_acc_subnet']:.4f}",
         f"{r['test_acc_subnet'] - r['test_acc_full']:+.4f}"),
        ("CPU latency (ms)", f"{1e3 * r['latency_full_s']:.2f}", f"{1e3 * r['latency_subnet_s']:.2f}",
         f"{r['latency_ratio']:.3f}"),
    ]
    lines = [f"{r['task']}: HESSO to group sparsity {r['group_sparsity']:.3f} "
             f"({r['removed_groups']}/{r['groups']} groups removed), {r['epochs']} epochs, seed {r['seed']}",
             f"{'':18s}{'full':>14s}{'subnet':>14s}{'ratio':>10s}"]
    lines += [f"{a:18s}{b:>14s}{c:>14s}{d:>10s}" for a, b, c, d in rows]
    lines.append(f"saved: {r['saved']}  (load with trainlab.techniques.pruning.cli.load_subnet)")
    return "\n".join(lines)


def _batch(r: dict[str, Any]) -> int:
    return int(r.get("latency_batch", 1))


def save_subnet(path: str | Path, subnet: nn.Module, task_name: str, input_shape: tuple[int, ...], num_classes: int,
                removed_groups: list[int], report: dict[str, Any], model_kwargs: Any = None) -> None:
    payload = {
        "format": FORMAT, "task": task_name, "input_shape": list(input_shape), "num_classes": int(num_classes),
        "model_kwargs": dict(model_kwargs or {}), "removed_groups": [int(g) for g in removed_groups],
        "state_dict": {k: v.detach().cpu() for k, v in subnet.state_dict().items()},
        "report": {k: v for k, v in report.items() if isinstance(v, (int, float, str))},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


def load_subnet(path: str | Path, task: Any = None) -> nn.Module:
    """Rebuild a subnet saved by `prune_command` (or `save_subnet`).

    task: the Task it was trained on, if it is not a named task or file.py:name reference.
    """
    from trainlab.tasks.registry import get_task

    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no subnet file at '{path}'") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is one clear message
        raise CheckpointError(f"cannot read subnet file '{path}': {e}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "removed_groups" not in payload:
        hint = "; it is a training checkpoint (`trainlab prune` writes subnet files)" \
            if isinstance(payload, dict) and "identity" in payload else ""
        raise CheckpointError(f"'{path}' is not a trainlab subnet file (format {FORMAT}){hint}")
    task = get_task(task if task is not None else payload["task"])
    shape = tuple(payload["input_shape"])
    model = task.make_model(shape, payload["num_classes"], **payload["model_kwargs"])
    example = torch.zeros((2, *shape))
    space = PruningSpace(model, example)
    subnet = space.construct_subnet(payload["removed_groups"], verify=False)
    try:
        subnet.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"'{path}' does not match the rebuilt subnet: {str(e).splitlines()[0]}") from None
    return subnet.eval()
