"""Finding target layers and replacing them with adapters: the one place that edits a model's module tree."""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
from torch import nn

from loracle.adapters.base import AdapterConfig, AdapterLayer, linear_shape

# Attribute on the model that records which adapter config was applied (used by save/export and the loop).
CONFIG_ATTR = "loracle_adapter_config"

_LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")
# Heads that are never adapted by default (they are usually trained in full through modules_to_save instead).
_HEAD_NAMES = ("lm_head", "classifier", "score", "qa_outputs", "pre_classifier")


def is_linear(module: nn.Module) -> bool:
    try:
        linear_shape(module)
    except TypeError:
        return False
    return True


def _suffix_match(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


def _layer_index(name: str) -> int | None:
    match = _LAYER_INDEX.search("." + name + ".")
    return int(match.group(1)) if match else None


def linear_layer_names(model: nn.Module) -> list[str]:
    """Names of every adaptable (linear) layer of ``model``, in module order."""
    return [name for name, module in model.named_modules() if is_linear(module) and not isinstance(module, AdapterLayer)]


def find_targets(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Resolve ``config.target_modules`` and ``config.layers`` to the module names to adapt.

    Raises:
        ValueError: when nothing matches, or a listed name matches nothing; the message lists the model's linear
            layers (short names and a few full names) so the user can pick valid targets.
    """
    candidates = [n for n in linear_layer_names(model) if ".base_layer" not in n]
    targets = config.target_modules
    if targets is None:
        chosen = [n for n in candidates if n.rsplit(".", 1)[-1] not in _HEAD_NAMES]
    elif isinstance(targets, str):
        regex = re.compile(targets)
        chosen = [n for n in candidates if regex.fullmatch(n)]
    else:
        chosen = [n for n in candidates if any(_suffix_match(n, t) for t in targets)]
        missing = [t for t in targets if not any(_suffix_match(n, t) for n in candidates)]
        if missing and chosen:
            raise ValueError(
                f"target_modules {missing} match no linear layer of {type(model).__name__}; "
                f"its linear layer names are {_short_names(candidates)}"
            )
    if config.layers is not None:
        # Negative indices count from the top block (-1 is the last), as in Python sequences.
        indices = [i for i in (_layer_index(n) for n in candidates) if i is not None]
        count = max(indices) + 1 if indices else 0
        wanted = {i + count if i < 0 else i for i in config.layers}
        chosen = [n for n in chosen if _layer_index(n) in wanted]
    if not chosen:
        raise ValueError(
            f"target_modules={targets!r} with layers={config.layers!r} match no linear layer of "
            f"{type(model).__name__}. Its linear layers are named {_short_names(candidates)} "
            f"(for example {candidates[:3]}); pass suffixes such as {_short_names(candidates)[:2]}, a regex "
            "string, or None for all"
        )
    return chosen


def _short_names(names: list[str]) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n in names})


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_adapter(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Freeze ``model`` and replace its target layers with adapters of ``config``'s method, in place.

    Only adapter parameters and the modules named in ``config.modules_to_save`` stay trainable.

    Args:
        model: any ``transformers`` (or plain torch) model with ``nn.Linear``/``Conv1D`` layers.
        config: an adapter config (:class:`~loracle.LoRAConfig`, :class:`~loracle.LoRASPConfig`, ...).

    Returns:
        The same model object, adapted.

    Raises:
        ValueError: the model already holds adapters, targets match nothing, or a ``modules_to_save`` entry
            matches no module.
    """
    if any(True for _ in adapter_layers(model)):
        raise ValueError("model already holds loracle adapters; call loracle.remove_adapters(model) first")
    names = find_targets(model, config)
    save_names = _modules_to_save(model, config.modules_to_save)
    generator = torch.Generator().manual_seed(config.seed)
    for param in model.parameters():
        param.requires_grad_(False)
    for name in names:
        base = model.get_submodule(name)
        layer = config.layer_class(base, config, generator)
        ref = base.weight
        layer.to(device=ref.device)
        layer.train(base.training)  # a new module starts in training mode; follow the model's mode instead
        _set_submodule(model, name, layer)
    for name in save_names:
        for param in model.get_submodule(name).parameters():
            param.requires_grad_(True)
    setattr(model, CONFIG_ATTR, config)
    return model


def _modules_to_save(model: nn.Module, patterns: list[str]) -> list[str]:
    names = [n for n, _ in model.named_modules() if n]
    chosen = []
    for pattern in patterns:
        matched = [n for n in names if _suffix_match(n, pattern)]
        if not matched:
            top = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"modules_to_save entry {pattern!r} matches no module; top-level modules are {top}")
        chosen.extend(matched)
    # Drop names nested in another chosen name (``classifier`` and ``classifier.dense``): train the outer one.
    return [n for n in chosen if not any(n != o and n.startswith(o + ".") for o in chosen)]


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer]]:
    """Yield ``(name, layer)`` for every adapter in ``model`` (name of the replaced module)."""
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            yield name, module


def adapter_config(model: nn.Module) -> AdapterConfig:
    """The config the model was adapted with.

    Raises:
        ValueError: when the model holds no loracle adapters.
    """
    config = getattr(model, CONFIG_ATTR, None)
    if config is None:
        raise ValueError("model holds no loracle adapters; call loracle.apply_adapter(model, config) first")
    return config


def merge_adapters(model: nn.Module) -> nn.Module:
    """Add every adapter's update into its base weight (explicit; never a side effect of eval())."""
    for _, layer in adapter_layers(model):
        layer.merge()
    return model


def unmerge_adapters(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_adapters`."""
    for _, layer in adapter_layers(model):
        layer.unmerge()
    return model


def remove_adapters(model: nn.Module, merge: bool = False) -> nn.Module:
    """Put the base layers back, optionally merging the updates into them first.

    Args:
        model: an adapted model.
        merge: if True the returned model keeps the fine-tuned behaviour in plain linear layers; if False it is the
            original base model again.
    """
    for name, layer in list(adapter_layers(model)):
        if merge:
            layer.merge()
        else:
            layer.unmerge()
        _set_submodule(model, name, layer.base_layer)
    if hasattr(model, CONFIG_ATTR):
        delattr(model, CONFIG_ATTR)
    return model


def aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Mean of the adapters' :meth:`~AdapterLayer.aux_loss` over the layers that have one (None if none do)."""
    terms = [t for _, layer in adapter_layers(model) if (t := layer.aux_loss()) is not None]
    if not terms:
        return None
    return torch.stack(terms).mean()


def trainable_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (exact: LoRA-SP stores only its trainable entries as parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
