"""Run inside a trial process: imports nothing, so what it reports is what the forkserver preloaded."""

import sys


def report_modules(conn) -> None:
    conn.send(sorted(sys.modules))
    conn.close()
