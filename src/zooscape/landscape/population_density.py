"""Hessian spectral density of a whole population of models per product (stochastic Lanczos quadrature).

The density counterpart of :func:`~zooscape.landscape.population.population_top_eigenvalues`: N x r independent
Lanczos runs (r probes for each of the N models) whose Hessian products are one population pass per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zooscape.landscape._hvp import LinearOperator, as_generator, rademacher
from zooscape.landscape.hessian import lanczos
from zooscape.landscape.population import PopulationHessianOperator, _check_seed
from zooscape.landscape.stochastic import SpectralDensity

__all__ = ["population_spectral_density"]


class _ProbeRows(LinearOperator):
    """Rows ``[r * N, P]`` in probe-major order, row ``i * N + n`` multiplied by model n's Hessian."""

    def __init__(self, op: PopulationHessianOperator, num_probes: int) -> None:
        self.op, self.r = op, num_probes
        self.dim, self.dtype, self.device, self.num_matvecs = op.dim, op.dtype, op.device, 0

    def matmat(self, vectors: Tensor) -> Tensor:
        v = self._check(vectors)
        return self.op.matmat(v.view(self.r, self.op.size, self.dim)).reshape(-1, self.dim)


def population_spectral_density(op: PopulationHessianOperator, *, num_steps: int = 50, num_probes: int = 1,
                                seed: int | None = None) -> list[SpectralDensity]:
    """Spectral density (stochastic Lanczos quadrature) of every model's Hessian, all models per product.

    Each model gets the Rademacher probes that :func:`~zooscape.landscape.spectral_density` draws with ``seed``, and
    its runs stop at their own breakdowns, so result n equals ``spectral_density(hessian_operator(models[n], ...),
    num_steps=num_steps, num_probes=num_probes, seed=seed)`` up to float rounding. One Lanczos step is one
    population product of a ``[num_probes, N, P]`` block.

    Args:
        op: a :class:`~zooscape.landscape.population.PopulationHessianOperator` (N models of dimension P).
        num_steps: Lanczos steps per probe (clipped to P).
        num_probes: Rademacher probes per model.
        seed: integer seed (default 0; every model uses the same probes, as the per-model function would).

    Returns:
        list of N :class:`~zooscape.landscape.SpectralDensity` (``nodes``/``weights`` ``[num_probes, m]``), in model
        order.

    References:
        Lin, Saad and Yang, 2016; Ghorbani, Krishnan and Xiao, 2019; Yao et al., 2020 (PyHessian).
    """
    seed = _check_seed(seed)
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    n_models = op.size
    probes = rademacher((num_probes, op.dim), as_generator(seed), op.dtype, op.device)  # as the per-model draw
    start = probes[:, None].expand(num_probes, n_models, op.dim).reshape(-1, op.dim)
    run = lanczos(_ProbeRows(op, num_probes), num_steps, start=start, keep_basis=False)
    m = run.alphas.shape[1]
    out = []
    for n in range(n_models):
        nodes = torch.zeros(num_probes, m, dtype=torch.float64)
        weights = torch.zeros(num_probes, m, dtype=torch.float64)
        for i in range(num_probes):
            theta, s = run.ritz(i * n_models + n)
            k = theta.shape[0]
            nodes[i, :k] = theta.cpu()
            weights[i, :k] = (s[0] ** 2).cpu()
        out.append(SpectralDensity(nodes, weights, op.dim))
    return out
