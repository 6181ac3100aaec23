"""Loaders: JSONL/CSV/Parquet/save_to_disk, label mapping, and error messages naming file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loracle.data import Example, ExampleSet, load_examples


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_string_labels_sorted_and_reused_for_test(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "rotten"}, {"text": "b", "label": "fresh"}])
    write_jsonl(tmp_path / "test.jsonl", [{"text": "c", "label": "rotten"}])
    train = load_examples(tmp_path, "classification")
    assert train.label_names == ["fresh", "rotten"]
    assert [e.label for e in train] == [1, 0]
    assert train[0] == Example("train-0", "a", label=1)
    test = load_examples(tmp_path, "classification", split="test", label_names=train.label_names)
    assert test.labels().tolist() == [1]


def test_unseen_test_label_names_file_line_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "test.jsonl", [{"text": "a", "label": "fresh"}, {"text": "b", "label": "stale"}])
    with pytest.raises(ValueError, match=r"test.jsonl: line 2: field 'label' has label 'stale'.*\['fresh', 'rotten'\]"):
        load_examples(path, "classification", label_names=["fresh", "rotten"])


def test_malformed_json_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, '{"text": "b", "label": '])
    with pytest.raises(ValueError, match=r"d.jsonl: line 2: malformed JSON"):
        load_examples(path, "classification")


def test_missing_field_lists_expected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b"}])
    with pytest.raises(ValueError, match=r"line 2: missing field 'label'.*expected fields \['text', 'label'\]"):
        load_examples(path, "classification")


def test_empty_file_and_unknown_kind(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(ValueError, match=r"empty.jsonl: no examples"):
        load_examples(path, "classification")
    with pytest.raises(ValueError, match=r"expected one of \['classification'"):
        load_examples(path, "regression")


def test_missing_text_field_lists_candidates(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"body": "a", "label": 0}])
    with pytest.raises(ValueError, match=r"line 1: no text field found; tried \['text'"):
        load_examples(path, "classification")
    assert load_examples(path, "classification", text_field="body")[0].text == "a"


def test_unlabelled_pool_allowed(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pool.jsonl", [{"text": "a"}, {"text": "b", "id": 7}])
    pool = load_examples(path, "classification", label_names=["x", "y"])
    assert [e.label for e in pool] == [None, None]
    assert [e.id for e in pool] == ["train-0", "7"]


def test_csv_digit_labels_and_multiple_choice(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text('text,label\n"hello, world",1\nbye,0\n')
    data = load_examples(tmp_path, "classification")
    assert data.labels().tolist() == [1, 0] and data.label_names == ["0", "1"]
    (tmp_path / "mc.csv").write_text('question,choices,answer\nq,"[""Yes"", ""No""]",No\n')
    mc = load_examples(tmp_path / "mc.csv", "multiple_choice")
    assert mc[0].choices == ("Yes", "No") and mc[0].label == 1


def test_csv_empty_cells(tmp_path: Path) -> None:
    (tmp_path / "pool.csv").write_text("text,label\na,\nb,\n")
    assert [e.label for e in load_examples(tmp_path / "pool.csv", "classification")] == [None, None]
    (tmp_path / "half.csv").write_text("text,label\na,fresh\nb,\n")
    with pytest.raises(ValueError, match=r"half.csv: line 3: missing field 'label'"):
        load_examples(tmp_path / "half.csv", "classification")


def test_multiple_choice_bad_index(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 2}])
    with pytest.raises(ValueError, match=r"line 1: field 'answer' is 2; expected an index 0..1"):
        load_examples(path, "multiple_choice")


def test_generation_answers_are_strings(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "1+1?", "answer": 2}])
    assert load_examples(path, "generation")[0] == Example("train-0", "1+1?", answer="2")


def test_parquet_and_save_to_disk(tmp_path: Path) -> None:
    import datasets

    rows = {"text": ["a", "b", "c"], "label": [0, 1, 1]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "d.parquet"))
    assert load_examples(tmp_path / "d.parquet", "classification").labels().tolist() == [0, 1, 1]
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    dd = datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows, features=features)})
    dd.save_to_disk(str(tmp_path / "hf"))
    loaded = load_examples(tmp_path / "hf", "classification", split="test")
    assert loaded.label_names == ["neg", "pos"] and len(loaded) == 3
    with pytest.raises(FileNotFoundError, match=r"no split 'train'; the dataset has splits \['test'\]"):
        load_examples(tmp_path / "hf", "classification")


def test_missing_path_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_examples(str(tmp_path / "nope.jsonl"), "classification")
    with pytest.raises(FileNotFoundError, match=r"no 'train' split found"):
        load_examples(tmp_path, "classification")


def test_example_set_sequence_and_sample() -> None:
    data = ExampleSet([Example(str(i), f"t{i}", label=i % 2) for i in range(10)], ["a", "b"], "mem")
    assert len(data[2:5]) == 3 and data[[0, 9]].label_names == ["a", "b"]
    sub = data.sample(4, seed=1)
    assert len(sub) == 4 and sub.examples == data.sample(4, seed=1).examples
    assert [int(e.id) for e in sub] == sorted(int(e.id) for e in sub)
    assert data.index_of("7") == 7
