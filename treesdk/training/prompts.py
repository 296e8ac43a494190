"""Training prompts from files and local datasets (``--prompts SOURCE [--prompt-column NAME]``).

What ``SOURCE`` may be, chosen by its suffix (or by being a folder):

* ``.txt`` (or any other suffix): one prompt per line; blank lines and lines starting with ``#``
  are skipped. Flow-GRPO's ``dataset/*/train.txt`` and DanceGRPO's prompt files are of this kind.
* ``.csv`` / ``.tsv``: a header row, prompts in ``column``.
* ``.jsonl``: one JSON object per line (prompt in ``column``) or one JSON string per line;
  Flow-GRPO's GenEval ``metadata.jsonl`` is of this kind (``column`` ``prompt``).
* ``.json``: a list of strings; a list of objects (prompt in ``column``); or an object whose
  values are lists of strings, concatenated in file order. HPDv2 is covered: its benchmark
  prompt files (``anime.json``, ``concept-art.json``, ``paintings.json``, ``photo.json``) are lists
  of strings, its ``train.json``/``test.json`` lists of objects with a ``prompt`` field, and the
  ``{"anime": [...], "photo": [...]}`` mapping of ``hpsv2.benchmark_prompts("all")`` dumped with
  ``json.dump`` is an object of lists (``column`` then picks one style).
* ``.parquet``: ``column`` of the table (needs ``pyarrow``: ``pip install "treesdk[data]"``).
* a folder: a Hugging Face ``datasets`` folder, as written by ``Dataset.save_to_disk`` or
  ``DatasetDict.save_to_disk`` (``split``, default ``train``), or any local folder of data files
  that ``datasets.load_dataset(folder)`` reads (needs ``datasets``: ``pip install "treesdk[data]"``).
  Nothing is downloaded: a name that is not a local path is an error.

``column`` defaults to the first of :data:`DEFAULT_COLUMNS` that the source has. Prompts are
stripped; empty ones are dropped; order is kept (the trainer shuffles per epoch itself).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from treesdk.safe_load import MAX_PROMPT_BYTES, excerpt, load_json, read_text

#: column names tried, in order, when none is given
DEFAULT_COLUMNS = ("prompt", "caption", "text", "prompts", "captions")


def load_prompts(source: str | Path, column: str | None = None, split: str | None = None) -> list[str]:
    """The prompts of ``source`` (see module docstring); a one-line ``ValueError`` or
    ``FileNotFoundError`` naming the file and what is wrong otherwise."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"--prompts {source}: no such file or folder (a text, CSV, JSONL, JSON or parquet "
                                "file, or a local Hugging Face datasets folder; nothing is downloaded)")
    if path.is_dir():
        prompts = _from_dataset_folder(path, column, split)
    else:
        suffix = path.suffix.lower()
        if suffix in (".csv", ".tsv"):
            prompts = _from_csv(path, column, "\t" if suffix == ".tsv" else ",")
        elif suffix == ".jsonl":
            prompts = _from_jsonl(path, column)
        elif suffix == ".json":
            prompts = _from_json(path, column)
        elif suffix == ".parquet":
            prompts = _from_parquet(path, column)
        else:
            if column is not None:
                raise ValueError(f"--prompt-column {column!r}: {path} is a plain text file (one prompt per line), "
                                 "which has no columns")
            prompts = _from_text(path)
    prompts = [p.strip() for p in prompts if isinstance(p, str) and p.strip()]
    if not prompts:
        raise ValueError(f"prompt file {source} holds no prompts")
    check_prompt_text(prompts, str(source))
    return prompts


#: characters of one prompt past which it is refused (text encoders read a few hundred tokens)
MAX_PROMPT_CHARS = 100_000


def check_prompt_text(prompts: Sequence[str], where: str) -> None:
    """A ``ValueError`` naming ``where`` and the prompt's number (1-based) for a prompt holding NUL
    or other control characters (a binary file that happens to be UTF-8) or longer than
    :data:`MAX_PROMPT_CHARS` characters."""
    for number, prompt in enumerate(prompts, 1):
        bad = next((c for c in prompt if (ord(c) < 32 and c not in "\t\n\r") or ord(c) == 127), None)
        if bad is not None:
            raise ValueError(f"prompt file {where}: prompt {number} holds the control character {bad!r} "
                             f"(at {prompt.index(bad)}); expected text, one prompt per line or record")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt file {where}: prompt {number} is {len(prompt)} characters long; at most "
                             f"{MAX_PROMPT_CHARS} are accepted (text encoders read a few hundred tokens)")


def pick_column(columns: Sequence[str], column: str | None, where: str) -> str:
    """``column`` if ``columns`` has it, else the first default name present; one-line error listing
    the columns otherwise."""
    if column is not None:
        if column not in columns:
            raise ValueError(f"--prompt-column {column!r} is not in {where}; its columns are: {', '.join(columns)}")
        return column
    for name in DEFAULT_COLUMNS:
        if name in columns:
            return name
    if len(columns) == 1:
        return columns[0]
    raise ValueError(f"{where} has no column named {' / '.join(DEFAULT_COLUMNS)}; name one with --prompt-column "
                     f"(its columns are: {', '.join(columns)})")


def _read(path: Path) -> str:
    """The file's UTF-8 text, bounded (:data:`treesdk.safe_load.MAX_PROMPT_BYTES`), errors naming it."""
    return read_text(path, "prompt file", MAX_PROMPT_BYTES)


def _from_text(path: Path) -> list[str]:
    lines = [line.strip() for line in _read(path).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _from_csv(path: Path, column: str | None, delimiter: str) -> list[str]:
    reader = csv.DictReader(io.StringIO(_read(path), newline=""), delimiter=delimiter)
    name = pick_column(list(reader.fieldnames or []), column, str(path))
    return [row.get(name) or "" for row in reader]


def _field(record: Any, column: str | None, where: str) -> Any:
    if isinstance(record, str):
        if column is not None:
            raise ValueError(f"--prompt-column {column!r}: {where} holds plain strings, not objects with fields")
        return record
    if isinstance(record, dict):
        name = pick_column(list(record), column, where)
        value = record.get(name)
        if value is not None and not isinstance(value, str):  # a number or a list was dropped as "no prompt"
            raise ValueError(f"{where}: its {name!r} is {type(value).__name__} {excerpt(value, 60)}, not text; "
                             "prompts are strings (or name another field with --prompt-column)")
        return value
    raise ValueError(f"{where}: expected a string or an object per prompt, found {type(record).__name__}")


def _from_jsonl(path: Path, column: str | None) -> list[str]:
    out = []
    for number, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} line {number} is not JSON ({exc.msg})") from None
        out.append(_field(record, column, f"{path} line {number}"))
    return out


def _from_json(path: Path, column: str | None) -> list[str]:
    data = load_json(_read(path), str(path))
    if isinstance(data, dict):
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        if column is not None:
            if column not in lists:
                raise ValueError(f"--prompt-column {column!r} is not a list in {path}; its lists are: {', '.join(lists)}")
            data = lists[column]
            column = None
        elif lists and all(all(isinstance(x, str) for x in v) for v in lists.values()):
            data = [x for v in lists.values() for x in v]
        else:
            raise ValueError(f"{path}: expected a list of prompts, a list of objects, or an object of prompt lists")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of prompts, found {type(data).__name__}")
    return [_field(record, column, f"{path} item {i}") for i, record in enumerate(data)]


def _require(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"{what} needs the {module} package: pip install \"treesdk[data]\" (or pip install {module})")


def _from_parquet(path: Path, column: str | None) -> list[str]:
    _require("pyarrow", f"--prompts {path} (parquet)")
    import pyarrow.parquet as pq

    names = list(pq.read_schema(path).names)
    name = pick_column(names, column, str(path))
    return [str(v) if v is not None else "" for v in pq.read_table(path, columns=[name]).column(name).to_pylist()]


def _from_dataset_folder(path: Path, column: str | None, split: str | None) -> list[str]:
    _require("datasets", f"--prompts {path} (a datasets folder)")
    import datasets

    saved = (path / "dataset_info.json").is_file() or (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()
    if saved:
        data: Any = datasets.load_from_disk(str(path))
    else:
        data = datasets.load_dataset(str(path))
    if isinstance(data, (datasets.DatasetDict, dict)):
        wanted = split or "train"
        if wanted not in data:
            raise ValueError(f"--prompts {path}: no split {wanted!r}; its splits are: {', '.join(data)}")
        data = data[wanted]
    elif split not in (None, "train"):
        raise ValueError(f"--prompts {path}: a single-split dataset, --prompt-split {split!r} does not apply")
    name = pick_column(list(data.column_names), column, str(path))
    return list(_strings(data[name]))


def _strings(values: Iterable[Any]) -> Iterable[str]:
    for value in values:
        yield value if isinstance(value, str) else ("" if value is None else str(value))
