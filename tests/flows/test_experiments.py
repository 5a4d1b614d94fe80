"""Experiments on the real stack: the REST resource, sticky variants on the
generation routes, feedback counted per variant, results and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from lodestar.services.gateway.flows.experiment_models import Variant
from lodestar.services.gateway.flows.experiments import pick
from tests.flows.conftest import Stack, fresh, replica
from tests.flows.harness import RunningGateway

QUESTION = [{"role": "user", "content": "Name a colour."}]
DEFINITION: dict[str, Any] = {
    "name": "brevity",
    "description": "Does a shorter answer please more?",
    "status": "running",
    "routes": ["generate", "chat"],
    "variants": [
        {"name": "short", "weight": 1, "max_tokens": 2},
        {
            "name": "long",
            "weight": 1,
            "max_tokens": 6,
            "system_prompt": "Answer in a few words.",
            "prompt_template": "Question: {question}",
        },
    ],
}
LIMITS = {"short": 2, "long": 6}


@pytest.fixture(scope="module")
async def lab(stack: Stack) -> AsyncIterator[RunningGateway]:
    """A gateway with experiments (and the cache) in collections of its own."""
    async with replica(
        stack,
        experiments_collection=fresh("experiments"),
        semantic_cache=True,
        cache_collection=fresh("cache"),
    ) as running:
        yield running


@pytest.fixture
async def http(lab: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with lab.client() as client:
        yield client


async def test_experiments_need_administer_system(
    http: httpx.AsyncClient, lab: RunningGateway
) -> None:
    for headers in (lab.auth("operator"), lab.auth("admin", tenant="acme")):
        reply = await http.post("/api/v1/experiments", json=DEFINITION, headers=headers)
        assert reply.status_code == 403, reply.text
    listed = await http.get("/api/v1/experiments", headers=lab.auth("user"))
    assert listed.status_code == 403


async def test_the_experiment_resource(http: httpx.AsyncClient, lab: RunningGateway) -> None:
    admin = lab.auth("admin")
    bad = await http.post(
        "/api/v1/experiments",
        json={**DEFINITION, "variants": [{"name": "a", "prompt_template": "no placeholder"}]},
        headers=admin,
    )
    assert bad.status_code == 422, bad.text
    made = await http.post(
        "/api/v1/experiments", json={**DEFINITION, "status": "draft"}, headers=admin
    )
    assert made.status_code == 201, made.text
    experiment = made.json()
    assert experiment["status"] == "draft"
    path = f"/api/v1/experiments/{experiment['id']}"
    got = await http.get(path, headers=admin)
    assert got.json() == experiment
    changed = await http.put(
        path, json={**DEFINITION, "status": "stopped", "description": "x"}, headers=admin
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["created_at"] == experiment["created_at"]
    assert changed.json()["description"] == "x"
    listed = await http.get("/api/v1/experiments", headers=admin)
    assert experiment["id"] in [e["id"] for e in listed.json()["experiments"]]
    # Nothing measured yet: the unknowns are null, as the schema says, not left out.
    results = (await http.get(f"{path}/results", headers=admin)).json()
    assert results["winner"] is None
    assert all(variant["mean_score"] is None for variant in results["variants"])
    # Stored as given, even where the engine's payload numbers would not keep it (a
    # seed above 2^53, a threshold at the largest 32-bit float).
    extremes = {"name": "a", "seed": 2**63 - 1, "score_threshold": 3.4028234663852886e38}
    seeded = {**DEFINITION, "variants": [extremes]}
    assert (await http.put(path, json=seeded, headers=admin)).status_code == 200
    listed = await http.get("/api/v1/experiments", headers=admin)
    assert listed.status_code == 200, listed.text
    stored = (await http.get(path, headers=admin)).json()["variants"][0]
    assert {k: stored[k] for k in extremes} == extremes
    assert (await http.delete(path, headers=admin)).status_code == 204
    assert (await http.get(path, headers=admin)).status_code == 404
    assert (await http.get("/api/v1/experiments/not-an-id", headers=admin)).status_code == 404


async def _generate(http: httpx.AsyncClient, headers: dict[str, str], **extra: Any) -> Any:
    reply = await http.post(
        "/api/v1/generate",
        json={"messages": QUESTION, "temperature": 0, "max_tokens": 12, **extra},
        headers=headers,
    )
    assert reply.status_code == 200, reply.text
    return reply


async def test_variants_are_sticky_and_judged_by_feedback(
    http: httpx.AsyncClient, lab: RunningGateway
) -> None:
    admin = lab.auth("admin")
    made = await http.post("/api/v1/experiments", json=DEFINITION, headers=admin)
    assert made.status_code == 201, made.text
    experiment = made.json()
    variants = [Variant(**v) for v in DEFINITION["variants"]]
    talks = fresh("talks")
    subjects = [f"subject-{n}" for n in range(8)]
    seen: dict[str, str] = {}
    scored = {"short": 0, "long": 0}
    try:
        for subject in subjects:
            expected = pick(experiment["id"], variants, f"\x00{subject}").name
            headers = lab.auth("user", sub=subject)
            for _ in range(2):
                reply = await _generate(
                    http, headers, store_embedding=True, collection=talks, cache=False
                )
                body = reply.json()
                assert body["experiment"] == {
                    "id": experiment["id"],
                    "name": "brevity",
                    "variant": expected,
                }
                assert reply.headers["X-Lodestar-Experiment"] == (
                    f"{experiment['id']}; variant={expected}"
                )
                assert body["usage"]["completion_tokens"] <= LIMITS[expected]
                seen[subject] = expected
            # Feedback on the last answer: the long variant pleases more.
            score = 5 if expected == "long" else 1
            feedback = await http.post(
                "/api/v1/feedback",
                json={"interaction_id": body["stored"]["id"], "score": score, "collection": talks},
                headers=headers,
            )
            assert feedback.status_code == 200, feedback.text
            scored[expected] += 1
        assert set(seen.values()) == {"short", "long"}

        results = await http.get(f"/api/v1/experiments/{experiment['id']}/results", headers=admin)
        assert results.status_code == 200, results.text
        body = results.json()
        by_name = {v["variant"]: v for v in body["variants"]}
        for name in ("short", "long"):
            count = sum(1 for v in seen.values() if v == name)
            assert by_name[name]["answers"] == 2 * count
            assert by_name[name]["scored"] == scored[name]
            assert by_name[name]["mean_latency_ms"] > 0
            assert by_name[name]["mean_completion_tokens"] <= LIMITS[name]
        assert by_name["long"]["mean_score"] == 5
        assert by_name["short"]["mean_score"] == 1
        # Constant scores in both: a difference without doubt.
        assert body["winner"] == ("long" if min(scored.values()) >= 2 else None)

        # The OpenAI route is in the experiment too.
        models = await http.get("/v1/models", headers=lab.auth("user"))
        chat = await http.post(
            "/v1/chat/completions",
            json={"model": models.json()["data"][0]["id"], "messages": QUESTION, "max_tokens": 12},
            headers=lab.auth("user", sub=subjects[0]),
        )
        assert chat.status_code == 200, chat.text
        assert chat.headers["X-Lodestar-Experiment"].endswith(f"variant={seen[subjects[0]]}")
        assert chat.json()["usage"]["completion_tokens"] <= LIMITS[seen[subjects[0]]]

        scrape = await http.get("/metrics", headers=admin)
        assert (
            f'lodestar_gateway_experiment_answers_total{{experiment="{experiment["id"]}"'
            in scrape.text
        )
    finally:
        stopped = await http.put(
            f"/api/v1/experiments/{experiment['id']}",
            json={**DEFINITION, "status": "stopped"},
            headers=admin,
        )
        assert stopped.status_code == 200
    after = await _generate(http, lab.auth("user", sub=subjects[0]), cache=False)
    assert "experiment" not in after.json()


async def test_the_cache_keeps_variants_apart(http: httpx.AsyncClient, lab: RunningGateway) -> None:
    admin = lab.auth("admin")
    definition = {
        **DEFINITION,
        "name": "cache-split",
        "variants": [{"name": "a", "temperature": 0}, {"name": "b", "temperature": 0}],
    }
    made = await http.post("/api/v1/experiments", json=definition, headers=admin)
    experiment = made.json()
    variants = [Variant(**v) for v in definition["variants"]]
    by_variant: dict[str, list[str]] = {"a": [], "b": []}
    for n in range(40):
        subject = f"cache-{n}"
        by_variant[pick(experiment["id"], variants, f"\x00{subject}").name].append(subject)
    try:
        question = [{"role": "user", "content": f"Name a colour ({fresh('q')})."}]
        first, same, other = by_variant["a"][0], by_variant["a"][1], by_variant["b"][0]
        asked = {"messages": question}
        one = await _generate(http, lab.auth("user", sub=first), **asked)
        assert one.headers["X-Lodestar-Cache"] == "miss"
        two = await _generate(http, lab.auth("user", sub=same), **asked)
        assert two.headers["X-Lodestar-Cache"].startswith("hit")
        three = await _generate(http, lab.auth("user", sub=other), **asked)
        assert three.headers["X-Lodestar-Cache"] == "miss"
        results = await http.get(f"/api/v1/experiments/{experiment['id']}/results", headers=admin)
        by_name = {v["variant"]: v for v in results.json()["variants"]}
        assert by_name["a"]["answers"] == 2
        assert by_name["a"]["cached"] == 1
    finally:
        await http.delete(f"/api/v1/experiments/{experiment['id']}", headers=admin)
