"""Before any run, claims that cannot run on a user's task are refused with one line each;
check returns every claim's result, names the task that ran, and rejects fewer than 2 seeds."""
import functools
import io
import textwrap

import pytest
import torch
from rich.console import Console

import trainlab
from trainlab import DataBundle, Task
from trainlab.claims import api
from trainlab.claims.claim import Claim, arm
from trainlab.claims.preflight import Preflight, metric_reported, preflight, unaccepted_kwargs
from trainlab.claims.registry import all_claims
from trainlab.claims.runner import plan
from trainlab.claims.store import Store
from trainlab.cli import main
from trainlab.errors import ConfigError

TASK_FILE = '''
import torch
from trainlab import DataBundle, Task

def table():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return DataBundle(x[:128], y[:128], x[128:], y[128:], num_classes=2, name="tiny-table")

def mlp(input_shape, num_classes, hidden=16):
    return torch.nn.Sequential(torch.nn.Linear(input_shape[0], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes))

tiny = Task("tiny-tab", make_data=table, make_model=mlp, epochs=2, batch_size=32, lr=0.1)
'''


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "my_tasks.py"
    path.write_text(textwrap.dedent(TASK_FILE))
    return path


def _claim(cid, *techniques, metric="test_acc", **kw):
    return Claim(id=cid, technique=techniques[0] if techniques else "placebo", task="blobs-mlp", metric=metric,
                 direction="higher", treatment=arm(*techniques), baseline=arm(), seeds=2, **kw)


def test_unaccepted_kwargs_reads_the_model_signature():
    def plain(input_shape, num_classes, hidden=16, *, depth=2):
        pass

    def open_ended(input_shape, num_classes, **kw):
        pass

    assert unaccepted_kwargs(plain, {"hidden": 3, "depth": 4, "channels": (8,), "width": 5}) == ["channels", "width"]
    assert unaccepted_kwargs(plain, {"input_shape": 1}) == ["input_shape"]   # already given by position
    assert unaccepted_kwargs(open_ended, {"anything": 1}) == []
    assert unaccepted_kwargs(functools.partial(plain, (3,)), {"hidden": 1, "x": 2}, leading=1) == ["x"]


def test_registered_claims_that_cannot_run_on_a_tabular_mlp_say_why(task_file):
    claims = all_claims()
    ids = ["gradient-noise-deep-mlp-trains", "bn-only-vs-random-digits", "cutmix-cifar10-cnn",
           "orthogonal-conv-spectrum-digits", "mixup-mnist1d", "elr-noisy-digits"]
    runnable, skipped = preflight([claims[i] for i in ids], f"{task_file}:tiny")
    why = {s.claim_id: s.reason for s in skipped}
    assert [c.id for c in runnable] == ["mixup-mnist1d", "elr-noisy-digits"]
    assert "the claim sets model settings (depth=20, width=50" in why["gradient-noise-deep-mlp-trains"]
    assert "mlp() does not take" in why["gradient-noise-deep-mlp-trains"]
    assert "channels=(128, 256)" in why["bn-only-vs-random-digits"]
    assert why["cutmix-cifar10-cnn"].startswith("cutmix needs image or signal inputs") and "[N, 6]" in why["cutmix-cifar10-cnn"]
    assert why["orthogonal-conv-spectrum-digits"].startswith("orthogonal-conv needs convolution layers")
    assert all(s.task == "tiny-tab" and s.line().startswith(f"{s.claim_id} on tiny-tab: skipped: ") for s in skipped)


def test_classification_claims_on_the_language_model_task_say_so():
    from trainlab.tasks.registry import get_task

    claims = all_claims()

    task = get_task("stdlib-char-gru").with_overrides({"train_subset": 256})
    runnable, skipped = preflight([claims["mixup-mnist1d"], claims["elr-noisy-digits"], claims["adamp-digits-cnn"]
                                   if "adamp-digits-cnn" in claims else _claim("adamp-acc", "adamp")], task)
    why = {s.claim_id: s.reason for s in skipped}
    assert not runnable
    assert why["mixup-mnist1d"].startswith("mixup needs a classification task (integer class labels); "
                                           "'stdlib-char-gru' has targets of shape [64]")
    assert "label_noise=0.4 needs class labels" in why["elr-noisy-digits"]
    adamp = [r for cid, r in why.items() if cid not in ("mixup-mnist1d", "elr-noisy-digits")][0]
    assert "metric 'test_acc' is not reported on 'stdlib-char-gru'" in adamp and "test_ppl" in adamp


def test_metric_reported_only_rules_out_the_task_evaluation_keys():
    row = {"train_loss": 1.0, "test_loss": 1.0, "test_ppl": 3.0}
    assert metric_reported("test_ppl", row) and metric_reported("best:test_ppl", row)
    assert not metric_reported("test_acc", row) and not metric_reported("epochs_to:test_acc>=0.9", row)
    assert metric_reported("time_per_step", row) and metric_reported("diverged", row)
    assert metric_reported("seq_end_acc", row)   # a technique's own key may appear at later epochs only


def broken_model(input_shape, num_classes):
    return torch.nn.Linear(input_shape[0] + 1, num_classes)    # the wrong input width


def test_a_task_that_cannot_train_at_all_is_one_error_not_one_per_claim(task_file):
    from trainlab.tasks.registry import get_task

    task = Task("broken", make_data=get_task(f"{task_file}:tiny").make_data, make_model=broken_model)
    with pytest.raises(ConfigError, match="task 'broken' does not train one step on its own data: RuntimeError"):
        Preflight(task)


def test_check_skips_refused_claims_and_names_the_task_that_ran(task_file, tmp_path):
    out = io.StringIO()
    console = Console(file=out, width=300)
    claims = [_claim("t-cutmix", "cutmix"), _claim("t-placebo", "placebo")]
    results = api.check_claims(claims, task=f"{task_file}:tiny", store=tmp_path / "s.sqlite", overhead=False,
                               workers=1, progress=True, console=console)
    text = out.getvalue()
    assert [r.claim["id"] for r in results] == ["t-placebo"]
    assert [s.claim_id for s in results.skipped] == ["t-cutmix"]
    assert results[0].task == "tiny-tab" and results.task == "tiny-tab"
    assert "t-cutmix on tiny-tab: skipped: cutmix needs image or signal inputs" in text
    assert "t-placebo on tiny-tab baseline seed 0: finished" in text
    assert "t-placebo on tiny-tab: " in text                          # the verdict line
    assert text.index("skipped") < text.index("seed 0: finished")   # refused before anything trained
    assert len(Store(tmp_path / "s.sqlite").runs(None, 100)) == 4      # only the placebo claim's 2 x 2 runs


def test_none_can_run_is_one_error_before_any_training(task_file, tmp_path):
    with pytest.raises(ConfigError, match=r"none of the 2 claims can run on task 'tiny-tab': t-cutmix: cutmix needs"):
        api.check_claims([_claim("t-cutmix", "cutmix"), _claim("t-ortho", "orthogonal-conv")],
                         task=f"{task_file}:tiny", store=tmp_path / "s.sqlite")
    assert not Store(tmp_path / "s.sqlite").runs(None, 100)


def test_cli_check_of_a_technique_that_cannot_run_exits_2_with_one_line(task_file, tmp_path, capsys):
    code = main(["check", "cutmix", "--task", f"{task_file}:tiny", "--store", str(tmp_path / "s.sqlite")])
    err = capsys.readouterr().err
    assert code == 2
    assert "cutmix-cifar10-cnn on tiny-tab: skipped: cutmix needs image or signal inputs" in err
    assert err.strip().splitlines()[-1].startswith("trainlab: error: none of the 1 claims can run on task 'tiny-tab'")
    assert "Traceback" not in err


@pytest.mark.parametrize("seeds", [0, 1, -3, 2.5, True, "5"])
def test_check_rejects_fewer_than_two_seeds(seeds, tmp_path):
    with pytest.raises(ConfigError, match="seeds"):
        trainlab.check(_claim("t-placebo", "placebo"), seeds=seeds, store=tmp_path / "s.sqlite")
    assert not (tmp_path / "s.sqlite").exists() or not Store(tmp_path / "s.sqlite").runs(None, 10)


def test_plan_does_not_read_zero_seeds_as_the_default():
    with pytest.raises(ConfigError, match="at least 2 seeds, got 0"):
        plan(_claim("t-placebo", "placebo"), seeds=0)
    assert len(plan(_claim("t-placebo", "placebo"))) == 4


def test_check_of_a_technique_returns_every_claim(task_file, tmp_path, monkeypatch):
    two = [_claim("t-placebo-a", "placebo"), _claim("t-placebo-b", "placebo", metric="test_loss")]
    monkeypatch.setattr(api, "resolve", lambda name: two if name == "placebo-twice" else pytest.fail(name))
    results = trainlab.check("placebo-twice", task=f"{task_file}:tiny", store=tmp_path / "s.sqlite", overhead=False,
                             workers=1)
    assert isinstance(results, api.CheckResults) and len(results) == 2
    assert [r.claim["id"] for r in results] == ["t-placebo-a", "t-placebo-b"]
    assert results["t-placebo-b"].claim["metric"] == "test_loss"
    assert all(r.task == "tiny-tab" for r in results)
    with pytest.raises(AttributeError, match="2 claims .*t-placebo-a, t-placebo-b"):
        results.verdict
    with pytest.raises(KeyError, match="no result for claim 'nope'"):
        results["nope"]
    one = trainlab.check(two[0], task=f"{task_file}:tiny", store=tmp_path / "s.sqlite", overhead=False, workers=1)
    assert len(one) == 1 and one.verdict == one[0].verdict and one.treatment_values == one[0].treatment_values
    assert trainlab.check_all(two[0], task=f"{task_file}:tiny", store=tmp_path / "s.sqlite",
                              overhead=False)[0].treatment_values == one[0].treatment_values
