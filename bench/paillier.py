"""Paillier fast path vs phe, same process, same key, one thread.

    python bench/paillier.py [--n 300] [--bits 2048] [--sum-n 10000]

Encrypts ``--n`` random 64-bit ints with phe's ``public_key.encrypt`` and with the fast path
(key owner: CRT + short-exponent fixed-base table; public: fixed-base table mod n**2, as a peer
holding the JSON public key with ``h_s``; public_full: a key without ``h_s``, full ``r**n``),
decrypts with both, and sums ``--sum-n`` ciphertexts with ``add_many`` (validation included).
Per-call loops, not batches, for the headline numbers; ``paillier_encrypt_batch_per_s`` is
``encrypt_many``. Fixed-base tables are built before timing (``table_build_s``). Prints one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from cleanroom.federated import paillier as P


def rate(count: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return count / (time.perf_counter() - t0), out


def interleaved(
    items: Sequence[Any], fns: dict[str, Callable[[Any], Any]], chunk: int = 25
) -> dict[str, tuple[float, list[Any]]]:
    """Per-call rates of several implementations, run in alternating chunks so that all of
    them see the same machine load (this host is shared)."""
    spent = dict.fromkeys(fns, 0.0)
    outs: dict[str, list[Any]] = {k: [] for k in fns}
    for lo in range(0, len(items), chunk):
        part = items[lo : lo + chunk]
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name].extend([fn(x) for x in part])
            spent[name] += time.perf_counter() - t0
    return {k: (len(items) / spent[k], outs[k]) for k in fns}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=300, help="encryptions/decryptions per variant")
    ap.add_argument("--n-full", type=int, default=100, help="full r**n encryptions (slow)")
    ap.add_argument("--bits", type=int, default=2048)
    ap.add_argument("--sum-n", type=int, default=10_000, help="ciphertexts per add_many")
    args = ap.parse_args()

    t0 = time.perf_counter()
    pub, priv = P.generate_keypair(args.bits)
    keygen_s = time.perf_counter() - t0
    peer = P.public_key_from_json(json.dumps(P.public_key_to_json(pub)))  # what a peer holds
    bare = P.PaillierPublicKey(pub.n)  # no h_s: phe-equivalent full r**n path
    t0 = time.perf_counter()
    priv.precompute()
    peer.precompute()
    table_build_s = time.perf_counter() - t0
    phe_pk, phe_sk = pub.to_phe_public_key(), priv.to_phe_private_key()

    xs = [secrets.randbits(64) for _ in range(args.n)]

    enc = interleaved(xs, {"phe": phe_pk.encrypt, "owner": priv.encrypt, "public": peer.encrypt})
    (phe_enc, phe_cs), (owner_enc, owner_cs) = enc["phe"], enc["owner"]
    public_enc, public_cs = enc["public"]
    owner_batch, _ = rate(args.n, lambda: priv.encrypt_many(xs))
    full_xs = xs[: args.n_full]
    public_full, full_cs = rate(len(full_xs), lambda: [bare.encrypt(x) for x in full_xs])

    pairs = list(zip(owner_cs, phe_cs, strict=True))
    dec_rates = interleaved(
        pairs, {"ours": lambda cp: priv.decrypt(cp[0]), "phe": lambda cp: phe_sk.decrypt(cp[1])}
    )
    (dec, dec_out), (phe_dec, phe_out) = dec_rates["ours"], dec_rates["phe"]

    # correctness, outside the timings: every path decrypts under both implementations
    assert dec_out == xs and phe_out == xs
    assert priv.decrypt_many(public_cs) == xs and priv.decrypt_many(full_cs) == full_xs
    assert [phe_sk.decrypt(P.to_phe_encrypted_number(c, pub)) for c in owner_cs[:20]] == xs[:20]
    assert priv.decrypt_many([P.from_phe_encrypted_number(e, pub) for e in phe_cs[:20]]) == xs[:20]

    pool = owner_cs + public_cs
    pool_plain = xs + xs
    idx = [random.randrange(len(pool)) for _ in range(args.sum_n)]
    big = [pool[i] for i in idx]
    sum_rate, total = rate(args.sum_n, lambda: peer.add_many(big))
    assert priv.decrypt(total) == sum(pool_plain[i] for i in idx)

    rr_full, _ = rate(len(full_xs), lambda: peer.rerandomize_many(owner_cs[: len(full_xs)]))
    rr_short, _ = rate(args.n, lambda: peer.rerandomize_many(owner_cs, full=False))
    rr_owner, _ = rate(args.n, lambda: priv.rerandomize_many(owner_cs))

    print(
        json.dumps(
            {
                "bench": "paillier",
                "bits": pub.bits,
                "exponent_bits": pub.exponent_bits,
                "n": args.n,
                "paillier_encrypt_per_s": round(owner_enc, 1),
                "phe_encrypt_per_s": round(phe_enc, 1),
                "speedup_vs_phe": round(owner_enc / phe_enc, 1),
                "paillier_encrypt_batch_per_s": round(owner_batch, 1),
                "public_encrypt_per_s": round(public_enc, 1),
                "public_full_encrypt_per_s": round(public_full, 1),
                "decrypt_per_s": round(dec, 1),
                "phe_decrypt_per_s": round(phe_dec, 1),
                "sum_per_s": round(sum_rate, 1),
                "rerandomize_full_per_s": round(rr_full, 1),
                "rerandomize_short_per_s": round(rr_short, 1),
                "rerandomize_owner_per_s": round(rr_owner, 1),
                "keygen_s": round(keygen_s, 3),
                "table_build_s": round(table_build_s, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
