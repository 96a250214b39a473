"""Many networks of one architecture evaluated per pass through the trainer's stacked layers.

Points of linear paths (every alpha of several pairs) and points of curves (every ``t`` of several curves) are
*members*: parameter sets of one architecture. :func:`evaluate_members` loads a chunk of members into one
:class:`zooscape.train.Population` (the N models as one network, parameters stacked along a leading axis, the
population in the channel dimension) and evaluates them all on each batch with
:meth:`~zooscape.train.Population.forward_shared` (``[B, *input_shape] -> [B, N, K]``), instead of one deep copy per
point (``method="loop"``) or ``torch.func.vmap`` over stacked copies (``method="vmap"``).

BatchNorm per member is handled like the per-model path:

- interpolated statistics are loaded into the population like parameters;
- re-estimated statistics come from :func:`zooscape.connect.bn.recompute_bn_stats` run on the population (its
  BatchNorm layers in training mode see per-member batch statistics), the same exact cumulative average over one
  pass over the training inputs as for one model.

Members are chunked so that a chunk's parameters and activations stay within a memory budget (by default the
activations of one model at the full evaluation batch size, the per-pair loop's own peak).

:func:`zooscape.connect.path.linear_paths` evaluates the linear paths of many pairs at once (Frankle et al. 2020);
:func:`zooscape.connect.curve_eval.evaluate_curves` does the same for trained curves (Garipov et al. 2018).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from zooscape.connect.batched import choose_method, macs_per_sample
from zooscape.connect.bn import batch_slices, has_batchnorm, recompute_bn_stats
from zooscape.connect.metrics import loss_error_sums

__all__ = ["POPULATION_MAX_MACS", "MemberStates", "evaluate_members", "member_chunks", "pick_method",
           "population_supported"]

#: ``(start, stop) -> (params, buffers)``: the stacked floating tensors ``{name: [stop - start, *shape]}`` of
#: members ``start .. stop - 1``.
MemberStates = Callable[[int, int], tuple[Mapping[str, Tensor], Mapping[str, Tensor]]]

#: ``method="auto"`` evaluates path and curve points as a population only for networks below this many
#: multiply-adds per sample (:func:`pick_method`).
POPULATION_MAX_MACS = 500_000

#: The smallest evaluation batch a chunk is given before it is made smaller instead.
MIN_BATCH = 128


def population_supported(template: nn.Module) -> bool:
    """Whether ``template``'s architecture can run as a :class:`zooscape.train.Population`.

    Args:
        template: a network.

    Returns:
        True when every leaf with parameters has a population version (Linear, Conv2d, BatchNorm, GroupNorm,
        LayerNorm, ...) and no container holds parameters or floating buffers directly.
    """
    from zooscape.train.population import Population

    for module in template.modules():
        own = [*module.parameters(recurse=False), *(b for b in module.buffers(recurse=False) if b.is_floating_point())]
        if list(module.children()) and own:
            return False  # a container's own tensors would be shared by all members, not stacked
    try:
        Population([template])
    except (TypeError, ValueError):
        return False
    return True


@torch.no_grad()
def _activation_floats(template: nn.Module, example: Tensor) -> int:
    """Floats written by the leaf modules in one eval-mode forward of one sample (an upper bound on what a
    sample keeps alive at once)."""
    total = 0

    def count(module: nn.Module, inputs: tuple, output: Any) -> None:
        nonlocal total
        if isinstance(output, Tensor):
            total += int(output[0].numel()) if output.dim() > 0 else 1

    leaves = [m for m in template.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    modes = {m: m.training for m in template.modules()}
    try:
        template.eval()
        dev = next((t.device for t in template.parameters()), torch.device("cpu"))
        template(example[:1].to(dev))
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return max(total, int(example[0].numel()))


def member_chunks(template: nn.Module, example: Tensor, n_members: int, batch_size: int = 1024,
                  max_members: int | None = None, memory_bytes: int | None = None) -> tuple[int, int]:
    """How many members to evaluate per population and at which batch size.

    A chunk of ``m`` members holds ``m * P`` bytes of parameters and buffers (``2 m P`` while a chunk is loaded)
    and ``m * b * A`` bytes of activations at batch ``b`` (``A`` per sample and member). The budget defaults to
    256 MiB or what one model's activations take at ``batch_size``, whichever is larger; members are split into
    chunks of nearly equal size (no chunk is mostly padding).

    Args:
        template: the architecture.
        example: inputs ``[B, *input_shape]`` (the first sample is run once).
        n_members: members to evaluate in all (>= 1).
        batch_size: the per-model evaluation batch size (the largest a chunk uses).
        max_members: at most this many members per chunk (default 64).
        memory_bytes: the budget in bytes (default as above).

    Returns:
        ``(members_per_chunk, eval_batch_size)``.
    """
    if n_members < 1:
        raise ValueError(f"n_members must be >= 1, got {n_members}")
    itemsize = 4
    act = _activation_floats(template, example) * itemsize
    size = sum(t.numel() for t in template.state_dict().values()) * itemsize
    budget = memory_bytes if memory_bytes is not None else max(256 << 20, batch_size * act)
    m = min(n_members, 64 if max_members is None else max(1, int(max_members)))
    low = min(MIN_BATCH, batch_size)
    m = max(1, min(m, budget // max(1, 2 * size), budget // max(1, size + low * act)))
    m = -(-n_members // -(-n_members // m))  # equal chunks: ceil(n / ceil(n / m))
    b = int(min(batch_size, max(low, (budget - m * size) // max(1, m * act))))
    return int(m), max(1, b)


class _Evaluator:
    """One population of ``size`` members of ``template``'s architecture, reloaded chunk after chunk."""

    def __init__(self, template: nn.Module, size: int, device: torch.device, example: Tensor) -> None:
        from zooscape.train.population import Population

        base = copy.deepcopy(template).to(device).eval()
        self.pop = Population([base] * size).to(device).eval()
        self.size = size
        self.state = self.pop.net.state_dict()
        # the population's one-time checks of its fast paths run here, in eval mode, so that they never run
        # during the BatchNorm pass (where every forward would update the running statistics)
        self.pop.forward_shared(example[:2].to(device))

    @torch.no_grad()
    def load(self, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], count: int) -> None:
        for name, value in (*params.items(), *buffers.items()):
            target = self.state.get(name)
            if target is None:
                raise KeyError(f"stacked tensor {name!r} is not a parameter or buffer of the architecture")
            if tuple(value.shape[1:]) != tuple(target.shape[1:]):
                raise ValueError(f"stacked tensor {name!r} has member shape {tuple(value.shape[1:])}, the "
                                 f"architecture {tuple(target.shape[1:])}")
            target[:count].copy_(value[:count])
            if count < self.size:  # pad with the last member (its results are dropped)
                target[count:].copy_(value[count - 1:count].expand(self.size - count, *value.shape[1:]))

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor, task: str, batch_size: int) -> tuple[Tensor, Tensor | None]:
        self.pop.eval()
        dev = next(self.pop.parameters()).device
        loss = torch.zeros(self.size, dtype=torch.float64, device=dev)
        errors = torch.zeros(self.size, dtype=torch.float64, device=dev)
        for sl in batch_slices(x.shape[0], batch_size):
            out = self.pop.forward_shared(x[sl].to(dev))  # [b, N, K]
            part, e = loss_error_sums(out.transpose(0, 1), y[sl].to(dev), task)
            loss += part
            if e is not None:
                errors += e
        n = x.shape[0]
        return (loss / n).cpu(), ((errors / n).cpu() if task == "classification" else None)


@torch.no_grad()
def evaluate_members(
    template: nn.Module,
    states: MemberStates,
    n_members: int,
    split_data: Mapping[str, tuple[Tensor, Tensor]],
    task: str,
    *,
    bn_x: Tensor | None = None,
    batch_size: int = 1024,
    bn_batch_size: int = 256,
    max_members: int | None = None,
    memory_bytes: int | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Mean loss and error of many parameter sets of one architecture, a population of them per pass.

    Args:
        template: a network of the architecture (not modified; its own tensors fill what ``states`` leaves out).
        states: ``fn(start, stop)`` returning the stacked floating parameters and buffers
            ``{name: [stop - start, *shape]}`` of members ``start .. stop - 1`` (see :data:`MemberStates`).
        n_members: number of members ``M``.
        split_data: ``{split: (x [n, *input_shape], y [n] or [n, k])}``.
        task: ``"classification"`` or ``"regression"``.
        bn_x: training inputs ``[n, *input_shape]``: BatchNorm statistics of every member are re-estimated on them
            with :func:`~zooscape.connect.bn.recompute_bn_stats` (None: use the stacked buffers as given).
        batch_size: the per-model evaluation batch size (chunks may use smaller batches, see :func:`member_chunks`).
        bn_batch_size: batch size of the BatchNorm pass (the same batches as the per-model re-estimation).
        max_members: at most this many members per population.
        memory_bytes: memory budget of a chunk (see :func:`member_chunks`).
        device: where to evaluate (default: the template's device).
        progress: ``fn(k)`` called after each chunk with the members it finished.

    Returns:
        ``(loss, error)``: ``{split: [M]}`` float64 means over the split; ``error`` (fraction in [0, 1]) is empty
        for regression.

    References:
        Frankle, Dziugaite, Roy, Carbin (2020), "Linear Mode Connectivity and the Lottery Ticket Hypothesis";
        Garipov, Izmailov, Podoprikhin, Vetrov, Wilson (2018), "Loss Surfaces, Mode Connectivity, and Fast
        Ensembling of DNNs" (``update_bn``).
    """
    if n_members < 1:
        raise ValueError(f"n_members must be >= 1, got {n_members}")
    dev = torch.device(device) if device is not None else next(
        (t.device for t in template.parameters()), torch.device("cpu"))
    example = next(iter(split_data.values()))[0]
    size, eval_batch = member_chunks(template, example, n_members, batch_size, max_members, memory_bytes)
    runner = _Evaluator(template, size, dev, example)
    losses: dict[str, list[Tensor]] = {s: [] for s in split_data}
    errors: dict[str, list[Tensor]] = {s: [] for s in split_data}
    for start in range(0, n_members, size):
        stop = min(n_members, start + size)
        params, buffers = states(start, stop)
        runner.load(params, buffers, stop - start)
        del params, buffers
        if bn_x is not None and has_batchnorm(template):
            recompute_bn_stats(runner.pop, bn_x, batch_size=bn_batch_size, forward=runner.pop.forward_shared)
        for split, (x, y) in split_data.items():
            loss, err = runner.evaluate(x, y, task, eval_batch)
            losses[split].append(loss[: stop - start])
            if err is not None:
                errors[split].append(err[: stop - start])
        if progress is not None:
            progress(stop - start)
    return ({s: torch.cat(v) for s, v in losses.items()},
            {s: torch.cat(v) for s, v in errors.items() if v})


def pick_method(model: nn.Module, example: Tensor, method: str = "auto") -> str:
    """Resolve ``method`` of the path and curve evaluations: ``"population"``, ``"vmap"`` or ``"loop"``.

    ``"auto"`` is ``"population"`` (the points as members of one :class:`zooscape.train.Population`,
    :func:`evaluate_members`) when the architecture has population layers and at most
    :data:`POPULATION_MAX_MACS` multiply-adds per sample: there the population saves the per-call overhead that
    small networks are made of (``bench/lmc.py``: CNN-s 5x, LeNet-5 1-1.7x, digits networks 2.3-3x against the
    loop). Above it (MLP 784-512x3, VGG11-BN) a population's grouped convolutions and batched matmuls do the same
    work as separate calls and memory traffic grows with the members, so
    :func:`~zooscape.connect.batched.choose_method` picks between ``"vmap"`` and ``"loop"`` as before. The rule is
    deterministic.

    Args:
        model: the template network.
        example: a batch of inputs ``[B, *input_shape]``.
        method: ``"auto"``, ``"population"``, ``"vmap"`` or ``"loop"``.

    Returns:
        ``"population"``, ``"vmap"`` or ``"loop"``.
    """
    if method == "auto" and macs_per_sample(model, example) <= POPULATION_MAX_MACS and population_supported(model):
        return "population"
    if method == "population":
        return method
    return choose_method(model, example, method)
