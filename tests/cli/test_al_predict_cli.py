"""``loracle al predict``: one JSON line per item with the run's calibrated confidence, metrics when the data has
labels, and clear errors for data or rounds that do not fit the run."""

from __future__ import annotations

import json
import math

import pytest

from loracle.active.loop import run_active_learning
from loracle.active.state import RunState
from loracle.cli.al import main
from loracle.errors import LoracleError
from active.al_helpers import save_tiny_model, small_config, write_toy_data

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished run with the cross-fitted ensemble as its calibration (`--calibration ensemble`) of a tiny model
    saved in a folder (what `al predict` loads, as a user's run would), trained briefly."""
    root = tmp_path_factory.mktemp("al_predict")
    model_dir = save_tiny_model(root / "model")
    data = write_toy_data(root / "data")
    out = root / "run"
    config = small_config(data, model=str(model_dir), rounds=1, calibration="ensemble", calibration_folds=2,
                          stopping=[], precision="fp32", strategy="random")
    assert run_active_learning(config, out) == "done"
    return out


def _last_round(run_dir):
    state = RunState.open(run_dir)
    try:
        return state.rounds()[-1]
    finally:
        state.close()


def test_predictions_on_the_test_file_match_the_run(run_dir, tmp_path, capsys):
    """The run's own test file: one row per item in file order, the prediction the argmax of the calibrated
    probabilities, and printed metrics equal to what the run recorded for its last round."""
    capsys.readouterr()
    test_file = run_dir.parent / "data" / "test.jsonl"
    out = tmp_path / "p.jsonl"
    assert main(["al", "predict", str(run_dir), "--data", str(test_file), "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    row = _last_round(run_dir)
    assert (summary["round"], summary["labels"], summary["calibration"], summary["members"], summary["items"]) == \
        (1, 10, "ensemble", 3, 20)
    for key in ("ece", "nll", "brier"):
        assert summary["metrics"]["calibrated"][key] == pytest.approx(row["metrics"][f"{key}_calibrated"], abs=2e-4)
    assert summary["metrics"]["model"]["accuracy"] == pytest.approx(row["metrics"]["accuracy"], abs=1e-9)
    source = [json.loads(line) for line in test_file.read_text().splitlines()]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == [s["text"] for s in source]
    assert [r["label"] for r in rows] == [s["label"] for s in source]
    for r in rows:
        probs = r["probabilities"]
        assert set(probs) == {"fresh", "rotten"} and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert r["prediction"] == max(probs, key=probs.get) and r["confidence"] == probs[r["prediction"]]
        assert 0.5 <= r["model_confidence"] <= 1.0
    right = sum(r["prediction"] == r["label"] for r in rows) / len(rows)
    assert summary["metrics"]["calibrated"]["accuracy"] == pytest.approx(right)
    # the run's other calibration, chosen here: the round model with its cross-fitted temperature
    assert main(["al", "predict", str(run_dir), "--data", str(test_file), "--output", str(out),
                 "--calibration", "temperature"]) == 0
    scaled = json.loads(capsys.readouterr().out)
    assert (scaled["calibration"], scaled["members"]) == ("temperature", 1)
    for key in ("ece", "nll", "brier"):
        assert scaled["metrics"]["calibrated"][key] == pytest.approx(row["metrics"][f"{key}_calibrated_initial"],
                                                                     abs=2e-4)


def test_unlabelled_data_and_an_earlier_round(run_dir, tmp_path, capsys):
    capsys.readouterr()
    texts = tmp_path / "new.jsonl"
    texts.write_text("".join(json.dumps({"id": f"n{i}", "text": t}) + "\n"
                             for i, t in enumerate(["a great fun film", "dull and boring", "the plot"])))
    assert main(["al", "predict", str(run_dir), "--data", str(texts), "--round", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["round"] == 0 and "metrics" not in summary
    assert summary["output"] == str(run_dir / "predictions.jsonl")  # the default place
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["n0", "n1", "n2"] and all("label" not in r for r in rows)


def state_metrics(run_dir):
    """The last round's recorded metrics."""
    state = RunState.open(run_dir)
    try:
        return state.rounds()[-1]["metrics"]
    finally:
        state.close()


def test_decision_balanced_divides_out_the_prior_and_auto_follows_the_round0_labels(run_dir, tmp_path, capsys,
                                                                                     monkeypatch):
    """``--decision balanced``: each prediction is the argmax of the calibrated probabilities divided by the class
    prior they carry (here the training prior of the last round's labels), the probabilities written unchanged and
    the printed accuracy that of the written predictions. ``--decision f1`` adds the round's recorded class weights
    to the log-probabilities. ``auto`` is ``argmax`` on this balanced run and ``balanced`` once the round-0 labels
    count as imbalanced."""
    import torch

    from loracle.active.predict import predict_with_run
    from loracle.evaluation.label_shift import training_prior

    capsys.readouterr()
    test_file = run_dir.parent / "data" / "test.jsonl"
    out = tmp_path / "p.jsonl"

    def predict(*flags):
        assert main(["al", "predict", str(run_dir), "--data", str(test_file), "--output", str(out), *flags]) == 0
        return json.loads(capsys.readouterr().out), [json.loads(line) for line in out.read_text().splitlines()]

    plain, plain_rows = predict()
    assert plain["decision"] == "argmax"
    balanced, rows = predict("--decision", "balanced")
    assert balanced["decision"] == "balanced"
    state = RunState.open(run_dir)
    try:
        counts = torch.bincount(torch.tensor([int(y) for y in state.labels().values()]), minlength=2)
    finally:
        state.close()
    prior = training_prior(counts)
    names = ["fresh", "rotten"]
    for r, p in zip(rows, plain_rows):
        assert r["probabilities"] == p["probabilities"]
        shares = {n: r["probabilities"][n] / float(prior[i]) for i, n in enumerate(names)}
        assert r["prediction"] == max(shares, key=shares.get)
        assert r["confidence"] == r["probabilities"][r["prediction"]]
    # the run's labels are uneven (prior 0.41 / 0.59): some items change class
    assert abs(float(prior[0]) - 0.5) > 0.05
    assert any(r["prediction"] != p["prediction"] for r, p in zip(rows, plain_rows))
    right = sum(r["prediction"] == r["label"] for r in rows) / len(rows)
    assert balanced["metrics"]["calibrated"]["accuracy"] == pytest.approx(right)
    recall = balanced["metrics"]["calibrated"]["recall"]
    for name in names:
        mine = [r for r in rows if r["label"] == name]
        assert recall[name] == pytest.approx(sum(r["prediction"] == name for r in mine) / len(mine))
    # f1: the argmax under the class weights the last round recorded (fitted on its stop set)
    f1, f1_rows = predict("--decision", "f1")
    assert f1["decision"] == "f1"
    metrics = state_metrics(run_dir)
    weights = [metrics["decision_weight_0"], metrics["decision_weight_1"]]
    for r in f1_rows:
        scores = {n: math.log(r["probabilities"][n]) + weights[i] for i, n in enumerate(names)}
        assert r["prediction"] == max(scores, key=scores.get)
    # auto: balanced where the round-0 labels are imbalanced
    monkeypatch.setattr("loracle.active.strategies.diversity.is_imbalanced", lambda *a, **k: True)
    auto, auto_rows = predict()
    assert auto["decision"] == "balanced" and [r["prediction"] for r in auto_rows] == \
        [r["prediction"] for r in rows]
    with pytest.raises(LoracleError, match="decision must be one of auto, argmax, balanced, f1"):
        predict_with_run(run_dir, [], decision="fair")


@pytest.mark.parametrize("case, message", [
    ("unknown label", "meh"),
    ("no round", "no completed round 9; completed: [0, 1]"),
    ("not a run", "is not an active-learning run folder"),
])
def test_user_errors_are_one_line(run_dir, tmp_path, capsys, case, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "so so", "label": "meh"}) + "\n")
    good = run_dir.parent / "data" / "test.jsonl"
    args = {"unknown label": [str(run_dir), "--data", str(bad)],
            "no round": [str(run_dir), "--data", str(good), "--round", "9"],
            "not a run": [str(tmp_path), "--data", str(good)]}[case]
    capsys.readouterr()
    assert main(["al", "predict", *args, "--output", str(tmp_path / "p.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "loracle al predict: error:" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "p.jsonl").exists()
