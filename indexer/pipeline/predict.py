"""`python -m indexer predict`: a seller's file of listings -> a file of categories, offline.

The same reading and batching as `POST /api/v1/predict/batch` (indexer.categorizer.bulk), with a
progress bar; the index's own encoder and categorizer decide, as in the service.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from indexer.categorizer import Categorizer
from indexer.categorizer.bulk import BATCH_SIZE, ImageResolver, Item, predict_listings, read_csv, read_json_lines
from indexer.encoders import Encoder, create_encoder_for
from indexer.store import check_compatible, open_store

JSON_LINES = (".jsonl", ".ndjson", ".json")
CSV_COLUMNS = ("line", "id", "category", "category_path", "confidence", "decision", "reasons", "status", "error")


@dataclass
class PredictSummary:
    input: str
    out: str
    listings: int = 0
    problems: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        rate = self.listings / self.seconds if self.seconds else 0.0
        decided = ", ".join(f"{k} {v}" for k, v in sorted(self.decisions.items())) or "none"
        return [
            f"{self.listings} listings of {self.input} -> {self.out} in {self.seconds:.1f} s ({rate:.1f} listings/s)",
            f"decisions: {decided}; problems: {self.problems}"
            + (" (the error column of the results says why)" if self.problems else ""),
        ]


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in JSON_LINES:
        return "jsonl"
    raise ValueError(f"{path.name}: name a .csv or .jsonl file (got {suffix or 'no extension'})")


@contextmanager
def open_listings(path: str | Path, resolve_image: ImageResolver | None) -> Iterator[Iterator[Item]]:
    path = Path(path)
    kind = _kind(path)
    with open(path, "rb") as fh:
        yield read_csv(fh, resolve_image) if kind == "csv" else read_json_lines(fh, resolve_image)


def count_listings(path: str | Path) -> int:
    """Records in the file (one cheap pass, photos not decoded): the progress bar's total."""
    path = Path(path)
    with open(path, "rb") as fh:
        if _kind(path) == "jsonl":
            return sum(1 for line in fh if line.strip())
        reader = csv.reader(raw.decode("utf-8", "replace") for raw in fh)
        try:
            return max(0, sum(1 for row in reader if any(c.strip() for c in row)) - 1)
        except csv.Error:
            return 0


def folder_resolver(images: str | Path | None) -> ImageResolver | None:
    if images is None:
        return None
    folder = Path(images)
    if not folder.is_dir():
        raise ValueError(f"--images {folder} is not a folder")

    def resolve(name: str) -> Path | None:
        path = folder / name
        return path if path.is_file() else None

    return resolve


def _write_csv_row(writer: csv.DictWriter, result: dict) -> None:
    if "status" in result:
        row = {"line": result["line"], "id": result["id"], "status": result["status"], "error": result["detail"]}
    else:
        row = {
            **{k: result[k] for k in ("line", "id", "category", "confidence", "decision")},
            "category_path": " >> ".join(result["category_path"]),
            "reasons": "; ".join(r["text"] for r in result["reasons"]),
            "status": 200,
        }
    writer.writerow(row)


def predict_file(
    input: str | Path,
    out: str | Path,
    index: str | Path,
    images: str | Path | None = None,
    batch_size: int = BATCH_SIZE,
    k: int | None = None,
    progress: bool = True,
    encoder: Encoder | None = None,
) -> PredictSummary:
    """Categorize every listing of `input` with the index at `index`, one result each in `out`
    (CSV, or JSON lines when `out` ends in .jsonl). O(batch) memory. `encoder` defaults to the
    index's own (loaded here)."""
    out_path = Path(out)
    out_kind = _kind(out_path)
    _kind(Path(input))
    if not Path(input).is_file():
        raise ValueError(f"--input {input}: no such file")
    resolve = folder_resolver(images)
    store = open_store(index)
    encoder = encoder or create_encoder_for(store.manifest)
    check_compatible(store.manifest, encoder)
    categorizer = Categorizer(store)
    summary = PredictSummary(str(input), str(out))
    total = count_listings(input)
    start = time.perf_counter()
    with open_listings(input, resolve) as items, open(out_path, "w", encoding="utf-8", newline="") as dst:
        writer = csv.DictWriter(dst, CSV_COLUMNS) if out_kind == "csv" else None
        if writer is not None:
            writer.writeheader()
        results = predict_listings(store, encoder, categorizer, items, batch_size=batch_size, k=k)
        for result in tqdm(results, total=total, unit="listing", desc="categorizing", disable=not progress):
            summary.listings += 1
            if "status" in result:
                summary.problems += 1
            else:
                summary.decisions[result["decision"]] = summary.decisions.get(result["decision"], 0) + 1
            if writer is not None:
                _write_csv_row(writer, result)
            else:
                _write_json_line(dst, result)
    summary.seconds = time.perf_counter() - start
    return summary


def _write_json_line(dst: IO[str], result: dict) -> None:
    dst.write(json.dumps(result, ensure_ascii=False) + "\n")
