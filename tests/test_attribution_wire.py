"""Attribution on the wire (DESIGN.md §13): no value, identifier or per-user flag in the clear."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct
from typing import Any

import numpy as np
import pandas as pd

from cleanroom.audiences.identifiers import normalize
from cleanroom.client.attribution import prepare_attribution, run_attribution
from cleanroom.client.sdk import Connection
from cleanroom.federated.attribution.inputs import (
    hashed_identifiers,
    parse_conversions,
    parse_exposures,
)
from cleanroom.federated.attribution.tokens import day_dst, token_messages
from cleanroom.matching.hash_to_curve import hash_to_curve_batch
from cleanroom.matching.session import comparison_length
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.server.store import Role
from tests.test_attribution_e2e import BRAND_IDS, OPTIONS, PARTNER_IDS, request, world  # noqa: F401
from tests.wire import RecordingProxy, data_by_stream, grpc_messages


def _identifier_strings(frame: pd.DataFrame, columns: Any) -> list[bytes]:
    out = []
    for col in columns:
        for raw in frame[col.column]:
            if len(raw.strip()) >= 6:
                out.append(raw.strip().encode())
                with contextlib.suppress(ValueError):
                    out.append(normalize(col.id_type, raw, OPTIONS).encode())
    return out


def _digests_and_tokens(parsed: pd.DataFrame, columns: Any) -> list[bytes]:
    rows, types, digests = hashed_identifiers(parsed, columns, OPTIONS)
    out = [d.tobytes() for d in digests]
    days = parsed["day"].to_numpy()[rows]
    for t in set(types.tolist()):
        sel = types == t
        msgs = token_messages(digests[sel], days[sel])
        points = hash_to_curve_batch(msgs, 36, day_dst(t))
        out += [points[i : i + 32] for i in range(0, len(points), 32)]
    return out


def test_attribution_wire_carries_only_what_section_13_allows(world: dict[str, Any]) -> None:  # noqa: F811
    synth = world["synth"]
    node = world["node"]
    conversions = pd.read_csv(synth.conversions_path, dtype=str, keep_default_na=False)
    exposures = pd.read_csv(synth.exposures_path, dtype=str, keep_default_na=False)
    partner = prepare_attribution(
        request(
            synth,
            windows=__import__(
                "cleanroom.federated.attribution.messages", fromlist=["Windows"]
            ).Windows(4, 2),
        )
    )
    with RecordingProxy(node.target) as proxy:
        asyncio.run(
            run_attribution(Connection(proxy.target, world["tokens"][Role.PARTNER]), partner)
        )
        sent, received = bytes(proxy.to_server), bytes(proxy.to_client)
    [up] = [v for v in data_by_stream(sent, client_side=True).values() if v]
    [down] = [v for v in data_by_stream(received, client_side=False).values() if v]
    up_msgs = grpc_messages(up, pb.AttrPartnerMessage)
    down_msgs = grpc_messages(down, pb.AttrBrandMessage)

    # Partner -> brand: Hello (set name, windows, identifier types), cells and
    # their token counts, blinded tokens, aggregates.
    kinds = [m.WhichOneof("body") for m in up_msgs]
    assert kinds[:2] == ["hello", "cells"] and kinds[-1] == "aggregates"
    assert set(kinds) == {"hello", "cells", "cell_tokens", "aggregates"}
    hello = up_msgs[0].hello
    assert sorted(hello.id_types) == ["email", "maid", "phone"]
    assert {f.name for f, _ in hello.ListFields()} <= {
        "conversions",
        "click_days",
        "view_days",
        "id_types",
        "epsilon",
        "submission_key",
    }
    cells_msg = up_msgs[1].cells
    accepted = down_msgs[0].accepted
    # Only types both hold are tokenized: the brand has no maids, so none are sent.
    assert list(accepted.id_types) == ["email", "phone"]
    sent_points = sum(len(m.cell_tokens.points) for m in up_msgs if m.HasField("cell_tokens")) // 32
    assert sent_points == sum(cells_msg.cell_tokens)  # one token per person, day and cell
    assert sent_points == sum(partner.partner.cell_tokens)
    no_maid = parse_exposures(exposures, id_columns=PARTNER_IDS)
    maid_points = _digests_and_tokens(no_maid, [c for c in PARTNER_IDS if c.column == "maid"])
    assert maid_points and not any(p in sent for p in maid_points)
    parsed_exp = parse_exposures(exposures, id_columns=PARTNER_IDS)
    for secret in _identifier_strings(exposures, PARTNER_IDS) + _digests_and_tokens(
        parsed_exp, PARTNER_IDS
    ):
        assert secret not in sent
    for user in set(exposures["user_id"]):
        assert f"{user}".encode() not in sent or len(user) < 6
    agg = up_msgs[-1].aggregates
    assert {(g.campaign_id, g.group) for g in agg.groups} <= {
        (c, g) for c in set(exposures["campaign_id"]) for g in ("exposed", "holdout")
    }
    # Revenue only as Paillier ciphertexts (as wide as n^2), never a number.
    width = len(down_msgs[0].accepted.public_key_n) * 2
    assert all(len(g.revenue) == width for g in agg.groups)

    # Brand -> partner: its key, shuffled re-blinded cells, tokens, encrypted values.
    kinds = [m.WhichOneof("body") for m in down_msgs]
    assert kinds[0] == "accepted" and kinds[-1] == "done"
    assert set(kinds) == {"accepted", "cell_values", "conversion_tokens", "event_values", "done"}
    parsed_conv = parse_conversions(
        conversions,
        customer_column="customer_id",
        time_column="ts",
        value_column="value",
        id_columns=BRAND_IDS,
    )
    for secret in _identifier_strings(conversions, BRAND_IDS) + _digests_and_tokens(
        parsed_conv, BRAND_IDS
    ):
        assert secret not in received
    for customer in set(parsed_conv["customer_id"]):
        assert hashlib.sha256(customer.encode()).digest() not in received
        if len(customer) >= 6:
            assert customer.encode() not in received
    # Values with cents have high-entropy encodings; none may appear as a
    # double or as text (the scaled integers travel only inside ciphertexts).
    checked = 0
    for value in parsed_conv["value"]:
        if float(value) == round(float(value)):
            continue
        assert struct.pack("<d", float(value)) not in received
        assert struct.pack(">d", float(value)) not in received
        assert f"{float(value)}".encode() not in received
        checked += 1
    assert checked > 100
    values = [m.event_values for m in down_msgs if m.HasField("event_values")]
    assert sum(len(v.ciphertexts) for v in values) == width * len(parsed_conv)
    # Cells come back shuffled: same multiset sizes, order unlinkable (fresh key).
    cells = [m.cell_values for m in down_msgs if m.HasField("cell_values")]
    value_len = comparison_length(sum(cells_msg.cell_tokens), accepted.brand_tokens)
    assert sorted(len(c.values) for c in cells) == sorted(
        n * value_len for n in cells_msg.cell_tokens
    )
    assert np.isfinite(float(len(cells)))
