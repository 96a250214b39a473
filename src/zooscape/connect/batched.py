"""Vectorized evaluation of many interpolated networks at once (alphas as a vmapped axis).

The interpolated parameters of every alpha are stacked into tensors ``[A, *shape]`` and one copy of the
network (the *template*) is run with ``torch.func.functional_call`` under ``torch.func.vmap`` over that
leading axis. No per-alpha deep copies are made.

BatchNorm per alpha:

- interpolated statistics are stacked like parameters and passed as buffers;
- re-estimated statistics come from one pass over training data in which every BatchNorm layer normalises with
  batch statistics; forward pre-hooks record each layer's per-alpha batch mean and unbiased variance, and
  these are averaged with batch-size weights, which equals the exact cumulative average of
  :func:`zooscape.connect.bn.recompute_bn_stats` (momentum ``b_t / (b_1 + ... + b_t)``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from zooscape.connect.bn import batch_slices, batchnorm_modules
from zooscape.connect.metrics import loss_error_sums

__all__ = ["VMAP_MAX_MACS", "batched_bn_stats", "batched_evaluate", "choose_method", "macs_per_sample",
           "stack_interpolated"]

#: ``method="auto"`` vectorises over alphas only for networks below this many multiply-adds per sample.
VMAP_MAX_MACS = 100_000


@torch.no_grad()
def macs_per_sample(model: nn.Module, example: Tensor) -> int:
    """Multiply-adds of one forward pass per sample, counted over Linear and convolution layers.

    Args:
        model: the network (run once in eval mode on ``example[:1]``; modes are restored).
        example: a batch of inputs ``[B, *input_shape]`` (only the first sample is used).

    Returns:
        int.
    """
    total = 0

    def count(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += module.in_features * module.out_features
        elif isinstance(module, nn.modules.conv._ConvNd):
            k = module.weight[0].numel()  # in_channels / groups * prod(kernel)
            total += int(output[0].numel()) * k

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    hooks = [m.register_forward_hook(count) for m in layers]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        model(example[:1].to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return total


def choose_method(model: nn.Module, example: Tensor, method: str = "auto") -> str:
    """Resolve ``method="auto"`` to the faster evaluation of many interpolated networks: ``"vmap"`` or ``"loop"``.

    ``vmap`` runs the network once per batch with a leading alpha axis. That saves per-call overhead, which is
    what small networks are made of, but PyTorch lowers a vmapped convolution to a grouped one that is 2-3x
    slower than ``A`` plain calls on the CPU once the convolutions do real work (LeNet-5, CNN-s, VGG), and for
    large dense layers it is at best even. ``bench/lmc.py`` measures both (``bench/RESULTS.md``); ``auto`` picks
    ``vmap`` below :data:`VMAP_MAX_MACS` multiply-adds per sample (digits MLPs, tiny CNNs) and ``loop`` above.
    The rule is deterministic, so a study computes the same numbers in every process.

    Args:
        model: the template network.
        example: a batch of inputs ``[B, *input_shape]`` (for :func:`macs_per_sample`).
        method: ``"auto"``, ``"vmap"`` or ``"loop"``.

    Returns:
        ``"vmap"`` or ``"loop"``.
    """
    if method != "auto":
        return method
    return "vmap" if macs_per_sample(model, example) <= VMAP_MAX_MACS else "loop"


@torch.no_grad()
def stack_interpolated(
    tensors_a: Mapping[str, Tensor], tensors_b: Mapping[str, Tensor], alphas: Tensor
) -> dict[str, Tensor]:
    """Stack ``(1 - alpha) * a + alpha * b`` for every alpha along a new leading axis.

    Args:
        tensors_a: ``{name: tensor}`` of the ``alpha = 0`` endpoint (floating tensors only are kept).
        tensors_b: ``{name: tensor}`` of the ``alpha = 1`` endpoint, same keys and shapes.
        alphas: interpolation coefficients, shape ``[A]``.

    Returns:
        ``{name: tensor of shape [A, *shape]}`` on ``tensors_a``'s devices and dtypes.
    """
    alphas = torch.as_tensor(alphas)
    if alphas.dim() != 1:
        raise ValueError(f"alphas must be 1-D, got shape {tuple(alphas.shape)}")
    out: dict[str, Tensor] = {}
    for name, a in tensors_a.items():
        if not a.is_floating_point():
            continue
        if name not in tensors_b:
            raise KeyError(f"tensor {name!r} missing from the second endpoint")
        b = tensors_b[name].detach().to(a.device, a.dtype)
        if b.shape != a.shape:
            raise ValueError(f"shape mismatch at {name!r}: {tuple(a.shape)} vs {tuple(b.shape)}")
        w = alphas.to(a.device, a.dtype).view(-1, *([1] * a.dim()))
        shape = (alphas.shape[0], *a.shape)
        out[name] = torch.lerp(a.detach().expand(shape), b.expand(shape), w)
    return out


def _channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    dims = [0, *range(2, x.dim())]
    return x.mean(dim=dims), x.var(dim=dims, unbiased=True)


@torch.no_grad()
def batched_bn_stats(
    template: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    batch_size: int = 256,
    buffers: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Re-estimate BatchNorm running statistics for every stacked parameter set in one pass over ``x``.

    Args:
        template: a network of the right architecture (modified temporarily, restored on exit).
        params: stacked parameters ``{name: [A, *shape]}`` (from :func:`stack_interpolated`).
        x: training inputs, shape ``[n, *input_shape]``; moved to the parameters' device.
        batch_size: batch size of the pass (a trailing batch of one sample is merged).
        buffers: stacked floating buffers ``{name: [A, *shape]}`` used in the pass (BatchNorm statistics among
            them are ignored); default: the template's own.

    Returns:
        ``{"<bn>.running_mean": [A, C], "<bn>.running_var": [A, C]}`` for every BatchNorm layer with running
        statistics (empty if there are none): the sample-weighted average of per-batch means / unbiased
        variances, as in :func:`zooscape.connect.bn.recompute_bn_stats`.

    References:
        Garipov, Izmailov, Podoprikhin, Vetrov, Wilson (2018), "Loss Surfaces, Mode Connectivity, and Fast
        Ensembling of DNNs" (``update_bn``).
    """
    layers = batchnorm_modules(template)
    if not layers:
        return {}
    device = next(iter(params.values())).device
    recorded: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name, _ in layers}
    handles = []
    modes = {m: m.training for m in template.modules()}

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            if recorded[name]:
                raise ValueError(
                    f"BatchNorm layer {name!r} is called more than once per forward; use method='loop'"
                )
            recorded[name].append(_channel_stats(inputs[0]))

        return hook

    def forward_stats(p: dict[str, Tensor], b: dict[str, Tensor], xb: Tensor) -> tuple[Tensor, ...]:
        for v in recorded.values():
            v.clear()
        functional_call(template, (p, b), (xb,))
        missing = [name for name, v in recorded.items() if not v]
        if missing:
            raise ValueError(f"BatchNorm layers {missing} were not called in the forward pass")
        return tuple(t for name, _ in layers for t in recorded[name][0])

    sums: list[Tensor] | None = None
    seen = 0
    try:
        template.eval()
        for name, m in layers:
            m.train()
            m.track_running_stats = False
            handles.append(m.register_forward_pre_hook(make_hook(name)))
        run = vmap(forward_stats, in_dims=(0, 0, None))
        stacked_buffers = dict(buffers or {})
        for sl in batch_slices(x.shape[0], batch_size):
            xb = x[sl].to(device)
            b = xb.shape[0]
            stats = run(dict(params), stacked_buffers, xb)
            weighted = [s.to(torch.float64) * b for s in stats]
            sums = weighted if sums is None else [acc + w for acc, w in zip(sums, weighted)]
            seen += b
    finally:
        for h in handles:
            h.remove()
        for _, m in layers:
            m.track_running_stats = True
        for m, mode in modes.items():
            m.training = mode
    assert sums is not None
    out: dict[str, Tensor] = {}
    for i, (name, m) in enumerate(layers):
        dtype = m.running_mean.dtype
        prefix = f"{name}." if name else ""
        out[prefix + "running_mean"] = (sums[2 * i] / seen).to(dtype)
        out[prefix + "running_var"] = (sums[2 * i + 1] / seen).to(dtype)
    return out


@torch.no_grad()
def batched_evaluate(
    template: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    task: str,
    batch_size: int = 1024,
) -> tuple[Tensor, Tensor | None]:
    """Mean loss and error of every stacked network, in evaluation mode, in one vmapped pass per batch.

    Args:
        template: a network of the right architecture; evaluated in eval mode (mode restored on exit).
        params: stacked parameters ``{name: [A, *shape]}``.
        buffers: stacked floating buffers ``{name: [A, *shape]}`` (may be empty); other buffers come from
            ``template``.
        x: inputs, shape ``[n, *input_shape]``.
        y: targets, shape ``[n]`` (classification) or ``[n, k]`` (regression).
        task: ``"classification"`` or ``"regression"``.
        batch_size: samples per vmapped forward (memory grows as ``A * batch_size``).

    Returns:
        ``(loss, error)`` of shape ``[A]`` in float64; ``error`` (fraction in [0, 1]) is None for regression.
    """
    if not params:
        raise ValueError("params is empty: the model has no parameters to interpolate")
    device = next(iter(params.values())).device
    n_alpha = next(iter(params.values())).shape[0]
    was_training = template.training
    template.eval()

    def forward(p: dict[str, Tensor], b: dict[str, Tensor], xb: Tensor) -> Tensor:
        return functional_call(template, (p, b), (xb,))

    run = vmap(forward, in_dims=(0, 0, None))
    loss = torch.zeros(n_alpha, dtype=torch.float64, device=device)
    errors = torch.zeros(n_alpha, dtype=torch.float64, device=device)
    try:
        for sl in batch_slices(x.shape[0], batch_size):
            out = run(dict(params), dict(buffers), x[sl].to(device))
            part, e = loss_error_sums(out, y[sl].to(device), task)
            loss += part
            if e is not None:
                errors += e
    finally:
        template.train(was_training)
    n = x.shape[0]
    return (loss / n).cpu(), ((errors / n).cpu() if task == "classification" else None)
