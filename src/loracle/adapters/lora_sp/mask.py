"""Exactly-half random masks for LoRA-SP, stored compactly as "trainable part, frozen part, gather index".

A matrix ``M`` is split along one axis (the flattened matrix for element masks, rows or columns for structured
masks) into a trainable block ``T`` and a frozen block ``F``. With ``index`` the inverse of the random permutation
that put the trainable positions first, the full matrix is rebuilt differentiably as

    M = cat([T, F], axis).index_select(axis, index)

so the gradient reaches ``T`` only, and ``F`` (a buffer) never moves.
"""

from __future__ import annotations

import torch

MASK_MODES = ("element", "row", "column")


def split_axis(mode: str) -> int:
    """The axis a mask mode splits: ``0`` for the flattened matrix (``element``) and for rows, ``1`` for columns."""
    return 1 if mode == "column" else 0


def num_units(shape: tuple[int, int], mode: str) -> int:
    """How many units (entries, rows or columns) a mask of ``mode`` chooses from for a matrix of ``shape``."""
    if mode == "element":
        return shape[0] * shape[1]
    return shape[0] if mode == "row" else shape[1]


def half_permutation(n: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """A random permutation of ``range(n)`` whose first ``n // 2`` entries are the trainable units.

    For odd ``n`` the trainable part is the smaller one (``floor(n / 2)``), so LoRA-SP never trains more than half.

    Returns:
        ``(perm, n_train)`` with ``perm`` a ``(n,)`` int64 tensor.
    """
    return torch.randperm(n, generator=generator), n // 2


def split_matrix(
    matrix: torch.Tensor, mode: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``matrix`` into trainable values, frozen values and the gather index that reassembles it.

    Args:
        matrix: ``(rows, cols)``.
        mode: ``"element"``, ``"row"`` or ``"column"``.
        generator: draws the permutation.

    Returns:
        ``(trainable, frozen, index)``: for ``element`` shapes ``(n_train,)``, ``(n - n_train,)``, ``(n,)`` with
        ``n = rows · cols``; for ``row`` ``(k, cols)``, ``(rows - k, cols)``, ``(rows,)``; for ``column``
        ``(rows, k)``, ``(rows, cols - k)``, ``(cols,)``.
    """
    axis = split_axis(mode)
    source = matrix.reshape(-1) if mode == "element" else matrix
    perm, n_train = half_permutation(source.shape[axis], generator)
    ordered = source.index_select(axis, perm)
    trainable, frozen = ordered.split([n_train, source.shape[axis] - n_train], dim=axis)
    index = torch.argsort(perm)  # inverse permutation: position p of the matrix reads unit index[p] of cat(T, F)
    return trainable.clone(), frozen.clone(), index


def assemble(trainable: torch.Tensor, frozen: torch.Tensor, index: torch.Tensor, mode: str,
             shape: tuple[int, int]) -> torch.Tensor:
    """Rebuild the full ``shape`` matrix from :func:`split_matrix`'s parts (out of place, differentiable)."""
    axis = split_axis(mode)
    full = torch.cat([trainable, frozen], dim=axis).index_select(axis, index)
    return full.view(shape) if mode == "element" else full
