"""The `trainlab` command.

Every mistake a user can make (unknown task or technique, bad number or setting, a device this
machine lacks, unreadable data path, a task whose data or model function fails, labels outside the
classes, a store path that cannot be created, corrupt checkpoint) prints one line
`trainlab: error: ...` and exits with status 2.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from trainlab.errors import ConfigError, UserError

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse would print the usage too)
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {v}")
        return v

    return parse


_positive_int, _nonneg_int = _int_at_least(1), _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return v


def _device(text: str) -> str:
    from trainlab.errors import UserError as _UserError
    from trainlab.training.validate import resolve_device

    try:
        return str(resolve_device(text))
    except _UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_technique(text: str) -> tuple[str, dict[str, Any]]:
    """`name` or `name:key=value,key=value` (values parsed as JSON when they can be)."""
    name, _, rest = text.partition(":")
    settings: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"bad technique setting '{item}' in '{text}' (use name:key=value,key=value)")
        settings[key.strip()] = _parse_value(value.strip())
    return name.strip(), settings


def check_setting_types(name: str, settings: dict[str, Any]) -> None:
    """A setting whose default (or annotation) is a number must be given a number, a flag a
    true/false: `mixup:alpha=abc` is refused here, before the technique compares 'abc' with 0.
    Settings a subclass passes on through **settings (a probe's `every`) are read from the
    base classes' signatures."""
    from trainlab.techniques.registry import get_technique

    cls = get_technique(name)
    params = _setting_parameters(cls)
    what = "probe" if cls.family == "diagnostics" else "technique"
    for key, value in settings.items():
        p = params.get(key)
        kind = _setting_kind(p) if p is not None else None  # unknown keys: the technique reports them
        if kind is None or value is None:
            continue
        if kind == "flag" and not isinstance(value, bool):
            raise ConfigError(f"{what} '{name}': setting '{key}' must be true or false, got '{value}'")
        if kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{what} '{name}': setting '{key}' must be a number, got '{value}'")


def _setting_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword parameters of cls's constructor, and of its bases' constructors while each one
    passes on **settings (the first class that names a parameter wins)."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            sig = inspect.signature(init)
        except (TypeError, ValueError):
            break
        for pname, p in list(sig.parameters.items())[1:]:  # skip self
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                params.setdefault(pname, p)
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    return params


def parse_probe(text: str) -> tuple[str, dict[str, Any]]:
    """`--probe NAME[:k=v,...]`: like a technique, but NAME must be a diagnostics-family technique."""
    from trainlab.techniques.registry import all_techniques, get_technique

    name, settings = parse_technique(text)
    probes = ", ".join(n for n, c in all_techniques().items() if c.family == "diagnostics")
    try:
        cls = get_technique(name)
    except ConfigError:
        raise ConfigError(f"unknown probe '{name}' (probes: {probes or 'none'})") from None
    if cls.family != "diagnostics":
        raise ConfigError(f"'{name}' is not a probe (a {cls.family or 'training'} technique: use --technique {name}); "
                          f"probes: {probes or 'none'}")
    return name, settings


def _setting_kind(p: inspect.Parameter) -> str | None:
    default = p.default
    if isinstance(default, bool):
        return "flag"
    if isinstance(default, (int, float)):
        return "number"
    ann = p.annotation
    names = {ann.__name__} if isinstance(ann, type) else \
        {t.strip() for t in str(ann).split("|")} if isinstance(ann, str) else set()
    names.discard("None")
    if names == {"bool"}:
        return "flag"
    if names and names <= {"int", "float"}:
        return "number"
    return None


def _preflight(task: Any, techniques: Sequence[tuple[str, dict[str, Any]]], seed: int, device: str) -> None:
    """Set up one run (data, labels, model, techniques, optimizer) without training, so that a
    broken task is one error line before anything starts. Skipped under torchrun (the setup of a
    distributed run is collective)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    from trainlab.training.trainer import setup_run

    setup_run(task, techniques, seed, device)


_STORE_HELP = "run store file (default: $TRAINLAB_STORE, else runs.sqlite in the user data folder)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="trainlab", description="Training techniques from papers, and a harness that checks their claims.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    sub.add_parser("tasks", help="list the named tasks", description="List the named tasks.")

    s = sub.add_parser("list", help="list techniques with their papers, claims and latest verdicts",
                       description="List techniques with their papers, claims and latest verdicts.")
    s.add_argument("--store", type=Path, help=_STORE_HELP)

    s = sub.add_parser("train", help="train one task, optionally with techniques",
                       description="Train one task (named, or file.py:name) with optional techniques.")
    s.add_argument("task_name", nargs="?", metavar="TASK", help="a named task (see `trainlab tasks`) or file.py:name")
    s.add_argument("--task", help="the same as TASK")
    s.add_argument("--technique", action="append", default=[], metavar="NAME[:k=v,...]",
                   help="a technique with optional settings; repeat to combine")
    s.add_argument("--probe", action="append", default=[], metavar="NAME[:k=v,...]",
                   help="a diagnostics probe measured at epoch ends (e.g. every=2); repeat to combine; "
                        "see `trainlab list`")
    s.add_argument("--seed", type=_nonneg_int, default=0)
    s.add_argument("--epochs", type=_positive_int)
    s.add_argument("--batch-size", type=_positive_int)
    s.add_argument("--lr", type=_positive_float)
    s.add_argument("--device", default="cpu", type=_device, help="cpu, cuda, cuda:N, mps (default: cpu)")
    s.add_argument("--checkpoint", type=Path, help="write a checkpoint here after every epoch")
    s.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    s.add_argument("--store", type=Path, help=_STORE_HELP)
    s.add_argument("--no-store", action="store_true", help="do not record the run")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("runs", help="list stored runs", description="List stored runs, newest first.")
    s.add_argument("--claim", help="only runs of this claim id")
    s.add_argument("--limit", type=_positive_int, default=30)
    s.add_argument("--store", type=Path, help=_STORE_HELP)

    for name, helptext in (("check", "check a technique's claims (or one claim) against its baseline"),
                           ("bench", "run a suite of claims and write a report")):
        s = sub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        if name == "check":
            s.add_argument("name", help="a technique name or claim id (see `trainlab list`)")
            s.add_argument("--task", help="run on this task instead of the claim's: a named task or file.py:name")
        else:
            s.add_argument("--suite", default="quick", choices=["quick", "full"])
            s.add_argument("--out", type=Path, help="report folder (default: reports/<suite>)")
            s.add_argument("--fdr", type=_fraction, help="also judge the suite at this false-discovery rate (Benjamini-Hochberg over the claims), e.g. 0.05")
        s.add_argument("--seeds", type=_positive_int, help="seeds per arm (default: each claim's own)")
        s.add_argument("--executor", default="local", choices=["local", "ray"])
        s.add_argument("--workers", type=_positive_int, help="parallel runs (default: one per core)")
        s.add_argument("--address", help="Ray cluster address (ray executor); default: a local Ray instance")
        s.add_argument("--device", default="cpu", type=_device, help="cpu, cuda, cuda:N, mps (default: cpu)")
        s.add_argument("--no-overhead", action="store_true", help="skip the overhead measurement")
        s.add_argument("--store", type=Path, help=_STORE_HELP)

    s = sub.add_parser("report", help="rebuild a report from the run store, without training",
                       description="Rebuild a report from the run store, without training.")
    s.add_argument("--suite", default="quick", choices=["quick", "full"])
    s.add_argument("--out", type=Path)
    s.add_argument("--fdr", type=_fraction, help="also judge the suite at this false-discovery rate (Benjamini-Hochberg over the claims), e.g. 0.05")
    s.add_argument("--store", type=Path, help=_STORE_HELP)

    s = sub.add_parser("prune", help="train with HESSO structured pruning and build the smaller network",
                       description="Train with HESSO, build the pruned subnet, save it, compare with the dense model.")
    s.add_argument("--task", required=True)
    s.add_argument("--sparsity", type=float, default=0.5, help="target group sparsity in (0, 1)")
    s.add_argument("--epochs", type=_positive_int)
    s.add_argument("--seed", type=_nonneg_int, default=0)
    s.add_argument("--out", type=Path, help="where to save the subnet")

    s = sub.add_parser("data", help="download a dataset's official files (needs internet)",
                       description="Download a dataset's official files, with checksum verification.")
    s.add_argument("action", choices=["download"])
    s.add_argument("dataset", choices=["mnist", "fashion-mnist", "cifar10"])
    s.add_argument("--dest", type=Path, help="folder (default: where trainlab's loaders look for it)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args) or 0
    except UserError as e:
        print(f"trainlab: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("trainlab: interrupted; finished runs are kept in the store, re-run the command to continue",
              file=sys.stderr)
        return 130


def _console():
    """A console as wide as the terminal, or 160 columns when output is not a terminal."""
    import shutil

    from rich.console import Console

    return Console(width=shutil.get_terminal_size((160, 40)).columns)


def _cmd_tasks(args: argparse.Namespace) -> int:
    from rich.table import Table

    from trainlab.tasks.registry import TASKS

    table = Table("task", "epochs", "batch", "optimizer", "description")
    for t in TASKS.values():
        table.add_row(t.name, str(t.epochs), str(t.batch_size), f"{t.optimizer} lr={t.lr:g}", t.description)
    _console().print(table)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from trainlab.claims.registry import all_claims
    from trainlab.claims.store import Store, default_store_path
    from trainlab.techniques.registry import all_techniques

    store_path = args.store or default_store_path()
    verdicts = Store(store_path).latest_verdicts() if Path(store_path).exists() else {}
    claims = all_claims()

    def claim_lines(name: str) -> str:
        mine = [c for c in claims.values() if c.technique == name]
        return "\n".join(f"{c.id}: {verdicts.get(c.id, ('not checked',))[0]}" + (" [quick]" if "quick" in c.suites else "")
                         for c in mine) or "-"

    techniques = all_techniques()
    table = Table("technique", "family", "fidelity", "paper", "claims (latest verdict)", show_lines=True)
    probes = Table("probe", "records (epoch metric keys)", "fidelity", "paper", "claims (latest verdict)",
                   title="Probes (diagnostics: measure at epoch ends, change nothing; trainlab train TASK --probe NAME)",
                   show_lines=True)
    for name, cls in techniques.items():
        paper = f"{cls.paper.title} ({cls.paper.year}" + (f", arXiv:{cls.paper.arxiv})" if cls.paper.arxiv else ")") \
            if cls.paper else "-"
        fidelity = cls.fidelity or "not declared"
        if cls.deviations:
            fidelity += f"\n({len(cls.deviations)} deviation{'s' if len(cls.deviations) > 1 else ''})"
        if cls.family == "diagnostics":
            from trainlab.diagnostics.probe import Probe, probe_seconds_key

            keys = list(getattr(cls, "metric_keys", ()) or ())
            if issubclass(cls, Probe):  # the base class records its measuring time
                keys.append(probe_seconds_key(name))
            probes.add_row(name, ", ".join(keys) or "-", fidelity, paper, claim_lines(name))
            continue
        table.add_row(name, cls.family, fidelity, paper, claim_lines(name))
    others: dict[str, list[str]] = {}
    for c in claims.values():
        if c.technique not in techniques:  # e.g. the harness's own sanity claims
            others.setdefault(c.technique, []).append(
                f"{c.id}: {verdicts.get(c.id, ('not checked',))[0]}" + (" [quick]" if "quick" in c.suites else ""))
    for name, lines in others.items():
        table.add_row(name, "-", "-", "-", "\n".join(lines))
    console = _console()
    console.print(table)
    if probes.row_count:
        console.print(probes)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from trainlab.claims.runner import RunSpec
    from trainlab.claims.store import Store
    from trainlab.tasks.registry import get_task
    from trainlab.training.trainer import build_techniques, run_training

    if args.task_name and args.task and args.task_name != args.task:
        raise ConfigError(f"two tasks given ('{args.task_name}' and --task '{args.task}'): give one")
    if not (args.task_name or args.task):
        raise ConfigError("train needs a task: trainlab train TASK (see `trainlab tasks`)")
    task = get_task(args.task_name or args.task)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr))
                 if v is not None}
    task = task.with_overrides(overrides)
    techniques = [parse_technique(t) for t in args.technique] + [parse_probe(t) for t in args.probe]
    for name, settings in techniques:
        check_setting_types(name, settings)
    build_techniques(techniques)  # fail fast on unknown names, bad settings, conflicts
    if args.resume and args.checkpoint is None:
        raise ConfigError("--resume needs --checkpoint")
    _preflight(task, techniques, args.seed, args.device)
    if args.resume and args.checkpoint.exists():  # unreadable or of another kind: one line, before training
        from trainlab.training.checkpoint import load_checkpoint

        load_checkpoint(args.checkpoint)
    from trainlab.training import distributed

    main_process = distributed.context().is_main  # under torchrun only rank 0 prints and stores
    store = None if args.no_store or not main_process else Store(args.store)
    spec = RunSpec(None, "train", task, techniques, args.seed, args.device)
    if not main_process:
        result = run_training(task, techniques, seed=args.seed, device=args.device)
        return 0 if result.status == "finished" else 1
    print(f"training {task.name} (seed {args.seed}) with {', '.join(t for t, _ in techniques) or 'no technique'}: "
          f"{task.epochs} epochs, batch {task.batch_size}, {task.optimizer} lr {task.lr:g}", file=sys.stderr)
    t0 = time.perf_counter()
    result = run_training(task, techniques, seed=args.seed, device=args.device, progress=not args.quiet,
                          checkpoint=args.checkpoint, resume=args.resume,
                          on_epoch=(lambda row: store.add_epoch(spec.key, row)) if store else None)
    wall = time.perf_counter() - t0
    if store is not None:
        store.add_run(spec.key, spec.config(), result)
        store.close()
    f = result.final
    if result.status == "diverged":
        print(f"diverged at step {result.diverged_step} (non-finite loss)", file=sys.stderr)
    shown = [k for k in ("test_acc", "test_loss", "test_ece") if k in f] if "test_acc" in f else \
        [k for k in f if k.startswith("test_")]   # a task's own metrics (not classification)
    print(f"{task.name}: {result.status}  " + "  ".join(f"{k} {f[k]:.4f}" for k in shown) + "  "
          f"{wall:.1f} s total, {result.time_per_step * 1e3:.2f} ms/step, {result.params:,} parameters")
    for line in probe_cost_lines(techniques, result.epochs):
        print(line)
    return 0 if result.status == "finished" else 1


def probe_cost_lines(techniques: Sequence[tuple[str, dict[str, Any]]], epochs: Sequence[dict[str, float]]) -> list[str]:
    """One line per probe of the run: its measuring seconds against the run's training seconds."""
    from trainlab.diagnostics.probe import probe_seconds_key
    from trainlab.techniques.registry import get_technique

    train = sum(row.get("train_seconds", 0.0) for row in epochs)
    lines = []
    for name, _ in techniques:
        if get_technique(name).family != "diagnostics":
            continue
        key = probe_seconds_key(name)
        spent = sum(row.get(key, 0.0) for row in epochs)
        count = sum(key in row for row in epochs)
        ratio = f" ({spent / train:.2f}x)" if train > 0 else ""
        lines.append(f"probe {name}: {spent:.2f} s measuring ({count} measurement{'s' if count != 1 else ''}) "
                     f"vs {train:.2f} s training{ratio}")
    return lines


def _cmd_runs(args: argparse.Namespace) -> int:
    from rich.table import Table

    from trainlab.claims.store import Store

    st = Store(args.store)
    table = Table("id", "claim", "arm", "task", "techniques", "seed", "status", "test_acc", "ms/step", "finished")
    for r in st.runs(args.claim, args.limit):
        acc = (r["final"] or {}).get("test_acc")
        techs = ", ".join(t[0] for t in r["techniques"]) or "-"
        table.add_row(str(r["id"]), r["claim_id"] or "-", r["arm"] or "-", r["task"], techs, str(r["seed"]),
                      r["status"], f"{acc:.4f}" if acc is not None else "-",
                      f"{r['time_per_step'] * 1e3:.2f}" if r["time_per_step"] else "-",
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(r["finished_at"])))
    _console().print(table)
    print(f"store: {st.path}", file=sys.stderr)
    return 0


def _check_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(seeds=args.seeds, executor=args.executor, workers=args.workers, store=args.store,
                overhead=not args.no_overhead, progress=True, device=args.device, address=args.address)


def _cmd_check(args: argparse.Namespace) -> int:
    from trainlab.claims.api import check_claims
    from trainlab.claims.registry import resolve

    claims = resolve(args.name)
    # a broken user task is one error line before any run: check_claims' preflight sets it up first
    results = check_claims(claims, task=args.task, **_check_kwargs(args))
    return 0 if all(r.analysis is not None for r in results) else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from trainlab.claims.api import run_suite

    t0 = time.perf_counter()
    results = run_suite(args.suite, **_check_kwargs(args))
    wall = time.perf_counter() - t0
    out = args.out or Path("reports") / args.suite
    files = _write_report(results, out, f"trainlab {args.suite} suite", wall, args.fdr)
    print(f"{args.suite} suite: {len(results)} claims in {wall / 60:.1f} min; report: {files['html']}")
    return 0


def _write_report(results, out: Path, title: str, wall: float | None = None, fdr: float | None = None) -> dict[str, Path]:
    from trainlab.claims.report import write_report

    provenance = {"suite_wall_seconds": round(wall, 1)} if wall is not None else {}
    return write_report(results, out, title=title, provenance=provenance, fdr=fdr)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got '{text}'") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
    return value


def _cmd_report(args: argparse.Namespace) -> int:
    from trainlab.claims.registry import suite_claims
    from trainlab.claims.runner import collect, plan
    from trainlab.claims.store import Store

    st = Store(args.store)
    results = []
    for c in suite_claims(args.suite):
        try:
            specs = plan(c, store=st)
        except ConfigError:  # a tuned claim whose tuning runs are not in this store yet
            continue
        r = collect(c, specs, st, overhead=st.latest_overhead(c.id))
        if r.seeds:
            results.append(r)
    if not results:
        raise ConfigError(f"the store {st.path} has no runs of the {args.suite} suite; run `trainlab bench --suite {args.suite}`")
    files = _write_report(results, args.out or Path("reports") / args.suite, f"trainlab {args.suite} suite", fdr=args.fdr)
    print(f"report of {len(results)} claims: {files['html']}")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from trainlab.techniques.pruning.cli import prune_command

    if not 0 < args.sparsity < 1:
        raise ConfigError(f"--sparsity must be in (0, 1), got {args.sparsity}")
    prune_command(args.task, args.sparsity, epochs=args.epochs, out=args.out, seed=args.seed)
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from trainlab.tasks.datasets import download

    path = download(args.dataset, args.dest, log=print)
    print(f"{args.dataset}: downloaded and verified into {path}")
    return 0


COMMANDS = {"tasks": _cmd_tasks, "list": _cmd_list, "train": _cmd_train, "runs": _cmd_runs, "check": _cmd_check,
            "bench": _cmd_bench, "report": _cmd_report, "prune": _cmd_prune, "data": _cmd_data}


if __name__ == "__main__":
    sys.exit(main())
