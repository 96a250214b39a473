"""Turn N models of one architecture into one population network, and back.

``Population(models)`` deep-copies the first model as a template and swaps every leaf module for its population
version (:mod:`zooscape.train.layers`), stacking the N models' parameters and buffers along a new leading axis.
The container code of the template (``Sequential``, residual blocks, ``torch.flatten(x, 1)``) runs unchanged on
population tensors with the models folded into the channel dimension.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import _flags, native
from .layers import POP_LAYERS, FusedPool, PopConv2d, PopDropout, PopLinear, SharedInput, is_pool2x2, widen_module


def _check_same_architecture(models: Sequence[nn.Module]) -> None:
    ref = {k: (tuple(v.shape), v.dtype) for k, v in models[0].state_dict().items()}
    for i, m in enumerate(models[1:], 1):
        got = {k: (tuple(v.shape), v.dtype) for k, v in m.state_dict().items()}
        if got.keys() != ref.keys():
            diff = sorted(set(got) ^ set(ref))[:5]
            raise ValueError(f"models[{i}] has a different architecture from models[0] (keys differ: {diff})")
        for k in ref:
            if got[k] != ref[k]:
                raise ValueError(f"models[{i}] parameter {k!r} has shape/dtype {got[k]}, models[0] has {ref[k]}")
        if type(m) is not type(models[0]):
            raise ValueError(f"models[{i}] is a {type(m).__name__}, models[0] a {type(models[0]).__name__}")


class Population(nn.Module):
    """N models of one architecture evaluated as one network.

    Args:
        models: N >= 1 models with identical architecture (same class, same state-dict keys and shapes).
        layout: ``"channel"`` (population in the channel dimension) or ``"stacked"`` (population stacked on the
            batch dimension, for networks without convolutions); default: chosen from the architecture.

    Shapes:
        ``forward`` takes ``x`` of shape ``[B, N, *input_shape]`` (one batch per model) and returns ``[B, N, K]``.
        ``forward_shared`` takes ``[B, *input_shape]`` (the same batch for every model) and returns ``[B, N, K]``.

    The population's parameter names equal the template model's; each holds a leading model axis of size N.
    """

    def __init__(self, models: Sequence[nn.Module], layout: str | None = None):
        super().__init__()
        if len(models) == 0:
            raise ValueError("a population needs at least one model")
        _check_same_architecture(models)
        self.size = len(models)
        self.template_class = type(models[0])
        self._template = (copy.deepcopy(models[0]).cpu(),)  # a tuple, so it is not registered as a submodule
        net = copy.deepcopy(models[0])
        self.net = net
        self._replace(net, [dict(m.named_modules()) for m in models], prefix="")
        self.dropouts = [m for m in net.modules() if isinstance(m, PopDropout)]
        # networks without convolutions or pooling run in the "stacked" layout [N*B, F] (no transposes around
        # each Linear); convolutional networks keep the population in the channel dimension [B, N*C, H, W]
        spatial = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                   nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, PopConv2d)
        self.layout = "channel" if any(isinstance(m, spatial) for m in net.modules()) else "stacked"
        if layout is not None:
            self.layout = layout
        # oneDNN's grouped convolutions and pooling are several times faster on channels-last (NHWC) tensors
        # (a population of one is an ordinary network: NCHW is faster there, CNN-s 487 vs 705 ms per epoch)
        switches = _flags.current()
        self.channels_last = switches.channels_last if switches.channels_last is not None else self.size >= 2
        self._shared = SharedInput(self.size)
        self._shared.layout, self._shared.channels_last = self.layout, self.channels_last
        for m in net.modules():
            if isinstance(m, POP_LAYERS):
                m.layout = self.layout
                m.shared = self._shared
        self._fused_pools = self._fuse_pools(net)
        # native conv + pool kernels: verified once against the PyTorch path (None = not yet)
        self._native_ok: bool | None = None
        first = next((m for m in net.modules() if isinstance(m, POP_LAYERS)), None)
        self._first_conv = first if isinstance(first, PopConv2d) else None
        # forward_shared's dense first-layer path: verified once against the expanded path (None = not yet)
        self._shared_ok: bool | None = None
        self._shared_enabled = switches.shared_input and any(
            isinstance(m, (PopLinear, PopConv2d)) for m in net.modules())
        self._names = [k for k, _ in models[0].state_dict().items()]
        own = self.net.state_dict()
        missing = [k for k in self._names if k not in own]
        if missing:
            raise TypeError(f"could not build a population: state-dict entries {missing[:5]} have no population "
                            "counterpart")

    @staticmethod
    def _fuse_pools(net: nn.Module) -> list[FusedPool]:
        """Let a convolution that directly feeds a 2x2 max-pool in a ``Sequential`` (optionally through a ReLU,
        which commutes with max) pool its own output when it can (shared-batch evaluation, native kernels), and
        a ReLU right after that pool be applied by the native kernels too."""
        fused = []
        for seq in net.modules():
            if not isinstance(seq, nn.Sequential):
                continue
            items = list(seq._modules.items())
            for i, (_, m) in enumerate(items):
                if not isinstance(m, PopConv2d):
                    continue
                j = i + 1
                if j < len(items) and type(items[j][1]) is nn.ReLU:
                    j += 1
                if j < len(items) and is_pool2x2(items[j][1]):
                    wrapper = FusedPool(items[j][1])
                    setattr(seq, items[j][0], wrapper)
                    object.__setattr__(m, "fused_pool", wrapper)  # a reference, not a submodule of the conv
                    fused.append(wrapper)
                    if j == i + 1 and j + 1 < len(items) and type(items[j + 1][1]) is nn.ReLU:
                        # conv -> pool -> ReLU (CNN-s, CNN-l with relu): the native kernels apply the ReLU too
                        relu = FusedPool(items[j + 1][1])
                        setattr(seq, items[j + 1][0], relu)
                        object.__setattr__(m, "fused_relu", relu)
                        fused.append(relu)
        return fused

    def _replace(self, module: nn.Module, sources: list[dict[str, nn.Module]], prefix: str) -> None:
        for name, child in list(module.named_children()):
            path = f"{prefix}{name}"
            if len(list(child.children())) == 0:
                wide = widen_module([s[path] for s in sources])
                if wide is not None:
                    setattr(module, name, wide)
            else:
                has_own = any(True for _ in child.parameters(recurse=False))
                if has_own:
                    raise TypeError(f"module {path!r} ({type(child).__name__}) holds parameters directly and "
                                    "cannot be trained as a population")
                self._replace(child, sources, prefix=path + ".")

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        b, n = x.shape[0], x.shape[1]
        if n != self.size:
            raise ValueError(f"expected input [B, {self.size}, ...], got shape {tuple(x.shape)}")
        if self.layout == "stacked":
            out = self.net(x.transpose(0, 1).reshape(n * b, *x.shape[2:]))
            return out.view(n, b, -1).transpose(0, 1)
        rest = x.shape[3:] if x.dim() > 3 else ()
        wide = x.reshape(b, n * x.shape[2], *rest) if x.dim() > 2 else x.reshape(b, n)
        if self._fused_pools:
            for p in self._fused_pools:  # never carry a mark over from an interrupted pass
                p.pending = False
            if self._native_ok is None and wide.shape[0] > 0 and self._native_relevant(wide):
                self._native_ok = self._probe_native(wide[:2])
        if wide.dim() == 4 and self.channels_last and not self._native_input(wide):
            wide = wide.contiguous(memory_format=torch.channels_last)
        out = self.net(wide)
        return out.reshape(b, self.size, -1)

    def _native_relevant(self, x: Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype == torch.float32 and native.available()
                and any(isinstance(m, PopConv2d) and m.native_pool_ok() for m in self.net.modules()))

    def _set_native(self, allowed: bool) -> None:
        for m in self.net.modules():
            if isinstance(m, PopConv2d):
                m.native_allowed = allowed

    @torch.no_grad()
    def _probe_native(self, x: Tensor) -> bool:
        """Check once, in eval mode on two samples, that the native conv + pool (+ ReLU) path gives what the
        PyTorch path gives, and keep to the PyTorch path otherwise. The fusion assumes that a convolution's output
        goes only to the pool after it (and the pool's only to the ReLU) in module order, as in a ``Sequential``
        run front to back; a model whose ``forward`` uses those modules otherwise is caught here."""
        modes = [(m, m.training) for m in self.modules()]  # restored exactly (a frozen BN stays in eval mode)
        self.eval()
        try:
            try:
                fast = self.net(x)
            except (RuntimeError, ValueError):
                fast = None
            self._set_native(False)
            for p in self._fused_pools:
                p.pending = False
            slow = self.net(x)
        finally:
            for p in self._fused_pools:
                p.pending = False
            for m, mode in modes:
                m.training = mode
        ok = fast is not None and _outputs_agree(fast, slow)
        self._set_native(ok)
        return ok

    def _native_input(self, x: Tensor) -> bool:
        """Whether the first layer takes ``x`` through the native conv + pool kernels, which read NCHW input
        directly (contiguous per-model images) and write channels-last output: no layout copy needed."""
        first = self._first_conv
        return (first is not None and x.device.type == "cpu" and x.dtype == torch.float32
                and first.native_pool_ok() and native.available())

    def forward_model_major(self, x: Tensor) -> Tensor:
        """Like :meth:`forward` with the model axis first: ``x`` is ``[N, B, *input_shape]``; returns ``[B, N, K]``.

        For the stacked layout this avoids a transposing copy of the batch (``x`` is already ``[N*B, ...]``).
        """
        n, b = x.shape[0], x.shape[1]
        if n != self.size:
            raise ValueError(f"expected input [{self.size}, B, ...], got shape {tuple(x.shape)}")
        if self.layout == "stacked":
            return self.net(x.reshape(n * b, *x.shape[2:])).view(n, b, -1).transpose(0, 1)
        return self.forward(x.transpose(0, 1))

    def forward_shared(self, x: Tensor) -> Tensor:
        """Evaluate every model on the same batch ``x`` of shape ``[B, *input_shape]``; returns ``[B, N, K]``.

        In eval mode the first population layer applies all N models to the shared batch at once (one dense
        Linear/Conv2d with ``N*out`` outputs) instead of copying the batch N times. The first call checks this path
        against the copying one on two samples and keeps to the copying path if they differ (an architecture that
        feeds its input to two layers, say); the ``shared_input`` switch (:mod:`zooscape.train._flags`) turns the
        dense path off.
        """
        if self.training or not self._shared_enabled or self._shared_ok is False or x.shape[0] == 0:
            return self._forward_expanded(x)
        if self._shared_ok is None:
            self._shared_ok = self._probe_shared(x[:2])
            if not self._shared_ok:
                return self._forward_expanded(x)
        return self._forward_dense_first(x)

    def _forward_expanded(self, x: Tensor) -> Tensor:
        xx = x.unsqueeze(1).expand(x.shape[0], self.size, *x.shape[1:])
        return self.forward(xx)

    def _forward_dense_first(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        self._shared.pending = True
        try:
            out = self.net(x)
        finally:
            self._shared.pending = False
            for p in self._fused_pools:
                p.pending = False
        if self.layout == "stacked":
            return out.view(self.size, b, -1).transpose(0, 1)
        return out.reshape(b, self.size, -1)

    @torch.no_grad()
    def _probe_shared(self, x: Tensor) -> bool:
        try:
            fast = self._forward_dense_first(x)
        except (RuntimeError, ValueError):
            return False
        slow = self._forward_expanded(x)
        return _outputs_agree(fast, slow)

    def flatten_parameters(self) -> tuple[Tensor, Tensor] | None:
        """Move every parameter and its gradient into one model-major buffer each, ``[N, P]`` (``P`` = one
        model's parameter count), so that optimiser updates and gradient zeroing are a few whole-buffer operations.

        Parameters become strided views into the buffer (their values and names are unchanged); gradients become
        views into the gradient buffer and are accumulated in place by autograd (zero it with ``grads.zero_()``).
        Existing gradients are carried over. Idempotent.

        Returns:
            ``(params, grads)``, both ``[N, P]``, or ``None`` when the parameters do not share one dtype and device.
        """
        if getattr(self, "_flat", None) is not None:
            return self._flat
        params = list(self.net.parameters())
        if not params or len({(p.dtype, p.device) for p in params}) != 1:
            return None
        n = self.size
        total = sum(p[0].numel() for p in params)
        flat = params[0].new_empty(n, total)
        grads = params[0].new_zeros(n, total)
        off = 0
        with torch.no_grad():
            for p in params:
                k = p[0].numel()
                flat[:, off:off + k].copy_(p.detach().reshape(n, k))
                if p.grad is not None:
                    grads[:, off:off + k].copy_(p.grad.reshape(n, k))
                p.data = flat[:, off:off + k].view(p.shape)
                p.grad = grads[:, off:off + k].view(p.shape)
                off += k
        self._flat = (flat, grads)
        return self._flat

    def set_dropout_generators(self, generators: list[torch.Generator] | None) -> None:
        for d in self.dropouts:
            d.set_generators(generators)

    # ----------------------------------------------------------------------------------------------- state
    def member_state_dict(self, index: int) -> dict[str, Tensor]:
        """State dict of model ``index`` (detached CPU copies, keys as the template model's)."""
        own = self.net.state_dict()
        return {k: own[k][index].detach().to("cpu", copy=True) for k in self._names}

    def state_dicts(self) -> list[dict[str, Tensor]]:
        """One state dict per model, in population order."""
        own = self.net.state_dict()
        cpu = {k: own[k].detach().to("cpu") for k in self._names}
        return [{k: v[i].clone() for k, v in cpu.items()} for i in range(self.size)]

    def load_member_state_dict(self, index: int, state: dict[str, Tensor]) -> None:
        """Overwrite model ``index`` with ``state`` (keys and shapes as the template model's)."""
        own = self.net.state_dict()
        for k in self._names:
            if k not in state:
                raise KeyError(f"state dict for member {index} lacks {k!r}")
            if tuple(state[k].shape) != tuple(own[k].shape[1:]):
                raise ValueError(f"state {k!r} has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape[1:])}")
            with torch.no_grad():
                own[k][index].copy_(state[k])

    @property
    def template(self) -> nn.Module:
        """The (CPU) copy of the first model this population was built from."""
        return self._template[0]

    def export_models(self) -> list[nn.Module]:
        """Plain single models (copies of the first model's class and structure) holding each member's weights."""
        return models_from_states(self._template[0], self.state_dicts())


def _outputs_agree(fast: Tensor, slow: Tensor) -> bool:
    """Whether a fast path's output equals the plain path's up to rounding (the populations' one-time checks)."""
    if fast.shape != slow.shape:
        return False
    tol = 1e-4 if fast.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-9
    scale = float(slow.abs().max()) if slow.numel() else 0.0
    return bool(torch.allclose(fast, slow, rtol=tol, atol=tol * max(1.0, scale), equal_nan=True))


def models_from_states(template: nn.Module, state_dicts: Sequence[dict[str, Tensor]]) -> list[nn.Module]:
    """One copy of ``template`` per state dict, holding those weights."""
    out = []
    for sd in state_dicts:
        m = copy.deepcopy(template)
        m.load_state_dict(sd)
        out.append(m)
    return out
