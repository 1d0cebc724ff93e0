"""Product records loaded from the marketplace CSV, with a validation report.

Bad rows are reported, never fatal: a product with no image keeps its text, and a
product with no text keeps its image, so the build indexes whatever modality it has.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

CSV_NAME = "flipkart_com-ecommerce_sample_1050.csv"
IMAGES_DIR = "Images"
CATEGORY_SEPARATOR = ">>"

_QUOTES = "[]\"' \t\r\n"


MODALITIES = ("image", "text")  # what a product carries, each encoded into its own vector channel


class CatalogError(ValueError):
    """The catalog itself cannot be read (missing file, missing columns)."""


@dataclass(frozen=True)
class Product:
    """One labeled product; `image_path` is None when the row names no image file."""

    id: str
    name: str
    description: str
    brand: str | None
    price: float | None
    category_path: tuple[str, ...]
    image: str | None
    image_path: Path | None = None

    @property
    def category(self) -> str | None:
        """Top-level category: the label the engine predicts."""
        return self.category_path[0] if self.category_path else None

    def to_record(self) -> dict:
        """JSON-safe dict, as stored in the index metadata."""
        # field by field: dataclasses.asdict deep-copies, 10x slower, and every product of a
        # publish goes through here
        record = {name: getattr(self, name) for name in self.__dataclass_fields__}
        record["category_path"] = list(self.category_path)
        record["image_path"] = str(self.image_path) if self.image_path else None
        return record

    @classmethod
    def from_record(cls, record: dict) -> Product:
        data = dict(record)
        data["category_path"] = tuple(data.get("category_path") or ())
        data["image_path"] = Path(data["image_path"]) if data.get("image_path") else None
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


def parse_category_tree(raw: object) -> tuple[str, ...]:
    """Parse `["A >> B >> C ..."]` into ("A", "B", "C ...").

    The published CSV quotes this column inconsistently (JSON list, bare string,
    doubled quotes, single quotes), so parse leniently rather than with json.loads.
    """
    if raw is None or (isinstance(raw, float) and pd.isna(raw)):
        return ()
    text = str(raw).strip()
    try:
        parsed = json.loads(text)
        if isinstance(parsed, list) and parsed:
            text = str(parsed[0])
        elif isinstance(parsed, str):
            text = parsed
    except (json.JSONDecodeError, TypeError):
        pass
    text = text.strip(_QUOTES)
    # Inner levels keep their own quotes ("Boys' Wear"); a level cut down to "..." says nothing.
    parts = [re.sub(r"\s+", " ", p.strip()) for p in text.split(CATEGORY_SEPARATOR)]
    return tuple(p for p in parts if p.strip(".\u2026 "))


def format_category_path(path: tuple[str, ...] | list[str]) -> str:
    return f" {CATEGORY_SEPARATOR} ".join(path)


MAX_CATEGORY_LEVELS = 10  # the API's limits on a category a user names (POST /products, PATCH, relabel)
MAX_CATEGORY_CHARS = 200


class CategoryPathError(ValueError):
    """A category path a user gave is malformed (empty, an empty level, too deep or too long)."""


def check_category_path(path: object) -> tuple[str, ...]:
    """A category path a user names (a relabel, a reviewer's answer), checked strictly, unlike the
    lenient CSV parser: 1..MAX_CATEGORY_LEVELS levels of 1..MAX_CATEGORY_CHARS characters, no
    level empty, none holding the separator or a control character. Returns it as a tuple of
    levels with surrounding spaces removed; raises CategoryPathError saying what is wrong."""
    if isinstance(path, str) or not isinstance(path, (list, tuple)):
        raise CategoryPathError("a category path is a list of levels, e.g. ['Watches', 'Wrist Watches']")
    levels = []
    for level in path:
        if not isinstance(level, str):
            raise CategoryPathError(f"category levels must be strings, got {type(level).__name__}")
        text = re.sub(r"\s+", " ", level.strip())
        if not text:
            raise CategoryPathError("a category path has an empty level")
        if CATEGORY_SEPARATOR in text or any(ord(c) < 32 for c in text):
            raise CategoryPathError(f"category level {text[:40]!r} holds '{CATEGORY_SEPARATOR}' or a control character")
        if len(text) > MAX_CATEGORY_CHARS:
            raise CategoryPathError(f"category level of {len(text)} characters, over {MAX_CATEGORY_CHARS}")
        levels.append(text)
    if not levels:
        raise CategoryPathError("the category path is empty; send e.g. 'Watches >> Wrist Watches'")
    if len(levels) > MAX_CATEGORY_LEVELS:
        raise CategoryPathError(f"the category path has {len(levels)} levels, at most {MAX_CATEGORY_LEVELS}")
    return tuple(levels)


def parse_category_path(text: object) -> tuple[str, ...]:
    """'A >> B >> C' as a user types it (CLI, API) -> ("A", "B", "C"), strictly: "A >> >> C",
    ">> A" or "" are refused with a CategoryPathError instead of being silently repaired."""
    if not isinstance(text, str):
        raise CategoryPathError("the category must be a string like 'A >> B >> C'")
    if len(text) > MAX_CATEGORY_LEVELS * (MAX_CATEGORY_CHARS + 4):
        raise CategoryPathError(f"the category is {len(text)} characters long")
    if not text.strip():
        raise CategoryPathError("the category is empty; send e.g. 'Watches >> Wrist Watches'")
    return check_category_path(text.split(CATEGORY_SEPARATOR))


@dataclass
class ValidationReport:
    """Problems found while reading the catalog or decoding its images, by kind."""

    issues: dict[str, list[dict]] = field(default_factory=dict)

    def add(self, kind: str, product_id: str, detail: str = "") -> None:
        self.issues.setdefault(kind, []).append({"id": product_id, "detail": detail})

    def ids(self, kind: str) -> list[str]:
        return [item["id"] for item in self.issues.get(kind, [])]

    def counts(self) -> dict[str, int]:
        return {kind: len(items) for kind, items in sorted(self.issues.items())}

    def merge(self, other: ValidationReport) -> None:
        for kind, items in other.issues.items():
            self.issues.setdefault(kind, []).extend(items)

    def to_dict(self) -> dict:
        return {"counts": self.counts(), "issues": self.issues}

    def lines(self) -> list[str]:
        out = []
        for kind, items in sorted(self.issues.items()):
            for item in items:
                detail = f": {item['detail']}" if item["detail"] else ""
                out.append(f"{kind} {item['id']}{detail}")
        return out


@dataclass
class Catalog:
    products: list[Product]
    report: ValidationReport
    csv_path: Path

    def __len__(self) -> int:
        return len(self.products)

    def categories(self) -> list[str]:
        return sorted({p.category for p in self.products if p.category})


REQUIRED_COLUMNS = ("uniq_id", "product_name", "product_category_tree", "image", "description")


def _clean(value: object) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def _price(value: object) -> float | None:
    try:
        price = float(value)  # type: ignore[arg-type]  # TypeError is caught below
    except (TypeError, ValueError):
        return None
    return None if pd.isna(price) else price


def _first_price(*values: object) -> float | None:
    """The selling price: discounted when given, else retail (either column may be empty)."""
    return next((p for p in map(_price, values) if p is not None), None)


def find_csv(data_dir: Path) -> Path:
    """The catalog CSV of a dataset folder: the published name, else the only *.csv there."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CatalogError(f"data folder {data_dir} does not exist (set DATA_DIR or --data)")
    published = data_dir / CSV_NAME
    if published.is_file():
        return published
    candidates = sorted(p for p in data_dir.glob("*.csv") if p.name != "MANIFEST.csv")
    if len(candidates) != 1:
        raise CatalogError(f"expected {CSV_NAME} (or exactly one catalog *.csv) in {data_dir}, found {len(candidates)}")
    return candidates[0]


def load_catalog(data_dir: str | Path, csv_path: str | Path | None = None) -> Catalog:
    """Read every row of the catalog into Products and report what is wrong with each."""
    data_dir = Path(data_dir)
    csv_path = Path(csv_path) if csv_path else find_csv(data_dir)
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CatalogError(f"cannot read catalog {csv_path}: {exc}") from exc
    missing_cols = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing_cols:
        raise CatalogError(f"catalog {csv_path} lacks columns: {', '.join(missing_cols)}")

    images_dir = data_dir / IMAGES_DIR
    report = ValidationReport()
    products: list[Product] = []
    seen: set[str] = set()
    for row_number, row in enumerate(frame.to_dict("records"), start=2):
        pid = _clean(row.get("uniq_id")) or f"row-{row_number}"
        if pid in seen:
            report.add("duplicate_id", pid, f"CSV line {row_number} skipped (id already used)")
            continue
        seen.add(pid)
        name = _clean(row.get("product_name")) or ""
        description = _clean(row.get("description")) or ""
        path = parse_category_tree(row.get("product_category_tree"))
        if not path:
            report.add("missing_category", pid, "product_category_tree is empty or unparsable")
        if not name and not description:
            report.add("empty_text", pid, "no name and no description")
        image = _clean(row.get("image"))
        image_path = None
        if image is None:
            report.add("missing_image", pid, "no image file named")
        else:
            candidate = images_dir / Path(image).name
            if candidate.is_file():
                image_path = candidate
            else:
                report.add("missing_image", pid, f"{candidate.name} not found in {images_dir}")
        products.append(
            Product(
                id=pid,
                name=name,
                description=description,
                brand=_clean(row.get("brand")),
                price=_first_price(row.get("discounted_price"), row.get("retail_price")),
                category_path=path,
                image=image,
                image_path=image_path,
            )
        )
    return Catalog(products=products, report=report, csv_path=csv_path)
