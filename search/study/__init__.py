"""The study wing: what a study is. The study file's types and parser, the search space, the loss
pruner, the multi-objective views, and the trials' roles and names.

May import: `mfha` (no torch at import time except `space`, which counts parameters) and Optuna.
Never imports the other wings: it is the bottom of `search`.
"""
