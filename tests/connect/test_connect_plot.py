"""Instability plot: one line per k2, barrier against k1 (error in percentage points)."""

import pytest
import torch
from matplotlib.figure import Figure

from zooscape.connect import linear_path
from zooscape.connect.plot import plot_instability, plot_path
from zooscape.connect.spawn import barrier_table

RECORDS = [
    {"k1": k1, "k2": k2, "replicate": r, "barrier_error_test_linear": 0.01 * (k2 - k1) + 0.01 * r}
    for k1 in (0, 1, 3)
    for k2 in (4, 6)
    for r in (0, 1)
]


def test_barrier_table_averages_replicates():
    table = barrier_table(RECORDS, "error", "test", "linear")
    assert list(table) == [4, 6]
    assert table[4][1] == pytest.approx(0.01 * 3 + 0.005)
    with pytest.raises(KeyError, match="barrier_loss_test_linear"):
        barrier_table(RECORDS, "loss", "test", "linear")


def test_plot_instability_lines():
    fig = plot_instability(RECORDS, metric="error")
    assert isinstance(fig, Figure)
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("k2")]
    assert [ln.get_label() for ln in lines] == ["k2 = 4", "k2 = 6"]
    assert list(lines[0].get_xdata()) == [0, 1, 3]
    assert list(lines[1].get_ydata()) == pytest.approx([100 * (0.06 + 0.005), 100 * (0.05 + 0.005), 100 * 0.035])


def test_plot_path(mlp_pair, mlp_data):
    path = linear_path(*mlp_pair, mlp_data, n_points=3)
    fig = plot_path(path, "error")
    ys = {ln.get_label(): list(ln.get_ydata()) for ln in fig.axes[0].get_lines()}
    assert ys["test"] == pytest.approx(path.error["test"].tolist())
    reg = {"train": (torch.randn(5, 6), torch.randn(5, 3)), "test": (torch.randn(4, 6), torch.randn(4, 3))}
    with pytest.raises(ValueError, match="error"):
        plot_path(linear_path(*mlp_pair, reg, n_points=3), "error")
