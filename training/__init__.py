"""Training: the EntitySet, labels, Deep Feature Synthesis and the batch model."""
