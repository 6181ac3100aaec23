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
from loracle.tasks.base import Batch, Task, _forward_parameters, model_inputs
from loracle.tasks.tokens import split_continuations

DEFAULT_PROMPT = "Question: {question}\nAnswer:"
ANSWER_MODES = ("number", "text")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass
class GenerationOutput:
    """What :meth:`GenerationTask.generate` returns for ``B`` prompts.

    Args:
        texts: the decoded answers (special tokens and surrounding whitespace removed).
        token_logprobs: per item a ``[L_i]`` tensor, log-probability of each generated token (up to and
            including the end-of-sequence token, or the token that completed a stop string).
        token_entropies: per item a ``[L_i]`` tensor, entropy (nats) of the model's next-token distribution at
            each generated token.
        token_ids: per item the ``[L_i]`` generated token ids (same positions as the two lists above).
    """

    texts: list[str]
    token_logprobs: list[torch.Tensor]
    token_entropies: list[torch.Tensor]
    token_ids: list[torch.Tensor] = field(default_factory=list)


def extract_answer(text: str, mode: str = "number", pattern: str | None = None) -> str:
    """The answer inside a generated text.

    ``"number"`` takes the last number (commas dropped, ``7.0`` → ``7``) before the model starts a new
    ``Question:``; ``"text"`` takes the first line, stripped and lower-cased. A ``pattern`` (a regular
    expression) overrides both: the first match's group 1 (or the whole match without groups), stripped and
    lower-cased; no match gives ``""``.

    Raises:
        ValueError: for an unknown mode.
    """
    if mode not in ANSWER_MODES:
        raise ValueError(f"unknown answer mode {mode!r}; expected one of {list(ANSWER_MODES)}")
    text = text.split("Question:")[0]
    if pattern is not None:
        match = re.search(pattern, text)
        if match is None:
            return ""
        return (match.group(1) if match.re.groups else match.group(0)).strip().lower()
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


def normalise_reference(reference: str, mode: str = "number") -> str:
    """A reference answer normalised as :func:`extract_answer` normalises a prediction (number or lower-cased
    text; with a user pattern the reference is taken as written, stripped and lower-cased)."""
    return _normalise_number(reference) if mode == "number" else reference.strip().lower()


def answer_correct(predictions: Sequence[str], references: Sequence[str], mode: str = "number",
                   pattern: str | None = None) -> list[bool]:
    """Per item: does the answer extracted from the generated text equal the normalised reference?

    Raises:
        ValueError: when the lengths differ or nothing is given.
    """
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"exact_match needs equally many (>0) predictions and references, got "
                         f"{len(predictions)} and {len(references)}")
    ref = [r.strip().lower() if pattern is not None else normalise_reference(r, mode) for r in references]
    return [extract_answer(p, mode, pattern) == r for p, r in zip(predictions, ref)]


def exact_match(predictions: Sequence[str], references: Sequence[str], mode: str = "number",
                pattern: str | None = None) -> float:
    """Fraction of generated texts whose extracted answer equals the reference (normalised the same way).

    Raises:
        ValueError: when the lengths differ or nothing is given.
    """
    correct = answer_correct(predictions, references, mode, pattern)
    return sum(correct) / len(correct)


def _stop_criteria(tokenizer: Any, stop_strings: Sequence[str], prompt_length: int) -> Any:
    """A ``StoppingCriteriaList`` that ends a row once its decoded new text contains a stop string.

    transformers' own ``stop_strings`` needs a tokenizer whose vocabulary it can map back to text piecewise
    (byte-level BPE, SentencePiece); decoding the row itself works for every tokenizer.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnText(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            texts = tokenizer.batch_decode(input_ids[:, prompt_length:], skip_special_tokens=True)
            done = [any(stop in text for stop in stop_strings) for text in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopOnText()])


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
        stop_strings: generation of an item stops once its text contains one of these (besides EOS); the
            decoded answer is cut before it.
        answer_pattern: a regular expression that extracts the answer (group 1, or the whole match), overriding
            ``answer_mode``.
    """

    kind = "generation"

    def __init__(self, tokenizer: Any, max_length: int = 256, prompt_template: str = DEFAULT_PROMPT,
                 answer_prefix: str = " ", answer_mode: str = "number", max_new_tokens: int = 32,
                 stop_strings: Sequence[str] = (), answer_pattern: str | None = None) -> None:
        super().__init__(tokenizer, max_length)
        problems = []
        if "{question}" not in prompt_template:
            problems.append(f"prompt_template must contain '{{question}}', got {prompt_template!r}")
        if answer_mode not in ANSWER_MODES:
            problems.append(f"answer_mode must be one of {list(ANSWER_MODES)}, got {answer_mode!r}")
        if max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
        if answer_pattern is not None:
            try:
                re.compile(answer_pattern)
            except re.error as err:
                problems.append(f"answer_pattern {answer_pattern!r} is not a regular expression ({err})")
        if any(not isinstance(stop, str) or not stop for stop in stop_strings):
            problems.append(f"stop_strings must be non-empty strings, got {list(stop_strings)!r}")
        if problems:
            raise ValueError("invalid GenerationTask options:\n  - " + "\n  - ".join(problems))
        self.prompt_template = prompt_template
        self.answer_prefix = answer_prefix
        self.answer_mode = answer_mode
        self.max_new_tokens = max_new_tokens
        self.stop_strings = tuple(stop_strings)
        self.answer_pattern = answer_pattern

    def options(self) -> dict[str, Any]:
        return {**super().options(), "prompt_template": self.prompt_template, "answer_prefix": self.answer_prefix,
                "answer_mode": self.answer_mode, "max_new_tokens": self.max_new_tokens,
                "stop_strings": list(self.stop_strings), "answer_pattern": self.answer_pattern}

    def correct(self, predictions: Sequence[str], references: Sequence[str]) -> list[bool]:
        """Per item, whether the generated text's extracted answer is the reference (this task's extraction)."""
        return answer_correct(predictions, references, self.answer_mode, self.answer_pattern)

    def cut_at_stop(self, text: str) -> str:
        """``text`` up to the first stop string (the stop string itself removed)."""
        for stop in self.stop_strings:
            position = text.find(stop)
            if position >= 0:
                text = text[:position]
        return text

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
        stops = {}
        if self.stop_strings:
            stops["stopping_criteria"] = _stop_criteria(self.tokenizer, self.stop_strings, input_ids.shape[1])
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=steps,
                             do_sample=False, return_dict_in_generate=True, output_logits=True,
                             pad_token_id=self.pad_id(), eos_token_id=eos, use_cache=True, **stops)
        generated = out.sequences[:, input_ids.shape[1]:]  # (B, L)
        logits = torch.stack(out.logits, dim=1).float()  # (B, L, V)
        logp = logits.log_softmax(-1)
        chosen = logp.gather(-1, generated.unsqueeze(-1)).squeeze(-1)  # (B, L)
        entropy = -(logp.exp() * logp).sum(-1)  # (B, L)
        texts, lps, ents, ids = [], [], [], []
        for i in range(generated.shape[0]):
            tokens = generated[i].tolist()
            # The answer the model committed to ends with its EOS: kept in the ids and scores (so an empty answer
            # still has a probability), dropped from the text. Padding after it is not part of the answer.
            n = tokens.index(eos) + 1 if eos is not None and eos in tokens else len(tokens)
            n = self._stop_length(tokens, n)
            texts.append(self.decode_answer(tokens[:n]))
            lps.append(chosen[i, :n].cpu())
            ents.append(entropy[i, :n].cpu())
            ids.append(generated[i, :n].cpu())
        return GenerationOutput(texts, lps, ents, ids)

    def decode_answer(self, token_ids: Sequence[int]) -> str:
        """The text of a generated answer: decoded without special tokens, cut at a stop string, stripped."""
        return self.cut_at_stop(self.tokenizer.decode([int(t) for t in token_ids], skip_special_tokens=True)).strip()

    def _stop_length(self, tokens: list[int], n: int) -> int:
        """Tokens kept of a row that may run on after a stop string (the batch goes on until every row stops):
        up to and including the first token whose prefix text contains a stop string."""
        if not self.stop_strings:
            return n
        for k in range(1, n + 1):
            text = self.tokenizer.decode(tokens[:k], skip_special_tokens=True)
            if any(stop in text for stop in self.stop_strings):
                return k
        return n

    def answer_batch(self, examples: Sequence[Example], answers: Sequence[Sequence[int]]) -> Batch:
        """Teacher-forcing batch of each prompt followed by given answer token ids (the model's own greedy
        answer, as generated: no re-tokenisation). Left-padded, so every answer ends at the last position:
        ``input_ids``/``attention_mask``/``position_ids`` ``[B, T]`` and ``answer_mask`` ``[B, T]`` (True at the
        answer tokens). No gold answer is read.

        Raises:
            ValueError: if the counts differ.
        """
        if len(examples) != len(answers):
            raise ValueError(f"answer_batch needs one answer per example, got {len(examples)} and {len(answers)}")
        prompt_texts = [self.prompt_template.format(question=e.text) for e in examples]
        own_ids = self.tokenizer(prompt_texts, add_special_tokens=True)["input_ids"]
        rows = []
        for prompt, answer in zip(own_ids, answers):
            answer = [int(a) for a in answer][: self.max_length - 1]
            prompt = list(prompt) or [self.pad_id()]
            rows.append((prompt[-(self.max_length - len(answer)):], answer))
        length = max(len(p) + len(a) for p, a in rows)
        input_ids = torch.full((len(rows), length), self.pad_id(), dtype=torch.long)
        attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
        answer_mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, (prompt, answer) in enumerate(rows):
            n = len(prompt) + len(answer)
            input_ids[i, length - n:] = torch.tensor(prompt + answer, dtype=torch.long)
            attention_mask[i, length - n:] = 1
            answer_mask[i, length - len(answer):] = True
        position_ids = (attention_mask.cumsum(1) - 1).clamp_min(0)  # real tokens count from 0, as unpadded
        return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                "answer_mask": answer_mask}

    def answer_token_stats(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced per-token log-probability and entropy of the answers in an :meth:`answer_batch`.

        Only the last ``K`` positions reach the output head when the model takes ``logits_to_keep`` (the answers
        are right-aligned), so the ``[B, T, V]`` logits of the prompts are never formed.

        Returns:
            ``(logprobs [B, K], entropies [B, K], mask [B, K])`` for the last ``K`` target tokens (``K`` the
            longest answer); ``mask`` is True on answer tokens. Float32.
        """
        keep = int(batch["answer_mask"].sum(1).max().item()) + 1
        inputs = model_inputs(model, batch, ("input_ids", "attention_mask", "position_ids"))
        accepted = _forward_parameters(type(getattr(model, "module", model)).forward)
        if accepted is None or "logits_to_keep" in accepted:
            inputs["logits_to_keep"] = keep
        logits = model(**inputs).logits[:, -keep:-1].float()  # (B, K-1, V): position j predicts token j + 1
        logp = logits.log_softmax(-1)
        target = batch["input_ids"][:, -keep + 1:] if keep > 1 else batch["input_ids"][:, :0]
        chosen = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, K-1)
        entropy = -(logp.exp() * logp).sum(-1)  # (B, K-1)
        mask = batch["answer_mask"][:, -keep + 1:] if keep > 1 else batch["answer_mask"][:, :0]
        return chosen, entropy, mask
