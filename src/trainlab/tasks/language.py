"""Character-level language modelling: a task that is not classification.

The bundled task `stdlib-char-gru` trains a small GRU to predict the next character of Python
standard-library source files (trainlab.tasks.datasets.stdlib_text). It gives its own loss
(`lm_loss`: cross-entropy over every position) and its own metrics (`lm_evaluate`: loss in nats per
character, perplexity, bits per character, next-character accuracy), so its runs report
`test_loss`, `test_ppl`, `test_bits_per_char` and `test_char_acc` instead of class accuracy.
It is also an example of a user's own non-classification task: any Task may give `loss_fn` and
`evaluate` in the same way.

    from trainlab.training.trainer import run_training
    result = run_training("stdlib-char-gru", seed=0)
    print(result.final["test_ppl"])
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.tasks.datasets import TEXT_VOCAB_SIZE
from trainlab.training.metrics import batched_outputs


class CharGRU(nn.Module):
    """Embedding -> GRU -> linear read-out of next-character logits at every position:
    ids [B, L] (long) -> logits [B, L, vocab_size]."""

    def __init__(self, vocab_size: int = TEXT_VOCAB_SIZE, embed: int = 32, hidden: int = 128, layers: int = 1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed)
        self.rnn = nn.GRU(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.embed(x))
        return self.head(h)


def char_gru(input_shape: tuple[int, ...], num_classes: int | None, vocab_size: int = TEXT_VOCAB_SIZE,
             embed: int = 32, hidden: int = 128, layers: int = 1) -> nn.Module:
    """make_model for character-level tasks (num_classes is None: the vocabulary sets the outputs)."""
    return CharGRU(vocab_size, embed, hidden, layers)


def lm_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every position: logits [B, L, V], targets [B, L]."""
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def lm_evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """loss (nats per character), ppl = exp(loss), bits_per_char = loss / ln 2, and char_acc (the
    share of positions whose most likely next character is the right one), over every test position."""
    nll, correct, n = 0.0, 0, 0
    for out, target in batched_outputs(model, x, y, batch_size):
        logits = out.reshape(-1, out.shape[-1]).float()
        t = target.reshape(-1)
        nll += float(F.cross_entropy(logits, t, reduction="sum"))
        correct += int((logits.argmax(1) == t).sum())
        n += t.numel()
    loss = nll / max(n, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bits_per_char": loss / math.log(2),
            "char_acc": correct / max(n, 1)}
