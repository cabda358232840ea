"""Grid <-> token sequence: the one layout every attention block of the package reads and writes.

A feature grid ``[B, D, i, j, k]`` becomes ``i * j * k`` tokens ``[B, L, D]`` in C order over ``(i, j, k)``
(the order :func:`~organdetr.models.blocks.deformable_attention.token_centres` gives their centres in).
"""

from __future__ import annotations

from torch import Tensor


def flatten_tokens(x: Tensor) -> Tensor:
    """``[B, D, i, j, k] -> [B, i*j*k, D]`` (token order = C order over (i, j, k))."""
    return x.flatten(2).transpose(1, 2)


def unflatten_tokens(tokens: Tensor, like: Tensor) -> Tensor:
    """``[B, L, D]`` back to the grid of ``like`` ``[B, D, i, j, k]``."""
    return tokens.transpose(1, 2).reshape(like.shape)


__all__ = ["flatten_tokens", "unflatten_tokens"]
