"""Fault injection for the reliability tests: die, hang or raise at a named point.

The reliability matrix kills drivers at each commit step and feeds workers items that crash or
hang; the faults must strike the real code paths, in real processes, so they are switched on
by one environment variable that production never sets::

    SYNTHFILL_FAULTS="commit:record=kill,item:shelf_07.jpg=exit"

Each entry is ``POINT=ACTION``. Points: ``commit:<step>`` in the driver (see ``sink``),
``item:<image_id>`` in a worker before it reads the item, ``actor:start`` in an inpainting
actor's constructor (before its model loads). Actions: ``kill`` (SIGKILL itself),
``exit`` (``os._exit``: a worker dying like a segfault), ``exit-once:<marker file>`` (exit
only if the marker does not exist yet, creating it), ``hang`` (sleep forever), ``sleep:<s>``
(pause, e.g. to hold a commit open while another run commits) and ``raise``.
Unset, a check costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import time
from functools import lru_cache

ENV = "SYNTHFILL_FAULTS"
EXIT_CODE = 70  # EX_SOFTWARE: what an injected worker death exits with


class InjectedFault(RuntimeError):
    """Raised by the ``raise`` action."""


def strike(point: str) -> None:
    """Carry out the fault planned for ``point``, if any."""
    action = _plan(os.environ.get(ENV, "")).get(point)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "exit":
        os._exit(EXIT_CODE)
    elif action.startswith("exit-once:"):
        marker = action.split(":", 1)[1]
        try:
            with open(marker, "x"):
                pass
        except FileExistsError:
            return
        os._exit(EXIT_CODE)
    elif action.startswith("sleep:"):
        time.sleep(float(action.split(":", 1)[1]))
    elif action == "hang":
        while True:
            time.sleep(3600)
    elif action == "raise":
        raise InjectedFault(f"fault injected at {point}")
    else:
        raise ValueError(f"{ENV}: unknown action {action!r} for {point!r}")


@lru_cache(maxsize=4)
def _plan(spec: str) -> dict[str, str]:
    plan = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        point, sep, action = entry.rpartition("=")
        if not sep or not point:
            raise ValueError(f"{ENV}: {entry!r} is not POINT=ACTION")
        plan[point] = action
    return plan
