"""The listing pages' dictionary (service/static/listing-strings.js): French and English hold the
same keys, and every reason code and listing kind the API can send has its sentence in both."""

from __future__ import annotations

import json
import re
from pathlib import Path

from service_support import say_reasons

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


# One reason per code, as `indexer.categorizer.reasons.explain` builds them (English text, params).
SAMPLES = [
    (
        "confident",
        "confidence 0.97 reaches the 0.95 needed for a photo with title",
        {"score": 0.97, "threshold": 0.95, "kind": "photo+title"},
    ),
    (
        "low_confidence",
        "the confidence 0.40 is below the 0.95 needed for a photo alone",
        {"score": 0.4, "threshold": 0.95, "kind": "photo"},
    ),
    (
        "photo_text_disagree",
        "the photo looks like Watches, the text like Kitchen & Dining",
        {"photo": "Watches", "text": "Kitchen & Dining"},
    ),
    ("weak_agreement", "the photo and the text do not agree enough on Watches", {"category": "Watches"}),
    ("kind_not_automatic", "listings of this kind (title alone) are not decided automatically", {"kind": "title"}),
    ("uncalibrated", "this index has no calibrated auto threshold: every listing waits for a reviewer", {}),
    ("no_neighbours", "no similar product in the catalogue to vote", {}),
    (
        "split_vote",
        "similar products are split between Watches (60%) and Beauty (30%)",
        {"category": "Watches", "share": 0.6, "runner_up": "Beauty", "runner_up_share": 0.3},
    ),
    ("no_photo", "no photo: the suggestion rests on the text alone", {}),
    ("no_text", "no title or description: the suggestion rests on the photo alone", {}),
]


def test_a_french_page_says_no_reason_in_english():
    """Every code the API can send reads in French on a French page (seller and review pages
    share listing-strings.js): no English sentence, no placeholder left, the numbers as percentages."""
    source = (ROOT / "indexer/categorizer/reasons.py").read_text(encoding="utf-8")
    assert {c for c, _, _ in SAMPLES} == set(re.findall(r'reason\(\s*"(\w+)"', source)), "a new code needs a sample"
    reasons = [{"code": c, "text": text, "params": params} for c, text, params in SAMPLES]
    french, english = say_reasons(reasons, "fr"), say_reasons(reasons, "en")
    for reason, fr, en in zip(reasons, french[:-1], english[:-1], strict=True):
        assert fr != reason["text"] and fr != en, reason["code"]
        assert "{" not in fr and "needed" not in fr and " the " not in fr, fr
    assert "97\u00a0%" in french[0] and "avec photo et titre" in french[0]
    assert french[-1] == " ; ".join(french[:-1])  # reasonList: the page's one sentence
    unknown = {"code": "something_new", "text": "a reason from a newer server", "params": {}}
    assert say_reasons([unknown], "fr")[0] == unknown["text"]  # a new code still says something


def test_the_seller_page_says_the_reasons_through_the_shared_dictionary():
    """The /predict answer's reasons go through listing-strings.js, not joined as they come."""
    app_js = (ROOT / "service/static/app.js").read_text(encoding="utf-8")
    assert "reasonList(p.reasons" in app_js and "p.reasons || []).join" not in app_js
    page = (ROOT / "service/templates/index.html").read_text(encoding="utf-8")
    assert "listing-strings.js" in page
    fr = json.loads((ROOT / "service/i18n/fr.json").read_text(encoding="utf-8"))
    assert "anglais" not in fr["explain_review_reasons"]


def test_every_word_of_the_reviewer_page_is_in_both_languages():
    """The page's `data-text` keys and review.js's `lt("...")` calls (the new-category box and its
    hint among them) all have their words in French and English."""
    page = (ROOT / "service/templates/review.html").read_text(encoding="utf-8")
    script = (ROOT / "service/static/review.js").read_text(encoding="utf-8")
    used = set(re.findall(r'data-text="(\w+)"', page)) | set(re.findall(r'\blt\("(\w+)"', script))
    assert {"other_new", "other_unknown", "other_label"} <= used
    for lang, keys in dictionaries().items():
        assert used <= keys, (lang, used - keys)
