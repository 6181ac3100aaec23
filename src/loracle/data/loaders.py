"""Reading examples from JSON Lines, CSV/TSV, Parquet, ``datasets.save_to_disk`` folders or the Hugging Face hub.

Every error about the data names the file, the line (or row) and the field, and says what was expected.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from loracle.data.examples import Example, ExampleSet

TASK_KINDS = ("classification", "multiple_choice", "generation")
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
# Field names tried, in order, when the caller does not name the text field.
TEXT_FIELD_CANDIDATES = {
    "classification": ("text", "sentence", "content", "review", "question"),
    "multiple_choice": ("question", "text", "prompt"),
    "generation": ("question", "text", "prompt", "input"),
}


def load_examples(
    source: str | Path,
    task_kind: str,
    *,
    text_field: str | None = None,
    label_field: str = "label",
    choices_field: str = "choices",
    answer_field: str = "answer",
    id_field: str = "id",
    split: str = "train",
    label_names: Sequence[str] | None = None,
) -> ExampleSet:
    """Load a dataset as an :class:`ExampleSet`.

    ``source`` may be a file (``.jsonl``, ``.json`` with one object per line, ``.csv``, ``.tsv``, ``.parquet``), a
    folder holding ``<split>.jsonl`` (or ``.csv``/``.parquet``), a folder written by ``datasets.save_to_disk``, or a
    Hugging Face hub dataset name (loaded with ``datasets.load_dataset(source, split=split)``).

    Fields per task kind:

    - ``classification``: ``text_field`` and ``label_field``. Labels may be strings (mapped to ids through
      ``label_names``; without it the sorted distinct labels become the names), integers (ids), or digit strings
      (read as integers).
    - ``multiple_choice``: ``text_field`` (question), ``choices_field`` (list of strings) and ``label_field`` (the
      right choice's index, or its text); when ``label_field`` is absent, ``answer_field`` is used for the index.
    - ``generation``: ``text_field`` (question) and ``answer_field`` (kept as a string).

    A record without its target field is an error, except when the whole file has none (an unlabelled pool).

    Args:
        source: file, folder or hub name.
        task_kind: ``"classification"``, ``"multiple_choice"`` or ``"generation"``.
        text_field: field holding the text; ``None`` tries the usual names (``text``, ``sentence``, ``question``...).
        label_field: class label / right-choice field.
        choices_field: list of choices (multiple choice).
        answer_field: reference answer (generation) or right-choice index (multiple choice fallback).
        id_field: identifier field; when absent ids are ``"<split>-<row>"``.
        split: which split of a folder or hub dataset.
        label_names: the class names to map string labels with (pass the training set's names when loading a test
            set, so ids agree); a label outside them is an error.

    Returns:
        The examples, with ``label_names`` set for classification.

    Raises:
        ValueError: unknown task kind, empty data, malformed JSON, a missing field, a wrong type or an unknown label;
            the message names the file, the line and the field and lists what was expected.
        FileNotFoundError: a path-like source that does not exist, or a folder without the split.
    """
    if task_kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {task_kind!r}; expected one of {list(TASK_KINDS)}")
    records, origin, class_names = _open(source, split)
    if label_names is None and class_names is not None:
        label_names = class_names
    rows = list(records)
    if not rows:
        raise ValueError(f"{origin}: no examples found (empty file or split); expected one record per line")
    first_where, first = rows[0]
    text_field = text_field or _guess_field(first, TEXT_FIELD_CANDIDATES[task_kind], first_where, "text")
    builder = _Builder(task_kind, text_field, label_field, choices_field, answer_field, id_field, split, label_names)
    builder.unlabelled = all(not _present(rec, builder.target_field(rec)) for _, rec in rows)
    examples = [builder.build(where, record, row) for row, (where, record) in enumerate(rows)]
    names = builder.final_label_names()
    if names is not None and any(isinstance(e.label, str) for e in examples):
        index = {name: i for i, name in enumerate(names)}
        examples = [dataclasses.replace(e, label=index[e.label]) if isinstance(e.label, str) else e for e in examples]
    return ExampleSet(examples, names, origin)


def _present(record: dict[str, Any], name: str) -> bool:
    """True when ``record`` has a non-empty value for ``name`` (an empty CSV cell counts as missing)."""
    value = record.get(name)
    return value is not None and value != ""


def _guess_field(record: dict[str, Any], candidates: Sequence[str], where: str, what: str) -> str:
    for name in candidates:
        if name in record:
            return name
    raise ValueError(
        f"{where}: no {what} field found; tried {list(candidates)} but the record has fields {sorted(record)}. "
        f"Name the field with text_field=... (--text-field on the command line)"
    )


class _Builder:
    """Turns raw records into :class:`Example` objects for one task kind, collecting string label names."""

    def __init__(self, kind: str, text_field: str, label_field: str, choices_field: str, answer_field: str,
                 id_field: str, split: str, label_names: Sequence[str] | None) -> None:
        self.kind, self.text_field, self.label_field = kind, text_field, label_field
        self.choices_field, self.answer_field, self.id_field, self.split = choices_field, answer_field, id_field, split
        self.fixed_names = list(label_names) if label_names is not None else None
        self.unlabelled = False
        self.raw_labels: list[Any] = []

    def target_field(self, record: dict[str, Any]) -> str:
        if self.kind == "generation":
            return self.answer_field
        if self.kind == "multiple_choice" and not _present(record, self.label_field):
            return self.answer_field
        return self.label_field

    def _require(self, record: dict[str, Any], name: str, where: str) -> Any:
        if not _present(record, name):
            raise ValueError(
                f"{where}: missing field {name!r} for a {self.kind} example; expected fields "
                f"{self.expected_fields()}, the record has {sorted(record)}"
            )
        return record[name]

    def expected_fields(self) -> list[str]:
        if self.kind == "classification":
            return [self.text_field, self.label_field]
        if self.kind == "multiple_choice":
            return [self.text_field, self.choices_field, f"{self.label_field} (or {self.answer_field})"]
        return [self.text_field, self.answer_field]

    def build(self, where: str, record: dict[str, Any], row: int) -> Example:
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object with fields {self.expected_fields()}, got "
                             f"{type(record).__name__}")
        text = self._require(record, self.text_field, where)
        if not isinstance(text, str):
            raise ValueError(f"{where}: field {self.text_field!r} must be a string, got {type(text).__name__}")
        example_id = str(record[self.id_field]) if record.get(self.id_field) is not None else f"{self.split}-{row}"
        if self.kind == "generation":
            answer = None if self.unlabelled else str(self._require(record, self.answer_field, where))
            return Example(example_id, text, answer=answer)
        if self.kind == "multiple_choice":
            choices = self._choices(record, where)
            label = None if self.unlabelled else self._choice_index(record, choices, where)
            return Example(example_id, text, label=label, choices=choices)
        label = None if self.unlabelled else self._class_label(self._require(record, self.label_field, where), where)
        return Example(example_id, text, label=label)

    def _choices(self, record: dict[str, Any], where: str) -> tuple[str, ...]:
        choices = self._require(record, self.choices_field, where)
        if isinstance(choices, str):  # CSV cells: a JSON list as text
            try:
                choices = json.loads(choices)
            except json.JSONDecodeError:
                choices = None
        if not isinstance(choices, (list, tuple)) or len(choices) < 2:
            raise ValueError(f"{where}: field {self.choices_field!r} must be a list of at least 2 strings, got "
                             f"{record[self.choices_field]!r}")
        return tuple(str(c) for c in choices)

    def _choice_index(self, record: dict[str, Any], choices: tuple[str, ...], where: str) -> int:
        field_name = self.target_field(record)
        value = self._require(record, field_name, where)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, str):
            if value not in choices:
                raise ValueError(f"{where}: field {field_name!r} is {value!r}, which is none of the choices "
                                 f"{list(choices)}; expected an index 0..{len(choices) - 1} or one of the choices")
            return choices.index(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(choices):
            raise ValueError(f"{where}: field {field_name!r} is {value!r}; expected an index 0..{len(choices) - 1} "
                             f"into the {len(choices)} choices")
        return value

    def _class_label(self, value: Any, where: str) -> int | str:
        if isinstance(value, str) and value.strip().isdigit() and (
            self.fixed_names is None or value not in self.fixed_names
        ):
            value = int(value)
        if isinstance(value, bool):
            value = str(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int):
            if value < 0 or (self.fixed_names is not None and value >= len(self.fixed_names)):
                expected = f"0..{len(self.fixed_names) - 1}" if self.fixed_names is not None else "an integer >= 0"
                raise ValueError(f"{where}: field {self.label_field!r} is {value}; expected {expected}"
                                 + (f" (label names {self.fixed_names})" if self.fixed_names is not None else ""))
            self.raw_labels.append(value)
            return value
        if not isinstance(value, str):
            raise ValueError(f"{where}: field {self.label_field!r} must be a string or an integer, got {value!r}")
        if self.fixed_names is not None:
            if value not in self.fixed_names:
                raise ValueError(f"{where}: field {self.label_field!r} has label {value!r}, not seen in training; "
                                 f"expected one of {self.fixed_names}")
            return self.fixed_names.index(value)
        self.raw_labels.append(value)
        return value  # mapped to an id in final_label_names()

    def final_label_names(self) -> list[str] | None:
        if self.kind != "classification":
            return None
        if self.fixed_names is not None:
            return self.fixed_names
        if not self.raw_labels:
            return None
        strings = sorted({v for v in self.raw_labels if isinstance(v, str)})
        if strings and len(strings) != len(self.raw_labels) and any(isinstance(v, int) for v in self.raw_labels):
            raise ValueError("labels mix integers and strings; use one kind, or pass label_names")
        if strings:
            self.fixed_names = strings
            return strings
        return [str(i) for i in range(max(self.raw_labels) + 1)]


# -- sources ---------------------------------------------------------------------------------------------------------


def _open(source: str | Path, split: str) -> tuple[Iterator[tuple[str, dict[str, Any]]], str, list[str] | None]:
    """Return ``(records, origin, class_names)``: records as ``(where, dict)`` pairs."""
    path = Path(source)
    if path.is_file():
        return _read_file(path), str(path), None
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return _read_hf(_load_from_disk(path, split), f"{path} [{split}]")
        for suffix in FILE_SUFFIXES:
            candidate = path / f"{split}{suffix}"
            if candidate.is_file():
                return _read_file(candidate), str(candidate), None
        present = sorted(p.name for p in path.iterdir())[:20]
        raise FileNotFoundError(
            f"{path}: no {split!r} split found; expected {split}.jsonl, {split}.csv or {split}.parquet, or a "
            f"datasets.save_to_disk folder; the folder holds {present}"
        )
    text = str(source)
    if text.startswith((".", "/", "~")) or text.endswith(FILE_SUFFIXES) or text.count("/") > 1:
        raise FileNotFoundError(f"{text}: no such file or folder (expected a data file, a folder with "
                                f"{split}.jsonl, or a Hugging Face hub dataset name such as 'rotten_tomatoes')")
    import datasets

    try:
        dataset = datasets.load_dataset(text, split=split)
    except Exception as err:  # the hub raises many types; report one clear error
        raise ValueError(f"could not load {text!r} (split {split!r}) from the Hugging Face hub: {err}") from err
    return _read_hf(dataset, f"{text} [{split}]")


def _load_from_disk(path: Path, split: str) -> Any:
    import datasets

    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise FileNotFoundError(f"{path}: no split {split!r}; the dataset has splits {sorted(data)}")
        return data[split]
    return data


def _read_hf(dataset: Any, origin: str) -> tuple[Iterator[tuple[str, dict[str, Any]]], str, list[str] | None]:
    class_names = None
    for feature in getattr(dataset, "features", {}).values():
        if type(feature).__name__ == "ClassLabel":
            class_names = list(feature.names)
            break
    records = ((f"{origin}: row {i}", dict(row)) for i, row in enumerate(dataset))
    return records, origin, class_names


def _read_file(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, "\t" if suffix == ".tsv" else ",")
    if suffix == ".parquet":
        import datasets

        dataset = datasets.Dataset.from_parquet(str(path))
        return _read_hf(dataset, str(path))[0]
    raise ValueError(f"{path}: unsupported file type {suffix!r}; expected one of {list(FILE_SUFFIXES)}")


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: malformed JSON ({err.msg} at column {err.colno}); expected one JSON "
                                 "object per line") from err
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object per line, got {type(record).__name__}")
            yield where, record


def _read_csv(path: Path, delimiter: str) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        for record in reader:
            yield f"{path}: line {reader.line_num}", {k: v for k, v in record.items() if k is not None}
