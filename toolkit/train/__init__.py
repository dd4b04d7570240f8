"""Training: the trainer, losses, metrics and callbacks."""
