"""A population of plain ReLU MLPs trained without autograd: forward, cross-entropy and backward by hand.

For small MLPs (the Model Zoos' and the phase-transition zoos' 64-32-32-10 networks) a population's training step
is dominated by per-operation overhead, not arithmetic: autograd records and replays ~100 nodes per step (views,
transposes, ``baddbmm``'s three-way backward, gradient accumulation into the flat buffer). For a network that is
only ``Flatten``, stacked :class:`~zooscape.train.layers.PopLinear` layers and ``ReLU``, the whole step is a few
batched operations per layer (Goodfellow, Bengio & Courville, 2016, ch. 6.5, back-propagation for an MLP):

- forward: ``h_l = relu(baddbmm(b_l, h_{l-1}, W_l^T))`` over the model axis, ``[N, B, out]``;
- loss: ``log_softmax`` of the logits (held as ``[N, K, B]``), the mean negative log-likelihood per model ``[N]``;
- backward: ``g = (softmax - onehot) / B``; per layer ``dW_l = g^T h_{l-1}`` (``bmm``), ``db_l = sum_B g``,
  ``g = threshold_backward(g W_l, h_{l-1})``, written straight into the parameters' gradient tensors (the
  population's flat ``[N, P]`` buffer once it exists).

The gradients equal autograd's to float rounding (tested), each model's independently of N. :func:`plan` decides
once per run whether a population qualifies (its layers, a numerical check of the forward on two samples), and
the trainer falls back to autograd otherwise. Switch: ``ZOOSCAPE_MANUAL_MLP=0`` (:mod:`zooscape.train._flags`).

Layers with a computed weight (the layer protocol of :class:`~zooscape.train.layers.PopLinear`): each step asks
every layer, in order, for the weight its forward uses now (:meth:`~zooscape.train.layers.PopLinear.manual_weight`,
e.g. a variational-dropout twin's weight sample, :class:`zooscape.sparsify.pop_ard.PopARDLinear`), runs the
forward and backward above with these weights, and hands each layer ``dL/dW``
(:meth:`~zooscape.train.layers.PopLinear.manual_weight_grad`), which turns it into its parameters' gradients.
A layer opts in with :meth:`~zooscape.train.layers.PopLinear.manual_ok`; plain ``PopLinear`` layers use their
weight and write ``dL/dW`` directly. ``train`` knows nothing of the subclasses (they live above it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zooscape.train.layers import PopLinear, _set_grad

__all__ = ["ManualMLPStep", "plan"]


class ManualMLPStep:
    """One training step's forward, loss and backward for a population of ReLU MLPs (see the module docstring).

    Args:
        layers: the population's :class:`PopLinear` layers in order (stacked layout), a ReLU between each two.
    """

    def __init__(self, layers: list[PopLinear]) -> None:
        self.layers = layers
        self.n = layers[0].n
        self.in_features = layers[0].in_features

    def forward(self, x: Tensor, weights: list[Tensor] | None = None) -> list[Tensor]:
        """The activations ``[x, h_1, ..., h_{L-1}]`` (each ``[N, B, features]``) and the logits ``[N, K, B]`` last,
        for inputs ``x`` ``[N, B, ...]`` and the layers' weights ``[N, out, in]`` (default: their parameters). The
        logits keep the class axis in the middle, where ``log_softmax`` vectorises over the batch (over the last
        axis of 10 classes it is ~13x slower)."""
        if weights is None:
            weights = [layer.weight.detach() for layer in self.layers]
        h = x.reshape(self.n, x.shape[1], self.in_features)
        acts = [h]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            # the weight is always the second, transposed operand: with the weight first, MKL's result depends on
            # the weight's batch stride (standalone vs a view into the flat buffer), and a resumed run would differ
            w = weights[i].transpose(1, 2)
            h = torch.baddbmm(layer.bias.detach().unsqueeze(1), h, w) if layer.bias is not None else torch.bmm(h, w)
            if i < last:
                h.relu_()
            acts.append(h)
        acts[-1] = acts[-1].transpose(1, 2).contiguous()  # logits [N, K, B]
        return acts

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor, *, predict: bool = False) -> tuple[Tensor, Tensor | None]:
        """Forward, mean cross-entropy per model and backward into every parameter's ``.grad`` (overwritten).

        Args:
            x: inputs ``[N, B, ...]`` (model-major; ``prod(...)`` = the first layer's input features).
            y: class ids ``[N, B]``.
            predict: also return the predicted classes.

        Returns:
            ``(loss [N], predictions [N, B] or None)``; a prediction is the first maximal logit (as
            :func:`~zooscape.train.losses.predictions`).
        """
        weights = [layer.manual_weight() for layer in self.layers]  # in layer order (samples draw noise here)
        acts = self.forward(x, weights)
        b = x.shape[1]
        logits = acts[-1]  # [N, K, B]
        logp = torch.log_softmax(logits, 1)
        target = y.unsqueeze(1)  # [N, 1, B]
        loss = logp.gather(1, target).squeeze(1).mean(1).neg_()
        g = logp.exp_()  # d(mean NLL)/d(logits) = (softmax - onehot) / B, [N, K, B]
        g.scatter_add_(1, target, g.new_full(target.shape, -1.0))
        g.div_(b)
        last = len(self.layers) - 1
        for i in range(last, -1, -1):
            layer = self.layers[i]
            if i == last:  # g is [N, K, B]
                layer.manual_weight_grad(torch.bmm(g, acts[i]))
                if layer.bias is not None:
                    _set_grad(layer.bias, g.sum(2))
                if i > 0:
                    g = torch.bmm(g.transpose(1, 2), weights[i])
            else:  # g is [N, B, out]
                layer.manual_weight_grad(torch.bmm(g.transpose(1, 2), acts[i]))
                if layer.bias is not None:
                    _set_grad(layer.bias, g.sum(1))
                if i > 0:
                    g = torch.bmm(g, weights[i])
            if i > 0:
                g = torch.ops.aten.threshold_backward(g, acts[i], 0)
        return loss, logits.max(1).indices if predict else None


def _units(net: nn.Module) -> list[nn.Module]:
    """The leaf modules of ``net`` in module order, a :class:`PopLinear` (with any children it has, e.g. a noise
    source) counted as one."""
    out: list[nn.Module] = []

    def walk(m: nn.Module) -> None:
        children = list(m.children())
        if isinstance(m, PopLinear) or not children:
            out.append(m)
            return
        for c in children:
            walk(c)

    walk(net)
    return out


def _layers(net: nn.Module) -> list[PopLinear] | None:
    """The PopLinear layers of ``net`` if it is ``[Flatten] PopLinear (ReLU PopLinear)*`` in module order, each
    layer opting in (:meth:`PopLinear.manual_ok`)."""
    leaves = _units(net)
    if leaves and type(leaves[0]) is nn.Flatten:
        leaves = leaves[1:]
    if not leaves or len(leaves) % 2 == 0:
        return None
    for i, m in enumerate(leaves):
        if not (isinstance(m, PopLinear) and m.manual_ok() if i % 2 == 0 else type(m) is nn.ReLU):
            return None
    layers = [m for m in leaves if isinstance(m, PopLinear)]
    if any(m.layout != "stacked" for m in layers) or any(list(m.buffers()) for m in net.modules()):
        return None
    own = {id(p) for m in layers for p in m.parameters()}
    if any(id(p) not in own for p in net.parameters()):
        return None
    for a, b in zip(layers, layers[1:]):
        if a.out_features != b.in_features:
            return None
    return layers


def plan(pop: nn.Module, x: Tensor, task: str, *, augment: bool = False) -> ManualMLPStep | None:
    """The manual step for a population, or ``None`` when it does not apply (the trainer then uses autograd).

    It applies to classification (integer labels) without augmentation, for a stacked-layout population whose
    network is ``[Flatten] PopLinear (ReLU PopLinear)*`` with no buffers (no BatchNorm) and no other parameters,
    and whose forward on two training samples equals the network's own (so a custom ``forward`` that uses the
    same modules differently falls back). Layers with a computed weight qualify when they opt in (the layer
    protocol, see the module docstring); the check runs in eval mode, where their weights are deterministic (no
    noise is drawn), and restores every module's mode.

    Args:
        pop: a :class:`~zooscape.train.Population`.
        x: training inputs ``[n, ...]`` (two are used for the check).
        task: ``"classification"`` or ``"regression"``.
        augment: whether the run augments its batches.

    Returns:
        :class:`ManualMLPStep` or ``None``.
    """
    if task != "classification" or augment or getattr(pop, "layout", None) != "stacked" or x.shape[0] == 0:
        return None
    layers = _layers(pop.net)
    if layers is None or layers[0].n != pop.size or x[0].numel() != layers[0].in_features:
        return None
    step = ManualMLPStep(layers)
    probe = x[:2].unsqueeze(0).expand(pop.size, *x[:2].shape).to(layers[0].weight.dtype)
    modes = [(m, m.training) for m in pop.modules()]
    try:  # in eval mode: deterministic weights on both sides, so the probe draws no noise (no random stream moves)
        pop.eval()
        with torch.no_grad():
            want = pop.forward_model_major(probe).transpose(0, 1)  # [N, 2, K]
            got = step.forward(probe, [layer.manual_weight() for layer in layers])[-1].transpose(1, 2)
    finally:
        for m, mode in modes:
            m.train(mode)
    if want.shape != got.shape or not torch.allclose(want, got, rtol=1e-4, atol=1e-5):
        return None
    return step
