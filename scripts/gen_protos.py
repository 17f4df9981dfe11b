"""Regenerate the Python stubs (with .pyi) from proto/*.proto.

The .proto files are compiled as if they lived at ``cleanroom/proto/`` so the
generated modules import each other as ``cleanroom.proto.*``, which is the
installed package name of the ``proto/`` folder.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto into ``out_dir``; returns the generated files."""
    from grpc_tools import protoc  # imported lazily: a test-only dependency

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        pkg = src / "cleanroom" / "proto"
        pkg.mkdir(parents=True)
        protos = sorted(PROTO_DIR.glob("*.proto"))
        for proto in protos:
            shutil.copy(proto, pkg / proto.name)
        gen = Path(tmp) / "gen"
        gen.mkdir()
        include = Path(protoc.__file__).parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"-I{src}",
            f"-I{include}",
            f"--python_out={gen}",
            f"--pyi_out={gen}",
            f"--grpc_python_out={gen}",
        ] + [f"cleanroom/proto/{p.name}" for p in protos]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed: " + " ".join(args))
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for f in sorted((gen / "cleanroom" / "proto").iterdir()):
            target = out_dir / f.name
            shutil.copy(f, target)
            written.append(target)
        return written


def main() -> int:
    for path in generate(PROTO_DIR):
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
