"""LP-FT: the classification head fitted as a linear probe before fine-tuning."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_bert

from loracle import LoRAConfig, apply_adapter
from loracle.data import Example
from loracle.tasks import build_task
from loracle.training import TrainConfig, train
from loracle.training.head_probe import fit_probe, head_features, init_head_from_probe, output_linear

WORDS = ["good fun great", "bad dull awful", "red blue green", "one two three"]
EXAMPLES = [Example(str(i), f"{WORDS[i % 4]} movie {i % 3}", label=i % 4) for i in range(32)]


@pytest.fixture
def task(tokenizer):
    return build_task("classification", tokenizer, label_names=["a", "b", "c", "d"], max_length=16)


def adapted(seed: int = 0) -> torch.nn.Module:
    model = tiny_bert(seed=seed, num_labels=4)
    apply_adapter(model, LoRAConfig(rank=4, alpha=8, dropout=0.0, modules_to_save=["classifier"]))
    return model


def test_fit_probe_matches_a_direct_fit_on_raw_features() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=generator) * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0]) + 4.0
    y = (x[:, 0] + x[:, 1] / 10 > 4.5).long() + (x[:, 3] > 4.0).long()
    weight, bias = fit_probe(x, y, 3, l2=0.01)
    # the returned head acts on raw features: its loss there equals the standardised problem's optimum, so
    # perturbing it in any direction cannot lower the penalised objective by more than rounding
    scale = (x.double() - x.double().mean(0)).pow(2).mean().sqrt()

    def objective(w: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.nn.functional.cross_entropy(x.double() @ w.T + b, y) + 0.01 * (w * scale).pow(2).sum())

    best = objective(weight, bias)
    for _ in range(20):
        dw = torch.randn(weight.shape, generator=generator, dtype=torch.float64) * 1e-3
        db = torch.randn(bias.shape, generator=generator, dtype=torch.float64) * 1e-3
        assert objective(weight + dw, bias + db) >= best - 1e-9
    accuracy = float(((x.double() @ weight.T + bias).argmax(1) == y).double().mean())
    assert accuracy > 0.7  # an ordinal target of two thresholds; the majority class is under half
    # more L2, smaller standardised weights
    heavy, _ = fit_probe(x, y, 3, l2=1.0)
    assert (heavy * scale).norm() < (weight * scale).norm()
    # no bias: fitted through the origin
    only, none = fit_probe(x, y, 3, l2=0.01, bias=False)
    assert none is None and only.shape == (3, 5)


def test_init_head_from_probe_sets_the_output_layer(task) -> None:
    model = adapted()
    layer = output_linear(model, 4)
    assert layer is model.classifier
    before = layer.weight.detach().clone()
    init_head_from_probe(model, task, EXAMPLES, l2=0.01, batch_size=8, device=torch.device("cpu"))
    assert not torch.equal(before, layer.weight)
    features = head_features(model, task, EXAMPLES, layer, batch_size=8, device=torch.device("cpu"))
    weight, bias = fit_probe(features, torch.tensor([e.label for e in EXAMPLES]), 4, l2=0.01)
    torch.testing.assert_close(layer.weight.detach(), weight.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.bias.detach(), bias.float(), atol=1e-5, rtol=1e-4)
    model.eval()
    with torch.no_grad():
        accuracy = float((task.class_logits(model, task.collate(EXAMPLES)).argmax(1)
                          == torch.tensor([e.label for e in EXAMPLES])).float().mean())
    assert accuracy > 0.9  # the probe alone separates the four word groups


def test_probe_start_trains_and_is_validated(task, tokenizer) -> None:
    plain, probed = adapted(), adapted()
    config = TrainConfig(epochs=1, batch_size=8, lr=1e-3, progress=False)
    first = train(plain, task, EXAMPLES, config).history[0]["train_loss"]
    second = train(probed, task, EXAMPLES, config.replace(head_init="probe")).history[0]["train_loss"]
    assert second < first - 0.2  # the probe's head starts far below the random head's log(4)
    with pytest.raises(ValueError, match="head_init must be one of"):
        TrainConfig(head_init="zeros")
    mc = build_task("multiple_choice", tokenizer, max_length=16)
    with pytest.raises(ValueError, match="head_init='probe' fits a classification head"):
        train(adapted(), mc, EXAMPLES, config.replace(head_init="probe"))


def test_output_linear_needs_a_trainable_head() -> None:
    model = tiny_bert(num_labels=4)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with pytest.raises(ValueError, match="needs a trainable linear output layer with 4 outputs"):
        output_linear(model, 4)


def test_choose_l2_follows_the_data() -> None:
    generator = torch.Generator().manual_seed(1)
    # separable with many examples: little penalty; pure noise: the largest penalty (predict the prior)
    x = torch.randn(200, 4, generator=generator)
    clean = (x[:, 0] > 0).long()
    noise = torch.randint(0, 2, (200,), generator=generator)
    assert fit_l2(x, clean) < fit_l2(x, noise) and fit_l2(x, noise) >= 1.0


def fit_l2(x: torch.Tensor, y: torch.Tensor) -> float:
    from loracle.training.head_probe import choose_l2

    return choose_l2(x, y, 2, seed=0)


def test_train_cross_validates_the_probe_penalty(task) -> None:
    result = train(adapted(), task, EXAMPLES, TrainConfig(epochs=1, batch_size=8, head_init="probe",
                                                          progress=False))
    from loracle.training.head_probe import L2_GRID

    assert result.probe_l2 in L2_GRID
    fixed = train(adapted(), task, EXAMPLES, TrainConfig(epochs=1, batch_size=8, head_init="probe", probe_l2=0.5,
                                                         progress=False))
    assert fixed.probe_l2 == 0.5


def test_auto_head_init_probes_many_or_rare_classes(task) -> None:
    auto = TrainConfig(head_init="auto")
    assert auto.resolve_head_init([0, 1] * 10, 2) == "random"  # two balanced classes
    assert auto.resolve_head_init([0] * 15 + [1] * 5, 2) == "random"  # exactly a quarter
    assert auto.resolve_head_init([0] * 16 + [1] * 4, 2) == "probe"  # rarer than a quarter
    assert auto.resolve_head_init([0, 1, 2] * 5, 3) == "probe"  # more than two classes
    assert auto.resolve_head_init([0, 1], None) == "random"  # no classes
    assert TrainConfig(head_init="probe").resolve_head_init([0, 1] * 10, 2) == "probe"
    result = train(adapted(), task, EXAMPLES, TrainConfig(epochs=1, batch_size=8, head_init="auto",
                                                          progress=False))
    assert result.head_init == "probe" and result.probe_l2 is not None  # four classes
