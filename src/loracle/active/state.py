"""Persistent, resumable state of an active-learning run: one SQLite file, ``<run_dir>/state.sqlite``.

What is stored: the run config, the pool (text only: the pool a strategy sees never carries labels or answers), the
simulated oracle's hidden gold labels and, for generation, gold answers (separate tables), the test set, every label with its round and source, every query,
per-round metrics and the adapter checkpoint of each round, and named signals (e.g. the base model's predictions).

Every step is one transaction (``with state.transaction():``), so a run killed at any moment (``kill -9``) leaves
the database at the end of its last completed step. Checkpoint folders are written to a temporary name and renamed
into place before the row that points at them commits; a folder without a row is a leftover and is replaced.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from loracle.data.examples import Example
from loracle.errors import LoracleError

STATE_FILE = "state.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pool (
    idx INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, text TEXT NOT NULL, choices TEXT, answer TEXT);
CREATE TABLE IF NOT EXISTS gold (idx INTEGER PRIMARY KEY REFERENCES pool(idx), label INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS testset (
    idx INTEGER PRIMARY KEY, id TEXT NOT NULL, text TEXT NOT NULL, choices TEXT, answer TEXT, label INTEGER);
CREATE TABLE IF NOT EXISTS labels (
    idx INTEGER PRIMARY KEY REFERENCES pool(idx), label INTEGER NOT NULL, round INTEGER NOT NULL,
    source TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS queries (
    round INTEGER NOT NULL, rank INTEGER NOT NULL, idx INTEGER NOT NULL REFERENCES pool(idx), score REAL,
    created REAL NOT NULL, PRIMARY KEY (round, rank), UNIQUE (round, idx));
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, n_labels INTEGER NOT NULL, metrics TEXT NOT NULL, checkpoint TEXT,
    train_seconds REAL, score_seconds REAL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS signals (name TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS gold_answers (idx INTEGER PRIMARY KEY REFERENCES pool(idx), answer TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS label_answers (idx INTEGER PRIMARY KEY REFERENCES labels(idx), answer TEXT NOT NULL);
"""

#: The ``labels.label`` of a free-text answer (generation); the text is in ``label_answers``.
TEXT_LABEL = -1


def _example_row(e: Example) -> tuple[str, str, str | None, str | None]:
    return e.id, e.text, json.dumps(list(e.choices)) if e.choices is not None else None, e.answer


def _row_example(row: Sequence[Any], label: int | None = None) -> Example:
    _, id_, text, choices, answer = row[:5]
    return Example(id=id_, text=text, label=label, choices=tuple(json.loads(choices)) if choices else None,
                   answer=answer)


class RunState:
    """A handle on ``<run_dir>/state.sqlite``.

    Args:
        run_dir: the run folder (created if missing).

    Use :meth:`create` for a new run and :meth:`open` for an existing one.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise LoracleError(f"{self.run_dir} is a file, not a run folder; give a folder path (new or a run's)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / STATE_FILE
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so one step is exactly one transaction.
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as err:
            self.db.close()
            raise self._unreadable(err) from err

    def _unreadable(self, err: Exception) -> LoracleError:
        return LoracleError(f"{self.path} is not a readable run state ({err}): the file is damaged or truncated "
                            "(an interrupted copy, a full disk?). Restore it from a backup, or start the run again "
                            "in a new folder")

    # -- lifecycle ---------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, run_dir: str | Path) -> "RunState":
        """Open an existing run.

        Raises:
            LoracleError: if ``run_dir`` holds no run state, or one that is damaged or truncated (checked with
                SQLite's ``quick_check``, so a bad page is found here rather than in the middle of a round).
        """
        if not (Path(run_dir) / STATE_FILE).is_file():
            raise LoracleError(f"{run_dir} is not an active-learning run folder (no {STATE_FILE}); start one with "
                               "`loracle al run ... --output DIR`")
        state = cls(run_dir)
        try:
            problems = [row[0] for row in state.db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems[:3]))
            config = state.get_meta("config")
        except (sqlite3.DatabaseError, ValueError) as err:  # ValueError: a meta value that is not JSON
            state.close()
            raise state._unreadable(err) from err
        if config is None:
            state.close()
            raise LoracleError(f"{run_dir}/{STATE_FILE} has no run config: the run was killed before it was set up; "
                               "delete the folder and start again")
        return state

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic step: everything inside commits together or not at all."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- meta / setup ------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any, db: sqlite3.Connection | None = None) -> None:
        (db or self.db).execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def initialise(self, config: dict[str, Any], pool: Sequence[Example], test: Sequence[Example],
                   label_names: list[str] | None, gold: bool = True) -> None:
        """Store config, pool (labels split off into ``gold`` when ``gold``) and test set, in one transaction."""
        with self.transaction() as db:
            self.set_meta("schema_version", SCHEMA_VERSION, db)
            self.set_meta("config", config, db)
            self.set_meta("label_names", label_names, db)
            self.set_meta("created", time.time(), db)
            # A pool item's reference answer (generation) is gold: it never enters the pool table.
            db.executemany("INSERT INTO pool VALUES (?, ?, ?, ?, ?)",
                           [(i, *_example_row(e)[:3], None) for i, e in enumerate(pool)])
            if gold:
                db.executemany("INSERT INTO gold VALUES (?, ?)",
                               [(i, e.label) for i, e in enumerate(pool) if e.label is not None])
                db.executemany("INSERT INTO gold_answers VALUES (?, ?)",
                               [(i, e.answer) for i, e in enumerate(pool) if e.answer is not None])
            db.executemany("INSERT INTO testset VALUES (?, ?, ?, ?, ?, ?)",
                           [(i, *_example_row(e), e.label) for i, e in enumerate(test)])

    @property
    def config(self) -> dict[str, Any]:
        return self.get_meta("config")

    @property
    def label_names(self) -> list[str] | None:
        return self.get_meta("label_names")

    # -- pool and labels ---------------------------------------------------------------------------------------
    def pool_size(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM pool").fetchone()[0]

    def pool_examples(self, indices: Sequence[int] | None = None) -> list[Example]:
        """Pool items **without labels** (what strategies and scoring see), in ``indices`` order (default: all)."""
        rows = self.db.execute("SELECT idx, id, text, choices, answer FROM pool ORDER BY idx").fetchall()
        examples = [_row_example(r) for r in rows]
        return examples if indices is None else [examples[i] for i in indices]

    def gold_label(self, idx: int) -> int | str | None:
        """The simulated oracle's answer for pool item ``idx``: a class index, a reference answer text
        (generation), or None."""
        row = self.db.execute("SELECT label FROM gold WHERE idx = ?", (idx,)).fetchone()
        if row is None:
            row = self.db.execute("SELECT answer FROM gold_answers WHERE idx = ?", (idx,)).fetchone()
        return row[0] if row else None

    def test_examples(self) -> list[Example]:
        rows = self.db.execute("SELECT idx, id, text, choices, answer, label FROM testset ORDER BY idx").fetchall()
        return [_row_example(r, r[5]) for r in rows]

    def labels(self, max_round: int | None = None) -> dict[int, int | str]:
        """``{pool index: label}`` of every label (up to ``max_round`` inclusive): class indices, or answer
        texts for generation."""
        sql, args = ("SELECT l.idx, COALESCE(a.answer, l.label) FROM labels l "
                     "LEFT JOIN label_answers a ON a.idx = l.idx"), ()
        if max_round is not None:
            sql, args = sql + " WHERE l.round <= ?", (max_round,)
        return dict(self.db.execute(sql + " ORDER BY l.idx", args).fetchall())

    def label_rows(self) -> list[tuple[int, int, int, str]]:
        """``(idx, label, round, source)`` of every label, by round then pool index."""
        return self.db.execute("SELECT idx, label, round, source FROM labels ORDER BY round, idx").fetchall()

    def labelled_examples(self, max_round: int | None = None) -> list[Example]:
        labels = self.labels(max_round)
        examples = self.pool_examples(sorted(labels))
        return [Example(e.id, e.text, None, e.choices, labels[i]) if isinstance(labels[i], str)
                else Example(e.id, e.text, labels[i], e.choices, e.answer) for i, e in zip(sorted(labels), examples)]

    def add_labels(self, items: Sequence[tuple[int, int | str]], round_index: int, source: str,
                   db: sqlite3.Connection | None = None) -> None:
        """Record labels ``(pool index, label)``, a label being a class index or an answer text (generation); an
        index already labelled is an error (never a silent duplicate).

        Raises:
            ValueError: if an index is already labelled.
        """
        now = time.time()
        try:
            (db or self.db).executemany(
                "INSERT INTO labels VALUES (?, ?, ?, ?, ?)",
                [(int(i), TEXT_LABEL if isinstance(y, str) else int(y), round_index, source, now) for i, y in items])
            (db or self.db).executemany("INSERT INTO label_answers VALUES (?, ?)",
                                        [(int(i), y) for i, y in items if isinstance(y, str)])
        except sqlite3.IntegrityError as err:
            raise ValueError(f"label for an already-labelled pool item ({err})") from err

    def last_label(self, round_index: int) -> tuple[int, int, str] | None:
        """``(pool index, label, source)`` of the label recorded last for round ``round_index``, or None."""
        return self.db.execute("SELECT idx, label, source FROM labels WHERE round = ? ORDER BY created DESC "
                               "LIMIT 1", (round_index,)).fetchone()

    def remove_label(self, idx: int) -> int | str:
        """Delete the label of pool item ``idx`` (an undo), in one transaction; returns the removed label.

        Raises:
            ValueError: if the item has no label, or its round is trained already (a trained round's labels are
                final: the checkpoint and metrics were made from them).
        """
        with self.transaction() as db:
            row = db.execute("SELECT label, round FROM labels WHERE idx = ?", (int(idx),)).fetchone()
            if row is None:
                raise ValueError(f"pool item {idx} has no label to remove")
            if db.execute("SELECT 1 FROM rounds WHERE round = ?", (row[1],)).fetchone():
                raise ValueError(f"pool item {idx} was labelled for round {row[1]}, which is trained already; "
                                 "the labels of a trained round are final")
            answer = db.execute("SELECT answer FROM label_answers WHERE idx = ?", (int(idx),)).fetchone()
            db.execute("DELETE FROM label_answers WHERE idx = ?", (int(idx),))
            db.execute("DELETE FROM labels WHERE idx = ?", (int(idx),))
        return answer[0] if answer else row[0]

    # -- queries -----------------------------------------------------------------------------------------------
    def add_queries(self, round_index: int, indices: Sequence[int], scores: Sequence[float | None] | None,
                    db: sqlite3.Connection | None = None) -> None:
        now = time.time()
        scores = scores if scores is not None else [None] * len(indices)
        (db or self.db).executemany(
            "INSERT INTO queries VALUES (?, ?, ?, ?, ?)",
            [(round_index, r, int(i), None if s is None else float(s), now)
             for r, (i, s) in enumerate(zip(indices, scores))])

    def query_scores(self, round_index: int) -> dict[int, float | None]:
        """``{pool index: the score that made it a query}`` of one round (None where the strategy gave none)."""
        return dict(self.db.execute("SELECT idx, score FROM queries WHERE round = ?", (round_index,)).fetchall())

    def queries(self, round_index: int) -> list[int]:
        rows = self.db.execute("SELECT idx FROM queries WHERE round = ? ORDER BY rank", (round_index,)).fetchall()
        return [r[0] for r in rows]

    def query_rounds(self) -> list[int]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT round FROM queries ORDER BY round")]

    def pending_queries(self, round_index: int | None = None) -> list[int]:
        """Queried pool indices without a label yet (of one round, or of every round), in query order."""
        sql = "SELECT q.idx FROM queries q LEFT JOIN labels l ON q.idx = l.idx WHERE l.idx IS NULL"
        args: tuple = ()
        if round_index is not None:
            sql, args = sql + " AND q.round = ?", (round_index,)
        return [r[0] for r in self.db.execute(sql + " ORDER BY q.round, q.rank", args)]

    def query_round_of(self, idx: int) -> int | None:
        row = self.db.execute("SELECT round FROM queries WHERE idx = ?", (idx,)).fetchone()
        return row[0] if row else None

    # -- rounds ------------------------------------------------------------------------------------------------
    def add_round(self, round_index: int, n_labels: int, metrics: dict[str, Any], checkpoint: str | None,
                  train_seconds: float, score_seconds: float | None = None) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (round_index, n_labels, json.dumps(metrics), checkpoint, train_seconds, score_seconds,
                        time.time()))

    def rounds(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT round, n_labels, metrics, checkpoint, train_seconds, score_seconds "
                               "FROM rounds ORDER BY round").fetchall()
        return [{"round": r, "n_labels": n, "metrics": json.loads(m), "checkpoint": c, "train_seconds": t,
                 "score_seconds": s} for r, n, m, c, t, s in rows]

    def completed_rounds(self) -> set[int]:
        return {r[0] for r in self.db.execute("SELECT round FROM rounds")}

    # -- signals -----------------------------------------------------------------------------------------------
    def put_signal(self, name: str, tensor: torch.Tensor) -> None:
        buffer = io.BytesIO()
        torch.save(tensor.detach().cpu(), buffer)
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO signals VALUES (?, ?)", (name, buffer.getvalue()))

    def is_generation(self) -> bool:
        """Whether the run's labels are free-text answers (``task_kind == "generation"``)."""
        return (self.config or {}).get("task_kind") == "generation"

    def model_answers(self, round_index: int) -> dict[int, str]:
        """``{pool index: the model's greedy answer}`` for the queries of ``round_index`` (generation runs; what
        a person correcting the answer is shown)."""
        return {int(k): v for k, v in (self.get_meta(f"model_answers/{round_index}") or {}).items()}

    def put_signals(self, tensors: dict[str, torch.Tensor]) -> None:
        """Store several named tensors in one transaction (all or none survive a kill)."""
        blobs = []
        for name, tensor in tensors.items():
            buffer = io.BytesIO()
            torch.save(tensor.detach().cpu(), buffer)
            blobs.append((name, buffer.getvalue()))
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO signals VALUES (?, ?)", blobs)

    def get_signal(self, name: str) -> torch.Tensor | None:
        row = self.db.execute("SELECT data FROM signals WHERE name = ?", (name,)).fetchone()
        return torch.load(io.BytesIO(row[0]), weights_only=True) if row else None
