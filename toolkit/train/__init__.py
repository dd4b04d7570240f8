"""Training: the one Accelerate loop, its callbacks, and the losses."""
