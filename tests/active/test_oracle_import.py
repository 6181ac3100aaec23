"""`al label --import`: rows are matched by id (idx and text are checked), re-imports skip identical answers."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from loracle.active.oracle import ImportResult, export_queries, import_labels
from loracle.active.state import RunState
from loracle.data import Example
from loracle.errors import LoracleError

NAMES = ["fresh", "rotten"]


@pytest.fixture
def state(tmp_path: Path):
    """A human-oracle run: pool items r0..r5, of which r0..r3 are queried and waiting for labels."""
    state = RunState(tmp_path / "run")
    pool = [Example(f"r{i}", f"review number {i}") for i in range(6)]
    state.initialise({"strategy": "random"}, pool, [Example("t0", "test", label=0)], NAMES, gold=False)
    with state.transaction() as db:
        state.add_queries(0, [0, 1, 2, 3], None, db)
    yield state
    state.close()


def exported(state: RunState, path: Path, answers: dict[str, str]) -> list[dict[str, str]]:
    """Export the pending queries and fill in ``answers`` (by id); returns the rows."""
    export_queries(state, path)
    rows = list(csv.DictReader(open(path, encoding="utf-8")))
    for row in rows:
        row["label"] = answers.get(row["id"], "")
    return rows


def write(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_rows_are_matched_by_id_not_position(state: RunState, tmp_path: Path) -> None:
    rows = exported(state, tmp_path / "q.csv", {"r0": "fresh", "r1": "rotten", "r2": "rotten", "r3": "fresh"})
    rows.reverse()  # re-sorted in a spreadsheet, idx column dropped
    result = import_labels(state, write(tmp_path / "q.csv", rows, ["id", "text", "label"]))
    assert result == ImportResult(recorded=4, already_recorded=0, blank=0)
    assert state.labels() == {0: 0, 1: 1, 2: 1, 3: 0}


def test_idx_that_disagrees_with_id_is_an_error(state: RunState, tmp_path: Path) -> None:
    # Before: the idx column decided, so this row's label went to item r1.
    rows = exported(state, tmp_path / "q.csv", {"r0": "fresh", "r1": "rotten"})
    rows[0]["idx"], rows[1]["idx"] = rows[1]["idx"], rows[0]["idx"]
    with pytest.raises(LoracleError) as err:
        import_labels(state, write(tmp_path / "q.csv", rows))
    assert str(err.value) == (
        f"{tmp_path / 'q.csv'}: line 2: idx 1 and id 'r0' disagree: item 'r0' has idx 0, idx 1 is item 'r1'; were "
        "rows re-sorted or edited? Fix the idx cell or remove the idx column (the id decides) (0 label(s) before it "
        "were recorded)")
    assert state.labels() == {}


def test_text_that_disagrees_is_an_error(state: RunState, tmp_path: Path) -> None:
    rows = exported(state, tmp_path / "q.csv", {"r0": "fresh", "r1": "rotten"})
    rows[1]["text"] = "review number 3"
    with pytest.raises(LoracleError) as err:
        import_labels(state, write(tmp_path / "q.csv", rows, ["idx", "text", "label"]))  # no id column: idx + text
    assert str(err.value) == (
        f"{tmp_path / 'q.csv'}: line 3: the text does not match item 'r1': the CSV has 'review number 3', the run "
        "has 'review number 1'; the row may belong to another item (1 label(s) before it were recorded)")
    assert state.labels() == {0: 0}
    rows[1]["text"] = "  review\r\nnumber 1 "  # whitespace rewritten by a spreadsheet still matches
    assert import_labels(state, write(tmp_path / "q.csv", rows)) == ImportResult(1, 1, 2)


def test_reimport_after_partial_import_skips_identical_answers(state: RunState, tmp_path: Path) -> None:
    rows = exported(state, tmp_path / "q.csv", {"r0": "fresh", "r1": "meh", "r2": "rotten", "r3": "fresh"})
    with pytest.raises(LoracleError, match=r"line 3: unknown label 'meh'; valid labels: 0=fresh, 1=rotten \(1 label"):
        import_labels(state, write(tmp_path / "q.csv", rows))
    assert state.labels() == {0: 0}
    rows[1]["label"] = "rotten"
    assert import_labels(state, write(tmp_path / "q.csv", rows)) == ImportResult(3, 1, 0)
    assert state.labels() == {0: 0, 1: 1, 2: 1, 3: 0}
    assert import_labels(state, tmp_path / "q.csv") == ImportResult(0, 4, 0)  # a third time: nothing new


def test_reimport_that_contradicts_a_recorded_label(state: RunState, tmp_path: Path) -> None:
    rows = exported(state, tmp_path / "q.csv", {"r0": "fresh"})
    import_labels(state, write(tmp_path / "q.csv", rows))
    rows[0]["label"] = "rotten"
    rows[1]["label"] = "fresh"
    with pytest.raises(LoracleError) as err:
        import_labels(state, write(tmp_path / "q.csv", rows))
    assert str(err.value) == (
        f"{tmp_path / 'q.csv'}: line 2: item 'r0' already has the label 'fresh', this row says 'rotten'; a recorded "
        "label is not changed: make the row agree or delete it (0 label(s) before it were recorded)")
    assert state.labels() == {0: 0}


def test_duplicated_row(state: RunState, tmp_path: Path) -> None:
    rows = exported(state, tmp_path / "q.csv", {"r0": "fresh", "r1": "rotten"})
    rows.insert(2, dict(rows[1]))
    with pytest.raises(LoracleError) as err:
        import_labels(state, write(tmp_path / "q.csv", rows))
    assert str(err.value) == (f"{tmp_path / 'q.csv'}: line 4: repeats item 'r1' of line 3; give each item one row (2 "
                              "label(s) before it were recorded)")


@pytest.mark.parametrize(("change", "message"), [
    ({"id": "r9", "idx": ""}, "line 2: id 'r9' is not an item of this run's pool"),
    ({"id": "r5", "idx": "5", "text": "review number 5"}, "line 2: item 'r5' is not a pending query"),
    ({"id": "", "idx": "x"}, "line 2: idx 'x' is not an integer"),
    ({"id": "", "idx": "6"}, r"line 2: idx 6 is outside the run's pool \(0..5\)"),
    ({"id": "", "idx": ""}, r"line 2: the row has no id \(and no idx\)"),
])
def test_bad_rows_name_the_line(state: RunState, tmp_path: Path, change: dict, message: str) -> None:
    rows = exported(state, tmp_path / "q.csv", {"r0": "fresh"})
    rows[0].update(change)
    with pytest.raises(LoracleError, match=message):
        import_labels(state, write(tmp_path / "q.csv", rows))
    assert state.labels() == {}


def test_missing_columns(state: RunState, tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text("text,label\nreview number 0,fresh\n")
    with pytest.raises(LoracleError, match=r"needs the columns 'label' and 'id' \(or 'idx'\), found \['text', "
                                           r"'label'\]"):
        import_labels(state, path)
