"""Loaders: JSONL/CSV/Parquet/save_to_disk, label mapping, and error messages naming file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loracle.data import Example, ExampleSet, load_examples
from loracle.errors import DataError, LoracleError


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
    path = write_jsonl(tmp_path / "d.jsonl", [{"body": "a", "label": 0}, {"body": "b", "label": 1}])
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
    with pytest.raises(ValueError, match=r"half.csv: line 3: field 'label' is empty; .* read as unlabelled"):
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


# -- label representations, ids, empty values, encodings (issue 7) ---------------------------------------------------


def test_integer_test_labels_against_named_training_labels_is_an_error(tmp_path: Path) -> None:
    # Before: 1 was read as position 1 of the sorted names ['fresh', 'rotten'], silently flipping the labels.
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "rotten"}, {"text": "b", "label": "fresh"}])
    write_jsonl(tmp_path / "test.jsonl", [{"text": "c", "label": 0}, {"text": "d", "label": 1}])
    train = load_examples(tmp_path, "classification")
    with pytest.raises(DataError) as err:
        load_examples(tmp_path, "classification", split="test", label_names=train.label_names)
    assert str(err.value).startswith(f"{tmp_path / 'test.jsonl'}: line 1: field 'label' is the integer 0, but the "
                                     "label names are the class names ['fresh', 'rotten'] (of the training data)")
    assert "e.g. 'fresh' if 0 means its position in that list" in str(err.value)
    (tmp_path / "test.csv").write_text("text,label\nc,rotten\nd,1\n")  # digit strings are indices too
    with pytest.raises(DataError, match=r"test.csv: line 3: field 'label' is the integer 1"):
        load_examples(tmp_path / "test.csv", "classification", label_names=train.label_names)


def test_named_test_labels_against_integer_training_labels_is_an_error(tmp_path: Path) -> None:
    train = load_examples(write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}]),
                          "classification")
    assert train.label_names == ["0", "1"]
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "c", "label": "1"}, {"text": "d", "label": "fresh"}])
    with pytest.raises(DataError, match=r"test.jsonl: line 2: field 'label' is the class name 'fresh', but the "
                                        r"training labels are integer class indices \(label names \['0', '1'\]\)"):
        load_examples(test, "classification", label_names=train.label_names)


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_mixed_label_representations_in_one_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"d.{suffix}"
    if suffix == "jsonl":  # lines 1-3
        write_jsonl(path, [{"text": "a", "label": "fresh"}, {"text": "b", "label": "rotten"},
                           {"text": "c", "label": 1}])
    else:  # a header, then lines 2-4; "1" is a digit string, read as an index
        path.write_text("text,label\na,fresh\nb,rotten\nc,1\n")
    first, bad = (1, 3) if suffix == "jsonl" else (2, 4)
    with pytest.raises(DataError) as err:
        load_examples(path, "classification")
    assert str(err.value) == (
        f"{path}: line {bad}: field 'label' is 1, an integer class index, but line {first} has 'fresh', a class name; "
        "use one representation for every label (all class names, or all indices 0..C-1)")


def test_class_label_columns_keep_their_names_and_order(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["pos", "neg"])})  # not sorted
    rows = {"text": ["a", "b", "c"], "label": [0, 1, 1]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features),
                          "test": datasets.Dataset.from_dict({"text": ["d", "e"], "label": [-1, -1]},
                                                             features=features)}).save_to_disk(str(tmp_path / "hf"))
    train = load_examples(tmp_path / "hf", "classification")
    assert train.label_names == ["pos", "neg"] and train.labels().tolist() == [0, 1, 1]
    pool = load_examples(tmp_path / "hf", "classification", split="test", label_names=train.label_names)
    assert [e.label for e in pool] == [None, None]  # -1 is a ClassLabel's "no label"
    named = write_jsonl(tmp_path / "named.jsonl", [{"text": "f", "label": "neg"}, {"text": "g", "label": "pos"}])
    assert load_examples(named, "classification", label_names=train.label_names).labels().tolist() == [1, 0]


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": 7, "text": "a", "label": 0}, {"id": 8, "text": "b", "label": 1},
                                              {"id": "7", "text": "c", "label": 1}])
    with pytest.raises(DataError) as err:
        load_examples(path, "classification")
    assert str(err.value) == (f"{path}: line 3: duplicate id '7' in field 'id', already used at line 1; every "
                              "example needs its own id")


@pytest.mark.parametrize(("value", "state"), [(None, "null"), ("", "empty")])
def test_null_or_empty_text_says_so(tmp_path: Path, value, state: str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": value, "label": 1}])
    with pytest.raises(DataError) as err:
        load_examples(path, "classification")
    assert str(err.value) == (f"{path}: line 2: field 'text' is {state}; a classification example needs a value in "
                              "each of ['text', 'label']")
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"text": "  ", "label": 0}])
    with pytest.raises(DataError, match=r"blank.jsonl: line 1: field 'text' is empty \(only whitespace\)"):
        load_examples(blank, "classification")


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_non_utf8_names_file_line_and_byte(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"d.{suffix}"
    good = b'{"text": "ok", "label": 0}\n' if suffix == "jsonl" else b"text,label\nok,0\n"
    bad = b'{"text": "caf\xe9", "label": 1}\n' if suffix == "jsonl" else b"caf\xe9,1\n"
    path.write_bytes(good + bad)
    with pytest.raises(DataError) as err:
        load_examples(path, "classification")
    line, column = (2, 14) if suffix == "jsonl" else (3, 4)
    assert str(err.value) == (f"{path}: line {line}: not valid UTF-8 (byte 0xe9 at column {column}); save the file as "
                              "UTF-8 (for example `iconv -f latin1 -t utf-8 IN > OUT`)")


def test_byte_order_mark_is_not_part_of_the_first_field(tmp_path: Path) -> None:
    (tmp_path / "bom.csv").write_bytes("text,label\na,fresh\nb,rotten\n".encode("utf-8-sig"))
    assert load_examples(tmp_path / "bom.csv", "classification").labels().tolist() == [0, 1]


def test_single_class_names_the_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t, "label": "fresh"} for t in "abc"])
    with pytest.raises(DataError) as err:
        load_examples(path, "classification")
    assert str(err.value) == (f"{path}: the data has a single class ('fresh' in field 'label', all 3 examples); "
                              "classification needs at least 2 classes. Is 'label' the label field (--label-field), "
                              "and is this the whole training data?")
    # A test set read with the training names may hold one class.
    assert load_examples(path, "classification", label_names=["fresh", "rotten"]).labels().tolist() == [0, 0, 0]


def test_malformed_csv_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\nok,0\n\"" + "x" * 200_000 + "\",1\n")
    with pytest.raises(DataError, match=r"d.csv: line 3: malformed CSV \(field larger than field limit"):
        load_examples(path, "classification")


def test_data_errors_are_loracle_errors() -> None:
    assert issubclass(DataError, LoracleError) and issubclass(LoracleError, ValueError)
