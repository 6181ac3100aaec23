"""Oracles: who answers the queries.

- :class:`SimulatedOracle` reads the hidden gold labels stored with the run (never shown to strategies).
- The human oracle is a set of functions: :func:`label_interactive` asks in the terminal, :func:`export_queries`
  writes pending queries to CSV and :func:`import_labels` reads a labelled CSV back. Each answer is its own
  transaction, so answers given before an error or an interruption are kept.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loracle.active.state import RunState
from loracle.errors import LoracleError


class SimulatedOracle:
    """Answers from the gold labels of the data file (kept in the run's ``gold`` table)."""

    source = "simulated"

    def answer(self, state: RunState, indices: Sequence[int]) -> list[tuple[int, int | str]]:
        """``(pool index, label)`` for each index: a class index, or the reference answer text (generation).

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
        LoracleError: for an unknown label (the message lists the valid ones).
    """
    text = value.strip()
    if label_names:
        lowered = [n.lower() for n in label_names]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        if text.isdigit() and int(text) < len(label_names):
            return int(text)
        valid = ", ".join(f"{i}={n}" for i, n in enumerate(label_names))
        raise LoracleError(f"unknown label {value!r}; valid labels: {valid}")
    if text.isdigit() and (n_classes is None or int(text) < n_classes):
        return int(text)
    raise LoracleError(f"unknown label {value!r}; give a class index in [0, {n_classes or '?'})")


def parse_answer(value: str) -> str:
    """A free-text answer (generation) as given, stripped.

    Raises:
        LoracleError: for an empty answer.
    """
    text = value.strip()
    if not text:
        raise LoracleError("the answer is empty; type the right answer (or q to stop)")
    return text


def _record(state: RunState, idx: int, label: int | str) -> None:
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
    if state.is_generation():
        return _answer_interactive(state, pending, input_fn, print_fn)
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


def _answer_interactive(state: RunState, pending: list[int], input_fn: Callable[[str], str],
                        print_fn: Callable[[str], None]) -> int:
    """Generation: show each question with the model's current answer and take the right answer as text
    (``=`` accepts the model's answer as it is)."""
    print_fn(f"{len(pending)} questions to answer (type the right answer; = keeps the model's answer; q to stop)")
    done = 0
    for number, (idx, example) in enumerate(zip(pending, state.pool_examples(pending)), 1):
        model_answer = state.model_answers(state.query_round_of(idx) or 0).get(idx)
        print_fn(f"\n[{number}/{len(pending)}] {example.text}")
        if model_answer is not None:
            print_fn(f"    model: {model_answer}")
        while True:
            try:
                answer = input_fn("answer> ")
            except EOFError:
                return done
            if answer.strip().lower() in ("q", "quit"):
                return done
            if answer.strip() == "=" and model_answer:
                answer = model_answer
            try:
                text = parse_answer(answer)
            except LoracleError as err:
                print_fn(str(err))
                continue
            _record(state, idx, text)
            done += 1
            break
    return done


def export_queries(state: RunState, path: str | Path) -> int:
    """Write pending queries to CSV (``idx,id,text,choices,label`` with ``label`` empty). Returns the row count."""
    pending = state.pending_queries()
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if state.is_generation():  # the label column takes the right answer; the model's is shown beside it
            writer.writerow(["idx", "id", "text", "model_answer", "label"])
            for idx, e in zip(pending, state.pool_examples(pending)):
                model_answer = state.model_answers(state.query_round_of(idx) or 0).get(idx, "")
                writer.writerow([idx, e.id, e.text, model_answer, ""])
            return len(pending)
        writer.writerow(["idx", "id", "text", "choices", "label"])
        for idx, e in zip(pending, state.pool_examples(pending)):
            writer.writerow([idx, e.id, e.text, " | ".join(e.choices) if e.choices else "", ""])
    return len(pending)


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_labels` did with the rows of a CSV.

    Args:
        recorded: new labels written.
        already_recorded: rows whose answer was already stored, identically (a re-import after a partial one).
        blank: rows with an empty ``label`` cell, left pending.
    """

    recorded: int
    already_recorded: int
    blank: int


def _same_text(a: str, b: str) -> bool:
    # Spreadsheets may rewrite line ends and trailing spaces; any other difference means another item.
    return " ".join(a.split()) == " ".join(b.split())


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def import_labels(state: RunState, path: str | Path) -> ImportResult:
    """Read a CSV written by :func:`export_queries` with the ``label`` column filled in (blank rows are skipped).

    Each row names its item by ``id`` (``idx`` alone is accepted when there is no ``id`` column). When both are
    given they must agree, and a ``text`` cell must be the item's text (up to whitespace), so rows that were
    re-sorted or edited in a spreadsheet cannot send a label to the wrong item. A row whose item already holds the
    same label (imported before) is skipped and counted, so a corrected CSV can be imported again after an error.
    Rows are recorded one by one, so on an error the rows before it are kept.

    Returns:
        The counts of recorded, already recorded and blank rows.

    Raises:
        LoracleError: a missing column, an unknown id or label, an ``idx``/``id``/``text`` that disagree, an item
            that is not a pending query, a label that contradicts the recorded one, or an item given twice; the
            message names the file and the line and says how many labels were recorded before it.
    """
    names = state.label_names
    generation = state.is_generation()
    pool = state.pool_examples()
    index_of = {e.id: i for i, e in enumerate(pool)}
    pending = set(state.pending_queries())
    recorded = state.labels()
    done = already = blank = 0
    first_line: dict[int, int] = {}

    def describe(label: int | str) -> str:
        if isinstance(label, str):
            return repr(label)
        return repr(names[label]) if names and 0 <= label < len(names) else str(label)

    def item(row: dict[str, str | None], columns: set[str]) -> int:
        id_cell = (row.get("id") or "").strip() if "id" in columns else ""
        idx_cell = (row.get("idx") or "").strip() if "idx" in columns else ""
        idx = None
        if idx_cell:
            try:
                idx = int(idx_cell)
            except ValueError:
                raise LoracleError(f"idx {idx_cell!r} is not an integer") from None
            if not 0 <= idx < len(pool):
                raise LoracleError(f"idx {idx} is outside the run's pool (0..{len(pool) - 1})")
        if id_cell:
            by_id = index_of.get(id_cell)
            if by_id is None:
                raise LoracleError(f"id {id_cell!r} is not an item of this run's pool")
            if idx is not None and idx != by_id:
                raise LoracleError(
                    f"idx {idx} and id {id_cell!r} disagree: item {id_cell!r} has idx {by_id}, idx {idx} is item "
                    f"{pool[idx].id!r}; were rows re-sorted or edited? Fix the idx cell or remove the idx column "
                    "(the id decides)")
            idx = by_id
        if idx is None:
            raise LoracleError("the row has no id (and no idx); keep the id column written by --export")
        text = row.get("text") if "text" in columns else None
        if text and not _same_text(text, pool[idx].text):
            raise LoracleError(f"the text does not match item {pool[idx].id!r}: the CSV has {_short(text)!r}, the "
                               f"run has {_short(pool[idx].text)!r}; the row may belong to another item")
        return idx

    try:
        handle = open(path, newline="", encoding="utf-8-sig")  # -sig: spreadsheets often add a byte-order mark
    except IsADirectoryError:
        raise LoracleError(f"{path} is a folder; give the CSV file written by --export") from None
    with handle:
        reader = csv.DictReader(handle)
        try:
            columns = set(reader.fieldnames or [])
            if "label" not in columns or not columns & {"id", "idx"}:
                raise LoracleError(f"{path}: needs the columns 'label' and 'id' (or 'idx'), found "
                                   f"{reader.fieldnames}")
            for row in reader:
                line = reader.line_num
                if not (row.get("label") or "").strip():
                    blank += 1
                    continue
                try:
                    idx = item(row, columns)
                    if idx in first_line:
                        raise LoracleError(f"repeats item {pool[idx].id!r} of line {first_line[idx]}; give each "
                                           "item one row")
                    first_line[idx] = line
                    choices = pool[idx].choices
                    label = (parse_answer(row["label"] or "") if generation
                             else parse_label(row["label"] or "", names, len(choices) if choices else None))
                    if idx in recorded:
                        if recorded[idx] != label:
                            raise LoracleError(
                                f"item {pool[idx].id!r} already has the label {describe(recorded[idx])}, this row "
                                f"says {describe(label)}; a recorded label is not changed: make the row agree or "
                                "delete it")
                        already += 1
                        continue
                    if idx not in pending:
                        raise LoracleError(f"item {pool[idx].id!r} is not a pending query (it was never queried)")
                except ValueError as err:
                    skipped = f", {already} already recorded" if already else ""
                    raise LoracleError(f"{path}: line {line}: {err} ({done} label(s) before it were recorded"
                                       f"{skipped})") from err
                _record(state, idx, label)
                recorded[idx] = label
                pending.discard(idx)
                done += 1
        except UnicodeDecodeError as err:
            raise LoracleError(f"{path}: line {reader.line_num + 1}: not valid UTF-8; save the CSV as UTF-8 "
                               f"({done} label(s) before it were recorded)") from err
        except csv.Error as err:
            raise LoracleError(f"{path}: line {reader.reader.line_num}: malformed CSV ({err}) ({done} label(s) "
                               "before it were recorded)") from err
    return ImportResult(done, already, blank)
