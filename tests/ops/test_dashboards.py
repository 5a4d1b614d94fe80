"""Grafana dashboards: valid JSON, every PromQL expression parses and names real metrics."""

from __future__ import annotations

import json

import pytest

from tests.ops._deploy_check import dc

EXPECTED_TITLES = {
    "Lodestar / Inference",
    "Lodestar / Vector Database Operations",
    "Lodestar / Semantic Search Analytics",
    "Lodestar / System Integration Health",
}


def test_the_four_dashboards_exist_and_are_well_formed() -> None:
    titles = {json.loads(p.read_text())["title"] for p in dc.dashboard_files()}
    assert titles == EXPECTED_TITLES
    assert dc.check_dashboards() == []


@pytest.mark.parametrize(
    ("dashboard", "needles"),
    [
        (
            "inference.json",
            [
                "gen_ai_server_time_to_first_token_seconds_bucket",
                "lodestar_inference_tokens_per_second_bucket",
                "lodestar_inference_queue_depth",
                "lodestar_inference_active_sequences",
                "lodestar_inference_completion_tokens_total",
                "lodestar_inference_prompt_tokens_total",
            ],
        ),
        (
            "vector-database-operations.json",
            [
                "lodestar_vector_points_upserted_total",
                "histogram_quantile(0.99, sum by (le) (rate(lodestar_vector_search_duration",
                "lodestar_vector_collection_points",
                "lodestar_vector_storage_bytes",
                'grpc_code!="OK"',
            ],
        ),
        (
            "semantic-search-analytics.json",
            ["lodestar_vector_search_duration_seconds_count", "lodestar_vector_search_results"],
        ),
        (
            "system-integration-health.json",
            [
                "lodestar_gateway_circuit_breaker_state",
                "lodestar_gateway_backend_request_duration_seconds_bucket",
                "lodestar_gateway_rate_limit_rejections_total",
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
            ],
        ),
    ],
)
def test_dashboards_show_the_panels_operations_needs(dashboard: str, needles: list[str]) -> None:
    expressions = " ".join(
        e.expr for e in dc.dashboard_expressions() if e.where.startswith(f"{dashboard}:")
    )
    for needle in needles:
        assert needle in expressions, f"{dashboard} has no panel with {needle}"


def test_every_expression_parses() -> None:
    expressions = dc.dashboard_expressions() + dc.rule_expressions()
    assert len(expressions) > 80
    assert dc.promql_parse_problems(expressions) == []


def test_every_expression_names_metrics_the_services_export() -> None:
    expressions = dc.dashboard_expressions() + dc.rule_expressions()
    assert dc.promql_metric_problems(expressions) == []


def test_parse_check_catches_a_broken_expression() -> None:
    good = dc.Expression("good", "sum(rate(up[5m]))")
    bad = dc.Expression("bad panel", 'sum(rate(up{job="lodestar"}[5m])')
    problems = dc.promql_parse_problems([good, bad])
    assert problems == [f"bad panel: does not parse: {bad.expr}"]


def test_metric_check_catches_unknown_and_undeclared_metrics() -> None:
    problems = dc.promql_metric_problems(
        [
            dc.Expression("typo", "rate(lodestar_vector_points_upsert_total[5m])"),
            dc.Expression("constant", "vector(1)"),
        ]
    )
    assert "typo: unknown metric lodestar_vector_points_upsert_total" in problems
    assert "constant: names no metric" in problems


def test_metric_names_ignores_functions_labels_and_keywords() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, route) (rate(lodestar_gateway_http_request_"
        'duration_seconds_bucket{route=~".*search.*",le!="1.0"}[5m]))) / ignoring (code) '
        'group_left sum without (instance) (up{job="lodestar"}) > bool 0.5 offset 5m'
    )
    assert dc.metric_names(expr) == {
        "lodestar_gateway_http_request_duration_seconds_bucket",
        "up",
    }


def test_grafana_variables_become_valid_promql() -> None:
    expr = 'rate(x_total{instance=~"$instance",c=~"${collection}"}[$__rate_interval])'
    assert dc.as_promql(expr) == 'rate(x_total{instance=~".*",c=~".*"}[5m])'
