"""Poison and hung items: bounded retries and a per-item time limit around the actor pool.

Ray Data retries a task whose worker died, without limit: one image that kills its worker every
time (a decoder segfault, an out-of-memory kill) would make the run retry forever. So workers
tell a small per-run *ledger* actor what they start and finish:

- A batch whose items were started before and never finished is a retry after a death. It is
  processed one item at a time, each announced to the ledger first.
- An item that was started alone ``max_item_attempts`` times without finishing is answered with
  a ``worker_crash`` quarantine row instead of being run again.
- A watchdog thread in each actor enforces ``item_timeout_s`` per item (a batch gets the sum):
  past it the actor tells the ledger which item hung and exits, Ray restarts the actor and
  retries the batch, and the hung item becomes a ``timeout`` quarantine row.

Each death brings an item closer to a verdict, so a run always ends; the ledger's counts go to
the run record. Retried work rewrites identical bytes (content-stable keys) and only the final
attempt's rows reach the index, so nothing is doubled.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from typing import Any

from pipelines.errors import Reason

EXIT_HUNG = 75  # what an actor exits with when its watchdog fires (EX_TEMPFAIL)
_log = logging.getLogger("synthfill")


class Ledger:
    """Per-run record of started and finished items (a Ray actor; one call per batch)."""

    def __init__(self, max_item_attempts: int) -> None:
        self.max_item_attempts = max_item_attempts
        self.started: Counter[str] = Counter()  # batch attempts that included the item
        self.alone: Counter[str] = Counter()  # attempts of the item on its own
        self.finished: set[str] = set()
        self.hung: set[str] = set()
        self.counts: Counter[str] = Counter()
        self.workers: list[Any] = []  # handles of the pool's actors, to stop them at the end

    def register(self, worker: Any) -> None:
        self.workers.append(worker)

    def registered(self) -> list[Any]:
        return self.workers

    def begin_batch(self, ids: list[str]) -> bool:
        """Note a batch's start; True when it is a retry (an item never finished before)."""
        retry = any(self.started[i] and i not in self.finished for i in ids)
        self.started.update(ids)
        if retry:
            self.counts["retried_batches"] += 1
        return retry

    def begin_item(self, image_id: str) -> str | None:
        """Before running one item alone: None to run it, else the quarantine reason."""
        if image_id in self.finished:
            return None  # it finished in an earlier attempt: safe to run again
        if image_id in self.hung:
            self.counts[Reason.TIMEOUT.value] += 1
            return Reason.TIMEOUT.value
        if self.alone[image_id] >= self.max_item_attempts:
            self.counts[Reason.WORKER_CRASH.value] += 1
            return Reason.WORKER_CRASH.value
        self.alone[image_id] += 1
        return None

    def mark_hung(self, image_id: str) -> None:
        self.hung.add(image_id)
        self.counts["watchdog_exits"] += 1

    def finish(self, ids: list[str]) -> None:
        self.finished.update(ids)

    def stats(self) -> dict[str, int]:
        return dict(self.counts)


class Watchdog:
    """Ends this worker process when the work it guards runs past its deadline."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._item: str | None = None
        threading.Thread(target=self._watch, name="synthfill-watchdog", daemon=True).start()

    def arm(self, seconds: float, item: str | None) -> None:
        """Guard the next ``seconds``; ``item`` names the one item being run, if only one."""
        with self._lock:
            self._deadline, self._item = time.monotonic() + seconds, item

    def disarm(self) -> None:
        with self._lock:
            self._deadline, self._item = None, None

    def _watch(self) -> None:
        while True:
            time.sleep(0.2)
            with self._lock:
                expired = self._deadline is not None and time.monotonic() > self._deadline
                item = self._item
            if expired:
                self._expire(item)

    def _expire(self, item: str | None) -> None:
        import ray

        if item is not None:  # one item: it is the one that hung
            try:
                ray.get(self.ledger.mark_hung.remote(item), timeout=10)
            except Exception as exc:  # the ledger is gone: the retry times it out again
                _log.warning("could not record that %s hung: %s", item, exc)
        # A hung call cannot be interrupted from Python (a stuck GPU kernel, a deadlocked
        # library): only ending the process frees the actor. Ray restarts it.
        os._exit(EXIT_HUNG)


def create_ledger(name: str, max_item_attempts: int) -> Any:
    """Start the run's ledger actor (no CPU reserved: it only counts)."""
    import ray

    remote = ray.remote(num_cpus=0, max_restarts=0)(Ledger)
    return remote.options(name=name, lifetime=None).remote(max_item_attempts)


def ledger_stats(ledger: Any) -> dict[str, int]:
    """The ledger's counts; then the pool's actors and the ledger are stopped (bounded waits).

    After a failed run Ray Data can leave its actors alive while anything still references
    the error, holding the CPUs a next run in the same process needs; stopping them here
    makes the end of a run the end of its actors.
    """
    import ray

    try:
        for worker in ray.get(ledger.registered.remote(), timeout=30):
            ray.kill(worker, no_restart=True)
        return ray.get(ledger.stats.remote(), timeout=30)
    finally:
        ray.kill(ledger)
