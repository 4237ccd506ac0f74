"""Benchmark data from local files: JSONL/JSON, parquet, Arrow, or a Hugging Face datasets folder.

A folder may be a `datasets` cache, a hub snapshot or a `save_to_disk` output: the data files whose
path names the split (``test-00000-of-00001.parquet``, ``gsm8k-test.arrow``, ``test/data-....arrow``)
are read in name order.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

DATA_EXTENSIONS = (".jsonl", ".json", ".parquet", ".arrow")
# JSON files in dataset folders that describe the data rather than hold it.
# Split names that a data file's path may carry.
_SPLIT_NAMES = ("train", "test", "validation", "valid", "dev", "prompt")
_METADATA_FILES = {"dataset_info.json", "state.json", "dataset_dict.json", "dataset_infos.json",
                   "config.json", "README.json"}


def read_file(path: str) -> list[dict[str, Any]]:
    """All records of one data file, as dicts with the file's own field names."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".jsonl":
        return _read_jsonl(path)
    if ext == ".json":
        return _read_json(path)
    if ext == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if ext == ".arrow":
        return _read_arrow(path)
    raise ValueError(f"{path}: unsupported data file type {ext!r} (expected one of {DATA_EXTENSIONS})")


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {e}") from e
    return records


def _read_json(path: str) -> list[dict[str, Any]]:
    """A JSON list of records, or JSON lines saved with a .json name (as `datasets.to_json` does)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _read_jsonl(path)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records or JSON lines")
    return data


def _read_arrow(path: str) -> list[dict[str, Any]]:
    """Arrow IPC stream (what `datasets` writes) or Arrow IPC file."""
    import pyarrow as pa

    with pa.memory_map(path) as source:
        try:
            table = pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            table = pa.ipc.open_file(source).read_all()
    return table.to_pylist()


def _names_split(relpath: str, split: str) -> bool:
    """Whether a path inside a dataset folder names the split as a whole word."""
    pattern = rf"(^|[\\/_.\-]){re.escape(split)}([\\/_.\-]|$)"
    return re.search(pattern, relpath) is not None


def find_data_files(folder: str, split: str) -> list[str]:
    """The data files of one split in a dataset folder; an error if none or if they sit in several places."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.endswith(DATA_EXTENSIONS) and name not in _METADATA_FILES and not name.startswith("."):
                found.append(os.path.join(root, name))
    if not found:
        raise FileNotFoundError(f"{folder}: no data files ({', '.join(DATA_EXTENSIONS)}) in this folder")
    matching = [p for p in found if _names_split(os.path.relpath(p, folder), split)]
    if not matching:
        # A folder holding a single split (e.g. `Dataset.save_to_disk`) does not name it.
        named = any(_names_split(os.path.relpath(p, folder), s) for p in found for s in _SPLIT_NAMES)
        if not named and len({os.path.dirname(p) for p in found}) == 1:
            matching = found
        else:
            raise FileNotFoundError(f"{folder}: no data file names the split {split!r}; found {sorted(found)}")
    places = sorted({os.path.dirname(p) for p in matching})
    if len(places) > 1:
        raise ValueError(f"{folder}: split {split!r} is found in several places {places}; "
                         "point --data at one of them")
    return sorted(matching)


def load_records(path: str, split: str = "test") -> list[dict[str, Any]]:
    """Records from a data file, or from the split's files in a dataset folder."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data path {path!r} does not exist")
    if os.path.isdir(path):
        records = []
        for file in find_data_files(path, split):
            records.extend(read_file(file))
        return records
    return read_file(path)


def check_fields(records: Sequence[dict[str, Any]], fields: Sequence[str], source: str, task: str) -> None:
    """Raise a clear error naming the first record that lacks a field the task needs."""
    if not records:
        raise ValueError(f"{source}: no records")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{source}: record {i} is a {type(record).__name__}, not an object")
        missing = [f for f in fields if f not in record]
        if missing:
            raise ValueError(f"{source}: task {task!r} needs field(s) {list(fields)}; record {i} lacks "
                             f"{missing} (it has {sorted(record)})")


def parse_shard(spec: str) -> tuple[int, int]:
    """`"i/n"` -> (i, n) with 0 <= i < n."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec or "")
    if not match:
        raise ValueError(f"shard must look like i/n (e.g. 0/4), got {spec!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {spec!r}: need n >= 1 and 0 <= i < n")
    return index, count


def shard_range(total: int, index: int, count: int) -> range:
    """The contiguous slice of `range(total)` that shard `index` of `count` evaluates."""
    return range(total * index // count, total * (index + 1) // count)
