"""MonteCLoRA's random draws and closed-form KL terms (MonteCLoRA, arXiv 2411.04358; METHODS.md §3).

Pure tensor functions, no module state. Every draw uses the global torch RNG on the given device, so a caller's
``torch.manual_seed`` (for example :func:`loracle.uncertainty.sampling.mc_probs`'s ``seed``) makes sampling
reproducible, exactly as it does for dropout.
"""

from __future__ import annotations

import torch

# Lower clip of the sampled covariance diagonal, as in the reference implementation.
COV_EPS = 1e-3


def bartlett_wishart(r: int, df: float | None = None, *, batch: tuple[int, ...] = (),
                     device: torch.device | None = None) -> torch.Tensor:
    """Draw ``W ~ Wishart(df, I_r)`` by the Bartlett decomposition ``W = L Lᵀ``.

    ``L`` is lower triangular with ``L_ii = sqrt(c_i)``, ``c_i ~ χ²(df − i)`` (``i = 0..r−1``) and ``L_ij ~ N(0, 1)``
    below the diagonal. No gradient flows through it.

    Args:
        r: matrix size.
        df: degrees of freedom (``> r − 1``); defaults to ``r``.
        batch: leading shape for several independent draws.

    Returns:
        ``(*batch, r, r)`` float32 symmetric positive definite matrices.
    """
    df = float(r) if df is None else float(df)
    dofs = df - torch.arange(r, dtype=torch.float32, device=device)  # (r,)
    chi2 = 2.0 * torch._standard_gamma((dofs / 2.0).expand(*batch, r))  # χ²(k) = 2 · Gamma(k/2, 1)
    lower = torch.randn(*batch, r, r, device=device).tril(-1) + torch.diag_embed(chi2.sqrt())  # (*batch, r, r)
    return lower @ lower.transpose(-1, -2)


def sampled_covariance(sigma: torch.Tensor, wishart: torch.Tensor) -> torch.Tensor:
    """Diagonal of ``Σ = diag(clip(diag(D W D), min=1e-3))`` with ``D = diag(exp σ)``.

    Since ``D`` is diagonal, ``diag(D W D)_i = exp(2 σ_i) W_ii``; only the diagonal is formed.

    Args:
        sigma: ``(r,)`` log-scales ``σ``.
        wishart: ``(r, r)`` draw ``W``.

    Returns:
        ``(r,)`` the diagonal of ``Σ`` (differentiable in ``σ`` where not clipped).
    """
    return (torch.exp(2.0 * sigma) * wishart.diagonal().to(sigma.dtype)).clamp(min=COV_EPS)


def logistic_normal_weights(pi: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mixture weights ``w ≈ Dirichlet(exp π)`` by the logistic-normal (Laplace) approximation.

    ``μ = log α − mean(log α)``, ``Σ_w = diag((1/α)(1 − 2/N) + (1/N²) Σ_k 1/α_k)``, ``w = softmax(μ + chol(Σ_w) z)``.

    Args:
        pi: ``(N,)`` log-concentrations ``π`` (``α = exp π``).
        z: ``(N,)`` standard normal draw.

    Returns:
        ``(N,)`` weights on the simplex.
    """
    n = pi.shape[-1]
    inv_alpha = torch.exp(-pi)
    mu = pi - pi.mean()
    var = inv_alpha * (1.0 - 2.0 / n) + inv_alpha.sum() / n**2
    return torch.softmax(mu + var.clamp(min=1e-6).sqrt() * z, dim=-1)


def dirichlet_kl(alpha: torch.Tensor, alpha0: torch.Tensor) -> torch.Tensor:
    """Textbook ``KL(Dir(α) ‖ Dir(α0))``.

    ``lnΓ(Σα) − lnΓ(Σα0) − Σ lnΓ(α) + Σ lnΓ(α0) + Σ (α − α0)(ψ(α) − ψ(Σα))``. This equals
    ``torch.distributions.kl_divergence`` and is ``>= 0``. The reference implementation writes ``+ Σ(lnΓ(α) −
    lnΓ(α0))``, the opposite sign on that sum, which is not a KL divergence (it can be negative).

    Args:
        alpha: ``(N,)`` posterior concentrations.
        alpha0: ``(N,)`` prior concentrations.

    Returns:
        Scalar.
    """
    a_sum = alpha.sum()
    return (
        torch.lgamma(a_sum) - torch.lgamma(alpha0.sum())
        - (torch.lgamma(alpha) - torch.lgamma(alpha0)).sum()
        + ((alpha - alpha0) * (torch.digamma(alpha) - torch.digamma(a_sum))).sum()
    )


def wishart_kl(sigma: torch.Tensor) -> torch.Tensor:
    """``½ (−r · tr(log V) + r · tr(V) − r²)`` with ``V = diag(exp 2σ)``; zero at ``σ = 0``.

    Args:
        sigma: ``(r,)``.

    Returns:
        Scalar.
    """
    r = sigma.shape[-1]
    return 0.5 * (-r * (2.0 * sigma).sum() + r * torch.exp(2.0 * sigma).sum() - r * r)


def gaussian_kl(cov_diag: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``N · ½ (tr Σ − tr log Σ − r)`` for a diagonal ``Σ``; zero at ``Σ = I``.

    Args:
        cov_diag: ``(r,)`` diagonal of ``Σ``.
        num_samples: ``N``.

    Returns:
        Scalar.
    """
    r = cov_diag.shape[-1]
    return num_samples * 0.5 * (cov_diag.sum() - torch.log(cov_diag).sum() - r)
