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
from loracle.tasks.tokens import split_continuations

DEFAULT_PROMPT = "Question: {question}\nAnswer:"


class MultipleChoiceTask(Task):
    """Score choices by likelihood under a causal LM; train with cross-entropy over the choice scores.

    The loss ``-log softmax(s)_y`` raises the correct choice's (length-normalised) likelihood relative to the other
    choices, so training and prediction use the same distribution. Each prompt+choice text is tokenised as one text
    and split after the prompt (:func:`~loracle.tasks.tokens.split_continuations`), so a choice's tokens, scored and
    counted in the length normalisation, are exactly the tail of the joined text's tokens (tokenised apart, a
    SentencePiece "legacy" tokenizer such as Llama-2's or Mistral's would put a lone ``▁`` before every choice).
    Sequences are right-padded (positions of real tokens start at 0); a prompt too long for ``max_length`` loses its
    left end.

    Items may have different numbers of choices. Every batch is padded to ``num_choices`` columns: a missing choice
    is a placeholder row whose score is ``-inf``, so it has probability 0 after the softmax, never wins, and adds
    nothing to the loss. Batches of one scoring run must share their width (``mc_probs`` concatenates them), so
    whoever builds the task for a data set passes ``num_choices = max(len(e.choices) for e in examples)``; with
    ``None`` each batch is only as wide as its own widest item, which suits single batches.

    Args:
        tokenizer: the causal LM's tokenizer.
        max_length: longest prompt+choice sequence.
        prompt_template: ``str.format`` template with ``{question}``.
        choice_prefix: put before each choice (a space, so ``"Answer:" + " Yes"`` reads naturally).
        length_normalize: divide each choice's log-likelihood by its token count (else the sum).
        num_choices: pad every batch to this many choices (choices an item lacks get probability 0); ``None`` uses
            the largest count in the batch.

    Raises:
        ValueError: a template without ``{question}``, or ``num_choices`` that is not an integer >= 2 or None.
    """

    kind = "multiple_choice"

    def __init__(self, tokenizer: Any, max_length: int = 128, prompt_template: str = DEFAULT_PROMPT,
                 choice_prefix: str = " ", length_normalize: bool = True, num_choices: int | None = None) -> None:
        super().__init__(tokenizer, max_length)
        problems = []
        if "{question}" not in prompt_template:
            problems.append(f"prompt_template must contain '{{question}}', got {prompt_template!r}")
        if num_choices is not None and (isinstance(num_choices, bool) or not isinstance(num_choices, int)
                                        or num_choices < 2):
            problems.append(f"num_choices must be an integer >= 2 or None, got {num_choices!r}")
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
            ValueError: an example without choices, more choices than ``num_choices``, or a label that is not the
                index of one of the example's choices.
        """
        bad = [e.id for e in examples if not e.choices]
        if bad:
            raise ValueError(f"multiple-choice examples need choices; example {bad[0]!r} has none")
        out_of_range = [e for e in examples if e.label is not None and not 0 <= e.label < len(e.choices)]
        if out_of_range:
            e = out_of_range[0]
            raise ValueError(f"example {e.id!r} has label {e.label} but only {len(e.choices)} choices (labels are "
                             f"0-based choice indices)")
        width = max(len(e.choices) for e in examples)
        if self.num_choices is not None:
            if width > self.num_choices:
                widest = max(examples, key=lambda e: len(e.choices))
                raise ValueError(f"example {widest.id!r} has {width} choices but the task was built with "
                                 f"num_choices={self.num_choices}; build it with the largest choice count of the data")
            width = self.num_choices
        prompt_texts = [self.prompt_template.format(question=e.text) for e in examples]
        prompt_ids = self._ids(prompt_texts, special=True)
        flat = [(b, self.choice_prefix + c) for b, e in enumerate(examples) for c in e.choices]
        pairs = iter(split_continuations(self.tokenizer, [prompt_texts[b] for b, _ in flat], [c for _, c in flat],
                                         prompt_ids=[prompt_ids[b] for b, _ in flat]))
        start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.pad_id()
        rows: list[tuple[list[int], int]] = []  # (ids, number of trailing choice tokens)
        valid = torch.zeros(len(examples), width, dtype=torch.bool)
        for b, example in enumerate(examples):
            for j in range(width):
                if j < len(example.choices):
                    # the joined text's ids: the prompt's own ids unless its end merged into the choice
                    prompt, choice = next(pairs)
                    choice = choice[: self.max_length - 1] or [self.pad_id()]
                    valid[b, j] = True
                else:
                    prompt, choice = prompt_ids[b], [self.pad_id()]  # placeholder row, masked out of the scores
                prompt = prompt or [start]  # the first choice token needs something to be predicted from
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

    def loss(self, model: nn.Module, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean cross-entropy of the softmax over choice scores against the correct choice (padded choices,
        scored ``-inf``, get no smoothing mass)."""
        scores = self.class_logits(model, batch).float()
        if not label_smoothing:
            return F.cross_entropy(scores, batch["labels"])
        valid = torch.isfinite(scores)
        log_probs = torch.log_softmax(scores, dim=-1).masked_fill(~valid, 0.0)
        nll = -log_probs.gather(1, batch["labels"][:, None]).squeeze(1)
        uniform = -(log_probs.sum(-1) / valid.sum(-1))
        return ((1 - label_smoothing) * nll + label_smoothing * uniform).mean()
