"""``loracle al export``: a round's model as a PEFT folder that ``peft.PeftModel.from_pretrained`` loads, its
probabilities the round model's at the chosen temperature, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from loracle.active.loop import run_active_learning, stop_set_indices
from loracle.active.state import RunState
from loracle.cli.al import main
from active.al_helpers import save_tiny_model, small_config, write_toy_data
from tiny_models import tiny_tokenizer

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished two-round run (default calibration, `matched`) of a tiny model saved in a folder."""
    root = tmp_path_factory.mktemp("al_export")
    model_dir = save_tiny_model(root / "model")
    data = write_toy_data(root / "data")
    out = root / "run"
    config = small_config(data, model=str(model_dir), rounds=1, calibration_folds=2, stopping=[], precision="fp32",
                          strategy="random", initial_size=16, query_size=8,
                          train={"epochs": 12, "min_steps": None, "batch_size": 8, "lr": 3e-2, "warmup_ratio": 0.0})
    assert run_active_learning(config, out) == "done"
    return out


def _run_facts(run_dir, t):
    state = RunState.open(run_dir)
    try:
        from loracle.active.config import ALConfig

        config = ALConfig.from_dict(state.config)
        labelled = set(state.labels(max_round=t))
        indices = stop_set_indices(config, state.pool_size())
        stop = [e for i, e in zip(indices, state.pool_examples(indices)) if i not in labelled]
        return (state.rounds()[t]["metrics"], state.test_examples(), state.get_signal("test_labels"), stop,
                config.model)
    finally:
        state.close()


def _peft_probs(model_dir, folder, examples):
    """Probabilities of the exported folder loaded with PEFT alone, on ``examples``."""
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    model = peft.PeftModel.from_pretrained(base, folder).eval()
    tokenizer = tiny_tokenizer()
    batch = tokenizer([e.text for e in examples], padding=True, truncation=True, max_length=16,
                      return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(model(**batch).logits.double(), -1)


def _round_model_probs(run_dir, examples, model_dir, t=1):
    """The round model's own probabilities (loracle's loader, fp32, dropout off)."""
    from loracle.active.config import ALConfig
    from loracle.modeling.build import ModelBuilder
    from loracle.uncertainty.sampling import mc_probs

    state = RunState.open(run_dir)
    try:
        config, names, checkpoint = ALConfig.from_dict(state.config), state.label_names, state.rounds()[t]["checkpoint"]
    finally:
        state.close()
    built = ModelBuilder(model_dir, "classification", label_names=names, max_length=16,
                         adapter=config.adapter).load(run_dir / checkpoint)
    with torch.no_grad():
        return mc_probs(built.model, built.task, examples, samples=0, batch_size=16)[:, 0].double()


def test_matched_export_loads_in_peft_with_the_matched_confidence(run_dir, tmp_path, capsys):
    """Default `matched`: PEFT's probabilities are the round model's at one temperature, the one at which their mean
    confidence on the unlabelled stop-set items equals the round's accuracy estimate; the printed test metrics are
    those of the loaded model."""
    from loracle.evaluation.metrics import classification_metrics

    capsys.readouterr()
    out = tmp_path / "peft"
    assert main(["al", "export", str(run_dir), "--output", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert json.loads((out / "loracle_export.json").read_text()) == info
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                     "loracle_export.json"]
    metrics, test, labels, stop, model_dir = _run_facts(run_dir, 1)
    assert (info["round"], info["n_labels"], info["calibration"]) == (1, 24, "matched")
    assert info["accuracy_estimate"] == pytest.approx(metrics["accuracy_estimate"])
    temperature = info["temperature"]
    assert temperature > 0 and abs(temperature - 1.0) > 1e-3 and info["prior_offset"] is None

    exported_stop = _peft_probs(model_dir, out, stop)
    assert float(exported_stop.max(-1).values.mean()) == pytest.approx(metrics["accuracy_estimate"], abs=1e-4)
    raw_test = _round_model_probs(run_dir, test, model_dir)
    exported_test = _peft_probs(model_dir, out, test)
    torch.testing.assert_close(exported_test, torch.softmax(raw_test.log() / temperature, -1), atol=1e-5, rtol=1e-4)
    scored = classification_metrics(exported_test, labels)
    for key in ("accuracy", "ece", "nll", "brier"):
        assert info["test"]["exported"][key] == pytest.approx(scored[key], abs=2e-4)
        assert info["test"]["model"][key] == pytest.approx(metrics[key], abs=2e-4)


def test_matched_export_uses_the_recorded_temperature_or_refits_it(run_dir, tmp_path, capsys):
    """The export folds in the temperature the round recorded (``temperature_export``); for a run made before rounds
    recorded it, it fits the same temperature on a pass over the unlabelled stop-set items."""
    import shutil
    import sqlite3

    metrics = _run_facts(run_dir, 1)[0]
    capsys.readouterr()
    assert main(["al", "export", str(run_dir), "-o", str(tmp_path / "recorded")]) == 0
    assert json.loads(capsys.readouterr().out)["temperature"] == metrics["temperature_export"]
    copy = tmp_path / "older"
    shutil.copytree(run_dir, copy)
    db = sqlite3.connect(copy / "state.sqlite")
    stripped = {k: v for k, v in metrics.items() if not k.endswith("_export")}
    db.execute("UPDATE rounds SET metrics = ? WHERE round = 1", (json.dumps(stripped),))
    db.commit()
    db.close()
    assert main(["al", "export", str(copy), "-o", str(tmp_path / "refit")]) == 0
    captured = capsys.readouterr()
    assert "export: the round model on" in captured.err
    assert json.loads(captured.out)["temperature"] == pytest.approx(metrics["temperature_export"], rel=1e-4)


def test_temperature_and_none(run_dir, tmp_path, capsys):
    """`temperature` folds the round's cross-fitted temperature in; `none` exports the round model as trained."""
    metrics, test, _, _, model_dir = _run_facts(run_dir, 1)
    raw_test = _round_model_probs(run_dir, test, model_dir)
    capsys.readouterr()
    assert main(["al", "export", str(run_dir), "--output", str(tmp_path / "t"), "--calibration", "temperature"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["temperature"] == pytest.approx(metrics["temperature_initial"]) and info["accuracy_estimate"] is None
    torch.testing.assert_close(_peft_probs(model_dir, tmp_path / "t", test),
                               torch.softmax(raw_test.log() / info["temperature"], -1), atol=1e-5, rtol=1e-4)
    assert main(["al", "export", str(run_dir), "-o", str(tmp_path / "n"), "--calibration", "none",
                 "--round", "0"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["round"], info["temperature"], info["prior_offset"]) == (0, None, None)
    torch.testing.assert_close(_peft_probs(model_dir, tmp_path / "n", test),
                               _round_model_probs(run_dir, test, model_dir, t=0), atol=1e-5, rtol=1e-4)


def test_a_recorded_prior_move_is_folded_in_with_the_temperature(run_dir, tmp_path, capsys):
    """Where the round moved its calibrated predictions to the pool's class prior (recorded in its checkpoint), the
    exported model adds ``log(pool / train)`` to its tempered logits, as `al predict` moves its probabilities."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    info_file = copy / "rounds" / "001" / "loracle_adapter.json"
    saved = json.loads(info_file.read_text())
    saved["extra"].update(train_prior=[0.5, 0.5], pool_prior=[0.8, 0.2])
    info_file.write_text(json.dumps(saved))
    metrics, test, _, _, model_dir = _run_facts(copy, 1)
    capsys.readouterr()
    assert main(["al", "export", str(copy), "--calibration", "temperature"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["output"] == str(copy / "peft")  # the default place
    offset = torch.tensor([0.8 / 0.5, 0.2 / 0.5], dtype=torch.float64).log()
    assert info["prior_offset"] == pytest.approx(offset.tolist(), abs=1e-6)
    raw = _round_model_probs(copy, test, model_dir)
    torch.testing.assert_close(_peft_probs(model_dir, copy / "peft", test),
                               torch.softmax(raw.log() / metrics["temperature_initial"] + offset, -1),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case, message", [
    ("no round", "no completed round 9; completed: [0, 1]"),
    ("not a run", "is not an active-learning run folder"),
    ("not recorded", "recorded no accuracy estimate"),
    ("output is a file", "is an existing file; give a folder"),
])
def test_user_errors_are_one_line(run_dir, tmp_path, capsys, case, message):
    if case == "not recorded":  # a run that never cross-fitted has no estimate to match
        data = write_toy_data(tmp_path / "data")
        other = tmp_path / "plain"
        model_dir = run_dir.parent / "model"
        assert run_active_learning(small_config(data, model=str(model_dir), rounds=0, calibration="none",
                                                stopping=[], precision="fp32", strategy="random"), other) == "done"
    if case == "output is a file":
        (tmp_path / "p").write_text("notes")
    args = {"no round": [str(run_dir), "--round", "9"], "not a run": [str(tmp_path)],
            "not recorded": [str(tmp_path / "plain")], "output is a file": [str(run_dir)]}[case]
    capsys.readouterr()
    assert main(["al", "export", *args, "--output", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "loracle al export: error:" in err and message in err and "Traceback" not in err
    if case == "output is a file":  # left as it was
        assert (tmp_path / "p").read_text() == "notes"
    else:
        assert not (tmp_path / "p").exists()
