"""Layers that replace standard ones (e.g. a linear classifier) with a different similarity model."""
