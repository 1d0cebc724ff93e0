"""The one way to turn a product's name and description into text.

`encoder_text` feeds the sentence encoders; `baseline_tokens` feeds classical
bag-of-words baselines (tokenise, drop stop words, lemmatise). Both are used by
the build, the service and the evaluation, so their inputs agree.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# Shop boilerplate ("Buy X for Rs. 360 ... Only Genuine Products. 30 Day Replacement
# Guarantee. Free Shipping. Cash On Delivery!"): unevenly spread across categories,
# so it can teach a model the shop's template rather than the product.
_BOILERPLATE = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\bBuy\b.{0,300}?\bRs\.?\s*[\d,]+(?:\.\d+)?",
        r"\b(?:only\s+)?(?:from|at|on|in India only at)\s+Flipkart\.com\b",
        r"\bFlipkart\.com\b:?",
        r"\bOnly Genuine Products\b",
        r"\b30 Day Replacement Guarantee\b",
        r"\bFree Shipping\b",
        r"&\s*cash on delivery",
        r"\bCash On Delivery\b!?",
        r"\bLowest Prices\b",
        r"\bGreat Discounts\b",
        r"\bat best prices with\b",
        r"\bPrice:\s*Rs\.?\s*[\d,]+(?:\.\d+)?",
        r"\bonline(?:\s+only)?\s+for\b",
        r"\bonline\b\.?",
    )
]
_PUNCT_RUN = re.compile(r"(?:\s*[.,;:!\-]\s*){2,}")
_SPACES = re.compile(r"\s+")

DEFAULT_STRIP_BOILERPLATE = True


def normalize_whitespace(text: str) -> str:
    text = unicodedata.normalize("NFKC", text or "")
    return _SPACES.sub(" ", text).strip()


def strip_boilerplate(text: str) -> str:
    """Remove the shop's sales template, keep the product's own words."""
    for pattern in _BOILERPLATE:
        text = pattern.sub(" ", text)
    text = _PUNCT_RUN.sub(". ", text)
    return normalize_whitespace(text).strip(" .,-")


def encoder_text(name: str, description: str, strip: bool = DEFAULT_STRIP_BOILERPLATE) -> str:
    """Title + description as one string for a sentence encoder ('' when both are empty)."""
    name = normalize_whitespace(name)
    description = normalize_whitespace(description)
    if strip:
        description = strip_boilerplate(description)
    rest = description[len(name) :]
    if name and description.lower().startswith(name.lower()) and not rest[:1].isalnum():
        description = rest.lstrip(" .,:-")  # whole-title prefix only: "Watches" keeps its "es"
    return ". ".join(part for part in (name, description) if part)


_TOKEN = re.compile(r"[a-z]{2,}")


@lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


@lru_cache(maxsize=65536)
def _lemma(token: str) -> str:
    import simplemma

    return simplemma.lemmatize(token, lang="en").lower()


def baseline_tokens(text: str) -> list[str]:
    """Lower-cased, stop-word-free, lemmatised word tokens for TF-IDF style baselines."""
    stop = _stop_words()
    tokens = _TOKEN.findall(normalize_whitespace(text).lower())
    return [lemma for lemma in (_lemma(t) for t in tokens if t not in stop) if lemma not in stop]
