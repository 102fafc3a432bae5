"""Fault injection for the resume tests (the hidden ``--inject-failure STEP:MARKER`` flag): the last rank
kills its own process once, the first time it reaches STEP, leaving MARKER behind as evidence.

The process waits before it dies: Ray Train's controller collects each worker's reported checkpoint on
a health-check poll (every 2 s), and a worker that exits the instant its last report is taken can take
the poll's reply down with it, so the controller never registers that checkpoint and the restart begins
from an older one or from zero. A real crash can lose the newest checkpoint the same way (it costs
progress, never correctness); the tests want a known resume point, so the injected crash waits for it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

SETTLE_S = 5.0  # > two health-check polls: the report made before the crash is registered


def parse(spec: str | None) -> tuple[int, str] | None:
    """``"STEP:MARKER"`` -> (step, marker path); None when the flag is absent."""
    if not spec:
        return None
    step, sep, marker = spec.partition(":")
    if not sep or not step.isdigit() or not marker:
        raise ValueError(f"--inject-failure {spec!r}: expected STEP:MARKER, e.g. 5:/tmp/killed.txt")
    return int(step), marker


def die_once(marker: str, rank: int, step: int) -> None:
    """Exit this worker process abruptly (no cleanup, as a crash) unless MARKER already exists."""
    if os.path.exists(marker):
        return
    Path(marker).write_text(f"worker {rank} killed before step {step}\n")
    log.warning("injected failure: rank %d exits before step %d", rank, step)
    time.sleep(SETTLE_S)
    os._exit(1)
