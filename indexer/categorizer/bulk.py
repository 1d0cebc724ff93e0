"""Categorize a seller's whole file: JSON lines or CSV in, one result per listing out, in order.

Used by `POST /api/v1/predict/batch` and `python -m indexer predict`. A listing is a title and/or
description and optionally a photo (`image_base64`, or `image`: the name of an image file the
caller resolves, e.g. a product photo already uploaded). Listings are read one at a time and
predicted `batch_size` at a time: photos decoded and preprocessed on a thread pool one batch
ahead of the model, texts and photos encoded as one batch each, one vote call per batch. Memory
is O(batch) whatever the file's length. A malformed line becomes a problem (RFC 9457 fields plus
its line number) and the others go on.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from indexer.catalog.images import ImageError, ImageLimits, load_image
from indexer.categorizer.kinds import QueryKind, describe
from indexer.categorizer.reasons import explain
from indexer.categorizer.vote import Categorizer, query_channels, query_text
from indexer.encoders.base import Encoder
from indexer.store.base import IndexStore

BATCH_SIZE = 64
MAX_TEXT_CHARS = 50_000
# accepted names of each field (JSON keys or CSV columns), first wins; the published catalogue's
# own columns are among them, so its CSV categorizes as it is
FIELDS = {
    "id": ("id", "uniq_id"),
    "title": ("title", "product_name", "name"),
    "description": ("description",),
    "image": ("image", "image_file"),
    "image_base64": ("image_base64",),
}
STATUS_TITLES = {400: "Bad Request", 404: "Not Found", 422: "Unprocessable image"}

ImageResolver = Callable[[str], Path | None]


@dataclass
class BulkListing:
    line: int
    id: str | None
    title: str
    description: str
    image: bytes | Path | None = None


@dataclass
class BulkProblem:
    line: int
    id: str | None
    status: int
    detail: str

    def public(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "id": self.id,
            "type": "about:blank",
            "title": STATUS_TITLES.get(self.status, "Bad Request"),
            "status": self.status,
            "detail": self.detail,
        }


Item = BulkListing | BulkProblem


# ---- reading ---------------------------------------------------------------------------------
def _field(record: dict, name: str) -> Any:
    for key in FIELDS[name]:
        value = record.get(key)
        if value not in (None, ""):
            return value
    return None


def parse_record(line: int, record: Any, resolve_image: ImageResolver | None) -> Item:
    """One listing from a JSON object or CSV row; a BulkProblem saying what is wrong otherwise."""
    if not isinstance(record, dict):
        return BulkProblem(line, None, 400, "a listing must be a JSON object")
    raw_id = _field(record, "id")
    lid = raw_id if isinstance(raw_id, str) else None
    if raw_id is not None and lid is None:
        return BulkProblem(line, None, 400, "id must be a string")
    texts = {}
    for name in ("title", "description"):
        value = _field(record, name)
        if value is not None and not isinstance(value, str):
            return BulkProblem(line, lid, 400, f"{name} must be a string")
        if value is not None and len(value) > MAX_TEXT_CHARS:
            return BulkProblem(line, lid, 400, f"{name} is over {MAX_TEXT_CHARS} characters")
        if value is not None and any("\udc80" <= ch <= "\udcff" for ch in value):
            return BulkProblem(line, lid, 400, f"{name} is not valid UTF-8")
        texts[name] = (value or "").strip()
    image: bytes | Path | None = None
    encoded, named = _field(record, "image_base64"), _field(record, "image")
    if encoded is not None and named is not None:
        return BulkProblem(line, lid, 400, "send image_base64 or image (a file name), not both")
    if encoded is not None:
        if not isinstance(encoded, str):
            return BulkProblem(line, lid, 400, "image_base64 must be a base64 string")
        if encoded.startswith("data:") and "," in encoded:
            encoded = encoded.split(",", 1)[1]
        try:
            image = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return BulkProblem(line, lid, 400, "image_base64 is not valid base64")
    elif named is not None:
        if not isinstance(named, str) or Path(named).name != named or named.startswith("."):
            return BulkProblem(line, lid, 400, "image must be the bare name of an uploaded image file")
        image = resolve_image(named) if resolve_image is not None else None
        if image is None:
            return BulkProblem(line, lid, 404, f"no uploaded image named {named!r}")
    if image is None and not texts["title"] and not texts["description"]:
        return BulkProblem(line, lid, 400, "a listing needs a title, a description or an image")
    return BulkListing(line, lid, texts["title"], texts["description"], image)


def read_json_lines(lines: Iterable[bytes], resolve_image: ImageResolver | None = None) -> Iterator[Item]:
    """One item per non-blank line of a JSON-lines stream (bytes lines), O(line) memory."""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):  # includes UnicodeDecodeError
            yield BulkProblem(number, None, 400, "line is not valid JSON (UTF-8)")
            continue
        yield parse_record(number, record, resolve_image)


def read_csv(stream: IO[bytes], resolve_image: ImageResolver | None = None) -> Iterator[Item]:
    """One item per CSV record (header row first), line numbers of the file; O(record) memory.
    A record that is not UTF-8 or not CSV is a problem of its own, the file goes on."""
    lines = (raw.decode("utf-8", "surrogateescape") for raw in stream)
    reader = csv.reader(lines)
    try:
        header = [h.strip().lstrip("\ufeff") for h in next(reader)]
    except StopIteration:
        return
    except csv.Error as exc:
        yield BulkProblem(1, None, 400, f"the CSV header cannot be read: {exc}")
        return
    if not any(name in header for names in FIELDS.values() for name in names):
        known = ", ".join(n for names in FIELDS.values() for n in names)
        yield BulkProblem(1, None, 400, f"the CSV header names none of the listing columns ({known})")
        return
    last = reader.line_num
    while True:
        start = last + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            last = reader.line_num
            yield BulkProblem(start, None, 400, f"line is not valid CSV: {exc}")
            continue
        last = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield BulkProblem(start, None, 400, f"the record has {len(row)} fields, the header {len(header)}")
            continue
        yield parse_record(start, dict(zip(header, row, strict=True)), resolve_image)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


# ---- predicting ------------------------------------------------------------------------------
def chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _prepare(encoder: Encoder, source: bytes | Path, limits: ImageLimits) -> np.ndarray | ImageError:
    try:
        return encoder.preprocess(load_image(source, draft_size=encoder.image_size, limits=limits))
    except ImageError as exc:
        return exc


def predict_listings(
    store: IndexStore,
    encoder: Encoder,
    categorizer: Categorizer,
    items: Iterable[Item],
    batch_size: int = BATCH_SIZE,
    k: int | None = None,
    workers: int = 2,
    limits: ImageLimits | None = None,
) -> Iterator[dict[str, Any]]:
    """One result (or problem) per item, in input order: {line, id, category, category_path,
    confidence, decision, kind, reasons} or a problem's fields. Photos are decoded and preprocessed on
    `workers` threads one batch ahead of the model: O(2 batches) of photos in memory."""
    limits = limits or ImageLimits.from_env()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="bulk-decode") as pool:

        def submit(chunk: list[Item]) -> list[Future | None]:
            return [
                pool.submit(_prepare, encoder, item.image, limits)
                if isinstance(item, BulkListing) and item.image is not None
                else None
                for item in chunk
            ]

        ahead: tuple[list[Item], list[Future | None]] | None = None
        for chunk in chunks(items, batch_size):
            if ahead is not None:
                yield from _predict_chunk(store, encoder, categorizer, *ahead, k)
            ahead = (chunk, submit(chunk))
        if ahead is not None:
            yield from _predict_chunk(store, encoder, categorizer, *ahead, k)


def _kinds(store: IndexStore, items: list[Item], texts: list[str], photos: list[bool]) -> list[QueryKind]:
    """Each listing's kind, as the service's /predict routes a seller's request (the kind chooses
    the threshold of the decision): O(characters) per listing."""
    coverage = store.lexical.coverage(texts) if store.lexical is not None else None
    out = []
    for i, (item, text, photo) in enumerate(zip(items, texts, photos, strict=True)):
        assert isinstance(item, BulkListing)
        known = float(coverage[i]) if coverage is not None and text else None
        out.append(describe(item.title, item.description, photo=photo, coverage=known))
    return out


def _predict_chunk(
    store: IndexStore,
    encoder: Encoder,
    categorizer: Categorizer,
    chunk: list[Item],
    decoded: list[Future | None],
    k: int | None,
) -> Iterator[dict[str, Any]]:
    out: list[dict[str, Any] | None] = [None] * len(chunk)
    arrays: dict[int, np.ndarray] = {}
    texts: dict[int, str] = {}
    for i, (item, future) in enumerate(zip(chunk, decoded, strict=True)):
        if isinstance(item, BulkProblem):
            out[i] = item.public()
            continue
        array = future.result() if future is not None else None
        if isinstance(array, ImageError):
            out[i] = BulkProblem(item.line, item.id, 422, str(array)).public()
            continue
        if array is not None:
            arrays[i] = array
        text = query_text(store, item.title, item.description)
        if text:
            texts[i] = text
        if array is None and not text:  # the only text was boilerplate the normalisation strips
            out[i] = BulkProblem(item.line, item.id, 400, "nothing left to categorize in this listing").public()
    rows = sorted(set(arrays) | set(texts))
    if rows:
        position = {row: j for j, row in enumerate(rows)}
        queries: dict[str, Any] = {}
        if arrays:
            image = np.full((len(rows), encoder.dims["image"]), np.nan, np.float32)
            image[[position[r] for r in arrays]] = encoder.encode_arrays(list(arrays.values()))
            queries["image"] = image
        if texts:
            queries.update(query_channels(store, encoder, texts=[texts.get(r, "") for r in rows]))
        kinds = _kinds(store, [chunk[r] for r in rows], [texts.get(r, "") for r in rows], [r in arrays for r in rows])
        predictions = categorizer.predict_vectors(queries, k=k, with_neighbors=False, kinds=kinds)
        for row, prediction in zip(rows, predictions, strict=True):
            item = chunk[row]
            assert isinstance(item, BulkListing)
            out[row] = {
                "line": item.line,
                "id": item.id,
                "category": prediction.category,
                "category_path": list(prediction.category_path),
                "confidence": round(prediction.confidence, 4) if math.isfinite(prediction.confidence) else None,
                "decision": prediction.decision,
                "kind": prediction.kind,
                "reasons": explain(prediction, categorizer),
            }
    for result in out:
        assert result is not None
        yield result
