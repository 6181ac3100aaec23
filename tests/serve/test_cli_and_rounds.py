"""`loracle al serve` and `al label --export/--import-label-studio` from the command line, and the next round run
from the page on a tiny real model: predictions from the round's checkpoint, and a failing round that keeps its
labels so that `al resume` still works."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from active.al_helpers import tiny_factory
from serve_helpers import client, gold, labels_of, make_run

from loracle.active import resume
from loracle.cli import main
from loracle.serve import create_app


# -- command line ----------------------------------------------------------------------------------------------
def test_serve_help_is_light_and_shows_every_default():
    code = ("import sys\nfrom loracle.cli import main\ntry:\n    main(['al', 'serve', '--help'])\n"
            "except SystemExit:\n    pass\n"
            "print('IMPORTED', sorted(m for m in ('torch', 'starlette', 'uvicorn', 'jinja2') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert "IMPORTED []" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    for flag, default in (("--host", "127.0.0.1"), ("--port", "8000"), ("--token", "none"),
                          ("--no-predictions", "off")):
        line = next(line for line in proc.stdout.splitlines() if line.strip().startswith(flag))
        assert line.rstrip().endswith(f"(default: {default})"), line


def test_serve_refuses_an_open_host_without_a_token(tmp_path, capsys):
    run_dir = make_run(tmp_path / "run")
    assert main(["al", "serve", str(run_dir), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loracle al serve: error: --host 0.0.0.0 would let other machines") and "--token" in err


def test_serve_starts_uvicorn_on_the_given_address(tmp_path, capsys, monkeypatch):
    import uvicorn

    run_dir = make_run(tmp_path / "run")
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert main(["al", "serve", str(run_dir), "--port", "8123", "--no-predictions"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    assert "at http://127.0.0.1:8123/ " in capsys.readouterr().err
    assert client(seen["app"]).get("/").status_code == 200
    assert main(["al", "serve", str(run_dir), "--host", "::", "--token", "tok"]) == 0
    assert "at http://[::]:8000/?token=tok" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["al", "serve", str(run_dir), "--port", "70000"])
    assert "outside 1..65535" in capsys.readouterr().err


def test_label_studio_flags(tmp_path, capsys):
    run_dir = make_run(tmp_path / "run")
    out = tmp_path / "tasks.json"
    assert main(["al", "label", str(run_dir), "--export-label-studio", str(out)]) == 0
    assert "wrote 4 pending queries as Label Studio tasks" in capsys.readouterr().out
    assert 'toName="text"' in (tmp_path / "tasks.label_config.xml").read_text()
    tasks = json.loads(out.read_text())
    for task, choice in zip(tasks, ["fresh", "rotten", "nope", "rotten"]):
        task["annotations"] = [{"result": [{"value": {"choices": [choice]}}]}]
    back = tmp_path / "export.json"
    back.write_text(json.dumps(tasks))
    assert main(["al", "label", str(run_dir), "--import-label-studio", str(back)]) == 1
    captured = capsys.readouterr()
    assert "recorded 3 labels; 1 queries still pending" in captured.out
    assert "skipped tasks[2]: unknown label 'nope'" in captured.err
    tasks[2]["annotations"][0]["result"][0]["value"]["choices"] = ["fresh"]
    back.write_text(json.dumps(tasks))
    assert main(["al", "label", str(run_dir), "--import-label-studio", str(back)]) == 0
    captured = capsys.readouterr().out
    assert "recorded 1 labels (3 already recorded)" in captured and "continue with `loracle al resume" in captured
    assert labels_of(run_dir) == {0: 0, 1: 1, 2: 0, 3: 1}
    with pytest.raises(SystemExit):  # one of --export, --import and the Label Studio flags
        main(["al", "label", str(run_dir), "--export", "x.csv", "--import-label-studio", str(back)])
    assert "not allowed with argument --export" in capsys.readouterr().err


# -- a tiny real run (the human_run fixture) ---------------------------------------------------------------
def answer_all(web) -> int:
    """Answer every pending query of the round through the API, with the toy data's rule; returns how many."""
    n = 0
    while (idx := web.get("/api/state").json()["next_item"]) is not None:
        text = web.get(f"/api/items/{idx}").json()["text"]
        assert web.post("/api/answer", json={"idx": idx, "label": gold(text)}).status_code == 200
        n += 1
    return n


def test_next_round_from_the_page_then_predictions(human_run):
    app = create_app(human_run, model_factory=tiny_factory)
    web = client(app)
    assert "n/a: round 0" in web.get("/").text
    assert answer_all(web) == 6
    assert web.post("/api/round", json={}).status_code == 202
    app.state.server.job.join(60)
    status = web.get("/api/round").json()
    assert status["job"]["state"] == "finished", status
    assert status["job"]["result"] == "waiting_for_labels" and status["progress"]["round"] == 1
    assert status["progress"]["total"] == 4 and status["progress"]["answered"] == 0
    state = web.get("/api/state").json()
    assert [r["n_labels"] for r in state["curve"]] == [6] and state["curve"][0]["accuracy"] is not None
    # round 1's queries were chosen by round 0's model: its predictions, from the checkpoint, once
    assert app.state.server.predictions.wait(1, timeout=60).state == "ready"
    item = web.get(f"/api/items/{state['next_item']}").json()
    assert item["score"] is not None and item["prediction"]["state"] == "ready"
    assert item["prediction"]["label_name"] in ("fresh", "rotten") and 0.5 <= item["prediction"]["confidence"] <= 1
    # the round's calibrated confidence (the default calibration "matched": the mean of round 0's model and its 3
    # fold models at the round's matched temperature), as `al predict` gives it
    from loracle.active.predict import predict_with_run
    from loracle.active.state import RunState

    run = RunState.open(human_run)
    examples = run.pool_examples([state["next_item"]])
    run.close()
    expected = predict_with_run(human_run, examples, 0, model_factory=tiny_factory)
    assert (expected["calibration"], expected["members"]) == ("matched", 4)
    assert item["prediction"]["confidence"] == pytest.approx(float(expected["calibrated"].max()), abs=1e-3)
    html = web.get("/").text
    assert "% confident)" in html and "<polyline" in html
    assert answer_all(web) == 4
    assert web.post("/api/undo", json={}).status_code == 200 and answer_all(web) == 1
    assert len(labels_of(human_run)) == 10


def test_failing_round_keeps_labels_and_resume_still_works(human_run):
    def broken(name, task_kind, num_labels):
        raise OSError(28, "No space left on device")

    app = create_app(human_run, model_factory=broken, predictions=False)
    web = client(app)
    answer_all(web)
    before = labels_of(human_run)
    assert web.post("/api/round", json={}).status_code == 202
    app.state.server.job.join(60)
    job = web.get("/api/round").json()["job"]
    assert job["state"] == "failed" and "No space left on device" in job["error"]
    assert "No space left on device" in web.get("/").text
    assert labels_of(human_run) == before and len(before) == 6
    # the lock was released: `al resume` (here in process) continues the run
    assert resume(human_run, model_factory=tiny_factory) == "waiting_for_labels"
    assert labels_of(human_run) == before and web.get("/api/state").json()["progress"]["round"] == 1
