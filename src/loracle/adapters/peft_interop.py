"""Exchange adapters with Hugging Face PEFT as plain LoRA folders.

PEFT's on-disk LoRA format (as written by ``PeftModel.save_pretrained``, read from peft 0.21's
``utils/save_and_load.py`` and checked by saving a tiny model): ``adapter_config.json`` with ``peft_type: "LORA"``,
and ``adapter_model.safetensors`` whose keys are ``base_model.model.<module>.lora_A.weight`` (``r × in``) and
``base_model.model.<module>.lora_B.weight`` (``out × r``) for every adapted module, plus
``base_model.model.<module>.<param>`` for the parameters of ``modules_to_save`` modules (the adapter name is not
part of the saved keys). ``Conv1D`` layers use the same ``A``/``B`` layouts with ``fan_in_fan_out: true``.

Every loracle method exports as plain LoRA: LoRA-SP as its assembled full ``A``/``B``, MonteCLoRA as its posterior
mean. PEFT itself is not needed to export; it is not imported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loracle.adapters.inject import _modules_to_save, adapter_config, adapter_layers, apply_adapter

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
_A_SUFFIX = ".lora_A.weight"
_B_SUFFIX = ".lora_B.weight"


def export_peft(model: nn.Module, folder: str | Path, *, temperature: float | None = None,
                prior_offset: torch.Tensor | None = None) -> Path:
    """Write ``model``'s adapters as a PEFT LoRA folder that ``peft.PeftModel.from_pretrained(base, folder)`` loads.

    ``target_modules`` lists the exact adapted module names, so PEFT adapts exactly the same layers.

    A calibration can be folded into the saved head, so that the PEFT model's logits are ``z / temperature +
    prior_offset`` where ``model``'s are ``z`` (a temperature, and a class-prior move ``log(target / source)``): the
    head's output layer (:func:`head_output_layer`) ``W h + c`` is saved as ``(W / T) h + (c / T + b)``. ``model``
    itself is not changed.

    Args:
        model: a model holding loracle adapters (any method).
        folder: output folder (created if needed).
        temperature: a positive temperature to fold into the head; None for none.
        prior_offset: ``[C]`` added to the logits after the temperature; None for none.

    Returns:
        The folder.

    Raises:
        ValueError: the model holds no adapters; a temperature or offset for a model whose ``modules_to_save`` hold
            no linear layer (or one without a bias, for an offset), a temperature that is not positive, or an offset
            whose length is not the layer's outputs.
    """
    from safetensors.torch import save_file

    config = adapter_config(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layers = list(adapter_layers(model))
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, layer in layers:
            tensors[PREFIX + name + _A_SUFFIX] = layer.lora_A().detach().contiguous().cpu()
            tensors[PREFIX + name + _B_SUFFIX] = layer.lora_B().detach().contiguous().cpu()
    save_names = _modules_to_save(model, config.modules_to_save)
    for name in save_names:
        for key, param in model.get_submodule(name).named_parameters():
            tensors[f"{PREFIX}{name}.{key}"] = param.detach().contiguous().cpu()
    if temperature is not None or prior_offset is not None:
        _fold_logit_map(model, save_names, tensors, temperature, prior_offset)
    base_config = getattr(model, "config", None)
    peft_config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": getattr(base_config, "_name_or_path", None) or None,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "use_rslora": config.use_rslora,
        "target_modules": [name for name, _ in layers],
        "fan_in_fan_out": any(layer.fan_in_fan_out for _, layer in layers),
        "modules_to_save": save_names or None,
        "bias": "none",
        "init_lora_weights": True,
        "inference_mode": True,
    }
    (folder / PEFT_CONFIG_FILE).write_text(json.dumps(peft_config, indent=2, sort_keys=True))
    save_file(tensors, str(folder / PEFT_WEIGHTS_FILE), metadata={"format": "pt"})
    return folder


def head_output_layer(model: nn.Module, head_names: list[str]) -> tuple[str, nn.Linear]:
    """``(dotted name, layer)`` of the last ``nn.Linear`` inside the modules ``head_names`` (a classifier's trained
    head, e.g. ``classifier`` or RoBERTa's ``classifier.out_proj``): the layer whose outputs are the logits.

    Raises:
        ValueError: no linear layer there.
    """
    found = [(f"{name}.{sub}" if sub else name, module) for name in head_names
             for sub, module in model.get_submodule(name).named_modules() if isinstance(module, nn.Linear)]
    if not found:
        raise ValueError(f"no linear layer in the trained head ({', '.join(head_names) or 'no modules_to_save'}) to "
                         "fold a calibration into")
    return found[-1]


def _fold_logit_map(model: nn.Module, save_names: list[str], tensors: dict[str, torch.Tensor],
                    temperature: float | None, offset: torch.Tensor | None) -> None:
    """Replace the head's output layer in ``tensors`` by one that outputs ``z / temperature + offset``."""
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    name, layer = head_output_layer(model, save_names)
    weight_key, bias_key = f"{PREFIX}{name}.weight", f"{PREFIX}{name}.bias"
    scale = 1.0 if temperature is None else float(temperature)
    tensors[weight_key] = (tensors[weight_key].double() / scale).to(layer.weight.dtype).contiguous()
    if offset is not None:
        if layer.bias is None:
            raise ValueError(f"the head's output layer {name!r} has no bias to carry the class-prior offset")
        offset = torch.as_tensor(offset, dtype=torch.float64).reshape(-1)
        if offset.numel() != layer.out_features:
            raise ValueError(f"prior_offset has {offset.numel()} values; {name!r} has {layer.out_features} outputs")
    if layer.bias is not None:
        bias = tensors[bias_key].double() / scale + (0.0 if offset is None else offset)
        tensors[bias_key] = bias.to(layer.bias.dtype).contiguous()


_UNSUPPORTED = {
    "use_dora": (False, None),
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
    "layers_to_transform": (None,),
    "bias": ("none", None),
    "layer_replication": (None,),
    "lora_bias": (False, None),
}


def import_peft(model: nn.Module, folder: str | Path) -> nn.Module:
    """Load a PEFT LoRA adapter folder into ``model`` as a loracle :class:`~loracle.LoRAConfig` adapter.

    The adapted layers are read from the tensor keys (``...<module>.lora_A.weight``), so targets match PEFT's
    exactly; every other tensor is a ``modules_to_save`` parameter.

    Args:
        model: the base model (without adapters).
        folder: a folder with ``adapter_config.json`` and ``adapter_model.safetensors``.

    Returns:
        The same model, adapted.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: not a plain LoRA adapter (other ``peft_type``, DoRA, per-layer rank/alpha patterns, biases,
            embedding adapters), or a key/shape does not fit the model (the message names key and folder).
    """
    from safetensors.torch import load_file

    from loracle.adapters.inject import remove_adapters
    from loracle.adapters.lora import LoRAConfig

    folder = Path(folder)
    config_path, weights_path = folder / PEFT_CONFIG_FILE, folder / PEFT_WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; a PEFT adapter folder holds {PEFT_CONFIG_FILE} and "
                                    f"{PEFT_WEIGHTS_FILE}")
    peft_config = json.loads(config_path.read_text())
    if peft_config.get("peft_type") != "LORA":
        raise ValueError(f"{folder} holds a {peft_config.get('peft_type')!r} adapter; import_peft reads 'LORA' only")
    problems = [
        f"{key}={peft_config[key]!r} (supported: {allowed[0]!r})"
        for key, allowed in _UNSUPPORTED.items()
        if key in peft_config and peft_config[key] not in allowed
    ]
    if peft_config.get("monteclora_config"):
        problems.append("monteclora_config is set (import its posterior mean by dropping it; not done silently)")
    if problems:
        raise ValueError(f"PEFT adapter in {folder} uses options loracle LoRA does not support: {problems}")

    tensors = load_file(str(weights_path))
    strip = {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in tensors.items()}
    targets = sorted(k[: -len(_A_SUFFIX)] for k in strip if k.endswith(_A_SUFFIX))
    if not targets:
        raise ValueError(f"{weights_path} holds no '*{_A_SUFFIX}' tensors; is it a LoRA adapter?")
    lora_keys = {t + s for t in targets for s in (_A_SUFFIX, _B_SUFFIX)}
    other = {k: v for k, v in strip.items() if k not in lora_keys}
    bad = sorted(k for k in other if "lora_" in k)
    if bad:
        raise ValueError(f"PEFT adapter in {folder} has LoRA tensors loracle cannot import: {bad[:5]}")
    save_modules = sorted({k.rsplit(".", 1)[0] for k in other})
    config = LoRAConfig(
        rank=int(peft_config["r"]),
        alpha=float(peft_config["lora_alpha"]),
        dropout=float(peft_config.get("lora_dropout") or 0.0),
        use_rslora=bool(peft_config.get("use_rslora", False)),
        target_modules=targets,
        modules_to_save=save_modules,
    )
    apply_adapter(model, config)
    try:
        _copy_peft_tensors(model, strip, other, folder)
    except ValueError:
        remove_adapters(model)
        raise
    return model


def _copy_peft_tensors(model: nn.Module, strip: dict[str, torch.Tensor], other: dict[str, torch.Tensor],
                       folder: Path) -> None:
    assignments: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    for name, layer in adapter_layers(model):
        for suffix, target in ((_A_SUFFIX, layer.lora_A_weight), (_B_SUFFIX, layer.lora_B_weight)):
            key = name + suffix
            if key not in strip:
                raise ValueError(f"PEFT adapter in {folder} lacks tensor {PREFIX + key!r}")
            assignments.append((key, strip[key], target))
    params = dict(model.named_parameters())
    for key, value in other.items():
        if key not in params:
            raise ValueError(f"PEFT adapter in {folder}: tensor {PREFIX + key!r} names no parameter of the model")
        assignments.append((key, value, params[key]))
    for key, value, target in assignments:
        if value.shape != target.shape:
            raise ValueError(
                f"PEFT adapter in {folder}: tensor {PREFIX + key!r} has shape {tuple(value.shape)}, the model "
                f"expects {tuple(target.shape)}"
            )
    with torch.no_grad():
        for _, value, target in assignments:
            target.copy_(value.to(device=target.device, dtype=target.dtype))
