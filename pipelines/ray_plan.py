"""The Ray Data plan: items -> actor pool (read, mask, fill, encode, write) -> row tables.

For CPU fills the whole per-item chain runs inside one actor stage: splitting decode, fill and
encode into separate Ray stages costs a serialisation and a scheduling hop per image, which on a
2-core machine measured ~0.6x a plain process pool. Rows stream back to the driver one batch at
a time and are written out immediately; the driver never holds the whole index.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from pipelines.errors import Reason, RunError
from pipelines.faults import ENV as FAULTS_ENV
from pipelines.faults import strike
from pipelines.process import ItemProcessor, RunPlan
from pipelines.schema import rows_to_table
from pipelines.supervision import Watchdog, create_ledger, ledger_stats, start_refusal

# Library thread pools are pinned to one thread per worker; parallelism comes from processes.
THREAD_PINS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
# Work tables carry the Ray node that made them; the driver counts it for the run record and
# drops it before the sink, so a cluster run's index equals a local run's.
NODE_COLUMN = "node_id"
LEDGER_TIMEOUT_S = 60  # a ledger that does not answer within this fails the task
ACTOR_START_DEATHS = 2  # constructor deaths in a row Ray Data replaces before the run fails
BLOCKS_PER_ACTOR = 16
MAX_BLOCK_ITEMS = 1024
# Set by Ray's job supervisor in a submitted job's driver: the job's JobConfig as JSON.
JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def pin_threads() -> None:
    """One thread per library pool in this process (cv2, torch if already loaded)."""
    import cv2

    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


class InpaintActor:
    """A Ray Data callable class: loads the inpainter once, processes batches of items.

    Every batch is announced to the run's ledger and guarded by a watchdog
    (``pipelines.supervision``): a retried batch (a worker died on it) runs item by item, and
    an item that keeps killing its worker, or runs past ``item_timeout_s``, is quarantined.
    """

    def __init__(self, plan: RunPlan, device: str, ledger: str) -> None:
        import ray

        context = ray.get_runtime_context()
        self.ledger = ray.get_actor(ledger)
        # Told before anything that may kill this process: Ray restarts a constructor that
        # crashes forever, so the ledger counts the starts that never finished and, past a
        # bound, refuses to start (an exception here ends the actor for good).
        refusal = ray.get(
            self.ledger.starting.remote(context.get_actor_id()), timeout=LEDGER_TIMEOUT_S
        )
        if refusal is not None:
            raise RunError(refusal)
        strike("actor:start")  # reliability tests: a constructor that always dies
        pin_threads()
        self.processor = ItemProcessor(plan, device=device)
        pin_threads()  # again: loading a model imports torch, which starts a thread per core
        self.node_id = context.get_node_id()
        register = self.ledger.register.remote(context.get_actor_id(), context.current_actor)
        ray.get(register, timeout=LEDGER_TIMEOUT_S)
        self.timeout = plan.manifest.compute.item_timeout_s
        self.watchdog = Watchdog(self.ledger)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        items = batch.to_pylist()
        ids = [item["image_id"] for item in items]
        retry = ray.get(self.ledger.begin_batch.remote(ids), timeout=LEDGER_TIMEOUT_S)
        rows = self._one_by_one(items) if retry else self._guarded(items)
        self._finished(ids)
        table = rows_to_table(rows)
        return table.append_column(NODE_COLUMN, pa.repeat(self.node_id, table.num_rows))

    def _one_by_one(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        import ray

        rows = []
        for item in items:
            ask = self.ledger.begin_item.remote(item["image_id"])
            verdict = ray.get(ask, timeout=LEDGER_TIMEOUT_S)
            if verdict is not None:
                rows.append(self._stopped(item, Reason(verdict)))
                continue
            rows.extend(self._guarded([item]))
            self._finished([item["image_id"]])
        return rows

    def _finished(self, ids: list[str]) -> None:
        import ray

        # Waited for: a fire-and-forget call can be lost when the next item kills this
        # process, and items that finished but seem not to would use up their attempts.
        ray.get(self.ledger.finish.remote(ids), timeout=LEDGER_TIMEOUT_S)

    def _guarded(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        alone = items[0]["image_id"] if len(items) == 1 else None
        self.watchdog.arm(self.timeout * len(items), alone)
        try:
            return self._safely(items)
        finally:
            self.watchdog.disarm()

    def _safely(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Process items; an exception no stage caught costs only the item it came from."""
        try:
            return self.processor.process(items)
        except RunError:
            raise
        except Exception as exc:  # a bug outside every guard: never drop the block's rows
            if len(items) > 1:
                return [row for item in items for row in self._safely([item])]
            detail = f"{type(exc).__name__}: {exc}"
            return [self.processor.quarantine_row(items[0], Reason.UNEXPECTED_ERROR, detail, "")]

    def _stopped(self, item: dict[str, Any], reason: Reason) -> dict[str, Any]:
        if reason is Reason.TIMEOUT:
            detail = f"ran longer than compute.item_timeout_s ({self.timeout:g} s)"
        else:
            attempts = self.processor.plan.manifest.compute.max_item_attempts
            detail = f"its worker process died each of the {attempts} times it ran on its own"
        return self.processor.quarantine_row(item, reason, detail, "supervision")


class _QuietRay(logging.Filter):
    """Drop Ray's chatter that says nothing to a user of this tool."""

    NOISE = ("Token authentication is enabled", "Progress bars disabled", "execution finished in")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.NOISE)


def quiet_ray_logs() -> None:
    """Install the filter on Ray's handlers (Ray configures its loggers on import)."""
    for name in ("ray", "ray.data"):
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if not any(isinstance(f, _QuietRay) for f in handler.filters):
                handler.addFilter(_QuietRay())


@contextmanager
def ray_session(address: str | None) -> Iterator[dict[str, Any]]:
    """Connect to ``address`` (or RAY_ADDRESS, or a new local instance) unless already connected."""
    import ray

    if ray.is_initialized():
        yield {"address": "existing", "owned": False}
        return
    quiet_ray_logs()
    check_address(address)
    try:
        context = ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
            runtime_env=runtime_env_for(address),
        )
    except ConnectionError as exc:
        raise ConnectionError(f"{exc}{_auth_hint()}") from None
    try:
        yield {"address": context.address_info.get("address", address), "owned": True}
    finally:
        ray.shutdown()


def check_address(address: str | None) -> None:
    """Refuse a Ray Client address (``ray://``, given or in RAY_ADDRESS), saying what works."""
    target = address or os.environ.get("RAY_ADDRESS") or ""
    if target.startswith("ray://"):
        # Ray Data's streaming executor needs a real driver (Ray 2.60 fails deep inside it
        # with "'Worker' object has no attribute 'core_worker'"): say what works instead
        raise RunError(
            f"{target}: Ray Data cannot run through Ray Client (ray://); run the driver on "
            "the cluster: ray job submit --address http://HEAD:8265 -- pipeline run MANIFEST"
        )


def runtime_env_for(address: str | None) -> dict[str, Any]:
    """The driver's runtime_env: thread pins, plus our code when workers may be elsewhere.

    Inside ``ray job submit`` the job's own runtime_env wins: Ray refuses to merge a driver's
    runtime_env that sets a field or env var the job already set, so those are left out.
    """
    job = json.loads(os.environ.get(JOB_CONFIG_VAR) or "{}").get("runtime_env") or {}
    pins = {k: v for k, v in THREAD_PINS.items() if k not in job.get("env_vars", {})}
    if os.environ.get(FAULTS_ENV):  # the reliability tests' fault plan reaches every worker
        pins[FAULTS_ENV] = os.environ[FAULTS_ENV]
    runtime_env: dict[str, Any] = {"env_vars": pins} if pins else {}
    if (address or os.environ.get("RAY_ADDRESS")) and "py_modules" not in job:
        import inpaint_ops
        import pipelines

        # A cluster's workers get this code shipped with the job, so nodes need only the
        # third-party packages. Folders, not module objects: Ray deep-copies a submitted
        # job's runtime_env, and a module cannot be copied.
        runtime_env["py_modules"] = [
            os.path.dirname(str(m.__file__)) for m in (pipelines, inpaint_ops)
        ]
    return runtime_env


def _auth_hint() -> str:
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return ""
    # Ray 2.60 clusters run with token auth by default, and a client given an address never
    # turns it on by itself: the refusal then shows up only as this connection error.
    return (
        " (if the cluster uses token authentication, set RAY_AUTH_MODE=token and give the "
        "cluster's token in RAY_AUTH_TOKEN or a file named by RAY_AUTH_TOKEN_PATH)"
    )


def block_rows(items: int, batch_size: int, actors: int) -> int:
    """Items per Ray block: whole batches, about BLOCKS_PER_ACTOR blocks per actor, at most
    MAX_BLOCK_ITEMS (rounded to a batch).

    Every block costs the driver an object reference and a task, so 100 M items cannot be a
    block per batch; many blocks per actor keep the actors evenly loaded to the end.
    """
    batches = math.ceil(items / (batch_size * actors * BLOCKS_PER_ACTOR))
    rows = batch_size * min(max(batches, 1), max(MAX_BLOCK_ITEMS // batch_size, 1))
    if items < rows * actors:  # fewer items than a block per actor: split them evenly
        return max(math.ceil(items / actors), 1)
    return rows


def gpus_to_use(requested: float) -> float:
    """GPUs per actor: as asked when the cluster has them, else 0 (the manifest runs on CPU)."""
    import ray

    if requested <= 0:
        return 0
    available = ray.cluster_resources().get("GPU", 0)
    if available < requested:
        logging.getLogger("synthfill").warning(
            "compute.gpus_per_actor is %s but the cluster has %s GPUs: running on CPU",
            requested,
            available,
        )
        return 0
    return requested


def execute(
    plan: RunPlan, items: pa.Table, gpus: float, report: dict[str, Any] | None = None
) -> Iterator[pa.Table]:
    """Run every item (a row of ``run.work_table``) through the actor pool; yield work tables.

    ``report`` receives the supervision counts (retried batches, worker_crash, timeout) at the
    end. Every wait is bounded: Ray Data fails the run when nothing moves for longer than the
    slowest batch may take (``no_progress_timeout_s``).
    """
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    compute = plan.manifest.compute
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI draws one bar for the whole run
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    ctx.execution_no_progress_timeout_s = no_progress_timeout_s(compute)
    # A constructor that raises (the ledger's refusal, a model that cannot load) is replaced
    # this many times in a row, then the run fails with its error.
    ctx.max_consecutive_actor_init_deaths = ACTOR_START_DEATHS
    rows = block_rows(items.num_rows, compute.batch_size, compute.actors)
    blocks = max(math.ceil(items.num_rows / rows), 1)
    # unique per execution: a resumed run keeps its run id, and a killed ledger's name lingers
    name = f"synthfill-ledger-{plan.run_id}-{uuid.uuid4().hex[:8]}"
    ledger = create_ledger(name, compute.max_item_attempts)
    try:
        # Slices share the table's buffers; each goes to the object store as one block.
        dataset = ray.data.from_arrow([items.slice(i * rows, rows) for i in range(blocks)])
        quiet_ray_logs()
        dataset = dataset.map_batches(
            InpaintActor,
            fn_constructor_kwargs={
                "plan": plan,
                "device": "cuda" if gpus else "cpu",
                "ledger": name,
            },
            batch_size=compute.batch_size,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=min(compute.actors, blocks)),
            num_cpus=compute.cpus_per_actor,
            num_gpus=gpus or None,
            # Ray Data's actor pools restart actors and retry their tasks without limit
            # (max_restarts=-1, max_task_retries=-1; passing them is deprecated since 2.60):
            # the ledger is what bounds the deaths an item, or a constructor, may cause.
        )
        yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    except Exception as exc:
        refusal = start_refusal(ledger)
        if refusal is not None:  # Ray's error would bury it in an actor-death dump
            raise RunError(refusal) from exc
        raise
    finally:
        stats = ledger_stats(ledger)
        if report is not None:
            report["supervision"] = stats


def no_progress_timeout_s(compute: Any) -> float:
    """How long the whole pool may show no progress before the run fails: a batch running to
    its time limit, plus an actor restart, twice over (never less than ten minutes)."""
    return max(600.0, 2 * (compute.item_timeout_s * compute.batch_size + 120))
