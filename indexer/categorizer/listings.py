"""Simulated seller listings of every kind, made from labelled products (issue 18).

A stored product carries a photo and a full English title + description; sellers also send a
title alone, a photo alone, a few words, another language, or a photo and a title that belong
to different products. `fit` calibrates one threshold per query kind on such listings built
from its training products only, and the evaluation scores the held-out products' listings
the same way. Each listing rewrites one product (its label is the truth; its fold decides
which rows may answer it); a mismatched listing joins one product's photo to the title of a
product of another category and has no right answer: any automatic decision on it is wrong.

Sorts (SORTS), and the channels each sends to the Categorizer:
- "photo+text", "text", "photo": the product's stored vectors (no encoder needed);
- "title", "photo+title", "short title": its name, or its first SHORT_TITLE_WORDS words, encoded
  as a seller's query (`ListingMaterial`, one encoding per product, cached);
- "foreign", "photo+foreign": hand-written queries in other languages (tests/data/...), encoded;
- "mismatched": the product's photo + another category's product title (its stored text when no
  names were encoded).
Every listing is routed by `kinds.describe` exactly as a seller's request is, so a French title
the detector reads as English is calibrated and scored with the English titles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from indexer.categorizer.kinds import SHORT_TITLE_WORDS, QueryKind, describe
from indexer.categorizer.vote import stored_queries
from indexer.store.base import IndexStore

if TYPE_CHECKING:
    from indexer.encoders import Encoder

STORED_SORTS = ("photo+text", "text", "photo")
TITLE_SORTS = ("title", "photo+title", "short title")
FOREIGN_SORTS = ("foreign", "photo+foreign")
MISMATCHED = "mismatched"
SORTS = (*STORED_SORTS, *TITLE_SORTS, *FOREIGN_SORTS, MISMATCHED)
GENUINE_WITH_PHOTO = ("photo+text", "photo+title", "photo+foreign")  # the disagreement rule's negatives


@dataclass
class Written:
    """Listings written as text: listing i rewrites product `rows[i]` with `texts[i]`, encoded `dense[i]`."""

    rows: np.ndarray
    texts: list[str]
    dense: np.ndarray
    kinds: list[QueryKind]  # routed with no photo; a photo is added by `with_photo`


@dataclass
class ListingMaterial:
    """What the sorts beyond the stored vectors need: encoded titles, short titles, other languages."""

    title: Written | None = None
    short: Written | None = None
    foreign: Written | None = None
    stored_kinds: dict[int, QueryKind] = field(default_factory=dict)  # product row -> kind of name + description

    def sorts(self) -> tuple[str, ...]:
        out = list(STORED_SORTS)
        if self.title is not None:
            out += ["title", "photo+title"]
        if self.short is not None:
            out.append("short title")
        if self.foreign is not None:
            out += list(FOREIGN_SORTS)
        return (*out, MISMATCHED)


def first_words(text: str, limit: int = SHORT_TITLE_WORDS) -> str:
    return " ".join(text.split()[:limit])


def _encode_cached(
    encoder: Encoder, texts: Sequence[str], cache_path: str | Path | None, read_from: Sequence[Path] = ()
) -> np.ndarray:
    """Query-role text vectors, from an embedding cache file when given (keyed by text and model);
    `read_from`: other cache files looked up first, never written (the index's own cache, where
    the build's calibration left the names it encoded)."""
    from indexer.encoders.base import encode_text_queries
    from indexer.encoders.cache import content_key, open_cache

    model = f"{encoder.model_ids.get('text')}:query"
    if cache_path is None:
        # the same batches as the cached path (sorted distinct texts): a text's vector depends on
        # its batch's padding by float rounding, and that rounding can flip a tied neighbour, so
        # an ingested index is calibrated exactly like the build's
        distinct = sorted(set(texts))
        if not distinct:
            return np.zeros((0, 0), np.float32)
        vectors = np.asarray(encode_text_queries(encoder, distinct), np.float32)
        position = {t: i for i, t in enumerate(distinct)}
        return vectors[[position[t] for t in texts]]
    keys = [content_key(t) for t in texts]
    found: dict[str, np.ndarray] = {}
    for other in read_from:
        if Path(other).is_file():
            extra = open_cache(other)
            try:
                found.update(extra.get_many(model, [k for k in keys if k not in found]))
            finally:
                extra.close()
    cache = open_cache(cache_path)
    try:
        hits = cache.get_many(model, [k for k in keys if k not in found])
        hits.update(found)
        todo = sorted({t for t, k in zip(texts, keys, strict=True) if k not in hits})
        if todo:
            fresh = encode_text_queries(encoder, todo)
            cache.put_many(model, {content_key(t): v for t, v in zip(todo, fresh, strict=True)})
            hits.update({content_key(t): v for t, v in zip(todo, fresh, strict=True)})
        return np.stack([np.asarray(hits[k], np.float32) for k in keys]) if keys else np.zeros((0, 0), np.float32)
    finally:
        cache.close()


def _written(
    store: IndexStore, encoder: Encoder, rows: np.ndarray, texts: list[str], cache: Any, read_from: Sequence[Path]
) -> Written:
    from indexer.categorizer.vote import query_text

    normalised = [query_text(store, t, "") for t in texts]
    return Written(
        rows=np.asarray(rows, np.int64),
        texts=normalised,
        dense=_encode_cached(encoder, normalised, cache, read_from),
        kinds=[describe(t, "", photo=False) for t in texts],
    )


def listing_material(
    store: IndexStore,
    encoder: Encoder | None = None,
    rows: np.ndarray | None = None,
    foreign: Sequence[tuple[str, str, str]] = (),
    cache: str | Path | None = None,
    read_from: Sequence[Path] = (),
) -> ListingMaterial:
    """Material for the listings of `rows` (default: every labelled product): each product's kind
    as stored; with an `encoder`, its name and first words encoded as a seller's query; and the
    `foreign` queries (product id, title, description) of products in the index. Cost: one
    language detection per product, and with an encoder 2 text encodings per product plus one
    per foreign query (cached in `cache`, an embedding cache file, when given; the `read_from`
    cache files are looked up first and never written)."""
    labels = store.labels()
    rows = np.flatnonzero(labels != "") if rows is None else np.asarray(rows, np.int64)
    stored_kinds = {
        int(r): describe(store.products[int(r)].name, store.products[int(r)].description, photo=True) for r in rows
    }
    if encoder is None:
        return ListingMaterial(stored_kinds=stored_kinds)
    names = [store.products[int(r)].name for r in rows]
    title = _written(store, encoder, rows, names, cache, read_from)
    short = _written(store, encoder, rows, [first_words(n) for n in names], cache, read_from)
    out = ListingMaterial(title=title, short=short, stored_kinds=stored_kinds)
    known = [(store.row_of(pid), t, d) for pid, t, d in foreign]
    known = [(r, t, d) for r, t, d in known if r is not None]
    if known:
        from indexer.categorizer.vote import query_text

        texts = [query_text(store, t, d) for _, t, d in known]
        out.foreign = Written(
            rows=np.array([r for r, _, _ in known], np.int64),
            texts=texts,
            dense=_encode_cached(encoder, texts, cache, read_from),
            kinds=[describe(t, d, photo=False) for _, t, d in known],
        )
    return out


@dataclass
class Listings:
    """Listings of one sort ready for `Categorizer.predict_vectors`: `rows[i]` is the product
    listing i rewrites (truth: its label, or none for a mismatched listing, whose text comes from
    `partners[i]`)."""

    sort: str
    rows: np.ndarray
    queries: dict[str, Any]
    kinds: list[QueryKind]
    partners: np.ndarray | None = None

    @property
    def mismatched(self) -> bool:
        return self.partners is not None


def _lexical(view: IndexStore, texts: list[str]) -> sp.csr_matrix | None:
    from indexer.store.lexical import DEFAULT_LEXICAL_SCALING

    return None if view.lexical is None else view.lexical.query_rows(texts, DEFAULT_LEXICAL_SCALING)


def _photos(view: IndexStore, rows: np.ndarray) -> np.ndarray | None:
    return stored_queries(view, rows, ("image",)).get("image")


def partners_for(labels: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray:
    """For each of `rows`, another of `rows` of a different category (seeded): the product whose
    title a mismatched listing borrows. -1 where every row shares one category."""
    rng = np.random.default_rng(seed)
    out = np.full(len(rows), -1, np.int64)
    for i, r in enumerate(rows):
        other = rows[labels[rows] != labels[r]]
        if len(other):
            out[i] = other[rng.integers(len(other))]
    return out


def build_listings(
    view: IndexStore, sort: str, rows: np.ndarray, material: ListingMaterial, seed: int = 0
) -> Listings | None:
    """The listings of `sort` for products `rows` (all in one fold), with `view`'s lexical
    vocabulary; None when the sort has no material or no product here. O(len(rows)) queries."""
    rows = np.asarray(rows, np.int64)
    if not len(rows):
        return None
    photo = sort in ("photo+text", "photo", "photo+title", "photo+foreign", MISMATCHED)
    if sort in ("photo+text", "text", "photo"):
        channels = {"photo+text": ("image", "text", "lexical"), "text": ("text", "lexical")}.get(sort, ("image",))
        queries = stored_queries(view, rows, channels)
        kinds = [
            dataclasses.replace(material.stored_kinds[int(r)], photo=photo)
            if sort != "photo"
            else QueryKind(photo=True, title=False, description=False)
            for r in rows
        ]
        if sort == "photo":
            keep = ~np.isnan(queries["image"]).any(axis=1)
            if not keep.any():
                return None
            kept = [k for k, o in zip(kinds, keep, strict=True) if o]
            return Listings(sort, rows[keep], {"image": queries["image"][keep]}, kept)
        if photo:
            keep = ~np.isnan(queries["image"]).any(axis=1)
            if not keep.all():
                rows, kinds = rows[keep], [k for k, o in zip(kinds, keep, strict=True) if o]
                queries = {m: q[keep] if not sp.issparse(q) else q[np.flatnonzero(keep)] for m, q in queries.items()}
        return Listings(sort, rows, queries, kinds) if len(rows) else None
    if sort == MISMATCHED:
        labels = view.labels()
        partners = partners_for(labels, rows, seed)
        ok = partners >= 0
        images = _photos(view, rows)
        if images is None:
            return None
        ok &= ~np.isnan(images).any(axis=1)
        rows, partners, images = rows[ok], partners[ok], images[ok]
        if not len(rows):
            return None
        written = material.title
        if written is not None and np.isin(partners, written.rows).all():
            position = {int(r): i for i, r in enumerate(written.rows)}
            index = np.array([position[int(p)] for p in partners], np.int64)
            texts = [written.texts[i] for i in index]
            queries = {"image": images, "text": written.dense[index]}
            lexical = _lexical(view, texts)
            if lexical is not None:
                queries["lexical"] = lexical
            kinds = [dataclasses.replace(written.kinds[i], photo=True) for i in index]
        else:  # no encoded names: the partner's stored title + description
            queries = {"image": images, **stored_queries(view, partners, ("text", "lexical"))}
            kinds = [dataclasses.replace(material.stored_kinds[int(p)], photo=True) for p in partners]
        return Listings(sort, rows, queries, kinds, partners)
    written = {"title": material.title, "photo+title": material.title, "short title": material.short}.get(
        sort, material.foreign
    )
    if written is None:
        return None
    index = np.flatnonzero(np.isin(written.rows, rows))
    if not len(index):
        return None
    out_rows = written.rows[index]
    texts = [written.texts[i] for i in index]
    queries = {"text": written.dense[index]}
    lexical = _lexical(view, texts)
    if lexical is not None:
        queries["lexical"] = lexical
    kinds = [dataclasses.replace(written.kinds[i], photo=photo) for i in index]
    if photo:
        images = _photos(view, out_rows)
        if images is None:
            return None
        keep = ~np.isnan(images).any(axis=1)
        if not keep.any():
            return None
        out_rows, images = out_rows[keep], images[keep]
        kinds = [k for k, o in zip(kinds, keep, strict=True) if o]
        queries = {m: (q[keep] if not sp.issparse(q) else q[np.flatnonzero(keep)]) for m, q in queries.items()}
        queries["image"] = images
    return Listings(sort, out_rows, queries, kinds)
