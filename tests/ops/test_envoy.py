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


def _listener_chain(config: dict[str, Any]) -> dict[str, Any]:
    chain: dict[str, Any] = config["static_resources"]["listeners"][0]["filter_chains"][0]
    return chain


def _jwt(config: dict[str, Any]) -> dict[str, Any]:
    filters = _hcm(config)["http_filters"]
    found: dict[str, Any] = next(f for f in filters if f["name"] == "envoy.filters.http.jwt_authn")[
        "typed_config"
    ]
    return found


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
        "identity_provider",
    }


def test_clusters_resolve_the_headless_services_of_the_manifests() -> None:
    objects = dc.built("dev")
    headless = {
        o["metadata"]["name"]: o["spec"]["ports"][0]["port"]
        for o in objects
        if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None"
    }
    for cluster in CONFIG["static_resources"]["clusters"]:
        if cluster["name"] not in dc.GRPC_SERVICES:
            continue
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
        (lambda c: _hcm(c)["http_filters"].pop(1), "no envoy.filters.http.jwt_authn filter"),
        (lambda c: _jwt(c)["providers"]["lodestar"].pop("forward"), "is not forwarded"),
        (lambda c: _jwt(c)["providers"]["lodestar"].update(issuer="x"), "issuer is not"),
        (lambda c: _jwt(c)["providers"]["lodestar"].update(audiences=["x"]), "audience"),
        (lambda c: _jwt(c)["rules"].pop(), "JWT is not required on every route"),
        (
            lambda c: _jwt(c)["rules"].insert(0, {"match": {"prefix": "/lodestar.vector.v1."}}),
            "/lodestar.vector.v1. is open without a JWT",
        ),
        (lambda c: _listener_chain(c).pop("transport_socket"), "clients are not served TLS"),
        (lambda c: _cluster(c).pop("transport_socket"), "the service is not called over TLS"),
        (
            lambda c: _cluster(c)["transport_socket"]["typed_config"]["common_tls_context"].pop(
                "validation_context"
            ),
            "not verified against a CA",
        ),
        (
            lambda c: _cluster(c)["transport_socket"]["typed_config"]["common_tls_context"].pop(
                "tls_certificates"
            ),
            "no client certificate",
        ),
    ],
)
def test_policy_check_catches(change: Any, expected: str) -> None:
    config = copy.deepcopy(CONFIG)
    change(config)
    problems = dc.envoy_policy_problems(config)
    assert any(expected in p for p in problems), problems
