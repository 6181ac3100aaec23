"""Hand-off to Label Studio: pending queries out as Label Studio tasks, a Label Studio JSON export back in as labels.

Tasks carry the item and where it came from in ``data`` (``text``, ``loracle_idx``, ``loracle_id``,
``uncertainty``, ``loracle_round``; multiple choice adds ``options``) and, when the model's predictions are known,
a ``predictions`` entry Label Studio shows as a pre-annotation. :func:`label_config` is the labelling interface
that reads them (a ``Choices`` control named ``label`` on a ``Text`` named ``text``).

Reading back takes the first annotation that was not cancelled, and in it the first result with choices:
``annotations[0].result[0].value.choices[0]``; :func:`loracle.serve.handoff.record_answers` checks and records them
(unknown items, unknown labels, repeated items: reported by position and skipped).

:func:`tasks_from_items` and :func:`read_answers` are pure (lists and dicts in, lists and dicts out); the two
functions that touch a run, :func:`export_tasks` and :func:`import_tasks`, are thin wrappers around them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from loracle.errors import LoracleError
from loracle.serve.handoff import ImportReport, TaskAnswer, load_export, record_answers

if TYPE_CHECKING:
    from loracle.serve.predictions import Prediction
    from loracle.serve.session import Item, LabelSession

#: the names of the controls in :func:`label_config`, used in predictions
FROM_NAME, TO_NAME = "label", "text"


# -- pure conversion ---------------------------------------------------------------------------------------------
def label_config(label_names: Sequence[str] | None, multiple_choice: bool = False) -> str:
    """The Label Studio labelling interface (XML) for tasks written by :func:`tasks_from_items`.

    Args:
        label_names: the classes (classification).
        multiple_choice: each task brings its own choices (``data.options``) instead.
    """
    text = f'  <Text name="{TO_NAME}" value="$text"/>'
    if multiple_choice:
        choices = f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" value="$options"/>'
        return f"<View>\n{text}\n{choices}\n</View>\n"
    lines = [f"    <Choice value={quoteattr(name)}/>" for name in label_names or []]
    return (f"<View>\n{text}\n  <Choices name=\"{FROM_NAME}\" toName=\"{TO_NAME}\" choice=\"single\" "
            "showInline=\"true\">\n" + "\n".join(lines) + "\n  </Choices>\n</View>\n")


def tasks_from_items(items: Sequence[Item], label_names: Sequence[str] | None,
                     predictions: Mapping[int, Prediction] | None = None,
                     model_version: str | None = None) -> list[dict[str, Any]]:
    """Label Studio tasks for ``items``, in their order.

    Args:
        items: the queries (:class:`loracle.serve.session.Item`).
        label_names: class names (classification); multiple-choice items use their own choices.
        predictions: ``{pool index: Prediction}``; items with one get a ``predictions`` list.
        model_version: what Label Studio shows as the prediction's model.

    Returns:
        ``[{"data": {...}, "predictions": [...]}]`` (``predictions`` only where there is one).
    """
    tasks = []
    for item in items:
        data: dict[str, Any] = {"text": item.text, "loracle_idx": item.idx, "loracle_id": item.id,
                                "uncertainty": item.score, "loracle_round": item.round}
        options = list(item.choices) if item.choices else list(label_names or [])
        if item.choices:
            data["options"] = [{"value": choice} for choice in item.choices]
        task: dict[str, Any] = {"data": data}
        prediction = (predictions or {}).get(item.idx)
        if prediction is not None and 0 <= prediction.label < len(options):
            task["predictions"] = [{
                "model_version": model_version or f"loracle round {item.round - 1}",
                "score": round(float(prediction.confidence), 6),
                "result": [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                            "value": {"choices": [options[prediction.label]]}}],
            }]
        tasks.append(task)
    return tasks


def _first_choice(task: Mapping[str, Any]) -> str | None:
    for annotation in task.get("annotations") or []:
        if not isinstance(annotation, Mapping) or annotation.get("was_cancelled"):
            continue
        for result in annotation.get("result") or []:
            value = result.get("value") if isinstance(result, Mapping) else None
            choices = value.get("choices") if isinstance(value, Mapping) else None
            if choices:
                return str(choices[0])
        return None  # the first real annotation decides, even when it chose nothing
    return None


def read_answers(tasks: Any) -> list[TaskAnswer]:
    """Read a Label Studio JSON export (a list of tasks) into one :class:`TaskAnswer` per task.

    Raises:
        LoracleError: if ``tasks`` is not a list (another export format, e.g. CSV or JSON-MIN of one task).
    """
    if not isinstance(tasks, list):
        raise LoracleError(f"expected a Label Studio JSON export (a list of tasks), got a {type(tasks).__name__}; "
                           "export the project as 'JSON'")
    answers = []
    for position, task in enumerate(tasks):
        if not isinstance(task, Mapping):
            answers.append(TaskAnswer(position, f"tasks[{position}]", problem="is not a task (a JSON object)"))
            continue
        where = f"tasks[{position}]" + (f" (Label Studio id {task['id']})" if task.get("id") is not None else "")
        data = task.get("data")
        if not isinstance(data, Mapping):
            answers.append(TaskAnswer(position, where, problem="has no 'data'"))
            continue
        idx = data.get("loracle_idx")
        if idx is not None and (isinstance(idx, bool) or not isinstance(idx, int)):
            answers.append(TaskAnswer(position, where, problem=f"loracle_idx {idx!r} is not an integer"))
            continue
        loracle_id = data.get("loracle_id")
        text = data.get("text")
        answers.append(TaskAnswer(position, where, None if loracle_id is None else str(loracle_id), idx,
                                  text if isinstance(text, str) else None, _first_choice(task)))
    return answers


# -- the run side ------------------------------------------------------------------------------------------------
def export_tasks(session: LabelSession, path: str | Path | None = None,
                 predictions: Mapping[int, Prediction] | None = None) -> list[dict[str, Any]]:
    """The pending queries of every round as Label Studio tasks, written to ``path`` (JSON) when given."""
    with session.state() as state:
        items = [session.item(state, idx) for idx in state.pending_queries()]
    tasks = tasks_from_items(items, session.label_names, predictions)
    if path is not None:
        Path(path).write_text(json.dumps(tasks, indent=2, ensure_ascii=False), encoding="utf-8")
    return tasks


def import_tasks(session: LabelSession, tasks: Any) -> ImportReport:
    """Record the answers of a Label Studio JSON export (parsed JSON, or a path to it).

    Raises:
        LoracleError: if the file cannot be read as JSON, or is not a list of tasks. Problems of single tasks do not
            raise: they are in the report, and the task is skipped.
    """
    if isinstance(tasks, (str, Path)):
        tasks = load_export(tasks, "Label Studio's 'JSON' export")
    return record_answers(session, read_answers(tasks), "label-studio")
