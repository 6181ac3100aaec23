"""The labelling app through Starlette's test client: the page, every endpoint and every bad input."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from serve_helpers import SCRIPT, client, labels_of, make_run, train_round

from loracle.active import RunLock
from loracle.errors import LoracleError
from loracle.serve import create_app


# -- the page --------------------------------------------------------------------------------------------------
def test_page_shows_the_first_query_with_its_score_buttons_and_progress(web):
    page = web.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "review number 0" in html and "query 1 of round 0" in html and "0.6900" in html
    assert 'data-label="0" data-key="1"' in html and 'data-label="1" data-key="2"' in html
    assert "<kbd>1</kbd> fresh" in html and "<kbd>2</kbd> rotten" in html
    assert '<progress id="round-progress" max="4" value="0">' in html and "0 / 4 answered" in html
    assert "n/a: round 0" in html  # no model chose the initial set
    assert 'href="/?item=1"' in html  # skip goes to the next pending query
    assert "No round is trained yet." in html
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_text_is_escaped(web):
    html = web.get("/?item=2").text
    assert SCRIPT not in html and "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt; &amp; a &lt;b&gt;bold&lt;/b&gt; claim" in html
    assert web.get("/api/items/2").json()["text"] == SCRIPT  # JSON keeps the text; the page sets it as text
    assert web.get("/static/app.js").text.count("innerHTML") == 0


def test_item_parameter_skips_and_wraps(web):
    assert "review number 3" in web.get("/?item=3").text
    assert 'href="/?item=0"' in web.get("/?item=3").text  # skip from the last wraps to the first
    html = web.get("/?item=7").text  # not a query: the first pending one, with a notice
    assert "review number 0" in html and "item 7 is not waiting for an answer" in html
    assert "must be a pool index" in web.get("/?item=abc").text


def test_api_state_and_item(web):
    state = web.get("/api/state").json()
    assert state["progress"] == {"round": 0, "answered": 0, "total": 4, "pending": 4, "trained": False,
                                 "finished": False, "ready_to_train": False, "query_strategy": None}
    assert state["job"]["state"] == "idle" and state["curve"] == [] and state["curve_png"] is False
    item = web.get("/api/items/1").json()
    assert item["score"] == 0.5 and item["options"] == ["fresh", "rotten"] and item["label"] is None
    assert item["prediction"]["state"] == "none"
    assert web.get("/api/items/3").json()["score"] is None
    assert web.get("/api/items/6").status_code == 404  # in the pool, never queried
    assert web.get("/api/items/999").status_code == 404
    assert web.get("/api/items/-1").status_code == 400


# -- answers ---------------------------------------------------------------------------------------------------
def test_answer_by_index_or_name(web, run_dir):
    reply = web.post("/api/answer", json={"idx": 0, "label": "1"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["recorded"] == {"idx": 0, "label": 1, "label_name": "rotten"} and body["next"] == 1
    assert body["progress"]["answered"] == 1
    assert web.post("/api/answer", json={"idx": 1, "label": "Fresh"}).json()["recorded"]["label"] == 0
    assert web.post("/api/answer", json={"idx": 2, "label": 0}).status_code == 200
    assert labels_of(run_dir) == {0: 1, 1: 0, 2: 0}
    state = web.get("/api/state").json()
    assert state["progress"]["answered"] == 3


def test_after_a_skip_the_next_answer_moves_on_and_the_skipped_item_comes_last(web, run_dir):
    # item 0 skipped (the page went to ?item=1): answering 1, 2, 3 moves forward, then wraps to 0
    nexts = [web.post("/api/answer", json={"idx": i, "label": "fresh"}).json()["next"] for i in (1, 2, 3)]
    assert nexts == [2, 3, 0]
    assert web.post("/api/answer", json={"idx": 0, "label": "rotten"}).json()["next"] is None
    assert labels_of(run_dir) == {0: 1, 1: 0, 2: 0, 3: 0}


@pytest.mark.parametrize("label", ["maybe", "2", "-1", ""])
def test_unknown_label_is_refused_with_the_valid_ones(web, run_dir, label):
    reply = web.post("/api/answer", json={"idx": 0, "label": label})
    assert reply.status_code == 400
    assert "unknown label" in reply.json()["error"] and "0=fresh, 1=rotten" in reply.json()["error"]
    assert labels_of(run_dir) == {}


@pytest.mark.parametrize("body, message", [
    ({"label": "fresh"}, "idx must be a pool index"),
    ({"idx": "0; DROP TABLE labels", "label": "fresh"}, "idx must be a pool index"),
    ({"idx": True, "label": "fresh"}, "idx must be a pool index"),
    ({"idx": 0}, "give the answer as \"label\""),
    ({"idx": 0, "label": ["fresh"]}, "give the answer as \"label\""),
])
def test_malformed_answers(web, body, message):
    reply = web.post("/api/answer", json=body)
    assert reply.status_code == 400 and message in reply.json()["error"]


def test_answer_needs_a_query(web):
    assert web.post("/api/answer", json={"idx": 6, "label": "fresh"}).status_code == 404
    assert web.post("/api/answer", json={"idx": 10**9, "label": "fresh"}).status_code == 404
    reply = web.post("/api/answer", content=b"[1, 2", headers={"content-type": "application/json"})
    assert reply.status_code == 400 and "not JSON" in reply.json()["error"]
    reply = web.post("/api/answer", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert reply.status_code == 400 and "JSON object" in reply.json()["error"]


def test_second_tab_cannot_answer_twice(app, run_dir):
    tab1, tab2 = client(app), client(app)
    assert tab1.post("/api/answer", json={"idx": 0, "label": "fresh"}).status_code == 200
    reply = tab2.post("/api/answer", json={"idx": 0, "label": "rotten"})
    assert reply.status_code == 409 and "answered already" in reply.json()["error"] and reply.json()["next"] == 1
    assert labels_of(run_dir) == {0: 0}
    # the second tab's page moves on, saying why
    assert "review number 1" in tab2.get("/?item=0").text


def test_simultaneous_answers_record_one(app, run_dir):
    barrier = threading.Barrier(4)
    codes: list[int] = []

    def answer(label: str) -> None:
        tab = client(app)
        barrier.wait()
        codes.append(tab.post("/api/answer", json={"idx": 1, "label": label}).status_code)

    threads = [threading.Thread(target=answer, args=(label,)) for label in ("fresh", "rotten", "fresh", "rotten")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200, 409, 409, 409] and list(labels_of(run_dir)) == [1]


# -- undo ------------------------------------------------------------------------------------------------------
def test_undo_removes_the_last_answer_of_the_round(web, run_dir):
    assert web.post("/api/undo", json={}).status_code == 409  # nothing to undo yet
    web.post("/api/answer", json={"idx": 0, "label": "fresh"})
    web.post("/api/answer", json={"idx": 2, "label": "rotten"})
    reply = web.post("/api/undo", json={})
    assert reply.status_code == 200 and reply.json()["undone"]["idx"] == 2 and reply.json()["undone"]["label"] is None
    assert labels_of(run_dir) == {0: 0}
    assert web.post("/api/undo", json={}).json()["undone"]["idx"] == 0
    assert labels_of(run_dir) == {}
    assert "nothing to undo" in web.post("/api/undo", json={}).json()["error"]


def test_undo_refused_once_the_round_is_trained(web, run_dir):
    for idx in range(4):
        web.post("/api/answer", json={"idx": idx, "label": "fresh"})
    train_round(run_dir, 0)  # trained, next queries not chosen yet
    reply = web.post("/api/undo", json={})
    assert reply.status_code == 409 and "trained already" in reply.json()["error"]
    assert len(labels_of(run_dir)) == 4


def test_undo_refused_while_another_process_drives_the_run(web, run_dir):
    web.post("/api/answer", json={"idx": 0, "label": "fresh"})
    with RunLock(run_dir):  # as `loracle al resume` would hold it
        reply = web.post("/api/undo", json={})
    assert reply.status_code == 409 and "driving this run" in reply.json()["error"]
    assert labels_of(run_dir) == {0: 0}
    assert web.post("/api/undo", json={}).status_code == 200  # the server itself holds no lock


# -- the next round ----------------------------------------------------------------------------------------------
def test_round_refused_while_queries_are_pending(web):
    reply = web.post("/api/round", json={})
    assert reply.status_code == 409 and "4 of round 0's 4 queries are still waiting" in reply.json()["error"]


def test_round_runs_in_the_background_and_undo_waits_for_it(run_dir):
    release = threading.Event()
    calls: list[bool] = []

    def runner() -> str:
        calls.append(RunLock(run_dir).acquire() is not None)  # the server does not hold the lock
        release.wait(10)
        train_round(run_dir, 0, next_queries=[5, 6])
        return "waiting_for_labels"

    app = create_app(run_dir, runner=runner, predictions=False)
    web = client(app)
    for idx in range(4):
        web.post("/api/answer", json={"idx": idx, "label": "fresh"})
    page = web.get("/").text
    assert "All 4 queries of round 0 are answered" in page and 'id="run-round"' in page
    reply = web.post("/api/round", json={})
    assert reply.status_code == 202 and reply.json()["job"]["state"] == "running"
    assert web.post("/api/round", json={}).status_code == 409  # one at a time
    assert web.get("/api/round").json()["job"]["state"] == "running"
    assert "is running" in web.get("/").text
    reply = web.post("/api/undo", json={})
    assert reply.status_code == 409 and "round is running" in reply.json()["error"]
    release.set()
    app.state.server.job.join(10)
    status = web.get("/api/round").json()
    assert status["job"]["state"] == "finished" and status["job"]["result"] == "waiting_for_labels"
    assert status["progress"]["round"] == 1 and status["progress"]["pending"] == 2 and calls == [True]
    html = web.get("/").text
    assert "review number 5" in html and "Round 0 finished" in html and "0.500" in html  # curve table
    assert "predictions are off" in html


def test_a_failing_round_shows_the_error_and_keeps_the_labels(run_dir):
    def runner() -> str:
        raise LoracleError("the data folder moved")

    app = create_app(run_dir, runner=runner, predictions=False)
    web = client(app)
    for idx in range(4):
        web.post("/api/answer", json={"idx": idx, "label": "rotten"})
    assert web.post("/api/round", json={}).status_code == 202
    app.state.server.job.join(10)
    job = web.get("/api/round").json()["job"]
    assert job["state"] == "failed" and job["error"] == "the data folder moved"
    html = web.get("/").text
    assert "Round 0 failed" in html and "the data folder moved" in html and "loracle al resume" in html
    assert labels_of(run_dir) == {0: 1, 1: 1, 2: 1, 3: 1}
    assert web.post("/api/round", json={}).status_code == 202  # and it may be tried again


def test_predictions_of_a_later_round(web, run_dir):
    for idx in range(4):
        web.post("/api/answer", json={"idx": idx, "label": "fresh"})
    train_round(run_dir, 0, next_queries=[5, 6])
    server = web.app.state.server
    assert server.predictions.wait(1).state == "ready"
    item = web.get("/api/items/5").json()
    assert item["round"] == 1 and item["score"] == pytest.approx(0.9)
    assert item["prediction"] == {"state": "ready", "message": "", "label": 1, "label_name": "rotten",
                                  "confidence": 0.8}
    assert "rotten (80% confident)" in web.get("/").text
    tasks = web.get("/export/label-studio.json").json()
    assert [t["data"]["loracle_idx"] for t in tasks] == [5, 6]
    assert tasks[0]["predictions"][0]["result"][0]["value"]["choices"] == ["rotten"]


def test_page_and_state_name_the_strategy_that_chose_the_round(web, run_dir):
    for idx in range(4):
        web.post("/api/answer", json={"idx": idx, "label": "fresh"})
    train_round(run_dir, 0, next_queries=[5, 6], acting="density_margin")
    assert web.get("/api/state").json()["progress"]["query_strategy"] == "density_margin"
    assert "strategy entropy (this round's queries chosen by density_margin) · round 1" in web.get("/").text


def test_page_names_no_other_strategy_when_the_configured_one_chose(web, run_dir):
    for idx in range(4):
        web.post("/api/answer", json={"idx": idx, "label": "fresh"})
    train_round(run_dir, 0, next_queries=[5, 6], acting="entropy")
    html = web.get("/").text
    assert "strategy entropy · round 1" in html and "chosen by" not in html


def test_finished_run(web, run_dir):
    for idx in range(4):
        web.post("/api/answer", json={"idx": idx, "label": "fresh"})
    train_round(run_dir, 0)
    assert web.get("/curve.png").status_code == 404
    (run_dir / "report.json").write_text("{}")
    (run_dir / "learning_curve.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert "The run is finished" in web.get("/").text
    png = web.get("/curve.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert web.post("/api/round", json={}).json()["error"].startswith("the run is finished")


def test_multiple_choice_items_offer_their_choices(tmp_path):
    run_dir = make_run(tmp_path / "mc", multiple_choice=True)
    web = client(create_app(run_dir, predictions=False))
    html = web.get("/").text
    assert "question 0?" in html and "<kbd>3</kbd> six" in html
    assert web.post("/api/answer", json={"idx": 0, "label": "3"}).status_code == 400
    assert web.post("/api/answer", json={"idx": 0, "label": "2"}).json()["recorded"]["label_name"] == "six"


# -- who may call ----------------------------------------------------------------------------------------------
def test_token_is_required_everywhere(run_dir):
    app = create_app(run_dir, host="0.0.0.0", token="s3cret-token", predictions=False)
    web = client(app, base_url="http://192.0.2.10:8000")  # any host name is fine with a token
    for path in ("/", "/api/state", "/api/items/0", "/static/app.js", "/curve.png", "/export/label-studio.json"):
        assert web.get(path).status_code == 401, path
        assert web.get(path, params={"token": "wrong"}).status_code == 401, path
    assert web.post("/api/answer", json={"idx": 0, "label": "fresh"}).status_code == 401
    assert "needs its token" in web.get("/").json()["error"]
    html = web.get("/", params={"token": "s3cret-token"}).text
    assert "/static/app.js?token=s3cret-token" in html and 'data-token="s3cret-token"' in html
    assert web.get("/api/state", headers={"X-Loracle-Token": "s3cret-token"}).status_code == 200
    assert web.get("/api/state", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    reply = web.post("/api/answer", json={"idx": 0, "label": "fresh"}, headers={"X-Loracle-Token": "s3cret-token"})
    assert reply.status_code == 200 and labels_of(run_dir) == {0: 0}


def test_non_loopback_host_needs_a_token(run_dir):
    with pytest.raises(LoracleError, match="add --token"):
        create_app(run_dir, host="0.0.0.0")
    with pytest.raises(LoracleError, match="--token is empty"):
        create_app(run_dir, host="0.0.0.0", token=" ")
    create_app(run_dir, host="::1", predictions=False)
    create_app(run_dir, host="localhost", predictions=False)


def test_other_host_names_and_cross_site_writes_are_refused(app, run_dir):
    rebound = client(app, base_url="http://attacker.example:8000")  # DNS rebinding to 127.0.0.1
    assert rebound.get("/").status_code == 400
    web = client(app)
    assert client(app, base_url="http://localhost:8000").get("/").status_code == 200
    reply = web.post("/api/answer", json={"idx": 0, "label": "fresh"}, headers={"Origin": "http://attacker.example"})
    assert reply.status_code == 403
    reply = web.post("/api/answer", data={"idx": "0", "label": "fresh"})  # a plain HTML form
    assert reply.status_code == 415
    reply = web.post("/api/answer", content=b"x" * 70_000, headers={"content-type": "application/json"})
    assert reply.status_code == 413
    assert labels_of(run_dir) == {}
    same_origin = {"Origin": "http://127.0.0.1:8000"}
    assert web.post("/api/answer", json={"idx": 0, "label": "fresh"}, headers=same_origin).status_code == 200


@pytest.mark.parametrize("path", ["/state.sqlite", "/static/../state.sqlite", "/static/%2e%2e/state.sqlite",
                                  "/static/..%2fstate.sqlite", "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                                  "/curve.png/../state.sqlite", "/api/items/..%2fstate.sqlite",
                                  "/static//etc/passwd", "/rounds/000/loracle_adapter.json"])
def test_no_path_reaches_outside_the_served_files(web, run_dir, path):
    (run_dir / "rounds" / "000").mkdir(parents=True)
    (run_dir / "rounds" / "000" / "loracle_adapter.json").write_text("{}")
    reply = web.get(path)
    assert reply.status_code in (400, 404), (path, reply.status_code)
    assert b"SQLite format 3" not in reply.content and b"root:" not in reply.content


def test_simulated_runs_are_refused(tmp_path):
    from loracle.active import RunState
    from loracle.data import Example

    state = RunState(tmp_path / "sim")
    state.initialise({"oracle": "simulated"}, [Example("a", "x", label=0)], [Example("t", "y", label=0)],
                     ["a", "b"])
    state.close()
    with pytest.raises(LoracleError, match="nothing to label"):
        create_app(tmp_path / "sim")
    with pytest.raises(LoracleError, match="not an active-learning run folder"):
        create_app(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists() or not any(Path(tmp_path / "nothing").iterdir())
