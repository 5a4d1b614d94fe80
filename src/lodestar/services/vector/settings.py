"""Settings of the vector service (environment variables ``LODESTAR_VECTOR_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from lodestar import limits
from lodestar.runtime.scheduling import CpuScheduling
from lodestar.runtime.settings import ServerSettings

BackendKind = Literal["embedded", "remote"]


class VectorSettings(ServerSettings):
    """How the vector service stores collections and serves them."""

    model_config = SettingsConfigDict(env_prefix="LODESTAR_VECTOR_", extra="ignore", frozen=True)

    port: int = Field(50052, ge=0, le=65535, description="gRPC port (0 picks a free one).")
    metrics_port: int | None = Field(
        9102, ge=0, le=65535, description="Prometheus metrics HTTP port; unset disables it."
    )
    cpu_scheduling: CpuScheduling = Field(
        "batch",
        description="Linux CPU scheduling policy of the service and its engine process: "
        "`batch` (SCHED_BATCH: a thread that wakes waits for a busy CPU's running thread "
        "instead of preempting it, so a call costs fewer context switches) or `normal`, "
        "where the latency of a call on busy CPUs matters more than the CPU it takes (a "
        "thread that wakes then preempts the one running).",
    )

    backend: BackendKind = Field(
        "embedded",
        description="Where vectors live: `embedded` (the Qdrant engine run by the service "
        "itself, under data_dir) or `remote` (a Qdrant server or cluster at qdrant_url).",
    )
    data_dir: Path = Field(
        Path("./.data/vector"),
        description="Directory for embedded collections, snapshots and search analytics; "
        "a persistent volume in a container.",
    )
    snapshot_dir: Path | None = Field(
        None,
        description="Directory for portable snapshots, to keep them on another volume than "
        "the data (a backup mount); unset means data_dir/snapshots.",
    )
    data_lock_wait_s: float = Field(
        10.0,
        ge=0,
        description="Embedded: seconds to wait for data_dir's lock, held by the process that "
        "serves it (one that is stopping lets it go); after that the service refuses to start "
        "rather than open data another process is writing. Raise it if a rolling restart "
        "starts the new pod before the old one has stopped.",
    )

    qdrant_url: str = Field(
        "http://127.0.0.1:6333", description="Remote backend: URL of the Qdrant server."
    )
    qdrant_api_key: SecretStr | None = Field(
        None, description="Remote backend: API key of the Qdrant server."
    )
    prefer_grpc: bool = Field(
        True,
        description="Remote backend: talk to Qdrant over gRPC rather than REST; false where "
        "only Qdrant's REST port is reachable.",
    )
    qdrant_grpc_port: int = Field(
        6334, ge=1, le=65535, description="Remote backend: Qdrant's gRPC port."
    )
    qdrant_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Remote backend: timeout of each call to Qdrant, in seconds; raise it "
        "for collections whose large writes or snapshots take longer.",
    )

    max_batch_points: int = Field(
        limits.DEFAULT_BATCH_POINTS,
        ge=1,
        le=1_000_000,
        description="Most points one upsert or batch may carry; raise it for bulk loaders "
        "that send larger batches (each is held in memory whole).",
    )
    max_batch_searches: int = Field(
        limits.DEFAULT_BATCH_SEARCHES,
        ge=1,
        le=10_000,
        description="Most searches one BatchSearchPoints call may carry; raise it for "
        "clients that send larger batches.",
    )
    max_cluster_sample: int = Field(
        limits.DEFAULT_MAX_CLUSTER_SAMPLE,
        ge=10,
        description="Most points a ClusterPoints call may cluster; lower it if clustering "
        "calls take too long or too much memory.",
    )

    optimize_delay_s: float = Field(
        2.0,
        ge=0,
        description="Embedded: quiet seconds after the last write before the background "
        "optimizer builds indexes; raise it where writes come in bursts with longer pauses, "
        "so that one build follows a whole burst.",
    )
    optimize_max_wait_s: float = Field(
        30.0,
        ge=0,
        description="Embedded: longest time steady writes can postpone a background index "
        "build; lower it if searches during long write streams are slow (unindexed vectors "
        "are scanned), raise it to rebuild less often under constant writes.",
    )
    indexing_threshold_kb: int = Field(
        10_000,
        ge=1,
        description="Embedded: kilobytes of unindexed vectors above which a segment gets an "
        "HNSW index (smaller ones are scanned exactly); lower it if searches of small "
        "collections are slow, raise it to build indexes less often.",
    )
    indexing_threads: int = Field(
        0,
        ge=0,
        description="Embedded: threads building an HNSW index (0: the engine's choice); set "
        "it below the CPU count to keep cores free for searches while an index is built.",
    )
    fsync_writes: bool = Field(
        False,
        description="Embedded: also fsync every write before acknowledging it, so that it "
        "survives power loss (a process crash never loses an acknowledged write).",
    )
    search_threads: int = Field(
        1,
        ge=0,
        le=256,
        description="Embedded: threads of each collection's search pool, which searches its "
        "segments in parallel (0: one per CPU). 1 searches them one after another in the "
        "calling thread: the least CPU per search, and the most searches per second when "
        "searches arrive concurrently; more lowers the latency of a lone search on an idle "
        "machine.",
    )
    engine_process: bool = Field(
        True,
        description="Embedded: run the engine in a child process of its own, so that its work "
        "and the gRPC server's use different cores (the engine holds the Python GIL while it "
        "searches); false runs it in the service process.",
    )

    analytics_interval_s: float = Field(
        60.0,
        gt=0,
        description="Seconds between samples of collection sizes for analytics; lower it "
        "for finer size history, at the cost of more rows kept.",
    )
    analytics_retention_days: float = Field(
        30.0,
        gt=0,
        description="Days search, size and usage analytics are kept; raise it for longer "
        "history, lower it to keep the analytics database small.",
    )

    @property
    def snapshots_path(self) -> Path:
        return self.snapshot_dir if self.snapshot_dir is not None else self.data_dir / "snapshots"
