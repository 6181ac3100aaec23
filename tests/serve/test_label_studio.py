"""Label Studio hand-off: pure conversion both ways, then a run's queries out and a Label Studio export back in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from serve_helpers import NAMES, SCRIPT, labels_of, make_run

from loracle.errors import LoracleError
from loracle.serve.label_studio import (
    export_tasks,
    import_tasks,
    label_config,
    read_answers,
    tasks_from_items,
)
from loracle.serve.predictions import Prediction
from loracle.serve.session import Item, LabelSession


def annotated(task: dict, choice: str | None, cancelled: bool = False, task_id: int | None = None) -> dict:
    """``task`` as Label Studio exports it after an annotator chose ``choice``."""
    out = {**task, "id": task_id}
    if choice is not None:
        out["annotations"] = [{"was_cancelled": cancelled, "result": [
            {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}]}]
    return out


def test_tasks_from_items_is_pure():
    items = [Item(3, "r3", "nice <b>", None, 1, 0, 0.7), Item(5, "r5", "meh", None, 1, 1, None)]
    tasks = tasks_from_items(items, NAMES, {3: Prediction(1, 0.61)})
    assert tasks == [
        {"data": {"text": "nice <b>", "loracle_idx": 3, "loracle_id": "r3", "uncertainty": 0.7, "loracle_round": 1},
         "predictions": [{"model_version": "loracle round 0", "score": 0.61, "result": [
             {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["rotten"]}}]}]},
        {"data": {"text": "meh", "loracle_idx": 5, "loracle_id": "r5", "uncertainty": None, "loracle_round": 1}},
    ]
    mc = tasks_from_items([Item(0, "q", "2+2?", ("4", "5"), 0, 0, 0.1)], None)
    assert mc[0]["data"]["options"] == [{"value": "4"}, {"value": "5"}]


def test_label_config_names_every_class_escaped():
    xml = label_config(["fresh", 'say "no" & <go>'])
    assert '<Choice value="fresh"/>' in xml and "<Choice value='say \"no\" &amp; &lt;go&gt;'/>" in xml
    assert 'name="label" toName="text"' in xml and '<Text name="text" value="$text"/>' in xml
    assert 'value="$options"' in label_config(None, multiple_choice=True)


def test_read_answers_takes_the_first_real_annotation():
    task = {"data": {"text": "t", "loracle_id": "r0", "loracle_idx": 0}}
    cancelled_then_real = {**task, "annotations": [
        {"was_cancelled": True, "result": [{"value": {"choices": ["rotten"]}}]},
        {"result": [{"type": "textarea", "value": {"text": ["note"]}}, {"value": {"choices": ["fresh", "x"]}}]}]}
    answers = read_answers([cancelled_then_real, task, "nonsense", {"id": 9}, {"data": {"loracle_idx": "0"}}])
    assert [a.choice for a in answers[:2]] == ["fresh", None]
    assert answers[2].problem == "is not a task (a JSON object)"
    assert answers[3].where == "tasks[3] (Label Studio id 9)" and answers[3].problem == "has no 'data'"
    assert "not an integer" in answers[4].problem
    with pytest.raises(LoracleError, match="a list of tasks"):
        read_answers({"data": {}})


def test_round_trip_with_every_kind_of_bad_task(tmp_path: Path):
    run_dir = make_run(tmp_path / "run")
    session = LabelSession(run_dir)
    tasks = export_tasks(session, tmp_path / "tasks.json")
    assert json.loads((tmp_path / "tasks.json").read_text()) == tasks
    assert [t["data"]["loracle_idx"] for t in tasks] == [0, 1, 2, 3]
    assert tasks[2]["data"]["text"] == SCRIPT and tasks[0]["data"]["uncertainty"] == 0.69
    assert "predictions" not in tasks[0]
    back = [
        annotated(tasks[0], "rotten", task_id=10),                                   # recorded
        annotated(tasks[1], "maybe", task_id=11),                                    # unknown label
        annotated({"data": {**tasks[2]["data"], "loracle_id": "zz"}}, "fresh"),       # unknown item
        annotated(tasks[2], "Fresh", task_id=12),                                    # recorded (case-insensitive)
        annotated(tasks[2], "rotten", task_id=13),                                   # duplicate of tasks[3]
        annotated(tasks[3], None),                                                   # not annotated yet
        annotated(tasks[1], "fresh", cancelled=True),                                # skipped annotation
        annotated({"data": {**tasks[3]["data"], "loracle_idx": 0}}, "fresh"),        # idx and id disagree
        annotated({"data": {**tasks[3]["data"], "text": "another text"}}, "fresh"),  # text changed
        annotated({"data": {"loracle_idx": 6, "text": "review number 6"}}, "fresh"),  # in the pool, never queried
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(back))
    report = import_tasks(session, path)
    assert (report.recorded, report.already_recorded, report.unannotated) == (2, 0, 2)
    problems = "\n".join(report.problems)
    assert len(report.problems) == 6, problems
    assert "tasks[1] (Label Studio id 11): unknown label 'maybe'; valid labels: 0=fresh, 1=rotten" in problems
    assert "tasks[2]: unknown item: loracle_id 'zz'" in problems
    assert "tasks[4] (Label Studio id 13): duplicate: item 'r2' was answered already by tasks[3]" in problems
    assert "tasks[7]: loracle_idx 0 and loracle_id 'r3' disagree" in problems
    assert "tasks[8]: the text does not match item 'r3'" in problems
    assert "tasks[9]: item 'r6' is not a query of this run" in problems
    assert labels_of(run_dir) == {0: 1, 2: 0}
    # a corrected export again: what is recorded is recognised, a contradiction is reported, the rest recorded
    fixed = [annotated(tasks[0], "rotten"), annotated(tasks[1], "fresh"), annotated(tasks[2], "rotten"),
             annotated(tasks[3], "rotten")]
    report = import_tasks(session, fixed)
    assert (report.recorded, report.already_recorded) == (2, 1)
    assert report.problems == ["tasks[2]: item 'r2' already has the label 'fresh', the export says 'rotten'; a "
                               "recorded label is not changed"]
    assert labels_of(run_dir) == {0: 1, 1: 0, 2: 0, 3: 1}


def test_multiple_choice_answers_are_choice_texts(tmp_path: Path):
    run_dir = make_run(tmp_path / "mc", multiple_choice=True)
    session = LabelSession(run_dir)
    tasks = export_tasks(session)
    # choice texts "4", "5", "six": "4" is the first choice, not index 4
    report = import_tasks(session, [annotated(tasks[0], "4"), annotated(tasks[1], "SIX"), annotated(tasks[2], "1"),
                                    annotated(tasks[3], "seven")])
    assert report.recorded == 3 and len(report.problems) == 1 and "unknown label 'seven'" in report.problems[0]
    assert labels_of(run_dir) == {0: 0, 1: 2, 2: 1}


def test_unreadable_files(tmp_path: Path):
    session = LabelSession(make_run(tmp_path / "run"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LoracleError, match="not JSON"):
        import_tasks(session, tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text('{"data": {}}')
    with pytest.raises(LoracleError, match="export the project as 'JSON'"):
        import_tasks(session, tmp_path / "obj.json")
