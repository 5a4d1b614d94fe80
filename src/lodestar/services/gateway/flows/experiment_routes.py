"""``/api/v1/experiments``: create, list, read, change and delete experiments,
and their results.

They need AdministerSystem: a running experiment changes how every caller's
answers are made, which is a system-wide act, not one over a caller's own data.
Tenant-scoped tokens are refused, as an experiment reaches every tenant.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends
from starlette.responses import Response

from lodestar.auth.permissions import Permission
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.deps import flows_of, require
from lodestar.services.gateway.flows import experiment_stats as stats
from lodestar.services.gateway.flows import experiments
from lodestar.services.gateway.flows.experiment_models import (
    Experiment,
    ExperimentIn,
    ExperimentResults,
    VariantResult,
)
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.ratelimit import RouteClass
from lodestar.services.gateway.responses import no_content, respond, respond_json
from lodestar.services.gateway.routes.base import api_router

router = api_router("experiments")

Admin = Annotated[Call, Depends(require(Permission.ADMINISTER_SYSTEM, RouteClass.ADMIN))]
Flows = Annotated[FlowsRuntime, Depends(flows_of)]


def _system_wide(call: Call) -> Call:
    call.whole_collection("manage experiments")
    return call


@router.post("/experiments", response_model=Experiment, status_code=201, summary="Create")
async def create_experiment(body: ExperimentIn, call: Admin, runtime: Flows) -> Response:
    """A new experiment (status draft unless given); ``running`` starts it."""
    experiment = await experiments.save(_system_wide(call), runtime, body)
    return respond(experiment, status_code=201)


@router.get("/experiments", summary="List experiments")
async def list_experiments(call: Admin, runtime: Flows) -> Response:
    found = await experiments.list_all(_system_wide(call), runtime)
    return respond_json({"experiments": [e.model_dump() for e in found]})


@router.get("/experiments/{experiment_id}", response_model=Experiment, summary="Get")
async def get_experiment(experiment_id: str, call: Admin, runtime: Flows) -> Response:
    return respond(await experiments.load(_system_wide(call), runtime, experiment_id))


@router.put("/experiments/{experiment_id}", response_model=Experiment, summary="Replace")
async def put_experiment(
    experiment_id: str, body: ExperimentIn, call: Admin, runtime: Flows
) -> Response:
    """Replaces the definition; answers recorded so far are kept."""
    experiment = await experiments.save(_system_wide(call), runtime, body, experiment_id)
    return respond(experiment)


@router.delete("/experiments/{experiment_id}", status_code=204, summary="Delete")
async def delete_experiment(experiment_id: str, call: Admin, runtime: Flows) -> Response:
    """The experiment and its recorded answers."""
    await experiments.delete(_system_wide(call), runtime, experiment_id)
    return no_content()


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def results_of(experiment: Experiment, answers: list[dict[str, Any]]) -> ExperimentResults:
    """Per variant: answers, scored answers, mean score with its 95% interval,
    mean latency and tokens; the winner only when significant."""
    by_variant: dict[str, list[dict[str, Any]]] = {v.name: [] for v in experiment.variants}
    for answer in answers:
        by_variant.setdefault(str(answer.get("variant")), []).append(answer)
    summaries: dict[str, stats.Summary] = {}
    for name, rows in by_variant.items():
        scores = [float(r["score"]) for r in rows if isinstance(r.get("score"), int | float)]
        summaries[name] = stats.summarize(scores)
    best, p_values = stats.winner(summaries)
    weights = {v.name: v.weight for v in experiment.variants}
    variants = []
    for name, rows in by_variant.items():
        summary = summaries[name]
        interval = (
            (round(summary.low, 4), round(summary.high, 4))
            if summary.low is not None and summary.high is not None
            else None
        )
        p_value = p_values.get(name)
        variants.append(
            VariantResult(
                variant=name,
                weight=weights.get(name, 0.0),
                answers=len(rows),
                scored=summary.n,
                mean_score=round(summary.mean, 4) if summary.mean is not None else None,
                score_ci95=interval,
                mean_latency_ms=_mean([float(r.get("latency_ms", 0)) for r in rows]),
                mean_prompt_tokens=_mean([float(r.get("prompt_tokens", 0)) for r in rows]),
                mean_completion_tokens=_mean([float(r.get("completion_tokens", 0)) for r in rows]),
                cached=sum(1 for r in rows if r.get("cached") is True),
                p_value=round(p_value, 6) if p_value is not None else None,
            )
        )
    return ExperimentResults(
        experiment=experiment.id,
        name=experiment.name,
        status=experiment.status,
        variants=variants,
        winner=best,
        significance_level=stats.ALPHA,
    )


@router.get(
    "/experiments/{experiment_id}/results",
    response_model=ExperimentResults,
    summary="Results by variant",
)
async def experiment_results(experiment_id: str, call: Admin, runtime: Flows) -> Response:
    """Per variant: answers, scored answers, mean feedback score with a 95%
    interval, mean latency and tokens, and the winner when the best variant's
    mean score beats every other one significantly (Welch's t-test at 0.05,
    Bonferroni-corrected); otherwise ``winner`` is null."""
    experiment = await experiments.load(_system_wide(call), runtime, experiment_id)
    answers = await experiments.answers(call, runtime, experiment_id)
    # Unknowns (no winner, no scores yet) are null, as the schema says, not left out.
    return respond_json(results_of(experiment, answers).model_dump(mode="json"))
