"""Kubernetes manifests: every overlay builds, matches the schemas and passes the policy."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import pytest
import yaml

from tests.ops._deploy_check import dc

VARIANTS = list(dc.variants())
SERVICES = ("embedding", "vector", "inference", "gateway")


def _objects(variant: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(dc.built(variant)))


def _get(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _container(workload: Mapping[str, Any], name: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def _config(objects: list[dict[str, Any]], service: str) -> dict[str, str]:
    maps = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(f"{service}-config-")
    ]
    assert len(maps) == 1
    data: dict[str, str] = maps[0]["data"]
    return data


def test_every_overlay_and_component_is_covered() -> None:
    assert {"dev", "prod"} <= set(VARIANTS)
    covered = {c for _, components in dc.variants().values() for c in components}
    for overlay in dc.OVERLAYS:
        covered |= set(dc.overlay_components(overlay))
    assert covered == set(dc.COMPONENTS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_objects_match_the_kubernetes_schemas(variant: str) -> None:
    objects = _objects(variant)
    assert len(objects) > 15
    assert dc.k8s_schema_problems(objects) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_workloads_pass_the_policy(variant: str) -> None:
    assert dc.k8s_policy_problems(_objects(variant)) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_environment_names_are_real_settings(variant: str) -> None:
    assert dc.env_name_problems(_objects(variant)) == []


def test_dev_runs_one_of_each_with_the_embedded_engine_on_a_claim() -> None:
    objects = _objects("dev")
    for service in SERVICES:
        assert _get(objects, "Deployment", service)["spec"]["replicas"] == 1
        assert {o["metadata"]["namespace"] for o in objects if o["kind"] != "Namespace"} == {
            "lodestar-dev"
        }
    vector = _get(objects, "Deployment", "vector")
    assert vector["spec"]["strategy"]["type"] == "Recreate"
    volumes = {v["name"]: v for v in vector["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "vector-data"
    assert _get(objects, "PersistentVolumeClaim", "vector-data")["spec"]["accessModes"] == [
        "ReadWriteOnce"
    ]
    assert _config(objects, "vector")["LODESTAR_VECTOR_BACKEND"] == "embedded"
    assert not [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]


def test_prod_autoscales_every_service_with_disruption_budgets() -> None:
    objects = _objects("prod")
    for service in SERVICES:
        hpa = _get(objects, "HorizontalPodAutoscaler", service)
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": service,
        }
        assert hpa["spec"]["minReplicas"] >= 2
        # The autoscaler owns the count: a replicas field would fight it on every apply.
        assert "replicas" not in _get(objects, "Deployment", service)["spec"]
        pdb = _get(objects, "PodDisruptionBudget", service)
        assert pdb["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": service}


def test_prod_runs_a_three_node_qdrant_cluster_on_persistent_volumes() -> None:
    objects = _objects("prod")
    qdrant = _get(objects, "StatefulSet", "qdrant")
    assert qdrant["spec"]["replicas"] == 3
    assert qdrant["spec"]["serviceName"] == "qdrant-headless"
    claims = {t["metadata"]["name"] for t in qdrant["spec"]["volumeClaimTemplates"]}
    assert claims == {"storage", "snapshots"}
    env = {e["name"]: e for e in _container(qdrant, "qdrant")["env"]}
    assert env["QDRANT__CLUSTER__ENABLED"]["value"] == "true"
    assert env["QDRANT__SERVICE__API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "lodestar-qdrant"
    assert _get(objects, "Service", "qdrant-headless")["spec"]["clusterIP"] == "None"
    assert _get(objects, "PodDisruptionBudget", "qdrant")["spec"]["maxUnavailable"] == 1


def test_prod_vector_service_is_remote_and_may_scale() -> None:
    objects = _objects("prod")
    config = _config(objects, "vector")
    assert config["LODESTAR_VECTOR_BACKEND"] == "remote"
    assert config["LODESTAR_VECTOR_QDRANT_URL"] == "http://qdrant:6333"
    vector = _get(objects, "Deployment", "vector")
    assert vector["spec"]["strategy"]["type"] == "RollingUpdate"
    env = {e["name"]: e for e in _container(vector, "vector").get("env", [])}
    secret = env["LODESTAR_VECTOR_QDRANT_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "lodestar-qdrant", "key": "api-key"}


def test_prod_gateway_shares_rate_limits_in_redis_and_reads_its_key_from_a_secret() -> None:
    objects = _objects("prod")
    assert _config(objects, "gateway")["LODESTAR_GATEWAY_REDIS_URL"] == "redis://redis:6379/0"
    assert _get(objects, "Service", "redis")["spec"]["ports"][0]["port"] == 6379
    _get(objects, "Deployment", "redis")
    gateway = _get(objects, "Deployment", "gateway")
    env = {e["name"]: e for e in _container(gateway, "gateway").get("env", [])}
    secret = env["LODESTAR_GATEWAY_JWT_SIGNING_KEY"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "lodestar-jwt", "key": "signing-key"}
    assert "LODESTAR_GATEWAY_JWT_SIGNING_KEY" not in _config(objects, "gateway")


def test_prod_internal_grpc_is_mutual_tls_with_tokens_required() -> None:
    objects = _objects("prod")
    for service in ("embedding", "vector", "inference", "gateway"):
        config = _config(objects, service)
        assert config["LODESTAR_GRPC_TLS_DIR"] == "/etc/lodestar/tls"
        workload = _get(objects, "Deployment", service)
        container = _container(workload, service)
        mount = next(m for m in container["volumeMounts"] if m["name"] == "grpc-tls")
        assert mount == {"name": "grpc-tls", "mountPath": "/etc/lodestar/tls", "readOnly": True}
        volumes = workload["spec"]["template"]["spec"]["volumes"]
        volume = next(v for v in volumes if v["name"] == "grpc-tls")
        assert volume["secret"]["secretName"] == f"lodestar-{service}-tls"
        if service == "gateway":
            continue
        assert config["LODESTAR_GRPC_TLS_CLIENT_AUTH"] == "true"
        assert config["LODESTAR_GRPC_REQUIRE_TOKEN"] == "true"
        env = {e["name"]: e for e in container.get("env", [])}
        secret = env["LODESTAR_JWT_SIGNING_KEY"]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": "lodestar-jwt", "key": "signing-key"}
        health = next(p["containerPort"] for p in container["ports"] if p["name"] == "health")
        assert config[f"LODESTAR_{service.upper()}_HEALTH_PORT"] == str(health)
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["grpc"]["port"] == health


def test_policy_refuses_a_grpc_probe_on_a_tls_port() -> None:
    objects = _objects("prod")
    assert dc.k8s_policy_problems(objects) == []
    vector = _container(_get(objects, "Deployment", "vector"), "vector")
    vector["readinessProbe"]["grpc"]["port"] = 50052
    problems = dc.k8s_policy_problems(objects)
    assert any("readinessProbe must be a gRPC probe on the health port" in p for p in problems)


def test_services_name_their_ports_and_probe_over_grpc() -> None:
    objects = _objects("dev")
    for service in ("embedding", "vector", "inference"):
        ports = _get(objects, "Service", service)["spec"]["ports"]
        assert [p["name"] for p in ports] == ["grpc"]
        container = _container(_get(objects, "Deployment", service), service)
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["grpc"]["port"] == ports[0]["port"]
    assert [p["name"] for p in _get(objects, "Service", "gateway")["spec"]["ports"]] == ["http"]
    gateway = _container(_get(objects, "Deployment", "gateway"), "gateway")
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/api/v1/health"


def _allowed_sources(objects: list[dict[str, Any]], pod_labels: Mapping[str, str]) -> list[Any]:
    """Ingress rules of every policy that selects pods with these labels."""
    rules = []
    for policy in (o for o in objects if o["kind"] == "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        if selector and not dc._selects(selector, pod_labels):
            continue
        rules.extend(policy["spec"].get("ingress", []))
    return rules


def test_only_the_gateway_reaches_the_backend_grpc_ports() -> None:
    objects = _objects("prod")
    assert _get(objects, "NetworkPolicy", "default-deny-ingress")["spec"]["podSelector"] == {}
    for service in ("embedding", "vector", "inference"):
        labels = _get(objects, "Deployment", service)["spec"]["template"]["metadata"]["labels"]
        for rule in _allowed_sources(objects, labels):
            ports = {p["port"] for p in rule.get("ports", [])}
            assert rule.get("from"), f"{service}: a rule admits every source"
            if "grpc" in ports:
                assert rule["from"] == [
                    {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}}
                ]
    gateway_labels = _get(objects, "Deployment", "gateway")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert gateway_labels["app.kubernetes.io/component"] == "gateway"
    for service in ("embedding", "vector", "inference"):
        labels = _get(objects, "Deployment", service)["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] != "gateway"


def test_monitoring_ships_the_repository_rules_dashboards_and_scrape_config() -> None:
    variant = next(v for v, (_, comps) in dc.variants().items() if "monitoring" in comps)
    objects = _objects(variant)
    by_prefix = {
        o["metadata"]["name"].rsplit("-", 1)[0]: o for o in objects if o["kind"] == "ConfigMap"
    }
    dashboards = by_prefix["lodestar-grafana-dashboards"]
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    for path in dc.dashboard_files():
        assert json.loads(dashboards["data"][path.name]) == json.loads(path.read_text())
    rules = by_prefix["lodestar-prometheus-rules"]["data"]
    assert {name: yaml.safe_load(text) for name, text in rules.items()} == {
        path.name: yaml.safe_load(path.read_text()) for path in dc.rule_files()
    }
    config = yaml.safe_load(by_prefix["prometheus-config"]["data"]["prometheus.yml"])
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yaml"]
    assert next(j["job_name"] for j in config["scrape_configs"]) == "lodestar"


# The checks themselves must catch what they promise to catch.


def _dev_with(change: Any) -> list[dict[str, Any]]:
    objects = _objects("dev")
    change(objects)
    return objects


def _embedding(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return _container(_get(objects, "Deployment", "embedding"), "embedding")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda o: _embedding(o).pop("readinessProbe"), "no readinessProbe"),
        (lambda o: _embedding(o).pop("livenessProbe"), "no livenessProbe"),
        (lambda o: _embedding(o)["resources"].pop("limits"), "no limits.memory"),
        (lambda o: _embedding(o)["resources"]["requests"].pop("cpu"), "no requests.cpu"),
        (
            lambda o: _embedding(o)["securityContext"].update(readOnlyRootFilesystem=False),
            "readOnlyRootFilesystem is not true",
        ),
        (
            lambda o: _embedding(o)["securityContext"]["capabilities"].update(drop=[]),
            "capabilities.drop lacks ALL",
        ),
        (
            lambda o: _embedding(o)["securityContext"].pop("allowPrivilegeEscalation"),
            "allowPrivilegeEscalation is not false",
        ),
        (
            lambda o: (
                _embedding(o)["securityContext"].pop("runAsNonRoot"),
                _get(o, "Deployment", "embedding")["spec"]["template"]["spec"][
                    "securityContext"
                ].pop("runAsNonRoot"),
            ),
            "runAsNonRoot is not set",
        ),
        (
            lambda o: (
                _embedding(o)["securityContext"].pop("seccompProfile"),
                _get(o, "Deployment", "embedding")["spec"]["template"]["spec"][
                    "securityContext"
                ].pop("seccompProfile"),
            ),
            "no seccompProfile",
        ),
        (lambda o: _embedding(o).update(image="lodestar/embedding:latest"), "not pinned"),
        (
            lambda o: _embedding(o).update(readinessProbe={"tcpSocket": {"port": 50051}}),
            "readinessProbe must be a gRPC probe",
        ),
        (lambda o: _get(o, "Deployment", "vector")["spec"].update(replicas=2), "exactly one"),
        (
            lambda o: _get(o, "Deployment", "vector")["spec"].update(
                strategy={"type": "RollingUpdate"}
            ),
            "strategy Recreate",
        ),
        (
            lambda o: _get(o, "Deployment", "vector")["spec"]["template"]["spec"].update(
                volumes=[{"name": "tmp", "emptyDir": {}}, {"name": "data", "emptyDir": {}}]
            ),
            "not on a persistent volume",
        ),
        (
            lambda o: _get(o, "Service", "embedding")["spec"]["ports"][0].update(name="rpc"),
            "no port named 'grpc'",
        ),
        (
            lambda o: _embedding(o)["envFrom"][0]["configMapRef"].update(name="missing"),
            "ConfigMap 'missing' does not exist",
        ),
        (
            lambda o: _get(o, "Deployment", "inference")["spec"]["template"]["metadata"][
                "annotations"
            ].update({"prometheus.io/port": "9999"}),
            "prometheus.io annotations",
        ),
    ],
)
def test_policy_catches(change: Any, expected: str) -> None:
    problems = dc.k8s_policy_problems(_dev_with(change))
    assert any(expected in p for p in problems), problems


def test_schema_check_catches_unknown_fields_and_wrong_types() -> None:
    objects = _objects("dev")
    deployment = _get(objects, "Deployment", "embedding")
    deployment["spec"]["replica"] = 2
    _container(deployment, "embedding")["resources"]["limits"]["cpu"] = ["2"]
    problems = dc.k8s_schema_problems([deployment])
    assert any("replica" in p for p in problems), problems
    assert any("limits" in p for p in problems), problems


def test_settings_check_catches_a_misspelt_variable() -> None:
    objects = _objects("dev")
    _config(objects, "embedding")["LODESTAR_EMBEDDING_THREAD"] = "2"
    problems = dc.env_name_problems(objects)
    assert any("LODESTAR_EMBEDDING_THREAD " in p for p in problems), problems
