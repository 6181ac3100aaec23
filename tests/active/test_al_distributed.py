"""The active-learning loop under a launcher: 2 CPU processes (gloo on 127.0.0.1) against 1 process.

The run's training is deterministic (no dropout in the tiny BERT or the adapter, deterministic scoring), so two
processes must reproduce one: the same labelled set and queries, metrics within 1e-4 (DDP's all-reduce sums the
gradients in another order: ~1e-7 on the weights), and every row written by rank 0 alone, once. MC-dropout scoring
(3 samples) with the loop's chunks dealt over the ranks equals one process's scoring within 1e-6: a chunk's
draws come from its own seed, whichever rank scores it. A ``kill -9`` of rank 1 (or, marked slow, rank 0) in the
middle of scoring, then ``al resume`` with 2 processes, ends with exactly the labels of the uninterrupted run.
The launches go through ``accelerate launch`` (the run) and ``torchrun`` (kill and resume): about 35 s in all.

The runs train with ``--class-weight none``: balanced class weights take PyTorch's weighted mean, normalised by
each process's own share of the batch's weight, so with them two processes match one only in expectation (the
README's multi-process section says so).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from active.al_helpers import write_toy_data
from tiny_models import tiny_bert, tiny_tokenizer

from loracle.active.state import RunState
from loracle.cli import main

SCRIPT = Path(__file__).with_name("al_launch_script.py")
REPO = Path(__file__).resolve().parents[2]
FLAGS = ["--initial-size", "6", "--query-size", "4", "--rounds", "2", "--pool-size", "0", "--test-size", "0",
         "--mc-samples", "0", "--rank", "4", "--lora-dropout", "0", "--epochs", "1", "--batch-size", "2",
         "--lr", "0.005", "--head-lr", "0.005", "--class-weight", "none", "--max-length", "16", "--no-progress",
         "--seed", "0", "--strategy", "entropy", "--precision", "fp32"]  # head at the adapter's rate: MC samples differ
POOL, CHUNK = 60, 5  # round 0 scores 54 items: 11 chunks, 6 waves over 2 ranks
STEPS = 10  # per round: few enough that Adam has not amplified the reordered gradient sums (~1e-7) into other picks

pytestmark = pytest.mark.skipif(shutil.which("accelerate") is None and not (
    Path(sys.executable).parent / "accelerate").exists(), reason="the accelerate launcher is not installed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true",
            "MASTER_ADDR": "127.0.0.1", **extra}


def _accelerate(*args: str, **env: str) -> subprocess.CompletedProcess:
    launcher = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    command = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(_free_port()), *args]
    return subprocess.run(command, env=_env(**env), capture_output=True, text=True, timeout=240, cwd=REPO)


def _torchrun(*args: str, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), *args]
    return subprocess.run(command, env=_env(**env), capture_output=True, text=True, timeout=240, cwd=REPO)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("al_ddp")
    model = tiny_bert()
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0  # deterministic training
    model.save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    (root / "run.yaml").write_text(f"score_chunk: {CHUNK}\ntrain: {{min_steps: {STEPS}}}\n")
    args = ["--model", str(root / "model"), "--data", str(write_toy_data(root / "data", n_train=POOL)),
            "--config", str(root / "run.yaml"), *FLAGS]
    assert main(["al", "run", *args, "--output", str(root / "one")]) == 0  # the reference: one process
    return root, args


def _rows(run_dir: Path) -> dict[str, list]:
    state = RunState.open(run_dir)
    try:
        db = state.db
        return {"labels": state.label_rows(),
                "queries": db.execute("SELECT round, rank, idx FROM queries ORDER BY round, rank").fetchall(),
                "rounds": state.rounds(),
                "signals": [r[0] for r in db.execute("SELECT name FROM signals ORDER BY name")]}
    finally:
        state.close()


def test_two_processes_match_one(setup, tmp_path):
    root, args = setup
    out, audit, mc = tmp_path / "two", tmp_path / "audit", tmp_path / "mc.safetensors"
    proc = _accelerate(str(SCRIPT), str(audit), str(mc), "--", "al", "run", *args, "--output", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("done: ") == 1  # rank 0 reports, rank 1 is quiet
    one, two = _rows(root / "one"), _rows(out)
    assert two["labels"] == one["labels"] and len(two["labels"]) == 14
    assert two["queries"] == one["queries"] and len(two["queries"]) == 14
    assert len({idx for _, _, idx in two["queries"]}) == 14  # no item queried twice
    assert [r["round"] for r in two["rounds"]] == [0, 1, 2]
    for a, b in zip(one["rounds"], two["rounds"]):
        assert a["n_labels"] == b["n_labels"]
        for key in ("accuracy", "macro_f1", "ece", "nll", "brier"):
            assert abs(a["metrics"][key] - b["metrics"][key]) < 1e-4, (a["round"], key)
    assert two["signals"] == one["signals"]  # chunk signals dropped once the queries committed
    # Rank 1 wrote nothing; rank 0 wrote each signal once (one per chunk of rounds 0 and 1, the stop-set
    # predictions, test probabilities and out-of-fold predictions of each round, the last with the fold
    # models' stop-set predictions) and 3 checkpoints, each with
    # the 3 fold adapters the default calibration keeps (saved as adapters too): 12 adapter saves.
    assert not (audit / "rank1.log").exists()
    lines = [x for x in (audit / "rank0.log").read_text().splitlines() if "round99/" not in x]
    signals = [x.split(" ", 1)[1] for x in lines if x.startswith("signal ")]
    assert len(signals) == len(set(signals))
    assert sum(x.startswith("round") for x in signals) == 11 + 10  # 54 then 50 unlabelled items in chunks of 5
    expected = (["test_labels"] + [f"{name}/{t}" for name in ("stop_probs", "test_probs") for t in range(3)]
                + [f"calibration_oof/{t}/{k}" for t in range(3) for k in ("log_probs", "labels", "initial",
                                                                          "test_probs", "stop_probs")])
    assert sorted(x for x in signals if not x.startswith("round")) == sorted(expected)
    assert lines.count("checkpoint") == 3 * (1 + 3)
    assert all(len(list((out / "rounds" / f"{t:03d}" / "folds").iterdir())) == 3 for t in range(3))
    assert sorted(p.name for p in (out / "rounds").iterdir()) == ["000", "001", "002"]
    assert len(list((out / "cache").glob("*.safetensors"))) <= 1 and not list(out.glob("**/.tmp-*"))
    # MC-dropout scoring spread over the ranks = one process's.
    from safetensors.torch import load_file

    probs = load_file(str(mc))
    assert probs["spread"].shape == (POOL, 3, 2)
    torch.testing.assert_close(probs["spread"], probs["alone"], atol=1e-6, rtol=0)
    assert probs["spread"].std(dim=1).max() > 1e-3  # the 3 samples really differ


@pytest.mark.parametrize("rank", ["1", pytest.param("0", marks=pytest.mark.slow)])
def test_kill9_of_one_rank_mid_scoring_then_resume_with_two(setup, tmp_path, rank):
    root, args = setup
    out = tmp_path / "killed"
    proc = _torchrun("-m", "loracle", "al", "run", *args, "--output", str(out),
                     LORACLE_AL_FAULT="score_chunk:0", LORACLE_AL_FAULT_RANK=rank)
    assert proc.returncode != 0
    assert f"exitcode  : -{int(signal.SIGKILL)}" in proc.stderr or "SIGKILL" in proc.stderr, proc.stderr[-3000:]
    state = RunState.open(out)
    try:  # killed after the first wave of round 0's scoring was persisted, before the queries
        assert state.get_signal("round0/chunk0/probs") is not None and state.get_signal("round0/chunk1/probs") is not None
        assert state.get_signal("round0/chunk10/probs") is None and not state.queries(1)
        assert len(state.labels()) == 6
    finally:
        state.close()
    proc = _torchrun("-m", "loracle", "al", "resume", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, two = _rows(root / "one"), _rows(out)
    assert two["labels"] == one["labels"] and two["queries"] == one["queries"]  # none lost, none doubled


def test_predict_with_two_processes_matches_one(setup, tmp_path):
    """`al predict` under torchrun: each rank predicts its shard of the items (the round model and its 3 fold
    models), rank 0 gathers and writes the one file, equal to one process's."""
    import json

    root, _ = setup
    data = root / "data" / "test.jsonl"
    assert main(["al", "predict", str(root / "one"), "--data", str(data), "--output", str(tmp_path / "one.jsonl"),
                 "--no-progress"]) == 0
    proc = _torchrun("-m", "loracle", "al", "predict", str(root / "one"), "--data", str(data),
                     "--output", str(tmp_path / "two.jsonl"), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count('"output"') == 1  # rank 0 reports, rank 1 is quiet
    one, two = ([json.loads(line) for line in (tmp_path / f"{n}.jsonl").read_text().splitlines()]
                for n in ("one", "two"))
    assert len(one) == len(two) == 20 and [r["id"] for r in two] == [r["id"] for r in one]
    for a, b in zip(one, two):
        assert a["prediction"] == b["prediction"]
        for name in a["probabilities"]:
            assert abs(a["probabilities"][name] - b["probabilities"][name]) < 1e-5
