"""Free-form generation: supervised fine-tuning on question → answer, greedy decoding and exact match.

There is no class distribution here, so uncertainty comes from the model's own greedy answer: its per-token
log-probabilities (for a length-normalised NLL) and per-token entropies (METHODS.md, STAR, label-free scoring).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from loracle.data.examples import Example
from loracle.tasks.base import Batch, Task, model_inputs
from loracle.tasks.tokens import split_continuations

DEFAULT_PROMPT = "Question: {question}\nAnswer:"
ANSWER_MODES = ("number", "text")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass
class GenerationOutput:
    """What :meth:`GenerationTask.generate` returns for ``B`` prompts.

    Args:
        texts: the decoded answers (special tokens and surrounding whitespace removed).
        token_logprobs: per item a ``[L_i]`` tensor, log-probability of each generated token (up to, not
            including, the end-of-sequence token).
        token_entropies: per item a ``[L_i]`` tensor, entropy (nats) of the model's next-token distribution at
            each generated token.
        token_ids: per item the ``[L_i]`` generated token ids (same positions as the two lists above).
    """

    texts: list[str]
    token_logprobs: list[torch.Tensor]
    token_entropies: list[torch.Tensor]
    token_ids: list[torch.Tensor] = field(default_factory=list)


def extract_answer(text: str, mode: str = "number") -> str:
    """The answer inside a generated text.

    ``"number"`` takes the last number (commas dropped, ``7.0`` → ``7``) before the model starts a new
    ``Question:``; ``"text"`` takes the first line, stripped and lower-cased.

    Raises:
        ValueError: for an unknown mode.
    """
    if mode not in ANSWER_MODES:
        raise ValueError(f"unknown answer mode {mode!r}; expected one of {list(ANSWER_MODES)}")
    text = text.split("Question:")[0]
    if mode == "text":
        return text.strip().split("\n")[0].strip().lower()
    numbers = _NUMBER.findall(text)
    if not numbers:
        return ""
    return _normalise_number(numbers[-1])


def _normalise_number(value: str) -> str:
    value = value.replace(",", "").strip()
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else str(number)


def exact_match(predictions: Sequence[str], references: Sequence[str], mode: str = "number") -> float:
    """Fraction of generated texts whose extracted answer equals the reference (normalised the same way).

    Raises:
        ValueError: when the lengths differ or nothing is given.
    """
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"exact_match needs equally many (>0) predictions and references, got "
                         f"{len(predictions)} and {len(references)}")
    ref = [_normalise_number(r) if mode == "number" else r.strip().lower() for r in references]
    return sum(extract_answer(p, mode) == r for p, r in zip(predictions, ref)) / len(ref)


class GenerationTask(Task):
    """Question → answer with a causal LM.

    Training sequences are ``prompt + answer_prefix + answer + EOS``; the loss is the mean token cross-entropy
    on the answer tokens (and EOS) only. Prompt and answer are tokenised as one text and split after the prompt
    (:func:`~loracle.tasks.tokens.split_continuations`), so the answer tokens are those the model meets in the joined
    text (apart, a SentencePiece "legacy" tokenizer would train on a lone ``▁`` before every answer). For generation
    the prompts are left-padded.

    Args:
        tokenizer: the causal LM's tokenizer.
        max_length: longest training sequence (the prompt loses its left end first).
        prompt_template: ``str.format`` template with ``{question}``.
        answer_prefix: put before the answer.
        answer_mode: ``"number"`` (final number, gsm_symbolic) or ``"text"`` for :func:`extract_answer`.
        max_new_tokens: default generation length.
    """

    kind = "generation"

    def __init__(self, tokenizer: Any, max_length: int = 256, prompt_template: str = DEFAULT_PROMPT,
                 answer_prefix: str = " ", answer_mode: str = "number", max_new_tokens: int = 32) -> None:
        super().__init__(tokenizer, max_length)
        problems = []
        if "{question}" not in prompt_template:
            problems.append(f"prompt_template must contain '{{question}}', got {prompt_template!r}")
        if answer_mode not in ANSWER_MODES:
            problems.append(f"answer_mode must be one of {list(ANSWER_MODES)}, got {answer_mode!r}")
        if max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
        if problems:
            raise ValueError("invalid GenerationTask options:\n  - " + "\n  - ".join(problems))
        self.prompt_template = prompt_template
        self.answer_prefix = answer_prefix
        self.answer_mode = answer_mode
        self.max_new_tokens = max_new_tokens

    def options(self) -> dict[str, Any]:
        return {**super().options(), "prompt_template": self.prompt_template, "answer_prefix": self.answer_prefix,
                "answer_mode": self.answer_mode, "max_new_tokens": self.max_new_tokens}

    def num_classes(self, example: Example) -> int:
        raise ValueError("a generation task has no classes; use task.generate() and sequence-level scores")

    def class_logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        raise ValueError(
            "a generation task has no class distribution, so mc_probs/class_logits do not apply; use "
            "task.generate(model, batch) and loracle.uncertainty.scores.sequence_nll / mean_token_entropy"
        )

    def collate(self, examples: Sequence[Example]) -> Batch:
        """Returns ``prompt_input_ids``/``prompt_attention_mask`` ``[B, P]`` (left-padded) and ``answers`` (list of
        str); when every example has an answer also ``input_ids``/``attention_mask``/``labels`` ``[B, T]``
        (right-padded; ``labels`` is -100 outside the answer)."""
        prompt_texts = [self.prompt_template.format(question=e.text) for e in examples]
        own_ids = [list(ids) for ids in self.tokenizer(prompt_texts, add_special_tokens=True)["input_ids"]]
        prompts = [p[-(self.max_length - 1):] or [self.pad_id()] for p in own_ids]
        pad = self.pad_id()
        width = max(len(p) for p in prompts)
        prompt_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        prompt_mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for i, ids in enumerate(prompts):
            prompt_ids[i, width - len(ids):] = torch.tensor(ids)
            prompt_mask[i, width - len(ids):] = 1
        batch: Batch = {"prompt_input_ids": prompt_ids, "prompt_attention_mask": prompt_mask,
                        "answers": [e.answer for e in examples]}
        if not all(e.answer is not None for e in examples):
            return batch
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        pairs = split_continuations(self.tokenizer, prompt_texts, [self.answer_prefix + e.answer for e in examples],
                                    prompt_ids=own_ids)
        rows = []
        for prompt, answer in pairs:
            answer = (answer + eos)[: self.max_length - 1]
            prompt = prompt or [self.pad_id()]  # the first answer token needs something to be predicted from
            rows.append((prompt[-(self.max_length - len(answer)):], answer))
        length = max(len(p) + len(a) for p, a in rows)
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
        labels = torch.full((len(rows), length), -100, dtype=torch.long)
        for i, (prompt, answer) in enumerate(rows):
            n = len(prompt) + len(answer)
            input_ids[i, :n] = torch.tensor(prompt + answer)
            attention_mask[i, :n] = 1
            labels[i, len(prompt):n] = torch.tensor(answer)
        batch.update(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        return batch

    def loss(self, model: nn.Module, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean cross-entropy over the answer tokens of the batch (optionally label-smoothed over the vocabulary)."""
        logits = model(**model_inputs(model, batch, ("input_ids", "attention_mask"))).logits  # (B, T, V)
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        return F.cross_entropy(logits[:, :-1][mask].float(), labels[mask], label_smoothing=label_smoothing)

    @torch.no_grad()
    def generate(self, model: nn.Module, batch: Batch, max_new_tokens: int | None = None) -> GenerationOutput:
        """Greedy decoding from the batch's prompts, with per-token log-probabilities and entropies.

        Args:
            model: a causal LM (with or without adapters; MC dropout applies if switched on around the call).
            batch: from :meth:`collate`.
            max_new_tokens: generation budget (default: the task's).

        Returns:
            :class:`GenerationOutput` for the ``B`` prompts.
        """
        steps = max_new_tokens or self.max_new_tokens
        input_ids = batch["prompt_input_ids"]
        attention_mask = batch["prompt_attention_mask"]
        eos = self.tokenizer.eos_token_id
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=steps,
                             do_sample=False, return_dict_in_generate=True, output_logits=True,
                             pad_token_id=self.pad_id(), eos_token_id=eos)
        generated = out.sequences[:, input_ids.shape[1]:]  # (B, L)
        logits = torch.stack(out.logits, dim=1).float()  # (B, L, V)
        logp = logits.log_softmax(-1)
        chosen = logp.gather(-1, generated.unsqueeze(-1)).squeeze(-1)  # (B, L)
        entropy = -(logp.exp() * logp).sum(-1)  # (B, L)
        texts, lps, ents, ids = [], [], [], []
        for i in range(generated.shape[0]):
            tokens = generated[i].tolist()
            n = tokens.index(eos) if eos is not None and eos in tokens else len(tokens)
            texts.append(self.tokenizer.decode(tokens[:n], skip_special_tokens=True).strip())
            lps.append(chosen[i, :n].cpu())
            ents.append(entropy[i, :n].cpu())
            ids.append(generated[i, :n].cpu())
        return GenerationOutput(texts, lps, ents, ids)
