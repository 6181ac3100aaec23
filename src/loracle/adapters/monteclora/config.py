"""Configuration of MonteCLoRA (Bayesian reparameterisation of LoRA, arXiv 2411.04358)."""

from __future__ import annotations

from dataclasses import dataclass

from loracle.adapters.base import AdapterConfig, register_adapter
from loracle.adapters.monteclora.layer import MonteCLoRALayer


@register_adapter
@dataclass
class MonteCLoRAConfig(AdapterConfig):
    """MonteCLoRA: ``A`` is the mean of a Wishart/Dirichlet-mixture Gaussian posterior (METHODS.md §3).

    The loss the training loop adds (through :func:`loracle.adapters.aux_loss`, averaged over layers) is
    ``kl_weight · (KL_Dir + KL_Wishart + KL_Gauss) + entropy_weight · Σ_n w_n²``.

    Dirichlet KL sign convention: the textbook ``KL(Dir(α) ‖ Dir(α0)) = lnΓ(Σα) − lnΓ(Σα0) − Σ lnΓ(α) + Σ lnΓ(α0)
    + Σ (α − α0)(ψ(α) − ψ(Σα))`` is used (it equals ``torch.distributions.kl_divergence`` and is never negative).
    The reference implementation adds ``Σ(lnΓ(α) − lnΓ(α0))`` instead of subtracting it, which is not a divergence.

    Args:
        num_samples: ``N``, the number of mixture components (perturbed copies of ``A``). Default 8 (PEFT port).
        sample_scale: ``s``, the scale of the posterior noise on ``A``. Default 1e-4 (PEFT port).
        kl_weight: ``λ_KL``. Default 1e-5 (PEFT port).
        prior_concentration: ``α0``, concentration of the symmetric Dirichlet prior. Default 0.1 (PEFT port).
        entropy_weight: weight of the ``Σ_n w_n²`` term (the reference implementation's "entropy"; it pushes the
            mixture weights away from a single component). Default 0.0, matching the PEFT port's default
            ``use_entropy=False``; 1.0 reproduces ``use_entropy=True``.

    See :class:`~loracle.adapters.base.AdapterConfig` for the shared fields.
    """

    method = "monteclora"
    layer_class = MonteCLoRALayer

    num_samples: int = 8
    sample_scale: float = 1e-4
    kl_weight: float = 1e-5
    prior_concentration: float = 0.1
    entropy_weight: float = 0.0

    def validate(self) -> list[str]:
        problems = super().validate()
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            problems.append(f"num_samples must be an integer >= 1, got {self.num_samples!r}")
        for name in ("sample_scale", "kl_weight", "entropy_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                problems.append(f"{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.prior_concentration, (int, float)) or self.prior_concentration <= 0:
            problems.append(f"prior_concentration must be a number > 0, got {self.prior_concentration!r}")
        return problems
