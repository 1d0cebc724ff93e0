"""The Milvus backend of the store interface: one set of collections per index, Lite or server.

`VECTOR_STORE=milvus://host:19530[/collection]` names a Milvus server (or cluster proxy);
a local `*.db` path names a Milvus Lite database (the embedded Milvus, same client API).
`MilvusIndexStore` is an `IndexStore` whose channels search Milvus, so the Categorizer,
the service and the evaluation use it unchanged.

Layout, for an index named `products` (the collection; `MILVUS_COLLECTION` or the URI path),
schema version 2 (Milvus 2.3 servers allow one vector field per collection):

    products         one entity per product: row (INT64 primary key = product row), id, name,
                     category_path (ARRAY of levels), record (the Product as JSON text), and a
                     has_<modality> flag per modality
    products__image  one entity per product that has that modality: row, category_path (so
    products__text   filters run inside the search: `category_path[0] == "A" and
                     category_path[1] == "B"`) and the FLOAT_VECTOR (IP metric; FLAT, HNSW
                     or IVF_SQ8)
    products__meta   small key/value collection: the manifest (profile, model ids, dims,
                     calibrated categorizer) and the lexical channel (vocabulary, idf, TF-IDF
                     rows of the copied products) and the `state` row (the commit), mirrored
                     in its property `indexer.state`

An add upserts the new entities at rows `committed, committed + 1, ...`, then commits: it
writes the state (rows committed, build id, and `ts`, the Milvus timestamp of its last write).
Searches carry `row < committed`, so rows written by an add that died before its commit are
never returned, and the next add overwrites them. Another process notices an add by reading
the state (`is_stale`) and loads only the new rows.

A delete or relabel (`change`) keeps the row: a deleted product's entity is upserted with no
vector flags, no category path (no category filter matches it) and `"deleted": true` in its
record, and its vectors are deleted from the modality collections (so no search returns it); a
relabelled one is upserted with its new path, in the products collection and in each modality
collection (its vectors read back and written unchanged). The change is first written to the
meta collection as `change/<n>` (the rows, their new records, the audit events), then the
entities are written, then `state.changes` moves to n: a writer killed after the first step
leaves `change/<n>` past `state.changes`, and the next writer finishes it (the writes are
idempotent) before its own change. Other processes notice `state.changes` move and re-read
only the rows the new entries name.

Consistency, per operation (a server's default, Bounded, may answer from data up to 5 s old;
Strong makes every read wait for the next time tick, ~200 ms on 2.3: bench_milvus_consistency.py):
- the commit writes the `state` row (a Milvus write, durable once acknowledged), then its
  mirror, a property of the meta collection: collection metadata (Milvus's etcd), so reading it
  is linearizable and cheap (~1 ms), and `is_stale` reads it before every request. Milvus
  2.3.5 lost the last property write in a kill -9 (tests/store/test_milvus_server.py), so the
  row is the truth: writers read it (Strong), and so does a process's first read and its first
  read after the server was away, which repairs the mirror (`read_state`);
- every read of rows (search, products, vectors) carries the state's `ts` as its guarantee
  timestamp (consistency level Customized): the server answers once it has applied every write
  that commit covers, which it usually has already, so a read waits only right after a commit
  and never for a tick in steady state. Milvus Lite is always up to date (its `ts` is 0).

Text: the lexical channel stays the embedded TF-IDF index (indexer.store.lexical), stored in the
meta collection and searched in process. This Milvus Lite (3.2.2) does run BM25 full-text
search, but its term statistics are the whole collection's: the nested evaluation refits the
vocabulary and idf inside each training part, and the figures must equal the FAISS store's.

A query's candidates are scored by the server (a search restricted to their rows, per modality:
no vector crosses the wire; `MilvusChannel.similarity`), but only when needed: each channel
remembers its searches' scores (`SearchMemo`), a candidate one search did not return gets that
search's lowest score as an upper bound (`MilvusChannel.bounded_similarity`), and the
Categorizer asks the server for exact scores only when a bound could enter a top k it reads
(`Categorizer._fused_similarity`): one round to the server instead of two when it cannot.
To make that more likely, a search of a few queries asks the server for `MILVUS_BOUND_DEPTH`
rows (default 400 on FLAT and IVF_SQ8, whose cost hardly grows with the limit; HNSW's ef) and
returns the k asked: the rest only sharpen the memo (more candidates with their exact score, a
lower floor). At 1M SYNTHETIC products that took the second round from 76 predictions in 100
to 23 (docs/results.md).
Vectors are read by primary key only where a caller wants them; a whole-matrix use (the
evaluation's batch similarities) fetches every vector once, O(N·d), and keeps it.

Milvus Lite opens a database from one process at a time: a service on Lite runs one worker
(WEB_CONCURRENCY=1); several workers or hosts need a Milvus server.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import tarfile
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from indexer.catalog.products import MODALITIES, Product
from indexer.catalog.text import encoder_text
from indexer.encoders.base import Encoder, l2_normalize
from indexer.store.audit import AuditLog, new_event_id, record_unrecorded, utc_now
from indexer.store.audit import event as audit_event
from indexer.store.base import IndexStore, check_compatible, checked_change
from indexer.store.errors import (
    DuplicateProduct,
    IndexDamaged,
    IndexNotFound,
    IndexStoreError,
    ProductNotFound,
    StoreUnavailable,
)
from indexer.store.filters import CategoryIndex, PositionFilter, RowFilter, RowSource
from indexer.store.lexical import LexicalIndex, default_cap, postings_cap
from indexer.store.locks import write_lock

DEFAULT_COLLECTION = "products"
META_SUFFIX = "__meta"
SCHEMA_VERSION = 2  # 2: one collection per modality (Milvus 2.3 allows one vector field per collection)
CHUNK_CHARS = 60_000  # a meta value is a VARCHAR of at most 65,535 characters
RECORD_CHARS = 65_535
FETCH_ROWS = 4_096  # entities per query when reading products or vectors
INSERT_ROWS = 1_000  # entities per insert call
MAX_LIMIT = 16_384  # the most results one Milvus search returns (its topk limit)
CACHED_ROWS = 20_000  # rows whose vectors a loaded store keeps (RowVectors)
RECENT_QUERIES = 64  # queries whose search scores a channel remembers (SearchMemo)
# rows a search of at most RECENT_QUERIES queries asks the server for, whatever its k, on FLAT
# and IVF_SQ8 (MILVUS_BOUND_DEPTH overrides; 0: only k): its first k are returned, the others
# only sharpen the SearchMemo's bounds. HNSW's default is its ef: a deeper limit widens its
# candidate list. Chosen by bench_milvus.py's figures (docs/results.md).
DEFAULT_BOUND_DEPTH = 400
INDEX_TYPES = ("FLAT", "HNSW", "IVF_SQ8")
HNSW_BUILD = {"M": 32, "efConstruction": 200}
DEFAULT_EF = 128  # HNSW candidate list at search time (MILVUS_EF overrides)
# IVF_SQ8: one byte per dimension (a quarter of FLAT's or HNSW's memory), built per sealed
# segment (~100k image vectors at Milvus's 512 MB); a segment under 1,024 rows is not indexed and
# is searched exactly. recall@10 was 0.975-0.992 at 1M and 0.986-0.992 at 100k with these. 256
# lists (fewer centroids per segment to compare) with 2 probed gave p50 27.8 and 41.5 ms in two
# runs at 1M against 36.6 ms for 8 of 1,024, recall@10 0.97: not a clear gain, so not the
# default (bench_milvus.py, docs/results.md).
IVF_BUILD = {"nlist": 1024}
EVERY_LIST = 65_536  # nprobe of a scoring search: Milvus's largest, clamped to the index's nlist
DEFAULT_NPROBE = 32  # IVF lists probed per segment at search time (MILVUS_NPROBE overrides)
STATE_KEY = "indexer.state"  # the commit state: a property of the meta collection
DEFAULT_TIMEOUT = 10.0  # seconds a read or write may take before the store is unavailable (MILVUS_TIMEOUT)
TIMED_CALLS = frozenset({"query", "search", "insert", "upsert", "describe_collection", "has_collection"})


# ---- where the index lives ---------------------------------------------------------------
@dataclass(frozen=True)
class MilvusLocation:
    """A Milvus URI (server `http://host:port` or a Lite `*.db` path) and the collection name."""

    uri: str
    collection: str

    @property
    def meta(self) -> str:
        return self.collection + META_SUFFIX

    def channel(self, modality: str) -> str:
        """The collection of one modality's vectors."""
        return f"{self.collection}__{modality}"

    @property
    def lite(self) -> bool:
        return self.uri.endswith(".db")

    @classmethod
    def parse(cls, location: str | Path, collection: str | None = None) -> MilvusLocation:
        """`milvus://host:19530[/name]`, `http(s)://host:port[/name]` or a `*.db` path."""
        text = str(location).strip()
        name = collection or os.environ.get("MILVUS_COLLECTION") or DEFAULT_COLLECTION
        for scheme, replacement in (("milvus://", "http://"), ("http://", "http://"), ("https://", "https://")):
            if text.startswith(scheme):
                host, _, path = text[len(scheme) :].partition("/")
                if not host:
                    raise ValueError(f"no host in Milvus address {text!r}")
                return cls(replacement + host, collection or path.strip("/") or name)
        if text.endswith(".db"):
            return cls(str(Path(text).resolve()), name)
        raise ValueError(f"{text!r} is not a Milvus location: use milvus://host:19530[/collection] or a *.db path")


_CLIENTS: dict[tuple[int, str], Any] = {}
_CLIENTS_LOCK = threading.Lock()
# Milvus error codes that mean "not now" rather than "wrong request": service not ready or
# unavailable, over a memory / rate / disk limit, collection not loaded yet (after a restart),
# and the node errors (900s) of a cluster losing a node.
UNAVAILABLE_CODES = frozenset({1, 2, 3, 4, 7, 101, *range(900, 1000)})


def unavailable(exc: BaseException) -> bool:
    """True when a client error says the server cannot be reached or cannot serve yet."""
    import grpc
    from pymilvus.exceptions import MilvusException

    if isinstance(exc, grpc.RpcError):
        return True
    if isinstance(exc, MilvusException):
        return isinstance(exc.code, grpc.StatusCode) or exc.code in UNAVAILABLE_CODES
    return isinstance(exc, ConnectionError | TimeoutError)


class GuardedClient:
    """A MilvusClient whose failures to reach the server raise `StoreUnavailable` (the service
    answers 503 and retries on the next request) and whose reads and writes time out after
    MILVUS_TIMEOUT seconds instead of retrying for minutes. pymilvus reconnects by itself
    when the server is back, so the same client serves again without a restart."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.timeout = float(os.environ.get("MILVUS_TIMEOUT") or DEFAULT_TIMEOUT)
        self.suspect = True  # the next state read is authoritative (first use, or the server was away)
        self._client: Any = None
        self._lock = threading.Lock()

    def _connected(self) -> Any:
        with self._lock:
            if self._client is None:
                from pymilvus import MilvusClient

                token = os.environ.get("MILVUS_TOKEN", "")
                options: dict[str, Any] = {"token": token} if token else {}
                try:
                    self._client = MilvusClient(self.uri, **options)
                except Exception as exc:
                    if unavailable(exc):
                        self.suspect = True
                        raise StoreUnavailable(f"Milvus at {self.uri} cannot be reached: {exc}") from exc
                    raise
            return self._client

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._connected(), name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            if name in TIMED_CALLS:
                kwargs.setdefault("timeout", self.timeout)
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                if unavailable(exc):
                    self.suspect = True
                    raise StoreUnavailable(f"Milvus at {self.uri} is unavailable ({name}): {exc}") from exc
                raise

        return call

    def upsert_ts(self, collection: str, rows: list[dict[str, Any]]) -> int:
        """Upsert rows and return the write's Milvus timestamp (0 on Lite), which
        `MilvusClient.upsert` does not return: its connection's does."""
        return self._write_ts("upsert", collection, rows)

    def insert_ts(self, collection: str, rows: list[dict[str, Any]]) -> int:
        """Insert rows whose keys are new (a collection being filled: no older entity to
        delete first, unlike an upsert); the write's timestamp, as `upsert_ts`."""
        return self._write_ts("insert", collection, rows)

    def _write_ts(self, kind: str, collection: str, rows: list[dict[str, Any]]) -> int:
        """Rows sent as columns: pymilvus 3.0.2 checks a row's VARCHAR value character by
        character (a product record, a 60,000-character chunk of the lexical channel), a
        column's string by string. With the unloaded filling, a copy of 100k products (HNSW) went
        from 400 to 2,093 products/s (bench_milvus.py, docs/results.md)."""
        connection = self._connected()._get_connection()
        try:
            schema = connection.describe_collection(collection, timeout=self.timeout)
            columns = [
                {"name": f["name"], "type": f["type"], "values": [row[f["name"]] for row in rows]}
                for f in schema["fields"]
            ]
            write = connection.upsert if kind == "upsert" else connection.batch_insert
            result = write(collection, columns, timeout=self.timeout, schema=schema)
        except Exception as exc:
            if unavailable(exc):
                self.suspect = True
                raise StoreUnavailable(f"Milvus at {self.uri} is unavailable ({kind}): {exc}") from exc
            raise
        return int(getattr(result, "timestamp", 0) or 0)

    def load_all(self, names: Sequence[str]) -> None:
        """Load collections together: the server loads them in parallel, so the wait is the
        slowest one's, not their sum (seconds each for a new collection on a 2.3 server); a
        loaded collection answers at once."""
        connection = self._connected()._get_connection()
        try:
            for name in names:
                connection.load_collection(name, _async=True)
            for name in names:
                connection.wait_for_loading_collection(name)
        except Exception as exc:
            if unavailable(exc):
                self.suspect = True
                raise StoreUnavailable(f"Milvus at {self.uri} is unavailable (load): {exc}") from exc
            raise

    def flush_all(self, names: Sequence[str]) -> None:
        """Seal the collections' growing segments in one call (their indexes get built), and
        wait until they are flushed: one wait instead of one per collection."""
        try:
            self._connected()._get_connection().flush(list(names))
        except Exception as exc:
            if unavailable(exc):
                self.suspect = True
                raise StoreUnavailable(f"Milvus at {self.uri} is unavailable (flush): {exc}") from exc
            raise

    def delete_ts(self, collection: str, ids: list[int]) -> int:
        """Delete entities by primary key and return the write's timestamp (as `upsert_ts`)."""
        connection = self._connected()._get_connection()
        try:
            result = connection.delete(collection, expression=f"row in {json.dumps(ids)}", timeout=self.timeout)
        except Exception as exc:
            if unavailable(exc):
                self.suspect = True
                raise StoreUnavailable(f"Milvus at {self.uri} is unavailable (delete): {exc}") from exc
            raise
        return int(getattr(result, "timestamp", 0) or 0)


def client_for(uri: str) -> Any:
    """One client per process and URI (a forked worker opens its own: gRPC channels do not
    survive fork). MILVUS_TOKEN ("user:password" or an API key) authenticates to a server."""
    key = (os.getpid(), uri)
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = GuardedClient(uri)
        return _CLIENTS[key]


def read_options(ts: int) -> dict[str, Any]:
    """Read options that see every write up to Milvus timestamp `ts` (see the module docstring)."""
    return {"consistency_level": "Customized", "guarantee_timestamp": max(int(ts), 1)}


def _literal(value: str) -> str:
    """A Milvus filter-expression string literal (JSON escaping: quotes and backslashes)."""
    return json.dumps(value, ensure_ascii=False)


def category_expression(path: Sequence[str]) -> str:
    """The filter expression of a category prefix, level by level."""
    return " and ".join(f"category_path[{i}] == {_literal(level)}" for i, level in enumerate(path))


# ---- the meta collection: manifest, lexical channel, commit state ---------------------------
def _create_unloaded(client: Any, name: str, schema: Any, params: Any, **kwargs: Any) -> None:
    """Create a collection and its index, not loaded: `create_collection` with index params
    would load it and wait for it (seconds each on a 2.3 server), and a collection being filled is
    better unloaded, so the query node does not hold every inserted vector raw until its
    segment's index is built (at 1M: 8.7 GB). `MilvusIndexStore.open` loads what it reads.
    The collection's default consistency matters only to a client that names none: every
    read here passes its own (see the module docstring)."""
    client.create_collection(name, schema=schema, consistency_level="Strong", **kwargs)
    client.create_index(name, params)


def _create_meta(client: Any, loc: MilvusLocation) -> None:
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=256)
    schema.add_field("value", DataType.VARCHAR, max_length=RECORD_CHARS)
    schema.add_field("_v", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants a vector field in every collection
    params = client.prepare_index_params()
    params.add_index("_v", index_type="FLAT", metric_type="IP")
    _create_unloaded(client, loc.meta, schema, params)


def _put_values(client: Any, loc: MilvusLocation, values: Mapping[str, str]) -> int:
    """Upsert key/values into the meta collection; the write's timestamp."""
    return int(client.upsert_ts(loc.meta, [{"key": k, "value": v, "_v": [1.0, 0.0]} for k, v in values.items()]))


def _get_values(client: Any, loc: MilvusLocation, keys: Sequence[str], ts: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for lo in range(0, len(keys), 256):
        for hit in client.query(loc.meta, ids=list(keys[lo : lo + 256]), output_fields=["value"], **read_options(ts)):
            out[hit["key"]] = hit["value"]
    return out


def put_blob(client: Any, loc: MilvusLocation, name: str, data: bytes) -> int:
    """Bytes as base64 chunks of the meta collection; the header (chunk count) goes last.
    Returns the timestamp of the last write."""
    text = base64.b64encode(data).decode("ascii")
    chunks = [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)] or [""]
    for lo in range(0, len(chunks), 64):
        _put_values(client, loc, {f"{name}/{i:06d}": chunks[i] for i in range(lo, min(lo + 64, len(chunks)))})
    return _put_values(client, loc, {name: json.dumps({"chunks": len(chunks), "bytes": len(data)})})


def get_blob(client: Any, loc: MilvusLocation, name: str, ts: int) -> bytes:
    header = _get_values(client, loc, [name], ts).get(name)
    if header is None:
        raise IndexDamaged(f"Milvus collection {loc.meta} has no {name!r} entry")
    info = json.loads(header)
    keys = [f"{name}/{i:06d}" for i in range(int(info["chunks"]))]
    values = _get_values(client, loc, keys, ts)
    if len(values) != len(keys):
        raise IndexDamaged(f"Milvus collection {loc.meta}: {name!r} has {len(values)} of {len(keys)} chunks")
    data = base64.b64decode("".join(values[k] for k in keys))
    if len(data) != int(info["bytes"]):
        raise IndexDamaged(f"Milvus collection {loc.meta}: {name!r} has {len(data)} bytes, expected {info['bytes']}")
    return data


def read_state(client: Any, loc: MilvusLocation, authoritative: bool = False) -> dict[str, Any]:
    """{"rows": committed rows, "build": id of the copy, "lexical_rows", "ts": timestamp of the
    commit's last write}. Two copies (see `write_state`): the meta collection's `state` row, the
    truth, read Strong (~200 ms on a server) when `authoritative` or after this process saw the
    server away; else its mirror, a property of the meta collection, read from Milvus's
    metadata in one ~1 ms call. An authoritative read repairs a mirror that lags the row."""
    authoritative = authoritative or client.suspect
    try:
        info = client.describe_collection(loc.meta)
    except StoreUnavailable:
        raise
    except Exception as exc:
        if not client.has_collection(loc.meta):
            raise IndexNotFound(f"Milvus collection {loc.meta} at {loc.uri} does not exist") from exc
        raise
    mirror = (info.get("properties") or {}).get(STATE_KEY)
    raw = mirror
    if authoritative or raw is None:
        hits = client.query(loc.meta, ids=["state"], output_fields=["value"], consistency_level="Strong")
        raw = hits[0]["value"] if hits else None
    if raw is None:
        raise IndexNotFound(f"Milvus collection {loc.collection} at {loc.uri} has no committed state")
    state = dict(json.loads(raw))
    if mirror is not None and json.loads(mirror) != state:
        client.alter_collection_properties(loc.meta, properties={STATE_KEY: json.dumps(state, sort_keys=True)})
    client.suspect = False
    state.setdefault("ts", 0)
    return state


def write_state(client: Any, loc: MilvusLocation, state: Mapping[str, Any]) -> None:
    """Commit: the `state` row of the meta collection (a Milvus write: durable once
    acknowledged, kill -9 included), then its mirror, the meta collection's property, which
    every `read_state` after it sees in ~1 ms. Milvus 2.3.5 can lose the last property write
    in a kill -9 (tests/store/test_milvus_server.py saw it), so the row is the truth: writers
    read it, and a process that saw the server away reads it once and repairs the mirror."""
    text = json.dumps(dict(state), sort_keys=True)
    _put_values(client, loc, {"state": text})
    client.alter_collection_properties(loc.meta, properties={STATE_KEY: text})


def _lexical_bytes(lexical: LexicalIndex) -> bytes:
    """The lexical channel's own files (LexicalIndex.save) in one tar."""
    with tempfile.TemporaryDirectory() as tmp:
        lexical.save(Path(tmp))
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for file in sorted(Path(tmp).iterdir()):
                tar.add(file, arcname=file.name)
        return buffer.getvalue()


def _lexical_from_bytes(data: bytes) -> LexicalIndex:
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(tmp, filter="data")
        lexical = LexicalIndex.load(Path(tmp))
    lexical.cap = postings_cap(default_cap(lexical.nbase))  # as a published local base of that size
    return lexical


# ---- writing ---------------------------------------------------------------------------------
def _create_collection(
    client: Any, loc: MilvusLocation, dims: Mapping[str, int], index_type: str, shards: int | None = None
) -> None:
    """The products collection and one collection per modality (Milvus 2.3 allows one vector
    field per collection). A product lacking a modality has no entity in that modality's one."""
    from pymilvus import DataType

    kwargs: dict[str, Any] = {"num_shards": shards} if shards else {}
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("row", DataType.INT64, is_primary=True)
    schema.add_field("id", DataType.VARCHAR, max_length=512)
    schema.add_field("name", DataType.VARCHAR, max_length=RECORD_CHARS)
    schema.add_field("category_path", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=64, max_length=1024)
    schema.add_field("record", DataType.VARCHAR, max_length=RECORD_CHARS)
    for modality in sorted(dims):
        schema.add_field(f"has_{modality}", DataType.BOOL)
    schema.add_field("_v", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants a vector field in every collection
    params = client.prepare_index_params()
    params.add_index("_v", index_type="FLAT", metric_type="IP")
    _create_unloaded(client, loc.collection, schema, params, **kwargs)
    for modality, dim in sorted(dims.items()):
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field(
            "category_path", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=64, max_length=1024
        )
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
        params = client.prepare_index_params()
        if index_type == "HNSW":
            params.add_index("vector", index_type="HNSW", metric_type="IP", params=dict(HNSW_BUILD))
        elif index_type == "IVF_SQ8":
            params.add_index("vector", index_type="IVF_SQ8", metric_type="IP", params=dict(IVF_BUILD))
        else:
            params.add_index("vector", index_type="FLAT", metric_type="IP")
        _create_unloaded(client, loc.channel(modality), schema, params, **kwargs)


def _write_rows(
    client: Any,
    loc: MilvusLocation,
    products: Sequence[Product],
    start: int,
    vectors: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray],
    deleted: np.ndarray | None = None,
    rows: Sequence[int] | None = None,
    fresh: bool = False,
) -> int:
    """Upsert products at rows start, start+1, ... (or at `rows`) and, per modality, the vectors
    of those that have it (vectors[m][i] is product i's; present[m][i] says whether it has one).
    A `deleted` product keeps its record, marked, loses its path and flags, and its vectors are
    deleted from the modality collections. `fresh` rows (a collection being filled, never
    written at those rows) are inserted instead of upserted. Returns the timestamp of the last
    write. O(batch·d)."""
    write = client.insert_ts if fresh else client.upsert_ts
    ts = 0
    gone = np.zeros(len(products), bool) if deleted is None else np.asarray(deleted, bool)
    at = [start + i for i in range(len(products))] if rows is None else [int(r) for r in rows]
    for lo in range(0, len(products), INSERT_ROWS):
        hi = min(lo + INSERT_ROWS, len(products))
        entities = []
        for i in range(lo, hi):
            product = products[i]
            fields = dict(product.to_record(), deleted=True) if gone[i] else product.to_record()
            record = json.dumps(fields, ensure_ascii=False)
            if len(record) > RECORD_CHARS:
                raise ValueError(f"product {product.id}: record of {len(record)} characters exceeds {RECORD_CHARS}")
            entity: dict[str, Any] = {
                "row": at[i],
                "id": product.id,
                "name": (product.name or "")[:RECORD_CHARS],
                "category_path": [] if gone[i] else list(product.category_path),
                "record": record,
                "_v": [1.0, 0.0],
            }
            for modality in vectors:
                entity[f"has_{modality}"] = bool(present[modality][i]) and not gone[i]
            entities.append(entity)
        for modality, vecs in vectors.items():
            channel = [
                {"row": at[i], "category_path": list(products[i].category_path), "vector": vecs[i].tolist()}
                for i in range(lo, hi)
                if present[modality][i] and not gone[i]
            ]
            if channel:
                ts = max(ts, write(loc.channel(modality), channel))
            doomed = [at[i] for i in range(lo, hi) if gone[i]]
            if doomed:
                ts = max(ts, client.delete_ts(loc.channel(modality), doomed))
        ts = max(ts, write(loc.collection, entities))
    return ts


def collections(loc: MilvusLocation) -> list[str]:
    """Every collection an index may have: products, meta, one per modality."""
    return [loc.collection, loc.meta, *(loc.channel(m) for m in MODALITIES)]


class MilvusWriter:
    """Streams products and their vectors into a new collection, then commits it: the one
    writer of `copy_to_milvus` (an index already built) and `ingest --store` (shards straight
    into Milvus, no FAISS index built first). `add` has `BaseWriter.add`'s signature.

    O(batch·d) memory; O(N·d) time. Refuses an existing collection unless `replace` (which
    drops it first). Nothing is visible to readers before `commit`."""

    def __init__(
        self, location: MilvusLocation, dims: Mapping[str, int], index_type: str = "FLAT", replace: bool = False
    ) -> None:
        self.loc, self.dims = location, {m: int(d) for m, d in dims.items()}
        self.index_type = index_type.upper()
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"Milvus index type must be one of {INDEX_TYPES}, got {index_type!r}")
        self.client = client_for(location.uri)
        for name in collections(location):
            if self.client.has_collection(name):
                if not replace:
                    raise IndexStoreError(
                        f"Milvus collection {name} exists at {location.uri} (pass --replace to overwrite)"
                    )
                self.client.drop_collection(name)
        _LOADED.pop((location.uri, location.collection), None)
        _create_meta(self.client, location)
        _create_collection(self.client, location, self.dims, self.index_type)
        self.count, self.ts = 0, 0
        self.counts = dict.fromkeys(self.dims, 0)
        self.manifest: dict[str, Any] = {}

    def add(
        self,
        products: Sequence[Product],
        vectors: Mapping[str, tuple[np.ndarray, np.ndarray]],
        normalize: bool = True,
        deleted: np.ndarray | None = None,
    ) -> None:
        """Products at the next rows and, per modality, (vectors, positions of their products in
        this batch); vectors are L2-normalised here unless `normalize` is False (a copy keeps
        the stored values exactly); `deleted` marks products copied as deleted. O(batch)."""
        unknown = set(vectors) - set(self.dims)
        if unknown:
            raise ValueError(f"unknown modality {sorted(unknown)!r}")
        full, present = {}, {}
        for modality, dim in self.dims.items():
            out = np.zeros((len(products), dim), np.float32)
            has = np.zeros(len(products), bool)
            if modality in vectors:
                vecs, positions = vectors[modality]
                positions = np.asarray(positions, dtype=np.int64)
                if len(positions) and (positions.min() < 0 or positions.max() >= len(products)):
                    raise ValueError(f"{modality}: positions point outside the batch of {len(products)} products")
                if len(positions):
                    vecs = np.asarray(vecs, dtype=np.float32)
                    out[positions] = l2_normalize(vecs) if normalize else vecs
                has[positions] = True
            if deleted is not None:
                has &= ~np.asarray(deleted, bool)
            full[modality], present[modality] = out, has
            self.counts[modality] += int(has.sum())
        written = _write_rows(self.client, self.loc, products, self.count, full, present, deleted, fresh=True)
        self.ts = max(self.ts, written)
        self.count += len(products)

    def stage(self, manifest: Mapping, lexical: LexicalIndex | None) -> dict[str, Any]:
        """Write the manifest (this backend's fields added) and the lexical channel; the state
        a `commit` publishes, which `MilvusIndexStore.open(..., state=)` can already read."""
        manifest = {k: v for k, v in manifest.items() if k not in ("files", "deltas")}
        manifest["store"] = {"backend": "milvus", "index_type": self.index_type, "schema_version": SCHEMA_VERSION}
        manifest["dims"] = self.dims
        manifest["counts"] = {"products": self.count, **self.counts}
        if lexical is not None and not manifest.get("lexical"):
            count = int(lexical.ntotal)
            manifest["lexical"] = {"model_id": lexical.model_id, "vocabulary": lexical.dim, "count": count}
        if lexical is not None:
            self.ts = max(self.ts, put_blob(self.client, self.loc, "lexical", _lexical_bytes(lexical)))
        self.manifest = manifest
        return self.amend({})

    def amend(self, entries: Mapping[str, Any]) -> dict[str, Any]:
        """Rewrite the manifest with `entries` added (the calibration made on the staged store);
        the state to commit (a new build id: a process that read the old manifest reloads)."""
        self.manifest = {**self.manifest, **entries}
        ts = put_blob(self.client, self.loc, "manifest", json.dumps(self.manifest, sort_keys=True).encode())
        self.ts = max(self.ts, ts)
        lexical_rows = self.count if self.manifest.get("lexical") else 0
        return {"rows": self.count, "build": uuid.uuid4().hex, "lexical_rows": lexical_rows, "ts": self.ts}

    @property
    def where(self) -> str:
        return f"collection {self.loc.collection} at {self.loc.uri}"

    def staged(self, state: Mapping[str, Any]) -> MilvusIndexStore:
        """The collection as `state` (from `stage`/`amend`, not committed) describes it: what the
        calibration of an ingest runs on, exactly the vectors that will be served."""
        self.client.flush_all([self.loc.collection, *(self.loc.channel(m) for m in self.dims)])
        return MilvusIndexStore.open(self.loc, state=state)

    def abort(self) -> None:
        """Drop what was written (nothing was committed)."""
        drop(self.loc)

    def commit(self, state: Mapping[str, Any]) -> MilvusLocation:
        """Publish: flush the collections (sealed segments get their index built) and write the state."""
        self.client.flush_all([self.loc.collection, *(self.loc.channel(m) for m in self.dims)])
        write_state(self.client, self.loc, state)
        return self.loc


def copy_to_milvus(
    store: IndexStore,
    location: str | Path | MilvusLocation,
    index_type: str = "FLAT",
    replace: bool = False,
    progress: Callable[[int, int], None] | None = None,
    collection: str | None = None,
) -> MilvusLocation:
    """Copy a loaded index (any backend) into a new Milvus collection: products, vectors as
    stored (float16 values kept exactly in float32), lexical channel and manifest.

    O(N·d) time, O(batch·d) memory beyond the source store. Refuses an existing collection
    unless `replace` (which drops it first)."""
    loc = location if isinstance(location, MilvusLocation) else MilvusLocation.parse(location, collection)
    dense = {m: c for m, c in store.modalities.items() if m in MODALITIES}
    dims = {m: int(np.shape(c.vectors)[1]) for m, c in dense.items()}
    writer = MilvusWriter(loc, dims, index_type, replace)
    n = len(store.products)
    for lo in range(0, n, INSERT_ROWS):
        rows = np.arange(lo, min(lo + INSERT_ROWS, n))
        vectors = {}
        for modality, channel in dense.items():
            pos = store.positions(modality)[rows]
            has = np.flatnonzero(pos >= 0)
            vecs = np.zeros((0, dims[modality]), np.float32)
            if len(has):
                vecs = np.asarray(channel.vectors[pos[has]], dtype=np.float32)
            vectors[modality] = (vecs, has)
        gone = np.isin(rows, store.deleted)
        writer.add([store.products[int(r)] for r in rows], vectors, normalize=False, deleted=gone)
        if progress is not None:
            progress(int(rows[-1]) + 1, n)
    return writer.commit(writer.stage(store.manifest, store.lexical))


# ---- reading -------------------------------------------------------------------------------
class RowVectors:
    """Recently read vectors of one loaded store, all modalities: a request reads each of its
    candidates' vectors once (one query per modality collection) and the query's own vectors
    once. Rows are immutable once committed, so the LRU (CACHED_ROWS vectors of each modality)
    never serves stale data."""

    def __init__(self, client: Any, loc: MilvusLocation, fields: Sequence[str], ts: int = 0) -> None:
        self.client, self.loc, self.fields = client, loc, list(fields)
        self.read = read_options(ts)  # every read sees the commit this store was loaded at
        self._rows: dict[str, OrderedDict[int, Any]] = {f: OrderedDict() for f in self.fields}
        self._lock = threading.Lock()

    def get(self, rows: np.ndarray, field: str) -> dict[int, Any]:
        """{row: vector} of one modality for these rows: one query per FETCH_ROWS rows not cached."""
        cache = self._rows[field]
        unique = [int(r) for r in np.unique(rows)]
        with self._lock:
            found = {r: cache[r] for r in unique if r in cache}
            for r in found:
                cache.move_to_end(r)
        missing = [r for r in unique if r not in found]
        fetched: dict[int, Any] = {}
        name = self.loc.channel(field)
        for lo in range(0, len(missing), FETCH_ROWS):
            for hit in self.client.query(
                name, ids=missing[lo : lo + FETCH_ROWS], output_fields=["vector"], **self.read
            ):
                fetched[int(hit["row"])] = np.asarray(hit["vector"], np.float32)
        lost = [r for r in missing if r not in fetched]
        if lost:
            raise IndexDamaged(f"Milvus collection {name} lacks rows {lost[:5]}")
        if fetched:
            with self._lock:
                cache.update(fetched)
                while len(cache) > CACHED_ROWS:
                    cache.popitem(last=False)
        return {**found, **fetched}


class MilvusVectors:
    """The stored vectors of one modality, read from Milvus by primary key (position p is
    product row `rows[p]`) through the store's RowVectors: O(len·d) per read. A whole-matrix
    use (`np.asarray`, `.T`, `@`: the evaluation's batch similarities) reads every vector once
    by row ranges, O(N·d), and keeps them."""

    dtype = np.dtype(np.float32)

    def __init__(self, source: RowVectors, field: str, rows: np.ndarray, dim: int) -> None:
        self.source, self.field, self.rows, self.dim = source, field, rows, dim
        self._all: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.rows), self.dim)

    def __len__(self) -> int:
        return len(self.rows)

    def fetch_rows(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of these product rows, in that order: O(len(rows)·d)."""
        rows = np.asarray(rows, dtype=np.int64)
        found = self.source.get(rows, self.field)
        if len(rows) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([found[r] for r in rows.tolist()])

    def _fetch_all(self) -> np.ndarray:
        out = np.zeros((len(self.rows), self.dim), np.float32)
        positions = np.full(int(self.rows.max(initial=-1)) + 1, -1, np.int64)
        positions[self.rows] = np.arange(len(self.rows))
        client, loc = self.source.client, self.source.loc
        for lo in range(0, len(positions), FETCH_ROWS):
            hi = min(lo + FETCH_ROWS, len(positions))
            for hit in client.query(
                loc.channel(self.field),
                filter=f"row >= {lo} and row < {hi}",
                output_fields=["vector"],
                limit=hi - lo,
                **self.source.read,
            ):
                p = positions[int(hit["row"])]
                if p >= 0:
                    out[p] = hit["vector"]
        return out

    def __getitem__(self, positions: Any) -> np.ndarray:
        if self._all is not None:
            return self._all[positions]
        if isinstance(positions, (int, np.integer)):
            return self.fetch_rows(self.rows[[int(positions)]])[0]
        return self.fetch_rows(self.rows[positions])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if self._all is None:
            self._all = self._fetch_all()
        return self._all if dtype is None else self._all.astype(dtype)

    @property
    def T(self) -> np.ndarray:  # noqa: N802 - numpy's name
        return np.asarray(self).T

    def __matmul__(self, other: Any) -> np.ndarray:
        return np.asarray(self) @ other

    def __rmatmul__(self, other: Any) -> np.ndarray:
        return other @ np.asarray(self)

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.dim * 4


class ExpressionFilter(PositionFilter):
    """Allowed positions that Milvus selects with a filter expression (a category prefix)."""

    def __init__(self, positions: np.ndarray, ntotal: int, expression: str) -> None:
        super().__init__(positions, ntotal)
        self.expression = expression


class CategoryRowFilter(RowFilter):
    """A category's rows whose dense channels filter inside Milvus by expression."""

    def __init__(self, store: RowSource, rows: np.ndarray, path: Sequence[str]) -> None:
        super().__init__(store, rows)
        self.expression = category_expression(path)

    def channel(self, name: str) -> PositionFilter | None:
        if name not in self._channels and isinstance(self.store.channels().get(name), MilvusChannel):
            plain = super().channel(name)
            assert plain is not None
            self._channels[name] = ExpressionFilter(plain.positions, plain.ntotal, self.expression)
        return super().channel(name)


class MilvusCategoryIndex(CategoryIndex):
    """The store's category index, whose filters become Milvus filter expressions."""

    def filter(self, path: Sequence[str]) -> RowFilter | None:
        key = tuple(path)
        if key not in self._filters:
            rows = self.rows.get(key)
            if rows is None:
                return None
            self._filters[key] = CategoryRowFilter(self.store, rows, key)
        return super().filter(path)


class SearchMemo:
    """The scores a channel's last searches returned, by query: a prediction's candidates are
    mostly its searches' own hits, so scoring them needs the server only for the others. The
    scores are the ones a scoring search would return (the same index, the same distance).
    With each query it keeps a floor: the lowest score its searches returned when each returned
    its full limit. A row those searches did not return scores at most that (exactly so for an
    exhaustive FLAT search; an approximate index can miss a row above it, as it can miss it in
    the search itself), which is what `MilvusChannel.bounded_similarity` answers for it.
    Bounded (RECENT_QUERIES), shared by a process's threads; O(k) per query remembered, O(rows
    known) per look-up."""

    def __init__(self) -> None:
        self._scores: OrderedDict[bytes, tuple[dict[int, float], float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, queries: np.ndarray, sims: np.ndarray, rows: np.ndarray) -> None:
        """One search's results (rows -1 past the end: the search returned fewer than its limit,
        so it gives no floor). Merged with the query's earlier searches: the floor is the highest
        of theirs (every candidate of a prediction was allowed in its own search, so that search's
        floor bounds it, and the highest floor bounds every search's), none if one had none."""
        with self._lock:
            for query, s, r in zip(queries, sims, rows, strict=True):
                key = query.tobytes()
                known, floor = self._scores.pop(key, ({}, -np.inf))
                known.update((int(row), float(sim)) for row, sim in zip(r, s, strict=True) if row >= 0)
                full = len(r) > 0 and bool((r >= 0).all())
                if floor is not None:
                    floor = max(floor, float(s.min())) if full else None
                self._scores[key] = (known, floor)
            while len(self._scores) > RECENT_QUERIES:
                self._scores.popitem(last=False)

    def known(self, query: np.ndarray) -> dict[int, float]:
        return self.remembered(query)[0]

    def remembered(self, query: np.ndarray) -> tuple[dict[int, float], float | None]:
        """(scores by row, floor) of a query's remembered searches; floor None: no bound known."""
        with self._lock:
            known, floor = self._scores.get(query.tobytes(), ({}, None))
            return dict(known), floor


def bound_depth(search_params: Mapping[str, Any]) -> int:
    """The rows a search of a few queries asks for (`MilvusChannel.search`): MILVUS_BOUND_DEPTH,
    else DEFAULT_BOUND_DEPTH, at most HNSW's ef (past it the graph search would widen)."""
    configured = os.environ.get("MILVUS_BOUND_DEPTH")
    ef = search_params.get("params", {}).get("ef")
    depth = int(configured) if configured else (int(ef) if ef is not None else DEFAULT_BOUND_DEPTH)
    if depth < 0:
        raise ValueError(f"MILVUS_BOUND_DEPTH must be 0 or more, not {depth}")
    return min(depth, int(ef)) if ef is not None else depth


@dataclass
class MilvusChannel:
    """One dense modality searched in Milvus; `rows[i]` is the product row of position i."""

    client: Any
    loc: MilvusLocation
    modality: str
    rows: np.ndarray
    vectors: MilvusVectors
    committed: int
    search_params: dict
    read: dict = field(default_factory=dict)  # consistency options: see the module docstring
    memo: SearchMemo = field(default_factory=SearchMemo)
    bound_depth: int = 0  # rows a search of a few queries asks for, remembered only (DEFAULT_BOUND_DEPTH)

    @property
    def ntotal(self) -> int:
        return len(self.rows)

    def _expression(self, allowed: PositionFilter | None) -> str:
        base = f"row < {self.committed}"
        if allowed is None:
            return base
        if isinstance(allowed, ExpressionFilter):
            return f"{base} and {allowed.expression}"
        rows = self.rows[allowed.positions]
        if 2 * len(rows) <= self.ntotal:
            return f"{base} and row in {json.dumps(rows.tolist())}"
        excluded = np.setdiff1d(self.rows, rows, assume_unique=True)
        return f"{base} and row not in {json.dumps(excluded.tolist())}" if len(excluded) else base

    def search(
        self, queries: np.ndarray, k: int, allowed: PositionFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, product rows) of the k nearest vectors (rows -1 past the end), by
        Milvus's search with the filter expression: FLAT O(N·d), HNSW ~O(ef·log N·d), IVF_SQ8
        O(segments·(nlist + nprobe·rows per list)·d) per query, plus O(limit) per query to read
        the hits. A search of at most RECENT_QUERIES queries asks for `bound_depth` rows when
        that is more than k, remembers them all (`SearchMemo`) and returns the first k: the
        same k (a heap's top k of the same scan), with more known scores and a lower floor.
        A position filter that is not a category becomes `row in [...]` (or `not in`, the
        shorter list): O(|list|) to send and parse."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n = len(queries)
        available = self.ntotal if allowed is None else len(allowed)
        if n == 0 or available == 0:
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        k = max(1, min(k, available, MAX_LIMIT))
        limit = max(k, min(self.bound_depth, available, MAX_LIMIT)) if n <= RECENT_QUERIES else k
        hits = self.client.search(
            self.loc.channel(self.modality),
            data=queries.tolist(),
            anns_field="vector",
            limit=limit,
            filter=self._expression(allowed),
            search_params=self.search_params,
            **self.read,
        )
        sims = np.zeros((n, limit), np.float32)
        rows = np.full((n, limit), -1, np.int64)
        for i, found in enumerate(hits):
            got = min(len(found.ids), limit)  # the primary keys (`row`) and scores, as lists
            sims[i, :got], rows[i, :got] = found.distances[:got], found.ids[:got]
        self.memo.remember(queries, sims, rows)
        return sims[:, :k], rows[:, :k]

    def _scoring_params(self, count: int) -> dict:
        """Search parameters under which a search restricted to `count` rows can return them all:
        HNSW's candidate list at least `count` long, every IVF list probed."""
        params = dict(self.search_params.get("params", {}))
        if "ef" in params:
            params["ef"] = max(int(params["ef"]), count)
        if "nprobe" in params:
            params["nprobe"] = EVERY_LIST
        return {**self.search_params, "params": params}

    def bounded_similarity(self, query: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(scores, loose) of one query at `positions` without a round trip when its searches are
        remembered (`SearchMemo`): the rows they returned keep their scores, the others get the
        floor, an upper bound, marked True in `loose`. With no floor known, the exact scores of
        `similarity` (a round trip), loose None. O(len(positions))."""
        positions = np.asarray(positions, dtype=np.int64)
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        known, floor = self.memo.remembered(query)
        if floor is None or len(positions) == 0:
            return self.similarity(query, positions), None
        rows = self.rows[positions].tolist()
        loose = np.array([r not in known for r in rows], dtype=bool)
        return np.array([known.get(r, floor) for r in rows], np.float32), loose

    def similarity(self, query: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Cosine of one query to the vectors at `positions`, scored by the server: one search
        restricted to those rows (`row in [...]`, limit = their number), O(len(positions)·d) of
        distances plus the filter's O(N) pass per segment; no vector crosses the wire.
        The scores are the index's own: exact for FLAT and HNSW (they keep the floats),
        quantized to a byte per dimension for IVF_SQ8. Rows this channel's search just returned
        for the same query keep that search's scores (`SearchMemo`): only the others are asked.
        A row the search did not return (a graph search that stopped short) is scored here from
        its fetched vector."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) == 0:
            return np.zeros(0, np.float32)
        rows = self.rows[positions]
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        scores = self.memo.known(query)
        unique = np.setdiff1d(rows, np.fromiter(scores, np.int64, len(scores)))
        for lo in range(0, len(unique), MAX_LIMIT):
            chunk = unique[lo : lo + MAX_LIMIT]
            hits = self.client.search(
                self.loc.channel(self.modality),
                data=[query.tolist()],
                anns_field="vector",
                limit=len(chunk),
                filter=f"row in {json.dumps(chunk.tolist())}",
                search_params=self._scoring_params(len(chunk)),
                **self.read,
            )
            for hit in hits[0] if hits else []:
                scores[int(hit.id)] = float(hit["distance"])
        missing = np.array([r for r in unique.tolist() if r not in scores], np.int64)
        if len(missing):
            fetched = self.vectors.source.get(missing, self.modality)
            for r in missing.tolist():
                scores[r] = float(fetched[r] @ query)
        return np.array([scores[r] for r in rows.tolist()], np.float32)


@dataclass
class _Snapshot:
    """What a process has read of a collection: kept so a reload after an add or a change reads
    only the new or changed rows."""

    build: str
    manifest: dict
    products: list[Product]
    present: dict[str, list[np.ndarray]]
    lexical: LexicalIndex | None
    lexical_rows: int
    ts: int = 0  # timestamp of the last commit read
    deleted: frozenset[int] = frozenset()
    changes: int = 0  # change entries read (`state.changes` when they were)


_LOADED: dict[tuple[str, str], _Snapshot] = {}


def _parse_record(raw: str) -> tuple[Product, bool]:
    """A stored record as (product, deleted); a deleted product reads with no category path."""
    record = json.loads(raw)
    product = Product.from_record(record)
    if record.get("deleted"):
        return dataclasses.replace(product, category_path=()), True
    return product, False


def _fetch_products(
    client: Any, loc: MilvusLocation, modalities: Sequence[str], lo: int, hi: int, ts: int
) -> tuple[list[Product], dict[str, np.ndarray], set[int]]:
    """Products at rows [lo, hi), their has_<modality> flags and which rows are deleted:
    O(hi - lo) entities."""
    fields = ["record", *(f"has_{m}" for m in modalities)]
    products: list[Product | None] = [None] * (hi - lo)
    present = {m: np.zeros(hi - lo, bool) for m in modalities}
    deleted = set()
    for start in range(lo, hi, FETCH_ROWS):
        stop = min(start + FETCH_ROWS, hi)
        for hit in client.query(
            loc.collection,
            filter=f"row >= {start} and row < {stop}",
            output_fields=fields,
            limit=stop - start,
            **read_options(ts),
        ):
            i = int(hit["row"]) - lo
            products[i], gone = _parse_record(hit["record"])
            if gone:
                deleted.add(lo + i)
            for m in modalities:
                present[m][i] = bool(hit[f"has_{m}"])
    missing = [lo + i for i, p in enumerate(products) if p is None]
    if missing:
        raise IndexDamaged(f"Milvus collection {loc.collection} lacks committed rows {missing[:5]}")
    return [p for p in products if p is not None], present, deleted


class MilvusIndexStore(IndexStore):
    """An IndexStore backed by a Milvus collection (see the module docstring)."""

    backend: ClassVar[str] = "milvus"
    remote_reads: ClassVar[bool] = True  # the channels' searches and scorings wait on the server
    location: MilvusLocation
    build: str
    state: dict[str, Any]  # the commit state it was loaded at
    changes_read: int = 0

    @classmethod
    def open(
        cls,
        location: str | Path | MilvusLocation,
        encoder: Encoder | None = None,
        local: Path | None = None,
        state: Mapping[str, Any] | None = None,
        authoritative: bool = False,
    ) -> MilvusIndexStore:
        """Load the committed rows; with `encoder`, refuse an index of other models (IndexMismatch).

        First load in a process: O(N) entities read (records and flags, not vectors) plus the
        lexical channel; a reload after adds reads only the rows added since (O(added)), after
        deletes or relabels only the rows they name (O(changed), plus an O(N) copy of the
        product list's pointers and flags so stores loaded before keep theirs).
        `local` is the index folder of uploaded photos, the embedding cache and the audit trail
        (the service's INDEX_DIR); by default the Lite database's folder. `state` opens a staged state that is
        not committed yet (`MilvusWriter.stage`: the calibration of an ingest); `authoritative`
        reads the state's truth (`read_state`), as a writer must."""
        loc = location if isinstance(location, MilvusLocation) else MilvusLocation.parse(location)
        client = client_for(loc.uri)
        if not client.has_collection(loc.collection) or not client.has_collection(loc.meta):
            raise IndexNotFound(
                f"no Milvus collection {loc.collection} at {loc.uri} "
                f"(copy an index into it: python -m indexer to-milvus INDEX_DIR {loc.uri})"
            )
        client.load_collection(loc.meta)
        state = dict(state) if state is not None else read_state(client, loc, authoritative)
        ts = int(state.get("ts", 0))
        changes = int(state.get("changes", 0))
        key = (loc.uri, loc.collection)
        snap = _LOADED.get(key)
        if (
            snap is None
            or snap.build != state["build"]
            or len(snap.products) > int(state["rows"])
            or snap.changes > changes
        ):
            manifest = json.loads(get_blob(client, loc, "manifest", ts))
            lexical = _lexical_from_bytes(get_blob(client, loc, "lexical", ts)) if manifest.get("lexical") else None
            version = manifest.get("store", {}).get("schema_version")
            if version != SCHEMA_VERSION:
                raise IndexStoreError(
                    f"Milvus collection {loc.collection} has layout {version}, this code reads {SCHEMA_VERSION}: "
                    f"copy the index again (python -m indexer to-milvus INDEX_DIR {loc.uri} --replace)"
                )
            snap = _Snapshot(state["build"], manifest, [], {m: [] for m in manifest["dims"]}, lexical, 0)
            snap.lexical_rows = int(state.get("lexical_rows", 0))
            snap.changes = changes  # a first read sees every committed change in the records
        if encoder is not None:
            check_compatible(snap.manifest, encoder)
        client.load_all([loc.collection, *(loc.channel(m) for m in snap.manifest["dims"])])
        committed = int(state["rows"])
        if len(snap.products) < committed:
            snap = _extend(snap, client, loc, committed, ts)
        if snap.changes < changes:
            snap = _reread_changed(snap, client, loc, changes, ts)
        snap.ts = ts
        _LOADED[key] = snap
        store = cls._from_snapshot(snap, client, loc, local)
        store.state = state
        store.changes_read = snap.changes
        return store

    @classmethod
    def _from_snapshot(cls, snap: _Snapshot, client: Any, loc: MilvusLocation, local: Path | None) -> MilvusIndexStore:
        n = len(snap.products)
        manifest = dict(snap.manifest)
        params: dict[str, Any] = {"metric_type": "IP"}
        index_type = manifest.get("store", {}).get("index_type")
        if index_type == "HNSW":
            ef = int(os.environ.get("MILVUS_EF") or manifest.get("store", {}).get("ef") or DEFAULT_EF)
            params["params"] = {"ef": ef}
        elif index_type == "IVF_SQ8":
            nprobe = int(os.environ.get("MILVUS_NPROBE") or manifest.get("store", {}).get("nprobe") or DEFAULT_NPROBE)
            params["params"] = {"nprobe": nprobe}
        depth = bound_depth(params)
        modalities: dict[str, Any] = {}
        source = RowVectors(client, loc, sorted(snap.present), snap.ts)
        counts = {"products": n}
        for modality, parts in snap.present.items():
            present = np.concatenate(parts) if parts else np.zeros(0, bool)
            rows = np.flatnonzero(present).astype(np.int64)
            vectors = MilvusVectors(source, modality, rows, int(manifest["dims"][modality]))
            modalities[modality] = MilvusChannel(
                client, loc, modality, rows, vectors, n, params, source.read, bound_depth=depth
            )
            counts[modality] = len(rows)
        copied = int(snap.manifest.get("counts", {}).get("products", n))
        manifest["counts"] = counts
        if n > copied:
            manifest["added_products"] = int(manifest.get("added_products", 0)) + n - copied
        if n > copied or snap.changes:
            manifest["categories"] = sorted({p.category for p in snap.products if p.category})
        if snap.deleted:
            manifest["deleted_products"] = len(snap.deleted)
        if snap.lexical is not None and manifest.get("lexical"):
            manifest["lexical"] = dict(manifest["lexical"], count=int(snap.lexical.ntotal))
        if local is None:
            local = Path(loc.uri).parent if loc.lite else Path(".")
        store = cls(
            path=Path(local),
            version=f"milvus-{snap.build[:8]}-{n}-{snap.changes}",
            manifest=manifest,
            products=snap.products,
            modalities=modalities,
            lexical=snap.lexical,
            deleted=np.asarray(sorted(snap.deleted), dtype=np.int64),
        )
        store.location, store.build = loc, snap.build
        return store

    @classmethod
    def load(
        cls,
        path: str | Path,
        encoder: Encoder | None = None,
        version: str | None = None,
        checksums: bool = False,
    ) -> MilvusIndexStore:
        """The IndexStore.load signature: `path` is a Milvus location; there are no versions to pick."""
        if version is not None:
            raise ValueError("a Milvus store has no versions to choose from")
        return cls.open(path, encoder)

    def is_stale(self) -> bool:
        """True when any process committed an add (or a new copy): one ~1 ms metadata read (`read_state`)."""
        try:
            state = read_state(self.modalities_client(), self.location)
        except IndexNotFound:
            return False
        return (
            state["build"] != self.build
            or int(state["rows"]) != len(self.products)
            or int(state.get("changes", 0)) != self.changes_read
        )

    def modalities_client(self) -> Any:
        return client_for(self.location.uri)

    def category_index(self) -> CategoryIndex:
        if "categories" not in self._lookups:
            self._lookups["categories"] = MilvusCategoryIndex(self, self.category_codes())
        return self._lookups["categories"]

    # ---- writing --------------------------------------------------------------------------
    def _live(self) -> MilvusIndexStore:
        """The live store for a writer holding the lock, from the state's truth (`read_state`):
        a change a killed writer left half done is finished first, and the last write's audit
        events recorded if they were not."""
        loc = self.location
        client = client_for(loc.uri)
        state = read_state(client, loc, authoritative=True)
        pending = _change_entry(client, loc, int(state.get("changes", 0)) + 1, int(state.get("ts", 0)))
        if pending is not None:
            live = type(self).open(loc, local=self.path, state=state)
            ts = _apply_change(client, loc, live, pending)
            _commit_change(client, loc, int(state.get("changes", 0)) + 1, ts)
            state = read_state(client, loc, authoritative=True)
        live = type(self).open(loc, local=self.path, state=state)
        _journal_last(client, loc, state, live)
        return live

    def insert(
        self,
        new_products: list[Product],
        new_vectors: Mapping[str, np.ndarray | None],
        before_publish: Callable[[IndexStore], None] | None = None,
        action: str = "add",
        actor: str = "cli",
        notes: Mapping[str, Mapping] | None = None,
    ) -> MilvusIndexStore:
        """Add products as Milvus upserts at the next rows, then commit `state.rows`: O(batch).
        Each product is an audit event (`action` by `actor`, `notes[id]` joining its `after`),
        recorded right after the commit.

        Writers of one machine are serialised by a file lock (for Lite, beside the database;
        for a server, in the temp folder): several hosts adding to one server collection at
        once are not coordinated here (see docs/milvus.md)."""
        loc = self.location
        client = client_for(loc.uri)
        info: dict[str, Any] = {"event": new_event_id(), "time": utc_now(), "action": action, "actor": actor}
        if notes:
            info["notes"] = {str(k): dict(v) for k, v in notes.items()}
        events = _add_events(new_products, info)  # checks the action and actor before anything is written
        with write_lock(_lock_dir(loc)):
            live = self._live()
            clash = [p.id for p in new_products if live.row_of(p.id) is not None]
            if clash:
                raise DuplicateProduct(clash)
            if before_publish is not None:
                before_publish(live)
            start = len(live.products)
            dims = {m: int(d) for m, d in live.manifest["dims"].items()}
            vectors, present = {}, {}
            for modality, dim in dims.items():
                added = new_vectors.get(modality)
                out = np.zeros((len(new_products), dim), np.float32)
                has = np.zeros(len(new_products), bool)
                if added is not None:
                    added = np.asarray(added, dtype=np.float32)
                    if added.shape != (len(new_products), dim):
                        raise ValueError(f"{modality} vectors have shape {added.shape}, expected {out.shape}")
                    has = ~np.isnan(added).any(axis=1)
                    if has.any():
                        out[has] = l2_normalize(added[has])
                vectors[modality], present[modality] = out, has
            unknown = set(new_vectors) - set(dims)
            if unknown:
                raise ValueError(f"unknown modality {sorted(unknown)!r}")
            ts = put_blob(client, loc, f"add/{start}", json.dumps(info, ensure_ascii=False).encode())
            ts = max(ts, _write_rows(client, loc, new_products, start, vectors, present))
            state = dict(live.state)
            state["rows"] = start + len(new_products)
            state["ts"] = max(int(state.get("ts", 0)), ts)
            state["last"] = {"add": [start, start + len(new_products)]}
            write_state(client, loc, state)  # the commit: acknowledged once this returns
            AuditLog(self.path).record_events(events)
            return type(self).open(loc, local=self.path, state=state)

    def change(
        self,
        deletes: Iterable[str] = (),
        relabels: Mapping[str, Iterable[str]] | None = None,
        actor: str = "cli",
    ) -> MilvusIndexStore:
        """Delete and/or relabel products: O(batch) writes (see the module docstring for the
        order that makes a killed writer's change finish, not vanish). A deleted product is in no
        search, vote or category count from the next load on (its vectors, flags and path are
        cleared); a relabel may name a path no product has yet; one equal to the product's own
        changes nothing. Refused whole, nothing written: an unknown or deleted id
        (ProductNotFound), a malformed path (CategoryPathError), an id both deleted and
        relabelled (ValueError)."""
        doomed, wanted = checked_change(deletes, relabels)
        loc = self.location
        client = client_for(loc.uri)
        at = utc_now()
        with write_lock(_lock_dir(loc)):
            live = self._live()
            found = {pid: live.row_of(pid) for pid in [*doomed, *wanted]}
            missing = [pid for pid, row in found.items() if row is None]
            if missing:
                raise ProductNotFound(missing)
            rows = {pid: int(row) for pid, row in found.items() if row is not None}
            entry: dict[str, Any] = {"deletes": [], "relabels": [], "records": {}, "events": []}
            for pid in doomed:
                row, before = rows[pid], live.products[rows[pid]].to_record()
                entry["deletes"].append(row)
                entry["records"][str(row)] = before
                entry["events"].append(audit_event(pid, "delete", actor, before, None, at=at))
            for pid, new_path in wanted.items():
                row = rows[pid]
                product = live.products[row]
                if tuple(product.category_path) == new_path:
                    continue
                entry["relabels"].append(row)
                entry["records"][str(row)] = dict(product.to_record(), category_path=list(new_path))
                entry["events"].append(
                    audit_event(
                        pid,
                        "relabel",
                        actor,
                        {"category_path": list(product.category_path)},
                        {"category_path": list(new_path)},
                        at=at,
                    )
                )
            if not entry["events"]:
                return live
            seq = live.changes_read + 1
            ts = put_blob(client, loc, f"change/{seq}", json.dumps(entry, ensure_ascii=False).encode())
            ts = max(ts, _apply_change(client, loc, live, entry))
            state = _commit_change(client, loc, seq, ts)
            AuditLog(self.path).record_events(entry["events"])
            return type(self).open(loc, local=self.path, state=state)


def _add_events(products: Sequence[Product], info: Mapping[str, Any]) -> list[dict]:
    """The audit events of an add (`info`: its event id, time, action, actor, notes per id)."""
    notes = info.get("notes") or {}
    return [
        audit_event(
            p.id,
            info["action"],
            info["actor"],
            None,
            dict(p.to_record(), **notes.get(p.id, {})),
            event_id=f"{info['event']}/{i}",
            at=info["time"],
        )
        for i, p in enumerate(products)
    ]


def _change_entry(client: Any, loc: MilvusLocation, seq: int, ts: int) -> dict | None:
    """The change entry `change/<seq>`, None when none was written (its header goes last).
    Read Strong: an entry past the committed state carries no commit timestamp to wait for."""
    name = f"change/{seq}"
    hits = client.query(loc.meta, ids=[name], output_fields=["value"], consistency_level="Strong")
    if not hits:
        return None
    return dict(json.loads(get_blob(client, loc, name, ts)))


def _apply_change(client: Any, loc: MilvusLocation, live: MilvusIndexStore, entry: Mapping[str, Any]) -> int:
    """Write a change entry: deleted rows' records marked, paths and flags cleared, vectors
    deleted; relabelled rows with their new path, their vectors read back and written
    unchanged. Idempotent. O(batch·d). Returns the timestamp of the last write."""
    dims = {m: int(d) for m, d in live.manifest["dims"].items()}
    records = entry["records"]
    deletes = [int(r) for r in entry["deletes"]]
    relabels = [int(r) for r in entry["relabels"]]
    ts = 0
    if deletes:
        zeros = {m: np.zeros((len(deletes), d), np.float32) for m, d in dims.items()}
        none = {m: np.zeros(len(deletes), bool) for m in dims}
        products = [Product.from_record(records[str(r)]) for r in deletes]
        ts = _write_rows(client, loc, products, 0, zeros, none, np.ones(len(deletes), bool), rows=deletes)
    if relabels:
        read = read_options(int(live.state.get("ts", 0)))
        vectors, present = {}, {}
        for m, d in dims.items():
            hits = client.query(loc.channel(m), ids=relabels, output_fields=["vector"], **read)
            found = {int(h["row"]): h["vector"] for h in hits}
            present[m] = np.asarray([r in found for r in relabels], bool)
            vectors[m] = np.asarray([found.get(r, np.zeros(d)) for r in relabels], np.float32).reshape(-1, d)
        products = [Product.from_record(records[str(r)]) for r in relabels]
        ts = max(ts, _write_rows(client, loc, products, 0, vectors, present, rows=relabels))
    return ts


def _commit_change(client: Any, loc: MilvusLocation, seq: int, ts: int) -> dict[str, Any]:
    """Commit change `seq` (its writes up to timestamp `ts`); the state committed."""
    state = read_state(client, loc, authoritative=True)
    state["changes"] = seq
    state["ts"] = max(int(state.get("ts", 0)), ts)
    state["last"] = {"change": seq}
    write_state(client, loc, state)
    return state


def _journal_last(client: Any, loc: MilvusLocation, state: Mapping[str, Any], live: MilvusIndexStore) -> None:
    """Record the audit events of the last committed write if its writer died before it could:
    one lookup when they are recorded (`indexer.store.audit.record_unrecorded`)."""
    last = state.get("last") or {}
    ts = int(state.get("ts", 0))
    events: list[dict] = []
    if "change" in last:
        entry = _change_entry(client, loc, int(last["change"]), ts)
        events = list(entry["events"]) if entry else []
    elif "add" in last:
        start, stop = (int(x) for x in last["add"])
        name = f"add/{start}"
        if name in _get_values(client, loc, [name], ts):
            info = json.loads(get_blob(client, loc, name, ts))
            events = _add_events(live.products[start:stop], info)
    record_unrecorded(live.path, events)


def _reread_changed(snap: _Snapshot, client: Any, loc: MilvusLocation, changes: int, ts: int) -> _Snapshot:
    """The snapshot with the rows of change entries (snap.changes, changes] read again:
    O(entries + rows changed) from Milvus, O(N) pointer and flag copies in memory."""
    rows: set[int] = set()
    for seq in range(snap.changes + 1, changes + 1):
        entry = _change_entry(client, loc, seq, ts)
        if entry is None:
            raise IndexDamaged(f"Milvus collection {loc.meta} lacks the committed change/{seq}")
        rows.update(int(r) for r in [*entry["deletes"], *entry["relabels"]])
    modalities = list(snap.present)
    fields = ["record", *(f"has_{m}" for m in modalities)]
    found: dict[int, dict] = {}
    ordered = sorted(r for r in rows if r < len(snap.products))
    for lo in range(0, len(ordered), FETCH_ROWS):
        hits = client.query(loc.collection, ids=ordered[lo : lo + FETCH_ROWS], output_fields=fields, **read_options(ts))
        for hit in hits:
            found[int(hit["row"])] = hit
    products = list(snap.products)
    present = {m: np.concatenate(parts).copy() if parts else np.zeros(0, bool) for m, parts in snap.present.items()}
    deleted = set(snap.deleted)
    for row, hit in found.items():
        products[row], gone = _parse_record(hit["record"])
        (deleted.add if gone else deleted.discard)(row)
        for m in modalities:
            present[m][row] = bool(hit[f"has_{m}"])
    return dataclasses.replace(
        snap,
        products=products,
        present={m: [flags] for m, flags in present.items()},
        deleted=frozenset(deleted),
        changes=changes,
    )


def _extend(snap: _Snapshot, client: Any, loc: MilvusLocation, committed: int, ts: int) -> _Snapshot:
    """The snapshot plus rows [len(products), committed): their lexical rows are transformed
    with the stored vocabulary (no refit on add, as the FAISS store does)."""
    lo = len(snap.products)
    products, present, deleted = _fetch_products(client, loc, list(snap.present), lo, committed, ts)
    lexical = snap.lexical
    if lexical is not None and committed > snap.lexical_rows:
        start = max(lo, snap.lexical_rows)
        fresh = products[start - lo :]
        strip = bool(snap.manifest.get("text_normalisation", {}).get("strip_boilerplate", True))
        texts = [encoder_text(p.name, p.description, strip=strip) for p in fresh]
        has_text = np.flatnonzero([bool(t) for t in texts])
        if len(has_text):
            lexical = lexical.extend(lexical.transform([texts[i] for i in has_text]), start + has_text)
    return _Snapshot(
        snap.build,
        snap.manifest,
        snap.products + products,
        {m: [*parts, present[m]] for m, parts in snap.present.items()},
        lexical,
        max(snap.lexical_rows, committed) if lexical is not None else snap.lexical_rows,
        ts,
        snap.deleted | deleted,
        snap.changes,
    )


def _lock_dir(loc: MilvusLocation) -> Path:
    if loc.lite:
        return Path(loc.uri + ".writer")
    import hashlib

    digest = hashlib.sha256(f"{loc.uri}/{loc.collection}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"milvus-writer-{digest}"


def drop(location: str | Path | MilvusLocation) -> None:
    """Drop an index's collections (tests, benches)."""
    loc = location if isinstance(location, MilvusLocation) else MilvusLocation.parse(location)
    client = client_for(loc.uri)
    for name in collections(loc):
        if client.has_collection(name):
            client.drop_collection(name)
    _LOADED.pop((loc.uri, loc.collection), None)
