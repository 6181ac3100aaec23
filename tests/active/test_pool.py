import torch

from loracle.active.pool import Scorer, embeddings, unlabelled
from loracle.adapters import LoRAConfig, apply_adapter
from loracle.data.examples import Example
from loracle.tasks import build_task
from tiny_models import tiny_bert, tiny_llama_classifier, tiny_tokenizer

EXAMPLES = [Example(str(i), t, i % 2) for i, t in enumerate(
    ["good movie", "the plot was very dull", "i love this film", "awful", "it is a great fun film"])]


def test_unlabelled_strips_labels():
    assert all(e.label is None and e.answer is None for e in unlabelled(EXAMPLES))
    assert [e.text for e in unlabelled(EXAMPLES)] == [e.text for e in EXAMPLES]


def test_embeddings_bert_and_llama():
    task = build_task("classification", tiny_tokenizer(), max_length=16, num_labels=2)
    bert = tiny_bert()
    feats = embeddings(bert, task, EXAMPLES, batch_size=2)
    assert feats.shape == (5, 32)
    with torch.no_grad():  # BERT's head input is the pooled [CLS] vector
        pooled = bert.bert(**{k: v for k, v in task.collate(EXAMPLES[:1]).items() if k != "labels"}).pooler_output
    torch.testing.assert_close(feats[:1], pooled, atol=1e-5, rtol=0)
    llama = tiny_llama_classifier()
    assert embeddings(llama, task, EXAMPLES, batch_size=2).shape == (5, 32)  # token features, masked mean


def test_base_probs_is_base_model_with_adapters_off():
    task = build_task("classification", tiny_tokenizer(), max_length=16, num_labels=2)
    model = tiny_bert()
    apply_adapter(model, LoRAConfig(rank=2, dropout=0.1, modules_to_save=["classifier"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=1.0)
    model.eval()
    scorer = Scorer(samples=3, base_samples=0, batch_size=2)
    base = scorer.base_probs(model, task, EXAMPLES, seed=0)
    with torch.no_grad():
        ref = tiny_bert()(**{k: v for k, v in task.collate(EXAMPLES).items() if k != "labels"}).logits.softmax(-1)
    assert base.shape == (5, 1, 2)
    torch.testing.assert_close(base[:, 0], ref, atol=1e-5, rtol=0)
    full = scorer.probs(model, task, EXAMPLES, seed=0)
    assert full.shape == (5, 3, 2) and (full[:, 0] - ref).abs().max() > 1e-3
    with_dropout = Scorer(samples=3, base_samples=4).base_probs(model, task, EXAMPLES, seed=0)
    assert with_dropout.shape == (5, 4, 2) and with_dropout.var(1).sum() > 0  # BERT's own dropout
