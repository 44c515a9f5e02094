"""Memory-saving techniques: methods that trade recomputation for stored activations."""
