"""What the labelling page shows and does, over a run's state, with no web framework in sight.

A run with a human oracle stops with queries waiting for labels. :class:`LabelSession` reads those queries (the
item, the round that asked for it and the uncertainty score that made it a query), records answers with the
validation of ``loracle al label`` (:func:`loracle.active.parse_label`; each answer its own transaction), and undoes
the last answer of a round that is not trained yet. Everything goes through :class:`loracle.active.RunState`; a
fresh connection is opened for every call, so the session can be used from any thread of a web server.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loracle.errors import LoracleError

if TYPE_CHECKING:
    from loracle.active import RunState
    from loracle.data import Example

#: files the loop writes into the run folder when a run ends (``loracle.active.report``)
REPORT_FILE = "report.json"
CURVE_FILE = "learning_curve.png"


class NotAQuery(LoracleError):
    """The pool item asked for is not a query of this run (or not in the pool at all)."""


class AlreadyAnswered(LoracleError):
    """The item has a label already (answered in another tab, another process, or before)."""


class UndoRefused(LoracleError):
    """Nothing to undo, or the round of the last answer is trained already."""


@dataclass(frozen=True)
class Item:
    """One query as the page shows it.

    Args:
        idx: pool index (the run's key for the item).
        id: the item's id in the data.
        text: the text (multiple choice: the question).
        choices: the choices of a multiple-choice item, else None.
        round: the round that asked for it (round 0: the initial set).
        rank: its place in that round's queries (0 = asked first).
        score: the strategy's score that made it a query (larger = more uncertain), None where none was stored.
        label: its recorded label, None while pending.
    """

    idx: int
    id: str
    text: str
    choices: tuple[str, ...] | None
    round: int
    rank: int
    score: float | None
    label: int | None = None


@dataclass(frozen=True)
class Progress:
    """Where labelling stands.

    Args:
        round: the round being labelled: that of the first pending query, else the last round with queries
            (None before any query).
        answered: labels given to that round's queries.
        total: that round's queries.
        pending: pending pool indices of that round, in query order.
        trained: whether that round is trained (its labels are final).
        finished: whether the run has ended (every round trained and the report written).
        query_strategy: the strategy that chose that round's queries (``auto`` records the one it delegated to,
            e.g. ``density_margin``); None for the initial set and for runs made before 0.3.
    """

    round: int | None
    answered: int
    total: int
    pending: list[int]
    trained: bool
    finished: bool
    query_strategy: str | None = None

    @property
    def ready_to_train(self) -> bool:
        """Every query of the round is answered and the round is not trained: the next step is a round."""
        return self.round is not None and not self.pending and not self.finished

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "answered": self.answered, "total": self.total, "pending": len(self.pending),
                "trained": self.trained, "finished": self.finished, "ready_to_train": self.ready_to_train,
                "query_strategy": self.query_strategy}


def next_pending(pending: Sequence[int], after: int | None, order: Sequence[int] | None = None) -> int | None:
    """The pending item that follows ``after``, wrapping around; None when nothing else is pending.

    Args:
        pending: the pending pool indices, in query order.
        after: the item just shown (answered, skipped, or None).
        order: every query of the round, in query order; with it an item just answered (no longer pending) is
            followed by the next pending one after it, so a skipped item comes back only once the others are done.
            Without it, or when ``after`` is in neither list, the first pending item.
    """
    if not pending:
        return None
    sequence = list(order) if order is not None and after in order else list(pending)
    if after not in sequence:
        return pending[0]
    position = sequence.index(after)
    waiting = set(pending)
    return next((i for i in [*sequence[position + 1:], *sequence[:position]] if i in waiting), None)


class LabelSession:
    """The labelling side of a run folder.

    Args:
        run_dir: a run folder (``loracle al run ... --output DIR``).

    Raises:
        LoracleError: if ``run_dir`` holds no readable run.
    """

    def __init__(self, run_dir: str | Path) -> None:
        from loracle.active import RunState

        self.run_dir = Path(run_dir)
        state = RunState.open(self.run_dir)  # checks the file once; later calls open plain connections
        try:
            if state.is_generation():
                raise LoracleError(f"{self.run_dir} is a generation run (free-text answers); the browser app labels "
                                   f"classification and multiple-choice runs: use `loracle al label {self.run_dir}` "
                                   "(or --export/--import CSV)")
            self.config: dict[str, Any] = state.config
            self.label_names: list[str] | None = state.label_names
            self.pool_size = state.pool_size()
        finally:
            state.close()
        self._pool: list[Example] | None = None
        self._pool_lock = threading.Lock()

    @property
    def oracle(self) -> str:
        return str(self.config.get("oracle", "simulated"))

    @contextlib.contextmanager
    def state(self) -> Iterator[RunState]:
        """A connection of this thread to the run's state, closed on leaving."""
        from loracle.active import RunState

        state = RunState(self.run_dir)
        try:
            yield state
        finally:
            state.close()

    def pool(self, state: RunState) -> list[Example]:
        """The pool (never changes after a run starts: read once)."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = state.pool_examples()
            return self._pool

    # -- reading -------------------------------------------------------------------------------------------------
    def progress(self, state: RunState) -> Progress:
        pending = state.pending_queries()
        rounds = state.query_rounds()
        if pending:
            current = state.query_round_of(pending[0])
        elif rounds:
            current = rounds[-1]
        else:
            current = None
        if current is None:
            return Progress(None, 0, 0, [], False, False)
        queries = state.queries(current)
        mine = state.pending_queries(current)
        trained = current in state.completed_rounds()
        finished = not pending and trained and (self.run_dir / REPORT_FILE).is_file()
        return Progress(current, len(queries) - len(mine), len(queries), mine, trained, finished,
                        state.get_meta(f"query_strategy/{current}"))

    def item(self, state: RunState, idx: int) -> Item:
        """The query ``idx`` with its round, rank, score and label (if answered).

        Raises:
            NotAQuery: if ``idx`` is not a query of this run.
        """
        round_index = state.query_round_of(idx) if 0 <= idx < self.pool_size else None
        if round_index is None:
            raise NotAQuery(f"pool item {idx} is not a query of this run")
        example = self.pool(state)[idx]
        rank = state.queries(round_index).index(idx)
        score = state.query_scores(round_index).get(idx)
        label = state.labels(round_index).get(idx)
        return Item(idx, example.id, example.text, example.choices, round_index, rank, score, label)

    def options(self, item: Item) -> list[str]:
        """The answers offered for ``item``: the class names, or a multiple-choice item's choices."""
        if item.choices:
            return list(item.choices)
        return list(self.label_names or [])

    def label_text(self, item: Item, label: int | None) -> str | None:
        options = self.options(item)
        if label is None:
            return None
        return options[label] if 0 <= label < len(options) else str(label)

    # -- writing -------------------------------------------------------------------------------------------------
    def record(self, state: RunState, idx: int, value: str) -> int:
        """Record the answer ``value`` (a class name or index; for multiple choice a choice index) for query ``idx``,
        in its own transaction, with the validation of ``loracle al label``.

        Returns:
            The label (class or choice index) recorded.

        Raises:
            NotAQuery: ``idx`` is not a query of this run.
            LoracleError: an unknown label (the message lists the valid ones).
            AlreadyAnswered: the item has a label already (a second tab, or another process, was first).
        """
        from loracle.active import parse_label

        item = self.item(state, idx)
        names = self.label_names
        label = parse_label(str(value), names, len(item.choices) if item.choices else None)
        try:
            with state.transaction() as db:
                state.add_labels([(idx, label)], item.round, "human", db)
        except ValueError as err:  # the labels table's primary key: someone answered first
            raise AlreadyAnswered(f"item {item.id!r} is answered already; nothing was changed") from err
        return label

    def undo(self, state: RunState) -> Item:
        """Remove the last answer of the round being labelled, if that round is not trained yet.

        Returns:
            The item whose answer was removed (pending again).

        Raises:
            UndoRefused: when the round has no answer yet, or is trained already.
        """
        current = self.progress(state).round
        last = state.last_label(current) if current is not None else None
        if last is None:
            raise UndoRefused("nothing to undo: no answer was given in the round being labelled"
                              + (f" (round {current})" if current is not None else ""))
        try:
            state.remove_label(last[0])
        except ValueError as err:
            raise UndoRefused(str(err)) from err
        return self.item(state, last[0])

    # -- the learning curve so far -------------------------------------------------------------------------------
    def curve(self, state: RunState) -> list[dict[str, Any]]:
        """One row per trained round: ``round``, ``n_labels``, ``accuracy``, ``macro_f1``, ``ece`` (None if absent)."""
        return [{"round": r["round"], "n_labels": r["n_labels"],
                 **{key: r["metrics"].get(key) for key in ("accuracy", "macro_f1", "ece")}}
                for r in state.rounds()]

    def curve_file(self) -> Path | None:
        """The run's ``learning_curve.png`` (written when a run ends), if present."""
        path = self.run_dir / CURVE_FILE
        return path if path.is_file() else None
