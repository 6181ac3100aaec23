"""The labelling page in a real headless Chromium: a round by keyboard alone, undo, a reload mid-round, two tabs
answering at once, and a server killed with SIGKILL mid-round. Each step is checked on the page and in the run's
SQLite state; screenshots go to ``test-artifacts/browser/<test>/``.

Needs Playwright (the ``browser`` extra) and the system Chromium, both installed by ``scripts/setup.sh``; the tests
skip, saying which is missing, only where neither could be installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from active.al_helpers import tiny_factory
from browser_helpers import LiveServer, ServeProcess, Shots, artifacts_dir, chromium_path, free_port
from serve_helpers import NAMES, fake_predictions, gold, labels_of

from loracle.active import RunState
from loracle.serve import create_app

pytestmark = pytest.mark.browser
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def chromium():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed: pip install -e '.[browser]' (scripts/setup.sh)")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium at /usr/bin/chromium (nor $LORACLE_CHROMIUM): scripts/setup.sh installs Debian's "
                    "`chromium` with apt-get when run as root")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def context(chromium):
    ctx = chromium.new_context(viewport={"width": 1000, "height": 760})
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def shots(request) -> Shots:
    return Shots(artifacts_dir() / request.node.name)


def showing(page: Any, idx: int | None, timeout: float = 10_000) -> None:
    """Wait until the page shows item ``idx`` (None: no item, the round is answered) and its keys work."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_selector(f'body[data-ready][data-idx="{"" if idx is None else idx}"]', state="attached",
                               timeout=timeout)
    except PlaywrightTimeout:
        raise AssertionError(f"the page should show item {idx}; it shows {page.get_attribute('body', 'data-idx')!r} "
                             f"(message: {page.inner_text('#message')!r})") from None


def key_for(page: Any, name: str) -> str:
    """The key (1..9) of the answer button ``name``."""
    for button in page.locator("button.label").all():
        if button.inner_text().split()[-1] == name:
            return button.get_attribute("data-key")
    raise AssertionError(f"no button for {name!r}")


def answer_by_key(page: Any, name: str, then: int | None) -> None:
    page.keyboard.press(key_for(page, name))
    showing(page, then)


def label_rows(run_dir: Path) -> list[tuple[int, int, int, str]]:
    state = RunState.open(run_dir)
    try:
        return state.label_rows()
    finally:
        state.close()


def queries(run_dir: Path, round_index: int) -> list[int]:
    state = RunState.open(run_dir)
    try:
        return state.queries(round_index)
    finally:
        state.close()


def test_a_round_by_keyboard_alone_with_skip_undo_and_the_next_round(human_run, context, shots):
    q = queries(human_run, 0)
    assert len(q) == 6
    with LiveServer(create_app(human_run, model_factory=tiny_factory)) as live:
        page = context.new_page()
        page.goto(live.url)
        showing(page, q[0])
        shots(page, "first-query")
        assert page.inner_text("#progress-text") == "0 / 6 answered"

        answers: dict[int, str] = {}

        def answer(i: int, then: int | None) -> None:
            answers[i] = gold(page.inner_text("#item-text"))
            answer_by_key(page, answers[i], then)

        answer(q[0], q[1])
        page.keyboard.press("s")  # skip q1: it comes back once the others are answered
        showing(page, q[2])
        answer(q[2], q[3])
        assert labels_of(human_run) == {q[0]: NAMES.index(answers[q[0]]), q[2]: NAMES.index(answers[q[2]])}
        page.keyboard.press("u")  # undo: q2 is pending again and shown
        showing(page, q[2])
        shots(page, "after-undo")
        assert labels_of(human_run) == {q[0]: NAMES.index(answers[q[0]])}
        assert page.inner_text("#progress-text") == "1 / 6 answered"
        answer(q[2], q[3])
        answer(q[3], q[4])
        answer(q[4], q[5])
        answer(q[5], q[1])  # the skipped item last
        answer(q[1], None)
        assert page.inner_text("#progress-text") == "6 / 6 answered"
        assert "All 6 queries of round 0 are answered" in page.inner_text("section.done")
        shots(page, "round-answered")
        assert labels_of(human_run) == {i: NAMES.index(answers[i]) for i in q}
        assert len(label_rows(human_run)) == 6

        page.keyboard.press("Enter")  # trains round 0 on the tiny model, then chooses round 1's queries
        page.wait_for_selector("#job:not([hidden])")
        page.wait_for_selector('body[data-ready]:not([data-idx=""])', state="attached", timeout=90_000)
        q1 = queries(human_run, 1)
        showing(page, q1[0])
        assert page.inner_text("#progress-text") == f"0 / {len(q1)} answered"
        assert "Round 0 finished" in page.inner_text("#job")
        page.wait_for_selector("#prediction:has-text('% confident')", timeout=90_000)  # polled by the page
        assert page.locator("svg.chart polyline").count() == 2  # accuracy and macro-F1 after round 0
        shots(page, "round-1-with-prediction")
        answer_by_key(page, gold(page.inner_text("#item-text")), q1[1])
        assert len(label_rows(human_run)) == 7


def test_reload_mid_round_loses_nothing_and_resumes_at_the_next_item(run_dir, context, shots):
    with LiveServer(create_app(run_dir, compute_predictions=fake_predictions)) as live:
        page = context.new_page()
        page.goto(live.url)
        showing(page, 0)
        answer_by_key(page, "rotten", 1)
        answer_by_key(page, "fresh", 2)
        page.reload()
        showing(page, 2)
        shots(page, "reloaded")
        assert page.inner_text("#progress-text") == "2 / 4 answered"
        assert labels_of(run_dir) == {0: 1, 1: 0}
        # the item holds a script tag: shown as text, never run
        assert page.inner_text("#item-text") == "<script>alert('owned')</script> & a <b>bold</b> claim"
        assert page.locator("#item-text script").count() == 0
        page.close()  # a closed tab loses nothing; a new one starts where labelling stands
        again = context.new_page()
        again.goto(live.url)
        showing(again, 2)
        again.goto(live.url + "?item=0")  # an answered item's old address: told, then the next pending one
        showing(again, 2)
        assert "item 0 is not waiting for an answer" in again.inner_text("#message")
        assert labels_of(run_dir) == {0: 1, 1: 0}


def test_two_tabs_answering_at_once_make_one_row_and_the_second_is_told(run_dir, context, shots):
    with LiveServer(create_app(run_dir, compute_predictions=fake_predictions)) as live:
        first, second = context.new_page(), context.new_page()
        statuses: list[int] = []
        for tab in (first, second):
            tab.on("response", lambda r: statuses.append(r.status) if r.url.endswith("/api/answer") else None)
            tab.goto(live.url)
            showing(tab, 0)
        answer_by_key(first, "fresh", 1)
        second.keyboard.press(key_for(second, "rotten"))  # the second tab still shows item 0
        second.wait_for_selector("#message.error")
        assert "is answered already; nothing was changed" in second.inner_text("#message")
        shots(second, "second-tab-told")
        showing(second, 1)  # then it moves on to the next pending item
        assert labels_of(run_dir) == {0: 0} and statuses == [200, 409]

        statuses.clear()  # both tabs on item 1, both keys at once
        first.keyboard.press(key_for(first, "rotten"))
        second.keyboard.press(key_for(second, "fresh"))
        showing(first, 2)
        showing(second, 2)
        assert sorted(statuses) == [200, 409]
        rows = [row for row in label_rows(run_dir) if row[0] == 1]
        assert len(rows) == 1 and rows[0][1] in (0, 1)
        assert [r[0] for r in label_rows(run_dir)] == [0, 1]
        shots(first, "both-on-item-2")


def test_server_killed_mid_round_loses_no_label(run_dir, context, shots, tmp_path):
    server = ServeProcess(run_dir, free_port(), tmp_path / "serve.log").start()
    try:
        page = context.new_page()
        page.goto(server.url)
        showing(page, 0)
        answer_by_key(page, "fresh", 1)
        answer_by_key(page, "rotten", 2)
        server.kill()  # kill -9 while round 0 is half answered
        assert labels_of(run_dir) == {0: 0, 1: 1}
        page.keyboard.press(key_for(page, "fresh"))  # the server is gone: said on the page, nothing recorded
        page.wait_for_selector("#message.error")
        assert "the server did not answer" in page.inner_text("#message")
        shots(page, "server-down")
        assert labels_of(run_dir) == {0: 0, 1: 1}

        server.start()  # same port, same run
        page.reload()
        showing(page, 2)
        assert page.inner_text("#progress-text") == "2 / 4 answered"
        answer_by_key(page, "fresh", 3)
        answer_by_key(page, "rotten", None)
        shots(page, "after-restart")
        assert labels_of(run_dir) == {0: 0, 1: 1, 2: 0, 3: 1}
        assert [(r[0], r[2], r[3]) for r in label_rows(run_dir)] == [(i, 0, "human") for i in range(4)]
    finally:
        server.stop()
