"""Exactly-half random masks for LoRA-SP, stored compactly as "trainable part, frozen part, gather index".

A matrix ``M`` is split into a trainable block ``T`` and a frozen block ``F`` by one of four *layouts*:

- ``element``: single entries of the flattened matrix;
- ``row`` / ``column``: whole rows / whole columns;
- ``block``: the rows are split into two random groups ``R0, R1`` and the columns into ``C0, C1``; the trainable
  entries are ``R0 × C0`` and ``R1 × C1`` (the diagonal blocks after permuting), the frozen ones the other two
  blocks. Every row and every column keeps trainable entries.

With ``index`` the inverse of the random permutation that put the trainable units first, the full matrix is
rebuilt differentiably, e.g. for ``row`` / ``column``

    M = cat([T, F], axis).index_select(axis, index)

so the gradient reaches ``T`` only, and ``F`` (a buffer) never moves.

Why ``B`` needs its own layout: ``B`` starts at zero, so its frozen entries stay zero for ever. Freezing whole rows
of ``B`` would pin those outputs' update at zero, and freezing whole (rank) columns would cut the rank of ``B A`` to
``r / 2`` and leave the matching rows of ``A`` without any gradient. :func:`layouts` therefore gives ``B`` a
pattern that keeps trainable entries in every row and every rank column (``block`` for the structured modes,
row-balanced entries for ``element``), and uses the mode's own layout only for ``A``, whose frozen entries are its
random initial values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MASK_MODES = ("element", "row", "column")
LAYOUTS = ("element", "row", "column", "block")


def layouts(mode: str) -> tuple[str, str]:
    """``(layout of A, layout of B)`` for a mask mode.

    ``A`` (``r × in``) uses the mode itself. ``B`` (``out × r``) uses ``block`` for ``row`` and ``column`` and
    row-balanced single entries (``element``, drawn by :func:`split_matrix` with ``balance_rows=True``) for
    ``element``.
    """
    return mode, ("element" if mode == "element" else "block")


def split_axis(layout: str) -> int:
    """The axis a single-axis layout splits: ``0`` for the flattened matrix (``element``) and rows, ``1`` for
    columns."""
    return 1 if layout == "column" else 0


def num_units(shape: tuple[int, int], layout: str) -> int:
    """How many units (entries, rows or columns) a single-axis layout chooses from for a matrix of ``shape``."""
    if layout == "element":
        return shape[0] * shape[1]
    return shape[0] if layout == "row" else shape[1]


def block_sizes(shape: tuple[int, int]) -> tuple[int, int]:
    """``(|R0|, |C0|)`` of the ``block`` layout: ``C0`` holds ``floor(cols / 2)`` columns and ``R0``
    ``ceil(rows / 2)`` rows, which makes ``|R0|·|C0| + |R1|·|C1| = floor(rows · cols / 2)`` exactly."""
    rows, cols = shape
    return (rows + 1) // 2, cols // 2


def half_permutation(n: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """A random permutation of ``range(n)`` whose first ``n // 2`` entries are the trainable units.

    For odd ``n`` the trainable part is the smaller one (``floor(n / 2)``), so LoRA-SP never trains more than half.

    Returns:
        ``(perm, n_train)`` with ``perm`` a ``(n,)`` int64 tensor.
    """
    return torch.randperm(n, generator=generator), n // 2


def row_balanced_permutation(shape: tuple[int, int], generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """Like :func:`half_permutation` over the ``rows · cols`` entries, but every row gets ``floor(cols / 2)`` or
    ``ceil(cols / 2)`` trainable entries (``floor(rows / 2)`` random rows the larger count when ``cols`` is odd),
    ``floor(rows · cols / 2)`` in all.

    A uniform draw leaves a row with no trainable entry with probability about ``2^-cols`` (with ``cols = r = 4``,
    one output in 16 of ``B`` could never adapt).

    Returns:
        ``(perm, n_train)``: flattened positions, trainable ones first (in row-major order).
    """
    rows, cols = shape
    counts = torch.full((rows,), cols // 2, dtype=torch.long)
    if cols % 2:
        counts[torch.randperm(rows, generator=generator)[: rows // 2]] += 1
    # a uniformly random order of the columns within each row; its first counts[row] columns train
    order = torch.rand(rows, cols, generator=generator).argsort(dim=1).argsort(dim=1)  # (rows, cols)
    trainable = (order < counts[:, None]).reshape(-1)
    perm = torch.cat([trainable.nonzero().squeeze(1), (~trainable).nonzero().squeeze(1)])
    return perm, int(counts.sum())


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    # Position p of the matrix reads unit index[p] of cat(T, F). int32 halves its memory (index_select takes
    # int32); with int64 an element mask's index would outweigh the optimizer state that freezing saves.
    n = perm.numel()
    dtype = torch.int32 if n < 2**31 else torch.int64
    return torch.empty(n, dtype=dtype).index_put_((perm,), torch.arange(n, dtype=dtype))


def split_matrix(
    matrix: torch.Tensor, layout: str, generator: torch.Generator, balance_rows: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``matrix`` into trainable values, frozen values and the gather index that reassembles it.

    Args:
        matrix: ``(rows, cols)``.
        layout: ``"element"``, ``"row"``, ``"column"`` or ``"block"``.
        generator: draws the permutation(s).
        balance_rows: ``element`` only: draw with :func:`row_balanced_permutation` instead of a uniform one.

    Returns:
        ``(trainable, frozen, index)``: for ``element`` shapes ``(n_train,)``, ``(n - n_train,)``, ``(n,)`` with
        ``n = rows · cols``; for ``row`` ``(k, cols)``, ``(rows - k, cols)``, ``(rows,)``; for ``column``
        ``(rows, k)``, ``(rows, cols - k)``, ``(cols,)``; for ``block`` ``(n_train,)``, ``(n - n_train,)``,
        ``(rows + cols,)`` (the inverse row permutation, then the inverse column permutation). ``index`` is int32
        (int64 beyond 2³¹ units).
    """
    if layout == "block":
        return _split_block(matrix, generator)
    axis = split_axis(layout)
    source = matrix.reshape(-1) if layout == "element" else matrix
    if balance_rows and layout == "element":
        perm, n_train = row_balanced_permutation(tuple(matrix.shape), generator)
    else:
        perm, n_train = half_permutation(source.shape[axis], generator)
    trainable = source.index_select(axis, perm[:n_train])
    frozen = source.index_select(axis, perm[n_train:])
    return trainable, frozen, _inverse(perm)


def _split_block(matrix: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, cols = matrix.shape
    a, c = block_sizes((rows, cols))
    row_perm = torch.randperm(rows, generator=generator)  # first a rows: R0
    col_perm = torch.randperm(cols, generator=generator)  # first c columns: C0
    permuted = matrix.index_select(0, row_perm).index_select(1, col_perm)  # (rows, cols), blocks in place
    t0, f0 = permuted[:a, :c], permuted[:a, c:]
    f1, t1 = permuted[a:, :c], permuted[a:, c:]
    trainable = torch.cat([t0.reshape(-1), t1.reshape(-1)])
    frozen = torch.cat([f0.reshape(-1), f1.reshape(-1)])
    return trainable, frozen, torch.cat([_inverse(row_perm), _inverse(col_perm)])


def assemble(trainable: torch.Tensor, frozen: torch.Tensor, index: torch.Tensor, layout: str,
             shape: tuple[int, int]) -> torch.Tensor:
    """Rebuild the full ``shape`` matrix from :func:`split_matrix`'s parts (out of place, differentiable)."""
    if layout == "block":
        rows, cols = shape
        a, c = block_sizes(shape)
        t0, t1 = trainable.split([a * c, (rows - a) * (cols - c)])
        f0, f1 = frozen.split([a * (cols - c), (rows - a) * c])
        top = torch.cat([t0.view(a, c), f0.view(a, cols - c)], dim=1)  # rows R0: columns C0 train
        bottom = torch.cat([f1.view(rows - a, c), t1.view(rows - a, cols - c)], dim=1)  # rows R1: columns C1 train
        permuted = torch.cat([top, bottom], dim=0)  # (rows, cols) in the permuted order
        return permuted.index_select(0, index[:rows]).index_select(1, index[rows:])
    axis = split_axis(layout)
    full = torch.cat([trainable, frozen], dim=axis).index_select(axis, index)
    return full.view(shape) if layout == "element" else full


def _trainable_grad(grad_full: torch.Tensor, trainable: torch.Tensor, frozen: torch.Tensor, index: torch.Tensor,
                    layout: str, shape: tuple[int, int]) -> torch.Tensor:
    """Gradient w.r.t. the trainable block from the gradient w.r.t. the full matrix (the adjoint of
    :func:`assemble`, a scatter of ``grad_full`` back into the trainable positions)."""
    with torch.enable_grad():
        leaf = trainable.detach().requires_grad_(True)
        full = assemble(leaf, frozen, index, layout, shape)
    (grad,) = torch.autograd.grad(full, leaf, grad_full.to(full.dtype))
    return grad


class _AssembledLinear(torch.autograd.Function):
    """``F.linear(x, assemble(T, F, index))`` that does not keep the assembled weight alive for backward.

    Autograd through :func:`assemble` would save the full ``(rows, cols)`` weight until backward; this saves only
    the parts (already in memory) and re-assembles in backward, a few microseconds for a rank-r matrix. That keeps
    LoRA-SP's training memory below LoRA's even for element masks, whose gather index costs as much as ``A``.

    Mixed precision: under autocast the forward's ``F.linear`` runs in the autocast dtype and so does the incoming
    gradient, while ``x`` and the parts keep their own dtypes; backward computes in the gradient's dtype (as
    autocast's own linear does) and returns each gradient in its input's dtype.
    """

    @staticmethod
    def forward(ctx, x, trainable, frozen, index, layout, shape):  # type: ignore[override]
        ctx.save_for_backward(x, trainable, frozen, index)
        ctx.layout, ctx.shape = layout, shape
        return F.linear(x, assemble(trainable, frozen, index, layout, shape))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, trainable, frozen, index = ctx.saved_tensors
        compute = grad_out.dtype
        grad_x = grad_t = None
        if ctx.needs_input_grad[0]:
            weight = assemble(trainable, frozen, index, ctx.layout, ctx.shape)  # (rows, cols) = (out, in)
            grad_x = (grad_out @ weight.to(compute)).to(x.dtype)
        if ctx.needs_input_grad[1]:
            x_2d = x.reshape(-1, x.shape[-1]).to(compute)  # (N, cols)
            grad_w = grad_out.reshape(-1, grad_out.shape[-1]).T @ x_2d  # (rows, cols)
            grad_t = _trainable_grad(grad_w, trainable, frozen, index, ctx.layout, ctx.shape)
        return grad_x, grad_t, None, None, None, None


def assembled_linear(x: torch.Tensor, trainable: torch.Tensor, frozen: torch.Tensor, index: torch.Tensor,
                     layout: str, shape: tuple[int, int]) -> torch.Tensor:
    """``x @ Mᵀ`` with ``M = assemble(trainable, frozen, index, layout, shape)``, differentiable in ``x`` and
    ``trainable``.

    Args:
        x: ``(..., cols)``.

    Returns:
        ``(..., rows)``.
    """
    return _AssembledLinear.apply(x, trainable, frozen, index, layout, shape)
