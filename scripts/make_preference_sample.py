"""Build data/preference/ from LLaMA-Factory's preference demo data (run once; output committed).

    python scripts/make_preference_sample.py ../shared/datasets/preference

Keeps the first N records of dpo_en_demo.json (ShareGPT: `conversations` + `chosen` / `rejected`
messages) and kto_en_demo.json (`messages` + boolean `label`), in their own shapes. Where a file
would reach MAX_BYTES, the longest texts are cut at the largest length that fits (at a word
boundary, marked " […]"); every other text is kept whole. The samples are then read with
ftexp.data.preference to check they are valid. LLaMA-Factory's license file is copied alongside.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

N_RECORDS = 60
MAX_BYTES = 150_000
MARK = " […]"
FILES = {"dpo_en_demo.json": "dpo_en_demo_sample.json", "kto_en_demo.json": "kto_en_demo_sample.json"}
TEXT_KEYS = ("value", "content")  # message text under ShareGPT's and OpenAI's keys


def cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = text[:limit - len(MARK)]
    space = head.rfind(" ")
    if space > 0.8 * len(head):  # end at a word boundary unless that loses much
        head = head[:space]
    return head.rstrip() + MARK


def capped(node: Any, limit: int | None) -> Any:
    """A copy of `node` with every message text cut to `limit` characters (None: unchanged)."""
    if isinstance(node, list):
        return [capped(item, limit) for item in node]
    if isinstance(node, dict):
        return {k: (cut(v, limit) if limit is not None and k in TEXT_KEYS and isinstance(v, str)
                    else capped(v, limit)) for k, v in node.items()}
    return node


def encoded(records: list[dict[str, Any]]) -> bytes:
    return (json.dumps(records, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def fit(records: list[dict[str, Any]]) -> tuple[bytes, int | None]:
    """The records as JSON under MAX_BYTES, and the text length cap that took (None: no cap)."""
    whole = encoded(records)
    if len(whole) < MAX_BYTES:
        return whole, None
    low, high = 200, max(len(json.dumps(records)), 201)  # largest cap that fits: binary search
    while low < high:
        middle = (low + high + 1) // 2
        if len(encoded(capped(records, middle))) < MAX_BYTES:
            low = middle
        else:
            high = middle - 1
    return encoded(capped(records, low)), low


def main(source: Path, target: Path) -> None:
    from ftexp.data.preference import read_pairs, read_unpaired
    from ftexp.data.readers import read_table

    target.mkdir(parents=True, exist_ok=True)
    for name, sample_name in FILES.items():
        records = json.loads((source / name).read_text(encoding="utf-8"))[:N_RECORDS]
        data, limit = fit(records)
        (target / sample_name).write_bytes(data)
        frame = read_table(target / sample_name)
        read = read_pairs(frame) if "dpo" in name else read_unpaired(frame)
        assert len(read) == N_RECORDS, (sample_name, len(read))
        truncated = data.decode("utf-8").count(MARK)
        print(f"wrote {len(read)} records ({len(data):,} bytes) to {target / sample_name}; "
              + (f"{truncated} texts cut to {limit} characters" if limit else "no text cut"))
    shutil.copyfile(source / "LICENSE-LLaMA-Factory", target / "LICENSE-LLaMA-Factory")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parents[1] / "data/preference")
