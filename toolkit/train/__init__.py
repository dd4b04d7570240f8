"""Training: the one Accelerate loop, its callbacks, and the losses.

``train(recipe, callbacks=[...])`` trains a recipe; :class:`Callback` is the base of every callback
(see :mod:`toolkit.train.callbacks` for the hooks). Importing this package loads no heavy library.
"""

from toolkit.train.api import resume_recipe, run_training, train
from toolkit.train.callbacks import HOOKS, Callback

__all__ = ["HOOKS", "Callback", "resume_recipe", "run_training", "train"]
