"""The run wing: running trials. Preparation and the RAM decision, the runner and its console, the
objective, trial processes and their forkserver, workers and host core slots, validation, and the
artifacts each trial leaves.

May import: `search.study`, `search.store` and `mfha`. Never `search.results`. Kept to a docstring:
the trial forkserver imports `search.run.child` through here, and must not import Optuna.
"""
