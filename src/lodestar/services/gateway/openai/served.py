"""The semantic cache and the running experiment around an OpenAI-compatible
generation: the chat and completion routes build their inference request,
then ``serve`` rewrites it for the experiment's variant and looks it up in the
cache; ``Served.finish`` records the answer made (and stores a fresh one).
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.json_format import MessageToDict
from starlette.responses import Response

from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.flows import experiments, prompting
from lodestar.services.gateway.flows.augment import QUESTION_MAX_CHARS
from lodestar.services.gateway.flows.experiment_models import ExperimentRoute
from lodestar.services.gateway.flows.experiments import Assignment
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.flows.semantic_cache import (
    Lookup,
    bypass,
    cacheable_turns,
    lookup,
    request_key,
    response_headers,
    store,
)


@dataclass
class Served:
    """The cache and the experiment around one OpenAI-compatible generation:
    ``answer`` is the cached answer (or None: generate), ``finish`` records
    the answer made."""

    call: Call
    runtime: FlowsRuntime
    assignment: Assignment | None
    state: Lookup | None
    answer: ipb.GenerateTextResponse | None = None

    @property
    def headers(self) -> dict[str, str]:
        return response_headers(self.call.request)

    def with_headers(self, response: Response) -> Response:
        """``response`` with the cache's and the experiment's headers."""
        response.headers.update(self.headers)
        return response

    async def finish(
        self, text: str, finish_reason: int, usage: ipb.Usage | None, model: str
    ) -> None:
        if self.assignment is not None:
            await experiments.record_answer(
                self.call, self.runtime, self.assignment, usage, cached=self.answer is not None
            )
        if self.state is not None and self.answer is None:
            await store(
                self.call,
                self.runtime,
                self.state,
                text=text,
                finish_reason=finish_reason,
                model=model,
                sources=None,
                cited=(),
            )


async def serve(
    call: Call,
    runtime: FlowsRuntime,
    route: ExperimentRoute,
    request: ipb.GenerateTextRequest,
    *,
    cache: bool,
    model: str,
) -> Served:
    """Apply the running experiment to ``request`` and look it up in the cache."""
    assignment = await experiments.apply_to_proto(request, call, runtime, route)
    served = Served(call, runtime, assignment, None)
    settings = runtime.settings
    if not settings.semantic_cache:
        return served
    earlier = cacheable_turns(prompting.turns_of(request), settings.cache_multi_turn)
    question = prompting.question_of(request).strip()
    if not cache or earlier is None or not question:
        bypass(call)
        return served
    vector = (await call.backends.embedding.embed([question[:QUESTION_MAX_CHARS]], call.options))[0]
    sampling = MessageToDict(request.sampling)
    if request.sampling.HasField("temperature") and request.sampling.temperature == 0:
        sampling.pop("seed", None)
    options = {"sampling": sampling, "constraint": MessageToDict(request.constraint)}
    key = request_key(
        call,
        route=route,
        model=model,
        options=options,
        turns=earlier,
        assignment=assignment,
        personal=False,
    )
    served.state = await lookup(call, runtime, key, question, vector)
    served.answer = served.state.answer
    return served
