"""Vectorised optimisers with per-model hyperparameters.

Each parameter tensor holds a leading model axis ``[N, ...]``; learning rate, weight decay and momentum are
tensors of shape ``[N]`` broadcast over the rest. The update rules reproduce ``torch.optim.SGD``, ``Adam`` and
``AdamW`` exactly (up to floating-point summation order), so a model trains the same in any population.

References:
    Sutskever et al., 2013 (momentum, Nesterov); Kingma & Ba, 2015 (Adam); Loshchilov & Hutter, 2019 (AdamW).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import native

OPTIMIZERS = ("sgd", "adam", "adamw")


def _b(v: Tensor, like: Tensor) -> Tensor:
    """Broadcast a per-model ``[N]`` vector against ``like`` of shape ``[N, ...]``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


@dataclass
class PopulationOptimizer:
    """Per-model SGD / Adam / AdamW over stacked parameters.

    Args:
        params: list of ``(name, tensor)`` with tensors of shape ``[N, ...]``.
        kind: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        weight_decay, momentum: ``[N]`` tensors (momentum is beta1 for Adam's first moment only when
            ``kind == "sgd"``; Adam uses ``betas``).
        nesterov: Nesterov momentum for SGD.
        betas, eps: Adam's moment decay rates and epsilon.
    """

    params: list[tuple[str, Tensor]]
    kind: str
    weight_decay: Tensor
    momentum: Tensor
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    state: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    step_count: Tensor | None = None
    _flat: tuple[Tensor, Tensor, dict[str, Tensor]] | None = field(default=None, repr=False)
    _count: float | None = field(default=None, repr=False)  # every member's step count when they are equal
    _floors: dict[torch.dtype, float] = field(default_factory=dict, repr=False)
    _native_flat: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.kind!r}; choose one of {OPTIMIZERS}")
        n = self.weight_decay.shape[0]
        if self.step_count is None:
            self.step_count = torch.zeros(n, dtype=torch.float64)
        self._any_wd = bool((self.weight_decay != 0).any())
        self._any_mom = bool((self.momentum != 0).any())

    def _sqrt(self, v: Tensor) -> Tensor:
        """``sqrt(v)`` for Adam's denominator, bitwise equal to ``v.sqrt()`` after ``/ bias_correction + eps``.

        On the CPUs we measured, ``sqrt`` of zeros and subnormals is 6-30x slower than of normal numbers, and
        ``exp_avg_sq`` is full of exact zeros (weights fed by always-zero input pixels). Values below the smallest
        normal number are first raised to it: their square root (< 1.1e-19 in float32) stays below half an ulp of
        ``eps`` even after division by the smallest bias correction ``sqrt(1 - beta2)``, so the denominator is
        unchanged. When ``eps`` is too small for that argument, plain ``sqrt`` is used.
        """
        floor = self._sqrt_floor(v.dtype)
        return v.clamp_min(floor).sqrt_() if floor > 0 else v.sqrt()

    def _sqrt_floor(self, dtype: torch.dtype) -> float:
        """The value ``exp_avg_sq`` may be raised to before its square root without changing the denominator
        (see :meth:`_sqrt`), or 0 when ``eps`` is too small for that."""
        if dtype not in self._floors:
            tiny = torch.finfo(dtype).tiny
            bound = math.sqrt(tiny) / math.sqrt(1 - self.betas[1]) if self.betas[1] < 1 else math.inf
            self._floors[dtype] = tiny if self.eps * torch.finfo(dtype).eps / 4 > bound else 0.0  # < eps's ulp / 4
        return self._floors[dtype]

    def _uniform_step(self) -> float | None:
        """The bias-correction step ``max(count, 1)`` when every member has it, else ``None`` (the common raw
        count is kept in Python between steps, so a step needs no device-to-host read)."""
        if self._count is not None:
            return max(self._count, 1.0)
        t = self.step_count.clamp(min=1)
        t0 = float(t[0])
        if not bool((t == t0).all()):
            return None
        if bool((self.step_count == self.step_count[0]).all()):
            self._count = float(self.step_count[0])
        return t0

    def use_flat(self, params: Tensor, grads: Tensor) -> None:
        """Update through whole ``[N, P]`` buffers (from :meth:`Population.flatten_parameters`) when every member
        is active: a handful of operations per step instead of a handful per parameter tensor.

        The per-parameter state tensors become views into matching ``[N, P]`` state buffers (existing state is
        kept), so :meth:`member_state` and :meth:`load_member_state` are unchanged. The parameters in
        ``self.params`` must be views into ``params`` in the same order.
        """
        names = ("momentum_buffer",) if self.kind == "sgd" else ("exp_avg", "exp_avg_sq")
        if self.kind == "sgd" and not self._any_mom:
            names = ()
        bufs = {k: torch.zeros_like(params) for k in names}
        off = 0
        with torch.no_grad():
            for name, p in self.params:
                k = p[0].numel()
                st = self.state.setdefault(name, {})
                for key, buf in bufs.items():
                    view = buf[:, off:off + k].view(p.shape)
                    if key in st:
                        view.copy_(st[key])
                    st[key] = view
                off += k
        if off != params.shape[1]:
            raise ValueError(f"the parameters hold {off} values per model, the flat buffer {params.shape[1]}")
        self._flat = (params, grads, bufs)
        self._native_flat = (self.kind != "sgd" and params.device.type == "cpu" and params.dtype == torch.float32
                             and params.stride(1) == 1 and all(b.dtype == params.dtype and b.stride() == params.stride()
                                                               and b.shape == params.shape
                                                               for b in (grads, *bufs.values())))

    @torch.no_grad()
    def _step_flat(self, lr: Tensor) -> None:
        p, g, bufs = self._flat  # type: ignore[misc]
        lr_ = lr.view(-1, 1)
        wd = self.weight_decay.view(-1, 1)
        if self.kind == "sgd":
            d = g + wd * p if self._any_wd else g
            if self._any_mom:
                mom = self.momentum.view(-1, 1)
                buf = bufs["momentum_buffer"]
                buf.mul_(mom).add_(d)  # the first step gives buf = d, as torch.optim.SGD's clone
                d = d + mom * buf if self.nesterov else torch.where(mom != 0, buf, d)
            p.add_(-lr_ * d)
            return
        b1, b2 = self.betas
        t0 = self._uniform_step()
        if t0 is not None:  # every member has taken as many steps: scalar bias corrections
            bc1, bc2_sqrt = 1 - b1 ** t0, (1 - b2 ** t0) ** 0.5
            if self._native_flat and native.available():
                # one fused pass instead of eight (same update to float32 rounding; _native/adam.c)
                native.adam_step(p, g, bufs["exp_avg"], bufs["exp_avg_sq"], lr, self.weight_decay,
                                 betas=self.betas, eps=self.eps, bias_correction1=bc1,
                                 bias_correction2_sqrt=bc2_sqrt, sqrt_floor=self._sqrt_floor(p.dtype),
                                 adamw=self.kind == "adamw", use_wd=self._any_wd, check=False)
                return
        else:
            t = self.step_count.clamp(min=1)
            bc1 = (1 - b1 ** t).to(lr.dtype).to(lr.device).view(-1, 1)
            bc2_sqrt = (1 - b2 ** t).sqrt().to(lr.dtype).to(lr.device).view(-1, 1)
        if self.kind == "adamw":
            p.mul_(1 - lr_ * wd)
        elif self._any_wd:
            g = g + wd * p
        ea, eas = bufs["exp_avg"], bufs["exp_avg_sq"]
        ea.lerp_(g, 1 - b1)
        eas.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = self._sqrt(eas).div_(bc2_sqrt).add_(self.eps)
        p.addcdiv_(ea * (-lr_ / bc1), denom)

    @torch.no_grad()
    def step(self, lr: Tensor, active: Tensor, all_active: bool | None = None) -> None:
        """Apply one update.

        Args:
            lr: ``[N]`` learning rates.
            active: ``[N]`` bool; inactive (stopped or failed) models are left unchanged.
            all_active: ``True`` when every model is active (skips the masking); computed if ``None``.
        """
        if all_active is None:
            all_active = bool(active.all())
        if not all_active:
            lr = torch.where(active, lr, torch.zeros_like(lr))
        if all_active:  # (no device-to-host copy: on a GPU that would wait for the step's kernels)
            self.step_count += 1
            if self._count is not None:
                self._count += 1
        else:
            self.step_count += active.to(self.step_count.dtype).cpu()
            self._count = None
        if all_active and self._flat is not None:
            self._step_flat(lr)
            return
        wd, mom = self.weight_decay, self.momentum
        if self.kind != "sgd":
            b1, b2 = self.betas
            t = self.step_count.clamp(min=1)
            bc1 = (1 - b1 ** t).to(lr.dtype).to(lr.device)
            bc2_sqrt = (1 - b2 ** t).sqrt().to(lr.dtype).to(lr.device)
            step_size = lr / bc1
        for name, p in self.params:
            g = p.grad
            if g is None:
                continue
            if not all_active:
                g = torch.where(_b(active, g), g, torch.zeros((), dtype=g.dtype, device=g.device))
            st = self.state.setdefault(name, {})
            if self.kind == "sgd":
                d = g + _b(wd, p) * p if self._any_wd else g
                if self._any_mom:
                    buf = st.get("momentum_buffer")
                    if buf is None:
                        buf = st["momentum_buffer"] = d.clone()
                    elif all_active:
                        buf.mul_(_b(mom, buf)).add_(d)
                    else:
                        m = torch.where(_b(active, buf), _b(mom, buf), torch.ones_like(_b(mom, buf)))
                        buf.mul_(m).add_(torch.where(_b(active, d), d, torch.zeros_like(d)))
                    d = d + _b(mom, buf) * buf if self.nesterov else torch.where(_b(mom != 0, buf), buf, d)
                p.add_(-_b(lr, p) * d)
            else:
                if self.kind == "adamw":
                    p.mul_(1 - _b(lr * wd, p))
                elif self._any_wd:
                    g = g + _b(wd, p) * p
                if "exp_avg" not in st:
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                ea, eas = st["exp_avg"], st["exp_avg_sq"]
                if all_active:
                    ea.lerp_(g, 1 - b1)
                    eas.mul_(b2).addcmul_(g, g, value=1 - b2)
                else:
                    a = _b(active, p)
                    ea.copy_(torch.where(a, ea + (g - ea) * (1 - b1), ea))
                    eas.copy_(torch.where(a, eas * b2 + g * g * (1 - b2), eas))
                denom = self._sqrt(eas).div_(_b(bc2_sqrt, p)).add_(self.eps)
                p.addcdiv_(ea * _b(-step_size, p), denom)

    # ---------------------------------------------------------------------------------------- state (per member)
    def member_state(self, index: int) -> dict[str, Tensor]:
        """Flat optimizer state of model ``index``: ``{"<param>.<buffer>": tensor, "step": tensor}``."""
        out = {"step": self.step_count[index].clone().reshape(1)}
        for name, st in self.state.items():
            for k, v in st.items():
                out[f"{name}.{k}"] = v[index].detach().to("cpu", copy=True)
        return out

    def load_member_state(self, index: int, flat: dict[str, Tensor]) -> None:
        """Inverse of :meth:`member_state` for model ``index``."""
        if "step" in flat:
            self.step_count[index] = float(flat["step"].reshape(-1)[0])
            self._count = None
        names = dict(self.params)
        for key, v in flat.items():
            if key == "step":
                continue
            pname, _, buf = key.rpartition(".")
            if pname not in names:
                raise KeyError(f"optimizer state {key!r} names no parameter of this population")
            p = names[pname]
            st = self.state.setdefault(pname, {})
            if buf not in st:
                st[buf] = torch.zeros_like(p)
            st[buf][index].copy_(v)
