"""Compression beyond structured pruning: N:M sparsity, quantization (QAT, PTQ, quantized
distillation), low-rank training and adapters, dynamic channel pruning, sparsity for unlearning.
Every method can write its compressed model to disk in a compact form (see artifact.py)."""
