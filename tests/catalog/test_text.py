"""Text normalisation: shop boilerplate out, product words in, no repeated title."""

from __future__ import annotations

import pytest

from indexer.catalog.text import baseline_tokens, encoder_text, normalize_whitespace, strip_boilerplate

TEMPLATE = (
    "Buy Sonata 7007YL08 Analog Watch for Rs. 360 online. Sonata 7007YL08 Analog Watch at best "
    "prices with FREE shipping & cash on delivery. Only Genuine Products. 30 Day Replacement "
    "Guarantee. Free Shipping. Cash On Delivery!"
)
BOILERPLATE_WORDS = (
    "Buy",
    "Rs",
    "360",
    "Genuine",
    "Replacement",
    "Guarantee",
    "Shipping",
    "Delivery",
    "Flipkart",
    "best prices",
)


def test_shop_template_removed_product_words_kept():
    description = f"Key Features of Sonata Analog Watch: stainless steel case, leather strap. {TEMPLATE}"
    cleaned = strip_boilerplate(description)
    for word in BOILERPLATE_WORDS:
        assert word.lower() not in cleaned.lower(), (word, cleaned)
    for word in ("Key Features", "stainless steel case", "leather strap", "Sonata 7007YL08 Analog Watch"):
        assert word in cleaned


@pytest.mark.parametrize(
    "template",
    [
        "Buy Rama Floral Single Quilts & Comforters Pink-Red at Rs. 749",
        "Buy Maxima 03918CMLY Analog Watch - For Women 03918CMLY Online at Rs.795",
        "Buy Blue Feetje Trousers For Only Rs. 399",
        "Price: Rs. 1,299.50",
        "Flipkart.com: Only Genuine Products",
        "Great Discounts. Lowest Prices. only at Flipkart.com",
    ],
)
def test_template_variants_of_the_real_csv(template):
    cleaned = strip_boilerplate(f"Soft cotton fabric. {template}. Machine washable.")
    assert "Rs" not in cleaned and "Flipkart" not in cleaned and "Genuine" not in cleaned
    assert "Discounts" not in cleaned and "Lowest" not in cleaned
    assert cleaned.startswith("Soft cotton fabric") and cleaned.endswith("Machine washable")


def test_strip_is_idempotent_and_tidies_punctuation():
    once = strip_boilerplate(f"Warm blanket. {TEMPLATE}")
    assert strip_boilerplate(once) == once
    assert ". ." not in once and "  " not in once and not once.endswith(".")


def test_plain_description_untouched():
    text = "Cotton romper for infants, soft and breathable. Pack of 2."
    assert strip_boilerplate(text) == text.rstrip(".")


def test_encoder_text_joins_title_and_description_without_repeating_title():
    text = encoder_text("Sonata Analog Watch", "Sonata Analog Watch - quartz movement, leather strap")
    assert text == "Sonata Analog Watch. quartz movement, leather strap"
    assert text.count("Sonata Analog Watch") == 1


def test_encoder_text_title_prefix_is_case_insensitive():
    assert encoder_text("Sonata Analog Watch", "SONATA ANALOG WATCH: steel") == "Sonata Analog Watch. steel"


def test_encoder_text_only_drops_a_whole_title_prefix():
    # "Watches" starts with the title "...Watch" but is another word: keep it whole
    text = encoder_text("Sonata Analog Watch", "Sonata Analog Watches are water resistant")
    assert text == "Sonata Analog Watch. Sonata Analog Watches are water resistant"


def test_encoder_text_strips_boilerplate_from_description_only():
    text = encoder_text("Sonata Analog Watch", f"Quartz. {TEMPLATE}")
    assert text.startswith("Sonata Analog Watch. Quartz")
    assert "Rs" not in text and "Genuine" not in text
    raw = encoder_text("Sonata Analog Watch", f"Quartz. {TEMPLATE}", strip=False)
    assert "Only Genuine Products" in raw


def test_encoder_text_empty_parts():
    assert encoder_text("", "") == ""
    assert encoder_text("  Mug ", "") == "Mug"
    assert encoder_text("", "  ceramic   mug\n\twith handle ") == "ceramic mug with handle"
    assert encoder_text("Mug", "Mug") == "Mug"


def test_normalize_whitespace_unicode():
    assert normalize_whitespace("ｃｏｔｔｏｎ\u00a0 shirt\n") == "cotton shirt"  # NFKC + spaces
    assert normalize_whitespace(None) == ""


def test_baseline_tokens_drop_stop_words_and_lemmatise():
    tokens = baseline_tokens("The babies were running with their Cotton BLANKETS, and the watches!")
    assert tokens == ["baby", "run", "cotton", "blanket", "watch"]
    assert not {"the", "with", "and", "their", "were"} & set(tokens)


def test_baseline_tokens_drop_numbers_and_single_letters():
    assert baseline_tokens("Set of 2 x 6 steel cups") == ["set", "steel", "cup"]
    assert baseline_tokens("") == []
