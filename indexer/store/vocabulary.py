"""The lexical vocabulary (term -> column) of a published index, as two memory-mapped arrays.

Why: a catalogue's vocabulary grows without bound (Heaps' law; bigrams almost linearly), and
as a Python dict loaded from `lexical.vocab.json` it costs every worker its own memory and every
start a parse: about 190 MB per process at 100,000 SYNTHETIC products with a growing
vocabulary (2.4 M unigrams + bigrams, docs/results.md). Stored instead as the terms' 64-bit
hashes, sorted (`lexical.vocab.hash.npy`), and each one's column (`lexical.vocab.column.npy`),
it is mapped at load: O(1) to open, 12 bytes per term on disk, pages shared by the workers in
the page cache, and O(log V) per term looked up (a hash and a binary search instead of a dict
lookup: bench/bench_scale.py prints a product text's query row both ways).

`MappedVocabulary` is a read-only `Mapping[str, int]`, so scikit-learn's TfidfVectorizer uses
it as its `vocabulary_` unchanged: the query rows are the ones the dict gives, bit for bit
(tests/store/test_vocabulary.py). A term outside the vocabulary whose hash equals a known
term's would be read as that term: with 64-bit hashes the chance is V / 2^64 per unknown term
(about 1e-13 at 2.4 M terms). Two vocabulary terms sharing a hash are found when the arrays
are written: then no arrays are written and the index loads the JSON dict as before (as it
does for an index published before these arrays existed). Iterating the mapping (the model id,
tools) reads `lexical.vocab.json`: O(V), never on the query path.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import ItemsView, Iterator, Mapping
from pathlib import Path

import numpy as np

from indexer.store.mapped import map_random

TERMS_FILE = "lexical.vocab.json"
HASH_FILE = "lexical.vocab.hash.npy"
COLUMN_FILE = "lexical.vocab.column.npy"


def term_hash(term: str) -> int:
    """A term's stable 64-bit hash (BLAKE2b of its UTF-8 bytes; Python's `hash` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=8).digest(), "little")


def write_vocabulary(folder: Path, vocabulary: Mapping[str, int]) -> bool:
    """Write `vocabulary` as `lexical.vocab.json` and, when no two terms share a hash, as the
    sorted hash and column arrays (returns whether it did). O(V log V)."""
    if isinstance(vocabulary, MappedVocabulary):
        return vocabulary.copy_to(folder)
    terms = {term: int(i) for term, i in vocabulary.items()}
    (folder / TERMS_FILE).write_text(json.dumps(terms, ensure_ascii=False))
    hashes = np.fromiter((term_hash(t) for t in terms), dtype=np.uint64, count=len(terms))
    columns = np.fromiter(terms.values(), dtype=np.int64, count=len(terms))
    order = np.argsort(hashes, kind="stable")
    hashes, columns = hashes[order], columns[order]
    if len(hashes) > 1 and (hashes[1:] == hashes[:-1]).any():
        return False
    np.save(folder / HASH_FILE, hashes)
    np.save(folder / COLUMN_FILE, columns.astype(np.int32 if len(columns) < 2**31 else np.int64))
    return True


def read_vocabulary(folder: Path) -> Mapping[str, int]:
    """The vocabulary of a published lexical segment: mapped when its arrays exist (O(1)),
    else the JSON dict (an index published before them, or a hash collision: O(V))."""
    if (folder / HASH_FILE).exists() and (folder / COLUMN_FILE).exists():
        return MappedVocabulary(folder)
    return json.loads((folder / TERMS_FILE).read_text())


class MappedVocabulary(Mapping[str, int]):
    """term -> column over the mapped sorted hashes of a published folder (see the module
    docstring). Lookup O(log V); len O(1); iteration O(V) (reads the JSON)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        # plain ndarray views of the maps (no copy): np.memmap's own indexing costs ~1 us per lookup
        self.hashes = map_random(self.folder / HASH_FILE).view(np.ndarray)
        self.columns = map_random(self.folder / COLUMN_FILE).view(np.ndarray)
        # the terms too are mapped, not read: a mapping outlives its file, so a vocabulary loaded
        # from a temporary folder (the Milvus backend's) still iterates and saves after it is gone
        self._terms = np.memmap(self.folder / TERMS_FILE, dtype=np.uint8, mode="r")
        if self.hashes.dtype != np.uint64 or self.hashes.shape != self.columns.shape or self.hashes.ndim != 1:
            raise ValueError(
                f"{self.folder}: vocabulary arrays disagree: {self.hashes.dtype}{self.hashes.shape} hashes, "
                f"{self.columns.shape} columns"
            )

    def __getitem__(self, term: str) -> int:
        if not isinstance(term, str):
            raise KeyError(term)
        h = term_hash(term)
        hashes = self.hashes
        i = int(hashes.searchsorted(np.uint64(h)))
        if i < len(hashes) and int(hashes[i]) == h:
            return int(self.columns[i])
        raise KeyError(term)

    def __contains__(self, term: object) -> bool:
        try:
            self[term]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def __len__(self) -> int:
        return len(self.hashes)

    def __iter__(self) -> Iterator[str]:
        return iter(self.terms())

    def terms(self) -> dict[str, int]:
        """The terms and their columns (`lexical.vocab.json`): O(V), for tools, not queries."""
        return json.loads(self._terms.tobytes())

    def items(self) -> ItemsView[str, int]:  # the dict's own view: O(V) once, not a lookup per term
        return self.terms().items()

    def copy_to(self, folder: Path) -> bool:
        """The same vocabulary in another version folder (compaction keeps it), from the maps: O(V)."""
        folder = Path(folder)
        (folder / TERMS_FILE).write_bytes(self._terms.tobytes())
        np.save(folder / HASH_FILE, self.hashes)
        np.save(folder / COLUMN_FILE, self.columns)
        return True
