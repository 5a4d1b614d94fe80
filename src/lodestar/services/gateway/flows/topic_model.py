"""Topics of questions: k-means over their embeddings, labelled by c-TF-IDF.

Pure computation on NumPy arrays (no I/O), run off the event loop by the caller.
Questions are weighted by how often they were asked. The k-means is spherical
(unit vectors, as the vector service's clustering of a cosine collection) with
k-means++ seeding and a fixed seed, so the same questions give the same topics;
it is written here because the gateway does not carry scikit-learn.

A topic's label is its most telling terms by class-based TF-IDF (as BERTopic
labels topics): a term's frequency in the topic's questions times the log of how
rare it is across all topics, so that words every topic shares ("how", "what",
the product's name) do not label any of them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

_ITERATIONS: Final = 50
_RESTARTS: Final = 4


def _split(words: str) -> list[str]:
    return words.split()


_WORD = re.compile(r"[^\W\d_][\w'-]*[^\W_]|[^\W\d_]", re.UNICODE)
# Function words and question words: never a topic's label.
STOP_WORDS: Final = frozenset(
    _split(
        """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers herself him himself his how i if
    in into is it its itself just me more most my myself no nor not now of off on once
    only or other our ours ourselves out over own same she should so some such than that
    the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with
    would you your yours yourself yourselves get got use using used want need way ways
    best good much many also one two new like make made can't don't i'm it's what's does
    doesn't isn't
        """
    )
)


@dataclass(frozen=True)
class Question:
    """A distinct question: its text, how often it was asked, and when (UTC day → count)."""

    text: str
    days: dict[str, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(self.days.values())


@dataclass(frozen=True)
class Topic:
    label: str
    terms: list[tuple[str, float]]  # most telling first
    size: int  # questions asked, with repeats
    questions: list[str]  # distinct questions, nearest the centre first
    per_day: list[tuple[str, int]]  # (day, count), oldest first


def terms_of(text: str) -> list[str]:
    """Lower-cased words of ``text`` without function words or one-letter words."""
    words = (w.casefold() for w in _WORD.findall(text))
    return [w for w in words if len(w) > 1 and w not in STOP_WORDS]


def kmeans(
    vectors: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float64],
    k: int,
    *,
    seed: int = 0,
) -> npt.NDArray[np.int64]:
    """Cluster labels of unit ``vectors`` (spherical k-means, weighted), best of a few starts."""
    n = len(vectors)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    best: tuple[float, npt.NDArray[np.int64]] | None = None
    for _ in range(_RESTARTS):
        centres = _seed_centres(vectors, weights, k, rng)
        labels = np.zeros(n, dtype=np.int64)
        for _ in range(_ITERATIONS):
            labels = np.argmax(vectors @ centres.T, axis=1)
            moved = centres.copy()
            for c in range(k):
                members = labels == c
                if members.any():
                    total = (vectors[members] * weights[members, None]).sum(axis=0)
                    moved[c] = total / max(float(np.linalg.norm(total)), 1e-12)
            if np.allclose(moved, centres):
                break
            centres = moved
        cost = float((weights * (1.0 - (vectors * centres[labels]).sum(axis=1))).sum())
        if best is None or cost < best[0]:
            best = (cost, labels)
    assert best is not None
    return best[1]


def _seed_centres(
    vectors: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float64],
    k: int,
    rng: np.random.Generator,
) -> npt.NDArray[np.float32]:
    """k-means++: each next centre drawn with probability ∝ weight × distance² to the nearest."""
    first = int(rng.choice(len(vectors), p=weights / weights.sum()))
    centres = [vectors[first]]
    nearest = 1.0 - vectors @ vectors[first]
    for _ in range(1, k):
        odds = weights * np.maximum(nearest, 0.0) ** 2
        total = float(odds.sum())
        pick = (
            int(rng.choice(len(vectors), p=odds / total))
            if total > 0
            else int(rng.integers(0, len(vectors)))
        )
        centres.append(vectors[pick])
        nearest = np.minimum(nearest, 1.0 - vectors @ vectors[pick])
    return np.stack(centres).astype(np.float32)


def label_terms(documents: Sequence[Counter[str]], terms: int) -> list[list[tuple[str, float]]]:
    """The ``terms`` most telling terms of each class (c-TF-IDF), with their weights."""
    totals: Counter[str] = Counter()
    for counts in documents:
        totals.update(counts)
    if not totals:
        return [[] for _ in documents]
    average = sum(totals.values()) / len(documents)
    labelled = []
    for counts in documents:
        size = sum(counts.values()) or 1
        scored = [
            (term, (n / size) * math.log(1 + average / totals[term])) for term, n in counts.items()
        ]
        scored.sort(key=lambda item: (-item[1], item[0]))
        labelled.append([(term, round(weight, 6)) for term, weight in scored[:terms]])
    return labelled


def topics(
    questions: Sequence[Question],
    vectors: npt.NDArray[np.float32],
    *,
    num_topics: int,
    terms: int = 5,
    examples: int = 3,
    seed: int = 0,
) -> list[Topic]:
    """Topics of ``questions`` (row i of ``vectors`` embeds question i), largest first."""
    if not questions:
        return []
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    weights = np.array([q.count for q in questions], dtype=np.float64)
    labels = kmeans(unit, weights, num_topics, seed=seed)
    groups = [np.flatnonzero(labels == c) for c in sorted(set(labels.tolist()))]
    documents = []
    for members in groups:
        counts: Counter[str] = Counter()
        for i in members.tolist():
            for term in terms_of(questions[i].text):
                counts[term] += questions[i].count
        documents.append(counts)
    found = []
    for members, labelled in zip(groups, label_terms(documents, terms), strict=True):
        centre = unit[members].T @ weights[members]
        order = members[np.argsort(-(unit[members] @ centre), kind="stable")]
        days: Counter[str] = Counter()
        for i in members.tolist():
            days.update(questions[i].days)
        found.append(
            Topic(
                label=", ".join(term for term, _ in labelled),
                terms=labelled,
                size=int(weights[members].sum()),
                questions=[questions[i].text for i in order[:examples].tolist()],
                per_day=sorted(days.items()),
            )
        )
    found.sort(key=lambda topic: (-topic.size, topic.label))
    return found
