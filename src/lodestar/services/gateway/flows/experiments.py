"""Experiments: A/B variants of how answers are made, judged by feedback.

An experiment names variants (system prompt, prompt template, sampling and
retrieval options) with traffic weights, and the generation routes it applies
to. While it runs, each subject always gets the same variant: the variant is
chosen by a hash of the experiment's id and the subject, weighted, so the
choice needs no stored state and every gateway replica makes the same one.
One experiment applies to a request: the earliest created running one for its
route.

Experiments and their answers are points of one collection of the vector
service (``experiments_collection``), like stored interactions, so that every
replica shares them. Each answer made under an experiment is recorded there
(latency, tokens, whether it came from the cache); the interaction stored with
``store_embedding`` carries the experiment, the variant and the answer's id,
and feedback on it scores that answer (``on_feedback``).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from prometheus_client import Counter
from starlette.requests import Request

from lodestar.auth.permissions import Permission
from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.runtime.errors import LodestarError, NotFound
from lodestar.runtime.protojson import dict_to_struct, struct_to_dict
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.flows.experiment_models import (
    QUESTION_PLACEHOLDER,
    Experiment,
    ExperimentIn,
    ExperimentRoute,
    Variant,
)
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.metrics import Children
from lodestar.services.gateway.pipeline import Generation
from lodestar.services.gateway.schemas.inference import ChatMessage, ChatRole, GenerateRequest
from lodestar.vector.v1 import vector_service_pb2 as vpb

EXPERIMENT_KIND = "experiment"
# The payload key of a stored experiment's definition, as JSON text (see _experiment).
_DEFINITION = "definition"
ANSWER_KIND = "answer"
# Header naming the experiment and variant a response was made under.
EXPERIMENT_HEADER = "X-Lodestar-Experiment"
# How long a gateway serves its copy of the running experiments before
# reading them again: a change made through another replica applies after it.
RUNNING_TTL_S = 2.0
_SCHEMA = {
    "kind": vpb.PAYLOAD_FIELD_TYPE_KEYWORD,
    "experiment": vpb.PAYLOAD_FIELD_TYPE_KEYWORD,
    "variant": vpb.PAYLOAD_FIELD_TYPE_KEYWORD,
}
_STATE_KEY = "lodestar_experiment"
_PAGE = 1000

ANSWERS = Counter(
    "lodestar_gateway_experiment_answers_total",
    "Answers made under an experiment, by experiment and variant.",
    ["experiment", "variant"],
)
FEEDBACK = Counter(
    "lodestar_gateway_experiment_feedback_total",
    "Feedback scores given to answers of an experiment, by experiment and variant.",
    ["experiment", "variant"],
)
FEEDBACK_SCORE = Counter(
    "lodestar_gateway_experiment_feedback_score_total",
    "Sum of the feedback scores given to answers of an experiment (with "
    "lodestar_gateway_experiment_feedback_total: the mean score).",
    ["experiment", "variant"],
)
_ANSWERS_BY = Children(ANSWERS)
_FEEDBACK_BY = Children(FEEDBACK)
_FEEDBACK_SCORE_BY = Children(FEEDBACK_SCORE)


@dataclass(frozen=True, slots=True)
class Assignment:
    """The variant of a running experiment that one request gets."""

    experiment: Experiment
    variant: Variant
    route: ExperimentRoute
    # The id of this answer's record (and of the interaction's link to it).
    answer_id: str
    started: float

    @property
    def key(self) -> str:
        return f"{self.experiment.id}/{self.variant.name}"

    def describe(self) -> dict[str, str]:
        return {
            "id": self.experiment.id,
            "name": self.experiment.name,
            "variant": self.variant.name,
        }

    @property
    def header(self) -> str:
        return f"{self.experiment.id}; variant={self.variant.name}"


def pick(experiment_id: str, variants: Iterable[Variant], subject: str) -> Variant:
    """The variant ``subject`` gets: a point in [0, 1) from a hash of the
    experiment and the subject, placed on the variants' cumulative weights."""
    candidates = [variant for variant in variants if variant.weight > 0]
    digest = hashlib.sha256(f"{experiment_id}\x00{subject}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(v.weight for v in candidates)
    for variant in candidates:
        point -= variant.weight
        if point < 0:
            return variant
    return candidates[-1]


def _point_id(experiment_id: str) -> vpb.PointId:
    try:
        return vpb.PointId(uuid=str(uuid.UUID(experiment_id)))
    except ValueError:
        raise _not_found(experiment_id) from None


def _not_found(experiment_id: str) -> NotFound:
    return NotFound(
        f"no experiment {experiment_id}",
        reason="EXPERIMENT_NOT_FOUND",
        metadata={"experiment": experiment_id},
    )


def _missing_collection(error: LodestarError) -> bool:
    return error.code is grpc.StatusCode.NOT_FOUND and error.reason == "COLLECTION_NOT_FOUND"


async def _upsert(call: Call, runtime: FlowsRuntime, point: vpb.Point) -> None:
    """Upsert into the experiments collection, creating it on first use."""
    name = runtime.settings.experiments_collection
    request = vpb.UpsertPointsRequest(collection=name, points=[point])
    try:
        await call.backends.vector.upsert_points(request, call.options.as_gateway())
        return
    except LodestarError as error:
        if not _missing_collection(error):
            raise
    config = vpb.CollectionConfig(dimension=1, distance=vpb.DISTANCE_DOT, payload_schema=_SCHEMA)
    try:
        await call.backends.vector.create_collection(
            vpb.CreateCollectionRequest(name=name, config=config), call.options.as_gateway()
        )
    except LodestarError as error:
        if error.code is not grpc.StatusCode.ALREADY_EXISTS:
            raise
    await call.backends.vector.upsert_points(request, call.options.as_gateway())


def _point(point_id: vpb.PointId, payload: dict[str, Any]) -> vpb.Point:
    point = vpb.Point(id=point_id, vector=[1.0])
    dict_to_struct(payload, point.payload)
    return point


async def _list(call: Call, runtime: FlowsRuntime, must: dict[str, str]) -> list[dict[str, Any]]:
    """The payloads of every point matching ``must`` (keyword fields)."""
    out: list[dict[str, Any]] = []
    token = ""
    while True:
        request = vpb.ListPointsRequest(
            collection=runtime.settings.experiments_collection,
            page_size=_PAGE,
            page_token=token,
            with_payload=True,
        )
        for key, value in must.items():
            request.filter.must.add().field.CopyFrom(
                vpb.FieldCondition(key=key, match=vpb.Match(keyword=value))
            )
        try:
            response = await call.backends.vector.list_points(request, call.options.as_gateway())
        except LodestarError as error:
            if _missing_collection(error):
                return out
            raise
        out.extend(struct_to_dict(point.payload) for point in response.points)
        token = response.next_page_token
        if not token:
            return out


def forget_running(runtime: FlowsRuntime) -> None:
    """Read the running experiments anew on the next request (after a change)."""
    runtime.running_experiments = None


async def save(
    call: Call, runtime: FlowsRuntime, body: ExperimentIn, experiment_id: str | None = None
) -> Experiment:
    now = datetime.now(UTC).isoformat()
    created = now
    if experiment_id is None:
        experiment_id = str(uuid.uuid4())
    else:
        created = (await load(call, runtime, experiment_id)).created_at
    experiment = Experiment(
        id=experiment_id, created_at=created, updated_at=now, **body.model_dump()
    )
    payload = {
        "kind": EXPERIMENT_KIND,
        "experiment": experiment_id,
        **experiment.model_dump(),
        _DEFINITION: experiment.model_dump_json(),
    }
    await _upsert(call, runtime, _point(_point_id(experiment_id), payload))
    forget_running(runtime)
    return experiment


def _experiment(payload: dict[str, Any]) -> Experiment:
    """The stored experiment, read from its definition text: the engine keeps payload
    numbers as doubles it may move by an ulp (FLOAT32_MAX comes back above itself,
    past a variant's bounds) and a seed above 2^53 inexactly, which the text does not.
    (An experiment stored before it was kept is read from its fields.)"""
    definition = payload.get(_DEFINITION)
    if isinstance(definition, str):
        return Experiment.model_validate_json(definition)
    fields = {k: v for k, v in payload.items() if k in Experiment.model_fields}
    return Experiment.model_validate(fields)


async def load(call: Call, runtime: FlowsRuntime, experiment_id: str) -> Experiment:
    request = vpb.GetPointsRequest(
        collection=runtime.settings.experiments_collection,
        ids=[_point_id(experiment_id)],
        with_payload=True,
    )
    try:
        response = await call.backends.vector.get_points(request, call.options.as_gateway())
    except LodestarError as error:
        if _missing_collection(error):
            raise _not_found(experiment_id) from None
        raise
    if not response.points:
        raise _not_found(experiment_id)
    payload = struct_to_dict(response.points[0].payload)
    if payload.get("kind") != EXPERIMENT_KIND:
        raise _not_found(experiment_id)
    return _experiment(payload)


async def list_all(call: Call, runtime: FlowsRuntime) -> list[Experiment]:
    found = [_experiment(p) for p in await _list(call, runtime, {"kind": EXPERIMENT_KIND})]
    return sorted(found, key=lambda experiment: experiment.created_at)


async def delete(call: Call, runtime: FlowsRuntime, experiment_id: str) -> None:
    """The experiment and every answer recorded for it."""
    await load(call, runtime, experiment_id)
    selector = vpb.PointsSelector()
    selector.filter.must.add().field.CopyFrom(
        vpb.FieldCondition(key="experiment", match=vpb.Match(keyword=experiment_id))
    )
    await call.backends.vector.delete_points(
        vpb.DeletePointsRequest(
            collection=runtime.settings.experiments_collection, selector=selector
        ),
        call.options.as_gateway(),
    )
    forget_running(runtime)


async def running(call: Call, runtime: FlowsRuntime) -> tuple[Experiment, ...]:
    cached = runtime.running_experiments
    if cached is not None and time.monotonic() - cached[1] < RUNNING_TTL_S:
        return cached[0]
    found = tuple(e for e in await list_all(call, runtime) if e.status == "running")
    runtime.running_experiments = (found, time.monotonic())
    return found


def assignment_of(request: Request) -> Assignment | None:
    found: Assignment | None = getattr(request.state, _STATE_KEY, None)
    return found


async def assign(call: Call, runtime: FlowsRuntime, route: ExperimentRoute) -> Assignment | None:
    """This request's variant of the experiment running on ``route``, if any
    (kept on the request for the stages and the response)."""
    for experiment in await running(call, runtime):
        if route in experiment.routes:
            subject = f"{call.tenant}\x00{call.principal.subject}"
            assignment = Assignment(
                experiment,
                pick(experiment.id, experiment.variants, subject),
                route,
                str(uuid.uuid4()),
                time.perf_counter(),
            )
            setattr(call.request.state, _STATE_KEY, assignment)
            return assignment
    return None


_SAMPLING = ("max_tokens", "temperature", "top_p", "top_k", "repeat_penalty", "seed")


def _templated(variant: Variant, question: str) -> str:
    if variant.prompt_template is None:
        return question
    return variant.prompt_template.replace(QUESTION_PLACEHOLDER, question)


async def apply_to_generate(
    body: GenerateRequest, call: Call, runtime: FlowsRuntime | None
) -> GenerateRequest:
    """``body`` as the variant of the experiment running on /api/v1/generate
    makes it (unchanged when none runs)."""
    if runtime is None:
        return body
    assignment = await assign(call, runtime, "generate")
    if assignment is None:
        return body
    variant = assignment.variant
    updates: dict[str, Any] = {
        name: getattr(variant, name) for name in _SAMPLING if getattr(variant, name) is not None
    }
    if variant.use_feedback is not None:
        updates["use_feedback"] = variant.use_feedback
    if variant.memory is not None and "memory" in type(body).model_fields:
        updates["memory"] = variant.memory
    if body.context is not None:
        context: dict[str, Any] = {}
        if variant.limit is not None:
            context["limit"] = variant.limit
        if variant.score_threshold is not None:
            context["score_threshold"] = variant.score_threshold
        if context:
            updates["context"] = body.context.model_copy(update=context)
    system = variant.system_prompt
    if body.prompt is not None:
        question = _templated(variant, body.prompt)
        if system is None:
            updates["prompt"] = question
        else:
            updates["prompt"] = None
            updates["messages"] = [
                ChatMessage(role=ChatRole.SYSTEM, content=system),
                ChatMessage(role=ChatRole.USER, content=question),
            ]
    elif body.messages is not None:
        messages = list(body.messages)
        if variant.prompt_template is not None:
            for index in range(len(messages) - 1, -1, -1):
                if messages[index].role is ChatRole.USER:
                    content = _templated(variant, messages[index].content)
                    messages[index] = ChatMessage(role=ChatRole.USER, content=content)
                    break
        if system is not None:
            messages = [m for m in messages if m.role is not ChatRole.SYSTEM]
            messages.insert(0, ChatMessage(role=ChatRole.SYSTEM, content=system))
        updates["messages"] = messages
    return body.model_copy(update=updates)


async def apply_to_proto(
    request: ipb.GenerateTextRequest,
    call: Call,
    runtime: FlowsRuntime,
    route: ExperimentRoute,
) -> Assignment | None:
    """Rewrite an OpenAI-compatible route's inference request as the variant
    of the experiment running on ``route`` makes it."""
    assignment = await assign(call, runtime, route)
    if assignment is None:
        return None
    variant = assignment.variant
    sampling = request.sampling
    for name in _SAMPLING:
        value = getattr(variant, name)
        if value is not None:
            setattr(sampling, name, value)
    if request.prompt:
        prompt = _templated(variant, request.prompt)
        if variant.system_prompt is not None:
            prompt = f"{variant.system_prompt}\n\n{prompt}"
        request.prompt = prompt
        return assignment
    messages = [ipb.ChatMessage(role=m.role, content=m.content) for m in request.messages]
    if variant.prompt_template is not None:
        for message in reversed(messages):
            if message.role == ipb.ROLE_USER:
                message.content = _templated(variant, message.content)
                break
    if variant.system_prompt is not None:
        messages = [m for m in messages if m.role != ipb.ROLE_SYSTEM]
        messages.insert(0, ipb.ChatMessage(role=ipb.ROLE_SYSTEM, content=variant.system_prompt))
    del request.messages[:]
    request.messages.extend(messages)
    return assignment


async def record_answer(
    call: Call,
    runtime: FlowsRuntime,
    assignment: Assignment,
    usage: ipb.Usage | None,
    *,
    cached: bool,
) -> None:
    """Keep one answer of the experiment: its latency, tokens and origin."""
    experiment, variant = assignment.experiment.id, assignment.variant.name
    payload: dict[str, Any] = {
        "kind": ANSWER_KIND,
        "experiment": experiment,
        "variant": variant,
        "route": assignment.route,
        "latency_ms": round((time.perf_counter() - assignment.started) * 1000, 3),
        "prompt_tokens": usage.prompt_tokens if usage is not None else 0,
        "completion_tokens": usage.completion_tokens if usage is not None else 0,
        "cached": cached,
        "created_at": datetime.now(UTC).isoformat(),
    }
    await _upsert(call, runtime, _point(vpb.PointId(uuid=assignment.answer_id), payload))
    _ANSWERS_BY(experiment, variant).inc()


def interaction_fields(assignment: Assignment) -> dict[str, str]:
    """What the stored interaction keeps to link feedback to the answer."""
    return {
        "experiment": assignment.experiment.id,
        "variant": assignment.variant.name,
        "experiment_answer": assignment.answer_id,
    }


async def on_feedback(
    call: Call, runtime: FlowsRuntime, interaction: dict[str, Any], score: float
) -> None:
    """Count a score given to an interaction for the answer and variant it
    came from (a later score replaces the earlier one)."""
    answer = interaction.get("experiment_answer")
    experiment, variant = interaction.get("experiment"), interaction.get("variant")
    if not (isinstance(answer, str) and isinstance(experiment, str) and isinstance(variant, str)):
        return
    update = vpb.PointUpdate(id=vpb.PointId(uuid=answer))
    dict_to_struct({"score": score}, update.payload)
    try:
        await call.backends.vector.update_points(
            vpb.UpdatePointsRequest(
                collection=runtime.settings.experiments_collection, updates=[update]
            ),
            call.options.as_gateway(),
        )
    except LodestarError as error:
        if not _missing_collection(error):
            raise
        return
    _FEEDBACK_BY(experiment, variant).inc()
    _FEEDBACK_SCORE_BY(experiment, variant).inc(score)


async def answers(call: Call, runtime: FlowsRuntime, experiment_id: str) -> list[dict[str, Any]]:
    return await _list(call, runtime, {"kind": ANSWER_KIND, "experiment": experiment_id})


class ExperimentStage:
    """Always runs, first: marks the answer with its experiment and variant
    (response, stored interaction) and records it once made."""

    option = "experiment"

    def __init__(self, runtime: FlowsRuntime) -> None:
        self._runtime = runtime

    def permissions(self, body: GenerateRequest) -> Iterable[Permission]:
        return ()

    async def before(self, generation: Generation) -> None:
        assignment = assignment_of(generation.call.request)
        if assignment is None:
            return
        generation.extra["experiment"] = assignment.describe()
        generation.record.update(interaction_fields(assignment))

    async def after(self, generation: Generation) -> None:
        assignment = assignment_of(generation.call.request)
        if assignment is None:
            return
        cached = generation.answered is not None
        await record_answer(
            generation.call, self._runtime, assignment, generation.usage, cached=cached
        )
