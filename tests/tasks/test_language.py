"""The bundled character-level language model on standard-library sources (not classification)."""
import math

import pytest
import torch
import torch.nn.functional as F

from trainlab.errors import ConfigError
from trainlab.tasks.datasets import TEXT_VOCAB_SIZE, decode_text, encode_text, stdlib_text
from trainlab.tasks.language import char_gru, lm_evaluate, lm_loss
from trainlab.tasks.registry import get_task


def test_encoding_round_trip_and_unknown_characters():
    text = "def f(x):\n\treturn x  # ok ~"
    ids = encode_text(text)
    assert ids.dtype == torch.long and int(ids.min()) >= 1 and int(ids.max()) < TEXT_VOCAB_SIZE
    assert decode_text(ids) == text
    assert encode_text("é€\x00").tolist() == [0, 0, 0]          # outside the vocabulary: id 0
    assert TEXT_VOCAB_SIZE == 98


def test_stdlib_text_windows_are_next_character_targets_and_deterministic():
    d = stdlib_text(seq_len=32)
    assert not d.is_classification and d.num_classes is None
    assert d.train_x.shape[1] == 32 and d.train_y.shape == d.train_x.shape
    assert torch.equal(d.train_x[:, 1:], d.train_y[:, :-1])         # the target is the next character
    assert torch.equal(d.test_x[:, 1:], d.test_y[:, :-1])
    assert decode_text(d.train_x[0]).startswith('"""')               # textwrap.py's docstring, the first file
    again = stdlib_text(seq_len=32)
    assert again.fingerprint() == d.fingerprint()
    assert "fractions.py" in d.info["files"] and len(d.test_x) > 100


def test_stdlib_text_reads_a_given_folder(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n" * 50)
    (tmp_path / "b.py").write_text("y = 2\n" * 20)
    d = stdlib_text(seq_len=8, train_files=("a.py",), test_files=("b.py",), stdlib_dir=str(tmp_path))
    assert decode_text(d.train_x[0]) == "x = 1\nx " and decode_text(d.test_y[0]) == " = 2\ny ="
    assert len(d.train_x) == (300 - 1) // 9 and len(d.test_x) == (120 - 1) // 9
    with pytest.raises(ConfigError, match="disjoint"):
        stdlib_text(train_files=("a.py",), test_files=("a.py",))


class Fixed(torch.nn.Module):
    """Predicts the same next-character logits everywhere."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, x):
        return self.logits.expand(*x.shape, -1)


def test_uniform_predictions_have_perplexity_equal_to_the_vocabulary_size():
    y = torch.randint(0, TEXT_VOCAB_SIZE, (5, 7))
    m = lm_evaluate(Fixed(torch.zeros(TEXT_VOCAB_SIZE)), torch.zeros(5, 7).long(), y, batch_size=2)
    assert m["loss"] == pytest.approx(math.log(TEXT_VOCAB_SIZE))
    assert m["ppl"] == pytest.approx(TEXT_VOCAB_SIZE)
    assert m["bits_per_char"] == pytest.approx(math.log2(TEXT_VOCAB_SIZE))


def test_metrics_by_hand_on_a_three_token_vocabulary():
    # p = softmax([ln 2, 0, 0]) = (1/2, 1/4, 1/4); targets 0, 0, 1, 2 -> nll = (ln2 + ln2 + ln4 + ln4) / 4 = 1.5 ln 2
    logits = torch.tensor([math.log(2.0), 0.0, 0.0])
    y = torch.tensor([[0, 0], [1, 2]])
    m = lm_evaluate(Fixed(logits), torch.zeros(2, 2).long(), y, batch_size=1)
    assert m["loss"] == pytest.approx(1.5 * math.log(2))
    assert m["ppl"] == pytest.approx(2 ** 1.5)
    assert m["bits_per_char"] == pytest.approx(1.5)
    assert m["char_acc"] == pytest.approx(0.5)      # argmax is token 0: right at 2 of 4 positions
    out = Fixed(logits)(torch.zeros(2, 2).long()).detach()
    assert float(lm_loss(out, y)) == pytest.approx(1.5 * math.log(2))
    assert float(lm_loss(out, y)) == pytest.approx(float(F.cross_entropy(out.reshape(-1, 3), y.reshape(-1))))


def test_char_gru_shapes():
    model = char_gru((16,), None, hidden=8, embed=4)
    assert model(torch.zeros(3, 16).long()).shape == (3, 16, TEXT_VOCAB_SIZE)


def test_the_bundled_task_learns_below_uniform_perplexity():
    from trainlab.training.trainer import run_training

    task = get_task("stdlib-char-gru").with_overrides({"epochs": 1, "train_subset": 640, "lr": 1e-2})
    r = run_training(task, seed=0)
    row = r.final
    assert {"test_loss", "test_ppl", "test_bits_per_char", "test_char_acc", "train_loss"} <= set(row)
    assert "test_acc" not in row and "train_acc" not in row and "chance_acc" not in row
    assert row["test_ppl"] == pytest.approx(math.exp(row["test_loss"]), rel=1e-6)
    assert row["test_ppl"] < 0.5 * TEXT_VOCAB_SIZE    # 10 steps already beat uniform guessing by far
