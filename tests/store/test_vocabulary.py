"""The published lexical vocabulary is mapped (sorted term hashes), not a per-process dict, and
gives the very rows, coverage, dim and model id the fitted dict gives; an index without the
arrays (published before them, or a hash collision) still loads its JSON vocabulary."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_search_path import memory_mapped, random_texts

from indexer.store import vocabulary as vocabulary_module
from indexer.store.lexical import LexicalIndex
from indexer.store.vocabulary import (
    COLUMN_FILE,
    HASH_FILE,
    TERMS_FILE,
    MappedVocabulary,
    read_vocabulary,
    term_hash,
    write_vocabulary,
)

QUERIES = random_texts(60, seed=9) + [
    "",
    "zzz nothing known",
    "mug mug mug dohar",  # repeated terms: sublinear tf
    "Montre élégante pour homme, bracelet acier",  # non-ASCII, unknown words
    "dohar mug watch romper laptop",
]


@pytest.fixture()
def fitted() -> LexicalIndex:
    return LexicalIndex.fit(random_texts(200, seed=3), np.arange(200))


def same_csr(a, b) -> None:
    a, b = a.tocsr(), b.tocsr()
    assert a.shape == b.shape and a.dtype == b.dtype
    for name in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_a_loaded_index_maps_its_vocabulary_and_transforms_bit_for_bit(fitted, tmp_path):
    fitted.save(tmp_path)
    loaded = LexicalIndex.load(tmp_path)
    vocab = loaded.vectorizer.vocabulary_
    assert isinstance(vocab, MappedVocabulary) and memory_mapped(vocab.hashes)
    same_csr(loaded.transform(QUERIES), fitted.transform(QUERIES))
    np.testing.assert_array_equal(loaded.coverage(QUERIES), fitted.coverage(QUERIES))
    same_csr(loaded.query_rows(QUERIES), fitted.query_rows(QUERIES))
    assert loaded.dim == fitted.dim and loaded.model_id == fitted.model_id


def test_the_mapping_answers_every_term_and_refuses_the_rest(fitted, tmp_path):
    fitted.save(tmp_path)
    mapped = MappedVocabulary(tmp_path)
    want = fitted.vectorizer.vocabulary_
    assert len(mapped) == len(want) and dict(mapped.items()) == want and sorted(mapped) == sorted(want)
    assert all(mapped[t] == i for t, i in want.items())
    for unknown in ("zzzunknown", "mug zzz", "", "MUG"):
        assert unknown not in mapped
        with pytest.raises(KeyError):
            mapped[unknown]
    assert 3 not in mapped  # not a string


def test_hashes_are_stable_and_stored_sorted(tmp_path):
    assert term_hash("mug") == term_hash("mug") != term_hash("mugs")
    assert term_hash("mug") == int.from_bytes(__import__("hashlib").blake2b(b"mug", digest_size=8).digest(), "little")
    assert write_vocabulary(tmp_path, {"b": 1, "a": 0, "c d": 2})
    hashes = np.load(tmp_path / HASH_FILE)
    assert hashes.dtype == np.uint64 and (np.diff(hashes.astype(np.float64)) > 0).all()
    columns = np.load(tmp_path / COLUMN_FILE)
    assert {t: int(columns[np.searchsorted(hashes, np.uint64(term_hash(t)))]) for t in "abc"[:2]} == {"a": 0, "b": 1}


def test_a_hash_collision_keeps_the_json_vocabulary(fitted, tmp_path, monkeypatch):
    """Two terms with one hash cannot share a slot: the arrays are not written and the index
    loads its dict, with the same rows."""
    monkeypatch.setattr(vocabulary_module, "term_hash", lambda term: len(term))
    fitted.save(tmp_path)
    assert not (tmp_path / HASH_FILE).exists() and (tmp_path / TERMS_FILE).exists()
    loaded = LexicalIndex.load(tmp_path)
    assert type(loaded.vectorizer.vocabulary_) is dict
    same_csr(loaded.transform(QUERIES), fitted.transform(QUERIES))


def test_an_index_published_before_the_arrays_still_loads(fitted, tmp_path):
    fitted.save(tmp_path)
    (tmp_path / HASH_FILE).unlink()
    (tmp_path / COLUMN_FILE).unlink()
    loaded = LexicalIndex.load(tmp_path)
    assert loaded.vectorizer.vocabulary_ == json.loads((tmp_path / TERMS_FILE).read_text())
    same_csr(loaded.transform(QUERIES), fitted.transform(QUERIES))


def test_a_loaded_index_saved_again_keeps_its_vocabulary(fitted, tmp_path):
    """Compaction saves a loaded (mapped) index into a new version: the files are copied."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fitted.save(tmp_path / "a")
    loaded = LexicalIndex.load(tmp_path / "a")
    grown = loaded.extend(loaded.transform(["mug dohar"]), np.array([999]))
    grown.save(tmp_path / "b")
    for name in (TERMS_FILE, HASH_FILE, COLUMN_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    again = LexicalIndex.load(tmp_path / "b")
    assert isinstance(again.vectorizer.vocabulary_, MappedVocabulary) and again.ntotal == fitted.ntotal + 1
    same_csr(again.transform(QUERIES), fitted.transform(QUERIES))


def test_arrays_that_disagree_are_refused(fitted, tmp_path):
    fitted.save(tmp_path)
    np.save(tmp_path / COLUMN_FILE, np.arange(3, dtype=np.int32))
    with pytest.raises(ValueError, match="vocabulary arrays disagree"):
        read_vocabulary(tmp_path)


def test_a_vocabulary_outlives_its_folder(fitted, tmp_path):
    """The Milvus backend loads the lexical files from a temporary folder it then removes: the
    mapped vocabulary still gives the model id and saves (its terms are mapped, not re-read)."""
    import shutil

    (tmp_path / "gone").mkdir()
    fitted.save(tmp_path / "gone")
    loaded = LexicalIndex.load(tmp_path / "gone")
    shutil.rmtree(tmp_path / "gone")
    assert loaded.model_id == fitted.model_id
    (tmp_path / "again").mkdir()
    loaded.save(tmp_path / "again")
    same_csr(LexicalIndex.load(tmp_path / "again").transform(QUERIES), fitted.transform(QUERIES))
