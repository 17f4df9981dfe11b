"""Lookalike jobs on the wire (DESIGN.md §13): every message decoded, nothing more than allowed.

``hidden-seed``: the partner receives only the job's key, blinded brand points
it cannot compare with anything of its own, ciphertexts (one fresh ``Enc(y)``
per offered row), the decryptions of its masked sums, the metrics and the
package id — no label, no membership flag, no brand identifier. Both modes:
the brand receives blinded points, values, ciphertexts and sizes — no user id,
no feature value, no score. And from everything the partner received, a
label-recovery attack does no better than the final model itself.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import gmpy2
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cleanroom.audiences.reader import read_hashed_chunks
from cleanroom.client.lookalike import prepare_lookalike, run_lookalike
from cleanroom.client.sdk import Connection
from cleanroom.federated.lookalike.messages import LookalikeMode
from cleanroom.federated.lookalike.partner import score_rows
from cleanroom.matching.bulk import whole_array
from cleanroom.matching.workers import dst_for, hash_points
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.server.store import Role
from tests.test_lookalike_e2e import BRAND_IDS, OPTIONS, request
from tests.test_lookalike_e2e import world as world
from tests.wire import RecordingProxy, data_by_stream, grpc_messages

PARTNER_FIELDS = {"hello", "slot_points", "brand_values", "sums", "holdout", "package"}
MATCH_FIRST_FIELDS = PARTNER_FIELDS | {"exchanged"}


def recorded(world: dict[str, Any], mode: LookalikeMode, out: str) -> dict[str, Any]:
    prepared = prepare_lookalike(request(world, out, mode=mode, l2=0.7))
    node = world["node"]
    with RecordingProxy(node.target) as proxy:
        conn = Connection(proxy.target, world["tokens"]["brand"][Role.PARTNER])
        manifest = asyncio.run(run_lookalike(conn, prepared))
        sent, received = bytes(proxy.to_server), bytes(proxy.to_client)
        connections = [(bytes(s), bytes(r)) for s, r in proxy.connections]
    # Every stream of every connection (a matched job runs its match first); the job's is
    # the one that opens with a lookalike hello.
    streams = []
    for to_node, to_partner in connections:
        downs = data_by_stream(to_partner, client_side=False)
        for k, v in data_by_stream(to_node, client_side=True).items():
            if v:
                streams.append((v, downs.get(k, b"")))
    [(up, down)] = [(u, d) for u, d in streams if opens_a_job(u)]
    return {
        "prepared": prepared,
        "manifest": manifest,
        "before": [u for u, _ in streams if u is not up],  # the other streams
        "sent": sent,
        "received": received,
        "up": grpc_messages(up, pb.LookalikePartnerMessage),
        "down": grpc_messages(down, pb.LookalikeBrandMessage),
    }


def opens_a_job(stream: bytes) -> bool:
    try:
        first = grpc_messages(stream, pb.LookalikePartnerMessage)[0]
    except Exception:
        return False
    return first.WhichOneof("body") == "hello" and first.hello.mode in ("matched", "hidden-seed")


@pytest.fixture(scope="module")
def hidden(world: dict[str, Any]) -> dict[str, Any]:
    return recorded(world, LookalikeMode.HIDDEN_SEED, "wire-hidden")


@pytest.fixture(scope="module")
def matched(world: dict[str, Any]) -> dict[str, Any]:
    return recorded(world, LookalikeMode.MATCHED, "wire-matched")


def brand_secrets(world: dict[str, Any]) -> tuple[list[bytes], list[bytes]]:
    """The CRM's identifier digests and their curve points H(s) (unblinded)."""
    digests, points = [], []
    for chunk in read_hashed_chunks(world["synth"].crm_path, BRAND_IDS, OPTIONS):
        for spec, col in zip(BRAND_IDS, chunk.columns, strict=True):
            packed = col.digests
            digests += [packed[i : i + 32] for i in range(0, len(packed), 32)]
            hashed = hash_points(packed, dst_for(str(spec.id_type)))
            points += [hashed[i : i + 32] for i in range(0, len(hashed), 32)]
    return digests, points


def partner_secrets(prepared: Any) -> tuple[list[bytes], list[bytes]]:
    digests, points = [], []
    for column in prepared.users.data.columns:
        packed = column.digests
        digests += [packed[i : i + 32] for i in range(0, len(packed), 32)]
        hashed = hash_points(packed, dst_for(column.id_type))
        points += [hashed[i : i + 32] for i in range(0, len(hashed), 32)]
    return digests, points


def chunks(data: bytes, width: int) -> set[bytes]:
    return {data[i : i + width] for i in range(0, len(data), width)}


def check_brand_side(world: dict[str, Any], rec: dict[str, Any]) -> None:
    """What the brand received: blinded points, values, ciphertexts, sizes. Nothing else."""
    up, sent, prepared = rec["up"], rec["sent"], rec["prepared"]
    kinds = [m.WhichOneof("body") for m in up]
    assert kinds[0] == "hello" and kinds[-1] == "package"
    assert set(kinds) == (MATCH_FIRST_FIELDS if up[0].hello.match_first else PARTNER_FIELDS)
    hello = up[0].hello
    assert not hello.scales and hello.row_norm == 0  # label-DP off: no feature bound either
    users = pd.read_csv(world["synth"].users_path, dtype=str, keep_default_na=False)
    for user in users["user_id"]:
        assert user.encode() not in sent
    digests, points = partner_secrets(prepared)
    slots = set()
    for m in up:
        if m.HasField("slot_points"):
            slots |= chunks(m.slot_points.points, 32)
    said = [m.exchanged.rows for m in up if m.HasField("exchanged")]
    assert len(said) == hello.match_first
    exchanged = said[0] if said else hello.rows
    assert len(slots) == exchanged * hello.slots  # every slot a distinct point
    assert not slots & set(digests) and not slots & set(points)
    features = pd.read_csv(world["synth"].features_path, dtype=str, keep_default_na=False)
    checked = 0
    for column in world["synth"].numeric:
        for text in features[column].head(200):
            value = float(text)
            if value != round(value):  # integers are too short to search for
                checked += 1
                assert np.float64(value).tobytes() not in sent
                # Shorter text turns up by chance in a megabyte of random bytes.
                if len(text) >= 6:
                    assert text.encode() not in sent
    assert checked > 100
    width = len(rec["down"][0].accepted.public_key_n) * 2
    sums = [m.sums for m in up if m.HasField("sums")]
    assert len(sums) == 1 and len(sums[0].ciphertexts) == width * (hello.features + 1)
    [holdout] = [m.holdout for m in up if m.HasField("holdout")]
    assert len(holdout.ciphertexts) == width * (2 + len(hello.tiers))
    [package] = [m.package for m in up if m.HasField("package")]
    assert {f.name for f, _ in package.ListFields()} == {"scored", "tier_sizes"}


def test_hidden_seed_partner_receives_only_ciphertexts_and_blinded_points(
    world: dict[str, Any],
    hidden: dict[str, Any],
) -> None:
    down, received = hidden["down"], hidden["received"]
    kinds = [m.WhichOneof("body") for m in down]
    assert kinds[0] == "accepted" and kinds[-1] == "done"
    assert set(kinds) == {"accepted", "brand_points", "labels", "decrypted", "metrics", "done"}
    assert "matched" not in kinds  # no membership flag in hidden-seed
    digests, points = brand_secrets(world)
    brand_points = set()
    for m in down:
        if m.HasField("brand_points"):
            brand_points |= chunks(m.brand_points.points, 32)
    # Both lists padded to one size: the partner learns neither list's size.
    accepted = down[0].accepted
    assert len(brand_points) == 2 * accepted.brand_points
    assert not brand_points & set(points) and not brand_points & set(digests)
    for secret in digests + points:
        assert secret not in received
    # One fresh Enc(y) per offered row, and no two alike.
    width = len(accepted.public_key_n) * 2
    labels = b"".join(m.labels.ciphertexts for m in down if m.HasField("labels"))
    offered = hidden["up"][0].hello.rows
    assert len(labels) == width * offered
    assert len(chunks(labels, width)) == offered
    [decrypted] = [m.decrypted for m in down if m.HasField("decrypted")]
    assert len(decrypted.values) == hidden["up"][0].hello.features + 1
    check_brand_side(world, hidden)


def test_matched_mode_brand_receives_no_user_data(
    world: dict[str, Any],
    matched: dict[str, Any],
) -> None:
    kinds = {m.WhichOneof("body") for m in matched["down"]}
    assert "matched" in kinds  # the flags the mode discloses, by design
    check_brand_side(world, matched)
    # It matched first (the OT-extension PSI, no count reported), then sent the slots of
    # the rows that matched only: as many as the plaintext join finds.
    sessions = []
    for stream in matched["before"]:
        try:
            msgs = grpc_messages(stream, pb.PartnerMessage)
        except Exception:
            continue
        if msgs and msgs[0].WhichOneof("body") == "hello":
            sessions.append(msgs)
    [kkrt] = sessions
    assert kkrt[0].hello.method == pb.PSI_METHOD_KKRT
    assert not kkrt[-1].finish.report_count and kkrt[-1].finish.matched_records == 0
    hello = matched["up"][0].hello
    partner = matched["prepared"].partner
    digests = set(brand_secrets(world)[0])
    truth = np.zeros(partner.data.row_count, dtype=bool)
    for column in partner.data.columns:
        rows = whole_array(column.rows)
        for i, row in enumerate(rows):
            truth[row] |= column.digests[32 * i : 32 * i + 32] in digests
    [said] = [m.exchanged.rows for m in matched["up"] if m.HasField("exchanged")]
    assert hello.match_first and said == int(truth.sum())
    assert 0 < said < hello.rows
    assert partner.intersection == said


def test_label_recovery_does_no_better_than_the_model(
    world: dict[str, Any],
    hidden: dict[str, Any],
) -> None:
    """Attacks from the partner's view: what it received plus its own data."""
    prepared = hidden["prepared"]
    partner = prepared.partner
    users = prepared.users
    offered = partner.records[partner._order]  # user row of each position, as P knows it
    # The truth, from the brand's CRM (the test knows it; the partner must not).
    seed_digests = set()
    for chunk in read_hashed_chunks(world["synth"].crm_path, BRAND_IDS, OPTIONS, keep=["tier"]):
        gold = np.asarray([t.strip().lower() == "gold" for t in chunk.kept["tier"]])
        for col in chunk.columns:
            rows = np.flatnonzero(col.present)
            for k, row in enumerate(rows.tolist()):
                if gold[row]:
                    seed_digests.add(col.digests[k * 32 : (k + 1) * 32])
    y = np.zeros(users.data.row_count, dtype=np.uint8)
    for column in users.data.columns:
        for k, row in enumerate(whole_array(column.rows).tolist()):
            if column.digests[k * 32 : (k + 1) * 32] in seed_digests:
                y[row] = 1
    truth = y[offered]
    assert 0 < truth.sum() < len(truth)
    assert partner.model is not None
    model_auc = roc_auc_score(truth, score_rows(partner.model, users.features.rows(offered)))
    # 1. The label sums T: a linear discriminant from the seeds' feature means.
    x = users.features.rows(offered).floats()
    d = x.shape[1]
    width = len(hidden["down"][0].accepted.public_key_n) * 2
    t_int = np.asarray(partner.label_sums[:d], dtype=np.float64)
    sum_y = partner.label_sums[d]
    train_x = users.features.rows(partner.train_users).floats()
    t = users.features.offset * sum_y + t_int / users.features.scale
    seed_mean = t / sum_y
    other_mean = (train_x.sum(axis=0) - t) / (len(train_x) - sum_y)
    direction = (seed_mean - other_mean) / np.maximum(train_x.var(axis=0), 1e-9)
    attacks = {"label sums (LDA)": x @ direction}
    # 2. The ciphertexts themselves: their Jacobi symbol mod n, and their size.
    n = int.from_bytes(hidden["down"][0].accepted.public_key_n, "big")
    labels = b"".join(m.labels.ciphertexts for m in hidden["down"] if m.HasField("labels"))
    cts = [int.from_bytes(labels[i : i + width], "big") for i in range(0, len(labels), width)]
    attacks["Jacobi symbol"] = np.asarray([gmpy2.jacobi(c % n, n) for c in cts], dtype=float)
    attacks["magnitude"] = np.asarray([math.log2(c) for c in cts])
    for name, score in attacks.items():
        auc = roc_auc_score(truth, score)
        auc = max(auc, 1 - auc)  # an attacker may flip its guess
        print(f"attack {name}: AUC {auc:.4f} (model {model_auc:.4f})")
        assert auc <= model_auc + 0.005, (name, auc, model_auc)
    for name in ("Jacobi symbol", "magnitude"):
        auc = roc_auc_score(truth, attacks[name])
        assert abs(auc - 0.5) < 0.05, (name, auc)  # ciphertexts carry nothing
