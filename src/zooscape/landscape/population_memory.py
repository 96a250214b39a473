"""How many models one Hessian population may hold: consecutive chunks and a memory-based size
(:mod:`zooscape.landscape.population` re-exports both)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from zooscape.landscape._hvp import model_device

__all__ = ["HESSIAN_MEMORY_BUDGET", "HESSIAN_TENSOR_LIMIT", "population_chunk_size", "population_chunks"]


def population_chunks(items: Sequence, size: int) -> list[list]:
    """Split a list of models (or ids) into consecutive chunks of at most ``size``: one population per chunk.

    Peak memory of a population pass is about ``size`` times that of one model's pass (the autograd graphs of its
    members), so ``size`` is the memory bound.

    Args:
        items: the models (or anything), in order.
        size: most items per chunk (>= 1).

    Returns:
        list of lists, in order.
    """
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    items = list(items)
    return [items[i:i + size] for i in range(0, len(items), size)]


#: Default memory budget of one Hessian population (bytes): :func:`population_chunk_size` fits this many.
HESSIAN_MEMORY_BUDGET = 512 * 2**20
#: Bytes kept per byte of forward activations by a cached ``create_graph`` gradient (forward activations, the
#: backward's intermediates and the double backward's buffers; measured 2.5-3.5x on MLPs and CNN-s, rounded up).
_GRAPH_FACTOR = 4
#: Most bytes of one population activation (a leaf's output times N): glibc serves larger blocks by ``mmap`` afresh
#: every time (its dynamic threshold stops at 32 MiB), and page-faulting them in made a 16-CNN-s population product
#: about 1.5x slower than with them recycled (bench/RESULTS.md, branch ``hessfast2``).
HESSIAN_TENSOR_LIMIT = 24 * 2**20


def population_chunk_size(model: nn.Module, x: Tensor, *, budget: int = HESSIAN_MEMORY_BUDGET,
                          limit: int = 64, tensor_limit: int | None = HESSIAN_TENSOR_LIMIT) -> int:
    """Most models of ``model``'s architecture whose Hessian population fits ``budget`` bytes on inputs ``x``.

    One model's share is estimated from one eval-mode forward of ``model`` on ``x`` (no gradients): the bytes of
    every leaf module's output (its activations), times a factor of 4 for the cached linearised gradient and the
    double backward, plus 4 copies of its parameters (values, gradient, probe and product). With ``tensor_limit``,
    the largest leaf output times the population size stays within ``tensor_limit`` bytes too.

    Args:
        model: one model of the architecture.
        x: the inputs ``[B, *in]`` the population will be evaluated on (one data chunk).
        budget: bytes one population may hold (default :data:`HESSIAN_MEMORY_BUDGET`, 512 MiB).
        limit: most models per population.
        tensor_limit: most bytes of one population activation (default :data:`HESSIAN_TENSOR_LIMIT`; ``None``: no
            limit).

    Returns:
        int in ``[1, limit]``.
    """
    total = [0, 0]

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, Tensor):
            total[0] += out.numel() * out.element_size()
            total[1] = max(total[1], out.numel() * out.element_size())

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            first = next(model.parameters(), None)
            dtype = first.dtype if first is not None and x.is_floating_point() else None
            model(x.to(device=model_device(model), dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    per_model = _GRAPH_FACTOR * total[0] + 4 * params
    size = budget // max(per_model, 1)
    if tensor_limit is not None:
        size = min(size, tensor_limit // max(total[1], 1))
    return int(max(1, min(limit, size)))
