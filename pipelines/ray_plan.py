"""The Ray Data plan: items -> actor pool (read, mask, fill, encode, write) -> row tables.

For CPU fills the whole per-item chain runs inside one actor stage: splitting decode, fill and
encode into separate Ray stages costs a serialisation and a scheduling hop per image, which on a
2-core machine measured ~0.6x a plain process pool. Rows stream back to the driver one batch at
a time and are written out immediately; the driver never holds the whole index.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from pipelines.process import ItemProcessor, RunPlan
from pipelines.schema import rows_to_table

# Library thread pools are pinned to one thread per worker; parallelism comes from processes.
THREAD_PINS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def pin_threads() -> None:
    """One thread per library pool in this process (cv2, torch if already loaded)."""
    import cv2

    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


class InpaintActor:
    """A Ray Data callable class: loads the inpainter once, processes batches of items."""

    def __init__(self, plan: RunPlan, device: str) -> None:
        pin_threads()
        self.processor = ItemProcessor(plan, device=device)
        pin_threads()  # again: loading a model imports torch, which starts a thread per core

    def __call__(self, batch: pa.Table) -> pa.Table:
        return rows_to_table(self.processor.process(batch.to_pylist()))


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
    runtime_env: dict[str, Any] = {"env_vars": dict(THREAD_PINS)}
    if address or os.environ.get("RAY_ADDRESS"):
        # A cluster's workers get this code shipped with the job, so nodes need only the
        # third-party packages installed.
        import inpaint_ops
        import pipelines

        runtime_env["py_modules"] = [pipelines, inpaint_ops]
    context = ray.init(
        address=address,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        runtime_env=runtime_env,
    )
    try:
        yield {"address": context.address_info.get("address", address), "owned": True}
    finally:
        ray.shutdown()


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


def execute(plan: RunPlan, items: list[dict[str, Any]], gpus: float) -> Iterator[pa.Table]:
    """Run every item through the actor pool; yield one work table per finished batch."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    compute = plan.manifest.compute
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI draws one bar for the whole run
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    # Enough blocks to keep every actor busy even when there are fewer items than batches.
    blocks = max(math.ceil(len(items) / compute.batch_size), min(len(items), compute.actors), 1)
    dataset = ray.data.from_items(items, override_num_blocks=blocks)
    quiet_ray_logs()
    dataset = dataset.map_batches(
        InpaintActor,
        fn_constructor_kwargs={"plan": plan, "device": "cuda" if gpus else "cpu"},
        batch_size=compute.batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=min(compute.actors, blocks)),
        num_cpus=compute.cpus_per_actor,
        num_gpus=gpus or None,
    )
    yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")
