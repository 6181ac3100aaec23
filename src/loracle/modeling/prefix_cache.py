"""The cross-round prefix cache: what the frozen base model computes below the first trainable block, once per run.

In active learning every round trains a fresh adapter on the labels so far, evaluates it and scores the pool.
When the adapters (and every other trainable module) sit in the top blocks only, the blocks below them are the
frozen base model in every round, so the hidden states entering block ``f`` are the same for a given item in every
round. :class:`PrefixCache` computes them the first time an item is seen and replays them afterwards, in training,
evaluation and scoring alike: the lower ``f`` blocks then cost nothing from the second forward of an item on.

How it works (``with cache.attached(model, layout):``):

- A forward pre-hook on the model reads ``input_ids`` / ``attention_mask`` (and ``token_type_ids``) of the call.
  Each row is keyed by its real tokens and their offset (so left- and right-padded batches both hit), and rows
  not yet in the cache are computed by the backbone with only blocks ``[0, f)`` in its block list (the model in
  eval mode for that pass, so the stored states are deterministic).
- For the call itself the model's block list holds only blocks ``[f, L)``, and a pre-hook on block ``f`` swaps
  its ``hidden_states`` input for the cached states (pad positions are zeros; they are masked out of attention).
  An always-called forward hook restores the full block list, also when the forward raises.

A call that carries a key/value cache (``past_key_values``: ``generate`` decoding token by token) is computed
normally with every block, so generation works while a cache is attached.

The embeddings are still computed (and discarded) in a cached call: they are a table look-up. During training the
lower blocks are therefore run without the base model's own dropout; the upper blocks keep it.

States are stored in ``float16`` by default (about ``2 · tokens · hidden`` bytes per item: 12,752
rotten_tomatoes texts at MiniLM's 384 dims are about 0.3 GB); ``dtype=torch.float32`` gives the uncached result
up to float rounding. :meth:`save`/:meth:`load` keep a cache in a safetensors file so that a resumed run, or
another run on the same model and data, does not compute it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loracle.modeling.layout import ModelLayout


class PrefixCache:
    """Hidden states entering block ``first_block`` of a frozen model, keyed by token sequence.

    Args:
        first_block: ``f``: the states entering this block are cached; blocks ``[0, f)`` must be frozen and hold
            no adapter (checked by :meth:`attached` against the layout's ``first_trainable_block``).
        dtype: storage dtype (``float16``: half the memory, about 1e-3 relative error; ``float32``: exact up to
            float rounding).

    Attributes:
        hits_: rows served from the cache.
        misses_: rows computed (once each).
        fill_seconds_: wall time spent computing missing rows.

    Raises:
        ValueError: if ``first_block < 1``.
    """

    def __init__(self, first_block: int, dtype: torch.dtype = torch.float16) -> None:
        if not isinstance(first_block, int) or first_block < 1:
            raise ValueError(f"first_block must be an integer >= 1 (blocks below it are cached), got {first_block!r}")
        self.first_block = first_block
        self.dtype = dtype
        self.entries_: dict[str, torch.Tensor] = {}
        self.hits_ = 0
        self.misses_ = 0
        self.fill_seconds_ = 0.0
        self._pending: torch.Tensor | None = None
        self._filling = False
        self._dirty = False

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries_)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached states."""
        return sum(t.numel() * t.element_size() for t in self.entries_.values())

    def save(self, path: str | Path) -> None:
        """Write the cache to a safetensors file (atomically: a temporary file renamed into place)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        save_file(dict(self.entries_), str(tmp),
                  metadata={"first_block": str(self.first_block), "dtype": str(self.dtype)})
        os.replace(tmp, path)
        self._dirty = False

    def load(self, path: str | Path) -> bool:
        """Add the entries of a file written by :meth:`save` (for the same model and ``first_block``).

        Returns:
            False when the file does not exist or was written for another ``first_block`` (nothing is loaded).
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            return False
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("first_block") != str(self.first_block):
                return False
            for key in handle.keys():
                self.entries_[key] = handle.get_tensor(key).to(self.dtype)
        return True

    def save_if_changed(self, path: str | Path) -> bool:
        """:meth:`save` when entries were added since the last save or load; returns whether it wrote."""
        if self._dirty:
            self.save(path)
            return True
        return False

    # -- the mechanism -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def attached(self, model: nn.Module, layout: ModelLayout | None = None) -> Iterator["PrefixCache"]:
        """Serve ``model``'s forward passes from the cache for the duration of the block.

        Raises:
            ValueError: if the model has no block list, fewer than ``first_block + 1`` blocks, or something
                trainable (an adapter, a trained module) below ``first_block``.
        """
        if getattr(model, "loracle_prefix_block", None) is not None:
            yield self  # already attached (a nested phase of the same round): the outer context serves it
            return
        layout = layout or ModelLayout.discover(model)
        f = self.first_block
        if not layout.blocks_name or layout.num_blocks <= f:
            raise ValueError(f"the prefix cache needs a model with more than {f} transformer blocks; "
                             f"{type(model).__name__} has {layout.num_blocks}")
        if layout.first_trainable_block < f:
            raise ValueError(
                f"cannot cache the states entering block {f}: block {layout.first_trainable_block} (or a module "
                "before the blocks) holds an adapter or a trainable parameter, so the prefix changes with "
                f"training. Place adapters in blocks >= {f} (e.g. layers=[{f}, ..., {layout.num_blocks - 1}])")
        parent, attribute = layout.blocks_parent(model)
        full = layout.blocks
        upper = nn.ModuleList(list(full)[f:])
        backbone = model.base_model if model.base_model is not model else None
        if backbone is None:
            raise ValueError(f"the prefix cache needs a model with a backbone (model.base_model); "
                             f"{type(model).__name__} has none")
        accepted = _accepted_names(type(backbone).forward)

        def before_model(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if self._filling:
                return None
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None or kwargs.get("inputs_embeds") is not None:
                return None
            if kwargs.get("past_key_values") is not None:
                return None  # incremental decoding (generate's key/value cache): computed normally, in full
            mask = kwargs.get("attention_mask")
            types = kwargs.get("token_type_ids")
            rows = _row_keys(ids, mask, types)
            if rows is None:  # a mask that is not one run of ones: compute normally
                return None
            seen: set[str] = set()  # a batch repeated for MC samples holds each item S times: fill it once
            missing = [i for i, (key, _, _) in enumerate(rows)
                       if key not in self.entries_ and not (key in seen or seen.add(key))]
            if missing:
                self._fill(model, backbone, parent, attribute, full, accepted, ids, mask, types, rows, missing)
            self.hits_ += sum(1 for key, _, _ in rows if key in self.entries_) - len(missing)
            self._pending = self._assemble(rows, ids.shape[1], ids.device)
            setattr(parent, attribute, upper)
            return None

        def after_model(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if getattr(parent, attribute) is not full:
                setattr(parent, attribute, full)
            self._pending = None
            return None

        def before_block(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            hidden, self._pending = self._pending, None
            if hidden is None:
                return None
            if args:
                hidden = hidden.to(args[0].dtype)
                return (hidden, *args[1:]), kwargs
            hidden = hidden.to(kwargs["hidden_states"].dtype)
            return args, {**kwargs, "hidden_states": hidden}

        handles = [
            model.register_forward_pre_hook(before_model, with_kwargs=True),
            model.register_forward_hook(after_model, with_kwargs=True, always_call=True),
            full[f].register_forward_pre_hook(before_block, with_kwargs=True),
        ]
        model.loracle_prefix_block = f  # read by uncertainty.sampling.mc_probs: blocks below f cost nothing now
        try:
            yield self
        finally:
            del model.loracle_prefix_block
            for handle in handles:
                handle.remove()
            if getattr(parent, attribute) is not full:
                setattr(parent, attribute, full)
            self._pending = None

    @torch.no_grad()
    def _fill(self, model: nn.Module, backbone: nn.Module, parent: nn.Module, attribute: str, full: nn.ModuleList,
              accepted: frozenset[str] | None, ids: torch.Tensor, mask: torch.Tensor | None,
              types: torch.Tensor | None, rows: list[tuple[str, int, int]], missing: list[int]) -> None:
        start = time.perf_counter()
        index = torch.as_tensor(missing, device=ids.device)
        inputs = {"input_ids": ids.index_select(0, index)}
        if mask is not None:
            inputs["attention_mask"] = mask.index_select(0, index)
        if types is not None:
            inputs["token_type_ids"] = types.index_select(0, index)
        if accepted is not None:
            inputs = {k: v for k, v in inputs.items() if k in accepted}
        captured: list[torch.Tensor] = []

        def grab(module: nn.Module, args: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)

        modes = [(m, m.training) for m in model.modules()]
        handle = full[self.first_block - 1].register_forward_hook(grab)
        self._filling = True
        try:
            model.eval()  # the stored states are the deterministic prefix
            setattr(parent, attribute, nn.ModuleList(list(full)[: self.first_block]))
            backbone(**inputs)
        finally:
            setattr(parent, attribute, full)
            handle.remove()
            self._filling = False
            for module, mode in modes:
                module.training = mode
        hidden = captured[0]  # (b, T, H)
        for j, i in enumerate(missing):
            key, lo, hi = rows[i]
            self.entries_[key] = hidden[j, lo:hi].detach().to("cpu", self.dtype).clone()
        self.misses_ += len(missing)
        self._dirty = True
        self.fill_seconds_ += time.perf_counter() - start

    def _assemble(self, rows: list[tuple[str, int, int]], length: int, device: torch.device) -> torch.Tensor:
        first = self.entries_[rows[0][0]]
        out = torch.zeros(len(rows), length, first.shape[-1], dtype=self.dtype)
        for i, (key, lo, hi) in enumerate(rows):
            out[i, lo:hi] = self.entries_[key]
        return out.to(device)


def _row_keys(ids: torch.Tensor, mask: torch.Tensor | None,
              types: torch.Tensor | None) -> list[tuple[str, int, int]] | None:
    """``(key, start, end)`` per row: a digest of the real tokens (and token types) and their offset."""
    ids_cpu = ids.detach().cpu()
    if mask is None:
        spans = [(0, ids.shape[1])] * ids.shape[0]
    else:
        m = mask.detach().cpu().bool()
        counts = m.sum(1)
        starts = m.int().argmax(1)
        spans = []
        for row in range(m.shape[0]):
            lo, n = int(starts[row]), int(counts[row])
            if n == 0 or not bool(m[row, lo:lo + n].all()):
                return None
            spans.append((lo, lo + n))
    types_cpu = types.detach().cpu() if types is not None else None
    out = []
    for row, (lo, hi) in enumerate(spans):
        digest = hashlib.blake2b(digest_size=16)
        digest.update(lo.to_bytes(4, "little"))
        digest.update(ids_cpu[row, lo:hi].to(torch.int64).numpy().tobytes())
        if types_cpu is not None:
            digest.update(types_cpu[row, lo:hi].to(torch.int8).numpy().tobytes())
        out.append((digest.hexdigest(), lo, hi))
    return out


def _accepted_names(forward: Any) -> frozenset[str] | None:
    params = inspect.signature(forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) and "input_ids" not in params:
        return None
    return frozenset(params)
