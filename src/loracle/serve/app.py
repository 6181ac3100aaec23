"""The labelling web app (Starlette): one server-rendered page, a small JSON API, and the run's learning curve.

Routes (every one behind :class:`loracle.serve.security.Guard`):

- ``GET /`` the page: the pending query ``?item=IDX`` (default the first pending one) with its text or question and
  choices, the uncertainty score that made it a query, the model's prediction, a button (and key 1..9) per label,
  skip, undo, the round's progress and the learning curve so far; when the round is fully answered, a button that
  runs the next round.
- ``GET /api/state`` progress, job, predictions and curve as JSON; ``GET /api/items/IDX`` one query.
- ``POST /api/answer`` ``{"idx": IDX, "label": NAME_OR_INDEX}``: 200, 400 unknown label, 404 not a query, 409
  answered already (another tab was first).
- ``POST /api/undo``: removes the last answer of the round being labelled (409 when its round is trained, a round
  is running, or there is nothing to undo).
- ``POST /api/round`` starts the next round in the background (202; 409 while queries are pending, a round runs or
  the run is finished); ``GET /api/round`` its status.
- ``GET /curve.png`` the run's ``learning_curve.png`` (404 until the run writes one);
  ``GET /export/label-studio.json`` the pending queries as Label Studio tasks; ``/static/...`` script and style.

Nothing reads or writes outside the run folder: items are addressed by pool index, and the only files served are
the fixed ``learning_curve.png`` and the package's own static folder.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from loracle.errors import LoracleError
from loracle.serve.jobs import RoundJob
from loracle.serve.predictions import Compute, PredictionStatus, RoundPredictions
from loracle.serve.security import LOOPBACK_NAMES, MAX_BODY, TOKEN_PARAM, Guard, check_bind
from loracle.serve.session import (
    AlreadyAnswered,
    Item,
    LabelSession,
    NotAQuery,
    Progress,
    UndoRefused,
    next_pending,
)

HERE = Path(__file__).resolve().parent
#: keys 1..9 answer with the first nine labels
MAX_KEYS = 9


class LabelServer:
    """The state behind the app: the run's labelling session, the predictions cache and the background round.

    Args:
        run_dir: a run folder with a human oracle.
        token: what every request must bring, or None.
        model_factory: base-model factory for predictions and rounds (default: the run's model, loaded as usual).
        predictions: show the model's predictions (computed once per round, in the background).
        runner: runs the next round (default ``loracle.active.resume(run_dir)``).
        compute_predictions: replaces the model pass of the predictions (tests).

    Raises:
        LoracleError: for a folder without a run, or a run whose oracle is simulated (nothing to label).
    """

    def __init__(self, run_dir: str | Path, *, token: str | None = None, model_factory: Any = None,
                 predictions: bool = True, runner: Callable[[], str] | None = None,
                 compute_predictions: Compute | None = None) -> None:
        self.session = LabelSession(run_dir)
        if self.session.oracle != "human":
            raise LoracleError(f"{run_dir} uses the {self.session.oracle} oracle: its labels come from the data, so "
                               "there is nothing to label; `loracle al serve` is for runs started with "
                               "--oracle human")
        self.run_dir = self.session.run_dir
        self.token = token
        self.predictions = RoundPredictions(self.run_dir, enabled=predictions, model_factory=model_factory,
                                            compute=compute_predictions)
        self.job = RoundJob(runner or self._resume(model_factory))
        #: held while labels change (undo) and while a round is being started, so the two never interleave
        self.guard = threading.Lock()

    def _resume(self, model_factory: Any) -> Callable[[], str]:
        def run() -> str:
            from loracle.active import resume

            return resume(self.run_dir, model_factory=model_factory)

        return run

    # -- views of the state ----------------------------------------------------------------------------------------
    def url(self, path: str, **params: Any) -> str:
        """``path`` with ``params`` and, when the server has one, the token."""
        query = {k: v for k, v in params.items() if v is not None}
        if self.token:
            query[TOKEN_PARAM] = self.token
        return f"{path}?{urlencode(query)}" if query else path

    def prediction_of(self, item: Item, status: PredictionStatus) -> dict[str, Any]:
        found = status.predictions.get(item.idx) if status.state == "ready" else None
        if found is None:
            return {"state": status.state, "message": status.message or "n/a", "label": None, "label_name": None,
                    "confidence": None}
        return {"state": "ready", "message": "", "label": found.label,
                "label_name": self.session.label_text(item, found.label), "confidence": found.confidence}

    def item_json(self, item: Item) -> dict[str, Any]:
        return {"idx": item.idx, "id": item.id, "text": item.text,
                "choices": list(item.choices) if item.choices else None, "round": item.round, "rank": item.rank,
                "score": item.score, "label": item.label, "label_name": self.session.label_text(item, item.label),
                "options": self.session.options(item),
                "prediction": self.prediction_of(item, self.predictions.lookup(item.round))}

    def state_json(self) -> dict[str, Any]:
        with self.session.state() as state:
            progress = self.session.progress(state)
            curve = self.session.curve(state)
        status = self.predictions.lookup(progress.round, start=False)
        return {"run": self.run_dir.name, "strategy": self.session.config.get("strategy"),
                "progress": progress.to_dict(), "next_item": progress.pending[0] if progress.pending else None,
                "job": self.job.status(),
                "predictions": {"state": status.state, "message": status.message}, "curve": curve,
                "curve_png": self.session.curve_file() is not None}


def _json(data: Any, status: int = 200) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(data, status_code=status)


def _error(message: str, status: int, **extra: Any) -> Any:
    return _json({"error": message, **extra}, status)


async def _body(request: Any) -> dict[str, Any]:
    """The JSON object of a request body.

    Raises:
        LoracleError: for a body that is too large, not JSON, or not an object.
    """
    body = await request.body()
    if len(body) > MAX_BODY:
        raise LoracleError(f"the request body is larger than {MAX_BODY} bytes")
    try:
        data = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LoracleError("the request body is not JSON") from None
    if not isinstance(data, dict):
        raise LoracleError("the request body must be a JSON object")
    return data


def _index(value: Any, what: str = "idx") -> int:
    """A pool index from a request (an int, or a string of digits)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise LoracleError(f"{what} must be a pool index (a non-negative integer), got {value!r}")
    return int(str(value).strip())


def curve_chart(rows: list[dict[str, Any]], width: int = 360, height: int = 180, pad: int = 28) -> dict[str, Any]:
    """Coordinates of an SVG line chart of accuracy and macro-F1 (0..1) against the number of labels."""
    points = [r for r in rows if r.get("n_labels") is not None]
    if not points:
        return {"width": width, "height": height, "lines": [], "ticks": []}
    xs = [r["n_labels"] for r in points]
    lo, hi = min(xs), max(xs)
    span = (hi - lo) or 1

    def x(n: float) -> float:
        return round(pad + (n - lo) / span * (width - 2 * pad), 1) if hi != lo else width / 2

    def y(v: float) -> float:
        return round(height - pad - v * (height - 2 * pad), 1)

    lines = []
    for key, name, css in (("accuracy", "accuracy", "acc"), ("macro_f1", "macro-F1", "f1")):
        pts = [(x(r["n_labels"]), y(r[key])) for r in points if r.get(key) is not None]
        if pts:
            lines.append({"name": name, "css": css, "points": " ".join(f"{a},{b}" for a, b in pts),
                          "dots": pts})
    ticks = [{"x": x(n), "label": str(n)} for n in sorted(set(xs))]
    return {"width": width, "height": height, "pad": pad, "lines": lines, "ticks": ticks,
            "y0": y(0.0), "y1": y(1.0), "y_half": y(0.5)}


def create_app(run_dir: str | Path, *, host: str = "127.0.0.1", token: str | None = None,
               model_factory: Any = None, predictions: bool = True, runner: Callable[[], str] | None = None,
               compute_predictions: Compute | None = None) -> Any:
    """The Starlette app for ``run_dir`` (``app.state.server`` is its :class:`LabelServer`).

    Args:
        run_dir: a run folder with a human oracle.
        host: the address it will listen on: loopback without ``token``; with a loopback host and no token,
            requests must name a loopback host (``Host`` header).
        token, model_factory, predictions, runner, compute_predictions: see :class:`LabelServer`.

    Raises:
        LoracleError: for a non-loopback host without a token, a folder without a run, or a simulated-oracle run.
    """
    import jinja2
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    check_bind(host, token)
    server = LabelServer(run_dir, token=token, model_factory=model_factory, predictions=predictions,
                         runner=runner, compute_predictions=compute_predictions)
    session = server.session
    templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                   undefined=jinja2.StrictUndefined)

    # -- the page ----------------------------------------------------------------------------------------------
    def page(request: Request) -> Response:
        notice = None
        wanted = request.query_params.get("item")
        try:
            wanted_idx = _index(wanted, "item") if wanted not in (None, "") else None
        except LoracleError as err:
            notice, wanted_idx = str(err), None
        with session.state() as state:
            progress: Progress = session.progress(state)
            curve = session.curve(state)
            item = None
            pending = progress.pending
            if wanted_idx is not None and wanted_idx not in pending:
                notice = notice or (f"item {wanted_idx} is not waiting for an answer (answered already, perhaps "
                                    "in another tab); here is the next one")
            current = wanted_idx if wanted_idx in pending else (pending[0] if pending else None)
            if current is not None:
                item = session.item(state, current)
        prediction = None
        if item is not None:
            prediction = server.prediction_of(item, server.predictions.lookup(item.round))
        skip_to = next_pending(pending, item.idx) if item is not None else None
        options = session.options(item) if item is not None else []
        html = templates.get_template("label.html").render(
            server=server, run=server.run_dir.name, strategy=session.config.get("strategy"), progress=progress,
            item=item, options=[(i + 1 if i < MAX_KEYS else None, i, name) for i, name in enumerate(options)],
            prediction=prediction, skip_url=server.url("/", item=skip_to) if skip_to is not None else None,
            job=server.job.status(), curve=curve, chart=curve_chart(curve),
            curve_png=session.curve_file() is not None, notice=notice, url=server.url)
        return HTMLResponse(html)

    # -- JSON API ----------------------------------------------------------------------------------------------
    def api_state(request: Request) -> Response:
        return _json(server.state_json())

    def api_item(request: Request) -> Response:
        try:
            idx = _index(request.path_params["idx"])
            with session.state() as state:
                item = session.item(state, idx)
        except NotAQuery as err:
            return _error(str(err), 404)
        except LoracleError as err:
            return _error(str(err), 400)
        return _json(server.item_json(item))

    def answer(idx: int, value: Any) -> Response:
        with session.state() as state:
            try:
                label = session.record(state, idx, str(value))
            except NotAQuery as err:
                return _error(str(err), 404)
            except AlreadyAnswered as err:
                progress = session.progress(state)
                order = state.queries(state.query_round_of(idx))
                return _error(str(err), 409, next=next_pending(progress.pending, idx, order))
            except LoracleError as err:  # an unknown label: the message lists the valid ones
                return _error(str(err), 400)
            item = session.item(state, idx)
            progress = session.progress(state)
            order = state.queries(item.round)
        return _json({"recorded": {"idx": idx, "label": label, "label_name": session.label_text(item, label)},
                      "next": next_pending(progress.pending, idx, order), "progress": progress.to_dict()})

    async def api_answer(request: Request) -> Response:
        try:
            data = await _body(request)
            idx = _index(data.get("idx"))
            value = data.get("label")
            if value is None or isinstance(value, (bool, dict, list)):
                raise LoracleError("give the answer as \"label\": a class name or index")
        except LoracleError as err:
            return _error(str(err), 400)
        return await run_in_threadpool(answer, idx, value)

    def undo() -> Response:
        from loracle.active import RunInUseError, RunLock

        with server.guard:
            if server.job.running:
                return _error("a round is running on these labels; undo is possible once it is done", 409)
            try:
                lock = RunLock(server.run_dir).acquire()
            except RunInUseError:
                return _error("another loracle process (a round started with `loracle al resume`?) is driving this "
                              "run; undo is possible once it is done", 409)
            try:
                with session.state() as state:
                    item = session.undo(state)
                    progress = session.progress(state)
            except UndoRefused as err:
                return _error(str(err), 409)
            finally:
                lock.release()
        return _json({"undone": server.item_json(item), "progress": progress.to_dict()})

    async def api_undo(request: Request) -> Response:
        try:
            await _body(request)
        except LoracleError as err:
            return _error(str(err), 400)
        return await run_in_threadpool(undo)

    def start_round() -> Response:
        with session.state() as state:
            progress = session.progress(state)
        if progress.finished:
            return _error("the run is finished: every round is trained", 409)
        if progress.round is None:
            return _error("the run has no queries yet; `loracle al resume` sets it up", 409)
        if progress.pending:
            return _error(f"{len(progress.pending)} of round {progress.round}'s {progress.total} queries are still "
                          "waiting for an answer", 409)
        target = progress.round if not progress.trained else progress.round + 1
        if not server.job.start(target, server.guard):
            return _error("a round is running already", 409, job=server.job.status())
        return _json({"job": server.job.status()}, 202)

    async def api_round_start(request: Request) -> Response:
        try:
            await _body(request)
        except LoracleError as err:
            return _error(str(err), 400)
        return await run_in_threadpool(start_round)

    def api_round(request: Request) -> Response:
        with session.state() as state:
            progress = session.progress(state)
        return _json({"job": server.job.status(), "progress": progress.to_dict()})

    # -- files -------------------------------------------------------------------------------------------------
    def curve_png(request: Request) -> Response:
        path = session.curve_file()
        if path is None:
            return _error("no learning_curve.png yet: the run writes it when it ends; the page draws the curve "
                          "from the rounds so far", 404)
        return FileResponse(path, media_type="image/png")

    def export_label_studio(request: Request) -> Response:
        from loracle.serve.label_studio import export_tasks

        with session.state() as state:
            rounds = sorted({state.query_round_of(i) for i in state.pending_queries()})
        ready: dict[int, Any] = {}
        for r in rounds:
            status = server.predictions.lookup(r, start=False)
            if status.state == "ready":
                ready.update(status.predictions)
        tasks = export_tasks(session, predictions=ready)
        return Response(json.dumps(tasks, indent=2, ensure_ascii=False), media_type="application/json",
                        headers={"content-disposition": f'attachment; filename="{server.run_dir.name}-tasks.json"'})

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/api/state", api_state, methods=["GET"]),
        Route("/api/items/{idx}", api_item, methods=["GET"]),
        Route("/api/answer", api_answer, methods=["POST"]),
        Route("/api/undo", api_undo, methods=["POST"]),
        Route("/api/round", api_round, methods=["GET"]),
        Route("/api/round", api_round_start, methods=["POST"]),
        Route("/curve.png", curve_png, methods=["GET"]),
        Route("/export/label-studio.json", export_label_studio, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    allowed = None if token else (*LOOPBACK_NAMES, host)  # check_bind: no token means a loopback host
    app = Starlette(routes=routes, middleware=[Middleware(Guard, token=token, allowed_hosts=allowed)])
    app.state.server = server
    return app
