"""Exactly-half random masks for LoRA-SP, stored compactly as "trainable part, frozen part, gather index".

A matrix ``M`` is split along one axis (the flattened matrix for element masks, rows or columns for structured
masks) into a trainable block ``T`` and a frozen block ``F``. With ``index`` the inverse of the random permutation
that put the trainable positions first, the full matrix is rebuilt differentiably as

    M = cat([T, F], axis).index_select(axis, index)

so the gradient reaches ``T`` only, and ``F`` (a buffer) never moves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
        ``(rows, k)``, ``(rows, cols - k)``, ``(cols,)``. ``index`` is int32 (int64 beyond 2³¹ units).
    """
    axis = split_axis(mode)
    source = matrix.reshape(-1) if mode == "element" else matrix
    n = source.shape[axis]
    perm, n_train = half_permutation(n, generator)
    trainable = source.index_select(axis, perm[:n_train])
    frozen = source.index_select(axis, perm[n_train:])
    # Inverse permutation: position p of the matrix reads unit index[p] of cat(T, F). int32 halves its memory
    # (index_select and index_add take int32); with int64 an element mask's index would outweigh the optimizer
    # state that freezing saves.
    index_dtype = torch.int32 if n < 2**31 else torch.int64
    index = torch.empty(n, dtype=index_dtype).index_put_((perm,), torch.arange(n, dtype=index_dtype))
    return trainable, frozen, index


def assemble(trainable: torch.Tensor, frozen: torch.Tensor, index: torch.Tensor, mode: str,
             shape: tuple[int, int]) -> torch.Tensor:
    """Rebuild the full ``shape`` matrix from :func:`split_matrix`'s parts (out of place, differentiable)."""
    axis = split_axis(mode)
    full = torch.cat([trainable, frozen], dim=axis).index_select(axis, index)
    return full.view(shape) if mode == "element" else full


def _trainable_grad(grad_full: torch.Tensor, index: torch.Tensor, mode: str, n_train: int) -> torch.Tensor:
    """Gradient w.r.t. the trainable block from the gradient w.r.t. the full matrix (the adjoint of the gather)."""
    axis = split_axis(mode)
    source = grad_full.reshape(-1) if mode == "element" else grad_full
    grad_cat = torch.zeros_like(source).index_add_(axis, index, source)  # full[p] = cat[index[p]]
    return grad_cat.narrow(axis, 0, n_train)


class _AssembledLinear(torch.autograd.Function):
    """``F.linear(x, assemble(T, F, index))`` that does not keep the assembled weight alive for backward.

    Autograd through :func:`assemble` would save the full ``(rows, cols)`` weight until backward; this saves only
    the parts (already in memory) and re-assembles in backward, a few microseconds for a rank-r matrix. That keeps
    LoRA-SP's training memory below LoRA's even for element masks, whose gather index costs as much as ``A``.
    """

    @staticmethod
    def forward(ctx, x, trainable, frozen, index, mode, shape):  # type: ignore[override]
        ctx.save_for_backward(x, trainable, frozen, index)
        ctx.mode, ctx.shape = mode, shape
        return F.linear(x, assemble(trainable, frozen, index, mode, shape))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, trainable, frozen, index = ctx.saved_tensors
        weight = assemble(trainable, frozen, index, ctx.mode, ctx.shape)  # (rows, cols) = (out, in) of this linear
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        grad_t = None
        if ctx.needs_input_grad[1]:
            grad_w = grad_out.reshape(-1, grad_out.shape[-1]).T @ x.reshape(-1, x.shape[-1])  # (rows, cols)
            grad_t = _trainable_grad(grad_w, index, ctx.mode, trainable.shape[split_axis(ctx.mode)])
        return grad_x, grad_t, None, None, None, None


def assembled_linear(x: torch.Tensor, trainable: torch.Tensor, frozen: torch.Tensor, index: torch.Tensor, mode: str,
                     shape: tuple[int, int]) -> torch.Tensor:
    """``x @ Mᵀ`` with ``M = assemble(trainable, frozen, index, mode, shape)``, differentiable in ``x``/``trainable``.

    Args:
        x: ``(..., cols)``.

    Returns:
        ``(..., rows)``.
    """
    return _AssembledLinear.apply(x, trainable, frozen, index, mode, shape)
