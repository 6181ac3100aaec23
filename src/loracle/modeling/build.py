"""The one builder of "model + task + adapter + trained head", used by the CLI, the active-learning loop and the
benchmarks alike, so that head names, task options (``num_choices``, ``label_names``, ``max_length``) and adapter
defaults are decided in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from loracle.modeling.layout import ModelLayout

if TYPE_CHECKING:
    from loracle.adapters.base import AdapterConfig
    from loracle.data.examples import Example
    from loracle.tasks.base import Task

#: Output heads trained in full beside the adapters (``modules_to_save``) when a config does not say.
TRAINED_HEADS = ("classifier", "score")

#: ``(name_or_path, task_kind, num_labels) -> (model, tokenizer)``.
ModelFactory = Callable[[str, str, "int | None"], "tuple[nn.Module, Any]"]


def _load(name: str, task_kind: str, num_labels: int | None) -> tuple[nn.Module, Any]:
    from loracle.models import load_model

    return load_model(name, task_kind, num_labels=num_labels)


def head_modules(model: nn.Module, task_kind: str) -> list[str]:
    """The modules trained in full by default: a classification head (``classifier``/``score``); none for LMs.

    A BERT pooler is left frozen: training it as well lowered test accuracy and raised ECE on rotten_tomatoes
    (300 labels, LoRA on the top two blocks: 0.711/0.732 accuracy with it, 0.735/0.737 without; README).
    """
    if task_kind != "classification":
        return []
    return [h for h in TRAINED_HEADS if isinstance(getattr(model, h, None), nn.Module)][:1]


def task_options(task_kind: str, *, label_names: Sequence[str] | None, max_length: int,
                 examples: Sequence["Example"] = ()) -> dict[str, Any]:
    """Options of :func:`loracle.tasks.build_task` for data like ``examples``.

    Multiple choice pads every item to the largest number of choices in ``examples`` (``num_choices``), so items
    with 2 and 4 choices batch and score together.
    """
    options: dict[str, Any] = {"max_length": max_length}
    if task_kind == "classification":
        options["label_names"] = list(label_names) if label_names is not None else None
    elif task_kind == "multiple_choice":
        counts = [len(e.choices) for e in examples if e.choices]
        if counts:
            options["num_choices"] = max(counts)
    return options


@dataclass
class Built:
    """A model ready to train or score: the (adapted) model, its task and its layout."""

    model: nn.Module
    task: "Task"
    layout: ModelLayout


class ModelBuilder:
    """Loads the base model once and hands out freshly adapted copies of it, one at a time.

    Each :meth:`fresh` call strips the previous adapter, re-initialises the trained head from a seed and applies
    a new adapter, so an active-learning round never reloads weights from disk. Only one built model is alive at a
    time (the same ``nn.Module`` object is reused).

    Args:
        model_name: built-in name, hub id or folder, as the user gave it (recorded in saved adapters).
        task_kind: ``classification``, ``multiple_choice`` or ``generation``.
        label_names: class names (classification).
        examples: training data, to size task options (``num_choices``).
        max_length: token limit of the task.
        adapter: the adapter config (``modules_to_save`` empty means the default head); None for no adapter.
        model_factory: ``(name, task_kind, num_labels) -> (model, tokenizer)``; default
            :func:`loracle.models.load_model`.
        task_extra: further task options (generation: ``max_new_tokens``, ``stop_strings``...).
    """

    def __init__(self, model_name: str, task_kind: str, *, label_names: Sequence[str] | None = None,
                 examples: Sequence["Example"] = (), max_length: int = 128,
                 adapter: "AdapterConfig | None" = None, model_factory: ModelFactory | None = None,
                 task_extra: dict[str, Any] | None = None) -> None:
        self.model_name = model_name
        self.task_kind = task_kind
        self.label_names = list(label_names) if label_names is not None else None
        self.adapter = adapter
        self.options = task_options(task_kind, label_names=label_names, max_length=max_length, examples=examples)
        self.options.update(task_extra or {})
        self.model_factory = model_factory or _load
        self._model: nn.Module | None = None
        self._task: "Task | None" = None

    def base(self) -> tuple[nn.Module, "Task"]:
        """The base model (loaded on first use) and its task."""
        if self._model is None:
            from loracle.tasks import build_task

            num_labels = len(self.label_names) if self.task_kind == "classification" and self.label_names else None
            model, tokenizer = self.model_factory(self.model_name, self.task_kind, num_labels)
            model.loracle_model_name = self.model_name  # what save_adapter records as the base model
            if self.task_kind == "classification" and self.label_names:
                model.config.id2label = dict(enumerate(self.label_names))
                model.config.label2id = {name: i for i, name in enumerate(self.label_names)}
            # Pretrained weights of the modules trained in full, restored before every fresh build.
            self._pristine = {name: {k: v.detach().clone() for k, v in model.get_submodule(name).state_dict().items()}
                              for name in self._full_names(model)}
            self._model = model
            self._task = build_task(self.task_kind, tokenizer, **self.options)
        return self._model, self._task

    def adapter_config(self, seed: int) -> "AdapterConfig":
        """The adapter config with the default head and ``seed`` filled in."""
        model, _ = self.base()
        config = self.adapter
        if not config.modules_to_save:
            config = config.replace(modules_to_save=head_modules(model, self.task_kind))
        return config.replace(seed=seed)

    def fresh(self, head_seed: int, adapter_seed: int) -> Built:
        """The base model with a new adapter (seeded by ``adapter_seed``) and a re-initialised head."""
        from loracle.adapters import adapter_layers, apply_adapter, remove_adapters

        model, task = self.base()
        if any(True for _ in adapter_layers(model)):
            remove_adapters(model, merge=False)
        self._reset_head(model, head_seed)
        if self.adapter is not None:
            apply_adapter(model, self.adapter_config(adapter_seed))
        model.eval()
        return Built(model, task, ModelLayout.discover(model))

    def load(self, folder: str | Path) -> Built:
        """The base model with the adapter (and head) saved in ``folder``."""
        from loracle.adapters import adapter_layers, load_adapter, remove_adapters

        model, task = self.base()
        if any(True for _ in adapter_layers(model)):
            remove_adapters(model, merge=False)
        load_adapter(model, folder)
        model.eval()
        return Built(model, task, ModelLayout.discover(model))

    def _full_names(self, model: nn.Module) -> list[str]:
        """Dotted names of the modules trained in full (the adapter's ``modules_to_save``, or the default heads)."""
        wanted = (self.adapter.modules_to_save if self.adapter is not None and self.adapter.modules_to_save
                  else head_modules(model, self.task_kind))
        names = [n for n, _ in model.named_modules() if n]
        return [n for n in names if any(n == w or n.endswith("." + w) for w in wanted)]

    def _reset_head(self, model: nn.Module, seed: int) -> None:
        with torch.no_grad():
            for name, state in self._pristine.items():
                model.get_submodule(name).load_state_dict(state)
        names = head_modules(model, self.task_kind)
        if not names:
            return
        head = getattr(model, names[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            init = getattr(model, "_init_weights", None)
            for module in head.modules():
                # transformers marks initialised tensors and skips them later; this head must start afresh.
                for tensor in [module, *module.parameters(recurse=False), *module.buffers(recurse=False)]:
                    if getattr(tensor, "_is_hf_initialized", False):
                        tensor._is_hf_initialized = False
                if init is not None:
                    init(module)
                elif hasattr(module, "reset_parameters"):
                    module.reset_parameters()
