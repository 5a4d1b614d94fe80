"""A real Prometheus against the running stack, with the repository's scrape config and rules.

The four services run as processes (as `lodestar run` starts them) on free
ports; deploy/prometheus/prometheus.yml is used as it is, with only its target
addresses rewritten to those ports and a one-second scrape interval. The tests
then ask Prometheus's HTTP API what it scraped: every service's metric families,
every dashboard and rule expression evaluating against real series, and every
rule loaded without error.

test_tracing.py starts the same stack with tracing on (``start_services``) and
checks that one gateway request yields one connected trace across the processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.ops._deploy_check import dc

pytestmark = pytest.mark.slow

STARTUP_TIMEOUT_S = 240.0
GRPC_SERVICES = ("embedding", "vector", "inference")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(what: str, ready: Callable[[], bool], processes: dict[str, Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        for name, process in processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.25)


def _grpc_serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class LiveStack:
    directory: Path
    ports: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def prometheus(self) -> str:
        return f"http://127.0.0.1:{self.ports['prometheus']}"

    def start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        log = (self.directory / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=dc.REPO
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.directory.glob("*.log"))
        )

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def query(self, promql: str) -> list[dict[str, Any]]:
        reply = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": promql}, timeout=10)
        body = reply.json()
        assert body["status"] == "success", f"{promql}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def _service_env(stack: LiveStack) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "LODESTAR_VECTOR_DATA_DIR": str(stack.directory / "vector"),
            "LODESTAR_INFERENCE_CONTEXT_SIZE": "512",
            "LODESTAR_INFERENCE_THREADS": "2",
            "LODESTAR_EMBEDDING_THREADS": "1",
            "LODESTAR_GATEWAY_METRICS_PUBLIC": "true",
            # Collection sizes are sampled on this interval (gauges and analytics).
            "LODESTAR_VECTOR_ANALYTICS_INTERVAL_S": "1",
        }
    )
    for name in GRPC_SERVICES:
        prefix = f"LODESTAR_{name.upper()}_"
        env[f"{prefix}HOST"] = "127.0.0.1"
        env[f"{prefix}PORT"] = str(stack.ports[name])
        env[f"{prefix}METRICS_PORT"] = str(stack.metrics_ports[name])
        env[f"{prefix}SHUTDOWN_GRACE_S"] = "1"
        env[f"LODESTAR_GATEWAY_{name.upper()}_ADDRESSES"] = f"127.0.0.1:{stack.ports[name]}"
    env["LODESTAR_GATEWAY_HOST"] = "127.0.0.1"
    env["LODESTAR_GATEWAY_PORT"] = str(stack.ports["gateway"])
    env["LODESTAR_GATEWAY_SHUTDOWN_GRACE_S"] = "1"
    return env


def start_services(stack: LiveStack, env_for: Callable[[str], dict[str, str]]) -> None:
    """The three gRPC services, then the gateway, each once it answers (ports already chosen)."""
    for name in GRPC_SERVICES:
        stack.start(name, [sys.executable, "-m", f"lodestar.services.{name}"], env_for(name))
    for name in GRPC_SERVICES:
        _wait(
            name,
            lambda n=name: _grpc_serving(stack.ports[n]),  # type: ignore[misc]
            stack.processes,
            STARTUP_TIMEOUT_S,
        )
    stack.start("gateway", [sys.executable, "-m", "lodestar.services.gateway"], env_for("gateway"))
    _wait(
        "gateway",
        lambda: _http_ok(f"{stack.gateway}/api/v1/health"),
        stack.processes,
        STARTUP_TIMEOUT_S,
    )


def _prometheus_config(stack: LiveStack) -> Path:
    """The repository's local scrape config, pointed at this stack's ports."""
    config = yaml.safe_load((dc.PROMETHEUS / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(path) for path in dc.rule_files()]
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            service = static["labels"]["service"]
            port = stack.ports[service] if service == "gateway" else stack.metrics_ports[service]
            static["targets"] = [f"127.0.0.1:{port}"]
    path = stack.directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _drive_traffic(stack: LiveStack) -> None:
    """A little of everything, so that labelled series exist."""
    from lodestar.auth.tokens import mint_token
    from lodestar.services.gateway.settings import GatewaySettings

    token = mint_token(GatewaySettings(), "ops-test", ["admin"], 600)
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=stack.gateway, headers=auth, timeout=120) as http:
        created = http.post("/api/v1/collections", json={"name": "ops_live"})
        assert created.status_code == 201, created.text
        texts = ["Mars is red.", "The Pacific is deep.", "Leaves make sugar from light."]
        inserted = http.post(
            "/api/v1/vectors/insert",
            json={"collection": "ops_live", "points": [{"text": t} for t in texts]},
        )
        assert inserted.status_code == 200, inserted.text
        for question in ("Which planet is red?", "Which ocean is deepest?"):
            found = http.post(
                "/api/v1/vectors/search",
                json={"collection": "ops_live", "text": question, "limit": 2},
            )
            assert found.status_code == 200, found.text
        deleted = http.delete(
            f"/api/v1/vectors/{inserted.json()['ids'][0]}", params={"collection": "ops_live"}
        )
        assert deleted.status_code in (200, 204), deleted.text
        missing = http.get("/api/v1/collections/no_such_collection")
        assert missing.status_code == 404
        answer = http.post("/api/v1/generate", json={"prompt": "Mars is", "max_tokens": 4})
        assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed: run `make system-deps`")
    stack = LiveStack(tmp_path_factory.mktemp("live-stack"))
    for name in (*GRPC_SERVICES, "gateway", "prometheus"):
        stack.ports[name] = _free_port()
    for name in GRPC_SERVICES:
        stack.metrics_ports[name] = _free_port()
    env = _service_env(stack)
    try:
        start_services(stack, lambda _name: env)
        _drive_traffic(stack)
        config = _prometheus_config(stack)
        stack.start(
            "prometheus",
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={stack.directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{stack.ports['prometheus']}",
            ],
            env,
        )
        _wait(
            "prometheus",
            lambda: _http_ok(f"{stack.prometheus}/-/ready"),
            stack.processes,
            60,
        )
        # Two scrapes of every target, so that rate() has something to work on.
        _wait(
            "two scrapes of every target",
            lambda: len(stack.query('count_over_time(up{job="lodestar"}[1m]) >= 3')) == 4,
            stack.processes,
            60,
        )
        yield stack
    except (RuntimeError, TimeoutError, AssertionError) as error:
        stack.stop()
        pytest.fail(f"{error}\n{stack.logs()}")
    else:
        stack.stop()


def _exported_families(stack: LiveStack) -> dict[str, set[str]]:
    """Metric families each service exposes, from Prometheus's target metadata."""
    reply = httpx.get(
        f"{stack.prometheus}/api/v1/targets/metadata",
        params={"match_target": '{job="lodestar"}'},
        timeout=10,
    ).json()
    assert reply["status"] == "success"
    families: dict[str, set[str]] = {}
    for item in reply["data"]:
        names = families.setdefault(item["target"]["service"], set())
        names.add(item["metric"])
        if item["type"] == "counter":
            # prometheus-client names the family without the _total its samples carry.
            names.add(f"{item['metric']}_total")
        if item["type"] == "histogram":
            names.update(f"{item['metric']}{s}" for s in ("_bucket", "_sum", "_count"))
    return families


def test_prometheus_scrapes_every_service(live: LiveStack) -> None:
    up = {r["metric"]["service"]: r["value"][1] for r in live.query('up{job="lodestar"}')}
    assert up == {"embedding": "1", "vector": "1", "inference": "1", "gateway": "1"}


def test_every_service_exports_its_metric_families(live: LiveStack) -> None:
    families = _exported_families(live)
    for name in dc.SERVICE_METRICS:
        if name.startswith("lodestar_"):
            owners = [name.split("_")[1]]
        elif name.startswith("grpc_server_"):
            owners = list(GRPC_SERVICES)
        elif name.startswith("gen_ai_server_"):
            # The GenAI server latencies: time to first token and per output token.
            owners = ["inference"]
        else:
            owners = [*GRPC_SERVICES, "gateway"]
        for service in owners:
            assert name in families.get(service, set()), f"{service} does not export {name}"


def test_every_expression_names_exported_metrics_and_evaluates(live: LiveStack) -> None:
    exported = set().union(*_exported_families(live).values())
    recorded = dc.recording_rule_names()
    for expression in dc.dashboard_expressions() + dc.rule_expressions():
        promql = dc.as_promql(expression.expr)
        for name in dc.metric_names(promql) - recorded - dc.INFRASTRUCTURE_METRICS:
            assert name in exported, f"{expression.where}: nothing exports {name}"
        live.query(promql)


def test_panels_show_data_from_the_traffic(live: LiveStack) -> None:
    for promql in (
        'sum by (route, status) (rate(lodestar_gateway_http_requests_total{job="lodestar"}[1m]))',
        "histogram_quantile(0.99, sum by (le) "
        '(rate(lodestar_vector_search_duration_seconds_bucket{job="lodestar"}[1m])))',
        'lodestar_vector_collection_points{job="lodestar",collection="ops_live"}',
        'sum(lodestar_inference_completion_tokens_total{job="lodestar"})',
        'sum(lodestar_embedding_texts_total{job="lodestar"})',
        'grpc_server_handled_total{job="lodestar",grpc_code="NOT_FOUND"}',
        # The latency objective reads this bucket.
        'lodestar_gateway_http_request_duration_seconds_bucket{job="lodestar",le="1.0"}',
    ):
        assert live.query(promql), f"no data for {promql}"


def test_every_rule_loads_and_evaluates(live: LiveStack) -> None:
    def evaluated() -> bool:
        groups = httpx.get(f"{live.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        return all(g["lastEvaluation"] > "2000" for g in groups)

    _wait("rule evaluation", evaluated, live.processes, 30)
    groups = httpx.get(f"{live.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(dc.load_rules())
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    firing = [r["name"] for r in rules if r.get("state") == "firing"]
    assert firing == [], f"alerts fire on a healthy stack: {firing}"
