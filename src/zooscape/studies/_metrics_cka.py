"""CKA helpers of ``metrics run --metric cka`` (:mod:`zooscape.studies.metrics`): the compared representation
and the value with the run's settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _cka_features(model: Any, x: Any, params: Mapping[str, Any], device: str) -> Any:
    """The representation CKA compares: the model's ``params["layer"]`` output (softmax-ed if asked) ``[n, d]``."""
    import torch

    from zooscape import landscape as ls

    layer = params["layer"]
    feats = ls.layer_features(model, x, [layer], device=device)[layer]
    return torch.softmax(feats, dim=1) if params["output"] == "softmax" else feats


def _cka_value(fa: Any, fb: Any, params: Mapping[str, Any]) -> float:
    """CKA of two representations ``[n, d1]``, ``[n, d2]`` with the run's settings (full or minibatch)."""
    from zooscape import landscape as ls

    bs = params["batch_size"]
    if bs is None:
        return float(ls.cka(fa, fb, kernel=params["kernel"], debiased=params["debiased"],
                            bandwidth=params["bandwidth"]))
    acc = ls.MinibatchCKA(kernel=params["kernel"], bandwidth=params["bandwidth"])
    n = fa.shape[0]
    starts = list(range(0, n, bs))
    if len(starts) > 1 and n - starts[-1] < 4:
        starts.pop()
    for i, st in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else n
        acc.update(fa[st:end], fb[st:end])
    return float(acc.compute()[0, 0])
