"""What the Model Zoos CNNs (CNN-s, CNN-l) share: layers kept in one ``module_list`` with the reference's
indices, so that Model Zoos checkpoints (``module_list.{i}.weight``) load directly."""

from __future__ import annotations

from torch import Tensor, nn


class ModuleListCNN(nn.Module):
    """Base of :class:`~zooscape.models.cnn_s.CNNSmall` and :class:`~zooscape.models.cnn_l.CNNLarge`: subclasses
    set ``self.module_list`` (an ``nn.Sequential``)."""

    module_list: nn.Sequential

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of ``x`` ``[B, C, H, W]``."""
        return self.module_list(x)
