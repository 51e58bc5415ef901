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
- A constructor that dies (a model or library crashing the process on load) is restarted by
  Ray forever too: each actor tells the ledger before it starts, and past MAX_START_DEATHS
  starts in a row that never finished, the next start is refused and the run fails saying so.

Each death brings an item closer to a verdict, so a run always ends; the ledger's counts (and
the slowest times from an item's solo start to its verdict) go to the run record. Retried work
rewrites identical bytes (content-stable keys) and only the final attempt's rows reach the
index, so nothing is doubled.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from typing import Any

from pipelines.errors import Reason

MAX_START_DEATHS = 3  # constructor deaths in a row (across the pool) before the run stops
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
        self.workers: dict[str, Any] = {}  # the pool's actors by id, to stop them at the end
        self.alone_since: dict[str, float] = {}  # when each item last started on its own
        self.slowest: dict[str, float] = {}  # worst seconds from an item's solo start to a verdict
        self.pending: set[str] = set()  # actors whose constructor began and has not finished
        self.start_deaths = 0  # constructors that died, in a row (any finished start resets)

    def starting(self, actor_id: str) -> str | None:
        """An actor's constructor begins: None to go on, else why the pool must not start.

        A start of an actor whose previous start never registered means that constructor
        died; past MAX_START_DEATHS such deaths in a row the run is stopped.
        """
        if actor_id in self.pending:
            self.counts["start_deaths"] += 1
            self.start_deaths += 1
        self.pending.add(actor_id)
        return self.refusal()

    def refusal(self) -> str | None:
        if self.start_deaths <= MAX_START_DEATHS:
            return None
        return (
            f"the inpainting actors died {self.start_deaths} times in a row while starting "
            "(before their first batch: a model or library that crashes the process on load); "
            "see the Ray worker logs"
        )

    def register(self, actor_id: str, worker: Any) -> None:
        """An actor finished its constructor; a second call for one id is a restart."""
        if actor_id in self.workers:
            self.counts["actor_restarts"] += 1
        self.workers[actor_id] = worker
        self.pending.discard(actor_id)
        self.start_deaths = 0

    def registered(self) -> list[Any]:
        return list(self.workers.values())

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
            return self._verdict(image_id, Reason.TIMEOUT)
        if self.alone[image_id] >= self.max_item_attempts:
            return self._verdict(image_id, Reason.WORKER_CRASH)
        self.alone[image_id] += 1
        self.alone_since[image_id] = time.monotonic()
        return None

    def _verdict(self, image_id: str, reason: Reason) -> str:
        self.counts[reason.value] += 1
        self._note(f"{reason.value}_verdict_s", image_id)
        return reason.value

    def _note(self, figure: str, image_id: str) -> None:
        """Keep the worst time from the item's last solo start to now (the run record shows
        how long a hung or poison item held its actor beyond its limit)."""
        if image_id in self.alone_since:
            took = time.monotonic() - self.alone_since[image_id]
            self.slowest[figure] = round(max(self.slowest.get(figure, 0.0), took), 3)

    def mark_hung(self, image_id: str) -> None:
        self.hung.add(image_id)
        self.counts["watchdog_exits"] += 1
        self._note("watchdog_fired_s", image_id)

    def finish(self, ids: list[str]) -> None:
        self.finished.update(ids)

    def stats(self) -> dict[str, float]:
        """Counts (retried batches, actor restarts, watchdog exits, verdicts by reason) and the
        slowest solo-start-to-verdict times in seconds."""
        return {**self.counts, **self.slowest}


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


def start_refusal(ledger: Any) -> str | None:
    """Why the pool was refused a start (constructors kept dying), if it was; None when the
    ledger cannot say (it is gone too), so the caller's own error stands."""
    import ray

    try:
        return ray.get(ledger.refusal.remote(), timeout=30)
    except Exception as exc:
        _log.warning("could not ask the run's ledger why the actors stopped: %s", exc)
        return None


def ledger_stats(ledger: Any) -> dict[str, float]:
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
