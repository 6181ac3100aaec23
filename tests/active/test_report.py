"""Reports of runs: the per-round log line, the majority baseline, ``al status``/``al compare`` and the plot.

The runs here are written straight into a :class:`RunState` with chosen metrics (no training), so every printed
number is known in advance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from loracle.active.report import (
    area_under_curve,
    default_compare_dir,
    display_name,
    format_round_line,
    format_value,
    learning_curve,
    majority_baseline,
    run_summary,
    write_report,
)
from loracle.active.state import RunState
from loracle.cli.al import main
from loracle.data.examples import Example


def test_round_line_shows_three_decimals_and_na_for_what_is_missing():
    line = format_round_line(2, 300, {"accuracy": 0.8512, "macro_f1": 0.84349, "ece": 0.0713, "nll": 0.4},
                             {"train": 12.345, "evaluate": 0.42, "score": 3.0})
    assert line == ("round 2 (300 labels): accuracy 0.851, macro-F1 0.843, ECE 0.071; train 12.3 s, "
                    "evaluate 0.4 s, score 3.0 s")
    # the last round scores nothing; a metric the task lacks is n/a, never 0.0
    line = format_round_line(4, 500, {"accuracy": 0.9, "ece": float("nan")}, {"train": 1.0, "score": None})
    assert line == ("round 4 (500 labels): accuracy 0.900, macro-F1 n/a, ECE n/a; train 1.0 s, evaluate n/a, "
                    "score n/a")
    assert "\n" not in line and "\r" not in line
    # a round stopped early by --train-steps folds says where; one that took its planned steps says nothing
    early = format_round_line(1, 200, {"accuracy": 0.7, "train_steps": 52.0, "train_steps_planned": 104.0},
                              {"train": 2.0})
    assert early.endswith("score n/a; stopped at step 52 of 104 by the folds' held-out loss")
    assert "stopped" not in format_round_line(1, 200, {"train_steps": 104.0, "train_steps_planned": 104.0}, {})
    # the calibrated ECE says what calibrated it
    scaled = {"accuracy": 0.9, "macro_f1": 0.8, "ece": 0.1, "ece_calibrated": 0.04}
    assert "ECE 0.100 (0.040 after temperature scaling);" in format_round_line(1, 200, scaled, {})
    ensembled = format_round_line(1, 200, {**scaled, "ensemble_members": 4.0}, {})
    assert "ECE 0.100 (0.040 for the ensemble of 4);" in ensembled
    # the noise floor of the predictions the round calibrated, else of the raw model's
    floors = {"ece_floor": 0.031, "ece_floor_calibrated": 0.027}
    assert "ECE 0.100 (0.040 for the ensemble of 4; noise floor 0.027);" in format_round_line(
        1, 200, {**scaled, "ensemble_members": 4.0, **floors}, {})
    assert "ECE 0.100 (noise floor 0.031);" in format_round_line(1, 200, {"ece": 0.1, "ece_floor": 0.031}, {})
    # an ensemble round also shows the cross-fitted temperature the run scored beside it, for the configured items
    both = {**scaled, "ensemble_members": 4.0, "ece_calibrated_initial": 0.021, "temperature_initial": 2.456,
            "ece_calibrated_labelled": 0.033, "temperature_labelled": 1.5}
    assert "(0.040 for the ensemble of 4; 0.021 with the cross-fitted temperature 2.46);" in format_round_line(
        1, 200, both, {})
    assert "0.033 with the cross-fitted temperature 1.50" in format_round_line(1, 200, both, {}, "labelled")
    assert "cross-fitted" not in format_round_line(1, 200, {**scaled, "ece_calibrated_initial": 0.02}, {})


def test_majority_baseline_by_hand():
    # 6 of 10 labels are class 1: accuracy 0.6; predicting 1 always gives F1_1 = 2*6/(2*6+4+0) = 0.75 and F1_0 = 0,
    # so macro-F1 = 0.375 = (2p / (1 + p)) / K with p = 0.6, K = 2.
    baseline = majority_baseline([1, 1, 0, 1, 0, 1, 1, 0, 1, 0])
    assert baseline["accuracy"] == pytest.approx(0.6)
    assert baseline["macro_f1"] == pytest.approx(0.375)
    assert majority_baseline([None, None]) is None


def test_small_helpers():
    assert format_value(None) == format_value(float("nan")) == "n/a"
    assert format_value(0.97849) == "0.978"
    assert display_name("../shared/data/rotten_tomatoes/") == "rotten_tomatoes"
    assert display_name("minilm") == "minilm"
    assert area_under_curve([100, 200], [0.5, None]) is None
    assert area_under_curve([100, 200, 300], [0.5, 0.7, 0.7]) == pytest.approx((0.6 * 100 + 0.7 * 100) / 200)


TEST_LABELS = [0, 1, 1, 0, 1]  # majority class 1: accuracy 0.6, macro-F1 0.375


def fake_run(run_dir: Path, strategy: str, accuracies: list[float], data: str = "/data/toy_reviews") -> Path:
    """A finished run (simulated oracle) with the given accuracy per round and no training."""
    from loracle.active.config import ALConfig

    n_rounds = len(accuracies) - 1
    config = ALConfig(data=data, model="tinybert", strategy=strategy, initial_size=4, query_size=2,
                      rounds=n_rounds)
    pool = [Example(id=f"p{i}", text=f"pool item {i}", label=i % 2) for i in range(4 + 2 * n_rounds)]
    test = [Example(id=f"t{i}", text=f"test item {i}", label=label) for i, label in enumerate(TEST_LABELS)]
    state = RunState(run_dir)
    try:
        state.initialise(config.to_dict(), pool, test, ["fresh", "rotten"])
        for t, accuracy in enumerate(accuracies):
            labelled = list(range(4 + 2 * t))
            with state.transaction() as db:
                state.add_labels([(i, pool[i].label) for i in labelled[-(4 if t == 0 else 2):]], t,
                                 "initial" if t == 0 else "simulated", db)
            metrics = {"accuracy": accuracy, "macro_f1": accuracy - 0.05, "ece": 0.1 / (t + 1), "nll": 0.5}
            state.add_round(t, len(labelled), metrics, None, train_seconds=1.5,
                            score_seconds=None if t == n_rounds else 0.25)
    finally:
        state.close()
    return run_dir


def test_summary_status_and_report(tmp_path, capsys):
    run = fake_run(tmp_path / "runs" / "star", "star", [0.6, 0.8, 0.9])
    state = RunState.open(run)
    try:
        summary = write_report(state)
    finally:
        state.close()
    assert summary["status"] == "done" and summary["dataset"] == "toy_reviews" and summary["model"] == "tinybert"
    assert summary["majority_baseline"]["accuracy"] == pytest.approx(0.6)
    assert summary["aulc_macro_f1"] == pytest.approx(area_under_curve([4, 6, 8], [0.55, 0.75, 0.85]))
    assert json.loads((run / "report.json").read_text())["curve"]["macro_f1"] == pytest.approx([0.55, 0.75, 0.85])
    assert (run / "learning_curve.png").stat().st_size > 10_000

    assert main(["al", "status", str(run)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "strategy star, done, rounds 3/3, labels 8 (4 initial, 4 simulated)" in lines[0]
    assert "majority-class baseline: accuracy 0.600, macro-F1 0.375" in lines[1]
    assert lines[2].split() == ["round", "labels", "accuracy", "macro-F1", "ECE", "ECE", "cal.", "ECE", "floor",
                                "train", "s", "score", "s"]
    # no calibration and no floor recorded (a run of an earlier version): n/a
    assert lines[3].split() == ["0", "4", "0.600", "0.550", "0.100", "n/a", "n/a", "1.5", "0.2"]
    assert lines[5].split() == ["2", "8", "0.900", "0.850", "0.033", "n/a", "n/a", "1.5", "n/a"]  # nothing scored
    assert lines[6] == (f"area under the curve: accuracy {summary['aulc_accuracy']:.3f}, "
                        f"macro-F1 {summary['aulc_macro_f1']:.3f}, ECE {summary['aulc_ece']:.3f}")
    assert summary["aulc_ece_calibrated"] is None  # nothing calibrated in this run


def test_status_and_curve_show_the_calibrated_ece_beside_the_round_models(tmp_path, capsys):
    """A run whose rounds recorded a calibrated ECE: its area under the curve is printed after the round model's,
    and the learning curve's ECE panel draws both (the PNG differs from one drawn without it)."""
    from loracle.active.report import learning_curve

    run = fake_run(tmp_path / "star", "star", [0.6, 0.8, 0.9])
    state = RunState.open(run)
    try:
        with state.transaction() as db:
            for t, value in enumerate((0.05, 0.04, 0.03)):
                row = state.rounds()[t]
                db.execute("UPDATE rounds SET metrics = ? WHERE round = ?",
                           (json.dumps({**row["metrics"], "ece_calibrated": value}), t))
        summary = write_report(state)
    finally:
        state.close()
    assert summary["aulc_ece_calibrated"] == pytest.approx(area_under_curve([4, 6, 8], [0.05, 0.04, 0.03]))
    assert main(["al", "status", str(run)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("area under the curve"))
    assert line.endswith(f"ECE {summary['aulc_ece']:.3f} (round model), ECE cal. 0.040")
    raw_only = {k: v for k, v in summary["curve"].items() if k != "ece_calibrated"}
    learning_curve({"star": raw_only}, tmp_path / "raw.png")
    learning_curve({"star": summary["curve"]}, tmp_path / "both.png")
    assert (tmp_path / "raw.png").read_bytes() != (tmp_path / "both.png").read_bytes()


def test_compare_defaults_beside_the_first_run_and_prints_three_decimals(tmp_path, capsys):
    star = fake_run(tmp_path / "runs" / "star", "star", [0.6, 0.8, 0.9788])
    rand = fake_run(tmp_path / "runs" / "random", "random", [0.6, 0.7, 0.978])
    assert default_compare_dir([star, rand]) == (tmp_path / "runs" / "compare").resolve()
    assert main(["al", "compare", str(star), str(rand)]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "runs" / "compare"
    result = json.loads((folder / "compare.json").read_text())
    assert set(result) == {"star", "random"} and (folder / "learning_curve.png").exists()
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:3]}
    expected = {name: [str(r["labels"])] + [f"{r[f'aulc_{k}']:.3f}" for k in ("accuracy", "macro_f1", "ece")]
                for name, r in result.items()}
    assert rows == expected
    assert "majority-class baseline: accuracy 0.600, macro-F1 0.375" in out
    numbers = [w for line in out.splitlines() for w in line.replace(",", " ").split() if w[:2] == "0."]
    assert numbers and all(len(w) == 5 for w in numbers)  # every metric with 3 decimals


def test_learning_curve_without_macro_f1_still_draws(tmp_path):
    # the benchmark's curves (means over seeds) carry no macro-F1; that panel says so instead of failing
    path = learning_curve({"star (3 seeds)": {"n_labels": [100, 200], "accuracy": [0.7, 0.8], "ece": [0.1, 0.05],
                                              "accuracy_std": [0.01, 0.02]}},
                          tmp_path / "curve.png", title="star on toy with tiny", baseline={"accuracy": 0.5})
    assert path.stat().st_size > 10_000


def test_run_summary_of_a_run_without_rounds(tmp_path):
    run = fake_run(tmp_path / "r", "entropy", [0.5])
    state = RunState.open(run)
    try:
        with state.transaction() as db:
            db.execute("DELETE FROM rounds")
        summary = run_summary(state)
    finally:
        state.close()
    assert summary["status"] == "in_progress" and summary["aulc_accuracy"] is None
    assert not math.isnan(summary["majority_baseline"]["accuracy"])
