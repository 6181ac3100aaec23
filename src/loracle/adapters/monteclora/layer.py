"""MonteCLoRA layer: LoRA whose ``A`` is the mean of a posterior sampled during training and on request."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loracle.adapters.base import AdapterConfig, AdapterLayer
from loracle.adapters.lora.layer import init_lora_A
from loracle.adapters.monteclora import sampler


class MonteCLoRALayer(AdapterLayer):
    """``x ↦ W0 x + (alpha / r) · B A_eff x`` with ``A`` a posterior mean (MonteCLoRA, arXiv 2411.04358 §3;
    METHODS.md §3).

    Per layer, besides ``lora_A_weight`` (``r × in``) and ``lora_B_weight`` (``out × r``), two trainable vectors:
    ``monte_sigma`` ``σ ∈ R^r`` (covariance log-scale) and ``monte_pi`` ``π ∈ R^N`` (mixture log-concentrations).
    A sampled forward draws

    - ``W ~ Wishart(r, I_r)`` (Bartlett), ``Σ = diag(clip(exp(2σ) ⊙ diag W, min=1e-3))``;
    - ``w ≈ Dirichlet(exp π)`` by the logistic-normal approximation;
    - ``A_effᵀ = Σ_n w_n (Aᵀ + s Z_n chol Σ) = Aᵀ + s ‖w‖₂ Z chol Σ``.

    The last equality is in distribution: for iid ``Z_n ~ N(0, I)`` (``in × r``) and fixed weights, ``Σ_n w_n Z_n``
    is Gaussian with iid entries of variance ``Σ_n w_n² = ‖w‖₂²``, i.e. distributed as ``‖w‖₂ Z`` for one standard
    normal ``Z``. So one ``in × r`` matrix is drawn per step instead of ``N`` (the reference code pre-generates and
    stores a ``buffer × N × in × r`` tensor). The gradient w.r.t. ``π`` flows through ``‖w‖₂``, w.r.t. ``σ`` through
    ``chol Σ = diag(sqrt Σ)``; ``Σ_n w_n = 1`` keeps ``A`` the mean.

    Sampling happens when ``self.training or self.sample_posterior``; otherwise the forward is plain LoRA at the
    posterior mean (mergeable, no extra cost). Draws use the global torch RNG, so ``torch.manual_seed`` reproduces
    them. The ``Σ`` and ``w`` of the last sampled forward are kept for :meth:`aux_loss`.

    Several posterior draws in one forward: set ``posterior_draws = S`` (default 1) and pass a batch made of ``S``
    equal consecutive chunks along dim 0 (``[copy0; copy1; ...]``, as a batch repeated ``S`` times); chunk ``s`` then
    uses its own draw ``A_eff^(s)``. Used for MC prediction with ``S`` samples in one batched pass.
    """

    has_posterior = True

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, generator: torch.Generator) -> None:
        super().__init__(base_layer, config, generator)
        dtype = base_layer.weight.dtype if base_layer.weight.is_floating_point() else torch.float32
        self.num_samples: int = config.num_samples  # type: ignore[attr-defined]
        self.sample_scale: float = config.sample_scale  # type: ignore[attr-defined]
        self.lora_A_weight = nn.Parameter(init_lora_A(self.rank, self.in_features, generator).to(dtype))
        self.lora_B_weight = nn.Parameter(torch.zeros(self.out_features, self.rank, dtype=dtype))
        # U(0, 1) initialisation of both vectors, as in the reference implementation.
        self.monte_sigma = nn.Parameter(torch.rand(self.rank, generator=generator))
        self.monte_pi = nn.Parameter(torch.rand(self.num_samples, generator=generator))
        self._last_cov: torch.Tensor | None = None  # (r,) diagonal of Σ from the last sampled forward
        self._last_weights: torch.Tensor | None = None  # (N,) w from the last sampled forward
        self.posterior_draws = 1

    def lora_A(self) -> torch.Tensor:
        return self.lora_A_weight

    def lora_B(self) -> torch.Tensor:
        return self.lora_B_weight

    @property
    def stochastic(self) -> bool:
        return self.training or super().stochastic

    def sample_A(self) -> torch.Tensor:
        """One posterior draw ``A_eff`` of shape ``(r, in)`` (differentiable in ``A``, ``σ`` and ``π``).

        Also records ``Σ`` and ``w`` of this draw for :meth:`aux_loss`.
        """
        a = self.lora_A_weight
        device = a.device
        wishart = sampler.bartlett_wishart(self.rank, device=device)  # (r, r)
        cov = sampler.sampled_covariance(self.monte_sigma, wishart)  # (r,)
        weights = sampler.logistic_normal_weights(self.monte_pi, torch.randn(self.num_samples, device=device))  # (N,)
        self._last_cov, self._last_weights = cov, weights
        z = torch.randn(self.rank, self.in_features, device=device, dtype=a.dtype)  # Zᵀ, (r, in)
        row_scale = (self.sample_scale * weights.norm() * cov.sqrt()).to(a.dtype)  # (r,) = s ‖w‖ diag(chol Σ)
        return torch.addcmul(a, row_scale.unsqueeze(-1), z)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training or self.sample_posterior):
            a = self.lora_A_weight
        elif self.posterior_draws > 1:
            return self._multi_draw_forward(x, self.posterior_draws)
        else:
            a = self.sample_A()
        return F.linear(F.linear(x, a) * self.scaling, self.lora_B_weight)

    def _multi_draw_forward(self, x: torch.Tensor, draws: int) -> torch.Tensor:
        if x.shape[0] % draws:
            raise ValueError(
                f"posterior_draws={draws} needs a batch made of {draws} equal chunks, got batch size {x.shape[0]}"
            )
        a = torch.stack([self.sample_A() for _ in range(draws)])  # (S, r, in)
        xs = x.reshape(draws, -1, x.shape[-1])  # (S, M, in), M = rows per draw × remaining dims
        h = torch.bmm(xs, a.transpose(1, 2)) * self.scaling  # (S, M, r)
        out = F.linear(h, self.lora_B_weight)  # (S, M, out)
        return out.reshape(*x.shape[:-1], self.out_features)

    def kl_terms(self) -> dict[str, torch.Tensor]:
        """The three KL terms (before ``kl_weight``), each a scalar.

        ``dirichlet``: ``KL(Dir(exp π) ‖ Dir(α0 · 1))``; ``wishart``: ``½(−r tr log V + r tr V − r²)``,
        ``V = diag(exp 2σ)``; ``gaussian``: ``N · ½(tr Σ − tr log Σ − r)`` with ``Σ`` from the last sampled forward
        (``Σ = I``, so zero, before any).
        """
        cfg = self.config
        alpha = torch.exp(self.monte_pi)
        alpha0 = torch.full_like(alpha, cfg.prior_concentration)  # type: ignore[attr-defined]
        cov = self._last_cov if self._last_cov is not None else torch.ones_like(self.monte_sigma)
        return {
            "dirichlet": sampler.dirichlet_kl(alpha, alpha0),
            "wishart": sampler.wishart_kl(self.monte_sigma),
            "gaussian": sampler.gaussian_kl(cov, self.num_samples),
        }

    def aux_loss(self) -> torch.Tensor:
        """``kl_weight · (KL_Dir + KL_Wishart + KL_Gauss) + entropy_weight · Σ_n w_n²``.

        ``KL_Gauss`` and the ``Σ w_n²`` term use ``Σ`` and ``w`` of the last sampled forward (the training step's
        own forward when the loop calls this after it); before any sampled forward they are ``Σ = I`` and no entropy
        term. Call it once per sampled forward: it reuses that forward's graph.
        """
        cfg = self.config
        kl = self.kl_terms()
        loss = cfg.kl_weight * (kl["dirichlet"] + kl["wishart"] + kl["gaussian"])  # type: ignore[attr-defined]
        if cfg.entropy_weight and self._last_weights is not None:  # type: ignore[attr-defined]
            loss = loss + cfg.entropy_weight * self._last_weights.square().sum()  # type: ignore[attr-defined]
        return loss

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, N={self.num_samples}, s={self.sample_scale}"
