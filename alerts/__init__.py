"""The alert consumer tools: follow the alert topic, summarise a run against the ground truth, report it."""
