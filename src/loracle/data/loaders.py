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
from loracle.errors import DataError

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

    - ``classification``: ``text_field`` and ``label_field``. Labels are either all class names (strings, mapped to
      ids through ``label_names``; without it the sorted distinct names become the label names) or all integer
      class indices (integers or digit strings; the label names are then ``"0"``, ``"1"``, ...). Mixing the two,
      within a file or across splits (integers in a test file whose ``label_names`` are class names), is an error:
      an integer is never silently read as a position in someone else's sorted names. Integer labels of a
      ``datasets`` ``ClassLabel`` column are read as that column's names (``-1`` is "no label").
    - ``multiple_choice``: ``text_field`` (question), ``choices_field`` (list of strings) and ``label_field`` (the
      right choice's index, or its text); when ``label_field`` is absent, ``answer_field`` is used for the index.
    - ``generation``: ``text_field`` (question) and ``answer_field`` (kept as a string).

    A record without its target field is an error, except when the whole file has none (an unlabelled pool). Ids
    (``id_field``) must be unique; a classification set whose label names come from its own labels needs at least
    two classes.

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
            set, so ids agree); a label outside them is an error. Integer labels need index names (``"0"``,
            ``"1"``, ... as a set with integer labels gets).

    Returns:
        The examples, with ``label_names`` set for classification.

    Raises:
        DataError: (a :class:`~loracle.errors.LoracleError`, hence a ``ValueError``) unknown task kind, empty data,
            malformed JSON or CSV, text that is not UTF-8, a missing, empty or null field, a wrong type, an unknown
            label, mixed label representations, a repeated id, or a single class; the message names the file, the
            line and the field and says what was expected.
        FileNotFoundError: a path-like source that does not exist, or a folder without the split.
    """
    if task_kind not in TASK_KINDS:
        raise DataError(f"unknown task kind {task_kind!r}; expected one of {list(TASK_KINDS)}")
    records, origin, class_labels = _open(source, split)
    class_names = class_labels.get(label_field) if task_kind == "classification" else None
    if label_names is None and class_names is not None:
        label_names = class_names
    rows = list(records)
    if not rows:
        raise DataError(f"{origin}: no examples found (empty file or split); expected one record per line")
    if class_names is not None:
        _class_label_names(rows, label_field, class_names)
    first_where, first = rows[0]
    text_field = text_field or _guess_field(first, TEXT_FIELD_CANDIDATES[task_kind], first_where, "text")
    builder = _Builder(task_kind, text_field, label_field, choices_field, answer_field, id_field, split, label_names)
    builder.unlabelled = all(not _present(rec, builder.target_field(rec)) for _, rec in rows)
    examples = [builder.build(where, record, row) for row, (where, record) in enumerate(rows)]
    _check_unique_ids(examples, rows, id_field)
    names = builder.final_label_names(origin)
    if names is not None and any(isinstance(e.label, str) for e in examples):
        index = {name: i for i, name in enumerate(names)}
        examples = [dataclasses.replace(e, label=index[e.label]) if isinstance(e.label, str) else e for e in examples]
    return ExampleSet(examples, names, origin)


def _line_of(where: str) -> str:
    """``"line 3"`` (or ``"row 3"``) out of ``"<file>: line 3"``."""
    return where.rpartition(": ")[2]


def _check_unique_ids(examples: list[Example], rows: list[tuple[str, dict[str, Any]]], id_field: str) -> None:
    """Raise on the first id used twice: labels and queries are keyed by id, so a repeat would mix two items up."""
    seen: dict[str, str] = {}
    for example, (where, _) in zip(examples, rows):
        first = seen.get(example.id)
        if first is None:
            seen[example.id] = where
        else:
            raise DataError(f"{where}: duplicate id {example.id!r} in field {id_field!r}, already used at "
                            f"{_line_of(first)}; every example needs its own id")


def _class_label_names(rows: list[tuple[str, dict[str, Any]]], label_field: str, class_names: list[str]) -> None:
    """Replace the integers of a ``ClassLabel`` column by their names in place (``-1``, "no label", by None)."""
    for where, record in rows:
        value = record.get(label_field)
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        if value == -1:
            record[label_field] = None
        elif 0 <= value < len(class_names):
            record[label_field] = class_names[value]
        else:
            raise DataError(f"{where}: field {label_field!r} is {value}, outside the dataset's ClassLabel names "
                            f"{class_names} (indices 0..{len(class_names) - 1}, or -1 for no label)")


def _index_names(names: Sequence[str]) -> bool:
    """True for the names a set with integer labels gets: ``["0", "1", ..., "C-1"]``."""
    return list(names) == [str(i) for i in range(len(names))]


def _present(record: dict[str, Any], name: str) -> bool:
    """True when ``record`` has a non-empty value for ``name`` (an empty CSV cell counts as missing)."""
    value = record.get(name)
    return value is not None and value != ""


def _guess_field(record: dict[str, Any], candidates: Sequence[str], where: str, what: str) -> str:
    for name in candidates:
        if name in record:
            return name
    raise DataError(
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
        # Names given from elsewhere (the training set) that are class names, not "0".."C-1": integers are then
        # not accepted, since reading them as positions in these names is a guess.
        self.named = self.fixed_names is not None and not _index_names(self.fixed_names)
        self.unlabelled = False
        self.raw_labels: list[Any] = []
        self.first_of_kind: dict[str, tuple[str, Any]] = {}  # "name"/"index" -> (where, value) of its first label

    def target_field(self, record: dict[str, Any]) -> str:
        if self.kind == "generation":
            return self.answer_field
        if self.kind == "multiple_choice" and not _present(record, self.label_field):
            return self.answer_field
        return self.label_field

    def _require(self, record: dict[str, Any], name: str, where: str) -> Any:
        if name not in record:
            raise DataError(
                f"{where}: missing field {name!r} for a {self.kind} example; expected fields "
                f"{self.expected_fields()}, the record has {sorted(record)}"
            )
        value = record[name]
        if value is None or value == "":
            state = "null" if value is None else "empty"
            hint = " (only a file where every record lacks it is read as unlabelled)" if name in (
                self.label_field, self.answer_field) else ""
            raise DataError(f"{where}: field {name!r} is {state}; a {self.kind} example needs a value in each of "
                            f"{self.expected_fields()}{hint}")
        return value

    def expected_fields(self) -> list[str]:
        if self.kind == "classification":
            return [self.text_field, self.label_field]
        if self.kind == "multiple_choice":
            return [self.text_field, self.choices_field, f"{self.label_field} (or {self.answer_field})"]
        return [self.text_field, self.answer_field]

    def build(self, where: str, record: dict[str, Any], row: int) -> Example:
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object with fields {self.expected_fields()}, got "
                            f"{type(record).__name__}")
        text = self._require(record, self.text_field, where)
        if not isinstance(text, str):
            raise DataError(f"{where}: field {self.text_field!r} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise DataError(f"{where}: field {self.text_field!r} is empty (only whitespace); every example needs "
                            "text")
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
            raise DataError(f"{where}: field {self.choices_field!r} must be a list of at least 2 strings, got "
                            f"{record[self.choices_field]!r}")
        return tuple(str(c) for c in choices)

    def _choice_index(self, record: dict[str, Any], choices: tuple[str, ...], where: str) -> int:
        field_name = self.target_field(record)
        value = self._require(record, field_name, where)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, str):
            if value not in choices:
                raise DataError(f"{where}: field {field_name!r} is {value!r}, which is none of the choices "
                                f"{list(choices)}; expected an index 0..{len(choices) - 1} or one of the choices")
            return choices.index(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(choices):
            raise DataError(f"{where}: field {field_name!r} is {value!r}; expected an index 0..{len(choices) - 1} "
                            f"into the {len(choices)} choices")
        return value

    def _class_label(self, value: Any, where: str) -> int | str:
        """A label as an index (integers, digit strings) or a name (mapped to an index later, or now by the names)."""
        if isinstance(value, bool):
            value = str(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str) and self.named and value in self.fixed_names:
            self._note("name", value, where)
            return self.fixed_names.index(value)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, int):
            if self.named:
                names = self.fixed_names
                raise DataError(
                    f"{where}: field {self.label_field!r} is the integer {value}, but the label names are the class "
                    f"names {names} (of the training data); write the class name itself"
                    + (f" (e.g. {names[value]!r} if {value} means its position in that list)" if 0 <= value < len(
                        names) else "")
                    + ": an integer is not read as a position in another file's label names"
                )
            self._note("index", value, where)
            if value < 0 or (self.fixed_names is not None and value >= len(self.fixed_names)):
                expected = f"0..{len(self.fixed_names) - 1}" if self.fixed_names is not None else "an integer >= 0"
                raise DataError(f"{where}: field {self.label_field!r} is {value}; expected {expected}"
                                + (f" (label names {self.fixed_names})" if self.fixed_names is not None else ""))
            self.raw_labels.append(value)
            return value
        if not isinstance(value, str):
            raise DataError(f"{where}: field {self.label_field!r} must be a class name (string) or a class index "
                            f"(integer), got {value!r}")
        if self.fixed_names is not None and not self.named:
            raise DataError(
                f"{where}: field {self.label_field!r} is the class name {value!r}, but the training labels are "
                f"integer class indices (label names {self.fixed_names}); write the index instead: mixing names and "
                "indices would pair them by guesswork")
        self._note("name", value, where)
        if self.fixed_names is not None:
            raise DataError(f"{where}: field {self.label_field!r} has label {value!r}, not seen in training; "
                            f"expected one of {self.fixed_names}")
        self.raw_labels.append(value)
        return value  # mapped to an id in final_label_names()

    def _note(self, kind: str, value: Any, where: str) -> None:
        """Remember the first label of each representation; a file that uses both is an error."""
        self.first_of_kind.setdefault(kind, (where, value))
        other = "name" if kind == "index" else "index"
        if other in self.first_of_kind:
            other_where, other_value = self.first_of_kind[other]
            what = {"index": "an integer class index", "name": "a class name"}
            raise DataError(
                f"{where}: field {self.label_field!r} is {value!r}, {what[kind]}, but {_line_of(other_where)} has "
                f"{other_value!r}, {what[other]}; use one representation for every label (all class names, or all "
                "indices 0..C-1)"
            )

    def final_label_names(self, origin: str) -> list[str] | None:
        """The label names: given ones, else the sorted class names, else ``"0".."max"`` for integer labels.

        Raises:
            DataError: when names come from the labels and there is only one class.
        """
        if self.kind != "classification":
            return None
        if self.fixed_names is not None:
            return self.fixed_names
        if not self.raw_labels:
            return None
        if isinstance(self.raw_labels[0], str):
            names = sorted(set(self.raw_labels))
        else:
            names = [str(i) for i in range(max(self.raw_labels) + 1)]
        if len(names) < 2:
            raise DataError(
                f"{origin}: the data has a single class ({self.raw_labels[0]!r} in field {self.label_field!r}, "
                f"all {len(self.raw_labels)} examples); classification needs at least 2 classes. Is "
                f"{self.label_field!r} the label field (--label-field), and is this the whole training data?"
            )
        self.fixed_names = names
        return names


# -- sources ---------------------------------------------------------------------------------------------------------


Records = Iterator[tuple[str, dict[str, Any]]]


def _open(source: str | Path, split: str) -> tuple[Records, str, dict[str, list[str]]]:
    """Return ``(records, origin, class_labels)``: records as ``(where, dict)`` pairs, ``class_labels`` maps each
    ``ClassLabel`` column of a ``datasets`` source to its names (empty for other sources)."""
    path = Path(source)
    if path.is_file():
        return _read_file(path)
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return _read_hf(_load_from_disk(path, split), f"{path} [{split}]")
        for suffix in FILE_SUFFIXES:
            candidate = path / f"{split}{suffix}"
            if candidate.is_file():
                return _read_file(candidate)
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
        raise DataError(f"could not load {text!r} (split {split!r}) from the Hugging Face hub: {err}") from err
    return _read_hf(dataset, f"{text} [{split}]")


def _load_from_disk(path: Path, split: str) -> Any:
    import datasets

    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise FileNotFoundError(f"{path}: no split {split!r}; the dataset has splits {sorted(data)}")
        return data[split]
    return data


def _read_hf(dataset: Any, origin: str) -> tuple[Records, str, dict[str, list[str]]]:
    class_labels = {name: list(feature.names) for name, feature in getattr(dataset, "features", {}).items()
                    if type(feature).__name__ == "ClassLabel"}
    records = ((f"{origin}: row {i}", dict(row)) for i, row in enumerate(dataset))
    return records, origin, class_labels


def _read_file(path: Path) -> tuple[Records, str, dict[str, list[str]]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _checked_utf8(_read_jsonl(path), path), str(path), {}
    if suffix in (".csv", ".tsv"):
        return _checked_utf8(_read_csv(path, "\t" if suffix == ".tsv" else ","), path), str(path), {}
    if suffix == ".parquet":
        import datasets

        try:
            dataset = datasets.Dataset.from_parquet(str(path))
        except Exception as err:  # pyarrow and datasets raise many types for a damaged file
            raise DataError(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from err
        return _read_hf(dataset, str(path))
    raise DataError(f"{path}: unsupported file type {suffix!r}; expected one of {list(FILE_SUFFIXES)}")


def _checked_utf8(records: Records, path: Path) -> Records:
    """Pass ``records`` through; turn a decoding error into one that names the line and the byte."""
    try:
        yield from records
    except UnicodeDecodeError as err:
        raise _not_utf8(path) from err


def _not_utf8(path: Path) -> DataError:
    data = path.read_bytes()
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        return DataError(f"{path}: line {line}: not valid UTF-8 (byte 0x{data[err.start]:02x} at column {column}); "
                         "save the file as UTF-8 (for example `iconv -f latin1 -t utf-8 IN > OUT`)")
    return DataError(f"{path}: not valid UTF-8; save the file as UTF-8")


def _read_jsonl(path: Path) -> Records:
    with path.open(encoding="utf-8-sig") as handle:  # -sig: a byte-order mark is not part of the first record
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: malformed JSON ({err.msg} at column {err.colno}); expected one JSON "
                                "object per line") from err
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object per line, got {type(record).__name__}")
            yield where, record


def _read_csv(path: Path, delimiter: str) -> Records:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        try:
            for record in reader:
                yield f"{path}: line {reader.line_num}", {k: v for k, v in record.items() if k is not None}
        except csv.Error as err:
            kind = "TSV" if delimiter == "\t" else "CSV"
            # DictReader copies line_num only after a good row; its inner reader counts the line that failed.
            raise DataError(f"{path}: line {reader.reader.line_num}: malformed {kind} ({err})") from err
