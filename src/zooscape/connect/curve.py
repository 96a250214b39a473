"""Parametric curves between two networks (Bezier, PolyChain) for any ``nn.Module``.

A curve is a set of ``num_bends + 2`` *nodes* (control points) in weight space: node 0 is the start network,
node ``num_bends + 1`` the end network, and the ``num_bends`` nodes in between are the trainable *bends*. The
weights at ``t`` in [0, 1] are ``w(t) = sum_j c_j(t) theta_j`` with

- Bezier: ``c_j(t) = C(n, j) t^j (1 - t)^(n - j)`` (Bernstein polynomials of degree ``n = num_bends + 1``);
- PolyChain: ``c_j(t) = max(0, 1 - |n t - j|)`` (straight segments through the nodes, placed at ``t = j / n``).

**Convention**: ``num_bends`` counts the *inner* control points only. ``num_bends = 1`` is the quadratic Bezier
curve / the two-segment PolyChain (Garipov et al.'s ``--num_bends 3``, the TF port's ``num-bends = 1``, the
phase-transition zoo's "3 bends"); ``num_bends = 0`` is the straight line.

The network is run with ``torch.func.functional_call`` on a private copy of the start model (the *template*),
so any model works without per-layer curve classes. Floating-point buffers (BatchNorm running statistics among
them) are carried on the nodes and blended like parameters, so ``t = 0`` and ``t = 1`` reproduce the
endpoints exactly in train and eval mode; at inner points, BatchNorm statistics should be re-estimated
(:func:`zooscape.connect.curve_eval.evaluate_curve` does so at every evaluated ``t`` by default).

This module is one piece on purpose (over 500 lines): :class:`Curve` is one concept whose node storage,
weights at ``t``, BatchNorm handling and (de)serialisation share private layout; the coefficient functions sit
beside it because the class is their only user.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from zooscape._io import atomic_write_bytes
from zooscape.connect.bn import has_batchnorm, recompute_bn_stats
from zooscape.connect.interpolate import check_compatible
from zooscape.data.adapt import train_inputs

__all__ = [
    "CURVE_KINDS",
    "CURVE_INITS",
    "Curve",
    "bezier_coefficients",
    "curve_bytes",
    "curve_coefficients",
    "load_curve",
    "polychain_coefficients",
    "save_curve",
]

CURVE_KINDS: tuple[str, ...] = ("bezier", "polychain")
CURVE_INITS: tuple[str, ...] = ("linear", "random")
_FORMAT = "zooscape-curve"


def _check_num_bends(num_bends: Any) -> int:
    if isinstance(num_bends, bool) or not isinstance(num_bends, int) or num_bends < 0:
        raise ValueError(f"num_bends must be an integer >= 0 (inner control points), got {num_bends!r}")
    return num_bends


def check_kind(kind: str) -> str:
    """Normalise and validate a curve kind (case-insensitive: ``"Bezier"`` and ``"PolyChain"`` are accepted).

    Args:
        kind: ``"bezier"`` or ``"polychain"``.

    Returns:
        The lower-case kind.
    """
    if not isinstance(kind, str) or kind.lower() not in CURVE_KINDS:
        raise ValueError(f"kind must be one of {CURVE_KINDS}, got {kind!r}")
    return kind.lower()


def _as_ts(t: float | Tensor) -> tuple[Tensor, bool]:
    ts = torch.as_tensor(t, dtype=torch.float64).detach().cpu()
    scalar = ts.dim() == 0
    ts = ts.reshape(-1)
    if ts.dim() != 1 or not torch.isfinite(ts).all() or ((ts < 0) | (ts > 1)).any():
        raise ValueError(f"t must lie in [0, 1], got {t!r}")
    return ts, scalar


def bezier_coefficients(t: float | Tensor, num_bends: int) -> Tensor:
    """Bernstein coefficients of a Bezier curve with ``num_bends`` inner control points.

    Args:
        t: curve position(s) in [0, 1], a float or a tensor of shape ``[T]``.
        num_bends: inner control points (degree ``num_bends + 1``).

    Returns:
        Float64 tensor ``[num_bends + 2]`` (scalar ``t``) or ``[T, num_bends + 2]``; rows sum to 1, and
        ``t = 0`` / ``t = 1`` give exactly ``[1, 0, ..., 0]`` / ``[0, ..., 0, 1]``.

    References:
        Garipov, Izmailov, Podoprikhin, Vetrov, Wilson (2018), "Loss Surfaces, Mode Connectivity, and Fast
        Ensembling of DNNs".
    """
    n = _check_num_bends(num_bends) + 1
    ts, scalar = _as_ts(t)
    j = torch.arange(n + 1, dtype=torch.float64)
    binom = torch.tensor([math.comb(n, k) for k in range(n + 1)], dtype=torch.float64)
    c = binom * ts[:, None].pow(j) * (1.0 - ts[:, None]).pow(n - j)
    return c[0] if scalar else c


def polychain_coefficients(t: float | Tensor, num_bends: int) -> Tensor:
    """Coefficients of a polygonal chain through ``num_bends + 2`` nodes placed at ``t = j / (num_bends + 1)``.

    Args:
        t: curve position(s) in [0, 1], a float or a tensor of shape ``[T]``.
        num_bends: inner nodes.

    Returns:
        Float64 tensor ``[num_bends + 2]`` or ``[T, num_bends + 2]``: ``max(0, 1 - |(num_bends + 1) t - j|)``.

    References:
        Garipov et al. (2018), "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs".
    """
    n = _check_num_bends(num_bends) + 1
    ts, scalar = _as_ts(t)
    j = torch.arange(n + 1, dtype=torch.float64)
    c = (1.0 - (ts[:, None] * n - j).abs()).clamp(min=0.0)
    return c[0] if scalar else c


def curve_coefficients(kind: str, t: float | Tensor, num_bends: int) -> Tensor:
    """Coefficients ``c_j(t)`` of a curve kind.

    Args:
        kind: ``"bezier"`` or ``"polychain"``.
        t: position(s) in [0, 1], float or ``[T]``.
        num_bends: inner control points.

    Returns:
        Float64 tensor ``[num_bends + 2]`` or ``[T, num_bends + 2]``.
    """
    kind = check_kind(kind)
    fn = bezier_coefficients if kind == "bezier" else polychain_coefficients
    return fn(t, num_bends)


class _Node(nn.Module):
    """One control point: parameters ``p<i>`` and floating buffers ``b<i>`` in the template's order."""

    def __init__(self, params: Sequence[Tensor], buffers: Sequence[Tensor], trainable: bool) -> None:
        super().__init__()
        for i, p in enumerate(params):
            self.register_parameter(f"p{i}", nn.Parameter(p.detach().clone(), requires_grad=trainable))
        for i, b in enumerate(buffers):
            self.register_buffer(f"b{i}", b.detach().clone())
        self.n_params = len(params)
        self.n_buffers = len(buffers)

    def param_list(self) -> list[Tensor]:
        return [getattr(self, f"p{i}") for i in range(self.n_params)]

    def buffer_list(self) -> list[Tensor]:
        return [getattr(self, f"b{i}") for i in range(self.n_buffers)]


def _float_buffers(model: nn.Module) -> dict[str, Tensor]:
    return {k: v for k, v in model.named_buffers() if v.is_floating_point()}


def _random_like(template: nn.Module, seed: int) -> nn.Module:
    """A copy of ``template`` re-initialised with every module's ``reset_parameters`` under a seeded, forked RNG."""
    model = copy.deepcopy(template).to("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for m in model.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    return model


class Curve(nn.Module):
    """A Bezier or PolyChain curve between two networks of the same architecture.

    ``w(t) = sum_j c_j(t) theta_j`` over ``num_bends + 2`` nodes; node 0 is ``start``, the last node ``end``.
    Call it as ``curve(x, t)``: the template network is run with ``torch.func.functional_call`` at ``w(t)``.

    Args:
        kind: ``"bezier"`` or ``"polychain"`` (case-insensitive).
        start: network at ``t = 0`` (copied, not modified).
        end: network at ``t = 1``, same module tree and state-dict shapes (copied).
        num_bends: inner control points (``1``: quadratic Bezier / two-segment chain; ``0``: straight line).
        fix_start: keep node 0 fixed during training (``requires_grad=False``).
        fix_end: keep the last node fixed.
        init: ``"linear"``: bend ``j`` (1-based) at ``theta_start + j / (num_bends + 1) (theta_end -
            theta_start)``, so the untrained curve *is* the straight line for both kinds; ``"random"``: every
            bend is a freshly initialised network (each module's ``reset_parameters``, seeded).
        seed: seed of ``init="random"`` (bend ``j`` uses ``seed + j``); the global RNG is left untouched.

    Attributes:
        param_names: qualified names of the template's parameters (the order of every node's ``p<i>``).
        buffer_names: qualified names of the template's floating-point buffers (``b<i>``).
        nodes: ``nn.ModuleList`` of the ``num_bends + 2`` nodes.

    References:
        Garipov, Izmailov, Podoprikhin, Vetrov, Wilson (2018), "Loss Surfaces, Mode Connectivity, and Fast
        Ensembling of DNNs"; Draxler, Veschgini, Salmhofer, Hamprecht (2018), "Essentially No Barriers in
        Neural Network Energy Landscape".
    """

    def __init__(
        self,
        kind: str = "bezier",
        start: nn.Module | None = None,
        end: nn.Module | None = None,
        num_bends: int = 1,
        *,
        fix_start: bool = True,
        fix_end: bool = True,
        init: str = "linear",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.kind = check_kind(kind)
        self.num_bends = _check_num_bends(num_bends)
        if start is None or end is None:
            raise ValueError("Curve needs both start= and end= networks")
        check_compatible(start, end)
        if init not in CURVE_INITS:
            raise ValueError(f"init must be one of {CURVE_INITS}, got {init!r}")
        self.fix_start = bool(fix_start)
        self.fix_end = bool(fix_end)
        template = copy.deepcopy(start)
        for p in template.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "_template", template)  # not a submodule: its tensors are never curve state
        self.param_names = [n for n, _ in template.named_parameters()]
        self.buffer_names = list(_float_buffers(template))
        if not self.param_names:
            raise ValueError("start has no parameters: nothing to put on a curve")
        end_params = dict(end.named_parameters())
        end_buffers = _float_buffers(end)
        device = next(template.parameters()).device
        p_start = [p.detach() for p in template.parameters()]
        p_end = [end_params[n].detach().to(device) for n in self.param_names]
        b_start = list(_float_buffers(template).values())
        b_end = [end_buffers[n].detach().to(device) for n in self.buffer_names]
        nodes = [_Node(p_start, b_start, not self.fix_start)]
        for j in range(1, self.num_bends + 1):
            if init == "linear":
                a = j / (self.num_bends + 1)
                params = [torch.lerp(s, e, a) for s, e in zip(p_start, p_end)]
                buffers = [torch.lerp(s, e, a) for s, e in zip(b_start, b_end)]
            else:
                rnd = _random_like(template, seed + j).to(device)
                params = [p.detach() for p in rnd.parameters()]
                buffers = list(_float_buffers(rnd).values())
            nodes.append(_Node(params, buffers, True))
        nodes.append(_Node(p_end, b_end, not self.fix_end))
        self.nodes = nn.ModuleList(nodes)

    # ------------------------------------------------------------------------------------------ module plumbing
    @property
    def template(self) -> nn.Module:
        """The private copy of the start network that is run with ``functional_call`` (do not train it)."""
        return self._template

    @property
    def num_nodes(self) -> int:
        """Number of control points, ``num_bends + 2``."""
        return self.num_bends + 2

    def _apply(self, fn: Any, recurse: bool = True) -> Curve:  # moves/casts the template with the nodes
        super()._apply(fn, recurse)
        self._template._apply(fn, recurse)
        return self

    def train(self, mode: bool = True) -> Curve:
        """Set train/eval mode of the curve and of the template network.

        Args:
            mode: True for training mode (BatchNorm uses batch statistics, Dropout is active).

        Returns:
            self.
        """
        super().train(mode)
        self._template.train(mode)
        return self

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, num_bends={self.num_bends}, fix_start={self.fix_start}, "
                f"fix_end={self.fix_end}, params={len(self.param_names)}, buffers={len(self.buffer_names)}")

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that curve training updates (bends, plus free endpoints).

        Returns:
            List of ``nn.Parameter`` with ``requires_grad=True``.
        """
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------------------------------ weights at t
    def coefficients(self, t: float | Tensor) -> Tensor:
        """Curve coefficients at ``t``.

        Args:
            t: float or ``[T]`` tensor in [0, 1].

        Returns:
            Float64 ``[num_nodes]`` or ``[T, num_nodes]``.
        """
        return curve_coefficients(self.kind, t, self.num_bends)

    def _blend(self, coeffs: Tensor, index: int, kind: str) -> Tensor:
        """``sum_j c_j theta_j[index]`` for ``coeffs`` ``[K]`` (-> ``shape``) or ``[T, K]`` (-> ``[T, *shape]``)."""
        out = None
        for j, node in enumerate(self.nodes):
            x = getattr(node, f"{kind}{index}")
            c = coeffs[..., j].to(x.device, x.dtype)
            term = c.reshape(tuple(c.shape) + (1,) * x.dim()) * x
            out = term if out is None else out + term
        assert out is not None
        return out

    def weights(self, t: float | Tensor) -> dict[str, Tensor]:
        """Parameters of the network at ``t`` (differentiable with respect to the trainable nodes).

        Args:
            t: float (or 0-d tensor) in [0, 1].

        Returns:
            ``{name: tensor}`` with the template's parameter names and shapes.
        """
        c = self.coefficients(t)
        if c.dim() != 1:
            raise ValueError(f"weights() takes one t; use stacked_weights() for many, got shape {tuple(c.shape)}")
        return {n: self._blend(c, i, "p") for i, n in enumerate(self.param_names)}

    @torch.no_grad()
    def buffers_at(self, t: float | Tensor) -> dict[str, Tensor]:
        """Floating-point buffers at ``t``, blended like the parameters (no gradient).

        Args:
            t: float in [0, 1].

        Returns:
            ``{name: tensor}`` (BatchNorm statistics are exact only at the nodes).
        """
        c = self.coefficients(t)
        return {n: self._blend(c, i, "b") for i, n in enumerate(self.buffer_names)}

    @torch.no_grad()
    def stacked_weights(self, ts: Tensor) -> dict[str, Tensor]:
        """Parameters at many positions, stacked along a new leading axis (for ``torch.func.vmap``).

        Args:
            ts: positions, shape ``[T]``.

        Returns:
            ``{name: tensor [T, *shape]}``.
        """
        c = self.coefficients(torch.as_tensor(ts).reshape(-1))
        return {n: self._blend(c, i, "p") for i, n in enumerate(self.param_names)}

    @torch.no_grad()
    def stacked_buffers(self, ts: Tensor) -> dict[str, Tensor]:
        """Floating buffers at many positions, ``{name: [T, *shape]}``.

        Args:
            ts: positions, shape ``[T]``.

        Returns:
            ``{name: tensor [T, *shape]}``.
        """
        c = self.coefficients(torch.as_tensor(ts).reshape(-1))
        return {n: self._blend(c, i, "b") for i, n in enumerate(self.buffer_names)}

    def forward(self, x: Tensor, t: float | Tensor) -> Tensor:
        """Output of the network at ``w(t)``.

        Args:
            x: inputs ``[B, *input_shape]`` on the curve's device.
            t: position in [0, 1] (a float or 0-d tensor; no default, so no global RNG is drawn).

        Returns:
            The template network's output at ``w(t)``, e.g. logits ``[B, num_classes]``.
        """
        return self.call_with(x, self.weights(t), self.buffers_at(t))

    def call_with(self, x: Tensor, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor]) -> Tensor:
        """Run the template with given parameters and buffers (``torch.func.functional_call``).

        Args:
            x: inputs ``[B, *input_shape]``.
            params: ``{name: tensor}`` for every parameter.
            buffers: ``{name: tensor}`` for floating buffers (others come from the template).

        Returns:
            The network's output.
        """
        self._template.train(self.training)
        return functional_call(self._template, ({**params}, {**buffers}), (x,))

    # ------------------------------------------------------------------------------------------ networks
    @torch.no_grad()
    def model_at(self, t: float, data: Any = None, batch_size: int = 256) -> nn.Module:
        """A standalone copy of the network at ``t``, optionally with re-estimated BatchNorm statistics.

        Args:
            t: position in [0, 1].
            data: training inputs for BatchNorm re-estimation (tensor, ``(x, y)`` or data object); None keeps the
                blended statistics (exact only at the nodes).
            batch_size: batch size of the re-estimation pass.

        Returns:
            ``nn.Module`` in eval mode on the curve's device.
        """
        model = copy.deepcopy(self._template)
        named_p = dict(model.named_parameters())
        named_b = dict(model.named_buffers())
        for n, v in self.weights(t).items():
            named_p[n].copy_(v)
        for n, v in self.buffers_at(t).items():
            named_b[n].copy_(v)
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
        if data is not None and has_batchnorm(model):
            recompute_bn_stats(model, train_inputs(data), batch_size=batch_size)
        return model

    @torch.no_grad()
    def node_state(self, index: int) -> dict[str, Tensor]:
        """Parameters and floating buffers of one node, keyed by the template's names.

        Args:
            index: node index in ``[0, num_nodes)`` (``0`` = start, ``num_nodes - 1`` = end).

        Returns:
            ``{name: tensor}`` (detached views of the node's tensors).
        """
        if not -self.num_nodes <= index < self.num_nodes:
            raise IndexError(f"node index {index} out of range for {self.num_nodes} nodes")
        node = self.nodes[index]
        out = {n: p.detach() for n, p in zip(self.param_names, node.param_list())}
        out.update({n: b.detach() for n, b in zip(self.buffer_names, node.buffer_list())})
        return out

    @torch.no_grad()
    def node_vectors(self) -> Tensor:
        """Every node's parameters flattened into one vector.

        Returns:
            ``[num_nodes, D]`` in float64 on the CPU (``D`` = number of parameter entries).
        """
        return torch.stack([
            torch.cat([p.detach().reshape(-1).to("cpu", torch.float64) for p in node.param_list()])
            for node in self.nodes
        ])

    @torch.no_grad()
    def reversed(self) -> Curve:
        """The same curve traversed from end to start: ``reversed().weights(1 - t) == weights(t)``.

        Returns:
            A new :class:`Curve` with the node order, ``fix_start`` and ``fix_end`` swapped.
        """
        out = copy.deepcopy(self)
        out.nodes = nn.ModuleList(list(out.nodes)[::-1])
        out.fix_start, out.fix_end = self.fix_end, self.fix_start
        end_state = self.node_state(-1)
        named = dict(out._template.named_parameters())
        named.update(dict(out._template.named_buffers()))
        for n, v in end_state.items():
            named[n].copy_(v)
        return out

    # ------------------------------------------------------------------------------------------ (de)serialise
    def to_tensors(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        """Flat tensors and string metadata for safetensors.

        Returns:
            ``({"node<j>/<name>": tensor}, metadata)``; metadata holds the format, ``kind``, ``num_bends``,
            ``fix_start``, ``fix_end`` and the parameter/buffer names.
        """
        tensors = {
            f"node{j}/{n}": v.detach().to("cpu").contiguous().clone()
            for j in range(self.num_nodes)
            for n, v in self.node_state(j).items()
        }
        meta = {
            "format": _FORMAT,
            "kind": self.kind,
            "num_bends": str(self.num_bends),
            "fix_start": json.dumps(self.fix_start),
            "fix_end": json.dumps(self.fix_end),
            "param_names": json.dumps(self.param_names),
            "buffer_names": json.dumps(self.buffer_names),
        }
        return tensors, meta

    @classmethod
    def from_tensors(cls, template: nn.Module, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> Curve:
        """Rebuild a curve from :meth:`to_tensors` output and a network of the right architecture.

        Args:
            template: any network with the curve's architecture (its weights are not used except for integer
                buffers).
            tensors: ``{"node<j>/<name>": tensor}``.
            metadata: the metadata written by :meth:`to_tensors`.

        Returns:
            The :class:`Curve`, on ``template``'s device.
        """
        if metadata.get("format") != _FORMAT:
            raise ValueError(f"metadata format must be {_FORMAT!r}, got {metadata.get('format')!r}")
        try:
            kind = metadata["kind"]
            num_bends = int(metadata["num_bends"])
            fix_start = bool(json.loads(metadata["fix_start"]))
            fix_end = bool(json.loads(metadata["fix_end"]))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"curve metadata is incomplete or corrupt: {exc}") from None
        curve = cls(kind, template, template, num_bends, fix_start=fix_start, fix_end=fix_end)
        names = curve.param_names + curve.buffer_names
        if json.loads(metadata.get("param_names", "[]")) != curve.param_names:
            raise ValueError("template parameters do not match the curve's parameter names (other architecture?)")
        with torch.no_grad():
            for j, node in enumerate(curve.nodes):
                targets = node.param_list() + node.buffer_list()
                for n, target in zip(names, targets):
                    key = f"node{j}/{n}"
                    if key not in tensors:
                        raise KeyError(f"curve tensors lack {key!r}")
                    value = tensors[key]
                    if value.shape != target.shape:
                        raise ValueError(f"curve tensor {key!r} has shape {tuple(value.shape)}, template "
                                         f"expects {tuple(target.shape)}")
                    target.copy_(value)
            start = curve.node_state(0)
            named = dict(curve._template.named_parameters())
            named.update(dict(curve._template.named_buffers()))
            for n, v in start.items():
                named[n].copy_(v)
        return curve


def curve_bytes(curve: Curve, metadata: Mapping[str, Any] | None = None) -> bytes:
    """The safetensors file of a curve as bytes (what :func:`save_curve` writes; e.g. to return from a worker).

    Args:
        curve: the curve.
        metadata: extra JSON-compatible entries stored under the ``"extra"`` metadata key.

    Returns:
        The file's bytes (read back with :func:`load_curve` once written).
    """
    from safetensors.torch import save

    tensors, meta = curve.to_tensors()
    if metadata is not None:
        meta["extra"] = json.dumps(dict(metadata), sort_keys=True)
    return save(tensors, metadata=meta)


def save_curve(curve: Curve, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a curve to a safetensors file atomically (temp file in the same directory + ``os.replace``).

    Args:
        curve: the curve.
        path: target file (parent directories are created).
        metadata: extra JSON-compatible entries stored under the ``"extra"`` metadata key.

    Returns:
        The path written.
    """
    path = Path(path)
    atomic_write_bytes(path, curve_bytes(curve, metadata))
    return path


def load_curve(path: str | Path, template: nn.Module) -> tuple[Curve, dict[str, Any]]:
    """Read a curve written by :func:`save_curve` (safetensors; nothing is unpickled).

    Args:
        path: the file.
        template: a network with the curve's architecture.

    Returns:
        ``(curve, extra_metadata)``.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"curve file {path} does not exist")
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    tensors = load_file(str(path))
    device = next(template.parameters()).device
    curve = Curve.from_tensors(template, tensors, meta).to(device)
    return curve, json.loads(meta.get("extra", "{}"))
