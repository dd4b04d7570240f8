"""Cleaning stage: label issues found from a run's out-of-fold probabilities."""
