"""load_model: local folders, the error for a missing model, and (slow) the two built-in offline models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tiny_models import tiny_bert, tiny_llama_lm
from loracle.models import load_model


def _save_tokenizer(folder: Path, with_pad: bool) -> None:
    vocab = {"[UNK]": 0, "[PAD]": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(90)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>",
                                   **({"pad_token": "[PAD]"} if with_pad else {}))
    fast.save_pretrained(folder)


def test_load_local_classifier_sets_labels(tmp_path: Path) -> None:
    tiny_bert().save_pretrained(tmp_path)
    _save_tokenizer(tmp_path, with_pad=True)
    model, tokenizer = load_model(str(tmp_path), "classification", label_names=["neg", "neu", "pos"])
    assert model.config.num_labels == 3
    assert model.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert model.classifier.out_features == 3
    assert tokenizer.pad_token == "[PAD]"


def test_causal_lm_without_pad_token_gets_eos(tmp_path: Path) -> None:
    tiny_llama_lm().save_pretrained(tmp_path)
    _save_tokenizer(tmp_path, with_pad=False)
    model, tokenizer = load_model(str(tmp_path), "multiple_choice")
    assert tokenizer.pad_token == "</s>"
    assert model.config.pad_token_id == tokenizer.pad_token_id == 2


def test_missing_model_error_lists_builtins(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"neither a local folder.*\['minilm', 'smollm2'\]"):
        load_model(str(tmp_path / "nope"), "classification", num_labels=2)
    with pytest.raises(ValueError, match="unknown task kind 'regression'"):
        load_model(str(tmp_path), "regression")
    with pytest.raises(ValueError, match="num_labels or label_names"):
        load_model(str(tmp_path), "classification")


@pytest.mark.slow
def test_builtin_minilm_and_smollm2_load_offline() -> None:
    model, tokenizer = load_model("minilm", "classification", num_labels=2)
    assert sum(p.numel() for p in model.bert.parameters()) == pytest.approx(22.7e6, rel=0.01)
    batch = tokenizer(["a fine film", "dull"], return_tensors="pt", padding=True)
    assert model(**batch).logits.shape == (2, 2)
    lm, lm_tok = load_model("smollm2", "generation")
    assert sum(p.numel() for p in lm.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids = lm_tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = lm.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in lm_tok.decode(out[0, ids["input_ids"].shape[1]:])
