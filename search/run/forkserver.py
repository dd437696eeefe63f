"""The forkserver that trial processes start from, with torch and mfha imported once.

Its own module (light: no torch, no Optuna here) so that starting it early lets its imports overlap
the run's other start-up work, and so that what it preloads is named in one place.
"""

from __future__ import annotations

import multiprocessing

# "__main__" too: the forkserver imports the main script once, so a trial process does not re-run
# its imports (multiprocessing re-imports the main module in every child it did not inherit it from)
# and torch._dynamo, which AdamW's first step imports: 2.5 s per trial otherwise (not needed in the study process)
PRELOAD = ["__main__", "search.run.child", "torch._dynamo"]


def start_forkserver() -> None:
    """Start the forkserver with torch and mfha imported; call early so that work overlaps other start-up."""
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()


__all__ = ["PRELOAD", "start_forkserver"]
