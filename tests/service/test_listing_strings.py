"""The listing pages' dictionary (service/static/listing-strings.js): French and English hold the
same keys, and every reason code and listing kind the API can send has its sentence in both."""

from __future__ import annotations

import re
from pathlib import Path

from indexer.categorizer.kinds import KINDS

ROOT = Path(__file__).resolve().parents[2]
KEY = re.compile(r'^\s{4}"?([\w+ -]+?)"?:\s', re.M)


def dictionaries() -> dict[str, set[str]]:
    text = (ROOT / "service/static/listing-strings.js").read_text(encoding="utf-8")
    fr_start, en_start = text.index("\n  fr: {"), text.index("\n  en: {")
    return {"fr": set(KEY.findall(text[fr_start:en_start])), "en": set(KEY.findall(text[en_start:]))}


def test_both_languages_hold_the_same_words():
    words = dictionaries()
    assert words["fr"] == words["en"] and len(words["fr"]) > 40


def test_every_reason_code_and_kind_has_its_sentence():
    source = (ROOT / "indexer/categorizer/reasons.py").read_text(encoding="utf-8")
    codes = set(re.findall(r'reason\(\s*"(\w+)"', source))
    assert {"confident", "low_confidence", "photo_text_disagree", "kind_not_automatic", "no_photo"} <= codes
    for lang, keys in dictionaries().items():
        assert {f"reason_{c}" for c in codes} <= keys, lang
        assert {f"kind_{k}" for k in KINDS} <= keys, lang


def test_every_word_of_the_reviewer_page_is_in_both_languages():
    """The page's `data-text` keys and review.js's `lt("...")` calls (the new-category box and its
    hint among them) all have their words in French and English."""
    page = (ROOT / "service/templates/review.html").read_text(encoding="utf-8")
    script = (ROOT / "service/static/review.js").read_text(encoding="utf-8")
    used = set(re.findall(r'data-text="(\w+)"', page)) | set(re.findall(r'\blt\("(\w+)"', script))
    assert {"other_new", "other_unknown", "other_label"} <= used
    for lang, keys in dictionaries().items():
        assert used <= keys, (lang, used - keys)
