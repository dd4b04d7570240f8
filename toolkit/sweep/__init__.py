"""Sweeps: Optuna studies whose trials are train runs, with the search space in the recipe.

:func:`run_sweep` is ``clsctl sweep``; :func:`plan_sweep` checks a sweep without running it;
:class:`TrialReport` is the trainer callback through which a trial reports and is pruned. Nothing heavy
is imported here: optuna loads when a study is opened.
"""

from toolkit.sweep.plan import SweepPlan, plan_sweep
from toolkit.sweep.pruning import TrialReport
from toolkit.sweep.space import Param, parse_space
from toolkit.sweep.study import SweepResult, run_sweep

__all__ = ["Param", "SweepPlan", "SweepResult", "TrialReport", "parse_space", "plan_sweep", "run_sweep"]
