"""Domain adaptation techniques: training on labelled source domains with unlabelled target inputs."""
