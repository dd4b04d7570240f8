"""``clsctl demo``: every stage, on the built-in digits, offline, into one folder with a report.

It sits above every other library layer because it calls them all, the way the commands do.
"""

from toolkit.demo.pipeline import FULL, QUICK, DemoPlan, DemoResult, run_demo

__all__ = ["FULL", "QUICK", "DemoPlan", "DemoResult", "run_demo"]
