"""`mmrl compare`: learning curves, aggregate statistics and time to a target across run directories
(docs/compare.md).

Modules: `settings` (the config), `records` (find run directories and read what they hold: config,
curves, final scores), `stats` (aligned curves with bootstrap bands, rliable aggregates, steps and
wall time to a target), `report` (PNG figures, a markdown table, JSON), `command` (the Hydra task
and its pre-flight check). Nothing here trains or evaluates: everything comes from the runs' files.
"""
