"""Search answers built as plain data serialise exactly as their response model does."""

from __future__ import annotations

import pytest

from lodestar.runtime.protojson import struct_to_dict
from lodestar.services.gateway.convert.vector import hits_from_proto, point_id_from_proto
from lodestar.services.gateway.responses import respond, respond_json
from lodestar.services.gateway.schemas import vector as rest
from lodestar.vector.v1 import vector_service_pb2 as pb

PAYLOADS = [
    {"title": "document 1", "group": 1},
    {},
    {"nested": {"list": [1, 2.5, "x", None, True, {"deep": -0.0}]}, "tiny": 1e-7, "big": 1e20},
    {"score": 0.1, "flag": False, "empty": [], "unicode": "naïve ☃ \u2028"},
]


def _response() -> pb.SearchPointsResponse:
    response = pb.SearchPointsResponse(time_ms=0.123456789)
    for index, payload in enumerate(PAYLOADS):
        point = response.points.add()
        if index % 2:
            point.id.uuid = f"00000000-0000-4000-8000-00000000000{index}"
        else:
            point.id.num = 2**64 - 1 - index
        point.score = 0.51 + index / 7
        point.payload.update(payload)
        point.vector.extend([0.25, -1.5e-7, 3.0e20][: index + 1])
    return response


def _through_model(
    response: pb.SearchPointsResponse, *, with_payload: bool, with_vector: bool
) -> bytes:
    model = rest.SearchResponse(
        points=[
            rest.ScoredPoint(
                id=point_id_from_proto(p.id),
                score=p.score,
                payload=struct_to_dict(p.payload) if with_payload else None,
                vector=list(p.vector) if with_vector else None,
            )
            for p in response.points
        ],
        time_ms=response.time_ms,
    )
    return bytes(respond(model).body)


@pytest.mark.parametrize("with_payload", [True, False])
@pytest.mark.parametrize("with_vector", [True, False])
def test_hits_serialise_as_the_search_response_model(with_payload: bool, with_vector: bool) -> None:
    response = _response()
    data = hits_from_proto(response, with_payload=with_payload, with_vector=with_vector)
    body = bytes(respond_json(data).body)
    assert body == _through_model(response, with_payload=with_payload, with_vector=with_vector)
    # And the data is what the schema describes.
    assert rest.SearchResponse.model_validate(data).model_dump(exclude_none=True) == data
    assert ("payload" in data["points"][0]) is with_payload
    assert ("vector" in data["points"][0]) is with_vector
