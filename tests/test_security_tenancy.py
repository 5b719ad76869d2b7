"""Tenancy, held for every route that takes an id: another team's id answers 404, as an unknown one does.

Routes are found by introspection, so a route added later is checked without editing this test."""

from __future__ import annotations

import base64

from fastapi.testclient import TestClient

from tests.helpers import image_bytes

BODIES = {
    "/v1/batches/{batch_id}/requests": {"batch_requests": [{"batch_request": {"vision_predict": {
        "image_base64": base64.b64encode(image_bytes("coffee.png")).decode(), "is_yolo": True}}}]},
}
TEAM_SCOPED_PARAMS = {"batch_id"}


def test_every_route_with_an_id_hides_other_teams(client: TestClient, app) -> None:  # type: ignore[no-untyped-def]
    store = app.state.services.keys
    key_a, _ = client.portal.call(store.create_key, "a")
    key_b, _ = client.portal.call(store.create_key, "b")
    owner = {"Authorization": f"Bearer {key_a}"}
    stranger = {"Authorization": f"Bearer {key_b}"}
    batch_id = client.post("/v1/batches", json={"name": "mine"}, headers=owner).json()["batch_id"]
    paths = {p: ops for p, ops in app.openapi()["paths"].items() if any(f"{{{n}}}" in p for n in TEAM_SCOPED_PARAMS)}
    checked = 0
    for template, operations in paths.items():
        path = template.replace("{batch_id}", batch_id)
        for method in operations:
            body = BODIES.get(template)
            theirs = client.request(method.upper(), path, headers=stranger, json=body)
            unknown = client.request(method.upper(), template.replace("{batch_id}", "batch_nope"), headers=owner,
                                     json=body)
            assert theirs.status_code == 404, (method, template, theirs.text)
            same = theirs.text.replace(batch_id, "batch_nope") == unknown.text
            assert same, "another team's id reads exactly like an unknown one"
            checked += 1
    assert checked >= 5  # get, add requests, list requests, results, cancel
    assert client.get(f"/v1/batches/{batch_id}", headers=owner).json()["state"]["num_requests"] == 0
