"""Choice and answer tokens are the tail of the joined text's tokens, for a SentencePiece "legacy" Llama tokenizer and
a byte-level BPE tokenizer (both built in code, no download)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_llama_config
from transformers import LlamaForCausalLM

from loracle.data import Example
from loracle.tasks import GenerationTask, MultipleChoiceTask
from loracle.tasks.tokens import split_continuations

WORDS = ["Question", "Answer", "Is", "the", "sky", "blue", "Yes", "No", "How", "many", "legs", "has", "a", "cat",
         "two", "four", "What", "plus"]
# "zero" has no merges: it falls apart into single characters, so a choice can be several tokens long.
TEXT = "Question: Is the sky blue? How many legs has a cat? What is two plus two? Answer: Yes No two four zero"
MC = [Example("0", "Is the sky blue?", label=0, choices=("Yes", "No")),
      Example("1", "How many legs has a cat?", label=1, choices=("two", "four", "zero"))]


def _chain(vocab: dict[str, int], merges: list[tuple[str, str]], word: str) -> None:
    for i in range(1, len(word)):
        merges.append((word[:i], word[i]))
        vocab.setdefault(word[: i + 1], len(vocab))


def legacy_llama_tokenizer():
    """A Llama-2 style tokenizer: BPE over characters with the legacy normaliser (prepend ``▁``, spaces to ``▁``),
    BOS added, wrapped as ``LlamaTokenizerFast(legacy=True)``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import LlamaTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3}
    for char in sorted(set(TEXT.replace(" ", "")) | {"\n"}):
        vocab.setdefault(char, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        _chain(vocab, merges, "▁" + word)
        _chain(vocab, merges, word)  # "Answer" after a newline has no "▁"
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", 1)])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return LlamaTokenizerFast(tokenizer_object=backend, legacy=True, bos_token="<s>", eos_token="</s>",
                              unk_token="<unk>")


def byte_level_tokenizer():
    """A GPT-2 / SmolLM2 style byte-level BPE tokenizer: the 256 byte symbols plus whole-word merges (``Ġ`` is the
    space), no BOS, EOS ``<|endoftext|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0}
    for char in pre_tokenizers.ByteLevel.alphabet():
        vocab.setdefault(char, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        _chain(vocab, merges, "Ġ" + word)
        _chain(vocab, merges, word)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def lm_for(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(vocab_size=len(tokenizer))).eval()


def tokens(tokenizer, ids) -> list[str]:
    return tokenizer.convert_ids_to_tokens(list(ids))


def test_legacy_tokenizer_puts_a_lone_marker_before_a_separate_choice():
    tok = legacy_llama_tokenizer()
    # the defect the joint tokenisation avoids: " Yes" on its own starts with a lone "▁"
    assert tokens(tok, tok(" Yes", add_special_tokens=False)["input_ids"]) == ["▁", "▁Yes"]
    assert tokens(tok, tok("Answer: Yes")["input_ids"]) == ["<s>", "▁Answer", ":", "▁Yes"]
    ((prompt, choice),) = split_continuations(tok, ["Answer:"], [" Yes"])
    assert tokens(tok, prompt) == ["<s>", "▁Answer", ":"] and tokens(tok, choice) == ["▁Yes"]


# (tokenizer, prompt template, choice prefix, expected choice tokens per item)
CASES = {
    "legacy-llama": (legacy_llama_tokenizer, "Question: {question}\nAnswer:", " ",
                     [[["▁Yes"], ["▁No"]], [["▁two"], ["▁four"], ["▁", "z", "e", "r", "o"]]]),
    "byte-level": (byte_level_tokenizer, "Question: {question}\nAnswer:", " ",
                   [[["ĠYes"], ["ĠNo"]], [["Ġtwo"], ["Ġfour"], ["Ġ", "z", "e", "r", "o"]]]),
    # a template ending in a space: tokenised apart, byte-level BPE would give "Ġ" + "Yes" instead of "ĠYes". The
    # space of " zero" is a token of its own in the joined text as well, and it ends the prompt's own ids.
    "byte-level-trailing-space": (byte_level_tokenizer, "Question: {question}\nAnswer: ", "",
                                  [[["ĠYes"], ["ĠNo"]], [["Ġtwo"], ["Ġfour"], ["z", "e", "r", "o"]]]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_choice_tokens_are_the_tail_of_the_joined_text(case):
    builder, template, prefix, expected = CASES[case]
    tok = builder()
    task = MultipleChoiceTask(tok, max_length=64, prompt_template=template, choice_prefix=prefix)
    batch = task.collate(MC)
    width = batch["choice_valid"].shape[1]
    model = lm_for(tok)
    with torch.no_grad():
        scores = task.class_logits(model, batch)
    for b, example in enumerate(MC):
        for j, choice in enumerate(example.choices):
            row = b * width + j
            joined = tok(template.format(question=example.text) + prefix + choice)["input_ids"]
            n = int(batch["attention_mask"][row].sum())
            assert batch["input_ids"][row, :n].tolist() == joined  # the row is the joined text, token for token
            choice_ids = batch["input_ids"][row][batch["choice_mask"][row]].tolist()
            k = len(expected[b][j])
            assert tokens(tok, choice_ids) == expected[b][j] and choice_ids == joined[-k:]
            # the length normalisation divides by exactly these k tokens: mean log p of the joined text's tail
            with torch.no_grad():
                logp = model(input_ids=torch.tensor([joined])).logits[0].log_softmax(-1)
            by_hand = sum(logp[len(joined) - k + i - 1, t].item() for i, t in enumerate(joined[-k:])) / k
            assert scores[b, j].item() == pytest.approx(by_hand, abs=1e-5)


@pytest.mark.parametrize("case", ["legacy-llama", "byte-level"])
def test_generation_answer_tokens_are_the_tail_of_the_joined_text(case):
    builder = {"legacy-llama": legacy_llama_tokenizer, "byte-level": byte_level_tokenizer}[case]
    tok = builder()
    task = GenerationTask(tok, max_length=64)
    example = Example("0", "What is two plus two?", answer="four")
    batch = task.collate([example])
    joined = tok(task.prompt_template.format(question=example.text) + " four")["input_ids"]
    labels = batch["labels"][0]
    answer = labels[labels != -100].tolist()
    assert answer == [joined[-1], tok.eos_token_id]
    assert tokens(tok, answer[:1]) == [{"legacy-llama": "▁four", "byte-level": "Ġfour"}[case]]
    n = int(batch["attention_mask"][0].sum())
    assert batch["input_ids"][0, :n].tolist() == joined + [tok.eos_token_id]
    # generation itself starts from the prompt's own ids
    prompt = tok(task.prompt_template.format(question=example.text))["input_ids"]
    assert batch["prompt_input_ids"][0].tolist() == prompt


def test_split_continuations_drops_appended_eos_and_checks_lengths(tokenizer):
    class AppendsEos:
        """A tokenizer that ends every text with EOS (id 3), like some encoder tokenizers."""

        all_special_ids = [0, 1, 2, 3]

        def __call__(self, texts, add_special_tokens=True):
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
            return {"input_ids": [[2, *x, 3] if add_special_tokens else x for x in ids]}

    wrapped = AppendsEos()
    ((prompt, answer),) = split_continuations(wrapped, ["is it good ?"], [" yes"])
    assert prompt == [2] + tokenizer("is it good ?", add_special_tokens=False)["input_ids"]
    assert answer == tokenizer(" yes", add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="as many prompts as continuations"):
        split_continuations(tokenizer, ["a", "b"], ["c"])
