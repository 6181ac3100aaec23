"""Finding target layers and replacing them with adapters: the one place that edits a model's module tree."""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
from torch import nn

from loracle.adapters.base import MAX_TARGET_REGEX_LENGTH, AdapterConfig, AdapterLayer, linear_shape
from loracle.errors import LoracleError

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


def _suffixes(name: str) -> Iterator[str]:
    """Every suffix of ``name`` on a ``.`` boundary (``a.b.c``, ``b.c``, ``c``): what a target name can match."""
    parts = name.split(".")
    for i in range(len(parts)):
        yield ".".join(parts[i:])


def _suffix_matches(names: list[str], patterns: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """``({pattern: names it matches}, patterns that match nothing)``, in time linear in names and patterns.

    (A list from an untrusted adapter file may be long; testing every pattern against every name would not be.)
    """
    wanted = set(patterns)
    hits: dict[str, list[str]] = {}
    for name in names:
        for suffix in _suffixes(name):
            if suffix in wanted:
                hits.setdefault(suffix, []).append(name)
    return hits, [p for p in dict.fromkeys(patterns) if p not in hits]


# -- regular-expression targets with a bounded matching cost ---------------------------------------------------------
# Python's ``re`` backtracks, so a crafted pattern such as ``(.*.*)*X`` takes exponential time on a 40-character
# module name, and ``.*.*.*.*.*.*X`` polynomial time of high degree. Before matching, the pattern's parse tree is
# read and the number of backtracking paths bounded from above: a repeat (``*``, ``+``, ``{m,n}``) of a part without
# choices has at most ``L + 1`` iteration counts on a name of length ``L``, an alternative adds its branches' paths,
# a sequence multiplies. A repeat of a part that itself has choices (a nested quantifier) is refused outright; so is
# a pattern whose bound over all names exceeds ``_REGEX_PATH_BUDGET`` (measured: ~0.3 s for 400 names at 7e8).
_REGEX_PATH_BUDGET = 10**8


class _UnsafeRegex(Exception):
    """A pattern whose matching time cannot be bounded (the message says which part)."""


def _regex_parser():  # the parser behind ``re`` (private API: ``re._parser`` since 3.11, ``sre_parse`` before)
    try:
        from re import _constants as constants
        from re import _parser as parser
    except ImportError:  # Python 3.10
        import sre_constants as constants  # type: ignore[no-redef]
        import sre_parse as parser  # type: ignore[no-redef]
    return parser, constants


def _regex_paths(items: object, length: int, constants: object) -> int:
    """Upper bound on the backtracking paths of a parsed (sub)pattern on names of at most ``length`` characters."""
    c = constants
    repeats = {getattr(c, n) for n in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") if hasattr(c, n)}
    refs = {getattr(c, n) for n in ("GROUPREF", "GROUPREF_EXISTS", "GROUPREF_IGNORE", "GROUPREF_LOC_IGNORE",
                                    "GROUPREF_UNI_IGNORE") if hasattr(c, n)}
    total = 1
    for op, av in items:  # type: ignore[attr-defined]
        if op in repeats:
            low, high, body = av
            inner = _regex_paths(body, length, c)
            if high > 1 and inner > 1:
                raise _UnsafeRegex("a repeated group contains another repeat or an alternative (a nested "
                                   "quantifier such as (a*)* or (a|ab)+, whose matching time can grow exponentially)")
            if high == 0:
                paths = 1
            elif high == 1:
                paths = inner + (low == 0)
            else:
                paths = max(1, min(high, length) - low + 1)
        elif op == c.BRANCH:
            paths = sum(_regex_paths(branch, length, c) for branch in av[1])
        elif op == c.SUBPATTERN:
            paths = _regex_paths(av[-1], length, c)
        elif op in (c.ASSERT, c.ASSERT_NOT):
            paths = _regex_paths(av[1], length, c)
        elif op == getattr(c, "ATOMIC_GROUP", None):
            paths = _regex_paths(av, length, c)
        elif op in refs:
            raise _UnsafeRegex("back-references are not supported")
        else:  # literals, classes, anchors: no choice
            paths = 1
        total = min(total * paths, 10**30)
    return total


def _regex_targets(pattern: str, names: list[str]) -> list[str]:
    """The names ``pattern`` matches in full, after checking that matching them takes bounded time.

    Raises:
        LoracleError: an invalid pattern, one over ``MAX_TARGET_REGEX_LENGTH`` characters, a nested quantifier, a
            back-reference, or a pattern whose backtracking bound over ``names`` exceeds the budget.
    """
    if len(pattern) > MAX_TARGET_REGEX_LENGTH:
        raise LoracleError(f"target_modules regex is {len(pattern)} characters long; at most "
                           f"{MAX_TARGET_REGEX_LENGTH} are accepted (give a list of layer names instead)")
    parser, constants = _regex_parser()
    try:
        compiled = re.compile(pattern)
        tree = parser.parse(pattern)
        longest = max((len(n) for n in names), default=0)
        paths = _regex_paths(tree, longest, constants) * max(1, len(names))
    except (re.error, OverflowError, RecursionError) as err:
        raise LoracleError(f"target_modules {pattern!r} is not a valid regular expression: {err}") from err
    except _UnsafeRegex as err:
        raise LoracleError(f"target_modules {pattern!r} is refused: {err}. Write it without nesting (e.g. "
                           "'.*\\.(query|value)') or give a list of name suffixes") from None
    if paths > _REGEX_PATH_BUDGET:
        raise LoracleError(f"target_modules {pattern!r} is refused: matching it against the {len(names)} layer "
                           f"names could take up to {float(paths):.1e} backtracking steps (more than "
                           f"{float(_REGEX_PATH_BUDGET):.0e}: too many repeats such as '.*' in a row). Simplify it "
                           "or give a list of name suffixes")
    return [n for n in names if compiled.fullmatch(n)]


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
        LoracleError: (a ``ValueError``) a regex target whose matching time cannot be bounded (see
            :func:`_regex_targets`), or a rank above ``min(in_features, out_features)`` of a chosen layer.
    """
    candidates = [n for n in linear_layer_names(model) if ".base_layer" not in n]
    targets = config.target_modules
    if targets is None:
        chosen = [n for n in candidates if n.rsplit(".", 1)[-1] not in _HEAD_NAMES]
    elif isinstance(targets, str):
        chosen = _regex_targets(targets, candidates)
    else:
        hits, missing = _suffix_matches(candidates, targets)
        matched = {n for names in hits.values() for n in names}
        chosen = [n for n in candidates if n in matched]
        if missing and chosen:
            shown = f"{missing}" if len(missing) <= 5 else f"{missing[:5]} and {len(missing) - 5} more"
            raise ValueError(
                f"target_modules {shown} match no linear layer of {type(model).__name__}; "
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
    _check_rank(model, chosen, config.rank)
    return chosen


def _check_rank(model: nn.Module, names: list[str], rank: int) -> None:
    """Refuse a rank above ``min(in_features, out_features)`` of a layer, before any adapter memory is allocated.

    Such a rank adds parameters but no expressiveness (``B A`` has rank at most the smaller dimension), and from an
    untrusted adapter file (``rank: 2000000``) it would exhaust memory.
    """
    too_large = []
    for name in names:
        in_features, out_features, _ = linear_shape(model.get_submodule(name))
        if rank > min(in_features, out_features):
            too_large.append((name, in_features, out_features))
    if too_large:
        name, in_features, out_features = too_large[0]
        smallest = min(min(i, o) for _, i, o in too_large)
        more = f" and {len(too_large) - 1} more layer(s)" if len(too_large) > 1 else ""
        raise LoracleError(
            f"rank {rank} exceeds min(in_features, out_features) of layer {name!r} (in_features {in_features}, "
            f"out_features {out_features}){more}; use rank <= {smallest}, or leave such layers out of "
            "target_modules"
        )


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
    hits, missing = _suffix_matches(names, patterns)
    if missing:
        top = sorted({n.split(".")[0] for n in names})
        raise ValueError(f"modules_to_save entry {missing[0]!r} matches no module; top-level modules are {top}")
    chosen = list(dict.fromkeys(n for pattern in dict.fromkeys(patterns) for n in hits[pattern]))
    # Drop names nested in another chosen name (``classifier`` and ``classifier.dense``): train the outer one.
    chosen_set = set(chosen)
    return [n for n in chosen if not any(prefix in chosen_set for prefix in _prefixes(n))]


def _prefixes(name: str) -> Iterator[str]:
    """Every proper prefix of ``name`` on a ``.`` boundary (``a.b.c``: ``a``, ``a.b``)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        yield ".".join(parts[:i])


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
