"""Derive a :class:`~zooscape.align.spec.PermutationSpec` automatically from a torch.fx trace.

The tracer propagates a *label* through the graph: for every tensor it records which dimension (if any)
carries the units of which permutation group.  Linear / Conv / Embedding layers create new groups,
normalisation layers, activations, dropout, pooling, reshapes and reductions propagate them, elementwise
binary ops (residual adds, gating products) merge them with a union-find, and anything the tracer does
not understand *freezes* the groups that reach it (they are kept as the identity).  This is conservative:
a spec derived here never breaks the function of the model; at worst it permutes fewer units.

This module is one piece on purpose (over 500 lines): the label rules of every operator live in one walker
(``_Builder``) whose cases share the union-find state; split by operator family they would have to pass that
state around and the conservative freezing rule would no longer be visible in one place.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from .spec import ActivationPoint, AxisPerm, PermutationSpec

__all__ = ["permutation_spec", "trace_model"]


@dataclass(frozen=True)
class _Label:
    gid: int
    dim: int
    inner: int = 1


class _Groups:
    """Union-find over permutation groups, with frozen (identity-only) roots."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.name: list[str] = []
        self.frozen: dict[int, str] = {}

    def new(self, name: str, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.name.append(name)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        root = g
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[g] != root:
            self.parent[g], g = root, self.parent[g]
        return root

    def freeze(self, g: int, reason: str) -> None:
        self.frozen.setdefault(self.find(g), reason)

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        root, child = min(ra, rb), max(ra, rb)
        self.parent[child] = root
        if child in self.frozen:
            self.frozen.setdefault(root, self.frozen.pop(child))
        if self.size[ra] != self.size[rb]:
            self.freeze(root, f"{where} joins groups of different sizes {self.size[ra]} and {self.size[rb]}")
        return root


_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.LogSigmoid, nn.Softmax, nn.LogSoftmax, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Threshold,
)
_SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d, nn.Upsample,
    nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d,
    nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
)
_CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT_MODULES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
               nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)

_ELEMENTWISE_FUNCS = {
    torch.relu, torch.relu_, F.relu, F.relu6, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.leaky_relu,
    F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus, F.softsign, F.tanhshrink, F.logsigmoid,
    torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, torch.exp, torch.abs, torch.neg, operator.neg,
    torch.square, torch.sqrt, torch.clamp, torch.clip, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.alpha_dropout, F.feature_alpha_dropout, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax,
    F.normalize, operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
    operator.truediv, operator.itruediv, operator.pow, torch.add, torch.sub, torch.mul, torch.div,
    torch.maximum, torch.minimum, torch.pow, torch.where,
}
_ELEMENTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "abs", "neg", "clamp", "clamp_", "clip",
    "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type_as", "softmax",
    "log_softmax", "square", "sqrt", "pow", "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_",
    "maximum", "minimum",
}
_SPATIAL_FUNCS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.lp_pool1d, F.lp_pool2d, F.interpolate,
}
_RESHAPE_FUNCS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.unflatten}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax, torch.amin, torch.var, torch.std, torch.nanmean}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin", "var", "std", "nanmean"}
_TRANSPOSE_FUNCS = {torch.transpose, torch.swapaxes, torch.permute}
_TRANSPOSE_METHODS = {"transpose", "swapaxes", "permute"}


def _op_name(node: fx.Node) -> str:
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


def _arg(node: fx.Node, index: int, name: str, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


class _Builder:
    """Walks a shape-propagated GraphModule and collects groups, axes and activation points."""

    def __init__(self, gm: fx.GraphModule, state_dict: dict[str, torch.Tensor]) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.state_dict = state_dict
        self.groups = _Groups()
        self.labels: dict[fx.Node, _Label | str] = {}
        self.axes: dict[str, dict[int, tuple[int, int]]] = {}
        self.param_reason: dict[str, str] = {}
        self.points: list[tuple[int, ActivationPoint]] = []
        self.seen: dict[int, list[ActivationPoint]] = {}
        self.out_group: dict[str, int] = {}

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def shape(arg) -> tuple[int, ...] | None:
        if isinstance(arg, fx.Node):
            meta = arg.meta.get("tensor_meta")
            if isinstance(meta, TensorMetadata):
                return tuple(int(s) for s in meta.shape)
        return None

    def is_tensor(self, arg) -> bool:
        return self.shape(arg) is not None

    def label(self, arg) -> _Label | None:
        lab = self.labels.get(arg) if isinstance(arg, fx.Node) else None
        return lab if isinstance(lab, _Label) else None

    def reason(self, arg) -> str:
        lab = self.labels.get(arg) if isinstance(arg, fx.Node) else None
        if isinstance(lab, str):
            return lab
        if isinstance(lab, _Label):
            return self.groups.frozen.get(self.groups.find(lab.gid), "permuted")
        return "not a traced tensor"

    def set(self, node: fx.Node, lab: _Label | str) -> None:
        self.labels[node] = lab
        if isinstance(lab, _Label):
            self.seen.setdefault(lab.gid, []).append(ActivationPoint(node.name, lab.dim, lab.inner))

    def freeze(self, arg, reason: str) -> None:
        lab = self.label(arg)
        if lab is not None:
            self.groups.freeze(lab.gid, reason)

    def assign(self, key: str | None, axis: int, gid: int, inner: int, where: str) -> None:
        if key is None or key not in self.state_dict:
            return
        slots = self.axes.setdefault(key, {})
        if axis in slots:
            old_gid, old_inner = slots[axis]
            if old_inner != inner:
                self.groups.freeze(old_gid, f"{key} axis {axis} is used with two block layouts")
                self.groups.freeze(gid, f"{key} axis {axis} is used with two block layouts")
            self.groups.union(old_gid, gid, f"shared tensor {key}")
        else:
            slots[axis] = (gid, inner)

    def new_group(self, key: str, name: str, size: int) -> int:
        if key in self.out_group:  # a module called twice shares its output units
            return self.out_group[key]
        gid = self.groups.new(name, size)
        self.out_group[key] = gid
        return gid

    def consume(self, x) -> None:
        lab = self.label(x)
        if lab is not None:
            self.points.append((lab.gid, ActivationPoint(x.name, lab.dim, lab.inner)))

    def unsupported(self, node: fx.Node, what: str) -> None:
        for arg in node.all_input_nodes:
            self.freeze(arg, f"reaches unsupported {what}")
            if arg.op == "get_attr":
                self.param_reason.setdefault(str(arg.target), f"used by unsupported {what}")
        self.set(node, f"output of unsupported {what}")

    # ------------------------------------------------------------- layer kinds
    def linear(self, node, x, w_key, b_key, name) -> None:
        w = self.state_dict[w_key]
        lab, shp = self.label(x), self.shape(x)
        if lab is not None:
            if lab.dim == len(shp) - 1:
                self.assign(w_key, 1, lab.gid, lab.inner, name)
                self.consume(x)
            else:
                self.freeze(x, f"{name} acts on the last dim while the units lie in dim {lab.dim}")
        gid = self.new_group(w_key, name, w.shape[0])
        self.assign(w_key, 0, gid, 1, name)
        self.assign(b_key, 0, gid, 1, name)
        self.set(node, _Label(gid, len(self.shape(node)) - 1, 1))

    def conv(self, node, x, w_key, b_key, groups: int, name: str, transposed: bool = False) -> None:
        w = self.state_dict[w_key]
        lab = self.label(x)
        in_ch = self.shape(x)[1]
        out_axis, in_axis = (1, 0) if transposed else (0, 1)
        out_ch = w.shape[out_axis] * (groups if transposed else 1)
        if lab is not None and lab.dim != 1:
            self.freeze(x, f"{name} convolves over dim 1 while the units lie in dim {lab.dim}")
            lab = None
        if groups == 1:
            if lab is not None:
                self.assign(w_key, in_axis, lab.gid, lab.inner, name)
                self.consume(x)
            gid = self.new_group(w_key, name, out_ch)
            self.assign(w_key, out_axis, gid, 1, name)
            self.assign(b_key, 0, gid, 1, name)
            self.set(node, _Label(gid, 1, 1))
        elif groups == in_ch and not transposed:
            # depthwise: output channel o = c * k + j reads input channel c only
            if lab is None:
                self.set(node, f"depthwise {name} of a non-permutable input ({self.reason(x)})")
                self.param_reason[w_key] = f"depthwise conv of a non-permutable input ({self.reason(x)})"
                return
            k = out_ch // in_ch
            self.consume(x)
            self.assign(w_key, 0, lab.gid, lab.inner * k, name)
            self.assign(b_key, 0, lab.gid, lab.inner * k, name)
            self.set(node, _Label(lab.gid, 1, lab.inner * k))
        else:
            why = f"grouped convolution {name} (groups={groups}) is not supported"
            self.freeze(x, why)
            self.param_reason[w_key] = why
            if b_key:
                self.param_reason[b_key] = why
            self.set(node, why)

    def channel_norm(self, node, x, keys: Sequence[str | None], name: str) -> None:
        """BatchNorm / InstanceNorm: per-channel (dim 1) parameters and buffers."""
        lab = self.label(x)
        if lab is not None and lab.dim == 1:
            for key in keys:
                self.assign(key, 0, lab.gid, lab.inner, name)
            self.set(node, lab)
        elif lab is not None:  # units in a dim the norm treats as a batch dim: equivariant
            self.set(node, lab)
            for key in keys:
                if key:
                    self.param_reason[key] = f"{name} normalises dim 1, not the permuted dim {lab.dim}"
        else:
            for key in keys:
                if key:
                    self.param_reason[key] = f"input of {name} is not permutable ({self.reason(x)})"
            self.set(node, self.labels.get(x, "not permutable"))

    def layer_norm(self, node, x, w_key, b_key, normalized_ndim: int, name: str) -> None:
        lab, shp = self.label(x), self.shape(x)
        first = len(shp) - normalized_ndim
        if lab is not None and lab.dim >= first:
            self.assign(w_key, lab.dim - first, lab.gid, lab.inner, name)
            self.assign(b_key, lab.dim - first, lab.gid, lab.inner, name)
        else:
            why = (f"input of {name} is not permutable ({self.reason(x)})" if lab is None
                   else f"{name} does not normalise the permuted dim {lab.dim}")
            for key in (w_key, b_key):
                if key:
                    self.param_reason[key] = why
        self.set(node, lab if lab is not None else self.labels.get(x, "not permutable"))

    def group_norm(self, node, x, w_key, b_key, num_groups: int, name: str) -> None:
        lab, shp = self.label(x), self.shape(x)
        if lab is not None and lab.dim == 1 and num_groups not in (1, shp[1]):
            self.freeze(x, f"{name} (GroupNorm with {num_groups} groups) mixes channels within groups")
        self.channel_norm(node, x, (w_key, b_key), name)

    def elementwise(self, node, name: str) -> None:
        out_shape = self.shape(node)
        if out_shape is None:
            self.unsupported(node, f"op {name} (non-tensor output)")
            return
        nd = len(out_shape)
        tensors = [a for a in node.all_input_nodes if self.is_tensor(a)]
        labelled = [(a, self.label(a)) for a in tensors if self.label(a) is not None]
        if not labelled:
            self.set(node, f"output of {name} of non-permutable tensors")
            return
        # align labelled dims to the broadcast output
        placed = [(a, _Label(lab.gid, lab.dim + nd - len(self.shape(a)), lab.inner)) for a, lab in labelled]
        ref = placed[0][1]
        if any(p.dim != ref.dim or p.inner != ref.inner for _, p in placed):
            why = f"{name} combines units laid out in different dims"
            for a, _ in placed:
                self.freeze(a, why)
            self.set(node, why)
            return
        gid = ref.gid
        for _, p in placed[1:]:
            gid = self.groups.union(gid, p.gid, name)
        for a in tensors:
            if self.label(a) is not None:
                continue
            shp = self.shape(a)
            d = ref.dim - (nd - len(shp))
            if d < 0 or shp[d] == 1:
                continue  # broadcast along the permuted dim: invariant
            if a.op == "get_attr":
                self.assign(str(a.target), d, gid, ref.inner, name)
            else:
                self.groups.freeze(gid, f"{name} combines the units with a non-permutable tensor ({self.reason(a)})")
        self.set(node, _Label(gid, ref.dim, ref.inner))

    def spatial(self, node, x, name: str) -> None:
        lab = self.label(x)
        if lab is None:
            self.set(node, self.labels.get(x, "not permutable"))
        elif lab.dim == 1:
            self.set(node, lab)
        else:
            self.freeze(x, f"{name} mixes the permuted dim {lab.dim}")
            self.set(node, f"output of {name}")

    def reshape(self, node, x, name: str) -> None:
        lab = self.label(x)
        if lab is None:
            self.set(node, self.labels.get(x, "not permutable"))
            return
        in_shape, out_shape = self.shape(x), self.shape(node)
        n = self.groups.size[lab.gid]
        low = math.prod(in_shape[lab.dim + 1:]) * lab.inner
        high = low * n
        for j in range(len(out_shape)):
            s_j = math.prod(out_shape[j + 1:])
            if low % s_j == 0 and (s_j * out_shape[j]) % high == 0:
                self.set(node, _Label(lab.gid, j, low // s_j))
                return
        why = f"{name} splits the permuted units of dim {lab.dim} across dims"
        self.freeze(x, why)
        self.set(node, why)

    def transpose(self, node, x, name: str) -> None:
        lab = self.label(x)
        if lab is None:
            self.set(node, self.labels.get(x, "not permutable"))
            return
        nd = len(self.shape(x))
        if name == "permute":
            dims = node.args[1:] if node.op == "call_method" else (_arg(node, 1, "dims"),)
            if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
                dims = dims[0]
            order = [int(d) % nd for d in dims]
            new_dim = order.index(lab.dim)
        else:
            d0, d1 = (int(_arg(node, 1, "dim0")) % nd, int(_arg(node, 2, "dim1")) % nd)
            new_dim = d1 if lab.dim == d0 else d0 if lab.dim == d1 else lab.dim
        self.set(node, _Label(lab.gid, new_dim, lab.inner))

    def reduce(self, node, x, name: str) -> None:
        lab = self.label(x)
        if lab is None:
            self.set(node, self.labels.get(x, "not permutable"))
            return
        nd = len(self.shape(x))
        dim = _arg(node, 1, "dim", None)
        keepdim = bool(_arg(node, 2, "keepdim", False))
        if name in ("var", "std"):
            keepdim = bool(node.kwargs.get("keepdim", False))
        if dim is None:
            dims = set(range(nd))
        else:
            dims = {int(d) % nd for d in (dim if isinstance(dim, (list, tuple)) else (dim,))}
        if lab.dim in dims:
            self.set(node, f"reduction {name} over the permuted dim (invariant)")
            return
        new_dim = lab.dim if keepdim else lab.dim - sum(d < lab.dim for d in dims)
        self.set(node, _Label(lab.gid, new_dim, lab.inner))

    def getitem(self, node, x, index) -> None:
        lab = self.label(x)
        if not self.is_tensor(x) or lab is None:
            self.set(node, self.labels.get(x, "not permutable") if self.is_tensor(x) else "not a tensor")
            return
        items = index if isinstance(index, tuple) else (index,)
        nd = len(self.shape(x))
        if any(isinstance(it, fx.Node) or isinstance(it, (list, torch.Tensor)) for it in items):
            self.unsupported(node, "advanced indexing")
            return
        n_real = sum(1 for it in items if it is not None and it is not Ellipsis)
        expanded: list = []
        for it in items:
            if it is Ellipsis:
                expanded += [slice(None)] * (nd - n_real)
            else:
                expanded.append(it)
        expanded += [slice(None)] * (nd - sum(1 for it in expanded if it is not None))
        in_dim, out_dim = 0, 0
        for it in expanded:
            if it is None:
                out_dim += 1
                continue
            if in_dim == lab.dim:
                if it != slice(None):
                    why = "indexing into the permuted dim"
                    self.freeze(x, why)
                    self.set(node, why)
                    return
                self.set(node, _Label(lab.gid, out_dim, lab.inner))
                return
            in_dim += 1
            if isinstance(it, slice):
                out_dim += 1
        self.set(node, _Label(lab.gid, out_dim, lab.inner))

    def cat(self, node, tensors, dim, name: str) -> None:
        nd = len(self.shape(node))
        dim = int(dim) % nd
        labs = [self.label(t) for t in tensors]
        if all(lab is None for lab in labs):
            self.set(node, f"output of {name} of non-permutable tensors")
            return
        ok = all(lab is not None and lab.dim == labs[0].dim and lab.inner == labs[0].inner and lab.dim != dim
                 for lab in labs)
        if not ok:
            why = f"{name} along the permuted dim (or with non-permutable inputs) is not supported"
            for t in tensors:
                self.freeze(t, why)
            self.set(node, why)
            return
        gid = labs[0].gid
        for lab in labs[1:]:
            gid = self.groups.union(gid, lab.gid, name)
        self.set(node, _Label(gid, labs[0].dim, labs[0].inner))

    def flip(self, node, x, dims) -> None:
        lab = self.label(x)
        nd = len(self.shape(x))
        dims = dims if isinstance(dims, (list, tuple)) else (dims,)
        if lab is not None and lab.dim in {int(d) % nd for d in dims}:
            why = "flip along the permuted dim"
            self.freeze(x, why)
            self.set(node, why)
        else:
            self.set(node, lab if lab is not None else self.labels.get(x, "not permutable"))

    def pad(self, node, x, pad) -> None:
        lab = self.label(x)
        nd = len(self.shape(x))
        if lab is not None and lab.dim >= nd - len(pad) // 2:
            why = "F.pad pads the permuted dim"
            self.freeze(x, why)
            self.set(node, why)
        else:
            self.set(node, lab if lab is not None else self.labels.get(x, "not permutable"))

    # ---------------------------------------------------------------- dispatch
    def call_module(self, node: fx.Node) -> None:
        target = str(node.target)
        mod = self.modules[target]
        x = node.args[0] if node.args else None
        key = lambda attr: f"{target}.{attr}" if getattr(mod, attr, None) is not None else None  # noqa: E731
        if isinstance(mod, nn.Linear):
            self.linear(node, x, key("weight"), key("bias"), target)
        elif isinstance(mod, _CONV_MODULES):
            self.conv(node, x, key("weight"), key("bias"), mod.groups, target)
        elif isinstance(mod, _CONVT_MODULES):
            if mod.groups != 1:
                self.unsupported(node, f"grouped transposed convolution {target}")
                return
            self.conv(node, x, key("weight"), key("bias"), 1, target, transposed=True)
        elif isinstance(mod, _BN_MODULES):
            keys = [key(a) for a in ("weight", "bias", "running_mean", "running_var")]
            self.channel_norm(node, x, keys, target)
        elif isinstance(mod, nn.LayerNorm):
            self.layer_norm(node, x, key("weight"), key("bias"), len(mod.normalized_shape), target)
        elif isinstance(mod, nn.GroupNorm):
            self.group_norm(node, x, key("weight"), key("bias"), mod.num_groups, target)
        elif isinstance(mod, nn.Embedding):
            gid = self.new_group(f"{target}.weight", target, mod.embedding_dim)
            self.assign(f"{target}.weight", 1, gid, 1, target)
            self.set(node, _Label(gid, len(self.shape(node)) - 1, 1))
        elif isinstance(mod, nn.PReLU):
            lab = self.label(x)
            if mod.num_parameters > 1:
                if lab is not None and lab.dim == 1:
                    self.assign(f"{target}.weight", 0, lab.gid, lab.inner, target)
                else:
                    self.freeze(x, f"{target} (PReLU) has per-channel slopes on dim 1")
                    self.param_reason[f"{target}.weight"] = f"input of {target} is not permutable"
            else:
                self.param_reason[f"{target}.weight"] = "single shared slope (permutation-invariant)"
            self.set(node, self.labels.get(x, "not permutable"))
        elif isinstance(mod, _ELEMENTWISE_MODULES):
            self.set(node, self.labels.get(x, "not permutable"))
        elif isinstance(mod, _SPATIAL_MODULES):
            if getattr(mod, "return_indices", False):
                self.unsupported(node, f"module {target} with return_indices")
            else:
                self.spatial(node, x, target)
        elif isinstance(mod, (nn.Flatten, nn.Unflatten)):
            self.reshape(node, x, target)
        else:
            for pname, _ in list(mod.named_parameters()) + list(mod.named_buffers()):
                self.param_reason[f"{target}.{pname}"] = f"module type {type(mod).__name__} is not supported"
            self.unsupported(node, f"module {target} ({type(mod).__name__})")

    def call_function(self, node: fx.Node) -> None:
        fn = node.target
        name = _op_name(node)
        x = node.args[0] if node.args else None
        attr_key = lambda a: str(a.target) if isinstance(a, fx.Node) and a.op == "get_attr" else None  # noqa: E731
        if fn is operator.getitem:
            self.getitem(node, x, node.args[1])
        elif fn is F.linear and attr_key(_arg(node, 1, "weight")):
            self.linear(node, x, attr_key(_arg(node, 1, "weight")), attr_key(_arg(node, 2, "bias")),
                        attr_key(_arg(node, 1, "weight")).rsplit(".", 1)[0])
        elif fn in (F.conv1d, F.conv2d, F.conv3d) and attr_key(_arg(node, 1, "weight")):
            w = attr_key(_arg(node, 1, "weight"))
            self.conv(node, x, w, attr_key(_arg(node, 2, "bias")), int(_arg(node, 6, "groups", 1)),
                      w.rsplit(".", 1)[0])
        elif fn is F.batch_norm:
            keys = [attr_key(_arg(node, i, nm)) for i, nm in ((3, "weight"), (4, "bias"),
                                                              (1, "running_mean"), (2, "running_var"))]
            self.channel_norm(node, x, keys, name)
        elif fn is F.layer_norm:
            self.layer_norm(node, x, attr_key(_arg(node, 2, "weight")), attr_key(_arg(node, 3, "bias")),
                            len(tuple(_arg(node, 1, "normalized_shape"))), name)
        elif fn is F.group_norm:
            self.group_norm(node, x, attr_key(_arg(node, 2, "weight")), attr_key(_arg(node, 3, "bias")),
                            int(_arg(node, 1, "num_groups")), name)
        elif fn in _ELEMENTWISE_FUNCS:
            self.elementwise(node, name)
        elif fn in _SPATIAL_FUNCS:
            if _arg(node, 99, "return_indices", False):
                self.unsupported(node, f"{name} with return_indices")
            else:
                self.spatial(node, x, name)
        elif fn in _RESHAPE_FUNCS:
            self.reshape(node, x, name)
        elif fn in _REDUCE_FUNCS:
            self.reduce(node, x, name)
        elif fn in _TRANSPOSE_FUNCS:
            self.transpose(node, x, "permute" if fn is torch.permute else "transpose")
        elif fn in (torch.cat, torch.concat):
            self.cat(node, list(_arg(node, 0, "tensors")), _arg(node, 1, "dim", 0), name)
        elif fn is torch.flip:
            self.flip(node, x, _arg(node, 1, "dims"))
        elif fn is F.pad:
            self.pad(node, x, _arg(node, 1, "pad"))
        elif fn is getattr:
            self.set(node, "attribute")
        elif not any(self.label(a) is not None for a in node.all_input_nodes):
            self.set(node, f"output of {name}")
        else:
            self.unsupported(node, f"function {name}")

    def call_method(self, node: fx.Node) -> None:
        name = str(node.target)
        x = node.args[0]
        if not self.is_tensor(x):
            self.set(node, f"output of method {name}")
        elif name in ("size", "dim", "numel", "ndimension", "nelement"):
            self.set(node, "shape")
        elif name in _ELEMENTWISE_METHODS:
            self.elementwise(node, name)
        elif name in _RESHAPE_METHODS:
            self.reshape(node, x, name)
        elif name in _REDUCE_METHODS:
            self.reduce(node, x, name)
        elif name in _TRANSPOSE_METHODS:
            self.transpose(node, x, "permute" if name == "permute" else "transpose")
        elif name == "flip":
            dims = node.args[1:] if len(node.args) > 1 else (node.kwargs.get("dims"),)
            self.flip(node, x, dims[0] if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else dims)
        else:
            self.unsupported(node, f"method {name}")

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.set(node, "model input")
            elif node.op == "get_attr":
                self.set(node, f"constant {node.target}")
            elif node.op == "call_module":
                self.call_module(node)
            elif node.op == "call_function":
                self.call_function(node)
            elif node.op == "call_method":
                self.call_method(node)
            elif node.op == "output":
                for arg in node.all_input_nodes:
                    self.freeze(arg, "reaches the model output")


def trace_model(model: nn.Module, example_input) -> fx.GraphModule:
    """Symbolically trace ``model`` and annotate every node with its shape from one forward pass.

    The forward pass runs under ``torch.no_grad`` with every module temporarily in eval mode, so
    BatchNorm statistics are not updated; the model is returned to its previous modes.

    Args:
        model: the model to trace (must be traceable by ``torch.fx.symbolic_trace``).
        example_input: a tensor ``[B, ...]`` (or tuple of tensors) accepted by ``model``.

    Returns:
        the ``torch.fx.GraphModule`` with ``node.meta["tensor_meta"]`` filled in.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if not all(isinstance(t, torch.Tensor) for t in inputs):
        raise ValueError("example_input must be a tensor or a tuple of tensors")
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - re-raise with context
        raise ValueError(
            f"model {type(model).__name__} cannot be traced by torch.fx ({exc}); "
            "use population-compatible forward code without data-dependent control flow"
        ) from exc
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(*inputs)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(
            f"example_input of shape {tuple(inputs[0].shape)} does not run through the model: {exc}"
        ) from exc
    finally:
        for m, mode in modes.items():
            m.training = mode
    return gm


def permutation_spec(model: nn.Module, example_input) -> PermutationSpec:
    """Derive the permutation symmetries of ``model`` from its torch.fx graph.

    Linear/Conv/Embedding layers create groups; BatchNorm, InstanceNorm, LayerNorm, GroupNorm(1 or C),
    activations, dropout, pooling, flatten/view/reshape, transposes and reductions propagate them; residual
    adds and elementwise products merge groups (one permutation for a residual stream); a Conv -> Flatten ->
    Linear transition permutes the Linear's input features in blocks of ``H * W``.  Groups that reach the
    model output or an unsupported op are frozen, and every tensor left unpermuted is reported.

    Args:
        model: a traceable ``nn.Module``.
        example_input: tensor ``[B, ...]`` (or tuple of tensors) used for shape propagation only.

    Returns:
        :class:`PermutationSpec` whose ``unpermuted`` maps every unpermuted state_dict key to a reason.

    References:
        Ainsworth, Hayase & Srinivasa (2023), "Git Re-Basin: Merging Models modulo Permutation Symmetries".
    """
    gm = trace_model(model, example_input)
    state_dict = dict(model.state_dict())
    b = _Builder(gm, state_dict)
    b.run()
    groups = b.groups

    # name and size of each live (non-frozen) root
    live: dict[int, str] = {}
    frozen_groups: dict[str, str] = {}
    for gid in range(len(groups.parent)):
        root = groups.find(gid)
        if gid != root:
            continue
        if root in groups.frozen:
            frozen_groups[groups.name[root]] = groups.frozen[root]
        else:
            live[root] = groups.name[root]
    group_sizes = {live[r]: groups.size[r] for r in sorted(live)}

    axes: dict[str, tuple[AxisPerm | None, ...]] = {}
    unpermuted: dict[str, str] = {}
    for key, tensor in state_dict.items():
        slots = b.axes.get(key, {})
        entry: list[AxisPerm | None] = [None] * tensor.ndim
        reasons = []
        for axis, (gid, inner) in sorted(slots.items()):
            root = groups.find(gid)
            if root in live:
                entry[axis] = AxisPerm(live[root], inner)
            else:
                reasons.append(f"axis {axis}: group {groups.name[root]!r} is frozen ({groups.frozen[root]})")
        if any(e is not None for e in entry):
            axes[key] = tuple(entry)
        elif reasons:
            unpermuted[key] = "; ".join(reasons)
        elif tensor.ndim == 0:
            unpermuted[key] = "scalar (permutation-invariant)"
        else:
            unpermuted[key] = b.param_reason.get(key) or "not consumed by a supported layer in the traced graph"

    points: dict[str, list[ActivationPoint]] = {g: [] for g in group_sizes}
    for gid, point in b.points:
        root = groups.find(gid)
        if root in live and point not in points[live[root]]:
            points[live[root]].append(point)
    for gid, seen in b.seen.items():  # fall back to the last tensor seen carrying the group
        root = groups.find(gid)
        if root in live and not points[live[root]] and seen:
            points[live[root]].append(seen[-1])
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    return PermutationSpec(
        group_sizes=group_sizes,
        axes=axes,
        shapes=shapes,
        unpermuted=unpermuted,
        frozen_groups=frozen_groups,
        activation_points={g: tuple(p) for g, p in points.items()},
    )
