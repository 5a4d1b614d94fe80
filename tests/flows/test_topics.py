"""Topics and trends: recent questions grouped into labelled topics, counted per day."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import httpx
import numpy as np

from lodestar.services.gateway.flows import topic_model
from tests.flows.conftest import create_collection, fresh
from tests.flows.harness import RunningGateway

THEMES = {
    "password": [
        "How do I reset my password?",
        "I forgot my password, how can I change it",
        "password reset email never arrived",
        "can I change my password without the old password",
    ],
    "invoice": [
        "Where can I download my invoice?",
        "invoice shows the wrong billing address",
        "how do I get a copy of last month's invoice",
        "why was my invoice charged twice",
    ],
    "shipping": [
        "How long does shipping take to Canada?",
        "shipping costs for international orders",
        "my shipping tracking number does not work",
        "is express shipping available on weekends",
    ],
}


def test_label_terms_prefer_words_that_set_a_topic_apart() -> None:
    documents = [
        Counter({"password": 5, "reset": 3, "account": 2}),
        Counter({"invoice": 4, "account": 2, "billing": 2}),
    ]
    first, second = topic_model.label_terms(documents, terms=2)
    assert [term for term, _ in first] == ["password", "reset"]
    assert [term for term, _ in second] == ["invoice", "billing"]


def test_kmeans_separates_groups_and_is_repeatable() -> None:
    generator = np.random.default_rng(1)
    centres = np.eye(3, 16, dtype=np.float32)
    vectors = np.vstack([c + 0.05 * generator.standard_normal((10, 16)) for c in centres])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    weights = np.ones(len(vectors))
    labels = topic_model.kmeans(vectors.astype(np.float32), weights, 3, seed=5)
    assert [len(set(labels[i : i + 10].tolist())) for i in (0, 10, 20)] == [1, 1, 1]
    assert len(set(labels.tolist())) == 3
    again = topic_model.kmeans(vectors.astype(np.float32), weights, 3, seed=5)
    assert labels.tolist() == again.tolist()


def test_stop_words_never_label_a_topic() -> None:
    assert topic_model.terms_of("How do I reset my password? What's the way") == [
        "reset",
        "password",
    ]


async def test_questions_from_three_themes_make_three_labelled_topics(
    client: httpx.AsyncClient, gateway: RunningGateway
) -> None:
    collection = fresh("topics")
    await create_collection(client, gateway.auth("admin"), collection)
    user = gateway.auth("user")
    asked: Counter[str] = Counter()
    for theme, questions in THEMES.items():
        for index, question in enumerate(questions):
            # The first question of each theme is asked three times.
            for _ in range(3 if index == 0 else 1):
                reply = await client.post(
                    "/api/v1/vectors/search",
                    json={"collection": collection, "text": question, "limit": 1},
                    headers=user,
                )
                assert reply.status_code == 200, reply.text
                asked[theme] += 1

    reply = await client.get(
        "/api/v1/analytics/topics",
        params={"collection": collection, "num_topics": 3, "terms": 3},
        headers=gateway.auth("operator"),
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["questions"] == body["searches"] == sum(asked.values()) == 18
    assert body["distinct_questions"] == 12
    assert body["interactions"] == 0
    topics = body["topics"]
    assert len(topics) == 3
    today = datetime.now(UTC).date().isoformat()
    by_theme = {}
    for topic in topics:
        themes = [theme for theme in THEMES if theme in topic["label"].split(", ")]
        assert len(themes) == 1, topic
        by_theme[themes[0]] = topic
        assert topic["terms"][0]["weight"] >= topic["terms"][-1]["weight"] > 0
        assert topic["per_day"] == [{"day": today, "count": topic["size"]}]
        assert all(q.casefold() == q for q in topic["questions"])
    assert sorted(by_theme) == sorted(THEMES)
    assert {theme: topic["size"] for theme, topic in by_theme.items()} == dict(asked)
    assert by_theme["password"]["terms"][0]["term"] == "password"

    # A collection nobody searched has no topics.
    empty = await client.get(
        "/api/v1/analytics/topics",
        params={"collection": fresh("none")},
        headers=gateway.auth("operator"),
    )
    assert empty.status_code == 200, empty.text
    assert (empty.json()["topics"], empty.json()["questions"]) == ([], 0)


async def test_stored_answers_add_their_questions_and_cited_sources(
    client: httpx.AsyncClient, gateway: RunningGateway, docs: str
) -> None:
    question = "How do I parse JSON text into Python objects?"
    started = datetime.now(UTC)
    reply = await client.post(
        "/api/v1/generate",
        json={
            "prompt": question,
            "context": {"collection": docs, "limit": 2},
            "store_embedding": True,
            "max_tokens": 8,
            "temperature": 0,
        },
        headers=gateway.auth("user"),
    )
    assert reply.status_code == 200, reply.text
    cited = [source["id"] for source in reply.json()["sources"]]
    documents = {source["payload"]["source"] for source in reply.json()["sources"]}
    assert cited

    reply = await client.get(
        "/api/v1/analytics/topics",
        params={"top": 100, "since": started.isoformat()},
        headers=gateway.auth("operator"),
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["interactions"] == 1
    # The retrieval's search, if recorded, is the same question: one distinct question.
    assert body["distinct_questions"] == 1
    assert [topic["questions"] for topic in body["topics"]] == [[question.casefold()]]
    points = {entry["id"] for entry in body["most_retrieved_points"]}
    assert set(cited) <= points
    sources = {entry["source"] for entry in body["most_retrieved_documents"]}
    assert documents <= sources
    # Only holders of view_analytics see it.
    denied = await client.get("/api/v1/analytics/topics", headers=gateway.auth("user"))
    assert denied.status_code == 403
    # since is an RFC 3339 time (not a number), collection a collection name.
    for params in ({"since": "0.5"}, {"collection": "no such/name"}):
        bad = await client.get(
            "/api/v1/analytics/topics", params=params, headers=gateway.auth("operator")
        )
        assert bad.status_code == 422, bad.text
        violations = bad.json()["error"]["details"]["field_violations"]
        assert [v["field"] for v in violations] == list(params), violations
