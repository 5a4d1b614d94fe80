"""The event loop a service's ``__main__`` runs on, chosen by ``LODESTAR_EVENT_LOOP``."""

from __future__ import annotations

import asyncio
import sys

import pytest

from lodestar.runtime import eventloop
from lodestar.runtime.settings import ServiceSettings
from lodestar.services.embedding.settings import EmbeddingSettings
from lodestar.services.gateway.settings import GatewaySettings
from lodestar.services.inference.settings import InferenceSettings
from lodestar.services.vector.settings import VectorSettings


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.parametrize(
    ("choice", "module"),
    [("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio.unix_events")],
)
def test_the_choice_names_the_loop_that_runs(choice: eventloop.EventLoop, module: str) -> None:
    assert eventloop.run(_loop_module(), choice) == module


@pytest.mark.parametrize(
    ("settings", "default"),
    [
        (InferenceSettings, "auto"),  # uvloop: these services' extras install it
        (GatewaySettings, "auto"),
        (VectorSettings, "auto"),
        (EmbeddingSettings, "asyncio"),
    ],
)
def test_one_variable_chooses_for_every_service(
    settings: type[ServiceSettings], default: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings().event_loop == default
    monkeypatch.setenv("LODESTAR_EVENT_LOOP", "asyncio")
    assert settings().event_loop == "asyncio"
    monkeypatch.setenv("LODESTAR_EVENT_LOOP", "tokio")
    with pytest.raises(ValueError, match="LODESTAR_EVENT_LOOP"):
        settings()


def test_uvloop_asked_for_but_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventloop.importlib.util, "find_spec", lambda name: None)
    assert eventloop.loop_factory("auto") is None  # auto falls back to the standard loop
    monkeypatch.setitem(sys.modules, "uvloop", None)  # its import fails
    with pytest.raises(RuntimeError, match="uvloop event loop was asked for but is not installed"):
        eventloop.loop_factory("uvloop")
