"""Experiments without services: sticky weighted assignment, the statistics,
and results with a known winner from synthetic feedback."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pydantic
import pytest

from lodestar.services.gateway.flows import experiment_stats as stats
from lodestar.services.gateway.flows.experiment_models import Experiment, Variant
from lodestar.services.gateway.flows.experiment_routes import results_of
from lodestar.services.gateway.flows.experiments import pick

EXPERIMENT = "6f1c2b8e-7d0a-4a51-9a4e-0c1f2d3e4b5a"


def _variants(**weights: float) -> list[Variant]:
    return [Variant(name=name, weight=weight) for name, weight in weights.items()]


def _subjects(count: int) -> list[str]:
    rng = random.Random(20261207)
    return [f"user-{rng.getrandbits(64):016x}" for _ in range(count)]


def test_a_subject_always_gets_the_same_variant() -> None:
    variants = _variants(a=1, b=1, c=2)
    for subject in _subjects(500):
        first = pick(EXPERIMENT, variants, subject)
        assert all(pick(EXPERIMENT, variants, subject) == first for _ in range(3))
    # Another experiment reshuffles subjects independently.
    other = "0b5f4c3d-2a1e-4f6a-8b7c-9d0e1f2a3b4c"
    subjects = _subjects(500)
    same = sum(
        pick(EXPERIMENT, variants, s).name == pick(other, variants, s).name for s in subjects
    )
    assert same < 0.6 * len(subjects)


def test_traffic_follows_the_weights() -> None:
    """A chi-square test of 20,000 subjects against weights 1:1:2 (3.0 is far
    below the 0.1% critical value 13.8 for two degrees of freedom; a skewed
    assignment lands far above it)."""
    variants = _variants(a=1, b=1, c=2)
    subjects = _subjects(20_000)
    counts = Counter(pick(EXPERIMENT, variants, s).name for s in subjects)
    expected = {"a": 5_000, "b": 5_000, "c": 10_000}
    chi2 = sum((counts[n] - e) ** 2 / e for n, e in expected.items())
    assert chi2 < 13.8, counts


def test_a_variant_weighted_zero_gets_no_traffic() -> None:
    variants = _variants(a=0, b=1)
    assert {pick(EXPERIMENT, variants, s).name for s in _subjects(2_000)} == {"b"}


def test_student_t_matches_known_values() -> None:
    # Tables: t(0.975; 5) = 2.5706, t(0.975; 30) = 2.0423.
    assert stats.t_quantile(0.975, 5) == pytest.approx(2.570582, abs=1e-5)
    assert stats.t_quantile(0.975, 30) == pytest.approx(2.042272, abs=1e-5)
    assert stats.t_two_sided_p(2.570582, 5) == pytest.approx(0.05, abs=1e-6)
    assert stats.t_two_sided_p(0.0, 7) == pytest.approx(1.0)


def test_mean_and_interval() -> None:
    summary = stats.summarize([4.0, 5.0, 3.0, 4.0, 4.0])
    assert summary.mean == pytest.approx(4.0)
    # sd 0.7071, n 5: half-width 2.7764 * 0.7071 / sqrt(5) = 0.8780.
    assert summary.low == pytest.approx(4.0 - 0.878, abs=1e-3)
    assert summary.high == pytest.approx(4.0 + 0.878, abs=1e-3)
    assert stats.summarize([3.0]).low is None


def _experiment() -> Experiment:
    return Experiment(
        id=EXPERIMENT,
        name="tone",
        status="running",
        routes=["generate"],
        variants=_variants(control=1, concise=1),
        created_at="2026-12-07T00:00:00+00:00",
        updated_at="2026-12-07T00:00:00+00:00",
    )


def _answers(rng: random.Random, variant: str, mean: float, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for index in range(count):
        row: dict[str, Any] = {
            "variant": variant,
            "latency_ms": 100.0 + index,
            "prompt_tokens": 20,
            "completion_tokens": 10,
            "cached": False,
        }
        if index % 2 == 0:  # half of the answers are scored
            row["score"] = min(5.0, max(1.0, round(rng.gauss(mean, 0.8))))
        out.append(row)
    return out


def test_results_name_a_clear_winner() -> None:
    rng = random.Random(7)
    answers = _answers(rng, "control", 2.5, 80) + _answers(rng, "concise", 4.2, 80)
    results = results_of(_experiment(), answers)
    assert results.winner == "concise"
    by_name = {v.variant: v for v in results.variants}
    concise, control = by_name["concise"], by_name["control"]
    assert concise.answers == 80
    assert concise.scored == 40
    assert concise.mean_score is not None
    assert concise.score_ci95 is not None
    assert concise.score_ci95[0] < concise.mean_score < concise.score_ci95[1]
    assert control.p_value is not None
    assert control.p_value < 0.001
    assert concise.mean_latency_ms == pytest.approx(139.5)
    assert concise.mean_completion_tokens == 10


def test_results_name_no_winner_without_a_significant_difference() -> None:
    rng = random.Random(11)
    answers = _answers(rng, "control", 3.5, 12) + _answers(rng, "concise", 3.6, 12)
    results = results_of(_experiment(), answers)
    assert results.winner is None
    # Too few scores in one variant: no comparison at all.
    few = _answers(rng, "control", 1.0, 20) + _answers(rng, "concise", 5.0, 2)
    assert results_of(_experiment(), few).winner is None


def test_the_variant_schema_states_its_rules() -> None:
    """What a variant refuses, its schema says: a template without {question}."""
    schema = Variant.model_json_schema()["properties"]
    validator = jsonschema.Draft202012Validator(schema["prompt_template"])
    assert not validator.is_valid("no placeholder")
    assert validator.is_valid("Q: {question}")
    with pytest.raises(pydantic.ValidationError, match=r"must contain \{question\}"):
        Variant(name="a", prompt_template="no placeholder")
