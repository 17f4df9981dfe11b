"""HE scoring over real gRPC and REST: a brand registers a model, a partner scores its
users with the CLI, and the tiers are those of a plaintext scoring of the model."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cleanroom.client.scoring import ScoreRequest, prepare_score, run_score, upload_model
from cleanroom.client.sdk import ClientError, Connection
from cleanroom.federated.lookalike.aggregates import tier_sizes
from cleanroom.federated.lookalike.brand_model import BrandModel
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.proto.errors import InvalidInput
from cleanroom.server.store import Role
from tests.conftest import Node
from tests.helpers import eventually
from tests.test_lookalike_scoring import assert_tiers_match
from tests.wire import RecordingProxy, data_by_stream, grpc_messages

CLI = [sys.executable, "-m", "cleanroom.client.cli"]
USERS = 1200
MODEL: dict[str, Any] = {
    "features": [
        {"name": "app_user"},
        {"name": "visits_30d", "min": 0, "max": 20, "levels": 21},
        {"name": "age", "min": 18, "max": 70, "levels": 14},
    ],
    "weights": [0.9, 0.15, -0.031],
    "intercept": -1.5,
}


def cli(*args: str) -> Any:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scoring")
    rng = np.random.default_rng(12)
    frame = pd.DataFrame(
        {
            "user_id": [f"u{i:05d}" for i in range(USERS)],
            "app_user": rng.integers(0, 2, USERS),
            "visits_30d": rng.poisson(5, USERS),
            "age": rng.integers(16, 80, USERS),
            "note": rng.choice(["a", "b", "n/a"], USERS),  # not in the model: never parsed
        }
    )
    features = root / "features.csv"
    frame.to_csv(features, index=False)
    model = root / "model.json"
    model.write_text(json.dumps(MODEL))
    return {"root": root, "features": features, "model": model}


@pytest.fixture(scope="module")
def registered(node: Node, files: dict[str, Path]) -> dict[str, Any]:
    admin = node.tokens["acme"][Role.ADMIN]
    return cli(
        "model", "upload", "--server", node.target, "--token", admin,
        "--name", "ltv", "--file", str(files["model"]), "--json",
    )  # fmt: skip


def score(node: Node, files: dict[str, Path], out: str, **changes: Any) -> dict[str, Any]:
    request = ScoreRequest(model="ltv", features=files["features"], out_dir=files["root"] / out)
    for name, value in changes.items():
        setattr(request, name, value)
    conn = Connection(node.target, node.tokens["acme"][Role.PARTNER])
    return asyncio.run(run_score(conn, prepare_score(request)))


def test_the_cli_scores_into_the_tiers_of_a_plaintext_scoring(
    node: Node, files: dict[str, Path], registered: dict[str, Any]
) -> None:
    assert registered["name"] == "ltv" and not registered["replaced"]
    assert [f["name"] for f in registered["features"]] == ["app_user", "visits_30d", "age"]
    assert "weights" not in json.dumps(registered) and "intercept" not in json.dumps(registered)
    out = files["root"] / "tiers"
    manifest = cli(
        "partner", "score", "--server", node.target,
        "--token", node.tokens["acme"][Role.PARTNER], "--model", "ltv",
        "--features", str(files["features"]), "--user-column", "user_id",
        "--tiers", "1,5,20", "--out", str(out), "--json",
    )  # fmt: skip
    assert manifest["mode"] == "he-score" and manifest["scored"] == USERS
    sizes = tier_sizes(USERS, (1.0, 5.0, 20.0))
    assert [t["size"] for t in manifest["tiers"]] == sizes
    frame = pd.read_csv(files["features"])
    index = {u: i for i, u in enumerate(frame["user_id"])}
    tier = np.zeros(USERS, dtype=np.uint8)
    previous: set[str] = set()
    for t, entry in enumerate(reversed(manifest["tiers"])):
        csv = pd.read_csv(entry["path"], dtype={"user_id": str})
        parquet = pq.read_table(entry["parquet"]).to_pandas()
        assert csv["user_id"].tolist() == parquet["user_id"].tolist()
        assert len(csv) == entry["size"]
        if previous:
            assert set(csv["user_id"]) <= previous  # nested: each inside the larger
        previous = set(csv["user_id"])
        tier[[index[u] for u in csv["user_id"]]] = len(sizes) - t
    model = BrandModel.parse(json.dumps(MODEL))
    columns = {f: frame[f].to_numpy(dtype=float) for f in model.names}
    plain = model.score(model.quantize(columns))
    assert_tiers_match(tier, plain, sizes, model)
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]
    # The brand keeps the package's metadata: sizes and the model, no user.
    resp = httpx.get(
        f"{node.http}/v1/lookalikes/{manifest['package_id']}",
        headers={"Authorization": f"Bearer {node.tokens['acme'][Role.ANALYST]}"},
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["mode"] == "he-score" and body["model"] == "ltv"
    assert [t["size"] for t in body["tiers"]] == sizes and body["scored"] == USERS
    analyst = node.tokens["acme"][Role.ANALYST]
    page = httpx.get(f"{node.http}/dashboard/lookalikes/{manifest['package_id']}?token={analyst}")
    assert page.status_code == 200
    shown = subprocess.run(
        [*CLI, "lookalike", "show", manifest["package_id"], "--api", node.http, "--token", analyst],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "he-score · model ltv" in shown.stdout and "scored 1,200" in shown.stdout


def test_the_same_submission_returns_the_same_package(
    node: Node, files: dict[str, Path], registered: dict[str, Any]
) -> None:
    first = score(node, files, "again")
    second = score(node, files, "again")
    assert second == first


def test_models_over_rest_show_no_weights_and_only_admins_add_them(
    node: Node, registered: dict[str, Any]
) -> None:
    def call(method: str, path: str, role: Role, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {node.tokens['acme'][role]}"}
        return httpx.request(method, f"{node.http}{path}", headers=headers, **kw)

    listed = call("GET", "/v1/models", Role.ANALYST)
    assert listed.status_code == 200
    assert [m["name"] for m in listed.json()] == ["ltv"]
    assert "weights" not in listed.text and "0.9" not in listed.text
    one = call("GET", "/v1/models/ltv", Role.ANALYST).json()
    assert one["features"][1] == {"name": "visits_30d", "min": 0.0, "max": 20.0, "levels": 21}
    assert call("GET", "/v1/models/nope", Role.ANALYST).status_code == 404
    body = {"name": "rest-model", "model": MODEL}
    denied = call("POST", "/v1/models", Role.ANALYST, json=body)
    assert denied.status_code == 403
    made = call("POST", "/v1/models", Role.ADMIN, json=body)
    assert made.status_code == 201 and made.json()["name"] == "rest-model"
    again = call("POST", "/v1/models", Role.ADMIN, json=body)
    assert again.status_code == 409 and "--replace" in again.json()["detail"]
    bad = call("POST", "/v1/models", Role.ADMIN, json={"name": "b", "model": {"weights": []}})
    assert bad.status_code == 422 and "lacks 'features'" in bad.json()["detail"]
    # Not visible to another tenant.
    other = httpx.get(
        f"{node.http}/v1/models",
        headers={"Authorization": f"Bearer {node.tokens['globex'][Role.ANALYST]}"},
    )
    assert other.json() == []


def test_bad_input_gets_a_precise_error_and_the_node_keeps_serving(
    node: Node, files: dict[str, Path], registered: dict[str, Any], tmp_path: Path
) -> None:
    admin = Connection(node.target, node.tokens["acme"][Role.ADMIN])
    partner = Connection(node.target, node.tokens["acme"][Role.PARTNER])
    # A model naming a feature the partner lacks: refused before anything is encrypted.
    wider = tmp_path / "wider.json"
    wider.write_text(
        json.dumps({**MODEL, "features": [*MODEL["features"], "basket"], "weights": [1, 1, 1, 1]})
    )
    upload_model(admin, "wider", wider)
    with pytest.raises(InvalidInput, match=r"needs feature\(s\) the feature file lacks: basket"):
        score(node, files, "wider", model="wider")
    assert not (files["root"] / "wider").exists()
    # A non-numeric value in a model column names the file, the column and the row.
    frame = pd.read_csv(files["features"], dtype=str)
    frame.loc[7, "visits_30d"] = "lots"
    broken = tmp_path / "broken.csv"
    frame.to_csv(broken, index=False)
    with pytest.raises(InvalidInput, match=r"feature column 'visits_30d', row 8: 'lots'"):
        score(node, files, "broken", features=broken)
    with pytest.raises(ClientError) as info:
        score(node, files, "unknown", model="nope")
    assert info.value.code == "NOT_FOUND" and "no model 'nope'" in info.value.message
    few = tmp_path / "few.csv"
    pd.read_csv(files["features"]).head(10).to_csv(few, index=False)
    with pytest.raises(ClientError) as info:
        score(node, files, "few", features=few)
    assert info.value.code == "FAILED_PRECONDITION" and "minimum of 20" in info.value.message
    with pytest.raises(ClientError) as info:
        upload_model(partner, "mine", files["model"])
    assert info.value.code == "PERMISSION_DENIED"
    nan_model = tmp_path / "nan.json"
    nan_model.write_text('{"features": ["a"], "weights": [NaN]}')
    with pytest.raises(InvalidInput, match="finite"):
        upload_model(admin, "nan", nan_model)
    # The failed jobs are recorded as failed; the node still scores.

    def failed_jobs() -> bool:
        s = node.store()
        try:
            tenant = s.find_tenant("acme")
            assert tenant is not None
            jobs = [x for x in s.list_sessions(tenant.tenant_id) if x.protocol == "score"]
            return sum(j.status == "failed" for j in jobs) >= 2
        finally:
            s.close()

    eventually(failed_jobs, what="the refused jobs marked failed")
    after = score(node, files, "after", tiers=(2.0, 10.0))  # a new submission
    assert after["scored"] == USERS and [t["percent"] for t in after["tiers"]] == [2.0, 10.0]


def test_on_the_wire_the_partner_gets_no_weight_and_the_brand_no_user(
    node: Node, files: dict[str, Path], registered: dict[str, Any]
) -> None:
    request = ScoreRequest(
        model="ltv", features=files["features"], out_dir=files["root"] / "wire", tiers=(3.0,)
    )
    prepared = prepare_score(request)
    with RecordingProxy(node.target) as proxy:
        conn = Connection(proxy.target, node.tokens["acme"][Role.PARTNER])
        manifest = asyncio.run(run_score(conn, prepared))
        sent, received = bytes(proxy.to_server), bytes(proxy.to_client)
    assert manifest["scored"] == USERS
    [up] = [v for v in data_by_stream(sent, client_side=True).values() if v]
    [down] = [v for v in data_by_stream(received, client_side=False).values() if v]
    to_brand = grpc_messages(up, pb.ScorePartnerMessage)
    to_partner = grpc_messages(down, pb.ScoreBrandMessage)
    assert to_partner[0].WhichOneof("body") == "accepted"
    assert {m.WhichOneof("body") for m in to_partner[1:]} == {"tiers", "done"}
    accepted = to_partner[0].accepted
    n = int.from_bytes(accepted.public_key_n, "big")
    width = (2 * n.bit_length() + 7) // 8
    assert len(accepted.weights) == 3 * width and len(accepted.constant) == width
    # The model only as ciphertexts: no weight, in fixed point or as a double, anywhere.
    model = BrandModel.parse(json.dumps(MODEL))
    weights, constant = model.fixed_point()
    for value in (*weights, constant):
        raw = abs(value).to_bytes((abs(value).bit_length() + 7) // 8, "big")
        assert raw not in received
    for w in (*model.weights, model.intercept):
        assert np.float64(w).tobytes() not in received and str(w).encode() not in received
    tiers = b"".join(m.tiers.tiers for m in to_partner if m.WhichOneof("body") == "tiers")
    assert len(tiers) == USERS and set(tiers) <= {0, 1}
    # The brand gets a count, the model's name and ciphertexts: no user id, no feature.
    bodies = [m.WhichOneof("body") for m in to_brand]
    assert bodies[0] == "hello" and set(bodies[1:]) == {"chunk", "package"}
    assert to_brand[0].hello.users == USERS and to_brand[0].hello.model == "ltv"
    for user in pd.read_csv(files["features"], dtype=str)["user_id"].head(200):
        assert user.encode() not in sent
    cts = b"".join(m.chunk.ciphertexts for m in to_brand if m.WhichOneof("body") == "chunk")
    assert len(cts) == -(-USERS // accepted.slots) * width
