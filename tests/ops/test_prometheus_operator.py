"""The prometheus-operator component: rules from the repository, monitors on the metrics ports.

Its objects are validated against the operator's CRD schemas (vendored under
deploy/k8s/schemas), offline, and the checks must catch what they promise to.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops._deploy_check import dc

OPERATOR_KINDS = {"PrometheusRule", "PodMonitor", "ServiceMonitor"}
OPERATOR_VARIANTS = [
    variant
    for variant, (overlay, components) in dc.variants().items()
    if "prometheus-operator" in (*dc.overlay_components(overlay), *components)
]


def _objects(variant: str = "prod+prometheus-operator") -> list[dict[str, Any]]:
    return copy.deepcopy(list(dc.built(variant)))


def _get(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _operator_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in OPERATOR_KINDS]


def test_each_overlay_is_built_with_the_component_and_never_with_both_monitoring_paths() -> None:
    assert {dc.variants()[v][0] for v in OPERATOR_VARIANTS} == set(dc.OVERLAYS)
    for overlay, components in dc.variants().values():
        chosen = {*dc.overlay_components(overlay), *components}
        assert not {"monitoring", "prometheus-operator"} <= chosen


@pytest.mark.parametrize("variant", OPERATOR_VARIANTS)
def test_the_component_adds_rules_and_monitors_in_the_overlay_namespace(variant: str) -> None:
    objects = _objects(variant)
    operator = _operator_objects(objects)
    assert {(o["kind"], o["metadata"]["name"]) for o in operator} == {
        ("PrometheusRule", "lodestar-alerts"),
        ("PrometheusRule", "lodestar-slo"),
        ("PodMonitor", "lodestar-backends"),
        ("ServiceMonitor", "lodestar-gateway"),
    }
    namespace = next(o for o in objects if o["kind"] == "Namespace")["metadata"]["name"]
    assert {o["metadata"]["namespace"] for o in operator} == {namespace}
    # The component brings no Prometheus of its own: the operator runs it. The
    # dashboards come as the ConfigMap a Grafana sidecar picks up.
    assert not [o for o in objects if o["metadata"]["name"] in ("prometheus", "grafana")]
    (dashboards,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap"
        and o["metadata"]["name"].startswith("lodestar-grafana-dashboards-")
    ]
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(dashboards["data"]) == {path.name for path in dc.dashboard_files()}


@pytest.mark.parametrize("variant", OPERATOR_VARIANTS)
def test_operator_objects_match_their_crd_schemas(variant: str) -> None:
    operator = _operator_objects(_objects(variant))
    for obj in operator:
        assert dc._validator(dc.K8S_VERSION, obj["kind"], obj["apiVersion"]) is not None
    assert dc.k8s_schema_problems(operator) == []


def test_the_prometheus_rules_are_the_repository_rule_files() -> None:
    """One source of truth: the built PrometheusRules hold exactly the rule files' groups."""
    built = {
        o["metadata"]["name"]: o["spec"]["groups"]
        for o in _objects()
        if o["kind"] == "PrometheusRule"
    }
    assert built == {
        f"lodestar-{path.stem}": yaml.safe_load(path.read_text())["groups"]
        for path in dc.rule_files()
    }
    assert dc.check_operator_rules() == []
    assert dc.write_operator_rules() == []


def test_every_service_is_scraped_once_on_its_metrics_port_with_the_rules_labels() -> None:
    for variant in OPERATOR_VARIANTS:
        assert dc.operator_monitor_problems(_objects(variant)) == []
    objects = _objects()
    backends = _get(objects, "PodMonitor", "lodestar-backends")
    (endpoint,) = backends["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    gateway = _get(objects, "ServiceMonitor", "lodestar-gateway")
    (endpoint,) = gateway["spec"]["endpoints"]
    assert endpoint["port"] == "http"


# The checks themselves must catch what they promise to catch.


def _podmonitor(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return _get(objects, "PodMonitor", "lodestar-backends")


def _servicemonitor(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return _get(objects, "ServiceMonitor", "lodestar-gateway")


def _alerts(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return _get(objects, "PrometheusRule", "lodestar-alerts")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda o: _podmonitor(o)["spec"]["podMetricsEndpoints"][0].update(scrapeInterval="15s"),
            "'scrapeInterval' was unexpected",
        ),
        (
            lambda o: _podmonitor(o)["spec"]["podMetricsEndpoints"][0]["relabelings"][0].update(
                action="rewrite"
            ),
            "'rewrite' is not one of",
        ),
        (lambda o: _podmonitor(o)["spec"].update(selector="embedding"), "is not of type 'object'"),
        (
            lambda o: _servicemonitor(o)["spec"]["endpoints"][0].update(interval="15 seconds"),
            "does not match",
        ),
        (lambda o: _servicemonitor(o)["metadata"].update(label={}), "'label' was unexpected"),
        (
            lambda o: _alerts(o)["spec"]["groups"][0]["rules"][0].update(severity="critical"),
            "'severity' was unexpected",
        ),
        (lambda o: _alerts(o)["spec"]["groups"][0]["rules"][0].pop("expr"), "'expr' is a required"),
        (
            lambda o: _alerts(o)["spec"]["groups"].append(_alerts(o)["spec"]["groups"][0]),
            "duplicate entry with name",
        ),
        (lambda o: _alerts(o).update(apiVersion="monitoring.coreos.com/v2"), "no schema"),
    ],
)
def test_crd_schema_check_catches(change: Any, expected: str) -> None:
    objects = _operator_objects(_objects())
    change(objects)
    problems = dc.k8s_schema_problems(objects)
    assert any(expected in p for p in problems), problems


def _service_port(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    port: dict[str, Any] = _get(objects, "Service", name)["spec"]["ports"][0]
    return port


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda o: _podmonitor(o)["spec"]["podMetricsEndpoints"][0].update(port="prom"),
            "selects the embedding pods, which have none of the ports ['prom']",
        ),
        (
            lambda o: _podmonitor(o)["spec"]["podMetricsEndpoints"][0].update(port="prom"),
            "no PodMonitor or ServiceMonitor scrapes the embedding service",
        ),
        (
            lambda o: _podmonitor(o)["spec"]["selector"]["matchExpressions"][0].update(
                values=["embedding", "vector"]
            ),
            "scrapes the inference service",
        ),
        (
            lambda o: _podmonitor(o)["spec"]["podMetricsEndpoints"][0].update(port="grpc"),
            "scrapes vector on port 50052, but its metrics port is 9102",
        ),
        (
            lambda o: _podmonitor(o)["spec"]["podMetricsEndpoints"][0]["relabelings"].pop(0),
            "no relabeling sets job",
        ),
        (
            lambda o: _servicemonitor(o)["spec"]["endpoints"][0]["relabelings"].pop(1),
            "no relabeling sets service",
        ),
        (
            lambda o: _servicemonitor(o)["spec"]["endpoints"][0].update(path="/api/v1/metrics"),
            "is not /metrics",
        ),
        (
            lambda o: _servicemonitor(o)["spec"]["endpoints"][0].update(port="web"),
            "selects Service/gateway, which has none of the ports ['web']",
        ),
        # The backends' Services and their headless twins share labels: a
        # ServiceMonitor on them would scrape every pod twice.
        (
            lambda o: (
                _servicemonitor(o)["spec"]["selector"]["matchLabels"].update(
                    {"app.kubernetes.io/name": "embedding"}
                ),
                _servicemonitor(o)["spec"]["endpoints"][0].update(port="grpc"),
            ),
            "the embedding service is scraped more than once",
        ),
        (
            lambda o: (
                _podmonitor(o)["spec"]["selector"]["matchExpressions"][0]["values"].append(
                    "gateway"
                ),
                _podmonitor(o)["spec"]["podMetricsEndpoints"].append(
                    {**_podmonitor(o)["spec"]["podMetricsEndpoints"][0], "port": "http"}
                ),
            ),
            "the gateway service is scraped more than once",
        ),
        (
            lambda o: _service_port(o, "gateway").update(targetPort=9090),
            "the gateway pods have no port 9090",
        ),
    ],
)
def test_monitor_check_catches(change: Any, expected: str) -> None:
    objects = _objects()
    change(objects)
    problems = dc.operator_monitor_problems(objects)
    assert any(expected in p for p in problems), problems


def test_rules_check_catches_a_rule_file_changed_without_regenerating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same layout as the repository's: the generated header names the rule file.
    prometheus = tmp_path / dc.PROMETHEUS.relative_to(dc.REPO)
    shutil.copytree(dc.PROMETHEUS, prometheus)
    operator = tmp_path / dc.OPERATOR.relative_to(dc.REPO)
    shutil.copytree(dc.OPERATOR, operator)
    monkeypatch.setattr(dc, "PROMETHEUS", prometheus)
    monkeypatch.setattr(dc, "OPERATOR", operator)
    monkeypatch.setattr(dc, "REPO", tmp_path)
    alerts = prometheus / "rules" / "alerts.yaml"
    alerts.write_text(alerts.read_text().replace("for: 2m", "for: 3m", 1))
    (operator / "prometheusrule-old.yaml").write_text("")
    problems = dc.check_operator_rules()
    assert any(
        "prometheusrule-alerts.yaml is not what" in p and "--write-operator-rules" in p
        for p in problems
    ), problems
    assert any("prometheusrule-old.yaml: no rule file generates it" in p for p in problems)
    assert dc.write_operator_rules() == [operator / "prometheusrule-alerts.yaml"]
    manifest = yaml.safe_load((operator / "prometheusrule-alerts.yaml").read_text())
    assert manifest["spec"]["groups"] == yaml.safe_load(alerts.read_text())["groups"]
    (operator / "prometheusrule-old.yaml").unlink()
    assert dc.check_operator_rules() == []
