"""Losses that replace the training objective (e.g. metrics made differentiable)."""
