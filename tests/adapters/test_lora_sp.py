"""LoRA-SP: exactly half trainable, frozen half never moves, optimizer state halves, masks are seeded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from loracle.adapters import LoRAConfig, LoRASPConfig, adapter_layers, apply_adapter, trainable_parameters
from loracle.adapters.lora_sp import LoRASPLayer
from loracle.adapters.lora_sp.mask import LAYOUTS, assemble, split_matrix
from adapter_helpers import build, randomize, train_steps
from tiny_models import tiny_bert

MODES = ["element", "row", "column"]


def sp_layer(in_features: int, out_features: int, rank: int, mode: str, seed: int = 0) -> LoRASPLayer:
    config = LoRASPConfig(rank=rank, mask_mode=mode)
    return LoRASPLayer(nn.Linear(in_features, out_features), config, torch.Generator().manual_seed(seed))


def moment_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of AdamW's two moment tensors (``exp_avg``, ``exp_avg_sq``) over all parameters."""
    return sum(s[k].numel() * s[k].element_size() for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq"))


@pytest.mark.parametrize("mode", MODES)
def test_exactly_half_trainable_on_a_model(mode):
    lora = apply_adapter(tiny_bert(), LoRAConfig(rank=4, target_modules=["query", "value", "dense"]))
    sp = apply_adapter(tiny_bert(), LoRASPConfig(rank=4, target_modules=["query", "value", "dense"], mask_mode=mode))
    n_lora, n_sp = trainable_parameters(lora), trainable_parameters(sp)
    # per block: query, value, attention-output dense (32→32) and the FFN's two dense layers (32↔64); plus the pooler
    assert n_lora == 2 * (3 * 4 * (32 + 32) + 2 * 4 * (32 + 64)) + 4 * (32 + 32)
    assert n_sp * 2 == n_lora
    names = {n.rsplit(".", 1)[-1] for n, p in sp.named_parameters() if p.requires_grad}
    assert names == {"lora_A_trainable", "lora_B_trainable"}


@pytest.mark.parametrize(
    "mode, a_train, b_train",
    [
        # nn.Linear(5, 7), rank 3: A is 3×5, B is 7×3. A trains floor(n / 2) of its n units (entries, rows,
        # columns); B trains floor(21 / 2) entries in every mode (block layout: 4 rows × 1 column + 3 rows × 2).
        ("element", 15 // 2, 21 // 2),
        ("row", (3 // 2) * 5, 21 // 2),
        ("column", 3 * (5 // 2), 21 // 2),
    ],
)
def test_odd_sizes_train_floor_half(mode, a_train, b_train):
    layer = sp_layer(5, 7, 3, mode)
    assert layer.lora_A_trainable.numel() == a_train
    assert layer.lora_B_trainable.numel() == b_train
    assert layer.lora_A().shape == (3, 5) and layer.lora_B().shape == (7, 3)


@pytest.mark.parametrize("mode", MODES)
def test_mask_structure(mode):
    layer = sp_layer(6, 10, 4, mode)
    with torch.no_grad():
        layer.lora_A_trainable.fill_(float("nan"))
        layer.lora_B_trainable.fill_(float("nan"))
    a_mask, b_mask = layer.lora_A().isnan(), layer.lora_B().isnan()  # True where trainable
    assert a_mask.sum() == 12 and b_mask.sum() == 20
    if mode == "row":
        assert a_mask.all(1).sum() == 2 and a_mask.any(1).sum() == 2  # whole rows of A
    if mode == "column":
        assert a_mask.all(0).sum() == 3 and a_mask.any(0).sum() == 3  # whole columns of A
    if mode == "element":
        # some row and some column are partly trainable: not structured (checked for this seed)
        assert a_mask.any(1).sum() > a_mask.all(1).sum() and a_mask.any(0).sum() > a_mask.all(0).sum()
    # B (10 × 4) is zero where frozen: every row trains 2 of its 4 entries and every rank column some outputs
    assert b_mask.sum(1).tolist() == [2] * 10 and b_mask.any(0).all()
    if mode != "element":
        # block layout: two complementary row patterns, each on half of the rows (5 × 2 + 5 × 2 entries)
        patterns = {tuple(row) for row in b_mask.tolist()}
        assert len(patterns) == 2 and sum(b_mask.all(0)) == 0
        first, second = (torch.tensor(p) for p in patterns)
        assert torch.equal(first, ~second) and b_mask.sum(0).tolist() == [5] * 4


def test_frozen_values_are_initial_values():
    lora = LoRAConfig.layer_class(nn.Linear(6, 10), LoRAConfig(rank=4), torch.Generator().manual_seed(3))
    sp = sp_layer(6, 10, 4, "element", seed=3)
    # the same generator stream initialises A first, so the full A equals plain LoRA's initial A
    assert torch.equal(sp.lora_A(), lora.lora_A())
    assert torch.equal(sp.lora_B(), torch.zeros(10, 4))


def test_split_assemble_round_trip_and_gradient():
    for shape in [(4, 6), (7, 3)]:
        matrix = torch.arange(float(shape[0] * shape[1])).view(shape)
        for layout, balance in [(layout, False) for layout in LAYOUTS] + [("element", True)]:
            trainable, frozen, index = split_matrix(matrix, layout, torch.Generator().manual_seed(0), balance)
            assert trainable.numel() == matrix.numel() // 2 or layout in ("row", "column")
            trainable.requires_grad_(True)
            full = assemble(trainable, frozen, index, layout, shape)
            assert torch.equal(full, matrix)
            full.sum().backward()
            assert torch.equal(trainable.grad, torch.ones_like(trainable))


def test_masks_are_seeded():
    def masks(seed: int) -> list[torch.Tensor]:
        model = apply_adapter(tiny_bert(), LoRASPConfig(rank=4, target_modules=["query"], seed=seed))
        return [layer.lora_A_index for _, layer in adapter_layers(model)]

    assert all(torch.equal(a, b) for a, b in zip(masks(0), masks(0)))
    assert not all(torch.equal(a, b) for a, b in zip(masks(0), masks(1)))
    first, second = masks(0)
    assert not torch.equal(first, second)  # layers get different masks


@pytest.mark.parametrize("mode", MODES)
def test_optimizer_state_exactly_half_and_frozen_entries_unchanged(mode, token_batch):
    cfg = dict(rank=4, target_modules=None, modules_to_save=[])
    lora = apply_adapter(build("bert"), LoRAConfig(**cfg))
    sp = apply_adapter(build("bert"), LoRASPConfig(mask_mode=mode, **cfg))
    randomize(sp)
    before = {n: (layer.lora_A().detach().clone(), layer.lora_B().detach().clone()) for n, layer in
              adapter_layers(sp)}
    opt_lora = train_steps(lora, token_batch, steps=3, weight_decay=0.1)
    opt_sp = train_steps(sp, token_batch, steps=3, weight_decay=0.1)
    assert moment_bytes(opt_sp) * 2 == moment_bytes(opt_lora) > 0
    for name, layer in adapter_layers(sp):
        a0, b0 = before[name]
        with torch.no_grad():
            layer.lora_A_trainable.fill_(float("nan"))
            layer.lora_B_trainable.fill_(float("nan"))
        a, b = layer.lora_A(), layer.lora_B()
        frozen_a, frozen_b = ~a.isnan(), ~b.isnan()
        assert frozen_a.sum() * 2 == a.numel() and frozen_b.sum() * 2 == b.numel()
        assert torch.equal(a[frozen_a], a0[frozen_a]) and torch.equal(b[frozen_b], b0[frozen_b])


@pytest.mark.parametrize("mode", LAYOUTS)
def test_assembled_linear_gradients_match_autograd(mode):
    from loracle.adapters.lora_sp.mask import assembled_linear

    gen = torch.Generator().manual_seed(0)
    matrix = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    trainable, frozen, index = split_matrix(matrix, mode, torch.Generator().manual_seed(1))
    assert index.dtype == torch.int32
    trainable.requires_grad_(True)
    x = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x_, t_: assembled_linear(x_, t_, frozen, index, mode, (5, 7)),
                                    (x, trainable))
    reference = torch.nn.functional.linear(x, assemble(trainable, frozen, index, mode, (5, 7)))
    torch.testing.assert_close(assembled_linear(x, trainable, frozen, index, mode, (5, 7)), reference)


def fit(layer: LoRASPLayer, steps: int = 5, lr: float = 1e-2, seed: int = 0) -> None:
    """``steps`` Adam steps (no weight decay, so only a non-zero gradient moves an entry) of the update
    ``layer(x) - W0 x`` towards a random full-rank ``W* x``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, layer.in_features, generator=gen)
    target = x @ torch.randn(layer.out_features, layer.in_features, generator=gen).T
    with torch.no_grad():
        base = layer.base_layer(x)
    opt = torch.optim.Adam([layer.lora_A_trainable, layer.lora_B_trainable], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        ((layer(x) - base - target) ** 2).mean().backward()
        opt.step()


# (in, out, rank): even sizes, odd sizes, and rank 2 where a uniform element draw leaves about a quarter of B's
# rows (outputs) with no trainable entry.
SHAPES = [(12, 10, 4), (9, 7, 3), (12, 40, 2)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
def test_every_trainable_entry_learns(mode, shape):
    in_features, out_features, rank = shape
    layer = sp_layer(in_features, out_features, rank, mode)
    a0, b0 = layer.lora_A_trainable.detach().clone(), layer.lora_B_trainable.detach().clone()
    fit(layer)
    # B starts at zero, so A's entries get gradient from the second step on, through B's trainable entries
    assert (layer.lora_A_trainable != a0).all() and (layer.lora_B_trainable != b0).all()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
def test_update_keeps_full_rank_and_reaches_every_output(mode, shape):
    in_features, out_features, rank = shape
    layer = sp_layer(in_features, out_features, rank, mode)
    fit(layer)
    delta = (layer.lora_B().double() @ layer.lora_A().double()).detach()  # (out, in), in float64 for the rank
    assert torch.linalg.matrix_rank(delta).item() == rank
    assert (delta.abs().sum(1) > 0).all()  # no output row pinned at zero by a frozen row of B
    assert (delta.abs().sum(0) > 0).all()


def grads_under(layer: LoRASPLayer, x: torch.Tensor, autocast: bool, backward_inside: bool) -> list[torch.Tensor]:
    layer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
        if backward_inside:
            y.float().square().sum().backward()
    if not backward_inside:
        y.float().square().sum().backward()  # outside autocast, as accelerate and GradScaler do
    assert y.dtype == (torch.bfloat16 if autocast else torch.float32)
    return [layer.lora_A_trainable.grad.clone(), layer.lora_B_trainable.grad.clone()]


@pytest.mark.parametrize("backward_inside", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_bf16_autocast_trains(mode, backward_inside):
    layer = sp_layer(16, 12, 4, mode)
    layer.base_layer.requires_grad_(False)
    with torch.no_grad():
        layer.lora_B_trainable.normal_(generator=torch.Generator().manual_seed(1))  # so A gets a gradient
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(2))
    reference = grads_under(layer, x, autocast=False, backward_inside=False)
    mixed = grads_under(layer, x, autocast=True, backward_inside=backward_inside)
    for got, want in zip(mixed, reference):
        assert got.dtype == torch.float32
        # bf16 keeps 8 mantissa bits: a few relative percent on sums of 15 products
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05 * want.abs().max().item())


def test_train_loop_with_bf16_mixed_precision(tokenizer):
    from loracle.data import Example
    from loracle.tasks import ClassificationTask
    from loracle.training import TrainConfig, train

    texts = [("a good movie", 1), ("the plot was dull", 0), ("fun film", 1), ("boring", 0)] * 2
    examples = [Example(str(i), text, label=label) for i, (text, label) in enumerate(texts)]
    model = apply_adapter(tiny_bert(), LoRASPConfig(rank=4, mask_mode="column", modules_to_save=["classifier"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    task = ClassificationTask(tokenizer, label_names=["neg", "pos"])
    result = train(model, task, examples, TrainConfig(epochs=1, batch_size=4, lr=1e-2, mixed_precision="bf16",
                                                       progress=False))
    assert result.steps == 2
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(moved) == len(before)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("mode", MODES)
def test_rank_one_is_rejected(mode):
    # a rank-1 B is one column: freezing half of it pins half of the outputs at zero
    with pytest.raises(ValueError, match=r"LoRA-SP needs rank >= 2"):
        LoRASPConfig(rank=1, mask_mode=mode)
