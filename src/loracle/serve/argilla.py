"""Hand-off to Argilla: pending queries out as Argilla (v2) records, Argilla's exported records back in as labels.

A record is what the Argilla SDK's ``Record.to_dict()`` writes and ``Record.from_dict()`` reads (a JSON list of them
is ``dataset.records.to_json(path)``; ``rg.Record.from_dict`` reads each one back):
``{"id", "fields", "metadata", "suggestions", "responses"}``. The records written here hold:

- ``id``: the item's id in the data; ``fields.text``: the text (multiple choice: the question, and ``fields.choices``
  the numbered choices);
- ``metadata``: ``uncertainty`` (the strategy's score, larger = more uncertain, left out where none was stored; a
  float metadata property sorts and filters by it), ``loracle_idx``, ``loracle_id`` and ``loracle_round``;
- ``suggestions.label`` (when the model's predictions are known): ``{"value": class name, "score": confidence,
  "agent": "loracle round N"}``.

The dataset needs a text field ``text`` (and ``choices`` for multiple choice) and a label question ``label`` over
the class names (multiple choice: the choice indices ``0``, ``1``, ...); :func:`settings_hint` says so in SDK terms.
Reading back takes, for each record, the first submitted response to ``label``
(``responses.label[k].value``; a response whose ``status`` is ``discarded`` or ``draft`` is not an answer), then
:func:`loracle.serve.handoff.record_answers` checks and records it like a Label Studio import.

No Argilla package is needed: this is its JSON format only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loracle.errors import LoracleError
from loracle.serve.handoff import ImportReport, TaskAnswer, load_export, record_answers

if TYPE_CHECKING:
    from loracle.serve.predictions import Prediction
    from loracle.serve.session import Item, LabelSession

#: the label question of the dataset
QUESTION = "label"
#: response statuses that are not an answer
NOT_ANSWERS = ("discarded", "draft")


def records_from_items(items: Sequence[Item], label_names: Sequence[str] | None,
                       predictions: Mapping[int, Prediction] | None = None) -> list[dict[str, Any]]:
    """Argilla records for ``items``, in their order (``suggestions`` only where a prediction is known)."""
    records = []
    for item in items:
        fields: dict[str, Any] = {"text": item.text}
        if item.choices:
            fields["choices"] = "\n".join(f"{k}: {choice}" for k, choice in enumerate(item.choices))
            values = [str(k) for k in range(len(item.choices))]
        else:
            values = list(label_names or [])
        suggestions: dict[str, Any] = {}
        prediction = (predictions or {}).get(item.idx)
        if prediction is not None and 0 <= prediction.label < len(values):
            suggestions[QUESTION] = {"value": values[prediction.label],
                                     "score": round(float(prediction.confidence), 6),
                                     "agent": f"loracle round {item.round - 1}"}
        metadata = {"uncertainty": item.score, "loracle_idx": item.idx, "loracle_id": item.id,
                    "loracle_round": item.round}
        records.append({"id": item.id, "fields": fields,
                        "metadata": {key: value for key, value in metadata.items() if value is not None},
                        "suggestions": suggestions, "responses": {}, "vectors": {}})
    return records


def settings_hint(label_names: Sequence[str] | None, multiple_choice: bool = False) -> str:
    """The Argilla dataset settings that fit :func:`records_from_items`, as SDK code to paste."""
    fields = 'rg.TextField(name="text")' + (', rg.TextField(name="choices")' if multiple_choice else "")
    labels = "[str(k) for k in range(N_CHOICES)]" if multiple_choice else repr(list(label_names or []))
    return (f"rg.Settings(fields=[{fields}], questions=[rg.LabelQuestion(name=\"{QUESTION}\", labels={labels})], "
            "metadata=[rg.FloatMetadataProperty(name=\"uncertainty\"), "
            "rg.IntegerMetadataProperty(name=\"loracle_idx\"), rg.TermsMetadataProperty(name=\"loracle_id\"), "
            "rg.IntegerMetadataProperty(name=\"loracle_round\")])")


def _first_response(responses: Any) -> tuple[str | None, str | None]:
    """(the first submitted answer to the label question, or None; a problem, or None)."""
    if not responses:
        return None, None
    if not isinstance(responses, Mapping):
        return None, "'responses' is not an object of questions"
    answers = responses.get(QUESTION)
    if answers is None and len(responses) == 1:  # a dataset whose one question has another name
        answers = next(iter(responses.values()))
    if answers is None:
        return None, f"no response to the question {QUESTION!r} (responses to {sorted(responses)})"
    if isinstance(answers, Mapping):
        answers = [answers]
    if not isinstance(answers, list):
        return None, f"responses.{QUESTION} is not a list of responses"
    for response in answers:
        if not isinstance(response, Mapping) or response.get("status") in NOT_ANSWERS:
            continue
        value = response.get("value")
        if isinstance(value, list):  # a multi-label question: the first label
            value = value[0] if value else None
        if value is not None:
            return str(value), None
    return None, None


def read_records(records: Any) -> list[TaskAnswer]:
    """Read exported Argilla records (a list of ``Record.to_dict()``) into one :class:`TaskAnswer` per record.

    Raises:
        LoracleError: if ``records`` is not a list.
    """
    if not isinstance(records, list):
        raise LoracleError(f"expected Argilla records (a JSON list, as `dataset.records.to_json(path)` writes), got "
                           f"a {type(records).__name__}")
    answers = []
    for position, record in enumerate(records):
        if not isinstance(record, Mapping):
            answers.append(TaskAnswer(position, f"records[{position}]", problem="is not a record (a JSON object)"))
            continue
        where = f"records[{position}]" + (f" (id {record['id']!r})" if record.get("id") is not None else "")
        metadata = {} if record.get("metadata") is None else record["metadata"]
        fields = {} if record.get("fields") is None else record["fields"]
        if not isinstance(metadata, Mapping) or not isinstance(fields, Mapping):
            answers.append(TaskAnswer(position, where, problem="'fields' and 'metadata' must be objects"))
            continue
        idx = metadata.get("loracle_idx")
        if idx is not None and (isinstance(idx, bool) or not isinstance(idx, int)):
            answers.append(TaskAnswer(position, where, problem=f"loracle_idx {idx!r} is not an integer"))
            continue
        loracle_id = metadata.get("loracle_id", record.get("id"))
        choice, problem = _first_response(record.get("responses"))
        text = fields.get("text")
        answers.append(TaskAnswer(position, where, None if loracle_id is None else str(loracle_id), idx,
                                  text if isinstance(text, str) else None, choice, problem,
                                  by_index="choices" in fields))
    return answers


def export_records(session: LabelSession, path: str | Path | None = None,
                   predictions: Mapping[int, Prediction] | None = None) -> list[dict[str, Any]]:
    """The pending queries of every round as Argilla records, written to ``path`` (JSON) when given."""
    with session.state() as state:
        items = [session.item(state, idx) for idx in state.pending_queries()]
    records = records_from_items(items, session.label_names, predictions)
    if path is not None:
        Path(path).write_text(json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
    return records


def import_records(session: LabelSession, records: Any) -> ImportReport:
    """Record the answers of exported Argilla records (parsed JSON, or a path to it).

    Raises:
        LoracleError: if the file cannot be read as JSON, or is not a list. Problems of single records do not raise:
            they are in the report, and the record is skipped.
    """
    if isinstance(records, (str, Path)):
        records = load_export(records, "Argilla records (`dataset.records.to_json(path)`)")
    return record_answers(session, read_records(records), "argilla")
