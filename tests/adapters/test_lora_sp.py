"""LoRA-SP: exactly half trainable, frozen half never moves, optimizer state halves, masks are seeded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from loracle.adapters import LoRAConfig, LoRASPConfig, adapter_layers, apply_adapter, trainable_parameters
from loracle.adapters.lora_sp import LoRASPLayer
from loracle.adapters.lora_sp.mask import assemble, split_matrix
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
        # nn.Linear(5, 7), rank 3: A is 3×5, B is 7×3; the trainable part is floor(n / 2) of the n units.
        ("element", 15 // 2, 21 // 2),
        ("row", (3 // 2) * 5, (7 // 2) * 3),
        ("column", 3 * (5 // 2), 7 * (3 // 2)),
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
        assert a_mask.all(1).sum() == 2 and a_mask.any(1).sum() == 2  # whole rows
        assert b_mask.all(1).sum() == 5 and b_mask.any(1).sum() == 5
    if mode == "column":
        assert a_mask.all(0).sum() == 3 and a_mask.any(0).sum() == 3  # whole columns
        assert b_mask.all(0).sum() == 2 and b_mask.any(0).sum() == 2
    if mode == "element":
        # some row and some column are partly trainable: not structured (checked for this seed)
        assert a_mask.any(1).sum() > a_mask.all(1).sum() and a_mask.any(0).sum() > a_mask.all(0).sum()


def test_frozen_values_are_initial_values():
    lora = LoRAConfig.layer_class(nn.Linear(6, 10), LoRAConfig(rank=4), torch.Generator().manual_seed(3))
    sp = sp_layer(6, 10, 4, "element", seed=3)
    # the same generator stream initialises A first, so the full A equals plain LoRA's initial A
    assert torch.equal(sp.lora_A(), lora.lora_A())
    assert torch.equal(sp.lora_B(), torch.zeros(10, 4))


def test_split_assemble_round_trip_and_gradient():
    matrix = torch.arange(24.0).view(4, 6)
    for mode in MODES:
        trainable, frozen, index = split_matrix(matrix, mode, torch.Generator().manual_seed(0))
        trainable.requires_grad_(True)
        full = assemble(trainable, frozen, index, mode, (4, 6))
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


@pytest.mark.parametrize("mode", MODES)
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
