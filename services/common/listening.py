"""Where a server listens, reported back: with `--port 0` the OS picks the gRPC port, with
`--metrics-port auto` the Prometheus port, and `--ports-file PATH` (env PMIS_PORTS_FILE) gets
`{"grpc": PORT, "metrics": PORT, "pid": PID}` once both listen. Launchers and tests start servers this way and
never race another process for a port they picked."""

from __future__ import annotations

import json
import os
from pathlib import Path

ANY_METRICS_PORT = -1  # `--metrics-port auto`: any free port (0 keeps meaning "no metrics server")


def metrics_port_arg(value: str) -> int:
    """argparse type of --metrics-port: a port, 0 (off) or `auto`."""
    if str(value).strip().lower() == "auto":
        return ANY_METRICS_PORT
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"not a port: {value}")
    return port


def write_ports(path: Path | str | None, grpc_port: int, metrics_port: int) -> None:
    """Atomically, so that a reader never sees half a file."""
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"grpc": grpc_port, "metrics": metrics_port, "pid": os.getpid()}))
    os.replace(tmp, path)


def read_ports(path: Path | str) -> dict | None:
    """The ports a server reported, or None while it has not yet."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
