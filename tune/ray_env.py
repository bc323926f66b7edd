"""Ray's environment for a search: whether a cluster address answers, and how Ray is started or joined.

`check_address` fails in seconds, not minutes, when --address names no reachable Ray cluster (a TCP connection, then
an HTTP/2 preface that Ray's GCS answers in gRPC). A local search's Ray listens on loopback only (`local_loopback`,
set before ray is imported and taken away after it shuts down), authenticates with one private token made once for
every local cluster (`ensure_token`), and keeps its chatter off the terminal (`quiet_ray`); a driver joining a
cluster says it uses token authentication (`token_auth`). `init_ray` starts or joins Ray and checks that it has the
CPUs and GPUs a trial asks for. Nothing here imports ray at module level: the loopback setting must come first.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nanogpt.errors import UserError
from tune.config import SearchConfig


def check_address(address: str, timeout: float = 3.0, grpc_timeout: float = 10.0) -> None:
    """Fail in seconds, not minutes, when a cluster address cannot be reached."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r} is not HOST:PORT (e.g. 127.0.0.1:6379) or 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise UserError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one with "
                        f"`ray start --head --port={port}` or leave out --address for a local Ray") from None
    if not _speaks_grpc(host, int(port), grpc_timeout):
        # ray.init would wait for the GCS there for minutes
        raise UserError(f"{address} is not a Ray cluster: the port is open but gives no gRPC answer (Ray's GCS "
                        f"speaks gRPC there); check the port `ray start --head` printed")


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def _speaks_grpc(host: str, port: int, timeout: float) -> bool:
    """Whether the server answers an HTTP/2 connection preface with a SETTINGS frame, as Ray's GCS (gRPC) does.
    With RAY_USE_TLS the server first wants a TLS handshake: the TCP check is all that is done then."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return True
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(_HTTP2_PREFACE)
            head = b""
            while len(head) < 9:  # a frame header: length (3 bytes), type, flags, stream id (4)
                conn.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = conn.recv(9 - len(head))
                if not chunk:
                    return False
                head += chunk
    except OSError:  # a timeout or a reset: not an HTTP/2 server
        return False
    return head[3] == 0x04


def quiet_ray() -> None:
    """Ray's chatter a user cannot act on stays off the terminal: its INFO/WARNING logs, the
    'Configuration for experiment' box and the TensorBoard hint into /tmp (both printed by the new
    output engine even at verbose=0; the classic one prints nothing at verbose=0). Errors still surface."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)
    state_log = logging.getLogger(EXPERIMENT_STATE_LOGGER)
    if not any(isinstance(f, SupersededUpload) for f in state_log.filters):
        state_log.addFilter(SupersededUpload())


EXPERIMENT_STATE_LOGGER = "ray.tune.execution.experiment_state"


class SupersededUpload(logging.Filter):
    """Drops one error Ray logs with a traceback that a user cannot act on and that changes nothing. Ray uploads the
    experiment's state from a staging folder in the background; a forced save (at the search's end, on Ctrl-C or
    SIGTERM) rewrites that folder while an older upload is still copying it, a temporary file Ray itself writes
    there ('.UUID-tmp-searcher-state-...pkl') is renamed under the copy, and Ray logs the older upload's
    FileNotFoundError. The forced save then uploads the whole state again and waits for it (tune.run's
    checkpoint(force=True, wait=True)), so nothing is lost. Every other error, of that upload or any other, stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, FileNotFoundError) and re.search(r"/[^/']*tmp-[^/']*'", str(exc)) is not None)


_LOOPBACK_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def local_loopback(address: str | None) -> Iterator[None]:
    """A command's time with Ray: a local one (no `address`) listens on 127.0.0.1 only. Ray takes its node address
    when it is imported: on Linux the machine's outward address, and its GCS, raylet and workers then listen on every
    interface; with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 it takes the loopback address, as it does on macOS and
    Windows, and they listen there (ray.init's _node_ip_address turns 127.0.0.1 back into the outward address). Enter
    it before ray is imported; a value the user set is kept. The setting made here is taken away when it ends,
    however it ends: it must not reach this process's later children (a `ray start` of a multi-node cluster refuses
    to run with it)."""
    ours = not address and _LOOPBACK_VAR not in os.environ
    if ours:
        os.environ[_LOOPBACK_VAR] = "0"
    try:
        yield
    finally:
        if ours:
            os.environ.pop(_LOOPBACK_VAR, None)


def ensure_token() -> None:
    """The token a local cluster authenticates with, made once and agreed on. Ray writes ~/.ray/auth_token, where it
    is missing, with a plain open('w'): two clusters started at once on a new machine (two searches, or tests side
    by side) each write their own, and one's nodes then fail the other's check. Here the token is written to a
    private file first and linked into place, which fails where another process got there first: the first
    writer's token is everyone's, readable by its owner only."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path = Path.home() / ".ray" / "auth_token"
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".auth_token.")  # 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))  # what Ray's own generator writes: 64 hex digits
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def init_ray(config: SearchConfig, address: str | None, dashboard: bool) -> None:
    import ray

    if address:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    else:
        ensure_token()
        ray.init(
            address="local",
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",  # never exposed beyond this machine
            logging_level=logging.ERROR,
            # trial stdout/stderr stays in Ray's logs: trial errors reach the user through the
            # progress lines and each trial's error.txt, without worker shutdown chatter
            log_to_driver=False,
        )
    if config.gpus_per_trial > 0:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < config.gpus_per_trial:
            ray.shutdown()
            raise UserError(f"--gpus-per-trial {config.gpus_per_trial:g} but the Ray cluster has {gpus:g} GPUs; "
                            f"use --gpus-per-trial 0 on this machine")
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < config.cpus_per_trial:
        ray.shutdown()
        raise UserError(f"--cpus-per-trial {config.cpus_per_trial:g} but the Ray cluster has {cpus:g} CPUs")


def token_auth() -> None:
    """Ray 2.60 clusters use token authentication; a driver joining one must say so too (Ray only turns it on by
    itself for clusters it starts), and before ray is imported. The token stays where Ray keeps it
    (~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)."""
    if "RAY_AUTH_MODE" not in os.environ and (
        os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").is_file()
    ):
        os.environ["RAY_AUTH_MODE"] = "token"
