"""``lodestar ingest PATH... --collection NAME``: chunk, embed and store text files.

Exit status: 0 when the run finished (files that could not be read are reported
and skipped, not fatal); 1 when a service is unreachable or refuses the work;
2 for bad arguments; 130 when interrupted by Ctrl-C, 143 by SIGTERM (what was
stored stays stored, and the next run resumes).
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import BinaryIO, TextIO

from lodestar.ingest.checkpoint import default_state_path
from lodestar.ingest.chunking import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    ChunkingOptions,
    TextFormat,
)
from lodestar.ingest.pipeline import IngestOptions, Ingestor
from lodestar.ingest.sinks import GatewaySink, GrpcSink, IngestError, Sink, UsageError
from lodestar.ingest.sources import DEFAULT_PATTERNS, SourceError, discover

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

_EPILOG = """\
Chunk sizes are in characters. Each file is stored as a document whose id
derives from its source (the file's absolute path), through the same document
pipeline as the gateway's documents API: running again replaces a document
rather than adding to it, and a file cut off half-way leaves its previous
version whole. Completed files are remembered in a local checkpoint (--state)
and skipped while their bytes are unchanged. A file emptied since the last run
has its document deleted (unless --no-prune).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lodestar ingest",
        description="Split text and Markdown files into overlapping chunks, embed them and "
        "store them in a collection.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    env = os.environ.get
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="files, directories (searched recursively) or '-' for standard input",
    )
    parser.add_argument("--collection", required=True, help="collection to store chunks in")
    parser.add_argument(
        "--create",
        action="store_true",
        help="create the collection if missing (dimension from the embedding model)",
    )
    chunking = parser.add_argument_group("chunking")
    chunking.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        metavar="CHARS",
        help=f"most characters in a chunk (default {DEFAULT_CHUNK_SIZE})",
    )
    chunking.add_argument(
        "--chunk-overlap",
        type=int,
        default=DEFAULT_CHUNK_OVERLAP,
        metavar="CHARS",
        help=f"characters repeated from the end of the previous chunk, at most half the "
        f"chunk size (default {DEFAULT_CHUNK_OVERLAP})",
    )
    chunking.add_argument(
        "--glob",
        action="append",
        metavar="PATTERN",
        help="file-name pattern to take from directories, repeatable "
        f"(default: {' '.join(DEFAULT_PATTERNS)})",
    )
    chunking.add_argument(
        "--format",
        choices=["auto", *(f.value for f in TextFormat)],
        default="auto",
        help="how to read structure: auto (by extension; standard input as Markdown), "
        "plain, markdown or rst",
    )
    chunking.add_argument("--encoding", default="utf-8", help="text encoding (default utf-8)")
    chunking.add_argument(
        "--stdin-name",
        default="stdin",
        metavar="NAME",
        help="source name of standard input in payloads and ids (default stdin)",
    )
    transport = parser.add_argument_group("destination")
    transport.add_argument(
        "--via",
        choices=("grpc", "gateway"),
        default="grpc",
        help="call the services directly over gRPC (default) or go through the gateway",
    )
    transport.add_argument(
        "--embedding-address",
        default=env("LODESTAR_INGEST_EMBEDDING_ADDRESS", "127.0.0.1:50051"),
        metavar="HOST:PORT",
        help="embedding service (grpc; env LODESTAR_INGEST_EMBEDDING_ADDRESS)",
    )
    transport.add_argument(
        "--vector-address",
        default=env("LODESTAR_INGEST_VECTOR_ADDRESS", "127.0.0.1:50052"),
        metavar="HOST:PORT",
        help="vector service (grpc; env LODESTAR_INGEST_VECTOR_ADDRESS)",
    )
    transport.add_argument(
        "--tenant",
        default="",
        help="tenant the points belong to (grpc; the gateway takes it from the token)",
    )
    transport.add_argument(
        "--gateway-url",
        default=env("LODESTAR_INGEST_GATEWAY_URL", "http://127.0.0.1:8080"),
        metavar="URL",
        help="gateway base URL (gateway; env LODESTAR_INGEST_GATEWAY_URL)",
    )
    transport.add_argument(
        "--token",
        default=env("LODESTAR_TOKEN"),
        help="bearer token for the gateway, or for services that require one "
        "(default: env LODESTAR_TOKEN)",
    )
    transport.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="deadline of each call (default 60)",
    )
    transport.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the services at the start (default 10)",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--batch-size", type=int, default=32, help="chunks embedded per request (default 32)"
    )
    run.add_argument(
        "--concurrency", type=int, default=4, help="batches in flight at once (default 4)"
    )
    run.add_argument(
        "--state",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"checkpoint file (default {default_state_path()}; env LODESTAR_INGEST_STATE)",
    )
    run.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="neither read nor write the checkpoint (every file is chunked and looked up)",
    )
    run.add_argument(
        "--no-prune",
        action="store_true",
        help="keep the documents of files emptied since the last run",
    )
    run.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (it is shown only when standard error is a terminal)",
    )
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def _options(
    args: argparse.Namespace, parser: argparse.ArgumentParser, err: TextIO
) -> IngestOptions:
    try:
        chunking = ChunkingOptions(args.chunk_size, args.chunk_overlap)
    except ValueError as error:
        parser.error(f"--chunk-size/--chunk-overlap: {error}")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.timeout <= 0 or args.connect_timeout <= 0:
        parser.error("--timeout and --connect-timeout must be positive")
    try:
        codecs.lookup(args.encoding)
    except LookupError:
        parser.error(f"--encoding: unknown encoding {args.encoding!r}")
    if args.via == "gateway" and not args.token:
        parser.error("--via gateway needs a token: --token or LODESTAR_TOKEN")
    if args.via == "gateway" and args.tenant:
        parser.error("--tenant applies to --via grpc; the gateway takes the tenant from the token")
    return IngestOptions(
        collection=args.collection,
        create=args.create,
        chunking=chunking,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        patterns=tuple(args.glob) if args.glob else DEFAULT_PATTERNS,
        encoding=args.encoding,
        stdin_name=args.stdin_name,
        format=None if args.format == "auto" else TextFormat(args.format),
        checkpoint_path=None if args.no_checkpoint else (args.state or default_state_path()),
        prune=not args.no_prune,
        # A bar redrawn in a log file is noise; skipped files are reported either way.
        progress=not args.no_progress and err.isatty(),
        tenant=args.tenant,
    )


def make_sink(args: argparse.Namespace) -> Sink:
    if args.via == "gateway":
        return GatewaySink(
            args.gateway_url,
            args.token,
            timeout_s=args.timeout,
            connect_timeout_s=args.connect_timeout,
        )
    return GrpcSink(
        args.embedding_address,
        args.vector_address,
        tenant=args.tenant,
        token=args.token,
        timeout_s=args.timeout,
        connect_timeout_s=args.connect_timeout,
    )


def ingest_main(
    argv: list[str],
    *,
    stdin: BinaryIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run ``lodestar ingest`` with ``argv`` (the arguments after ``ingest``)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    options = _options(args, parser, err)
    try:
        sources = discover(
            args.paths,
            patterns=options.patterns,
            stdin_name=options.stdin_name,
            forced_format=options.format,
        )
    except SourceError as error:
        parser.error(str(error))
    if not sources:
        print("lodestar ingest: no files matched; nothing to do", file=err)
        return EXIT_OK

    async def run() -> Ingestor:
        # SIGTERM stops a run as Ctrl-C does: what is stored stays, a summary is printed.
        main = asyncio.current_task()

        def terminate() -> None:
            terminated.append(True)
            if main is not None:
                main.cancel()

        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminate)
        sink = make_sink(args)
        ingestor = Ingestor(options, sink, stdin=stdin, progress_stream=err)
        holder.append(ingestor)
        try:
            await ingestor.run(sources)
        finally:
            await sink.close()
        return ingestor

    holder: list[Ingestor] = []
    terminated: list[bool] = []
    status = EXIT_OK
    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED
    except asyncio.CancelledError:
        if not terminated:
            raise
        status = EXIT_TERMINATED
    except UsageError as error:
        print(f"lodestar ingest: {error}", file=err)
        status = EXIT_USAGE
    except IngestError as error:
        print(f"lodestar ingest: {error}", file=err)
        status = EXIT_FAILED
    if holder:
        report = holder[0].report
        report.interrupted = report.interrupted or status in (EXIT_INTERRUPTED, EXIT_TERMINATED)
        if args.json:
            print(json.dumps(report.as_dict(), indent=2), file=out)
        elif report.files_total or report.interrupted:
            print(report.summary(), file=out)
    return status
