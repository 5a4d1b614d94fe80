"""Request limits of Lodestar's APIs, defined once.

The services enforce these on every gRPC call, and the gateway's REST schemas
declare the same bounds so that its OpenAPI document tells the truth and a bad
request is refused at the edge; both import them from here so that the two cannot
drift apart. Limits an operator may change are settings: their defaults live here,
and the gateway's schemas take the default.
"""

from __future__ import annotations

from typing import Final

# --- vector service: names and keys -----------------------------------------------------

MAX_COLLECTION_NAME_CHARS: Final = 64
MAX_SNAPSHOT_NAME_CHARS: Final = 200
MAX_KEY_CHARS: Final = 256  # a payload key, or a collection's embedding model name
MAX_TENANT_CHARS: Final = 256
# Names are letters, digits, '_', '-' and '.', starting with a letter or digit.
COLLECTION_NAME_PATTERN: Final = (
    rf"^[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{MAX_COLLECTION_NAME_CHARS - 1}}}$"
)
# A payload key: dotted JSON paths such as "a", "a.b", "a[].b", "a[0]". An array
# index has at most 19 digits: every such number fits the engines' unsigned 64-bit
# index, so a key the pattern allows is one the engines can parse.
MAX_INDEX_DIGITS: Final = 19
_KEY_PART = rf"[A-Za-z0-9_\-]+(\[\d{{0,{MAX_INDEX_DIGITS}}}\])?"
PAYLOAD_KEY_PATTERN: Final = rf"^{_KEY_PART}(\.{_KEY_PART})*$"
SNAPSHOT_NAME_PATTERN: Final = rf"^[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{MAX_SNAPSHOT_NAME_CHARS - 1}}}$"

# --- vector service: collections --------------------------------------------------------

MAX_DIMENSION: Final = 65_536
# HNSW options a collection may set, as (lowest, highest).
HNSW_M: Final = (0, 128)
HNSW_EF_CONSTRUCT: Final = (4, 4_096)
HNSW_FULL_SCAN_THRESHOLD: Final = (10, 2**31 - 1)
MAX_HNSW_EF: Final = 100_000

# --- vector service: points, batches and filters ------------------------------------------

MAX_IDS: Final = 10_000  # point ids named in one request or has_id condition
DEFAULT_BATCH_POINTS: Final = 10_000  # points in one upsert or batch (a setting's default)
MAX_OPERATIONS: Final = 1_000  # operations in one batch
DEFAULT_BATCH_SEARCHES: Final = 100  # searches in one batch (a setting's default)
MAX_FILTER_DEPTH: Final = 8
MAX_FILTER_CONDITIONS: Final = 1_000
MAX_MATCH_VALUES: Final = 1_000

# --- vector service: results and pages --------------------------------------------------

DEFAULT_LIMIT: Final = 10
MAX_LIMIT: Final = 1_000
MAX_OFFSET: Final = 10_000
DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1_000
MAX_EXAMPLES: Final = 1_000  # recommend: positive and negative examples together

# --- vector service: clustering ---------------------------------------------------------

DEFAULT_CLUSTERS: Final = 8
MIN_CLUSTERS: Final = 2
MAX_CLUSTERS: Final = 256
DEFAULT_CLUSTER_SAMPLE: Final = 10_000
DEFAULT_MAX_CLUSTER_SAMPLE: Final = 50_000  # most points one call may cluster (a setting's default)
DEFAULT_REPRESENTATIVES: Final = 3
MAX_REPRESENTATIVES: Final = 100
MAX_MIN_SAMPLES: Final = 1_000  # density clustering's min_samples
SNAPSHOT_CHUNK_BYTES: Final = 1 << 20  # of a snapshot's file in one DownloadSnapshot message

# --- analytics service ------------------------------------------------------------------

MAX_QUERY_TEXT_CHARS: Final = 256  # of a search's query text, kept for popular queries
DEFAULT_TOP_QUERIES: Final = 10
MAX_TOP_QUERIES: Final = 100
DEFAULT_QUERY_DAYS: Final = 1_000  # (query text, day) counts in one ListSearchQueries reply
MAX_QUERY_DAYS: Final = 10_000
MAX_USAGE_EVENTS: Final = 10_000  # usage events in one RecordUsage call
MAX_TIMELINE_BUCKETS: Final = 500  # buckets of one search-analytics timeline
MAX_BUCKET_WIDTH_S: Final = 366 * 86_400  # a timeline bucket's width, in seconds

# --- inference service ------------------------------------------------------------------

MAX_CONTEXT_TOKENS: Final = 131_072  # the largest context a model is run with
MAX_STOP_SEQUENCES: Final = 16
MAX_STOP_CHARS: Final = 256
# Sampling options, as (lowest, highest); integral bounds are ints so that messages
# read "between 0 and 2", as they always have.
TEMPERATURE: Final[tuple[float, float]] = (0, 2)
TOP_P: Final[tuple[float, float]] = (0, 1)  # above the lowest
MAX_TOP_K: Final = 1_000  # 0 turns top-k off
MIN_P: Final[tuple[float, float]] = (0, 1)
REPEAT_PENALTY: Final[tuple[float, float]] = (0.5, 2)

# --- embedding service ------------------------------------------------------------------

DEFAULT_TEXTS_PER_EMBED_CALL: Final = 256  # texts in one EmbedTexts call (a setting's default)
DEFAULT_TEXT_CHARS: Final = 10_000  # characters in one text to embed (a setting's default)
