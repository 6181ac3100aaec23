"""Multiple choice with a causal language model: every choice is scored by its log-likelihood after the prompt.

For question ``q`` and choices ``c_1..c_C`` the score of choice ``j`` is the length-normalised log-likelihood of its
tokens given the prompt,

    s_j = (1 / |c_j|) · Σ_t log p(c_j,t | prompt(q), c_j,<t),

and ``softmax(s)`` is the predictive distribution over choices (METHODS.md, Shared definitions). All ``B × C``
prompt+choice sequences of a batch go through the model in one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from loracle.data.examples import Example
from loracle.tasks.base import Batch, Task, model_inputs

DEFAULT_PROMPT = "Question: {question}\nAnswer:"


class MultipleChoiceTask(Task):
    """Score choices by likelihood under a causal LM; train with cross-entropy over the choice scores.

    The loss ``-log softmax(s)_y`` raises the correct choice's (length-normalised) likelihood relative to the other
    choices, so training and prediction use the same distribution. Prompt and choice are tokenised separately and
    their ids concatenated, so the tokenizer can never merge the last prompt token with the first choice token and
    the choice tokens are known exactly. Sequences are right-padded (positions of real tokens start at 0); a prompt
    too long for ``max_length`` loses its left end.

    Args:
        tokenizer: the causal LM's tokenizer.
        max_length: longest prompt+choice sequence.
        prompt_template: ``str.format`` template with ``{question}``.
        choice_prefix: put before each choice (a space, so ``"Answer:" + " Yes"`` reads naturally).
        length_normalize: divide each choice's log-likelihood by its token count (else the sum).
        num_choices: pad every batch to this many choices (choices an item lacks get probability 0); ``None`` uses
            the largest count in the batch.
    """

    kind = "multiple_choice"

    def __init__(self, tokenizer: Any, max_length: int = 128, prompt_template: str = DEFAULT_PROMPT,
                 choice_prefix: str = " ", length_normalize: bool = True, num_choices: int | None = None) -> None:
        super().__init__(tokenizer, max_length)
        problems = []
        if "{question}" not in prompt_template:
            problems.append(f"prompt_template must contain '{{question}}', got {prompt_template!r}")
        if num_choices is not None and num_choices < 2:
            problems.append(f"num_choices must be >= 2 or None, got {num_choices!r}")
        if problems:
            raise ValueError("invalid MultipleChoiceTask options:\n  - " + "\n  - ".join(problems))
        self.prompt_template = prompt_template
        self.choice_prefix = choice_prefix
        self.length_normalize = length_normalize
        self.num_choices = num_choices

    def options(self) -> dict[str, Any]:
        return {**super().options(), "prompt_template": self.prompt_template, "choice_prefix": self.choice_prefix,
                "length_normalize": self.length_normalize, "num_choices": self.num_choices}

    def num_classes(self, example: Example) -> int:
        return self.num_choices or len(example.choices or ())

    def _ids(self, texts: list[str], special: bool) -> list[list[int]]:
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=special)["input_ids"]]

    def collate(self, examples: Sequence[Example]) -> Batch:
        """Tokenise ``B`` questions with their choices.

        Returns:
            ``input_ids``, ``attention_mask``, ``choice_mask`` ``[B*C, T]`` (row ``b*C + j`` is choice ``j`` of item
            ``b``; ``choice_mask`` marks the choice's tokens), ``choice_valid`` ``[B, C]`` bool, and ``labels``
            ``[B]`` when every item is labelled.

        Raises:
            ValueError: an example without choices, or more choices than ``num_choices``.
        """
        bad = [e.id for e in examples if not e.choices]
        if bad:
            raise ValueError(f"multiple-choice examples need choices; example {bad[0]!r} has none")
        width = max(len(e.choices) for e in examples)
        if self.num_choices is not None:
            if width > self.num_choices:
                raise ValueError(f"an example has {width} choices but the task was built with num_choices="
                                 f"{self.num_choices}")
            width = self.num_choices
        prompts = self._ids([self.prompt_template.format(question=e.text) for e in examples], special=True)
        flat_choices = [self.choice_prefix + c for e in examples for c in e.choices]
        choice_ids = iter(self._ids(flat_choices, special=False))
        start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.pad_id()
        rows: list[tuple[list[int], int]] = []  # (ids, number of trailing choice tokens)
        valid = torch.zeros(len(examples), width, dtype=torch.bool)
        for b, (example, prompt) in enumerate(zip(examples, prompts)):
            prompt = prompt or [start]  # the first choice token needs something to be predicted from
            for j in range(width):
                if j < len(example.choices):
                    choice = next(choice_ids)[: self.max_length - 1] or [self.pad_id()]
                    valid[b, j] = True
                else:
                    choice = [self.pad_id()]  # placeholder row, masked out of the scores
                keep = self.max_length - len(choice)
                rows.append((prompt[-keep:] + choice, len(choice)))
        length = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), length), self.pad_id(), dtype=torch.long)
        attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
        choice_mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, (ids, n_choice) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention_mask[i, : len(ids)] = 1
            choice_mask[i, len(ids) - n_choice: len(ids)] = True
        batch: Batch = {"input_ids": input_ids, "attention_mask": attention_mask, "choice_mask": choice_mask,
                        "choice_valid": valid}
        if all(e.label is not None for e in examples):
            batch["labels"] = torch.tensor([e.label for e in examples], dtype=torch.long)
        return batch

    def class_logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """``[B, C]`` choice scores: (mean) log-likelihood of each choice's tokens; ``-inf`` for absent choices."""
        logits = model(**model_inputs(model, batch, ("input_ids", "attention_mask"))).logits  # (B*C, T, V)
        target_mask = batch["choice_mask"][:, 1:]  # token t+1 is predicted from position t
        rows, cols = target_mask.nonzero(as_tuple=True)  # (K,)
        # log-softmax only where a choice token is predicted: K×V instead of (B*C)×T×V
        selected = logits[rows, cols].float().log_softmax(-1)  # (K, V)
        token_lp = selected.gather(-1, batch["input_ids"][rows, cols + 1].unsqueeze(-1)).squeeze(-1)  # (K,)
        scores = torch.zeros(logits.shape[0], dtype=token_lp.dtype, device=token_lp.device).index_add(0, rows,
                                                                                                         token_lp)
        if self.length_normalize:
            scores = scores / target_mask.sum(-1).clamp(min=1).to(scores.dtype)
        valid = batch["choice_valid"]
        scores = scores.view(valid.shape)  # (B, C)
        return scores.masked_fill(~valid.to(scores.device), float("-inf"))

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy of the softmax over choice scores against the correct choice."""
        return F.cross_entropy(self.class_logits(model, batch), batch["labels"])
