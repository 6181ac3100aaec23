"""Tiny models and a tiny tokenizer built in code (hidden size 32, 2 layers), so tests need no download.

Import as ``from tiny_models import ...`` (``tests/`` is on pytest's pythonpath).
"""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

VOCAB = 99


def tiny_bert(num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=num_labels,
    )
    return BertForSequenceClassification(config).eval()


def tiny_llama_config(**overrides) -> LlamaConfig:
    values = dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=0,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_llama_lm(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config()).eval()


def tiny_llama_classifier(num_labels: int = 2, seed: int = 0) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(tiny_llama_config(num_labels=num_labels)).eval()


def tiny_gpt2(num_labels: int = 2, seed: int = 0) -> GPT2ForSequenceClassification:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64, num_labels=num_labels,
                        pad_token_id=0)
    return GPT2ForSequenceClassification(config).eval()


MODEL_BUILDERS = {"bert": tiny_bert, "llama": tiny_llama_classifier, "gpt2": tiny_gpt2}




# -- a tiny word-level tokenizer for task/training/evaluation/CLI tests (appended by the training engineer) ---------
TINY_WORDS = (
    "question answer yes no good bad great awful fun dull movie film plot the a an is was it this that very not "
    "and or but of to in what how many does did do why who two plus minus equals sum i love hate liked boring "
    "0 1 2 3 4 5 6 7 8 9 : ? . , ! + - = '"
).split()


def tiny_tokenizer():
    """A ``PreTrainedTokenizerFast`` over a lower-cased word-level vocabulary of < 99 ids (fits the tiny models).

    Ids: 0 ``[PAD]``, 1 ``[UNK]``, 2 ``[BOS]``, 3 ``[EOS]``, then :data:`TINY_WORDS`. No special tokens are added
    automatically; digits and punctuation are single tokens.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *TINY_WORDS])}
    assert len(vocab) <= VOCAB
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(True)])
    backend.decoder = decoders.WordPiece(prefix="##")  # joins word tokens with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]")
