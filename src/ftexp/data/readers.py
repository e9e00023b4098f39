"""Read a table file (CSV, TSV, JSON, JSONL, Parquet) into a DataFrame, or say why not."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ftexp.errors import DataError

FORMATS = ("csv", "tsv", "json", "jsonl", "parquet")
_BY_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".jsonl": "jsonl",
              ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def detect_format(path: Path, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    fmt = _BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"cannot tell the format of '{path}' from its extension '{path.suffix}'; use one of "
            f"{', '.join(sorted(_BY_SUFFIX))} or set data.format to one of {', '.join(FORMATS)}."
        )
    return fmt


def read_table(path: str | Path, declared_format: str = "auto") -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file '{path}' does not exist; check data.path.")
    if not path.is_file():
        raise DataError(f"data path '{path}' is not a file; point data.path at a file.")
    fmt = detect_format(path, declared_format)
    try:
        if fmt in ("csv", "tsv"):
            # on_bad_lines="error": a ragged row is a broken file, not something to drop quietly.
            frame = pd.read_csv(path, sep="," if fmt == "csv" else "\t", encoding="utf-8",
                                on_bad_lines="error", keep_default_na=False, na_values=[""])
        elif fmt == "json":
            frame = _read_json(path)
        elif fmt == "jsonl":
            frame = pd.read_json(path, lines=True, encoding="utf-8", dtype=False)
        else:
            frame = pd.read_parquet(path)
    except UnicodeDecodeError as err:
        raise DataError(f"'{path}' is not valid UTF-8 (byte {err.start}); re-save it as UTF-8.") from err
    except PermissionError as err:
        raise DataError(f"cannot read '{path}': permission denied.") from err
    except (pd.errors.ParserError, ValueError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot parse '{path}' as {fmt}: {first_line}.") from err
    if len(frame) == 0:
        raise DataError(f"data file '{path}' has no rows.")
    return frame


def _read_json(path: Path) -> pd.DataFrame:
    """A JSON array of records, or an object with one list of records inside (e.g. {"data": [...]})."""
    import json

    with path.open(encoding="utf-8") as fh:
        payload = json.load(fh)
    if isinstance(payload, dict):
        lists = [v for v in payload.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise ValueError("expected a list of records, or an object holding exactly one such list")
        payload = lists[0]
    if not isinstance(payload, list) or not all(isinstance(r, dict) for r in payload):
        raise ValueError("expected a list of records (objects)")
    return pd.DataFrame.from_records(payload)
