"""A collection's document chunks, read and written through the vector
service's messages.

``VectorCalls`` is the little the store needs from a transport (the gateway's
resilient backends, or the ingest command's own gRPC channels), so that both
run the same reads and writes. Every request carries the caller's tenant: the
vector service confines reads, writes and deletes to it, as for any point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lodestar.documents import model
from lodestar.documents.model import DocumentInfo, StoredChunk
from lodestar.runtime.protojson import dict_to_struct, struct_to_dict
from lodestar.vector.v1 import vector_service_pb2 as vpb

LIST_PAGE_SIZE = 1000


class VectorCalls(Protocol):
    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    async def upsert(self, request: vpb.UpsertPointsRequest) -> None: ...

    async def list(self, request: vpb.ListPointsRequest) -> vpb.ListPointsResponse: ...

    async def delete(self, request: vpb.DeletePointsRequest) -> int: ...


@dataclass(frozen=True)
class ChunkToWrite:
    id: str
    text: str
    payload: dict[str, Any]


def _keyword(key: str, value: str) -> vpb.Condition:
    return vpb.Condition(field=vpb.FieldCondition(key=key, match=vpb.Match(keyword=value)))


def _integer(key: str, value: int) -> vpb.Condition:
    return vpb.Condition(field=vpb.FieldCondition(key=key, match=vpb.Match(integer=value)))


def _has(key: str) -> vpb.Condition:
    return vpb.Condition(
        filter=vpb.Filter(must_not=[vpb.Condition(is_empty=vpb.IsEmptyCondition(key=key))])
    )


class DocumentStore:
    """The documents of one collection, seen with one tenant."""

    def __init__(
        self, calls: VectorCalls, collection: str, *, tenant: str = "", text_key: str = "text"
    ) -> None:
        self.calls = calls
        self.collection = collection
        self.tenant = tenant
        # The payload key of a chunk's text (the gateway's store_text_key).
        self.text_key = text_key or "text"

    async def write(self, chunks: Sequence[ChunkToWrite]) -> None:
        """Embed and upsert ``chunks`` in one call each."""
        vectors = await self.calls.embed([c.text for c in chunks])
        await self.calls.upsert(
            vpb.UpsertPointsRequest(
                collection=self.collection,
                points=[
                    vpb.Point(
                        id=vpb.PointId(uuid=c.id), vector=v, payload=dict_to_struct(c.payload)
                    )
                    for c, v in zip(chunks, vectors, strict=True)
                ],
                tenant=self.tenant,
            )
        )

    async def _all(self, filter: vpb.Filter, *, with_payload: bool = True) -> list[vpb.Point]:
        points: list[vpb.Point] = []
        token = ""
        while True:
            page = await self.calls.list(
                vpb.ListPointsRequest(
                    collection=self.collection,
                    filter=filter,
                    page_size=LIST_PAGE_SIZE,
                    page_token=token,
                    with_payload=with_payload,
                    tenant=self.tenant,
                )
            )
            points.extend(page.points)
            token = page.next_page_token
            if not token:
                return points

    async def current(self, document_id: str) -> DocumentInfo | None:
        """The committed version of a document (the newest, should there be two)."""
        heads = await self._all(
            vpb.Filter(must=[_keyword(model.DOCUMENT_ID, document_id), _integer(model.POSITION, 0)])
        )
        infos = [DocumentInfo.from_payload(struct_to_dict(p.payload)) for p in heads]
        return max(infos, key=lambda info: info.version) if infos else None

    async def chunks(self, document_id: str, version: str) -> list[StoredChunk]:
        points = await self._all(
            vpb.Filter(
                must=[
                    _keyword(model.DOCUMENT_ID, document_id),
                    _keyword(model.DOCUMENT_VERSION, version),
                ]
            )
        )
        out = []
        for point in points:
            payload = struct_to_dict(point.payload)
            page = payload.get(model.PAGE)
            out.append(
                StoredChunk(
                    id=point.id.uuid or str(point.id.num),
                    position=int(payload.get(model.POSITION, 0)),
                    text=str(payload.get(self.text_key, "")),
                    page=int(page) if isinstance(page, int | float) else None,
                    payload=payload,
                )
            )
        out.sort(key=lambda chunk: chunk.position)
        return out

    async def other_versions(self, document_id: str, version: str) -> dict[str, bool]:
        """Every version of a document but ``version`` that has chunks stored,
        each with whether it is committed (its chunk 0 is stored)."""
        points = await self._all(
            vpb.Filter(
                must=[_keyword(model.DOCUMENT_ID, document_id)],
                must_not=[_keyword(model.DOCUMENT_VERSION, version)],
            )
        )
        out: dict[str, bool] = {}
        for point in points:
            payload = struct_to_dict(point.payload)
            other = str(payload.get(model.DOCUMENT_VERSION, ""))
            head = int(payload.get(model.POSITION, -1)) == 0
            out[other] = out.get(other, False) or head
        return out

    async def list(self, page_size: int, page_token: str) -> tuple[list[DocumentInfo], str]:
        """One page of committed documents, and the next page's token."""
        page = await self.calls.list(
            vpb.ListPointsRequest(
                collection=self.collection,
                filter=vpb.Filter(must=[_has(model.DOCUMENT_ID), _integer(model.POSITION, 0)]),
                page_size=page_size,
                page_token=page_token,
                with_payload=True,
                tenant=self.tenant,
            )
        )
        newest: dict[str, DocumentInfo] = {}
        for point in page.points:
            info = DocumentInfo.from_payload(struct_to_dict(point.payload))
            if info.id not in newest or newest[info.id].version < info.version:
                newest[info.id] = info
        return list(newest.values()), page.next_page_token

    async def delete(self, document_id: str, *, versions: Sequence[str] = ()) -> int:
        """Delete a document's chunks: all, or those of the given versions."""
        filter = vpb.Filter(must=[_keyword(model.DOCUMENT_ID, document_id)])
        if versions:
            filter.must.append(
                vpb.Condition(
                    field=vpb.FieldCondition(
                        key=model.DOCUMENT_VERSION,
                        match=vpb.Match(any_keywords=vpb.Keywords(values=list(versions))),
                    )
                )
            )
        return await self.calls.delete(
            vpb.DeletePointsRequest(
                collection=self.collection,
                selector=vpb.PointsSelector(filter=filter),
                tenant=self.tenant,
            )
        )
