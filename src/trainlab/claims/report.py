"""The claim report: Markdown, one self-contained HTML page, and PNG plots.

``write_report(results, out_dir)`` writes into ``out_dir``:

* ``report.md``: a summary table, one section per claim, then provenance; plots linked by file name.
* ``report.html``: the same content as one page with inline CSS and the plots embedded as base64
  ``data:`` URIs, so it can be mailed or archived on its own (no scripts, no external links).
* ``forest.png``: every claim's mean paired difference with its interval. Metrics differ in units and
  in which way is better, so each claim gets its own row with its own x axis in metric units,
  oriented so that right is the claimed direction (for "lower" metrics the row shows
  baseline - treatment). The solid line is 0, the dashed line is ``min_effect`` when it is > 0;
  "reproduced" means the whole bar is right of the dashed line (or of 0), "contradicted" that it is
  wholly left of 0.
* ``curves_<claim id>.png``: per-epoch curves of both arms, mean over seeds with a min-max band;
  the plotted key is the claim's metric when runs log it per epoch (also for "best:<key>" and
  "epochs_to:<key>..." metrics), else "test_acc", else the first logged key. Runs of different
  length (diverged, failed) are averaged over the seeds that reached each epoch.
* ``overhead.png``: time-per-step and peak-memory ratios (treatment / baseline) per claim, with a
  line at 1.0.
* ``domains_<claim id>.png``: for claims on a multi-domain task (runs that log ``domain_<name>_acc``,
  see trainlab.tasks.domains), each domain's final test accuracy per arm, mean over seeds with a
  min-max bar; the claim's section has the same numbers as a table (training domains, the held-out
  target, the training-domain validation accuracy and the validation-selected target accuracy).
* ``probes_<claim id>_<probe>.png``: for each probe (diagnostics technique) of the claim's arms, one
  panel per metric key it records (its ``metric_keys``), per epoch, mean over seeds with a min-max
  band per arm; keys no run recorded are left out. A probe's cost (its seconds measuring per run
  against the run's training seconds) is shown in the claim's overhead section.

One-arm claims (a metric compared with a reference, no baseline runs) show the reference where a
two-arm claim shows the baseline; claims against a scaled baseline say so ("0.9 x baseline").

Plots are drawn on ``matplotlib.figure.Figure`` objects with an explicit Agg canvas, so writing a
report never changes the matplotlib backend of the calling program (and importing trainlab never
touches matplotlib at all).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import platform
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from trainlab.claims.claim import Arm, compared_text, is_one_arm, reference_text
from trainlab.claims.regime import describe_precondition
from trainlab.claims.result import ClaimResult
from trainlab.claims.stats import NOOP_RATE_PER_SIDE, benjamini_hochberg, decision_pvalue

Block = tuple  # ("h", level, text) | ("p", text) | ("quote", text) | ("table", headers, rows) | ("img", file, alt)

_VERDICTS = ("reproduced", "contradicted", "inconclusive", "out of regime", "degenerate", "failed")
_COLORS = {"reproduced": "#1a7f37", "contradicted": "#cf222e", "inconclusive": "#9a6700", "out of regime": "#8250df",
           "degenerate": "#bc4c00", "failed": "#6e7781"}


def _css_name(verdict: str) -> str:
    return verdict.replace(" ", "-")


def write_report(
    results: list[ClaimResult],
    out_dir: Path,
    title: str = "trainlab report",
    provenance: dict | None = None,
    fdr: float | None = None,
) -> dict[str, Path]:
    """Write report.md, report.html and the PNG plots into `out_dir`; return their paths by name.

    fdr: also judge the suite at this false-discovery rate (Benjamini-Hochberg over the claims'
    one-sided p-values of their verdict boundaries), e.g. 0.05.

    Keys: "markdown", "html", "forest", "overhead", and "curves_<claim id>" for each claim that
    recorded per-epoch metrics.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    paths["forest"] = out_dir / "forest.png"
    _plot_forest(results, paths["forest"])
    paths["overhead"] = out_dir / "overhead.png"
    _plot_overhead(results, paths["overhead"])
    curve_files: dict[int, Path] = {}
    probe_files: dict[int, list[tuple[str, Path]]] = {}
    for i, r in enumerate(results):
        path = out_dir / f"curves_{_safe_name(_claim_id(r, i))}.png"
        if _plot_curves(r, path):
            curve_files[i] = path
            paths[f"curves_{_claim_id(r, i)}"] = path
        if domain_names(r):
            path = out_dir / f"domains_{_safe_name(_claim_id(r, i))}.png"
            _plot_domains(r, path)
            paths[f"domains_{_claim_id(r, i)}"] = path
        for probe, keys in probe_metric_keys(r).items():
            path = out_dir / f"probes_{_safe_name(_claim_id(r, i))}_{_safe_name(probe)}.png"
            if _plot_probe(r, probe, keys, path):
                probe_files.setdefault(i, []).append((probe, path))
                paths[f"probes_{_claim_id(r, i)}_{probe}"] = path

    blocks = _build_blocks(results, title, provenance, curve_files, paths, fdr, probe_files)
    paths["markdown"] = out_dir / "report.md"
    paths["markdown"].write_text(_render_markdown(blocks), encoding="utf-8")
    paths["html"] = out_dir / "report.html"
    paths["html"].write_text(_render_html(blocks, title, out_dir), encoding="utf-8")
    return paths


# --------------------------------------------------------------------------------------- content

def _build_blocks(results: Sequence[ClaimResult], title: str, provenance: dict | None,
                  curve_files: dict[int, Path], paths: dict[str, Path], fdr: float | None = None,
                  probe_files: dict[int, list[tuple[str, Path]]] | None = None) -> list[Block]:
    blocks: list[Block] = [("h", 1, title)]
    counts = {v: sum(r.verdict == v for r in results) for v in _VERDICTS}
    blocks.append(("p", f"{len(results)} claim(s): " + ", ".join(f"{counts[v]} {v}" for v in _VERDICTS) + "."))
    blocks.append(("p", _chance_sentence(results)))
    blocks.append(("p", _HOW_TO_READ))
    blocks.append(("h", 2, "Summary"))
    blocks.append(("table", _SUMMARY_HEADERS, [_summary_row(r, i) for i, r in enumerate(results)]))
    if fdr is not None:
        blocks.extend(_fdr_blocks(results, fdr))
    blocks.append(("img", paths["forest"].name, "mean paired difference per claim with its interval"))
    blocks.append(("img", paths["overhead"].name, "time and memory ratios per claim"))
    for i, r in enumerate(results):
        blocks.extend(_claim_blocks(r, i, curve_files.get(i), (probe_files or {}).get(i, [])))
    blocks.extend(_provenance_blocks(results, provenance))
    return blocks


_HOW_TO_READ = (
    "Each claim runs baseline and treatment on the same seeds; diff = treatment - baseline per seed "
    "(accuracy in percentage points, pt). The interval is the union of a bootstrap interval (BCa, or "
    "percentile where BCa is undefined) and the paired t interval of the mean difference. Reproduced: "
    "the interval lies wholly on the claimed side of 0 and past min_effect. Contradicted: wholly on the "
    "other side of 0. Parity claims with a non-inferiority margin m use -m as both boundaries. "
    "Otherwise inconclusive. Out of regime: a precondition of the paper's mechanism (e.g. the baseline "
    "overfits, or memorizes noisy labels) failed on these runs, so the interval does not test the paper. "
    "Degenerate: every run of one arm collapsed (constant predictions or chance accuracy) while the "
    "other learns. Every verdict is on this setting, usually far smaller than the paper's (see each "
    "claim's 'paper vs this run'): 'contradicted at this scale' does not mean the paper is wrong. "
    "Fidelity says how close the implementation is to the paper; a verdict on a variant or stand-in is a "
    "verdict on that variant, not on the paper's method. Overhead ratios are treatment / baseline. "
    "A one-arm claim (e.g. a diagnostic law such as sharpness <= 2/lr) runs one arm only and pairs each "
    "seed's metric with its reference (a number, or another metric of the same run): diff = metric - "
    "reference. A claim against '0.9 x baseline' uses diff = treatment - 0.9 x baseline."
)

_SUMMARY_HEADERS = ["claim (on task)", "fidelity", "metric", "diff [95% CI]", "outcome", "seeds", "time ×", "mem ×"]


def _chance_sentence(results: Sequence[ClaimResult]) -> str:
    decided = sum(r.analysis is not None for r in results)
    expected = decided * NOOP_RATE_PER_SIDE
    return (f"Chance alone: if every one of these {decided} analysed claims were a no-op, about {expected:.1f} "
            f"would come out reproduced and {expected:.1f} contradicted (measured no-op rate "
            f"{100 * NOOP_RATE_PER_SIDE:g}% per side at 5 seeds). Read single verdicts with that in mind.")


def _fdr_blocks(results: Sequence[ClaimResult], q: float) -> list[Block]:
    pvals = [decision_pvalue(r.treatment_values, r.baseline_values, r.claim.get("direction", "higher"),
                             float(r.claim.get("min_effect") or 0.0), float(r.claim.get("margin") or 0.0))
             if r.analysis is not None else float("nan") for r in results]
    adjusted = benjamini_hochberg(pvals)
    rows = []
    for i, (r, p, adj) in enumerate(zip(results, pvals, adjusted)):
        stands = r.verdict in ("reproduced", "contradicted") and math.isfinite(adj) and adj <= q
        judged = r.verdict if stands or r.verdict not in ("reproduced", "contradicted") else "inconclusive"
        rows.append([_claim_id(r, i), r.verdict, _p(p), _p(adj), judged])
    kept = sum(row[4] in ("reproduced", "contradicted") for row in rows)
    return [("h", 3, f"At a false-discovery rate of {q:g} (Benjamini-Hochberg)"),
            ("p", f"One-sided paired t p-value of each claim's verdict boundary, adjusted over the {len(results)} "
                  f"claims; a reproduced or contradicted verdict stands when its adjusted p <= {q:g}. "
                  f"{kept} verdict(s) stand."),
            ("table", ["claim", "outcome", "p", "BH-adjusted p", f"at FDR {q:g}"], rows)]


def _summary_row(r: ClaimResult, i: int) -> list[str]:
    c, a = r.claim, r.analysis
    if a is None:
        diff, seeds = "n/a", f"0/{len(r.seeds)}"
    else:
        diff, seeds = _diff_ci(a, c.get("metric", "")), f"{a.n}/{len(r.seeds)}"
    time_ratio = _ratio(r.overhead.get("time_ratio"))
    if time_ratio != "n/a" and r.overhead.get("time_ratio_reliable") is False or _busy(r.overhead):
        time_ratio += " (busy machine: unreliable)"
    return [
        f"{_claim_id(r, i)} (on {_task(r)})", _fidelity_cell(r), compared_text(c) + f" ({c.get('direction', '')})",
        diff, _verdict_cell(r), seeds, time_ratio, _ratio(r.overhead.get("memory_ratio")),
    ]


def _busy(o: dict) -> bool:
    load, cores = o.get("load_average_1min"), o.get("cpu_count")
    return bool(load is not None and cores and load > cores)


def _task(r: ClaimResult) -> str:
    return r.task or str(r.claim.get("task", ""))


def _fidelity_cell(r: ClaimResult) -> str:
    return (r.fidelity or {}).get("level") or "n/a"


def _verdict_cell(r: ClaimResult) -> str:
    if r.verdict == "inconclusive" and r.analysis is not None and r.analysis.seeds_needed is not None:
        return f"{r.verdict} (~{r.analysis.seeds_needed} seeds)"
    if r.verdict in ("out of regime", "degenerate") and r.analysis is not None:
        return f"{r.verdict} (interval alone: {r.analysis.verdict})"
    return r.verdict


def _claim_blocks(r: ClaimResult, i: int, curves: Path | None, probes: Sequence[tuple[str, Path]] = ()) -> list[Block]:
    c, a = r.claim, r.analysis
    one_arm = is_one_arm(c)
    out: list[Block] = [("h", 2, f"{_claim_id(r, i)}: {r.verdict}")]
    if one_arm:
        ref = c.get("reference")
        compared_with = [("reference", f"{reference_text(c)} (" + ("a metric of the same run" if isinstance(ref, str)
                                                                   else "a fixed number") + "; one-arm claim: no baseline runs)")]
    else:
        compared_with = [("baseline", _describe_arm(c.get("baseline")) + (
            f" (compared as {reference_text(c)})" if reference_text(c) != "baseline" else ""))]
    facts = [
        ("technique", c.get("technique", "")), ("task", _task(r) + ("" if _task(r) == c.get("task") else
                                                                      f" (the claim's own task: {c.get('task', '')})")),
        ("metric", f"{c.get('metric', '')} ({c.get('direction', '')} is better)"),
        *([("compared", f"{compared_text(c)} (per seed)")] if compared_text(c) != c.get("metric", "") else []),
        ("treatment" if not one_arm else "arm", _describe_arm(c.get("treatment"))), *compared_with,
        ("min_effect", _num(c.get("min_effect", 0.0))),
        *([("non-inferiority margin", _num(c["margin"]))] if c.get("margin") else []), ("suites", ", ".join(c.get("suites", []))),
    ]
    if c.get("overrides"):
        facts.append(("task overrides", ", ".join(f"{k}={v}" for k, v in dict(c["overrides"]).items())))
    out.append(("table", ["", ""], [[k, str(v)] for k, v in facts]))

    out.extend(_fidelity_blocks(r))
    level = (r.fidelity or {}).get("level")
    tested_other = level in ("variant", "stand-in")
    out.append(("h", 3, "What the paper says" + (f" (not what was tested: this claim tests a {level})" if tested_other else "")))
    out.append(("quote", c.get("paper_quote") or "(no quote recorded)"))
    out.append(("p", f"Paper's number: {c.get('paper_number') or 'n/a'}. "
                     f"Paper's scale: {c.get('paper_scale') or 'n/a'}."))
    out.extend(_setting_blocks(r))
    if c.get("notes"):
        out.append(("p", f"Notes: {c['notes']}"))
    out.extend(_regime_blocks(r))

    out.append(("h", 3, "Result"))
    if a is None:
        out.append(("p", "No analysis: the claim's runs did not produce comparable values."))
    else:
        level = f"{100 * a.ci_level:g}%"
        scale, unit = _scale(c.get("metric", ""))
        if one_arm:
            means = (f"{c.get('metric', '')} mean {_num(a.mean_treatment * scale)}{unit}, reference "
                     f"({reference_text(c)}) mean {_num(a.mean_baseline * scale)}{unit}. ")
        else:
            means = (f"{reference_text(c).capitalize()} mean {_num(a.mean_baseline * scale)}{unit}, "
                     f"treatment mean {_num(a.mean_treatment * scale)}{unit}. ")
        text = (means + f"Mean difference ({compared_text(c)}) {_num(a.mean_diff * scale, signed=True)}{unit} ({level} interval "
                f"{_num(a.ci_low * scale, signed=True)} to {_num(a.ci_high * scale, signed=True)}{unit}, "
                f"{a.ci_method}) over {a.n} {'' if one_arm else 'paired '}seed(s); paired t p = {_p(a.p_ttest)}, "
                f"Wilcoxon p = {_p(a.p_wilcoxon)}, d_z = {_num(a.effect_size, 3)}. Interval verdict: {a.verdict}.")
        if r.verdict != a.verdict:
            text += f" Outcome: {r.verdict} (see above): the interval is shown, but it is not a verdict on the paper."
        if a.seeds_needed is not None:
            text += f" About {a.seeds_needed} paired seeds would likely decide it."
        out.append(("p", text))
        if a.note:
            out.append(("p", f"Note: {a.note}"))

    w = r.analysis_without_collapsed
    if (r.collapse or {}).get("unpaired_collapse"):
        text = (f"Collapsed run(s): seed(s) {r.collapse['unpaired_collapse']} collapsed "
                + ("while other seeds learn. " if one_arm else "in one arm while the paired run learns. "))
        if w is not None:
            scale, unit = _scale(c.get("metric", ""))
            text += (f"Without them: {w.verdict}, mean difference {_num(w.mean_diff * scale, signed=True)}{unit} "
                     f"[{_num(w.ci_low * scale, signed=True)}, {_num(w.ci_high * scale, signed=True)}] over {w.n} seeds. "
                     "Both are shown; which to believe is the reader's decision.")
        out.append(("p", text))

    out.append(("h", 3, "Per-seed values"))
    rows = []
    n_rows = max(len(r.seeds), len(r.baseline_values), len(r.treatment_values))
    for k in range(n_rows):
        b = _at(r.baseline_values, k)
        t = _at(r.treatment_values, k)
        rows.append([str(_at(r.seeds, k, "?")), _num(b), _num(t), _num(t - b, signed=True)])
    headers = (["seed", f"{c.get('metric', '')}", f"reference: {reference_text(c)}", "diff"] if one_arm
               else ["seed", reference_text(c), "treatment", "diff"])
    if one_arm:  # the arm's value first, as the diff reads metric - reference
        rows = [[row[0], row[2], row[1], row[3]] for row in rows]
    out.append(("table", headers, rows or [["-", "-", "-", "-"]]))

    out.extend(_tuning_blocks(r))
    if r.status_counts:
        keys = sorted({k for arm_counts in r.status_counts.values() for k in arm_counts})
        out.append(("h", 3, "Run status"))
        out.append(("table", ["arm", *keys],
                    [[arm_name, *(str(cnt.get(k, 0)) for k in keys)] for arm_name, cnt in r.status_counts.items()]))
    if r.overhead or r.probe_cost:
        out.append(("h", 3, "Overhead"))
    if r.overhead.get("skipped"):
        out.append(("p", f"Per-step overhead not measured: {r.overhead['skipped']}."))
    elif r.overhead:
        if r.overhead.get("time_ratio_reliable") is False or _busy(r.overhead):
            out.append(("p", r.overhead.get("time_ratio_note") or "The time ratio was measured while the machine was "
                             "busy (load average above its core count): it is unreliable."))
        out.append(("table", ["quantity", "value"], [[k, _overhead_value(v)] for k, v in _flatten(r.overhead)]))
    if r.probe_cost:
        rows = [[arm_name, probe, _num(cost.get("seconds_per_run"), 3), _num(cost.get("train_seconds_per_run"), 3),
                 _ratio(cost.get("ratio")), _num(cost.get("measurements_per_run"), 3)]
                for arm_name, probes_cost in r.probe_cost.items() for probe, cost in probes_cost.items()]
        out.append(("p", "Probe cost: seconds each probe spent measuring per run (at epoch ends, outside the "
                         "training steps) against the run's training seconds (mean over the arm's runs)."))
        out.append(("table", ["arm", "probe", "s measuring / run", "s training / run", "measuring / training",
                              "measurements / run"], rows))
    out.extend(_domain_blocks(r, i))
    if curves is not None:
        out.append(("img", curves.name, f"learning curves of {_claim_id(r, i)}"))
    else:
        out.append(("p", "No per-epoch curves were recorded for this claim."))
    for probe, path in probes:
        out.append(("img", path.name, f"{probe} metrics per epoch of {_claim_id(r, i)}"))
    return out


def _tuning_blocks(r: ClaimResult) -> list[Block]:
    """Per tuned arm: the grid, and per seed the chosen values with every grid point's score."""
    tuning = getattr(r, "tuning", None) or {}
    if not tuning:
        return []
    from trainlab.claims.tuning import chosen_text

    out: list[Block] = [("h", 3, "Hyper-parameters chosen per seed"), ("p", chosen_text(tuning) + ".")]
    if "grid's" in out[-1][1]:
        out.append(("p", "A value chosen at an end of its grid may have its best outside the grid: the comparison "
                         "holds for this grid."))
    for arm_name, info in tuning.items():
        spec = info.get("tuning") or {}
        out.append(("p", f"{arm_name}: {spec.get('text', '')}; scores are the tuning runs' held-out values "
                         "(none: the run diverged or failed); ties go to the first grid point."))
        rows = []
        for entry in info.get("per_seed", []):
            scores = ", ".join(f"{'/'.join(map(str, sc['values'].values()))}: "
                               + (_num(sc["score"], 4) if sc.get("score") is not None else sc.get("status", "none"))
                               for sc in entry.get("scores", []))
            rows.append([str(entry.get("seed")), ", ".join(f"{k}={v}" for k, v in entry.get("chosen", {}).items()), scores])
        out.append(("table", ["seed", "chosen", "validation score per grid point"], rows or [["-", "-", "-"]]))
    return out


def _fidelity_blocks(r: ClaimResult) -> list[Block]:
    f = r.fidelity or {}
    if not f:
        return []
    text = f"Fidelity of {f.get('technique', '')}: {f.get('level', 'n/a')}."
    if f.get("evidence"):
        text += f" Evidence: {f['evidence']}"
    out: list[Block] = [("p", text)]
    if f.get("deviations"):
        out.append(("p", "Deviations from the paper: " + "; ".join(str(d) for d in f["deviations"])))
    return out


def _setting_blocks(r: ClaimResult) -> list[Block]:
    paper = r.claim.get("paper_setting") or {}
    ours = r.setting or {}
    if not paper and not ours:
        return []
    rows = []
    for key, label in (("train_size", "training examples"), ("epochs", "epochs"), ("params", "model parameters")):
        rows.append([label, _num(paper.get(key), 6) if paper.get(key) else "n/a", _num(ours.get(key), 6)])
    keys = ("train_size", "epochs", "params")
    if all(paper.get(k) for k in keys) and all(ours.get(k) for k in keys):
        ratio = np.prod([float(ours[k]) for k in keys]) / np.prod([float(paper[k]) for k in keys])
        rows.append(["compute (examples x epochs x params), this run / paper", "", f"{ratio:.2g}"])
    out: list[Block] = [("h", 3, "Paper vs this run"), ("table", ["", "paper", "this run"], rows)]
    if paper.get("text"):
        out.append(("p", f"Paper's setting: {paper['text']}"))
    return out


def _regime_blocks(r: ClaimResult) -> list[Block]:
    out: list[Block] = []
    if r.preconditions:
        rows = []
        for p in r.preconditions:
            state = {True: "holds", False: "FAILED", None: "not evaluated"}[p.get("passed")]
            rows.append([p.get("text", ""), p.get("why", ""), describe_precondition(p), state])
        out += [("h", 3, "Regime preconditions"), ("table", ["precondition", "why", "measured", "state"], rows)]
    collapse = r.collapse or {}
    for arm_name in collapse.get("degenerate_arms", []):
        detail = collapse.get("detail", {}).get(arm_name, {})
        values = ", ".join(f"seed {s}: acc {_num(v[0], 3)}, top class {_num(v[1], 2)}" for s, v in detail.items())
        if is_one_arm(r.claim):
            out.append(("p", f"Degenerate arm: every {arm_name} run collapsed (constant predictions or chance accuracy) "
                             f"({values}). The model did not learn on this task, so what was measured is not a "
                             "trained model's property; no verdict is given."))
        else:
            out.append(("p", f"Degenerate arm: every {arm_name} run collapsed (constant predictions or chance accuracy) "
                             f"while the other arm learns ({values}). The technique broke the model on this task; "
                             "no verdict is given."))
    return out


def _provenance_blocks(results: Sequence[ClaimResult], provenance: dict | None) -> list[Block]:
    out: list[Block] = [("h", 2, "Provenance")]
    prov = dict(provenance) if provenance else _default_provenance()
    out.append(("table", ["", ""], [[k, _overhead_value(v)] for k, v in _flatten(prov)] or [["-", "-"]]))
    rows = []
    for i, r in enumerate(results):
        extra = "; ".join(f"{k}={_overhead_value(v)}" for k, v in _flatten(r.provenance))
        rows.append([_claim_id(r, i), ", ".join(str(s) for s in r.seeds), extra or "-"])
    if rows:
        out.append(("h", 3, "Per claim"))
        out.append(("table", ["claim", "seeds", "provenance (code version, data fingerprint, ...)"], rows))
    return out


def _default_provenance() -> dict[str, Any]:
    import scipy

    prov: dict[str, Any] = {
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "platform": platform.platform(),
        "numpy": np.__version__, "scipy": scipy.__version__,
    }
    try:
        import torch

        prov["torch"] = torch.__version__
        prov["torch threads"] = torch.get_num_threads()
    except ImportError:  # the report itself does not need torch
        pass
    try:
        from importlib.metadata import version

        prov["trainlab"] = version("trainlab")
    except Exception:  # not installed as a distribution (e.g. run from a source tree)
        pass
    return prov


# --------------------------------------------------------------------------------------- render

def _render_markdown(blocks: Iterable[Block]) -> str:
    lines: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            lines += ["#" * b[1] + " " + _md_inline(b[2]), ""]
        elif kind == "p":
            lines += [_md_inline(b[1]), ""]
        elif kind == "quote":
            lines += ["> " + line if line else ">" for line in _md_inline(b[1]).splitlines()] + [""]
        elif kind == "table":
            headers, rows = b[1], b[2]
            lines.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
            lines.append("|" + "|".join("---" for _ in headers) + "|")
            lines += ["| " + " | ".join(_md_cell(x) for x in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            lines += [f"![{_md_inline(b[2])}]({b[1]})", ""]
    return "\n".join(lines)


def _md_inline(text: str) -> str:
    # "<" could open an HTML tag in a Markdown renderer; ">" inside text is harmless
    return str(text).replace("<", "&lt;")


def _md_cell(text: Any) -> str:
    return _md_inline(str(text)).replace("|", "\\|").replace("\n", " ")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#1f2328;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em;max-width:100%}
th,td{border:1px solid #d0d7de;padding:.25em .55em;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f6f8fa}
tr:nth-child(even) td{background:#fbfcfd}
blockquote{margin:.5em 0;padding:.3em 1em;border-left:4px solid #d0d7de;color:#57606a}
img{max-width:100%;height:auto;display:block;margin:.6em 0 1.2em}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.8em}
.v{font-weight:600}
""" + "".join(f".v-{_css_name(v)}{{color:{c}}}" for v, c in _COLORS.items())


def _render_html(blocks: Iterable[Block], title: str, out_dir: Path) -> str:
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
    ]
    for b in blocks:
        kind = b[0]
        if kind == "h":
            parts.append(f'<h{b[1]} id="{_anchor(b[2])}">{_html_inline(b[2])}</h{b[1]}>')
        elif kind == "p":
            parts.append(f"<p>{_html_inline(b[1])}</p>")
        elif kind == "quote":
            parts.append("<blockquote>" + "<br>".join(html.escape(x) for x in str(b[1]).splitlines()) + "</blockquote>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{_html_inline(str(x))}</td>" for x in row) + "</tr>" for row in b[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode((out_dir / b[1]).read_bytes()).decode("ascii")
            parts.append(f'<img alt="{html.escape(b[2])}" src="data:image/png;base64,{data}">')
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _html_inline(text: str) -> str:
    """Escape, then colour verdict words so they stand out."""
    out = html.escape(str(text))
    return re.sub(r"\b(" + "|".join(_VERDICTS) + r")\b",
                  lambda m: f'<span class="v v-{_css_name(m.group(1))}">{m.group(1)}</span>', out)



def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "section"


# --------------------------------------------------------------------------------------- plots

def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _plot_forest(results: Sequence[ClaimResult], path: Path) -> None:
    rows = max(1, len(results))
    fig = _new_figure(8.0, 0.9 + 0.75 * rows)
    if not results:
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, "no claims", ha="center", va="center")
        fig.savefig(path, format="png")
        return
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    for i, (ax, r) in enumerate(zip(axes, results)):
        c, a = r.claim, r.analysis
        sign = -1.0 if c.get("direction") == "lower" else 1.0
        # the dashed line is the reproduce boundary: min_effect, or -margin for parity claims
        min_effect = float(c.get("min_effect", 0.0) or 0.0) or -float(c.get("margin", 0.0) or 0.0)
        if is_one_arm(c):
            label = f"{_claim_id(r, i)}\n" + (f"{reference_text(c)} - {c.get('metric', '')}" if sign < 0
                                               else compared_text(c))
        else:
            label = f"{_claim_id(r, i)}\n{compared_text(c)} ({'b - t' if sign < 0 else 't - b'})"
        ax.set_yticks([0.0], [label], fontsize=7)
        ax.set_ylim(-1, 1)
        ax.tick_params(axis="x", labelsize=7)
        ok = a is not None and all(math.isfinite(x) for x in (a.mean_diff, a.ci_low, a.ci_high))
        if not ok:
            ax.text(0.5, 0.5, r.verdict if a is None else "no interval (fewer than 2 complete pairs)",
                    transform=ax.transAxes, ha="center", va="center", fontsize=8, color=_COLORS["failed"])
            ax.set_xticks([])
            continue
        ax.axvline(0.0, color="black", lw=0.8)
        if min_effect != 0:
            ax.axvline(min_effect, color="gray", lw=0.8, ls="--")
        lo, hi = sorted((sign * a.ci_low, sign * a.ci_high))
        mid = sign * a.mean_diff
        color = _COLORS.get(a.verdict, "black")
        ax.plot([lo, hi], [0.0, 0.0], color=color, lw=2.5, solid_capstyle="butt")
        ax.plot([mid], [0.0], "o", color=color, ms=6)
        ax.text(1.01, 0.5, a.verdict, transform=ax.transAxes, fontsize=7, color=color, va="center")
        span = [0.0, lo, hi, mid] + ([min_effect] if min_effect != 0 else [])
        left, right = min(span), max(span)
        pad = 0.1 * (right - left) or 0.1 * max(abs(left), abs(right), 1e-12)
        ax.set_xlim(left - pad, right + pad)
    axes[0].set_title("mean paired difference, oriented so that right = claimed direction "
                      "(solid: 0, dashed: min_effect or -margin)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


def _plot_overhead(results: Sequence[ClaimResult], path: Path) -> None:
    n = len(results)
    fig = _new_figure(max(5.0, 1.0 + 0.9 * n), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    names = [_claim_id(r, i) for i, r in enumerate(results)]
    time_r = [_finite_or_none(r.overhead.get("time_ratio")) for r in results]
    mem_r = [_finite_or_none(r.overhead.get("memory_ratio")) for r in results]
    x = np.arange(n)
    width = 0.38
    for offset, vals, label, color in ((-width / 2, time_r, "time per step", "#0969da"),
                                       (width / 2, mem_r, "peak memory", "#8250df")):
        have = [k for k, v in enumerate(vals) if v is not None]
        ax.bar(x[have] + offset, [vals[k] for k in have], width, label=label, color=color)
        for k, v in enumerate(vals):
            if v is None:
                ax.text(x[k] + offset, 1.0, "n/a", ha="center", va="bottom", fontsize=7, color="gray")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xlim(-0.6, max(n, 1) - 0.4)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("treatment / baseline")
    ax.set_title("overhead (1.0 = same as baseline)", fontsize=9)
    if n == 0:
        ax.text(0.5, 0.5, "no claims", transform=ax.transAxes, ha="center", va="center")
    if any(v is not None for v in time_r + mem_r):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")


def _plot_curves(r: ClaimResult, path: Path) -> bool:
    """Plot per-epoch curves of both arms; False (no file) when no arm logged any epoch."""
    key = _curve_key(r)
    if key is None:
        return False
    from matplotlib.ticker import MaxNLocator

    fig = _new_figure(6.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    colors = {"baseline": "#57606a", "treatment": "#0969da"}
    single_epoch: float | None = None
    for arm_name, runs in r.curves.items():
        epochs, values = _stack_runs(runs or [], key)
        if values.size == 0:
            continue
        seen = np.isfinite(values)
        count = seen.sum(axis=0)
        cols = count > 0
        if not cols.any():
            continue
        filled = np.where(seen, values, 0.0)
        mean = filled[:, cols].sum(axis=0) / count[cols]
        low = np.where(seen, values, np.inf)[:, cols].min(axis=0)
        high = np.where(seen, values, -np.inf)[:, cols].max(axis=0)
        xs = epochs[cols]
        color = colors.get(arm_name, None)
        line = ax.plot(xs, mean, marker="o" if xs.size < 30 else None, ms=3, color=color,
                       label=f"{arm_name} (mean of {len(runs)} seed(s))")[0]
        ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, lw=0)
        if xs.size == 1:  # a band needs two epochs; show the min-max range as an error bar
            ax.errorbar(xs, mean, yerr=[mean - low, high - mean], color=line.get_color(), capsize=4, lw=1)
            ax.set_xlim(xs[0] - 0.5, xs[0] + 0.5)
            single_epoch = float(xs[0])
    _plot_reference(ax, r, key)
    if single_epoch is None:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax.set_xticks([single_epoch])
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.set_title(f"{_claim_id(r, 0)}: {key}, mean and min-max over seeds", fontsize=9)
    if ax.lines:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return True


def _plot_reference(ax: Any, r: ClaimResult, key: str) -> None:
    """A one-arm claim's reference beside its metric's curve: the reference metric's own curve
    (dashed, mean over seeds) or a horizontal line at the reference number."""
    c = r.claim
    if not is_one_arm(c):
        return
    ref = c.get("reference")
    if not isinstance(ref, str):
        ax.axhline(float(ref), color="#cf222e", lw=1, ls="--", label=f"reference {reference_text(c)}")
        return
    ref_key = _metric_curve_key(ref)
    if ref_key == key:
        return
    epochs, values = _stack_runs(r.curves.get("treatment") or [], ref_key)
    seen = np.isfinite(values)
    count = seen.sum(axis=0) if values.size else np.zeros(0)
    cols = count > 0
    if values.size == 0 or not cols.any():
        return
    mean = np.where(seen, values, 0.0)[:, cols].sum(axis=0) / count[cols]
    ax.plot(epochs[cols], mean, color="#cf222e", lw=1, ls="--", marker="x" if cols.sum() < 30 else None, ms=3,
            label=f"reference: {ref_key} (mean)")


def _metric_curve_key(metric: str) -> str:
    from trainlab.claims.metrics import curve_key

    try:
        return curve_key(metric)
    except Exception:  # an old or malformed metric: its text up to the first comparison
        base = metric.split(":", 1)[1] if ":" in metric else metric
        return re.split(r"[<>=@]", base, maxsplit=1)[0]


def probe_metric_keys(r: ClaimResult) -> dict[str, list[str]]:
    """Probe name -> the metric keys it records, for the probes of the claim's arms (techniques of
    the "diagnostics" family), keeping only keys some run recorded."""
    from trainlab.techniques.registry import get_technique

    logged = {k for runs in r.curves.values() for run in runs or [] for row in run or [] for k in row}
    out: dict[str, list[str]] = {}
    for arm_name in ("treatment", "baseline"):
        arm_dict = r.claim.get(arm_name)
        for entry in (arm_dict or {}).get("techniques", []) if isinstance(arm_dict, dict) else []:
            name = str(entry[0])
            if name in out:
                continue
            try:
                cls = get_technique(name)
            except Exception:  # a technique this installation does not know (an old result)
                continue
            if cls.family != "diagnostics":
                continue
            keys = [k for k in getattr(cls, "metric_keys", ()) or () if k in logged]
            if keys:
                out[name] = keys
    return out


def _plot_probe(r: ClaimResult, probe: str, keys: Sequence[str], path: Path) -> bool:
    """One panel per metric key of `probe`: each arm's mean over seeds with its min-max band per
    epoch. Keys without any finite value are left out; False (no file) when none is left."""
    from matplotlib.ticker import MaxNLocator

    panels = []
    for key in keys:
        arms = []
        for arm_name, runs in r.curves.items():
            epochs, values = _stack_runs(runs or [], key)
            seen = np.isfinite(values)
            count = seen.sum(axis=0) if values.size else np.zeros(0)
            cols = count > 0
            if values.size and cols.any():
                mean = np.where(seen, values, 0.0)[:, cols].sum(axis=0) / count[cols]
                low = np.where(seen, values, np.inf)[:, cols].min(axis=0)
                high = np.where(seen, values, -np.inf)[:, cols].max(axis=0)
                arms.append((arm_name, len(runs), epochs[cols], mean, low, high))
        if arms:
            panels.append((key, arms))
    if not panels:
        return False
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = _new_figure(4.0 * ncols, 2.8 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = {"baseline": "#57606a", "treatment": "#0969da"}
    for ax, (key, arms) in zip(axes, panels):
        for arm_name, n, xs, mean, low, high in arms:
            line = ax.plot(xs, mean, marker="o" if xs.size < 30 else None, ms=3, color=colors.get(arm_name),
                           label=f"{arm_name} ({n} seed(s))")[0]
            if xs.size > 1:
                ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, lw=0)
            else:
                ax.errorbar(xs, mean, yerr=[mean - low, high - mean], color=line.get_color(), capsize=4, lw=1)
        ax.set_title(key, fontsize=8)
        ax.set_xlabel("epoch", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=6)
    for ax in axes[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{_claim_id(r, 0)}: probe {probe}, mean and min-max over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return True


_DOMAIN_KEY = re.compile(r"^domain_(\w+?)_acc$")


def domain_names(r: ClaimResult) -> dict[str, str]:
    """Domain name -> "training" or "target" for a claim on a multi-domain task (its runs log
    `domain_<name>_acc`; a training domain also logs `domain_<name>_val_acc`); {} otherwise."""
    logged: list[str] = []
    for runs in r.curves.values():
        for run in runs or []:
            for row in run or []:
                logged.extend(k for k in row if k not in logged)
    names = [m.group(1) for k in logged if (m := _DOMAIN_KEY.match(k)) and not k.endswith("_val_acc")]
    return {n: ("training" if f"domain_{n}_val_acc" in logged else "target") for n in names}


def _final_values(runs: Sequence[Sequence[dict]], key: str) -> list[float]:
    """Per seed, the key's value in the last epoch row that has a finite one."""
    out = []
    for run in runs or []:
        values = [v for row in run or [] if (v := _finite_or_none(row.get(key))) is not None]
        if values:
            out.append(values[-1])
    return out


def _domain_blocks(r: ClaimResult, i: int) -> list[Block]:
    """Per-domain accuracy table (final epoch, mean over seeds per arm) and its plot."""
    names = domain_names(r)
    if not names:
        return []
    arms = [a for a in ("baseline", "treatment") if r.curves.get(a)]
    rows_keys = [(f"{n} ({role})", f"domain_{n}_acc") for n, role in names.items()]
    rows_keys += [("training-domain validation (val_acc)", "val_acc"),
                  ("target, selected by val_acc (selected_test_acc)", "selected_test_acc")]
    rows = []
    for label, key in rows_keys:
        means = []
        for a in arms:
            v = _final_values(r.curves[a], key)
            means.append(float(np.mean(v)) if v else float("nan"))
        row = [label, *(f"{_num(100 * m, 3)}" if math.isfinite(m) else "n/a" for m in means)]
        if len(arms) == 2:
            row.append(_num(100 * (means[1] - means[0]), 3, signed=True) if all(map(math.isfinite, means)) else "n/a")
        rows.append(row)
    headers = ["domain (test split)", *(f"{a} acc %" for a in arms), *(["diff (points)"] if len(arms) == 2 else [])]
    return [("h", 3, "Per-domain accuracy"),
            ("p", "Final-epoch test accuracy on each domain's own test split, mean over seeds (training domains: "
                  "in-domain; target: held out). Model selection by training-domain validation reads no target "
                  "label."),
            ("table", headers, rows),
            ("img", f"domains_{_safe_name(_claim_id(r, i))}.png", f"per-domain accuracy of {_claim_id(r, i)}")]


def _plot_domains(r: ClaimResult, path: Path) -> None:
    """Grouped bars: each domain's final test accuracy per arm, mean over seeds, min-max error bar."""
    names = domain_names(r)
    arms = [a for a in ("baseline", "treatment") if r.curves.get(a)]
    fig = _new_figure(max(4.0, 0.9 * len(names) + 2.0), 3.2)
    ax = fig.add_subplot(1, 1, 1)
    colors = {"baseline": "#57606a", "treatment": "#0969da"}
    width = 0.8 / max(len(arms), 1)
    xs = np.arange(len(names))
    for j, a in enumerate(arms):
        stats = [(_final_values(r.curves[a], f"domain_{n}_acc") or [float("nan")]) for n in names]
        mean = np.array([np.mean(v) for v in stats])
        low = mean - np.array([np.min(v) for v in stats])
        high = np.array([np.max(v) for v in stats]) - mean
        ax.bar(xs + (j - (len(arms) - 1) / 2) * width, mean, width, yerr=[low, high], capsize=3,
               color=colors.get(a), label=f"{a} ({len(r.curves[a])} seed(s))")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{n}\n({role})" for n, role in names.items()], fontsize=7)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{_claim_id(r, 0)}: per-domain accuracy, final epoch", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")


def _curve_key(r: ClaimResult) -> str | None:
    logged: list[str] = []
    for runs in r.curves.values():
        for run in runs or []:
            for row in run or []:
                logged.extend(k for k in row if k != "epoch" and k not in logged)
    if not logged:
        return None
    metric = str(r.claim.get("metric", ""))
    base = _metric_curve_key(metric)
    for candidate in (base, "test_acc"):
        if candidate in logged:
            return candidate
    return logged[0]


def _stack_runs(runs: Sequence[Sequence[dict]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epoch numbers, values[seed, epoch]) padded with NaN where a run stopped early."""
    length = max((len(run or []) for run in runs), default=0)
    values = np.full((len(runs), length), np.nan)
    for s, run in enumerate(runs):
        for e, row in enumerate(run or []):
            v = _finite_or_none(row.get(key))
            if v is not None:
                values[s, e] = v
    # epoch numbers from the longest run (1-based "epoch" field), else the position
    longest = max(runs, key=lambda run: len(run or []), default=[]) or []
    epochs = np.arange(1, length + 1, dtype=float)
    for e, row in enumerate(longest):
        ep = _finite_or_none(row.get("epoch"))
        if ep is not None:
            epochs[e] = ep
    return epochs, values


# --------------------------------------------------------------------------------------- formatting

def _claim_id(r: ClaimResult, i: int) -> str:
    return str(r.claim.get("id") or f"claim-{i + 1}")


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _describe_arm(d: Any) -> str:
    if not isinstance(d, dict):
        return "baseline"
    try:
        arm = Arm(techniques=tuple((str(n), dict(s)) for n, s in d.get("techniques", [])),
                  overrides=dict(d.get("overrides", {})), label=str(d.get("label", "")))
        return arm.describe()
    except (TypeError, ValueError):
        return str(d)


def _finite_or_none(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _at(seq: Sequence[Any], k: int, default: Any = float("nan")) -> Any:
    return seq[k] if k < len(seq) else default


def _num(v: Any, digits: int = 4, signed: bool = False) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "n/a"
    if math.isnan(f):
        return "n/a"
    if math.isinf(f):
        return "+inf" if f > 0 else "-inf"
    return f"{f:+.{digits}g}" if signed else f"{f:.{digits}g}"


def _p(v: float) -> str:
    return _num(v, 2)


def _ratio(v: Any) -> str:
    f = _finite_or_none(v)
    return "n/a" if f is None else f"{f:.2f}"


def _scale(metric: str) -> tuple[float, str]:
    from trainlab.claims.runner import metric_scale

    return metric_scale(metric)


def _diff_ci(a, metric: str = "") -> str:
    scale, unit = _scale(metric)
    if not (math.isfinite(a.ci_low) and math.isfinite(a.ci_high)):
        return f"{_num(a.mean_diff * scale, 3, signed=True)}{unit} [n/a]"
    return (f"{_num(a.mean_diff * scale, 3, signed=True)}{unit} "
            f"[{_num(a.ci_low * scale, 3, signed=True)}, {_num(a.ci_high * scale, 3, signed=True)}]")


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.extend(_flatten(v, name + "."))
        else:
            out.append((name, v))
    return out


def _overhead_value(v: Any) -> str:
    if isinstance(v, float):
        return _num(v)
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return str(v)
