"""A real two-node Ray cluster on loopback: where work ran, equality with a local run, jobs.

Each node is a ``ray start --block`` process in a session of its own, with every port chosen
free and its own ``--temp-dir``, so it never meets the test session's local Ray or anyone
else's. The nodes advertise 127.0.0.2 and 127.0.0.3: Ray swaps 127.0.0.1 for the machine's
network address, but keeps the rest of the loopback range, so no traffic leaves loopback.
Teardown stops exactly these processes: SIGTERM to the two starters (each drains and stops
its node), then SIGKILL to whatever is left in their sessions or carries this cluster's
marker. Never ``ray stop``: it kills every Ray on the machine.

The cluster runs with token authentication, like a default Ray 2.60 cluster, and its nodes
hold a credential canary in their environment, as an instance's credentials would be.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import manifest_text, write_images
from s3_servers import free_ports

from pipelines.manifest_loader import load_manifest
from pipelines.ray_plan import THREAD_PINS
from pipelines.run import run_manifest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
VENV_BIN = Path(sys.executable).parent
CANARY = "CANARY-cluster-" + secrets.token_hex(6)
MARKER = "SYNTHFILL_TEST_CLUSTER"  # in every cluster process's environment, to find leftovers
PER_RUN = ["run_id", "elapsed_ms"]  # the only index columns that may differ between two runs


def free_port() -> int:
    return free_ports(1)[0]


@dataclass
class LoopbackCluster:
    """Two 1-CPU nodes; ``env`` is what a client needs (token auth, the venv on PATH)."""

    root: Path
    address: str
    dashboard: str | None
    env: dict[str, str]
    starters: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def ray(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
        """Run the ``ray`` CLI against this cluster; returns the CompletedProcess."""
        command = [str(VENV_BIN / "ray"), *args]
        return subprocess.run(
            command, env=env or self.env, capture_output=True, text=True, timeout=timeout
        )

    def alive_nodes(self) -> set[str]:
        """Node ids the GCS lists as active (``ray status`` needs no dashboard)."""
        out = self.ray("status", f"--address={self.address}").stdout
        active = out.split("Active:")[-1].split("Pending:")[0] if "Active:" in out else ""
        return set(re.findall(r"node_([0-9a-f]+)", active))

    def start_node(self, name: str, ip: str, *args: str) -> None:
        """Start one node; its processes share the starter's session."""
        ports = ["dashboard-agent-listen", "dashboard-agent-grpc", "runtime-env-agent"]
        command = [
            str(VENV_BIN / "ray"),
            "start",
            "--block",
            f"--node-ip-address={ip}",
            "--num-cpus=1",
            f"--object-store-memory={100 * 1024**2}",
            "--disable-usage-stats",
            f"--metrics-export-port={free_port()}",
            *(f"--{port}-port={free_port()}" for port in ports),
            *args,
        ]
        log = (self.root / f"{name}.log").open("wb")
        self.starters.append(
            subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )

    def wait_for(self, nodes: int, timeout: float = 240) -> set[str]:
        """Block until ``nodes`` nodes are alive; fail with the starters' logs otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(proc.poll() is not None for proc in self.starters):
                break
            alive = self.alive_nodes()
            if len(alive) >= nodes:
                return alive
            time.sleep(2)
        logs = "\n".join(p.read_text()[-2000:] for p in sorted(self.root.glob("*.log")))
        raise RuntimeError(f"the cluster did not reach {nodes} nodes:\n{logs}")

    def stop(self) -> list[str]:
        """Stop this cluster's processes only; returns any that survived."""
        for proc in reversed(self.starters):  # the worker node first, then the head
            proc.send_signal(signal.SIGTERM)
        for proc in self.starters:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=60)
        ours = self._leftovers()
        for pid in ours:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(1)
        return [_describe(pid) for pid in self._leftovers()]

    def _leftovers(self) -> list[int]:
        sessions = {proc.pid for proc in self.starters}
        marker = f"{MARKER}={self.root}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with suppress(OSError):
                if (entry / "stat").read_text().split(") ")[-1].startswith("Z"):
                    continue  # a zombie is already dead; its parent reaps it
                # Ray workers rewrite their title over their environment: sessions find them
                if os.getsid(int(entry.name)) in sessions or marker in (
                    entry / "environ"
                ).read_bytes().split(b"\0"):
                    found.append(int(entry.name))
        return found


def _describe(pid: int) -> str:
    with suppress(OSError):
        return f"{pid} {Path(f'/proc/{pid}/cmdline').read_bytes()[:120]!r}"
    return str(pid)


def dashboard_installed() -> bool:
    """The dashboard (and with it ``ray job submit``) needs ray[default]'s packages."""
    return all(importlib.util.find_spec(m) for m in ("aiohttp_cors", "grpc", "opencensus"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[LoopbackCluster]:
    """A head (127.0.0.2, with the job server when installed) and a worker node (127.0.0.3)."""
    # /tmp, not tmp_path: Ray's unix socket paths under the temp dir must stay short
    root = Path(tempfile.mkdtemp(prefix="sfray-", dir="/tmp"))
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # SIGTERM stops a node now, not in 30 s
        "AWS_SECRET_ACCESS_KEY": CANARY,
        MARKER: str(root),
    }
    gcs, dashboard = free_port(), free_port() if dashboard_installed() else None
    cluster = LoopbackCluster(
        root, f"127.0.0.2:{gcs}", dashboard and f"http://127.0.0.1:{dashboard}", env
    )
    head = ["--head", f"--port={gcs}", f"--temp-dir={root}"]
    if dashboard:
        head += ["--include-dashboard=true", "--dashboard-host=127.0.0.1"]
        head += [f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}"]
    else:
        head += ["--include-dashboard=false"]
    try:
        cluster.start_node("head", "127.0.0.2", *head)
        cluster.wait_for(1)
        cluster.start_node("worker", "127.0.0.3", f"--address={cluster.address}")
        cluster.wait_for(2)
        yield cluster
    finally:
        survivors = cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert survivors == [], f"cluster processes left running: {survivors}"


def committed_index(folder: Path):
    """The committed index, sorted by (image_id, variant), without the per-run columns."""
    marker = json.loads((folder / "_COMMITTED").read_text())
    table = pq.read_table(folder / marker["index"]).drop_columns(PER_RUN)
    return table.sort_by([("image_id", "ascending"), ("variant", "ascending")])


def canary_hits(*folders: Path) -> list[str]:
    return [
        str(path)
        for folder in folders
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink() and CANARY.encode() in path.read_bytes()
    ]


def test_two_nodes_share_the_work_and_match_a_local_run(cluster, ray_local, tmp_path):
    write_images(tmp_path / "images", 8)
    manifest = tmp_path / "m.yaml"
    compute = "compute: {actors: 2, batch_size: 1, max_error_rate: 0.0}"
    manifest.write_text(manifest_text(tmp_path / "images", tmp_path / "out", compute=compute))
    # The reference: the same manifest file on this session's local Ray, moved aside so the
    # cluster run writes to the very same output URIs
    assert run_manifest(load_manifest(manifest, [])).status == "committed"
    (tmp_path / "out").rename(tmp_path / "local")
    # Both actors start before any item is handed out, so one fast node cannot take them all
    env = cluster.env | {"RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "180"}
    command = ["pipeline", "run", str(manifest), "--address", cluster.address, "--json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["status"] == "committed"

    ray_record = json.loads((tmp_path / "out/run.json").read_text())["ray"]
    per_node = ray_record["items_per_node"]
    assert ray_record["nodes"] == 2 and set(per_node) == cluster.alive_nodes()
    assert all(n > 0 for n in per_node.values()) and sum(per_node.values()) == 8
    cluster_index = committed_index(tmp_path / "out")
    assert cluster_index.equals(committed_index(tmp_path / "local"))
    assert "node_id" not in cluster_index.column_names
    outputs = cluster_index.select(["output_uri", "output_sha256"]).to_pylist()
    for row in outputs:  # the files at those URIs are the cluster's, byte for byte
        data = Path(row["output_uri"].removeprefix("file://")).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["output_sha256"]
    # the nodes' credentials stay in their environment: not in Ray's logs, not in the dataset
    assert canary_hits(cluster.root, tmp_path / "out") == []


def test_ray_job_submit_with_a_working_dir_commits_the_dataset(cluster, tmp_path):
    if cluster.dashboard is None:
        pytest.skip("ray job submit needs the dashboard: pip install 'ray[default]'")
    job_dir = tmp_path / "job"
    write_images(job_dir / "images", 3)
    # a relative source resolves against the manifest, i.e. inside the shipped working_dir
    (job_dir / "m.yaml").write_text(manifest_text(Path("images"), tmp_path / "out"))
    submit = ["job", "submit", f"--address={cluster.dashboard}"]
    anonymous = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    refused = cluster.ray(*submit, "--", "true", env=anonymous)
    assert refused.returncode != 0 and "Authentication required" in refused.stderr

    # OMP_NUM_THREADS is also one of the driver's own pins: the job's value must win, not clash
    runtime_env = {"working_dir": str(job_dir), "env_vars": {"OMP_NUM_THREADS": "1"}}
    entrypoint = ["pipeline", "run", "m.yaml", "--json"]
    done = cluster.ray(
        *submit, f"--runtime-env-json={json.dumps(runtime_env)}", "--", *entrypoint, timeout=400
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    record = json.loads((tmp_path / "out/run.json").read_text())
    assert (tmp_path / "out/_COMMITTED").exists() and record["status"] == "committed"
    assert record["summary"]["items_ok"] == 3 and sum(record["ray"]["items_per_node"].values()) == 3

    listed = cluster.ray(
        "list", "jobs", "--detail", "--format=json", f"--address={cluster.dashboard}"
    )
    assert CANARY not in listed.stdout
    jobs = json.loads(listed.stdout)
    ours = next(job for job in jobs if job["entrypoint"] == " ".join(entrypoint))
    assert ours["runtime_env"]["env_vars"] == runtime_env["env_vars"]
    assert ours["runtime_env"]["working_dir"].startswith("gcs://")
    for job in jobs:  # what Ray keeps of every job's runtime_env: only what we meant to send
        assert set(job["runtime_env"]) <= {"working_dir", "py_modules", "env_vars"}
        assert set(job["runtime_env"].get("env_vars", {})) <= set(THREAD_PINS)


def test_a_ray_client_address_is_refused_before_any_listing(tmp_path, tiny_manifest, monkeypatch):
    from pipelines.errors import RunError
    from pipelines.manifest_loader import load_manifest
    from pipelines.run import run_manifest

    loaded = load_manifest(tiny_manifest(count=1), [f"source.uri={tmp_path / 'absent'}"])
    # the source does not exist: reaching the listing would raise another error
    with pytest.raises(RunError, match="ray job submit"):
        run_manifest(loaded, address="ray://head:10001")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    with pytest.raises(RunError, match="Ray Client"):
        run_manifest(loaded)
