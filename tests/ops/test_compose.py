"""deploy/compose: the one-host stack is valid Compose and names only what the repo has."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops._deploy_check import dc


@pytest.fixture
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(dc.COMPOSE.read_text())
    return copy.deepcopy(loaded)


def _problems(compose: dict[str, Any]) -> list[str]:
    return dc.compose_reference_problems(compose) + dc.compose_policy_problems(compose)


def test_the_compose_file_passes_every_check() -> None:
    assert dc.check_compose() == []


def test_it_runs_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(dc.SERVICES) <= set(services)
    images = {str(s.get("image")).split(":")[0] for s in services.values()}
    assert {"qdrant/qdrant", "redis", "prom/prometheus", "grafana/grafana"} <= images
    vector = dc._compose_environment(services["vector"])
    assert vector["LODESTAR_VECTOR_BACKEND"] == "remote"
    for name in dc.SERVICES:
        assert services[name]["build"]["dockerfile"] == f"deploy/docker/{name}.Dockerfile"


def test_the_schema_rejects_an_unknown_key(tmp_path: Path, compose: dict[str, Any]) -> None:
    compose["services"]["gateway"]["replica"] = 2
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(compose))
    problems = dc.compose_schema_problems(path)
    assert any("services.gateway" in p and "'replica'" in p for p in problems), problems


def test_the_schema_rejects_a_wrong_type(tmp_path: Path, compose: dict[str, Any]) -> None:
    compose["services"]["gateway"]["ports"] = "127.0.0.1:8080:8080"  # a list, not a string
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(compose))
    assert dc.compose_schema_problems(path) != []


def test_a_variable_no_setting_reads_fails(compose: dict[str, Any]) -> None:
    compose["services"]["vector"]["environment"]["LODESTAR_VECTOR_QDRANT_HOST"] = "qdrant"
    assert _problems(compose) == [
        "services.vector: LODESTAR_VECTOR_QDRANT_HOST is not a setting of the vector service"
    ]


def test_a_lodestar_variable_on_another_image_fails(compose: dict[str, Any]) -> None:
    compose["services"]["redis"]["environment"] = ["LODESTAR_GATEWAY_REDIS_URL=redis://x"]
    assert _problems(compose) == [
        "services.redis: LODESTAR_GATEWAY_REDIS_URL is not a setting of any service built here"
    ]


def test_a_missing_bind_mount_source_fails(compose: dict[str, Any]) -> None:
    compose["services"]["prometheus"]["volumes"][1] = "../prometheus/alerts:/etc/prometheus/rules"
    problems = _problems(compose)
    assert "services.prometheus: volume source ../prometheus/alerts does not exist" in problems


def test_an_undeclared_named_volume_fails(compose: dict[str, Any]) -> None:
    del compose["volumes"]["qdrant-storage"]
    assert _problems(compose) == [
        "services.qdrant: named volume qdrant-storage is not declared in volumes"
    ]


def test_a_missing_dockerfile_fails(compose: dict[str, Any]) -> None:
    compose["services"]["gateway"]["build"]["dockerfile"] = "deploy/docker/api.Dockerfile"
    problems = _problems(compose)
    assert any("Dockerfile" in p and "api.Dockerfile does not exist" in p for p in problems)


def test_a_missing_build_context_fails(compose: dict[str, Any]) -> None:
    compose["services"]["gateway"]["build"]["context"] = "../../app"
    assert any("build context" in p for p in _problems(compose))


def test_an_image_the_manifests_do_not_pin_fails(compose: dict[str, Any]) -> None:
    compose["services"]["qdrant"]["image"] = "qdrant/qdrant:latest"
    assert _problems(compose) == [
        "services.qdrant: image 'qdrant/qdrant:latest' is not one the Kubernetes manifests "
        "pin (deploy/k8s)"
    ]


def test_a_port_the_image_does_not_expose_fails(compose: dict[str, Any]) -> None:
    compose["services"]["inference"]["environment"]["LODESTAR_INFERENCE_PORT"] = "50063"
    compose["services"]["inference"]["expose"] = ["50063", "9103"]
    problems = _problems(compose)
    assert "services.inference: port 50063 is not EXPOSEd by inference.Dockerfile" in problems


def test_a_gateway_address_must_name_a_service_port(compose: dict[str, Any]) -> None:
    env = compose["services"]["gateway"]["environment"]
    env["LODESTAR_GATEWAY_EMBEDDING_ADDRESSES"] = "embedding:50052,embedder:50051"
    problems = _problems(compose)
    assert any("port 50052 of embedding" in p for p in problems), problems
    assert any("names embedder, not a service" in p for p in problems), problems


def test_the_vector_service_must_use_the_qdrant_server(compose: dict[str, Any]) -> None:
    compose["services"]["vector"]["environment"]["LODESTAR_VECTOR_BACKEND"] = "embedded"
    assert _problems(compose) == ["services.vector: LODESTAR_VECTOR_BACKEND is not remote"]


def test_grafana_must_provision_the_dashboards(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["grafana"]["volumes"]
    volumes[:] = [v for v in volumes if not v.startswith("../grafana:")]
    assert _problems(compose) == [
        "grafana: deploy/grafana is not mounted where a dashboard provider reads"
    ]


def test_prometheus_scrapes_every_service_by_its_compose_name(compose: dict[str, Any]) -> None:
    assert dc.compose_prometheus_problems(compose) == []
    compose["services"]["vector"]["environment"]["LODESTAR_VECTOR_METRICS_PORT"] = "9112"
    assert dc.compose_prometheus_problems(compose) == [
        "prometheus.yml: target vector:9102, but vector serves metrics on 9112"
    ]


def test_deploy_check_fails_on_a_broken_compose_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = dc.COMPOSE.read_text().replace(
        "LODESTAR_GATEWAY_METRICS_PUBLIC", "LODESTAR_GATEWAY_PUBLIC_METRICS"
    )
    # Beside the real file, so that its relative paths resolve as they do there.
    path = dc.COMPOSE.parent / f".broken-{tmp_path.name}.yaml"
    path.write_text(broken)
    try:
        monkeypatch.setattr(dc, "COMPOSE", path)
        assert dc.main(["compose"]) == 1
    finally:
        path.unlink()
    out = capsys.readouterr().out
    assert "LODESTAR_GATEWAY_PUBLIC_METRICS is not a setting of the gateway service" in out


def test_every_python_healthcheck_compiles(compose: dict[str, Any]) -> None:
    checked = 0
    for name, service in compose["services"].items():
        test = service.get("healthcheck", {}).get("test", [])
        if test[:3] == ["CMD", "python", "-c"]:
            compile(test[3], f"{name} healthcheck", "exec")
            checked += 1
    assert checked == len(dc.SERVICES)
