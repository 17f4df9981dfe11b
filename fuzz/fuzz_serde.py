"""Coverage-guided fuzzing of the wire decoders (atheris): arbitrary bytes as a message.

    python fuzz/fuzz_serde.py -atheris_runs=100000 [corpus_dir ...]

The first input byte picks one of ``serde``'s ``*_from_pb`` decoders (and, for those
that take one, whether the run's Paillier key is known yet); the rest is parsed as that
decoder's message type and handed to it. Bytes that do not parse are the gRPC layer's
business (``DecodeError``, skipped here); a message that parses must come back as a
domain object or raise ``InvalidInput``, the project's error for bad input. Anything
else would reach a client as INTERNAL, so it is a crash (saved as ``crash-<sha1>``).
"""

from __future__ import annotations

import atexit
import inspect
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["cleanroom.proto.serde"]):
    from google.protobuf.descriptor import FieldDescriptor as FD
    from google.protobuf.message import DecodeError, Message

    from cleanroom.federated.paillier import generate_keypair
    from cleanroom.proto import cleanroom_pb2 as pb
    from cleanroom.proto import serde
    from cleanroom.proto.errors import InvalidInput


# A decoder's name, its message type, the function, and whether it takes a public key.
Decoder = tuple[str, type[Message], Callable[..., Any], bool]


def _decoders() -> list[Decoder]:
    """Every ``*_from_pb`` decoder of a message, read from serde itself, so a new decoder
    is fuzzed without editing this."""
    out: list[Decoder] = []
    for name, fn in sorted(vars(serde).items()):
        if not (name.endswith("_from_pb") and inspect.isfunction(fn)):
            continue
        params = list(inspect.signature(fn).parameters.values())
        annotation = str(params[0].annotation)  # "pb.PartnerMessage" (postponed annotations)
        if not annotation.startswith("pb."):
            continue  # id_type_from_pb takes an int; the message decoders call it
        out.append((name, getattr(pb, annotation[3:]), fn, "public_key" in fn.__code__.co_varnames))
    return out


DECODERS = _decoders()
# One real-size key, made once: the decoders check ciphertext widths against it.
PUBLIC_KEY, _PRIVATE_KEY = generate_keypair(2048)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    _name, message_type, decode, keyed = DECODERS[data[0] % len(DECODERS)]
    try:
        msg = message_type.FromString(data[1:])
    except DecodeError:
        return  # not a message at all: gRPC's deserializer refuses it before serde
    try:
        if keyed:
            decode(msg, PUBLIC_KEY if data[0] // len(DECODERS) % 2 else None)
        else:
            decode(msg)
    except InvalidInput:
        return


_CIPHERTEXT = PUBLIC_KEY.encrypt(7).to_bytes(PUBLIC_KEY.ciphertext_bytes, "big")
_CIPHERTEXT_FIELDS = {"ciphertexts", "revenue", "weights", "constant"}
_SCALARS: dict[int, Any] = {
    FD.TYPE_STRING: "email",
    FD.TYPE_BOOL: True,
    FD.TYPE_DOUBLE: 0.5,
    FD.TYPE_ENUM: 1,
}


def _in_oneof(field: Any) -> bool:
    """In a real oneof; proto3 ``optional`` fields sit alone in a synthetic one."""
    oneof = field.containing_oneof
    return oneof is not None and oneof.name != f"_{field.name}"


def _is_map(field: Any) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _filled(message: Message, depth: int = 0) -> Message:
    """``message`` with every field outside a oneof set to a plausible value, so the
    fuzzer starts from messages that reach the decoders' checks, not from nothing."""
    for field in message.DESCRIPTOR.fields:
        if _in_oneof(field) or _is_map(field):
            continue
        if field.type == FD.TYPE_MESSAGE:
            if depth < 3:
                sub = getattr(message, field.name)
                _filled(sub.add() if field.is_repeated else sub, depth + 1)
            continue
        if field.type == FD.TYPE_BYTES:
            value = _CIPHERTEXT if field.name in _CIPHERTEXT_FIELDS else b"\x01" * 32
        else:
            value = _SCALARS.get(field.type, 2)  # the integer types
        if field.is_repeated:
            getattr(message, field.name).extend([value, value])
        else:
            setattr(message, field.name, value)
    return message


def _seeds() -> list[bytes]:
    """Per decoder: one filled message for each member of its oneof (or just one)."""
    out = []
    for index, (_name, message_type, _decode, keyed) in enumerate(DECODERS):
        members: list[str | None] = [
            f.name for f in message_type.DESCRIPTOR.fields if _in_oneof(f)
        ] or [None]
        for member in members:
            message = _filled(message_type())
            if member is not None:
                _filled(getattr(message, member), 1)
            selector = index + len(DECODERS) if keyed else index  # keyed: with the key
            out.append(bytes([selector]) + message.SerializeToString())
    return out


def main() -> None:
    names = ", ".join(name for name, *_ in DECODERS)
    print(f"fuzzing {len(DECODERS)} decoders: {names}", file=sys.stderr)
    # Filled messages of every type to start from, read after any corpus directory given
    # (the first directory named is where libFuzzer saves what it finds).
    seeds = Path(tempfile.mkdtemp(prefix="fuzz-serde-seeds-"))
    atexit.register(shutil.rmtree, seeds, ignore_errors=True)
    for i, seed in enumerate(_seeds()):
        (seeds / f"seed-{i:03d}").write_bytes(seed)
    sys.argv.append(str(seeds))
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
