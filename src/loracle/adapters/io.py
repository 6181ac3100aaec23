"""Saving and loading adapters: one JSON file for the config, one safetensors file for the tensors (never pickle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loracle.adapters.base import config_from_dict
from loracle.adapters.inject import CONFIG_ATTR, _modules_to_save, adapter_config, adapter_layers, apply_adapter

CONFIG_FILE = "loracle_adapter.json"
TENSORS_FILE = "loracle_adapter.safetensors"
FORMAT_VERSION = 1
#: set on a model by ``loracle.models.load_model``: the name or path it was asked for
MODEL_NAME_ATTR = "loracle_model_name"


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor needed to rebuild the adapters, keyed by full module path.

    That is each adapter layer's own parameters and persistent buffers (LoRA-SP's frozen values and gather
    indices included; never the wrapped base layer) and the parameters of ``modules_to_save`` modules.

    Returns:
        ``{"<module name>.<tensor name>": tensor}``, e.g. ``"bert.encoder.layer.0.attention.self.query.lora_A_weight"``.
    """
    config = adapter_config(model)
    state: dict[str, torch.Tensor] = {}
    for name, layer in adapter_layers(model):
        for key, tensor in layer.state_dict(keep_vars=True).items():
            if not key.startswith("base_layer."):
                state[f"{name}.{key}"] = tensor.detach()
    for name in _modules_to_save(model, config.modules_to_save):
        for key, param in model.get_submodule(name).named_parameters():
            state[f"{name}.{key}"] = param.detach()
    return state


def save_adapter(model: nn.Module, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``loracle_adapter.json`` and ``loracle_adapter.safetensors`` into ``folder`` (created if needed).

    Args:
        model: a model holding loracle adapters.
        folder: output folder.
        extra: JSON-serialisable metadata stored beside the config (for example ``{"label_names": [...]}``).

    Returns:
        The folder.

    Raises:
        ValueError: the model holds no adapters.
    """
    from safetensors.torch import save_file

    config = adapter_config(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base_config = getattr(model, "config", None)
    info = {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        # the name the user gave load_model (minilm, a hub id, a folder as typed), not the resolved cache path
        "base_model": getattr(model, MODEL_NAME_ATTR, None) or getattr(base_config, "_name_or_path", None) or None,
        "extra": extra or {},
    }
    (folder / CONFIG_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    tensors = {k: v.contiguous().cpu() for k, v in adapter_state(model).items()}
    save_file(tensors, str(folder / TENSORS_FILE), metadata={"format": "pt", "loracle_method": config.method})
    return folder


def read_adapter_info(folder: str | Path) -> dict[str, Any]:
    """The JSON written by :func:`save_adapter`: ``{"format_version", "config", "base_model", "extra"}``.

    Raises:
        FileNotFoundError: ``folder`` holds no ``loracle_adapter.json``.
    """
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not a folder written by loracle.save_adapter")
    return json.loads(path.read_text())


def load_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """Apply the adapter saved in ``folder`` to a base ``model`` and load its tensors strictly.

    Args:
        model: the base model the adapter was trained on (without adapters).
        folder: a folder written by :func:`save_adapter`.

    Returns:
        The same model, adapted.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a tensor is missing, unexpected, or has another shape than the model expects (the message
            names the key and the folder); the model is left without adapters in that case.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    info = read_adapter_info(folder)
    tensors_path = folder / TENSORS_FILE
    if not tensors_path.is_file():
        raise FileNotFoundError(f"{tensors_path} not found; save_adapter writes it next to {CONFIG_FILE}")
    config = config_from_dict(info["config"])
    saved = load_file(str(tensors_path))
    apply_adapter(model, config)
    try:
        _load_strict(model, saved, folder)
    except ValueError:
        from loracle.adapters.inject import remove_adapters

        remove_adapters(model)
        raise
    return model


def _load_strict(model: nn.Module, saved: dict[str, torch.Tensor], folder: Path) -> None:
    expected = adapter_state(model)
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"adapter in {folder} does not fit this model: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} ({len(missing)} in all), unexpected keys {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)} in all). Is it the same base model?"
        )
    for key, target in expected.items():
        value = saved[key]
        if value.shape != target.shape:
            raise ValueError(
                f"adapter in {folder}: tensor {key!r} has shape {tuple(value.shape)} but the model expects "
                f"{tuple(target.shape)}; was it saved from another base model (or another num_labels)?"
            )
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(saved[key].to(device=target.device, dtype=target.dtype))


__all__ = ["CONFIG_ATTR", "adapter_state", "load_adapter", "read_adapter_info", "save_adapter"]
