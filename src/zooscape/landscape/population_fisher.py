"""Fisher trace of a whole population of models per pass, through the trainer's stacked layers.

The Fisher counterpart of :mod:`zooscape.landscape.population` (which builds the eval-mode population with plain,
twice-differentiable layers): one result per model, equal to :func:`~zooscape.landscape.fisher_trace_estimate` of
that model alone with the same seed, up to float rounding. Each sample's output Gram matrix ``J J^T`` is formed
layer by layer (:mod:`zooscape.landscape.population_fisher_factors`) where the layers allow, else from its Jacobian.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vjp, vmap

from zooscape.landscape._hvp import as_generator, make_batches
from zooscape.landscape.fisher import FisherTrace, check_fisher, trace_from_samples
from zooscape.landscape.population import _build, _check_seed, _Layout, _plain_layers, _shared_forward
from zooscape.landscape.population_fisher_factors import FactorGrams, NotFactorable, factor_layers

__all__ = ["JACOBIAN_ELEMENTS", "population_fisher_trace_estimate"]

#: Ways of forming the per-sample Gram matrices (see :func:`population_fisher_trace_estimate`).
METHODS = ("auto", "factors", "jacobian")

#: Entries of per-sample Jacobians formed at once by :func:`population_fisher_trace_estimate` (64 MiB in float32).
JACOBIAN_ELEMENTS = 1 << 24


def population_fisher_trace_estimate(models: Sequence[nn.Module], x: Tensor, y: Tensor | None = None, *,
                                     kind: str = "sampled", likelihood: str = "categorical", num_samples: int = 1,
                                     batch_size: int | None = 256, device: torch.device | str | None = None,
                                     dtype: torch.dtype | None = None, seed: int | None = None,
                                     method: str = "auto") -> list[FisherTrace]:
    """Fisher trace (with its standard error) of every model of a population, all models per pass.

    The squared norm of a per-sample gradient is a quadratic form of the output gradient ``d = dl/df``:
    ``||J^T d||^2 = d^T (J J^T) d`` with ``J`` the ``[K, P]`` Jacobian of the sample's K outputs. So one pass per
    input forms each model's ``K x K`` output Gram matrix ``J J^T`` (K products through the population, from one
    shared forward), and every label draw then costs a K x K quadratic form instead of a forward and a backward
    (``d = softmax - onehot(y)`` for a categorical likelihood, ``d = f - y`` for a unit Gaussian; ``kind="exact"``
    sums the classes in closed form). When there are fewer draws than outputs (``"empirical"``, or ``"sampled"``
    with ``num_samples < K``) the draws' gradients are taken directly instead. Labels are drawn per model from its
    own generator seeded with ``seed``, in the per-model order, so result n equals
    ``fisher_trace_estimate(models[n], x, y, ..., seed=seed)`` up to float rounding.

    ``method="factors"`` (chosen by ``"auto"`` where it applies) forms the Gram matrices -- and the direct draws'
    squared norms -- layer by layer from each layer's inputs and output gradients, with no ``P``-sized tensor
    (Goodfellow, 2015; BackPACK's ``BatchL2``, Dangel et al., 2020; see
    :mod:`zooscape.landscape.population_fisher_factors`): Linear, Conv2d, BatchNorm (running statistics),
    GroupNorm and LayerNorm layers.
    ``method="jacobian"`` forms each sample's ``[N, K, P]`` Jacobian instead (any population), for at most
    :data:`JACOBIAN_ELEMENTS` entries at a time (``N*K*P`` per sample).

    Args:
        models: N models of one architecture; logits ``[n, C]`` (categorical) or means (unit Gaussian).
        x: inputs ``[n, *in]`` shared by every model.
        y: labels ``[n]`` / targets ``[n, ...]``; needed for ``kind="empirical"``.
        kind: ``"empirical"``, ``"sampled"`` (default) or ``"exact"``.
        likelihood: ``"categorical"`` (default) or ``"gaussian"``.
        num_samples: label draws per input for ``"sampled"``.
        batch_size: inputs per label-drawing batch, as in the per-model function (``None``: all).
        device: compute device (default: the first model's).
        dtype: compute dtype (default: the models').
        seed: integer seed (default 0).
        method: ``"auto"`` (default: ``"factors"`` where every parameter layer is covered, else ``"jacobian"``),
            ``"factors"`` (raises :class:`~zooscape.landscape.population_fisher_factors.NotFactorable` where not
            covered) or ``"jacobian"``.

    Returns:
        list of N :class:`~zooscape.landscape.FisherTrace`, in model order.

    References:
        Amari, 1998; Kunstner, Balles and Hennig, 2019; Achille, Rovere and Soatto, 2019; Martens, 2020;
        Goodfellow, 2015; Dangel, Kunstner and Hennig, 2020.
    """
    check_fisher(kind, likelihood, num_samples, y)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    seed = _check_seed(seed)
    if y is None:
        y = torch.zeros(x.shape[0])
    pop, names, _, dev = _build(models, device, dtype)
    layout = _Layout(pop, names)
    n_models = pop.size
    params = layout.unflatten(layout.flat)
    batches = make_batches(x, y, batch_size, device=dev, dtype=dtype)
    gens = [as_generator(seed) for _ in range(n_models)]
    fac = None
    if method != "jacobian":
        layers = factor_layers(pop, names)
        if layers is None and method == "factors":
            raise NotFactorable(f"the population of {type(models[0]).__name__} has layers or parameters that the "
                                "factorisation does not cover (it covers Linear, Conv2d with groups=1, BatchNorm "
                                "with running statistics, GroupNorm and LayerNorm, every parameter differentiated)")
        fac = FactorGrams(pop, layers) if layers is not None else None

    def sample_out(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return _shared_forward(pop, p, xi.unsqueeze(0))[0]  # [N, K]

    def sample_jacobian(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        out, pull = vjp(lambda q: sample_out(q, xi), p)
        k_out = out.shape[-1]
        basis = torch.eye(k_out, dtype=out.dtype, device=out.device)[:, None].expand(k_out, n_models, k_out)
        grads = vmap(pull)(basis)[0]  # {name: [K, N, *shape]}: row o = gradient of output o
        return torch.cat([g.reshape(k_out, n_models, -1) for g in grads.values()], dim=2)  # [K, N, P]

    def grams(xb: Tensor) -> Tensor:
        """Output Gram matrices ``J J^T`` of every sample and model, ``[b, N, K, K]`` (float64)."""
        jac = vmap(sample_jacobian, in_dims=(None, 0))(params, xb).transpose(1, 2)  # [b, N, K, P]
        return (jac @ jac.transpose(2, 3)).detach().double()

    def nll(out: Tensor, target: Tensor) -> Tensor:  # out [N, K], target [N] or [N, K] -> summed over models
        if likelihood == "categorical":
            return F.cross_entropy(out, target.long(), reduction="sum")
        return 0.5 * (out - target.reshape(out.shape)).pow(2).sum()

    def out_gradient(out: Tensor, target: Tensor) -> Tensor:  # d nll / d out, [b, N, K]
        if likelihood == "categorical":
            return torch.softmax(out, dim=-1) - F.one_hot(target.long(), out.shape[-1]).to(out.dtype)
        return out - target.reshape(out.shape).to(out.dtype)

    def sample_sq_norms(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        g = grad(lambda q: nll(sample_out(q, xi), yi))(p)
        return sum(t.reshape(n_models, -1).pow(2).sum(1) for t in g.values())  # [N]

    norms: list[Tensor] = []  # per batch: [b, N, draws]
    with _plain_layers():
        for b in batches:
            nb = b.x.shape[0]
            if fac is not None and method == "auto":
                try:
                    fac.num_outputs(b.x)
                except NotFactorable:
                    fac = None
            if fac is not None:
                k_out = fac.num_outputs(b.x)
                use_gram = kind == "exact" or (kind == "sampled" and num_samples >= k_out)
            if fac is not None and use_gram:
                out, gram = fac(b.x)  # [b, N, K], [b, N, K, K]
                gram = gram.double()
            else:
                with torch.no_grad():
                    out = _shared_forward(pop, params, b.x)  # [b, N, K]
                k_out = out.shape[-1]
                use_gram = kind == "exact" or (kind == "sampled" and num_samples >= k_out)
                if use_gram:
                    step = max(1, JACOBIAN_ELEMENTS // max(1, n_models * k_out * layout.dim))
                    gram = torch.cat([grams(b.x[i:i + step]) for i in range(0, nb, step)])  # [b, N, K, K]
            if kind == "empirical":
                targets = [b.y[:, None].expand(nb, n_models, *b.y.shape[1:])]
            elif kind == "sampled":
                targets = []
                for _ in range(num_samples):
                    per_model = []
                    for n, gen in enumerate(gens):
                        o = out[:, n]
                        if likelihood == "categorical":
                            probs = torch.softmax(o.double(), dim=-1).to(gen.device)
                            per_model.append(torch.multinomial(probs, 1, generator=gen).squeeze(1).to(o.device))
                        else:
                            noise = torch.randn(tuple(o.shape), generator=gen, device=gen.device, dtype=o.dtype)
                            per_model.append(o + noise.to(o.device))
                    targets.append(torch.stack(per_model, 1))  # [b, N] labels or [b, N, K] targets
            if kind == "exact":
                if likelihood == "gaussian":
                    t = gram.diagonal(dim1=2, dim2=3).sum(-1)[..., None]  # sum_o ||grad f_o||^2
                else:
                    probs = torch.softmax(out, dim=-1).double()  # [b, N, C]
                    eye = torch.eye(k_out, dtype=torch.float64, device=probs.device)
                    d = probs[:, :, None, :] - eye  # [b, N, C(label), C]
                    quad = torch.einsum("bnck,bnkl,bncl->bnc", d, gram, d)
                    t = (probs * quad).sum(-1, keepdim=True)
                norms.append(t.cpu())
                continue
            if fac is not None and not use_gram:  # few draws: their own output gradients, backpropagated at once
                dirs = torch.stack([out_gradient(out, t) for t in targets])  # [S, b, N, K]
                norms.append(fac(b.x, dirs)[1].diagonal(dim1=2, dim2=3).double().cpu())  # [b, N, S]
                continue
            draws = []
            for target in targets:
                if use_gram:
                    if likelihood == "categorical":
                        d = torch.softmax(out.double(), dim=-1) - F.one_hot(target.long(), k_out).double()
                    else:
                        d = (out - target.reshape(out.shape)).double()
                    draws.append(torch.einsum("bnk,bnkl,bnl->bn", d, gram, d))
                else:
                    draws.append(vmap(sample_sq_norms, in_dims=(None, 0, 0))(params, b.x, target).detach().double())
            norms.append(torch.stack(draws, 2).cpu())
    t_all = torch.cat(norms)  # [n, N, draws]
    return [trace_from_samples(t_all[:, n].contiguous(), kind) for n in range(n_models)]
