"""Training diagnostics: measurements of a model and its data (curvature, neural collapse,
representation similarity, intrinsic dimension, gradient coherence), as plain functions usable in
any training loop, and as probes (trainlab.diagnostics.probe.Probe) that record them per epoch of a
trainlab run, where they are stored, plotted and usable as claim metrics and preconditions."""
