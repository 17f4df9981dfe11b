"""Paillier work that runs in worker processes (top-level functions, plain arguments).

The key owner's encryptions take its private key as JSON (a worker shares no
memory with the node); parsing it and building its fixed-base tables costs as
much as a few hundred encryptions, so each worker keeps the last few keys it
was given (``_owner_key``). Ciphertexts travel as packed fixed-width bytes
(``PaillierPublicKey.ciphertext_bytes`` each), which is also how they go on
the wire: no list of Python ints is built in the node's own process.
"""

from __future__ import annotations

import functools

import gmpy2
from gmpy2 import mpz

from cleanroom.federated.paillier import (
    InvalidCiphertextError,
    PaillierPrivateKey,
    private_key_from_json,
)
from cleanroom.matching.workers import SecretRef, resolve_secret


def _owner_key(private_key_json: str | SecretRef, min_bits: int) -> PaillierPrivateKey:
    return _parsed_key(resolve_secret(private_key_json), min_bits)


@functools.lru_cache(maxsize=4)
def _parsed_key(private_key_json: str, min_bits: int) -> PaillierPrivateKey:
    key = private_key_from_json(private_key_json, min_bits=min_bits)
    key.precompute()
    return key


def encrypt_scaled(private_key_json: str, min_bits: int, values: list[int]) -> list[int]:
    """Key-owner Paillier encryption in a worker process (the key stays in the party)."""
    return _owner_key(private_key_json, min_bits).encrypt_many(values)


def encrypt_packed(private_key_json: str, min_bits: int, values: list[int]) -> bytes:
    """``encrypt_scaled``, packed fixed-width (``ciphertext_bytes`` each)."""
    key = _owner_key(private_key_json, min_bits)
    width = key.public_key.ciphertext_bytes
    return b"".join(c.to_bytes(width, "big") for c in key.encrypt_many(values))


def encrypt_bits_packed(private_key_json: str, min_bits: int, bits: bytes) -> bytes:
    """``Enc(b)`` for every byte ``b`` of ``bits`` (0 or 1), packed fixed-width."""
    return encrypt_packed(private_key_json, min_bits, list(bits))


def check_packed(n: int, packed: bytes, width: int) -> int:
    """How many valid ciphertexts ``packed`` holds: each in ``(0, n²)`` and a unit mod ``n``;
    ``InvalidCiphertextError`` names the first that is not."""
    if len(packed) % width:
        raise InvalidCiphertextError(
            f"ciphertext bytes have length {len(packed)}, not a multiple of {width}"
        )
    modulus, n2 = mpz(n), mpz(n) * n
    count = len(packed) // width
    for i in range(count):
        c = mpz(int.from_bytes(packed[i * width : (i + 1) * width], "big"))
        if not 0 < c < n2 or gmpy2.gcd(c % modulus, modulus) != 1:
            raise InvalidCiphertextError("not a ciphertext under the run's key", i)
    return count


def decrypt_packed(
    private_key_json: str, min_bits: int, packed: bytes, width: int, slots: int, slot_bits: int
) -> bytes:
    """Every ciphertext of ``packed`` decrypted and split into ``slots`` fields of
    ``slot_bits`` (little end first), as little-endian uint64 each; a plaintext wider
    than the packing is an InvalidCiphertextError."""
    key = _owner_key(private_key_json, min_bits)
    mask = (1 << slot_bits) - 1
    out = bytearray()
    for i in range(len(packed) // width):
        c = int.from_bytes(packed[i * width : (i + 1) * width], "big")
        try:
            m = key.decrypt_raw(c)
        except InvalidCiphertextError as exc:
            raise InvalidCiphertextError(str(exc), i) from exc
        if m.bit_length() > slots * slot_bits:
            raise InvalidCiphertextError(
                f"the plaintext has {m.bit_length()} bits, more than {slots} slots of {slot_bits}",
                i,
            )
        for k in range(slots):
            out += ((m >> (slot_bits * k)) & mask).to_bytes(8, "little")
    return bytes(out)
