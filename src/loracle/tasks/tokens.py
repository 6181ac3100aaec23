"""Token ids of a prompt followed by a continuation (a choice, an answer), from one tokenisation of the joined text.

Tokenising prompt and continuation apart is wrong for SentencePiece tokenizers with the "legacy" normaliser
(Llama-2, Mistral): they put ``▁`` before every text, so ``" Yes"`` alone becomes ``["▁", "▁Yes"]`` while
``"Answer: Yes"`` ends in ``[":", "▁Yes"]``. The model would score, and a length normalisation count, a lone ``▁``
it never sees in real text. Byte-level BPE (GPT-2, SmolLM2) happens to agree in the common case, but not where the
last prompt characters merge with the first continuation characters.

:func:`split_continuations` tokenises ``prompt + continuation`` once and splits it after the longest common prefix
with the prompt's own ids, so the continuation ids are exactly the tail of the joined text's ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def split_continuations(
    tokenizer: Any,
    prompts: Sequence[str],
    continuations: Sequence[str],
    prompt_ids: Sequence[Sequence[int]] | None = None,
) -> list[tuple[list[int], list[int]]]:
    """Tokenise each ``prompts[i] + continuations[i]`` as one text and split it where the continuation starts.

    The split point is the longest common prefix of the joined ids and the prompt's own ids (both with the
    tokenizer's special tokens, so a BOS stays in the prompt part). Usually that is the whole prompt; when the
    tokenizer merges the prompt's last characters with the continuation's first ones, the merged token (and
    anything after it) belongs to the continuation, so the continuation's ids are always the joined text's tail.
    Special tokens the tokenizer appends at the end (an EOS) are dropped from the continuation.

    Args:
        tokenizer: a ``transformers`` tokenizer (fast or slow; no offsets are needed).
        prompts: ``N`` prompt texts (repeats are fine, e.g. one per choice).
        continuations: ``N`` continuation texts, each put right after its prompt (include any separator, such as
            the leading space of ``" Yes"``).
        prompt_ids: the prompts' own ids (``tokenizer(prompts, add_special_tokens=True)``) when already computed.

    Returns:
        ``N`` pairs ``(prompt part, continuation part)`` whose concatenation is the joined text's ids (less
        appended special tokens).

    Raises:
        ValueError: when the lengths of ``prompts``, ``continuations`` and ``prompt_ids`` differ.
    """
    if len(prompts) != len(continuations) or (prompt_ids is not None and len(prompt_ids) != len(prompts)):
        raise ValueError(f"split_continuations needs as many prompts as continuations (and prompt ids), got "
                         f"{len(prompts)}, {len(continuations)} and "
                         f"{len(prompt_ids) if prompt_ids is not None else 'none'}")
    if not prompts:
        return []
    if prompt_ids is None:
        distinct = list(dict.fromkeys(prompts))
        own = dict(zip(distinct, tokenizer(distinct, add_special_tokens=True)["input_ids"]))
        prompt_ids = [own[p] for p in prompts]
    joined = tokenizer([p + c for p, c in zip(prompts, continuations)], add_special_tokens=True)["input_ids"]
    special = set(tokenizer.all_special_ids)
    pairs = []
    for head, ids in zip(prompt_ids, joined):
        ids = list(ids)
        n, limit = 0, min(len(ids), len(head))
        while n < limit and ids[n] == head[n]:
            n += 1
        tail = ids[n:]
        while tail and tail[-1] in special:
            tail.pop()
        pairs.append((ids[:n], tail))
    return pairs
