"""deploy/envoy/envoy.yaml against Envoy's API (envoy-data-plane) and what the front promises."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.ops._deploy_check import dc

CONFIG: dict[str, Any] = yaml.safe_load(dc.ENVOY_CONFIG.read_text())


def _cluster(config: dict[str, Any], name: str = "inference") -> dict[str, Any]:
    clusters: list[dict[str, Any]] = config["static_resources"]["clusters"]
    return next(c for c in clusters if c["name"] == name)


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    typed: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def test_config_matches_envoys_api() -> None:
    assert dc.envoy_schema_problems(CONFIG) == []


def test_config_keeps_the_fronts_promises() -> None:
    assert dc.envoy_policy_problems(CONFIG) == []
    assert {c["name"] for c in CONFIG["static_resources"]["clusters"]} == {
        "embedding",
        "vector",
        "inference",
    }


def test_clusters_resolve_the_headless_services_of_the_manifests() -> None:
    objects = dc.built("dev")
    headless = {
        o["metadata"]["name"]: o["spec"]["ports"][0]["port"]
        for o in objects
        if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None"
    }
    for cluster in CONFIG["static_resources"]["clusters"]:
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        address = endpoint["address"]["socket_address"]
        assert headless[address["address"]] == address["port_value"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda c: _cluster(c)["outlier_detection"].update(consecutive_5xxx=5),
            "unknown field 'consecutive_5xxx'",
        ),
        (lambda c: _cluster(c).update(lb_policy="FASTEST"), "'FASTEST' is not one of"),
        (lambda c: _cluster(c).update(connect_timeout="soon"), "not a valid Duration"),
        (
            lambda c: _cluster(c)["health_checks"][0].update(http_health_check={"path": "/"}),
            "are alternatives",
        ),
        (lambda c: _hcm(c).update(stat_prefx="x"), "unknown field 'stat_prefx'"),
        (
            lambda c: _hcm(c)["http_filters"][0]["typed_config"]["token_bucket"].update(
                max_tokens="many"
            ),
            "expected an integer",
        ),
        (
            lambda c: _hcm(c)["http_filters"][0]["typed_config"].update(
                {"@type": "type.googleapis.com/envoy.extensions.filters.http.nope.v3.Nope"}
            ),
            "unknown type",
        ),
    ],
)
def test_schema_check_catches(change: Any, expected: str) -> None:
    config = copy.deepcopy(CONFIG)
    change(config)
    problems = dc.envoy_schema_problems(config)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: _cluster(c).pop("outlier_detection"), "no outlier detection"),
        (lambda c: _cluster(c).pop("health_checks"), "no gRPC health check"),
        (lambda c: _cluster(c).pop("circuit_breakers"), "no circuit-breaker thresholds"),
        (
            lambda c: _cluster(c)["typed_extension_protocol_options"].clear(),
            "upstream is not HTTP/2",
        ),
        (
            lambda c: _hcm(c)["route_config"]["virtual_hosts"][0]["retry_policy"].update(
                retry_on="5xx"
            ),
            "no retry policy on gRPC UNAVAILABLE",
        ),
        (lambda c: _hcm(c)["http_filters"].pop(0), "no local rate limit"),
        (lambda c: _hcm(c)["http_filters"].reverse(), "router must be the last"),
    ],
)
def test_policy_check_catches(change: Any, expected: str) -> None:
    config = copy.deepcopy(CONFIG)
    change(config)
    problems = dc.envoy_policy_problems(config)
    assert any(expected in p for p in problems), problems
