"""A workflow step never outlives the workflow that started it.

Snakemake killed hard (`kill -9`) leaves its running jobs as orphans, and a job whose shell
wrapper was killed goes on too; either could then write an output that a later run takes as
finished. The workflow exports its process id (WORKFLOW_PID_ENV, set in rules/common.smk); a step
started with it watches that process and its own parent, stops as soon as either is gone, and
checks once more right before an output is renamed into place (dpruner.io).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

WORKFLOW_PID_ENV = "DPRUNER_WORKFLOW_PID"
POLL_SECONDS = 1.0
# Exit status of a step stopped because its workflow is gone.
ORPHANED_EXIT = 3

_watched: dict | None = None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def orphaned() -> str | None:
    """Why this step has lost its workflow, or None while it has not (or is not watched)."""
    if _watched is None:
        return None
    if os.getppid() != _watched["parent"]:
        return f"its parent process {_watched['parent']} exited"
    if not process_alive(_watched["workflow"]):
        return f"the workflow process {_watched['workflow']} exited"
    return None


def _stop(reason: str) -> None:
    print(f"dpruner: stopped without writing outputs: {reason}", file=sys.stderr, flush=True)
    os._exit(ORPHANED_EXIT)


def ensure_parents_alive() -> None:
    """Stop the step (no output written) if its workflow is gone."""
    reason = orphaned()
    if reason:
        _stop(reason)


def _watch() -> None:
    while True:
        time.sleep(POLL_SECONDS)
        ensure_parents_alive()


def _on_signal(number, frame) -> None:
    name = signal.Signals(number).name
    print(f"dpruner: stopped by {name}; no output was written", file=sys.stderr, flush=True)
    raise SystemExit(128 + number)


def start_step(command: str) -> None:
    """Turn SIGTERM into a clean exit (temporaries are removed on the way out); when a workflow
    started this step, say so in its log (a killed job's log is never empty) and watch it."""
    global _watched
    signal.signal(signal.SIGTERM, _on_signal)
    workflow = os.environ.get(WORKFLOW_PID_ENV, "")
    if workflow.isdigit() and _watched is None:
        print(f"dpruner {command}: started, pid {os.getpid()}", file=sys.stderr, flush=True)
        _watched = {"parent": os.getppid(), "workflow": int(workflow)}
        ensure_parents_alive()
        threading.Thread(target=_watch, name="dpruner-workflow-watch", daemon=True).start()
