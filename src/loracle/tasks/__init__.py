"""Tasks: how examples become tensors, losses and class scores (classification, multiple choice, generation)."""

from __future__ import annotations

from typing import Any

from loracle.tasks.base import Batch, Task, model_inputs
from loracle.tasks.classification import ClassificationTask
from loracle.tasks.generation import GenerationOutput, GenerationTask, exact_match, extract_answer
from loracle.tasks.multiple_choice import MultipleChoiceTask
from loracle.tasks.tokens import split_continuations

TASKS: dict[str, type[Task]] = {
    "classification": ClassificationTask,
    "multiple_choice": MultipleChoiceTask,
    "generation": GenerationTask,
}


def build_task(kind: str, tokenizer: Any, **options: Any) -> Task:
    """Construct the task of this kind.

    Args:
        kind: ``"classification"``, ``"multiple_choice"`` or ``"generation"``.
        tokenizer: the model's tokenizer.
        **options: the task class's constructor options (``max_length``, ``label_names``, ``prompt_template``...).

    Raises:
        ValueError: an unknown kind (the valid ones are listed) or options the task does not take.
    """
    if kind not in TASKS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {sorted(TASKS)}")
    cls = TASKS[kind]
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "tokenizer"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"{cls.__name__} does not take options {unknown}; valid options: {sorted(accepted)}")
    return cls(tokenizer, **options)


__all__ = [
    "TASKS",
    "Batch",
    "ClassificationTask",
    "GenerationOutput",
    "GenerationTask",
    "MultipleChoiceTask",
    "Task",
    "build_task",
    "exact_match",
    "extract_answer",
    "model_inputs",
    "split_continuations",
]
