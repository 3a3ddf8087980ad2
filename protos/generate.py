"""Generate Python code (+ grpc stubs + mypy .pyi) from protos/pmis/v1/*.proto into pmis/v1/.

Run by `make protos`, by `make install`, by the tests (conftest) and by the servers at start-up
when the generated files are missing or older than the protos. Never edit the output by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "protos"
OUT_DIR = ROOT


def proto_files() -> list[Path]:
    return sorted((PROTO_DIR / "pmis" / "v1").glob("*.proto"))


def outputs(proto: Path) -> list[Path]:
    rel = proto.relative_to(PROTO_DIR).with_suffix("")
    return [OUT_DIR / f"{rel}_pb2.py", OUT_DIR / f"{rel}_pb2_grpc.py"]


def stale() -> bool:
    for proto in proto_files():
        for out in outputs(proto):
            if not out.exists() or out.stat().st_mtime < proto.stat().st_mtime:
                return True
    return False


def generate(force: bool = False) -> bool:
    """Regenerate if needed; returns True when code was generated."""
    if not force and not stale():
        return False
    import importlib.resources

    from grpc_tools import protoc

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    bindir = Path(sys.executable).parent
    args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={OUT_DIR}",
            f"--grpc_python_out={OUT_DIR}"]
    mypy = bindir / "protoc-gen-mypy"
    if mypy.exists():  # typed stubs alongside, when mypy-protobuf is installed (dev extra)
        args += [f"--plugin=protoc-gen-mypy={mypy}", f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
                 f"--mypy_out={OUT_DIR}", f"--mypy_grpc_out={OUT_DIR}"]
    args += [str(p.relative_to(PROTO_DIR)) for p in proto_files()]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    return True


if __name__ == "__main__":
    generated = generate(force="--force" in sys.argv)
    print("generated pmis/v1 from protos/" if generated else "pmis/v1 is up to date")
