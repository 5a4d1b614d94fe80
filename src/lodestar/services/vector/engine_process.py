"""The embedded engine in a process of its own.

qdrant-edge holds the Python GIL while it searches, so inside the service process
the engine's work and the gRPC server's work (protobuf, validation, metrics,
analytics) take turns on one core's worth of time, however many threads run them.
``EngineProcess`` is the embedded backend run in a child process
(``python -m lodestar.services.vector.engine_process``): the service process keeps
the gRPC server and everything above the backend interface, the child runs
``EmbeddedBackend`` unchanged, and the two work on different cores.

The two talk over a private socket pair in frames of a 4-byte little-endian length
and a pickle: requests ``(id, method, args, kwargs)``, replies ``(id, ok, value)``
(the result, or the exception the backend raised, re-raised in the service), and
events ``(0, name, args)`` from the child. Both ends are this package in the same
installation and nothing else can reach the socket pair, so pickling is safe. Each
end writes the frames of one turn of its event loop together (``_Outbox``): under
concurrent load, the searches that reach the service together cross in one write and
their replies come back in one. Against a write per frame, that took 13–17% off the
service process's CPU per search in paired runs (8 clients, 100,000 points), most of
it from reading the replies in fewer wake-ups. The child makes one exception, for a
group of long calls such as searches of a large collection (``_Child``).

Life cycle: the child dies with the service (the kernel kills it when its parent
dies, even by kill -9); acknowledged writes are in the engine's write-ahead log
before the reply leaves the child, so they survive either process dying. If the
child dies on its own, the calls in flight fail with UNAVAILABLE and the service
starts a new child on the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, cast, get_args

from prometheus_client import ProcessCollector

from lodestar.runtime.errors import Unavailable
from lodestar.runtime.heap import paused_collector
from lodestar.services.vector.backend import VectorBackend
from lodestar.services.vector.metrics import ENGINE_RESTARTS, OPTIMIZER_RUNS
from lodestar.services.vector.models import (
    CollectionConfig,
    CollectionInfo,
    CollectionUpdate,
    Filter,
    Operation,
    PointId,
    PointRecord,
    RecommendQuery,
    ScoredHit,
    SearchQuery,
    SnapshotInfo,
)
from lodestar.services.vector.settings import VectorSettings

_log = logging.getLogger(__name__)

_HEADER = 4
_PICKLE = pickle.HIGHEST_PROTOCOL
_EVENT = 0
_SOCKET_BUFFER = 4 * 1024 * 1024
# A call that keeps the child this long or longer makes the replies held for the end of
# the turn leave before the next call starts, if they are at least half of the turn's
# calls (``_Child``).
_LONG_CALL_S = 0.0002
# Seconds a closing child gets to close its shards before it is killed.
_CLOSE_TIMEOUT_S = 60.0

# What the service may ask of the child: the backend interface, nothing else.
_METHODS = frozenset(
    name
    for name, value in vars(VectorBackend).items()
    if not name.startswith("_") and callable(value)
)


class _Reported:
    """The child whose CPU, memory and descriptors are exported (the latest started), as
    ``lodestar_vector_engine_process_*`` beside the service process's own ``process_*``."""

    pid: int | None = None

    @classmethod
    def proc_entry(cls) -> int | str:
        return "-" if cls.pid is None else cls.pid  # "-": no /proc entry, nothing exported


ProcessCollector(namespace="lodestar_vector_engine", pid=_Reported.proc_entry)


def _frame(message: object) -> bytes:
    # The collector is paused while pickling and unpickling: a page of records makes and
    # visits many container objects.
    with paused_collector():
        payload = pickle.dumps(message, _PICKLE)
    return len(payload).to_bytes(_HEADER, "little") + payload


def _unframe(body: memoryview) -> Any:
    with paused_collector():
        return pickle.loads(body)


class _Outbox:
    """Frames for one transport, written together at the end of the event loop's turn:
    the requests (or replies) of the calls that start (or finish) in one turn leave in
    one write, and the other process reads them in one wake-up. ``flush`` writes what
    is held sooner."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._frames: list[bytes] = []

    @property
    def held(self) -> int:
        """Frames waiting to be written."""
        return len(self._frames)

    def put(self, frame: bytes) -> None:
        if not self._frames:
            asyncio.get_running_loop().call_soon(self.flush)
        self._frames.append(frame)

    def flush(self) -> None:
        if not self._frames:  # written already, by an earlier flush in this turn
            return
        frames, self._frames = self._frames, []
        if not self.transport.is_closing():  # else the calls waiting have failed already
            self.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))


class _Frames(asyncio.Protocol):
    """Whole messages out of a byte stream, handed to ``on_message`` in order."""

    def __init__(
        self, on_message: Callable[[Any], None], on_lost: Callable[[Exception | None], None]
    ) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer:
            buffer += data
            used = self._deliver(buffer)
            del buffer[:used]
        else:
            used = self._deliver(data)
            if used < len(data):
                buffer += memoryview(data)[used:]

    def _deliver(self, data: bytes | bytearray) -> int:
        """Hand on every whole frame at the start of ``data``; returns the bytes used."""
        offset, end = 0, len(data)
        with memoryview(data) as view:
            while end - offset >= _HEADER:
                size = int.from_bytes(view[offset : offset + _HEADER], "little")
                stop = offset + _HEADER + size
                if stop > end:
                    break
                with view[offset + _HEADER : stop] as body:
                    message = _unframe(body)
                offset = stop
                self._on_message(message)
        return offset

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)


class EngineProcess:
    """``EmbeddedBackend`` in a child process, behind the same interface."""

    kind = "embedded"

    def __init__(self, settings: VectorSettings) -> None:
        self._settings = settings
        self._process: asyncio.subprocess.Process | None = None
        # The connection to the running child; None before it starts and once it is lost.
        self._outbox: _Outbox | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._starting: asyncio.Task[None] | None = None
        self._closing = False
        # Collection configurations validate every request: kept here, dropped on any
        # change (every change passes through this object).
        self._configs: dict[str, CollectionConfig] = {}
        self._config_epoch = 0

    @property
    def pid(self) -> int | None:
        """The child's process id (None before the first start)."""
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        """The child's exit status once it has exited."""
        return None if self._process is None else self._process.returncode

    # --- the child ---------------------------------------------------------------------

    async def _start(self) -> None:
        ours, theirs = socket.socketpair()
        for end in (ours, theirs):
            # Room for a whole batch of points in one write (the kernel caps it at its
            # limit); the default of about 200 KB splits a batch into several.
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                __name__,
                str(theirs.fileno()),
                str(os.getpid()),
                self._settings.event_loop,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        _Reported.pid = self._process.pid
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_unix_connection(
            lambda: _Frames(self._received, self._lost), sock=ours
        )
        self._outbox = _Outbox(transport)  # type: ignore[arg-type]
        self._forget_configs()
        try:
            await self._send("open", (self._settings,), {})
        except BaseException:
            # A child that could not open the data serves nothing: stop it.
            self._outbox = None
            transport.close()
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
            raise

    def _received(self, message: tuple[int, Any, Any]) -> None:
        key, ok, value = message
        if key == _EVENT:
            if ok == "optimized":
                OPTIMIZER_RUNS.labels(*value).inc()
            return
        future = self._waiting.pop(key, None)
        if future is None or future.done():  # the caller went away
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def _lost(self, exc: Exception | None) -> None:
        self._outbox = None
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(
                    Unavailable("the vector engine process stopped; retry the call")
                )
        if not self._closing:
            _log.error("the vector engine process stopped (%s); it restarts on the next call", exc)

    async def _restart(self) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            code = await self._process.wait()
            _log.warning("vector engine process exited with %s; starting a new one", code)
        await self._start()
        ENGINE_RESTARTS.inc()

    async def _running(self) -> None:
        while self._outbox is None:
            if self._closing:
                raise Unavailable("the vector service is stopping")
            if self._starting is None or self._starting.done():
                self._starting = asyncio.get_running_loop().create_task(self._restart())
            try:
                await asyncio.shield(self._starting)
            except Exception as error:
                raise Unavailable(f"the vector engine process cannot start: {error}") from error

    async def _send(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        outbox = self._outbox
        if outbox is None:
            raise Unavailable("the vector engine process stopped; retry the call")
        key = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        outbox.put(_frame((key, method, args, kwargs)))
        try:
            return await future
        finally:
            self._waiting.pop(key, None)

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._outbox is None:
            await self._running()
        return await self._send(method, args, kwargs)

    def _forget_configs(self) -> None:
        self._configs.clear()
        self._config_epoch += 1

    async def _changing(self, method: str, *args: Any) -> Any:
        """A call that changes collection configurations: the cache is dropped before it
        (no read started earlier may store what it fetched) and after it (nor one that
        read the old configuration meanwhile)."""
        self._forget_configs()
        try:
            return await self._call(method, *args)
        finally:
            self._forget_configs()

    # --- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        await self._start()

    async def close(self) -> None:
        self._closing = True
        if self._starting is not None and not self._starting.done():
            # A replacement child is starting: let it finish, then close it like any other.
            with contextlib.suppress(Exception):
                await self._starting
        process, outbox = self._process, self._outbox
        try:
            if outbox is not None:
                with contextlib.suppress(Unavailable):  # it stopped already
                    await self._send("close", (), {})
        finally:
            if outbox is not None:
                outbox.transport.close()
            if process is not None:
                try:
                    await asyncio.wait_for(process.wait(), _CLOSE_TIMEOUT_S)
                except TimeoutError:
                    _log.error("vector engine process did not exit; killing it")
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()

    # --- collections ---------------------------------------------------------------------

    async def create_collection(self, name: str, config: CollectionConfig) -> CollectionInfo:
        self._forget_configs()
        info: CollectionInfo = await self._call("create_collection", name, config)
        return info

    async def get_collection(self, name: str) -> CollectionInfo:
        info: CollectionInfo = await self._call("get_collection", name)
        return info

    async def collection_config(self, name: str) -> CollectionConfig:
        config = self._configs.get(name)
        if config is None:
            epoch = self._config_epoch
            config = await self._call("collection_config", name)
            if epoch == self._config_epoch:
                self._configs[name] = config
        return config

    async def list_collections(self) -> list[str]:
        names: list[str] = await self._call("list_collections")
        return names

    async def update_collection(self, name: str, update: CollectionUpdate) -> CollectionInfo:
        info: CollectionInfo = await self._changing("update_collection", name, update)
        return info

    async def delete_collection(self, name: str) -> None:
        await self._changing("delete_collection", name)

    # --- points --------------------------------------------------------------------------

    async def apply(self, collection: str, operations: Sequence[Operation]) -> list[int]:
        counts: list[int] = await self._call("apply", collection, list(operations))
        return counts

    async def retrieve(
        self,
        collection: str,
        ids: Sequence[PointId],
        *,
        with_payload: bool,
        with_vector: bool,
        filter: Filter | None = None,
    ) -> list[PointRecord]:
        records: list[PointRecord] = await self._call(
            "retrieve",
            collection,
            list(ids),
            with_payload=with_payload,
            with_vector=with_vector,
            filter=filter,
        )
        return records

    async def scroll(
        self,
        collection: str,
        *,
        filter: Filter | None,
        limit: int,
        offset: PointId | None,
        with_payload: bool,
        with_vector: bool,
    ) -> tuple[list[PointRecord], PointId | None]:
        page: tuple[list[PointRecord], PointId | None] = await self._call(
            "scroll",
            collection,
            filter=filter,
            limit=limit,
            offset=offset,
            with_payload=with_payload,
            with_vector=with_vector,
        )
        return page

    async def count(self, collection: str, filter: Filter | None) -> int:
        total: int = await self._call("count", collection, filter)
        return total

    async def search(self, collection: str, query: SearchQuery) -> list[ScoredHit]:
        hits: list[ScoredHit] = await self._call("search", collection, query)
        return hits

    async def search_batch(
        self, collection: str, queries: Sequence[SearchQuery]
    ) -> list[list[ScoredHit]]:
        hits: list[list[ScoredHit]] = await self._call("search_batch", collection, list(queries))
        return hits

    async def recommend(self, collection: str, query: RecommendQuery) -> list[ScoredHit]:
        hits: list[ScoredHit] = await self._call("recommend", collection, query)
        return hits

    async def sample(self, collection: str, filter: Filter | None, limit: int) -> list[PointRecord]:
        records: list[PointRecord] = await self._call("sample", collection, filter, limit)
        return records

    # --- snapshots -----------------------------------------------------------------------

    async def create_snapshot(self, collection: str) -> SnapshotInfo:
        info: SnapshotInfo = await self._call("create_snapshot", collection)
        return info

    async def list_snapshots(self, collection: str) -> list[SnapshotInfo]:
        infos: list[SnapshotInfo] = await self._call("list_snapshots", collection)
        return infos

    async def restore_snapshot(self, collection: str, snapshot: str, target: str) -> CollectionInfo:
        info: CollectionInfo = await self._changing(
            "restore_snapshot", collection, snapshot, target
        )
        return info

    async def delete_snapshot(self, collection: str, snapshot: str) -> None:
        await self._call("delete_snapshot", collection, snapshot)

    # --- observability -------------------------------------------------------------------

    async def sizes(self) -> dict[str, tuple[int, int]]:
        sizes: dict[str, tuple[int, int]] = await self._call("sizes")
        return sizes


# --- the child's side ------------------------------------------------------------------


class _Child:
    """Runs the backend's calls as they arrive, each as its own task, and replies.

    The calls that arrive together run one after another in one turn of the event
    loop: most searches run right on the loop (``EmbeddedBackend``). Held for the end
    of that turn, the replies to a group of searches would all leave after the last
    search, and the service, its callers and their next requests would then work on
    them together while the engine waited. So before it starts a call, the child
    writes the replies it holds if the call before took ``_LONG_CALL_S`` or more and
    it has answered at least as many of the turn's calls as remain (at least two): the
    service answers the first half of a group while the engine runs the second. A group
    of cheap calls still comes back in one write. With 8 clients searching 100,000
    points, the service answered 2-7% more searches per second in paired runs, and 6%
    more over twelve benchmark rounds each (medians), though its own process took about
    8% more CPU per search (more wake-ups).
    """

    def __init__(self) -> None:
        self.backend: Any = None
        self.outbox: _Outbox | None = None
        self.gone = asyncio.get_running_loop().create_future()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unanswered = 0  # calls received and not answered yet
        self._last_call_s = 0.0  # how long the latest call ran

    def send(self, message: object) -> None:
        if self.outbox is not None and not self.outbox.transport.is_closing():
            self.outbox.put(_frame(message))

    def received(self, message: tuple[int, str, tuple[Any, ...], dict[str, Any]]) -> None:
        self._unanswered += 1
        task = asyncio.get_running_loop().create_task(self._handle(*message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def lost(self, exc: Exception | None) -> None:
        if not self.gone.done():
            self.gone.set_result(None)

    def _optimized(self, collection: str) -> None:
        self.send((_EVENT, "optimized", (collection,)))

    async def _handle(
        self, key: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        try:
            if method not in _METHODS:
                raise ValueError(f"no such engine call: {method!r}")
            value: Any = None
            if method == "open":
                await self._open(*args)
            else:
                self._release_replies()
                started = time.perf_counter()
                try:
                    value = await getattr(self.backend, method)(*args, **kwargs)
                finally:
                    self._last_call_s = time.perf_counter() - started
                if method == "close":
                    self.backend = None
            reply: tuple[int, bool, Any] = (key, True, value)
        except Exception as error:  # every failure goes back to the caller
            reply = (key, False, error)
        finally:
            self._unanswered -= 1
        try:
            self.send(reply)
        except Exception as error:  # an answer that does not pickle
            self.send((key, False, RuntimeError(f"{type(error).__name__}: {error}")))

    def _release_replies(self) -> None:
        """Write the replies held now if the calls are long ones and those still to run
        are no more than those answered (this class's docstring)."""
        outbox = self.outbox
        if (
            outbox is not None
            and self._last_call_s >= _LONG_CALL_S
            and outbox.held >= max(2, self._unanswered)
        ):
            outbox.flush()

    async def _open(self, settings: VectorSettings) -> None:
        from lodestar.runtime.heap import settle_heap
        from lodestar.runtime.logging import configure_logging
        from lodestar.services.vector.embedded import EmbeddedBackend

        configure_logging(settings.log_level, json_lines=settings.log_json)
        backend = EmbeddedBackend(settings, on_optimized=self._optimized)
        await backend.open()
        self.backend = backend
        settle_heap(settings.gc_threshold)  # as the service process does (runtime.heap)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.backend is not None:
            await self.backend.close()


async def _serve(fd: int) -> None:
    child = _Child()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(
        lambda: _Frames(child.received, child.lost), sock=socket.socket(fileno=fd)
    )
    child.outbox = _Outbox(transport)  # type: ignore[arg-type]
    try:
        await child.gone
    finally:
        await child.close()


def main(argv: Sequence[str] | None = None) -> int:
    from lodestar.runtime import eventloop
    from lodestar.runtime.lifeline import die_with_parent

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[2] not in get_args(eventloop.EventLoop):
        print("usage: python -m lodestar.services.vector.engine_process FD PARENT_PID EVENT_LOOP")
        return 2
    die_with_parent(int(args[1]))
    # The service stops this process when it stops (a Ctrl-C reaches the whole process
    # group; the service closes the engine first).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    eventloop.run(_serve(int(args[0])), cast(eventloop.EventLoop, args[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
