"""The committed stubs must be what the .proto files generate (check-protos)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Version stamps differ between grpcio-tools releases without changing the
# generated API; everything else must match byte for byte.
VERSION_LINES = re.compile(
    r"^(# Protobuf Python Version:.*|GRPC_GENERATED_VERSION = .*|\s*\d+,\s*$|\s*'',\s*$)$", re.M
)


def normalized(text: str) -> str:
    return VERSION_LINES.sub("", text)


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    written = gen.generate(tmp_path)
    assert {p.name for p in written} == {
        "cleanroom_pb2.py",
        "cleanroom_pb2.pyi",
        "cleanroom_pb2_grpc.py",
    }
    for fresh in written:
        committed = ROOT / "proto" / fresh.name
        assert committed.exists(), f"{committed.name} is not committed; run scripts/gen_protos.py"
        assert normalized(committed.read_text()) == normalized(fresh.read_text()), (
            f"proto/{fresh.name} is stale: run `python scripts/gen_protos.py` and commit the result"
        )


def test_every_identifier_type_has_its_enum_value_on_the_wire() -> None:
    from cleanroom.audiences.identifiers import ID_TYPES
    from cleanroom.proto import cleanroom_pb2 as pb
    from cleanroom.proto import serde

    names = {v.name.lower() for v in pb.IdType.DESCRIPTOR.values if v.number}
    assert names == set(ID_TYPES)
    for id_type in ID_TYPES:
        assert serde.id_type_from_pb(serde.id_type_to_pb(id_type)) == id_type
