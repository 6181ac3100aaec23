"""``loracle al``: flags and YAML, status/label/compare, and kill -9 at chosen points followed by resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loracle.active.state import RunState
from loracle.cli.al import main
from active.al_helpers import save_tiny_model, write_toy_data

REPO = Path(__file__).resolve().parents[2]

FLAGS = ["--initial-size", "6", "--query-size", "4", "--rounds", "2", "--pool-size", "0", "--test-size", "0",
         "--mc-samples", "3", "--stochastic-layers", "1", "--rank", "4", "--lora-dropout", "0.2", "--epochs", "1",
         "--batch-size", "8", "--lr", "0.005", "--max-length", "16", "--calibration", "none", "--no-progress",
         "--seed", "0"]  # calibration (on by default) is covered by test_help_and_logs and tests/active


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("al_cli")
    model_dir = save_tiny_model(root / "model")
    return root, write_toy_data(root / "data"), model_dir


def run_args(data, model_dir, out, *extra):
    return ["al", "run", "--model", str(model_dir), "--data", str(data), "--output", str(out), *FLAGS, *extra]


def labels_of(run_dir):
    state = RunState.open(run_dir)
    try:
        return state.label_rows()
    finally:
        state.close()


@pytest.fixture(scope="module")
def reference(setup):
    root, data, model_dir = setup
    out = root / "reference"
    assert main(run_args(data, model_dir, out, "--strategy", "entropy")) == 0
    return out


def test_run_status_compare(setup, reference, tmp_path, capsys):
    root, data, model_dir = setup
    assert len(labels_of(reference)) == 14
    assert main(["al", "status", str(reference)]) == 0
    out = capsys.readouterr().out
    assert "strategy entropy, done, rounds 3/3, labels 14" in out
    # each round's ECE floor (of the calibrated predictions where there are any) has its column
    header = next(line for line in out.splitlines() if line.lstrip().startswith("round "))
    assert "ECE cal.  ECE floor" in header
    state = RunState.open(reference)
    metrics = state.rounds()[-1]["metrics"]
    state.close()
    floor = metrics.get("ece_floor_calibrated", metrics.get("ece_floor"))
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert len(rows) == 3 and 0 <= floor < 1 and f"{floor:.3f}" in rows[-1]
    config = tmp_path / "run.yaml"
    config.write_text(f"strategy: random\ndata: {data}\nmodel: {model_dir}\nadapter: {{method: lora, rank: 2, "
                      "dropout: 0.1}\n")
    assert main(["al", "run", "--config", str(config), "--output", str(tmp_path / "r"), *FLAGS[:-2]]) == 0
    saved = RunState.open(tmp_path / "r").config
    assert saved["strategy"] == "random" and saved["adapter"]["rank"] == 4 and saved["train"]["epochs"] == 1
    assert main(["al", "compare", str(reference), str(tmp_path / "r"), "--output", str(tmp_path / "cmp")]) == 0
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert set(result) == {"entropy", "random"} and (tmp_path / "cmp" / "learning_curve.png").exists()


def test_default_strategy_run_says_which_branch_queried(setup, tmp_path, capsys):
    """No --strategy: auto; status names the branch that chose the queries (the toy data's 6 round-0 labels of two
    classes are not uneven beyond chance, so density_margin)."""
    _, data, model_dir = setup
    assert main(run_args(data, model_dir, tmp_path / "run")) == 0
    capsys.readouterr()
    assert main(["al", "status", str(tmp_path / "run")]) == 0
    assert "strategy auto (queries by density_margin), done, rounds 3/3, labels 14" in capsys.readouterr().out


def test_errors_are_one_line(setup, tmp_path, capsys):
    root, data, model_dir = setup
    assert main(run_args(data, model_dir, tmp_path / "x", "--rounds", "50")) == 2
    assert "label budget exceeds the pool" in capsys.readouterr().err
    assert main(["al", "status", str(tmp_path / "nothing")]) == 2
    assert "not an active-learning run folder" in capsys.readouterr().err


def test_human_oracle_csv_roundtrip(setup, reference, tmp_path, capsys, monkeypatch):
    root, data, model_dir = setup
    out = tmp_path / "human"
    assert main(run_args(data, model_dir, out, "--strategy", "entropy", "--oracle", "human")) == 0
    assert "waiting for labels" in capsys.readouterr().out
    state = RunState.open(out)
    pending = state.pending_queries()
    assert len(pending) == 6 and state.gold_label(pending[0]) is None  # no gold stored for a human run
    state.close()
    # Terminal: one bad answer (re-asked), one good answer, then quit: the good answer is kept.
    answers = iter(["maybe", "fresh", "q"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    assert main(["al", "label", str(out)]) == 0
    assert "unknown label 'maybe'; valid labels: 0=fresh, 1=rotten" in capsys.readouterr().out
    assert len(labels_of(out)) == 1
    # CSV: export, fill from the reference run's gold labels, with one unknown label in the middle.
    csv_path = tmp_path / "q.csv"
    assert main(["al", "label", str(out), "--export", str(csv_path)]) == 0
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 5
    ref = RunState.open(reference)
    names = ref.label_names
    for row in rows:
        row["label"] = names[ref.gold_label(int(row["idx"]))]
    ref.close()
    rows[2]["label"] = "meh"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["al", "label", str(out), "--import", str(csv_path)]) == 2
    err = capsys.readouterr().err
    assert "line 4: unknown label 'meh'" in err and "2 label(s) before it were recorded" in err
    assert len(labels_of(out)) == 3


def _cli(args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "loracle.cli.al", *args], env=env, capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def _kill_and_resume(setup, reference, tmp_path, point):
    root, data, model_dir = setup
    out = tmp_path / "killed"
    proc = _cli(run_args(data, model_dir, out, "--strategy", "entropy"), {"LORACLE_AL_FAULT": point})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    before = labels_of(out)
    assert len(before) < 14
    assert main(["al", "resume", str(out)]) == 0  # in process: the kill above was the separate process
    assert labels_of(out) == labels_of(reference)  # same items, labels, rounds and sources; none lost or doubled
    assert sorted(p.name for p in (out / "rounds").iterdir()) == ["000", "001", "002"]


def test_kill9_during_training_then_resume(setup, reference, tmp_path):
    _kill_and_resume(setup, reference, tmp_path, "train:1")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["train:0", "evaluate:1", "checkpoint:0", "score:1", "label:2"])
def test_kill9_at_other_points_then_resume(setup, reference, tmp_path, point):
    _kill_and_resume(setup, reference, tmp_path, point)
