"""Report stage: tables, plots (matplotlib, Agg only) and static HTML pages (Jinja2).

Nothing heavy is imported here; each module loads matplotlib or Jinja2 when it is used.
"""
