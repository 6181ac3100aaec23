"""Argilla hand-off: records out (the SDK's ``Record.to_dict`` format), exported records back in through the same
checks as the Label Studio import, and the command-line flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from serve_helpers import NAMES, SCRIPT, labels_of, make_run

from loracle.cli import main
from loracle.errors import LoracleError
from loracle.serve.argilla import export_records, import_records, read_records, records_from_items, settings_hint
from loracle.serve.predictions import Prediction
from loracle.serve.session import Item, LabelSession


def answered(record: dict, *values: str | None, status: str | None = None) -> dict:
    """``record`` as ``dataset.records.to_json`` writes it after annotators answered ``values`` (None: no one)."""
    responses = [{"value": v, "user_id": f"u{k}", **({"status": status} if status else {})}
                 for k, v in enumerate(values) if v is not None]
    return {**record, "responses": {"label": responses} if responses else {}, "_server_id": "srv"}


def test_records_from_items_is_pure():
    items = [Item(3, "r3", "nice <b>", None, 1, 0, 0.7), Item(5, "r5", "meh", None, 1, 1, None)]
    assert records_from_items(items, NAMES, {3: Prediction(1, 0.61), 5: Prediction(7, 0.9)}) == [
        {"id": "r3", "fields": {"text": "nice <b>"},
         "metadata": {"uncertainty": 0.7, "loracle_idx": 3, "loracle_id": "r3", "loracle_round": 1},
         "suggestions": {"label": {"value": "rotten", "score": 0.61, "agent": "loracle round 0"}},
         "responses": {}, "vectors": {}},
        {"id": "r5", "fields": {"text": "meh"},
         "metadata": {"loracle_idx": 5, "loracle_id": "r5", "loracle_round": 1},  # no score: no uncertainty
         "suggestions": {}, "responses": {}, "vectors": {}},  # a prediction outside the labels is left out
    ]
    mc = records_from_items([Item(0, "q", "2+2?", ("4", "5"), 2, 0, 0.1)], None, {0: Prediction(1, 0.8)})
    assert mc[0]["fields"] == {"text": "2+2?", "choices": "0: 4\n1: 5"}
    assert mc[0]["suggestions"]["label"]["value"] == "1"
    assert 'rg.LabelQuestion(name="label", labels=[\'fresh\', \'rotten\'])' in settings_hint(NAMES)
    assert 'rg.TextField(name="choices")' in settings_hint(None, multiple_choice=True)


def test_read_records_takes_the_first_submitted_response():
    record = {"id": "r0", "fields": {"text": "t"}, "metadata": {"loracle_idx": 0, "loracle_id": "r0"}}
    discarded_then_real = {**record, "responses": {"label": [{"value": "rotten", "status": "discarded"},
                                                             {"value": "fresh", "status": "submitted"}]}}
    draft_only = answered(record, "rotten", status="draft")
    other_question = {**record, "responses": {"sentiment": [{"value": "rotten"}]}}  # the one question, renamed
    two_questions = {**record, "responses": {"a": [{"value": "x"}], "b": [{"value": "y"}]}}
    multi_label = {**record, "responses": {"label": [{"value": ["fresh", "rotten"]}]}}
    answers = read_records([discarded_then_real, draft_only, other_question, two_questions, multi_label, record,
                            "nonsense", {"id": "x", "metadata": {"loracle_idx": "0"}}, {"id": 4, "fields": []}])
    assert [a.choice for a in answers[:6]] == ["fresh", None, "rotten", None, "fresh", None]
    assert answers[0].loracle_id == "r0" and answers[0].loracle_idx == 0 and answers[0].text == "t"
    assert answers[3].problem == "no response to the question 'label' (responses to ['a', 'b'])"
    assert answers[6].where == "records[6]" and answers[6].problem == "is not a record (a JSON object)"
    assert answers[7].where == "records[7] (id 'x')" and "not an integer" in answers[7].problem
    assert answers[8].problem == "'fields' and 'metadata' must be objects"
    assert read_records([{"id": "r2", "fields": {"text": "t"}}])[0].loracle_id == "r2"  # metadata lost: the id
    with pytest.raises(LoracleError, match="Argilla records"):
        read_records({"records": []})


def test_round_trip_with_every_kind_of_bad_record(tmp_path: Path):
    run_dir = make_run(tmp_path / "run")
    session = LabelSession(run_dir)
    records = export_records(session, tmp_path / "records.json")
    assert json.loads((tmp_path / "records.json").read_text()) == records
    assert [r["metadata"]["loracle_idx"] for r in records] == [0, 1, 2, 3]
    assert records[2]["fields"]["text"] == SCRIPT and records[0]["metadata"]["uncertainty"] == 0.69
    back = [
        answered(records[0], "rotten"),                                                # recorded
        answered(records[1], "maybe"),                                                 # unknown label
        answered({**records[2], "id": "zz", "metadata": {"loracle_id": "zz"}}, "fresh"),  # unknown item
        answered(records[2], "Fresh", "rotten"),                                       # the first answer counts
        answered(records[2], "rotten"),                                                # duplicate of records[3]
        answered(records[3], None),                                                    # not answered yet
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(back))
    report = import_records(session, path)
    assert (report.recorded, report.already_recorded, report.unannotated) == (2, 0, 1)
    assert report.problems == [
        "records[1] (id 'r1'): unknown label 'maybe'; valid labels: 0=fresh, 1=rotten",
        "records[2] (id 'zz'): unknown item: loracle_id 'zz' is not in this run's pool",
        "records[4] (id 'r2'): duplicate: item 'r2' was answered already by records[3] (id 'r2'); skipped",
    ]
    assert labels_of(run_dir) == {0: 1, 2: 0}
    fixed = [answered(r, v) for r, v in zip(records, ["rotten", "fresh", "fresh", "rotten"])]
    report = import_records(session, fixed)  # again, corrected: recorded ones recognised, the rest recorded
    assert (report.recorded, report.already_recorded, report.problems) == (2, 2, [])
    assert labels_of(run_dir) == {0: 1, 1: 0, 2: 0, 3: 1}


def test_multiple_choice_answers_are_choice_indices(tmp_path: Path):
    run_dir = make_run(tmp_path / "mc", multiple_choice=True)
    session = LabelSession(run_dir)
    records = export_records(session)  # choices "4", "5", "six": the label question's values are 0, 1, 2
    report = import_records(session, [answered(records[0], "2"), answered(records[1], "0"),
                                      answered(records[2], "4")])
    assert report.recorded == 2 and len(report.problems) == 1
    assert "unknown label '4'; give a class index in [0, 3)" in report.problems[0]
    assert labels_of(run_dir) == {0: 2, 1: 0}


def test_argilla_flags(tmp_path: Path, capsys):
    run_dir = make_run(tmp_path / "run")
    out = tmp_path / "records.json"
    assert main(["al", "label", str(run_dir), "--export-argilla", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.startswith("wrote 4 pending queries as Argilla records") and "--import-argilla EXPORT.json" in said
    records = json.loads(out.read_text())
    back = tmp_path / "export.json"
    back.write_text(json.dumps([answered(r, v) for r, v in zip(records, ["fresh", "rotten", "nope", None])]))
    assert main(["al", "label", str(run_dir), "--import-argilla", str(back)]) == 1
    captured = capsys.readouterr()
    assert "recorded 2 labels (1 without an annotation); 2 queries still pending" in captured.out
    assert "skipped records[2] (id 'r2'): unknown label 'nope'" in captured.err
    assert "1 record(s) skipped; fix them in Argilla" in captured.err
    (tmp_path / "bad.json").write_text("[oops")
    assert main(["al", "label", str(run_dir), "--import-argilla", str(tmp_path / "bad.json")]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert labels_of(run_dir) == {0: 0, 1: 1}
