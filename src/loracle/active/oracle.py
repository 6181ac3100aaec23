"""Oracles: who answers the queries.

- :class:`SimulatedOracle` reads the hidden gold labels stored with the run (never shown to strategies).
- The human oracle is a set of functions: :func:`label_interactive` asks in the terminal, :func:`export_queries`
  writes pending queries to CSV and :func:`import_labels` reads a labelled CSV back. Each answer is its own
  transaction, so answers given before an error or an interruption are kept.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

from loracle.active.state import RunState


class SimulatedOracle:
    """Answers from the gold labels of the data file (kept in the run's ``gold`` table)."""

    source = "simulated"

    def answer(self, state: RunState, indices: Sequence[int]) -> list[tuple[int, int]]:
        """``(pool index, label)`` for each index.

        Raises:
            ValueError: if an item has no gold label (an unlabelled pool needs ``--oracle human``).
        """
        out = []
        for i in indices:
            label = state.gold_label(i)
            if label is None:
                raise ValueError(f"pool item {i} has no label in the data; use the human oracle "
                                 "(`--oracle human`, then `loracle al label DIR`)")
            out.append((i, label))
        return out


def parse_label(value: str, label_names: list[str] | None, n_classes: int | None = None) -> int:
    """A label given as a class name (case-insensitive) or index.

    Raises:
        ValueError: for an unknown label (the message lists the valid ones).
    """
    text = value.strip()
    if label_names:
        lowered = [n.lower() for n in label_names]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        if text.isdigit() and int(text) < len(label_names):
            return int(text)
        valid = ", ".join(f"{i}={n}" for i, n in enumerate(label_names))
        raise ValueError(f"unknown label {value!r}; valid labels: {valid}")
    if text.isdigit() and (n_classes is None or int(text) < n_classes):
        return int(text)
    raise ValueError(f"unknown label {value!r}; give a class index in [0, {n_classes or '?'})")


def _record(state: RunState, idx: int, label: int) -> None:
    round_index = state.query_round_of(idx)
    with state.transaction() as db:
        state.add_labels([(idx, label)], round_index, "human", db)


def label_interactive(state: RunState, input_fn: Callable[[str], str] | None = None,
                      print_fn: Callable[[str], None] | None = None) -> int:
    """Ask for each pending query in the terminal; ``q`` (or end of input) stops, keeping the answers so far.

    Returns:
        Number of labels recorded.
    """
    input_fn = input_fn or input  # looked up at call time, so tests (and front ends) can replace it
    print_fn = print_fn or print
    pending = state.pending_queries()
    names = state.label_names
    if not pending:
        print_fn("no pending queries")
        return 0
    hint = ", ".join(f"{i}={n}" for i, n in enumerate(names)) if names else "a class index"
    print_fn(f"{len(pending)} queries to label ({hint}; q to stop)")
    examples = state.pool_examples(pending)
    done = 0
    for number, (idx, example) in enumerate(zip(pending, examples), 1):
        print_fn(f"\n[{number}/{len(pending)}] {example.text}")
        if example.choices:
            for j, choice in enumerate(example.choices):
                print_fn(f"    {j}: {choice}")
        while True:
            try:
                answer = input_fn("label> ")
            except EOFError:
                return done
            if answer.strip().lower() in ("q", "quit"):
                return done
            try:
                label = parse_label(answer, names, len(example.choices) if example.choices else None)
            except ValueError as err:
                print_fn(str(err))
                continue
            _record(state, idx, label)
            done += 1
            break
    return done


def export_queries(state: RunState, path: str | Path) -> int:
    """Write pending queries to CSV (``idx,id,text,choices,label`` with ``label`` empty). Returns the row count."""
    pending = state.pending_queries()
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["idx", "id", "text", "choices", "label"])
        for idx, e in zip(pending, state.pool_examples(pending)):
            writer.writerow([idx, e.id, e.text, " | ".join(e.choices) if e.choices else "", ""])
    return len(pending)


def import_labels(state: RunState, path: str | Path) -> int:
    """Read a CSV written by :func:`export_queries` with the ``label`` column filled in (blank rows are skipped).

    Rows are recorded one by one, so on an error the rows before it are kept.

    Returns:
        Number of labels recorded.

    Raises:
        ValueError: an unknown label, a row that is not a pending query, or a missing column (with the line).
    """
    pending = set(state.pending_queries())
    names = state.label_names
    done = 0
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"idx", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: needs columns 'idx' and 'label', found {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            if not (row.get("label") or "").strip():
                continue
            try:
                idx = int(row["idx"])
                if idx not in pending:
                    raise ValueError(f"pool item {idx} is not a pending query")
                choices = state.pool_examples([idx])[0].choices
                label = parse_label(row["label"], names, len(choices) if choices else None)
            except ValueError as err:
                raise ValueError(f"{path}, line {line}: {err} ({done} label(s) before it were recorded)") from err
            _record(state, idx, label)
            pending.discard(idx)
            done += 1
    return done
