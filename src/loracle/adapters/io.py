"""Saving and loading adapters: one JSON file for the config, one safetensors file for the tensors (never pickle)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loracle.adapters.base import config_from_dict
from loracle.adapters.inject import CONFIG_ATTR, _modules_to_save, adapter_config, adapter_layers, apply_adapter
from loracle.errors import AdapterFileError

CONFIG_FILE = "loracle_adapter.json"
TENSORS_FILE = "loracle_adapter.safetensors"
FORMAT_VERSION = 1
# A loracle_adapter.json is a few kB; a larger one is refused before it is parsed (an untrusted folder).
MAX_CONFIG_BYTES = 16 * 2**20
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

    Each file is written under a temporary name and renamed into place, so a failed save (a full disk) leaves an
    adapter saved before in ``folder`` whole.

    Raises:
        ValueError: the model holds no adapters.
        OSError: a file cannot be written (the error names it).
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
    tensors = {k: v.contiguous().cpu() for k, v in adapter_state(model).items()}
    _write_atomic(folder / TENSORS_FILE, lambda tmp: save_file(
        tensors, str(tmp), metadata={"format": "pt", "loracle_method": config.method}))
    text = json.dumps(info, indent=2, sort_keys=True)
    _write_atomic(folder / CONFIG_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return folder


def _write_atomic(path: Path, write: Any) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it to ``path``; an OSError names ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err


def read_adapter_info(folder: str | Path) -> dict[str, Any]:
    """The JSON written by :func:`save_adapter`: ``{"format_version", "config", "base_model", "extra"}``.

    The folder may come from anyone, so the file is checked before anything uses it: its size, its JSON, and the
    type of each field.

    Raises:
        FileNotFoundError: ``folder`` holds no ``loracle_adapter.json``.
        AdapterFileError: (a ``ValueError``) the file is too large, not UTF-8 JSON, or a field has the wrong type
            (``"config": null``); the message names the file.
    """
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not a folder written by loracle.save_adapter")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise AdapterFileError(f"{path} is {size} bytes; an adapter config is a few kB (at most {MAX_CONFIG_BYTES} "
                               "bytes are read): is it the file written by loracle.save_adapter?")
    try:
        info = json.loads(path.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as err:
        raise AdapterFileError(f"{path}: malformed JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                               "expected the file written by loracle.save_adapter") from err
    except (ValueError, RecursionError) as err:  # not UTF-8, a number too long to read, nesting too deep
        raise AdapterFileError(f"{path}: not a readable adapter config ({err})") from err
    problems = _info_problems(info)
    if problems:
        raise AdapterFileError(f"{path}: " + "; ".join(problems) + "; was it written by loracle.save_adapter?")
    return info


def _info_problems(info: Any) -> list[str]:
    if not isinstance(info, dict):
        return [f"expected a JSON object with 'config', 'base_model' and 'extra', got {type(info).__name__}"]
    problems = []
    config = info.get("config")
    if not isinstance(config, dict):
        what = "missing" if "config" not in info else ("null" if config is None else f"a {type(config).__name__}")
        problems.append(f"field 'config' is {what}; expected the adapter config, a JSON object such as "
                        "{\"method\": \"lora\", \"rank\": 8, ...}")
    version = info.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        problems.append(f"format_version {version!r} is not one this loracle reads (1..{FORMAT_VERSION}); a newer "
                        "loracle wrote it?")
    if info.get("base_model") is not None and not isinstance(info["base_model"], str):
        problems.append(f"field 'base_model' must be a string, got {info['base_model']!r:.80}")
    if info.get("extra") is not None and not isinstance(info["extra"], dict):
        problems.append(f"field 'extra' must be a JSON object, got {type(info['extra']).__name__}")
    return problems


def load_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """Apply the adapter saved in ``folder`` to a base ``model`` and load its tensors strictly.

    Args:
        model: the base model the adapter was trained on (without adapters).
        folder: a folder written by :func:`save_adapter`.

    Returns:
        The same model, adapted.

    The folder is treated as untrusted: the config is validated (:func:`read_adapter_info`, the config's own
    checks, a rank within each targeted layer's dimensions, a regex target with a bounded matching time) and the
    tensor file's header (names and shapes) is checked against the model before any tensor is read.

    Raises:
        FileNotFoundError: a file is missing.
        AdapterFileError: (a ``ValueError``) the config is malformed or asks for more than the model allows, the
            tensor file is damaged or truncated, or a tensor is missing, unexpected, or has another shape than the
            model expects (the message names the file, and the key); the model is left without adapters then.
    """
    folder = Path(folder)
    info = read_adapter_info(folder)
    config_path, tensors_path = folder / CONFIG_FILE, folder / TENSORS_FILE
    if not tensors_path.is_file():
        raise FileNotFoundError(f"{tensors_path} not found; save_adapter writes it next to {CONFIG_FILE}")
    try:
        config = config_from_dict(info["config"])
    except ValueError as err:
        raise AdapterFileError(f"{config_path}: {err}") from err
    shapes = _tensor_shapes(tensors_path)
    try:
        apply_adapter(model, config)  # checks targets and rank before it changes the model
    except ValueError as err:
        raise AdapterFileError(f"{config_path}: {err}") from err
    try:
        _load_strict(model, tensors_path, shapes, folder)
    except ValueError:
        from loracle.adapters.inject import remove_adapters

        remove_adapters(model)
        raise
    return model


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes from a safetensors header, without reading the tensors.

    Raises:
        AdapterFileError: the file is not a readable safetensors file (damaged, truncated, another format).
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterFileError(f"{path}: not a readable safetensors file ({err}); it is damaged or truncated: save "
                               "the adapter again") from err


def _load_strict(model: nn.Module, path: Path, saved: dict[str, tuple[int, ...]], folder: Path) -> None:
    from safetensors import SafetensorError, safe_open

    expected = adapter_state(model)
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise AdapterFileError(
            f"adapter in {folder} does not fit this model: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} ({len(missing)} in all), unexpected keys {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)} in all). Is it the same base model?"
        )
    for key, target in expected.items():
        if saved[key] != tuple(target.shape):
            raise AdapterFileError(
                f"adapter in {folder}: tensor {key!r} has shape {saved[key]} but the model expects "
                f"{tuple(target.shape)}; was it saved from another base model (or another num_labels)?"
            )
    try:
        with torch.no_grad(), safe_open(str(path), framework="pt") as handle:
            for key, target in expected.items():
                target.copy_(handle.get_tensor(key).to(device=target.device, dtype=target.dtype))
    except (SafetensorError, OSError) as err:
        raise AdapterFileError(f"{path}: not a readable safetensors file ({err})") from err


__all__ = ["CONFIG_ATTR", "adapter_state", "load_adapter", "read_adapter_info", "save_adapter"]
