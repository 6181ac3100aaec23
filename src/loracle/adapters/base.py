"""The adapter protocol: one config base class, one layer base class, one registry.

Every adapter wraps a frozen linear layer ``y = W0 x`` and adds a low-rank update

    y = W0 x + s · B A x,        s = alpha / r   (or alpha / sqrt(r) with rsLoRA)

with ``A`` of shape ``(r, in)`` (random init) and ``B`` of shape ``(out, r)`` (zero init). A variant is a config
dataclass plus an :class:`AdapterLayer` subclass registered with :func:`register_adapter`; nothing else in the
package needs to know which variant it holds.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from loracle.adapters.dropout import dropout as fast_dropout
from loracle.errors import LoracleError

ADAPTERS: dict[str, type["AdapterConfig"]] = {}


def register_adapter(config_cls: type["AdapterConfig"]) -> type["AdapterConfig"]:
    """Class decorator: make a config class (and through it its layer class) known by its ``method`` name."""
    ADAPTERS[config_cls.method] = config_cls
    return config_cls


def config_from_dict(data: dict[str, Any]) -> "AdapterConfig":
    """Rebuild a config saved with :meth:`AdapterConfig.to_dict`.

    Raises:
        ValueError: if ``data`` is not a mapping, or the method is unknown (the message lists the registered ones).
    """
    if not isinstance(data, dict):
        raise LoracleError(f"an adapter config must be a mapping of fields such as {{'method': 'lora', 'rank': 8}}, "
                           f"got {type(data).__name__} {data!r:.80}")
    data = dict(data)
    method = data.pop("method", None)
    if method not in ADAPTERS:
        raise ValueError(f"unknown adapter method {method!r}; registered methods: {sorted(ADAPTERS)}")
    return ADAPTERS[method].from_dict(data)


@dataclass
class AdapterConfig:
    """Options shared by every adapter. Subclasses add their own fields and must set ``method``/``layer_class``.

    Args:
        rank: ``r``, the inner dimension of the update (>= 1).
        alpha: scale numerator; the update is multiplied by ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).
        dropout: dropout probability on the adapter's input; also the source of MC-dropout uncertainty.
        target_modules: which layers to adapt. A list of names matched as a suffix on ``.``-boundaries
            (``"query"`` matches ``bert.encoder.layer.0.attention.self.query``), or a single string that is a
            regular expression matched in full against the module name. ``None`` targets every linear layer
            except the output head.
        layers: keep only targets inside these transformer block indices (``...layer.3...`` or ``...layers.3...``);
            negative indices count from the top (``[-2, -1]``: the last two blocks).
        modules_to_save: names (suffix match) of modules that are trained in full beside the adapters, such as a
            classification head (``["classifier"]`` or ``["score"]``).
        use_rslora: use ``alpha / sqrt(r)`` scaling (rank-stabilised LoRA).
        seed: seeds the adapters' random initialisation (and any random masks).
    """

    method: ClassVar[str] = ""
    layer_class: ClassVar[type["AdapterLayer"]]

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | str | None = None
    layers: list[int] | None = None
    modules_to_save: list[str] = field(default_factory=list)
    use_rslora: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if isinstance(self.layers, tuple):
            self.layers = list(self.layers)
        problems = self.validate()
        if problems:
            raise ValueError(f"invalid {type(self).__name__}:\n  - " + "\n  - ".join(problems))

    def validate(self) -> list[str]:
        """Return every problem with this config (empty when valid). Subclasses extend the list."""
        problems = []
        if not _is_int(self.rank) or self.rank < 1:
            problems.append(f"rank must be an integer >= 1, got {self.rank!r}")
        if not _is_number(self.alpha) or not 0 <= self.alpha < math.inf:
            problems.append(f"alpha must be a number >= 0, got {self.alpha!r}")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.target_modules, list) and not self.target_modules:
            problems.append("target_modules is an empty list; give names such as ['query', 'value'] or None for all")
        elif isinstance(self.target_modules, list) and not all(isinstance(t, str) and t for t in self.target_modules):
            problems.append(f"target_modules must be a list of non-empty layer names, got {self.target_modules!r:.200}")
        elif isinstance(self.target_modules, str):
            problems.extend(_regex_problems(self.target_modules))
        elif self.target_modules is not None and not isinstance(self.target_modules, list):
            problems.append(f"target_modules must be a list of layer names, a regex string or None, got "
                            f"{self.target_modules!r:.200}")
        if not isinstance(self.modules_to_save, list) or not all(isinstance(m, str) and m
                                                                 for m in self.modules_to_save):
            problems.append(f"modules_to_save must be a list of module names, got {self.modules_to_save!r:.200}")
        if not isinstance(self.use_rslora, bool):
            problems.append(f"use_rslora must be true or false, got {self.use_rslora!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            problems.append(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if self.layers is not None and (not isinstance(self.layers, list) or not self.layers
                                        or any(isinstance(i, bool) or not isinstance(i, int) for i in self.layers)):
            problems.append(f"layers must be a non-empty list of block indices (negative counts from the top block, "
                            f"-1 is the last), got {self.layers!r}")
        return problems

    @property
    def scaling(self) -> float:
        """The factor ``s`` in ``W0 x + s · B A x``."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :func:`config_from_dict` turns back into this config."""
        return {"method": self.method, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdapterConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; valid fields: {sorted(names)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "AdapterConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# A regex target longer than this is refused (module names are short); matching cost is bounded in inject.py.
MAX_TARGET_REGEX_LENGTH = 500


def _regex_problems(pattern: str) -> list[str]:
    if not pattern:
        return ["target_modules is an empty string; give a regular expression, a list of names, or None for all"]
    if len(pattern) > MAX_TARGET_REGEX_LENGTH:
        return [f"target_modules regex is {len(pattern)} characters long; at most {MAX_TARGET_REGEX_LENGTH} are "
                "accepted (give a list of layer names instead)"]
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as err:
        return [f"target_modules {pattern!r} is not a valid regular expression: {err}"]
    return []


def linear_shape(base_layer: nn.Module) -> tuple[int, int, bool]:
    """Return ``(in_features, out_features, fan_in_fan_out)`` of an ``nn.Linear`` or GPT-2 style ``Conv1D``.

    ``Conv1D`` stores its weight as ``(in, out)``, hence ``fan_in_fan_out=True``.

    Raises:
        TypeError: for any other module type.
    """
    if isinstance(base_layer, nn.Linear):
        return base_layer.in_features, base_layer.out_features, False
    if type(base_layer).__name__ == "Conv1D" and hasattr(base_layer, "nf"):
        in_features, out_features = base_layer.weight.shape
        return int(in_features), int(out_features), True
    raise TypeError(
        f"cannot adapt a {type(base_layer).__name__}; loracle adapts torch.nn.Linear and transformers' Conv1D"
    )


class AdapterLayer(nn.Module):
    """Base class of every adapter layer: wraps a frozen linear layer and adds ``s · B A x``.

    Subclasses implement :meth:`lora_A` and :meth:`lora_B` (the full matrices at the posterior mean / with frozen
    entries filled in) and may override :meth:`adapter_forward` (for example to sample ``A``) and :meth:`aux_loss`.

    Stochastic inference is an explicit switch, independent of ``train()``/``eval()``: the flags
    ``stochastic_dropout`` and ``sample_posterior`` are set by :func:`loracle.uncertainty.sampling.stochastic`.
    Merging is always an explicit call.
    """

    # True for adapters whose ``A`` has a posterior that ``sample_posterior`` draws from (MonteCLoRA).
    has_posterior: ClassVar[bool] = False

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.config = config
        self.in_features, self.out_features, self.fan_in_fan_out = linear_shape(base_layer)
        if config.rank > min(self.in_features, self.out_features):  # checked before any allocation
            raise LoracleError(f"rank {config.rank} exceeds min(in_features, out_features) of this layer "
                               f"(in_features {self.in_features}, out_features {self.out_features})")
        self.rank = config.rank
        self.scaling = config.scaling
        self.merged = False
        self.stochastic_dropout = False
        self.sample_posterior = False
        self.disabled = False  # set by uncertainty.sampling.adapters_disabled: forward runs the base layer only

    # -- what a variant provides -------------------------------------------------------------------------------
    def lora_A(self) -> torch.Tensor:
        """The full ``A`` of shape ``(r, in)`` used at the posterior mean."""
        raise NotImplementedError(f"{type(self).__name__} must implement lora_A()")

    def lora_B(self) -> torch.Tensor:
        """The full ``B`` of shape ``(out, r)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement lora_B()")

    def aux_loss(self) -> torch.Tensor | None:
        """An extra loss term the training loop adds (MonteCLoRA's KL); ``None`` when the adapter has none."""
        return None

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The update ``s · B A x`` for an input that has already been through the adapter dropout.

        Args:
            x: ``(..., in)``.

        Returns:
            ``(..., out)``.
        """
        # Scale the rank-r intermediate rather than the (..., out) result: r << out elements to multiply.
        return F.linear(F.linear(x, self.lora_A()) * self.scaling, self.lora_B())

    # -- shared behaviour --------------------------------------------------------------------------------------
    @property
    def stochastic(self) -> bool:
        """True when a forward pass is random: training mode, MC dropout on, or posterior sampling on."""
        return (self.training and self.config.dropout > 0) or self.stochastic_dropout or self.sample_posterior

    def dropout(self, x: torch.Tensor) -> torch.Tensor:
        p = self.config.dropout
        if p == 0.0:
            return x
        return fast_dropout(x, p, training=self.training or self.stochastic_dropout)

    def delta_weight(self) -> torch.Tensor:
        """``s · B A`` in the layout of the base weight: ``(out, in)`` for Linear, ``(in, out)`` for Conv1D."""
        delta = (self.lora_B() @ self.lora_A()) * self.scaling
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disabled:
            return result
        if self.merged:
            if self.stochastic_dropout or self.sample_posterior:
                raise RuntimeError(
                    "stochastic inference needs unmerged adapters; call loracle.unmerge_adapters(model) first"
                )
            return result
        update = self.adapter_forward(self.dropout(x.to(self.lora_dtype)))
        return result + update.to(result.dtype)

    @property
    def lora_dtype(self) -> torch.dtype:
        return self.lora_B().dtype

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the base weight (idempotent)."""
        if not self.merged:
            weight = self.base_layer.weight
            weight.add_(self.delta_weight().to(weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update from the base weight again (idempotent)."""
        if self.merged:
            weight = self.base_layer.weight
            weight.sub_(self.delta_weight().to(weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"method={self.config.method}, in={self.in_features}, out={self.out_features}, r={self.rank}"
