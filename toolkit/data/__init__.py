"""Data stage: sources → manifest, targets, splits and the leakage audit, EDA measurements,
transforms, datasets and samplers. Nothing here imports torch at package import."""
