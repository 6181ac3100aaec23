"""MonteCLoRA: closed-form KL terms, the samplers' statistics, the one-Z noise, aux loss and batched draws."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loracle.adapters import MonteCLoRAConfig, adapter_layers, apply_adapter, aux_loss
from loracle.adapters.monteclora import MonteCLoRALayer
from loracle.adapters.monteclora import sampler
from tiny_models import tiny_bert


def layer(in_features: int = 32, out_features: int = 16, **fields) -> MonteCLoRALayer:
    config = MonteCLoRAConfig(rank=fields.pop("rank", 4), **fields)
    out = MonteCLoRALayer(nn.Linear(in_features, out_features), config, torch.Generator().manual_seed(0))
    with torch.no_grad():
        out.lora_B_weight.normal_(generator=torch.Generator().manual_seed(1))
    return out


def test_config_defaults_and_validation():
    cfg = MonteCLoRAConfig()
    assert (cfg.num_samples, cfg.sample_scale, cfg.kl_weight, cfg.prior_concentration, cfg.entropy_weight) == (
        8, 1e-4, 1e-5, 0.1, 0.0)
    with pytest.raises(ValueError) as err:
        MonteCLoRAConfig(num_samples=0, sample_scale=-1, prior_concentration=0.0, kl_weight=-2)
    text = str(err.value)
    for field in ("num_samples", "sample_scale", "prior_concentration", "kl_weight"):
        assert field in text


def test_dirichlet_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        alpha = torch.rand(8, generator=gen).exp()
        alpha0 = torch.full((8,), 0.1)
        expected = torch.distributions.kl_divergence(
            torch.distributions.Dirichlet(alpha), torch.distributions.Dirichlet(alpha0))
        torch.testing.assert_close(sampler.dirichlet_kl(alpha, alpha0), expected, rtol=1e-5, atol=1e-5)
    # KL of a distribution to itself is zero
    assert abs(sampler.dirichlet_kl(alpha0, alpha0).item()) < 1e-5


def test_wishart_and_gaussian_kl_closed_forms():
    r, c, n = 4, 0.5, 8
    assert sampler.wishart_kl(torch.zeros(r)).item() == 0.0
    # σ = c·1: ½(−r·2cr + r·r·e^{2c} − r²) = (r²/2)(e^{2c} − 2c − 1)
    assert math.isclose(sampler.wishart_kl(torch.full((r,), c)).item(), r * r / 2 * (math.e - 2), rel_tol=1e-6)
    assert sampler.gaussian_kl(torch.ones(r), n).item() == 0.0
    # Σ = 2I: N·½(2r − r·ln 2 − r)
    assert math.isclose(sampler.gaussian_kl(torch.full((r,), 2.0), n).item(), n / 2 * (r - r * math.log(2)),
                        rel_tol=1e-6)


def test_bartlett_wishart_moments():
    torch.manual_seed(0)
    r, draws = 3, 4000
    w = sampler.bartlett_wishart(r, batch=(draws,))  # (draws, r, r)
    assert sampler.bartlett_wishart(r).shape == (r, r)
    assert torch.equal(w, w.transpose(1, 2))
    # Wishart(df=r, I): E[W] = r·I, Var(W_ii) = 2r, Var(W_ij) = r (i ≠ j)
    mean = w.mean(0)
    torch.testing.assert_close(mean.diagonal(), torch.full((r,), float(r)), rtol=0, atol=0.25)
    off = mean[~torch.eye(r, dtype=torch.bool)]
    assert off.abs().max() < 0.2
    assert abs(w[:, 0, 0].var().item() - 2 * r) < 0.15 * 2 * r
    assert abs(w[:, 0, 1].var().item() - r) < 0.15 * r


def test_logistic_normal_weights():
    pi = torch.tensor([0.0, 1.0, -1.0, 0.5])
    w0 = sampler.logistic_normal_weights(pi, torch.zeros(4))
    torch.testing.assert_close(w0, pi.exp() / pi.exp().sum())  # z = 0: the mean logits, α / Σα
    w = sampler.logistic_normal_weights(pi, torch.randn(4, generator=torch.Generator().manual_seed(0)))
    assert math.isclose(w.sum().item(), 1.0, rel_tol=1e-6) and (w > 0).all()


def test_one_gaussian_equals_weighted_sum_in_distribution():
    """Σ_n w_n Z_n has iid entries of variance ‖w‖²: the identity behind drawing a single Z."""
    gen = torch.Generator().manual_seed(0)
    w = torch.softmax(torch.randn(8, generator=gen), 0)
    z = torch.randn(8, 200_000, generator=gen)
    mixed = (w[:, None] * z).sum(0)
    assert abs(mixed.var().item() / w.square().sum().item() - 1) < 0.02
    assert abs(mixed.mean().item()) < 0.01


def test_sampled_A_has_right_mean_and_scale():
    lay = layer(sample_scale=0.1)
    a = lay.lora_A_weight.detach()
    torch.manual_seed(0)
    standardized, samples = [], []
    with torch.no_grad():
        for _ in range(400):
            a_eff = lay.sample_A()
            scale = 0.1 * lay._last_weights.norm() * lay._last_cov.sqrt()  # (r,) s‖w‖ diag(chol Σ)
            standardized.append((a_eff - a) / scale[:, None])
            samples.append(a_eff)
    z = torch.stack(standardized)  # (400, r, in): should be iid N(0, 1)
    assert abs(z.mean().item()) < 0.02
    assert abs(z.std().item() - 1) < 0.02
    noise_sd = (torch.stack(samples) - a).std(0)  # per entry
    assert ((torch.stack(samples).mean(0) - a).abs() < 5 * noise_sd / math.sqrt(400)).all()  # E[A_eff] = A


def test_sampling_reproducible_and_gradients_flow():
    lay = layer(sample_scale=0.1)
    torch.manual_seed(3)
    first = lay.sample_A()
    torch.manual_seed(3)
    second = lay.sample_A()
    assert torch.equal(first, second)
    (first * torch.randn_like(first)).sum().backward()
    for p in (lay.lora_A_weight, lay.monte_sigma, lay.monte_pi):
        assert p.grad is not None and p.grad.abs().sum() > 0 and p.grad.isfinite().all()


def test_eval_is_plain_lora_and_train_samples():
    lay = layer(sample_scale=0.1)
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(2))
    expected = lay.base_layer(x) + F.linear(F.linear(x, lay.lora_A_weight) * lay.scaling, lay.lora_B_weight)
    lay.eval()
    torch.testing.assert_close(lay(x), expected, rtol=0, atol=0)
    lay.train()
    assert (lay(x) - expected).abs().max() > 1e-4
    lay.eval()
    lay.sample_posterior = True
    assert (lay(x) - expected).abs().max() > 1e-4


def test_aux_loss_matches_hand_computation_and_is_differentiable():
    lay = layer(kl_weight=0.01, entropy_weight=0.5)
    # before any sampled forward: Σ = I (no Gaussian KL) and no entropy term
    alpha = lay.monte_pi.detach().exp()
    kl_dir = torch.distributions.kl_divergence(
        torch.distributions.Dirichlet(alpha), torch.distributions.Dirichlet(torch.full((8,), 0.1)))
    s = lay.monte_sigma.detach()
    kl_w = 0.5 * (-4 * (2 * s).sum() + 4 * (2 * s).exp().sum() - 16)
    torch.testing.assert_close(lay.aux_loss(), 0.01 * (kl_dir + kl_w), rtol=1e-5, atol=1e-7)
    lay.train()
    torch.manual_seed(0)
    lay(torch.randn(3, 32))
    cov, w = lay._last_cov.detach(), lay._last_weights.detach()
    kl_g = 8 * 0.5 * (cov.sum() - cov.log().sum() - 4)
    loss = lay.aux_loss()
    torch.testing.assert_close(loss, 0.01 * (kl_dir + kl_w + kl_g) + 0.5 * w.square().sum(), rtol=1e-5, atol=1e-7)
    assert loss.isfinite()
    loss.backward()
    assert lay.monte_sigma.grad.abs().sum() > 0 and lay.monte_pi.grad.abs().sum() > 0


def test_model_aux_loss_is_mean_over_layers(token_batch):
    model = apply_adapter(tiny_bert(), MonteCLoRAConfig(rank=4, target_modules=["query", "value"]))
    model.train()
    torch.manual_seed(0)
    model(**token_batch)
    per_layer = torch.stack([layer.aux_loss() for _, layer in adapter_layers(model)])
    assert per_layer.shape == (4,)
    torch.testing.assert_close(aux_loss(model), per_layer.mean())
    n_extra = sum(p.numel() for n, p in model.named_parameters() if ".monte_" in n)
    assert n_extra == 4 * (4 + 8)  # σ ∈ R^r and π ∈ R^N per layer


def test_batched_posterior_draws_match_sequential_draws():
    lay = layer(sample_scale=0.5)
    lay.eval()
    lay.sample_posterior = True
    x = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(4))  # (B, T, in)
    torch.manual_seed(7)
    singles = [lay(x) for _ in range(3)]
    lay.posterior_draws = 3
    torch.manual_seed(7)
    batched = lay(x.repeat(3, 1, 1)).view(3, 2, 3, 16)  # (S, B, T, out)
    for s in range(3):
        torch.testing.assert_close(batched[s], singles[s], rtol=1e-5, atol=1e-6)
    assert (batched[0] - batched[1]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="posterior_draws=3 needs a batch made of 3 equal chunks"):
        lay(torch.randn(4, 32))
