"""Cleaning stage: label issues from a run's out-of-fold probabilities (``clsctl clean``).

It holds no code yet; its place in the layers (beside report and ensemble, above predict) is fixed
by the import contract, so label-issue work lands where it may read runs and predictions.
"""
