"""The OpenAPI document is the contract: schemathesis, with every check, against
the real stack finds nothing.

Every operation the app's document lists is exercised (routes added later join
by being in the document), with a fixed seed and a bounded number of examples
per operation, so that a run is reproducible and takes minutes. What the run
changes is stated in ``schemathesis.toml`` (every check, and the exceptions, each
with its reason) and ``schemathesis_hooks.py`` (generation lengths, and the facts
of a valid request no schema can state), next to this file.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import schemathesis
import schemathesis.config

from lodestar.services.vector.server import create_server as create_vector_server
from tests.flows.conftest import Stack, flows_settings, vector_settings
from tests.flows.harness import RunningGateway, gateway_settings, run_gateway

SEED = 26
MAX_EXAMPLES = 8
HERE = Path(__file__).parent
ROOT = HERE.parent.parent


@pytest.fixture
async def own_gateway(stack: Stack, tmp_path: Path) -> AsyncIterator[RunningGateway]:
    """A gateway over a vector service of its own: the run creates, changes and
    deletes whatever collections it finds (the stateful phase follows the API's
    links), which must not be the ones the other flows tests share."""
    server = await create_vector_server(vector_settings(tmp_path / "vector"))
    try:
        vector = f"127.0.0.1:{await server.start()}"
        settings = gateway_settings(stack.embedding, vector, stack.inference)
        async with run_gateway(settings, flows_settings()) as running:
            yield running
    finally:
        await server.stop(2)


# Part of `make test` (`make contract` runs it alone): it takes minutes. Every check
# runs, as the config file says (not `--checks all`, which would override its
# per-operation exceptions).
@pytest.mark.contract
async def test_schemathesis_finds_nothing(own_gateway: RunningGateway, tmp_path: Path) -> None:
    gateway = own_gateway
    report = tmp_path / "report.json"
    log = tmp_path / "schemathesis.log"
    output = log.open("wb")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "SCHEMATHESIS_HOOKS": "tests.flows.schemathesis_hooks",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        f"{gateway.url}/openapi.json",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--no-color",
        "--request-timeout",
        "180",
        # The largest valid batches (thousands of texts to embed) take a while here.
        "--max-response-time",
        "120",
        "--report",
        "json,ndjson",
        "--report-json-path",
        str(report),
        "--report-ndjson-path",
        str(tmp_path / "events.ndjson"),
        "-H",
        f"Authorization: Bearer {gateway.token('admin', ttl_s=3600)}",
        cwd=tmp_path,
        env=env,
        stdout=output,
        stderr=asyncio.subprocess.STDOUT,
    )
    await process.wait()
    output.close()
    text = await asyncio.to_thread(log.read_text, errors="replace")
    assert process.returncode == 0, text[-20000:]
    summary = json.loads(await asyncio.to_thread(report.read_text))
    assert summary, text[-5000:]


def test_the_exceptions_hold_in_every_phase() -> None:
    """An operation's exception in the config file holds in the stateful phase too: a
    check named on the command line (``--checks all``) would override it there."""
    config = schemathesis.config.SchemathesisConfig.from_path(str(HERE / "schemathesis.toml"))
    project = config.projects.default
    document = {
        "openapi": "3.1.0",
        "info": {"title": "snapshots", "version": "1"},
        "paths": {
            "/api/v1/collections/{name}/snapshots": {
                "get": {
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": {"description": "the list"}},
                }
            }
        },
    }
    schema = schemathesis.openapi.from_dict(document, config=config)
    (operation,) = [result.ok() for result in schema.get_all_operations()]
    for phase in (None, "coverage", "fuzzing", "stateful"):
        checks = project.checks_config_for(operation=operation, phase=phase)
        assert not checks.use_after_free.enabled, phase
        assert checks.not_a_server_error.enabled, phase
