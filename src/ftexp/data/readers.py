"""Read a table file (CSV, TSV, JSON, JSONL, Parquet) into a DataFrame, or say why not."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ftexp.config.data import DataConfig
from ftexp.runs.errors import DataError

FORMATS = tuple(f for f in DataConfig.CHOICES["format"] if f != "auto")
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
        if path.stat().st_size == 0:
            raise DataError(f"data file '{path}' is empty (0 bytes); point data.path at a file with "
                            "a header and rows.")
        if fmt in ("csv", "tsv"):
            # on_bad_lines="error": a ragged row is a broken file, not something to drop quietly.
            frame = pd.read_csv(path, sep="," if fmt == "csv" else "\t", encoding="utf-8",
                                on_bad_lines="error", keep_default_na=False, na_values=[""])
        elif fmt == "json":
            frame = _read_json(path)
        elif fmt == "jsonl":
            frame = _read_jsonl(path)
        else:
            frame = pd.read_parquet(path)
    except UnicodeDecodeError as err:
        raise DataError(f"'{path}' is not valid UTF-8 ({_first_bad_utf8(path, err)}); re-save it as "
                        "UTF-8 (e.g. iconv -f latin1 -t utf-8), or set data.format if it is not "
                        "a text file.") from err
    except PermissionError as err:
        raise DataError(f"cannot read '{path}': permission denied; make it readable "
                        f"(chmod +r '{path}') or copy it somewhere you can read.") from err
    except (pd.errors.ParserError, ValueError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = (" (a field holding the separator or a line break must be in double quotes)"
                if fmt in ("csv", "tsv") else "")
        raise DataError(f"cannot parse '{path}' as {fmt}: {first_line.rstrip('.')}; fix the "
                        f"file{hint}, or set data.format if it is not {fmt}.") from err
    if len(frame) == 0:
        raise DataError(f"data file '{path}' has no rows (columns: "
                        f"{', '.join(map(str, frame.columns)) or 'none'}); add rows or point "
                        "data.path at another file.")
    return frame


def _first_bad_utf8(path: Path, err: UnicodeDecodeError, block: int = 2**20) -> str:
    """'byte N, line L' of the first byte that is not UTF-8. Parsers decode in chunks, so their
    offset is relative to a chunk; the file is scanned again (only when it is broken)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1  # bytes handed to the decoder so far; newlines seen + 1
    try:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(block), b""):
                pending = len(decoder.getstate()[0])
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as bad:
                    at = offset - pending + bad.start
                    line = lines + chunk[:max(0, bad.start - pending)].count(b"\n")
                    return f"byte {at}, line {line}"
                offset += len(chunk)
                lines += chunk.count(b"\n")
    except OSError:
        pass
    return f"byte {getattr(err, 'start', '?')}"


def _read_jsonl(path: Path) -> pd.DataFrame:
    """One JSON object per line (blank lines skipped); a broken line is named by its number."""
    import json

    records = []
    with path.open(encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"line {number} is not JSON ({err.msg} at column {err.colno})") from err
            if not isinstance(record, dict):
                raise ValueError(f"line {number} is not a JSON object ({{\"column\": value, …}})")
            records.append(record)
    return pd.DataFrame.from_records(records)


def _read_json(path: Path) -> pd.DataFrame:
    """A JSON array of records, or an object with one list of records inside (e.g. {"data": [...]})."""
    import json

    with path.open(encoding="utf-8-sig") as fh:
        payload = json.load(fh)
    if isinstance(payload, dict):
        lists = [v for v in payload.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise ValueError("expected a list of records, or an object holding exactly one such list")
        payload = lists[0]
    if not isinstance(payload, list) or not all(isinstance(r, dict) for r in payload):
        raise ValueError("expected a list of records (objects)")
    return pd.DataFrame.from_records(payload)
