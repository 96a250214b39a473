"""Diagonal Fisher information of a model's predictive distribution, and its trace.

``F = E_x E_{y ~ p(y|x)} [g g^T]`` with ``g = grad_theta log p(y | x, theta)``; its diagonal is the mean of
squared per-sample gradients. Three flavours differ only in which labels ``y`` enter ``g``:

- ``"empirical"``: the data's own labels (the "empirical Fisher"; not the Fisher, but widely used);
- ``"sampled"``: labels drawn from the model, ``num_samples`` per input (an unbiased Monte Carlo estimate);
- ``"exact"``: the expectation over ``y`` in closed form (a sum over classes for a categorical likelihood; for a
  unit-variance Gaussian, ``sum_o (grad f_o)^2``).

Per-sample gradients come from :func:`torch.func.vmap` over :func:`torch.func.grad`, evaluated in eval mode on
copies of the parameters (the model is not modified).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap

from zooscape._deprecate import renamed_kwargs
from zooscape.landscape._hvp import as_generator, eval_mode, functional_state, make_batches

__all__ = ["FisherTrace", "fisher_diagonal", "fisher_trace", "fisher_trace_estimate"]

KINDS = ("empirical", "sampled", "exact")
LIKELIHOODS = ("categorical", "gaussian")


def _nll(out: Tensor, y: Tensor, likelihood: str) -> Tensor:
    if likelihood == "categorical":
        return F.cross_entropy(out.unsqueeze(0), y.reshape(1).long())
    return 0.5 * (out - y.reshape(out.shape)).pow(2).sum()


def check_fisher(kind: str, likelihood: str, num_samples: int, y: Tensor | None) -> None:
    """Validate the Fisher settings (see :func:`fisher_diagonal`); raises ValueError naming the bad one."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if kind == "empirical" and y is None:
        raise ValueError("kind='empirical' needs the labels y")


def _fisher_pass(model: nn.Module, x: Tensor, y: Tensor | None, *, kind: str, likelihood: str, num_samples: int,
                 batch_size: int | None, param_names: Sequence[str] | None, device: torch.device | str | None,
                 dtype: torch.dtype | None, seed: int | torch.Generator | None):
    """The Fisher diagonal (parameter dict) and the per-input squared gradient norms ``[n, draws]``."""
    check_fisher(kind, likelihood, num_samples, y)
    if y is None:
        y = torch.zeros(x.shape[0])
    gen = as_generator(seed)
    spec, params, fixed = functional_state(model, param_names=param_names, device=device, dtype=dtype)
    batches = make_batches(x, y, batch_size, device=params.device, dtype=dtype)
    n_total = x.shape[0]

    def output(p: Tensor, xi: Tensor) -> Tensor:
        tensors = spec.unflatten(p)
        tensors.update(fixed)
        return functional_call(model, tensors, (xi.unsqueeze(0),), tie_weights=True, strict=False)[0]

    def sample_grad(p: Tensor, xi: Tensor, yi: Tensor) -> Tensor:
        return grad(lambda q: _nll(output(q, xi), yi, likelihood))(p)

    total = torch.zeros_like(params)
    norms: list[Tensor] = []  # per input: [b, draws] squared gradient norms (their mean is the trace)
    with eval_mode(model):
        for b in batches:
            if kind == "empirical":
                g = vmap(sample_grad, in_dims=(None, 0, 0))(params, b.x, b.y)
                total += g.pow(2).sum(0)
                norms.append(g.pow(2).sum(1, keepdim=True).detach().double().cpu())
            elif kind == "exact":
                if likelihood == "gaussian":
                    jac = vmap(jacrev(output), in_dims=(None, 0))(params, b.x)  # [b, out..., P]
                    total += jac.pow(2).reshape(-1, params.numel()).sum(0)
                    norms.append(jac.pow(2).reshape(jac.shape[0], -1).sum(1, keepdim=True).detach().double().cpu())
                else:
                    with torch.no_grad():
                        probs = torch.softmax(vmap(output, in_dims=(None, 0))(params, b.x), dim=-1)
                    num_classes = probs.shape[-1]
                    labels = torch.arange(num_classes, device=params.device)
                    per_class = vmap(vmap(sample_grad, in_dims=(None, None, 0)), in_dims=(None, 0, None))
                    g2 = per_class(params, b.x, labels).pow(2)  # [b, C, P]
                    total += torch.einsum("bc,bcp->p", probs.to(g2.dtype), g2)
                    norms.append(torch.einsum("bc,bcp->b", probs.to(g2.dtype), g2)[:, None].detach().double().cpu())
            else:
                with torch.no_grad():
                    out = vmap(output, in_dims=(None, 0))(params, b.x)
                draws = []
                for _ in range(num_samples):
                    if likelihood == "categorical":
                        probs = torch.softmax(out.double(), dim=-1).to(gen.device)
                        ys = torch.multinomial(probs, 1, generator=gen).squeeze(1).to(params.device)
                    else:
                        noise = torch.randn(tuple(out.shape), generator=gen, device=gen.device, dtype=out.dtype)
                        ys = out + noise.to(out.device)
                    g = vmap(sample_grad, in_dims=(None, 0, 0))(params, b.x, ys)
                    total += g.pow(2).sum(0) / num_samples
                    draws.append(g.pow(2).sum(1).detach().double().cpu())
                norms.append(torch.stack(draws, 1))
    return spec.unflatten(total.detach() / n_total), torch.cat(norms)


@renamed_kwargs(generator="seed")
def fisher_diagonal(model: nn.Module, x: Tensor, y: Tensor | None = None, *, kind: str = "sampled",
                    likelihood: str = "categorical", num_samples: int = 1, batch_size: int | None = 256,
                    param_names: Sequence[str] | None = None, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None,
                    seed: int | torch.Generator | None = None) -> dict[str, Tensor]:
    """Diagonal of the Fisher information matrix, averaged over the inputs ``x``.

    Args:
        model: the network; outputs logits ``[n, C]`` (categorical) or means ``[n, ...]`` (Gaussian with unit
            variance, i.e. the loss ``0.5 ||f(x) - y||^2``).
        x: inputs ``[n, ...]``.
        y: labels ``[n]`` (int) or targets ``[n, ...]``; required for ``kind="empirical"`` only.
        kind: ``"empirical"``, ``"sampled"`` (default) or ``"exact"``.
        likelihood: ``"categorical"`` (default) or ``"gaussian"``.
        num_samples: model-label draws per input for ``kind="sampled"``.
        batch_size: inputs per vmapped per-sample-gradient call (``None``: all).
        param_names: parameters to include (default: all with ``requires_grad``).
        device: compute device (default: the model's).
        dtype: compute dtype (default: the model's).
        seed: randomness for ``"sampled"`` (Generator or seed; default seed 0).

    Returns:
        dict parameter name -> Tensor of the parameter's shape (on the compute device).

    References:
        Amari, 1998; Kunstner, Balles and Hennig, 2019 (limitations of the empirical Fisher);
        Martens, 2020.
    """
    diag, _ = _fisher_pass(model, x, y, kind=kind, likelihood=likelihood, num_samples=num_samples,
                           batch_size=batch_size, param_names=param_names, device=device, dtype=dtype,
                           seed=seed)
    return diag


@dataclass(frozen=True)
class FisherTrace:
    """A Fisher trace with the Monte Carlo standard error of its label sampling.

    Attributes:
        estimate: the trace, ``mean_{i, s} ||g(x_i, y_is)||^2``.
        std_error: standard error of ``estimate`` over the label draws, the inputs held fixed (0 for the
            ``"exact"`` and ``"empirical"`` kinds, which draw nothing); see :func:`fisher_trace_estimate`.
        num_draws: label draws per input (``num_samples``; 1 for the other kinds).
        samples: Tensor ``[n, num_draws]`` of the squared gradient norms (float64; for ``"exact"`` the
            per-input expectation).
    """

    estimate: float
    std_error: float
    num_draws: int
    samples: Tensor

    @property
    def relative_error(self) -> float:
        """``std_error / |estimate|`` (NaN for a zero trace)."""
        return self.std_error / abs(self.estimate) if self.estimate else float("nan")


@renamed_kwargs(generator="seed")
def fisher_trace_estimate(model: nn.Module, x: Tensor, y: Tensor | None = None, **kwargs) -> FisherTrace:
    """Trace of the Fisher information with its standard error.

    The trace is the mean of the squared per-sample gradient norms ``t_is = ||g(x_i, y_is)||^2``. For
    ``kind="sampled"`` it is random through the model-drawn labels ``y_is``; with the inputs held fixed (as a
    zoo run holds its seeded subset) its standard error is ``sqrt(sum_i v_i / S) / n``, ``v_i`` the unbiased
    variance of the ``S = num_samples`` draws of input i. With one draw per input the within-input variance is
    not identifiable and ``std(t) / sqrt(n)`` is reported instead, which also counts the spread between inputs
    and so overstates the error (conservative). Draws of a confident classifier are heavy-tailed (a rare
    unlikely label gives a large gradient): ``kind="exact"`` sums the C classes instead and has no sampling
    error at C gradients per input.

    Args:
        model: the network.
        x: inputs ``[n, ...]``.
        y: labels/targets ``[n, ...]`` (needed for ``kind="empirical"``).
        **kwargs: as :func:`fisher_diagonal` (``kind``, ``likelihood``, ``num_samples``, ``seed``, ...).

    Returns:
        :class:`FisherTrace`.

    References:
        Achille, Rovere and Soatto, 2019 (Fisher trace during training); Kunstner, Balles and Hennig, 2019.
    """
    _, t = _fisher_pass(model, x, y, **{**_PASS_DEFAULTS, **kwargs})
    return trace_from_samples(t, kwargs.get("kind", "sampled"))


def trace_from_samples(t: Tensor, kind: str) -> FisherTrace:
    """The :class:`FisherTrace` of squared per-sample gradient norms ``t`` ``[n, draws]`` (see
    :func:`fisher_trace_estimate` for the standard error; it is 0 for the kinds that draw nothing)."""
    n, draws = t.shape
    estimate = float(t.mean())
    if kind != "sampled":
        se = 0.0
    elif draws >= 2:
        se = math.sqrt(float(t.var(dim=1, unbiased=True).sum()) / draws) / n
    else:
        se = float(t.std()) / math.sqrt(n) if n > 1 else float("nan")
    return FisherTrace(estimate, se, draws, t)


_PASS_DEFAULTS = {"kind": "sampled", "likelihood": "categorical", "num_samples": 1, "batch_size": 256,
                  "param_names": None, "device": None, "dtype": None, "seed": None}


@renamed_kwargs(generator="seed")
def fisher_trace(model: nn.Module, x: Tensor, y: Tensor | None = None, **kwargs) -> float:
    """Trace of the Fisher information (the sum of :func:`fisher_diagonal` over all parameters).

    Args:
        model: the network.
        x: inputs ``[n, ...]``.
        y: labels/targets ``[n, ...]`` (needed for ``kind="empirical"``).
        **kwargs: passed to :func:`fisher_diagonal` (``kind``, ``likelihood``, ``num_samples``, ...).

    Returns:
        The trace (float); :func:`fisher_trace_estimate` also gives its standard error.

    References:
        Achille, Rovere and Soatto, 2019 (Fisher trace during training).
    """
    return fisher_trace_estimate(model, x, y, **kwargs).estimate
