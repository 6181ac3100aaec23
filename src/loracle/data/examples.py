"""The in-memory form of a dataset: one :class:`Example` per item and an :class:`ExampleSet` around them.

One record type serves all three task kinds:

- classification: ``text`` and ``label`` (an index into ``ExampleSet.label_names``);
- multiple choice: ``text`` is the question, ``choices`` the candidate answers, ``label`` the right choice's index;
- generation: ``text`` is the question (prompt), ``answer`` the reference answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

import torch


@dataclass(frozen=True)
class Example:
    """One item of a dataset.

    Args:
        id: a stable identifier (from the data's id field, else ``"<split>-<row>"``).
        text: the input text (classification) or the question (multiple choice, generation).
        label: class index or index of the correct choice; ``None`` when unlabelled.
        choices: the candidate answers of a multiple-choice item.
        answer: the reference answer of a generation item.
    """

    id: str
    text: str
    label: int | None = None
    choices: tuple[str, ...] | None = None
    answer: str | None = None

    @property
    def is_labelled(self) -> bool:
        """True when the example carries its target (``label`` or ``answer``)."""
        return self.label is not None or self.answer is not None


@dataclass
class ExampleSet(Sequence[Example]):
    """A list of examples plus what is needed to read their labels.

    Behaves as a read-only sequence: ``len(s)``, ``s[i]`` (an :class:`Example`), ``s[a:b]`` and ``s[[i, j]]``
    (new :class:`ExampleSet` objects sharing ``label_names`` and ``source``).

    Args:
        examples: the items, in file order.
        label_names: class names of a classification set, indexed by ``Example.label``; ``None`` otherwise.
        source: where the examples came from (file path, folder or hub name and split), for messages.
    """

    examples: list[Example]
    label_names: list[str] | None = None
    source: str = ""
    _ids: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    @overload
    def __getitem__(self, index: int) -> Example: ...

    @overload
    def __getitem__(self, index: slice | Sequence[int]) -> "ExampleSet": ...

    def __getitem__(self, index: int | slice | Sequence[int] | torch.Tensor) -> "Example | ExampleSet":
        if isinstance(index, slice):
            return self._with(self.examples[index])
        if isinstance(index, torch.Tensor):
            index = index.tolist()
        if isinstance(index, (list, tuple)):
            return self._with([self.examples[i] for i in index])
        return self.examples[index]

    def _with(self, examples: list[Example]) -> "ExampleSet":
        return ExampleSet(examples, None if self.label_names is None else list(self.label_names), self.source)

    @property
    def num_classes(self) -> int | None:
        """Number of classes (classification) or of choices of the first item (multiple choice); else None."""
        if self.label_names is not None:
            return len(self.label_names)
        if self.examples and self.examples[0].choices is not None:
            return len(self.examples[0].choices)
        return None

    def labels(self) -> torch.Tensor:
        """The labels as a ``[N]`` long tensor.

        Raises:
            ValueError: if some example has no label (the message gives the first such id).
        """
        missing = [e.id for e in self.examples if e.label is None]
        if missing:
            raise ValueError(f"{len(missing)} examples of {self.source or 'this set'} have no label (first: "
                             f"{missing[0]!r}); labels are needed here")
        return torch.tensor([e.label for e in self.examples], dtype=torch.long)

    def index_of(self, example_id: str) -> int:
        """Position of the example with this id.

        Raises:
            KeyError: for an unknown id.
        """
        if self._ids is None:
            self._ids = {e.id: i for i, e in enumerate(self.examples)}
        return self._ids[example_id]

    def sample(self, n: int, seed: int = 0) -> "ExampleSet":
        """A random subset of ``min(n, len(self))`` examples, kept in their original order.

        Args:
            n: how many to keep.
            seed: seeds the choice (a private ``torch.Generator``; the global RNG is untouched).
        """
        if n >= len(self):
            return self._with(list(self.examples))
        generator = torch.Generator().manual_seed(seed)
        keep = sorted(torch.randperm(len(self), generator=generator)[:n].tolist())
        return self[keep]
