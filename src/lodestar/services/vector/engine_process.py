"""The embedded engine in a process of its own.

qdrant-edge holds the Python GIL while it searches, so inside the service process
the engine's work and the gRPC server's work (protobuf, validation, metrics,
analytics) take turns on one core's worth of time, however many threads run them.
``EngineProcess`` is the embedded backend run in a child process
(``python -m lodestar.services.vector.engine_process``): the service process keeps
the gRPC server and everything above the backend interface, the child runs
``EmbeddedBackend`` unchanged, and the two work on different cores.

The two exchange frames over a private socket pair (``wire``): requests
``(id, method, args, kwargs)`` for the methods of ``VectorBackend``, replies
``(id, ok, value)`` (the result, or the exception the backend raised, re-raised in
the service), and events ``(0, name, args)`` from the child. The child starts the
calls in the order they arrive; the engine's own work runs on its event loop, so calls
run one after another, and consecutive searches of one collection that arrive in one
read go to the engine as one batch query.

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
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar, cast, get_args

from prometheus_client import ProcessCollector

from lodestar.runtime.errors import Unavailable
from lodestar.services.vector.backend import VectorBackend
from lodestar.services.vector.metrics import ENGINE_RESTARTS, OPTIMIZER_RUNS
from lodestar.services.vector.models import CollectionConfig
from lodestar.services.vector.settings import VectorSettings
from lodestar.services.vector.wire import CoalescingWriter, FrameReader

_log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_EVENT = 0
_SOCKET_BUFFER = 4 * 1024 * 1024
# Seconds a closing child gets to close its shards before it is killed.
_CLOSE_TIMEOUT_S = 60.0

# What the service may ask of the child: the backend interface, nothing else.
_METHODS = frozenset(
    name
    for name, value in vars(VectorBackend).items()
    if not name.startswith("_") and callable(value)
)
# Calls that change collection configurations, which the service keeps (``collection_config``).
_CONFIG_CHANGES = frozenset(
    {"create_collection", "update_collection", "delete_collection", "restore_snapshot"}
)

# A request: (id, method, args, kwargs).
_Call = tuple[int, str, tuple[Any, ...], dict[str, Any]]


class _Reported:
    """The child whose CPU, memory and descriptors are exported (the latest started), as
    ``lodestar_vector_engine_process_*`` beside the service process's own ``process_*``."""

    pid: int | None = None

    @classmethod
    def proc_entry(cls) -> int | str:
        return "-" if cls.pid is None else cls.pid  # "-": no /proc entry, nothing exported


ProcessCollector(namespace="lodestar_vector_engine", pid=_Reported.proc_entry)


def _remote(
    method: Callable[Concatenate[VectorBackend, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[EngineProcess, P], Coroutine[Any, Any, R]]:
    """The protocol's ``method``, run in the child (``EngineProcess.call``)."""
    name = method.__name__

    async def forward(self: EngineProcess, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return cast(R, await self.call(name, *args, **kwargs))

    forward.__name__ = forward.__qualname__ = name
    forward.__doc__ = method.__doc__
    return forward


class EngineProcess:
    """``EmbeddedBackend`` in a child process, behind the same interface: every method of
    ``VectorBackend`` but the life cycle and ``collection_config`` goes through ``call``."""

    kind = "embedded"

    def __init__(self, settings: VectorSettings) -> None:
        self._settings = settings
        self._process: asyncio.subprocess.Process | None = None
        # The connection to the running child, once it has opened the data; None before
        # and once it is lost.
        self._writer: CoalescingWriter | None = None
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

    # --- calls -----------------------------------------------------------------------------

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run the backend's ``method`` in the child (started first if it is not running)."""
        if method not in _CONFIG_CHANGES:
            return await self._send(await self._connection(), method, args, kwargs)
        # The cache is dropped before the change (no read started earlier may store what
        # it fetched) and after it (nor one that read the old configuration meanwhile).
        self._forget_configs()
        try:
            return await self._send(await self._connection(), method, args, kwargs)
        finally:
            self._forget_configs()

    async def collection_config(self, name: str) -> CollectionConfig:
        config = self._configs.get(name)
        if config is None:
            epoch = self._config_epoch
            config = cast(CollectionConfig, await self.call("collection_config", name))
            if epoch == self._config_epoch:
                self._configs[name] = config
        return config

    create_collection = _remote(VectorBackend.create_collection)
    get_collection = _remote(VectorBackend.get_collection)
    list_collections = _remote(VectorBackend.list_collections)
    update_collection = _remote(VectorBackend.update_collection)
    delete_collection = _remote(VectorBackend.delete_collection)
    apply = _remote(VectorBackend.apply)
    retrieve = _remote(VectorBackend.retrieve)
    scroll = _remote(VectorBackend.scroll)
    count = _remote(VectorBackend.count)
    search = _remote(VectorBackend.search)
    search_batch = _remote(VectorBackend.search_batch)
    recommend = _remote(VectorBackend.recommend)
    sample = _remote(VectorBackend.sample)
    create_snapshot = _remote(VectorBackend.create_snapshot)
    list_snapshots = _remote(VectorBackend.list_snapshots)
    restore_snapshot = _remote(VectorBackend.restore_snapshot)
    delete_snapshot = _remote(VectorBackend.delete_snapshot)
    read_snapshot = _remote(VectorBackend.read_snapshot)
    sizes = _remote(VectorBackend.sizes)

    async def _send(
        self,
        writer: CoalescingWriter,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        key = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        try:
            writer.put((key, method, args, kwargs))
            return await future
        finally:
            self._waiting.pop(key, None)

    def _forget_configs(self) -> None:
        self._configs.clear()
        self._config_epoch += 1

    # --- the child -------------------------------------------------------------------------

    async def _connection(self) -> CoalescingWriter:
        """The connection to a child that serves, started when there is none."""
        while self._writer is None:
            if self._closing:
                raise Unavailable("the vector service is stopping")
            if self._starting is None or self._starting.done():
                self._starting = asyncio.get_running_loop().create_task(self._restart())
            try:
                await asyncio.shield(self._starting)
            except Exception as error:
                raise Unavailable(f"the vector engine process cannot start: {error}") from error
        return self._writer

    async def _start(self) -> None:
        ours, theirs = socket.socketpair()
        for end in (ours, theirs):
            # Room for a whole batch of points in one write (the kernel caps it at its
            # limit); the default of about 200 KB splits a batch into several.
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
        try:
            process = await asyncio.create_subprocess_exec(
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
        self._process = process
        _Reported.pid = process.pid
        transport, _ = await asyncio.get_running_loop().create_unix_connection(
            lambda: FrameReader(self._received, self._lost), sock=ours
        )
        writer = CoalescingWriter(transport)
        self._forget_configs()
        try:
            await self._send(writer, "open", (self._settings,), {})
        except BaseException:
            # A child that could not open the data serves nothing: stop it.
            transport.close()
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        self._writer = writer

    def _received(self, messages: list[tuple[int, Any, Any]]) -> None:
        for key, ok, value in messages:
            if key == _EVENT:
                if ok == "optimized":
                    OPTIMIZER_RUNS.labels(*value).inc()
                continue
            future = self._waiting.pop(key, None)
            if future is None or future.done():  # the caller went away
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _lost(self, exc: Exception | None) -> None:
        self._writer = None
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

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        await self._start()

    async def close(self) -> None:
        self._closing = True
        if self._starting is not None and not self._starting.done():
            # A replacement child is starting: let it finish, then close it like any other.
            with contextlib.suppress(Exception):
                await self._starting
        process, writer = self._process, self._writer
        try:
            if writer is not None:
                with contextlib.suppress(Unavailable):  # it stopped already
                    await self._send(writer, "close", (), {})
        finally:
            if writer is not None:
                writer.transport.close()
            if process is not None:
                try:
                    await asyncio.wait_for(process.wait(), _CLOSE_TIMEOUT_S)
                except TimeoutError:
                    _log.error("vector engine process did not exit; killing it")
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()


# --- the child's side ------------------------------------------------------------------


def _groups(calls: list[_Call]) -> Iterator[list[_Call]]:
    """The calls of one read in order: consecutive searches of one collection form one
    group, every other call is a group of its own."""
    group: list[_Call] = []
    for call in calls:
        if group and _search_of(call) is not None and _search_of(call) == _search_of(group[0]):
            group.append(call)
            continue
        if group:
            yield group
        group = [call]
    if group:
        yield group


def _search_of(call: _Call) -> str | None:
    """The collection a plain ``search(collection, query)`` call searches; None for others."""
    _, method, args, kwargs = call
    return args[0] if method == "search" and len(args) == 2 and not kwargs else None


class _Child:
    """Runs the service's calls in the order they arrive and replies to each."""

    def __init__(self) -> None:
        self.backend: Any = None
        self.writer: CoalescingWriter | None = None
        self.gone = asyncio.get_running_loop().create_future()
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, message: object) -> None:
        if self.writer is not None and not self.writer.transport.is_closing():
            self.writer.put(message)

    def received(self, calls: list[_Call]) -> None:
        loop = asyncio.get_running_loop()
        for group in _groups(calls):
            task = loop.create_task(self._run(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def lost(self, exc: Exception | None) -> None:
        if not self.gone.done():
            self.gone.set_result(None)

    def _optimized(self, collection: str) -> None:
        self.send((_EVENT, "optimized", (collection,)))

    async def _run(self, group: list[_Call]) -> None:
        """Run one group: a group of searches as one batch query, other calls alone."""
        if len(group) > 1:
            queries = [args[1] for _, _, args, _ in group]
            try:
                found = await self.backend.search_batch(group[0][2][0], queries)
            except Exception:  # then each search alone, for its own answer or error
                found = None
            if found is not None:
                for (key, *_), hits in zip(group, found, strict=True):
                    self._reply(key, True, hits)
                return
        for key, method, args, kwargs in group:
            try:
                value = await self._call(method, args, kwargs)
            except Exception as error:  # every failure goes back to the caller
                self._reply(key, False, error)
            else:
                self._reply(key, True, value)

    async def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if method not in _METHODS:
            raise ValueError(f"no such engine call: {method!r}")
        if method == "open":
            await self._open(*args)
            return None
        value = await getattr(self.backend, method)(*args, **kwargs)
        if method == "close":
            self.backend = None
        return value

    def _reply(self, key: int, ok: bool, value: Any) -> None:
        try:
            self.send((key, ok, value))
        except Exception as error:  # an answer that does not pickle
            self.send((key, False, RuntimeError(f"{type(error).__name__}: {error}")))

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
        lambda: FrameReader(child.received, child.lost), sock=socket.socket(fileno=fd)
    )
    child.writer = CoalescingWriter(transport)
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
