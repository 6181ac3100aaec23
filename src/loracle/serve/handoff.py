"""Answers from an annotation tool back into a run: the one validation path of the Label Studio and Argilla imports.

Each tool's reader turns its export into :class:`TaskAnswer` objects (item, text, chosen label, or why it cannot be
read); :func:`record_answers` then matches each to a query of the run by ``loracle_id`` (``loracle_idx``, when also
given, must agree, and so must the text), so answers may come back in any order. An answer that names an unknown
item, gives an unknown label, repeats an item or contradicts a recorded label is reported by its position in the file
and skipped; the others are recorded one by one, each its own transaction, with the checks of ``loracle al label``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loracle.errors import LoracleError

if TYPE_CHECKING:
    from loracle.serve.session import Item, LabelSession


@dataclass(frozen=True)
class TaskAnswer:
    """What one task (Label Studio) or record (Argilla) of an annotation tool's export says.

    Args:
        position: its index in the exported list.
        where: how messages name it (``tasks[3] (Label Studio id 17)``, ``records[3] (id 'r3')``).
        loracle_id, loracle_idx, text: how the task names its item (None where absent).
        choice: the annotated choice, None when it has no (submitted) answer.
        problem: why it cannot be read, else None.
        by_index: ``choice`` is a multiple-choice item's choice index (``"0"``, ``"1"``...), never a choice's text.
    """

    position: int
    where: str
    loracle_id: str | None = None
    loracle_idx: int | None = None
    text: str | None = None
    choice: str | None = None
    problem: str | None = None
    by_index: bool = False


@dataclass
class ImportReport:
    """What :func:`record_answers` did.

    Args:
        recorded: labels written.
        already_recorded: answers whose item already had the same label (a re-import).
        unannotated: tasks or records without an answer, left pending.
        problems: ``where: what`` for each one skipped.
    """

    recorded: int = 0
    already_recorded: int = 0
    unannotated: int = 0
    problems: list[str] = field(default_factory=list)


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def _label_of(choice: str, item: Item, label_names: Sequence[str] | None, by_index: bool = False) -> int:
    """The label index of an annotated choice: a class name (or index), or the text (``by_index``: the index) of a
    multiple-choice option."""
    from loracle.active import parse_label

    if item.choices and by_index:
        return parse_label(choice, None, len(item.choices))
    if item.choices:
        if choice in item.choices:  # the text first: a choice may itself be a number ("4")
            return item.choices.index(choice)
        lowered = [c.lower() for c in item.choices]
        if choice.lower() in lowered:
            return lowered.index(choice.lower())
        return parse_label(choice, None, len(item.choices))
    return parse_label(choice, list(label_names) if label_names else None)


def load_export(path: str | Path, what: str) -> Any:
    """The parsed JSON of an annotation tool's export (``what`` names the export in messages).

    Raises:
        LoracleError: if the file is not UTF-8 JSON.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise LoracleError(f"{path}: not JSON ({err}); give the file of {what}") from None
    except UnicodeDecodeError:
        raise LoracleError(f"{path}: not UTF-8 text; give the file of {what}") from None


def record_answers(session: LabelSession, answers: Iterable[TaskAnswer], tool: str) -> ImportReport:
    """Record ``answers`` in the run, each in its own transaction; problems are reported, never raised.

    Args:
        session: the run.
        answers: what the export says, from the tool's reader.
        tool: the tool's flag suffix (``label-studio``, ``argilla``), for messages.
    """
    from loracle.serve.session import AlreadyAnswered, NotAQuery

    report = ImportReport()
    seen: dict[int, str] = {}
    with session.state() as state:
        pool = session.pool(state)
        index_of = {e.id: i for i, e in enumerate(pool)}
        for answer in answers:
            def skip(problem: str, answer: TaskAnswer = answer) -> None:
                report.problems.append(f"{answer.where}: {problem}")

            if answer.problem is not None:
                skip(answer.problem)
                continue
            if answer.choice is None:
                report.unannotated += 1
                continue
            if answer.loracle_id is not None:
                idx = index_of.get(answer.loracle_id)
                if idx is None:
                    skip(f"unknown item: loracle_id {answer.loracle_id!r} is not in this run's pool")
                    continue
                if answer.loracle_idx is not None and answer.loracle_idx != idx:
                    skip(f"loracle_idx {answer.loracle_idx} and loracle_id {answer.loracle_id!r} disagree (the id "
                         f"is item {idx}); was it edited?")
                    continue
            elif answer.loracle_idx is not None and 0 <= answer.loracle_idx < len(pool):
                idx = answer.loracle_idx
            else:
                skip("unknown item: it has no loracle_id and no loracle_idx of this run's pool "
                     f"(they must come from --export-{tool})")
                continue
            if answer.text is not None and not _same_text(answer.text, pool[idx].text):
                skip(f"the text does not match item {pool[idx].id!r}; it may belong to another run")
                continue
            if idx in seen:
                skip(f"duplicate: item {pool[idx].id!r} was answered already by {seen[idx]}; skipped")
                continue
            seen[idx] = answer.where
            try:
                item = session.item(state, idx)
                label = _label_of(answer.choice, item, session.label_names, answer.by_index)
            except NotAQuery:
                skip(f"item {pool[idx].id!r} is not a query of this run")
                continue
            except LoracleError as err:
                skip(str(err))
                continue
            if item.label is not None:
                if item.label == label:
                    report.already_recorded += 1
                else:
                    skip(f"item {item.id!r} already has the label {session.label_text(item, item.label)!r}, the "
                         f"export says {answer.choice!r}; a recorded label is not changed")
                continue
            try:
                session.record(state, idx, str(label))
            except AlreadyAnswered as err:
                skip(str(err))
                continue
            report.recorded += 1
    return report
