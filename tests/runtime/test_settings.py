"""The settings every service shares, declared once in ``runtime.settings``."""

from __future__ import annotations

import pytest

from lodestar.runtime.settings import ServiceSettings
from lodestar.services.embedding.settings import EmbeddingSettings
from lodestar.services.gateway.settings import GatewaySettings
from lodestar.services.inference.settings import InferenceSettings
from lodestar.services.vector.settings import VectorSettings

SERVICES = [EmbeddingSettings, VectorSettings, InferenceSettings, GatewaySettings]


@pytest.mark.parametrize("settings", SERVICES)
def test_one_variable_each_sets_logging_and_the_collector_of_every_service(
    settings: type[ServiceSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert issubclass(settings, ServiceSettings)
    defaults = settings()
    assert (defaults.log_level, defaults.log_json, defaults.gc_threshold) == ("INFO", False, 50_000)
    monkeypatch.setenv("LODESTAR_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("LODESTAR_LOG_JSON", "true")
    monkeypatch.setenv("LODESTAR_GC_THRESHOLD", "0")
    chosen = settings()
    assert (chosen.log_level, chosen.log_json, chosen.gc_threshold) == ("DEBUG", True, 0)


@pytest.mark.parametrize(
    ("settings", "prefix"),
    [
        (EmbeddingSettings, "LODESTAR_EMBEDDING_"),
        (VectorSettings, "LODESTAR_VECTOR_"),
        (InferenceSettings, "LODESTAR_INFERENCE_"),
        (GatewaySettings, "LODESTAR_GATEWAY_"),
    ],
)
def test_each_service_reads_its_address_and_drain_under_its_own_prefix(
    settings: type[ServiceSettings], prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"{prefix}HOST", "0.0.0.0")
    monkeypatch.setenv(f"{prefix}PORT", "4321")
    monkeypatch.setenv(f"{prefix}SHUTDOWN_GRACE_S", "3")
    chosen = settings()
    assert (chosen.host, chosen.port, chosen.shutdown_grace_s) == ("0.0.0.0", 4321, 3)
    others = [s for s in SERVICES if s is not settings]
    assert all(other().shutdown_grace_s == 10 for other in others)


@pytest.mark.parametrize("settings", SERVICES)
def test_every_setting_says_what_it_does(settings: type[ServiceSettings]) -> None:
    assert all(field.description for field in settings.model_fields.values())
