"""Phase classification, cell tables and figures on synthetic data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from zooscape.phase import (
    DEFAULT_THRESHOLDS,
    add_log_metrics,
    cell_table,
    classify,
    classify_values,
    plot_phases,
    threshold_settings,
)

# (train_loss, mc of the training loss, cka) per phase, far from every default threshold
_TYPICAL = {
    "I": (1.5, -0.8, 0.5),
    "II": (1.5, 0.6, 0.5),
    "III": (0.01, -0.5, 0.95),
    "IV-A": (0.01, 0.0, 0.6),
    "IV-B": (0.01, -0.01, 0.98),
}


def _table(rows: dict[str, tuple[float, float, float]], std: float = 0.001) -> pd.DataFrame:
    out = []
    for i, (name, (loss, mc, cka)) in enumerate(rows.items()):
        out.append({"cell": i, "name": name, "train_loss_mean": loss, "train_loss_std": std,
                    "curve_mc_loss_train_mean": mc, "curve_mc_loss_train_std": std, "cka_mean": cka,
                    "cka_std": std})
    return pd.DataFrame(out)


def test_each_phase_is_hit():
    table = classify(_table(_TYPICAL))
    assert list(table["phase"]) == list(_TYPICAL)
    assert not table["phase_uncertain"].any()
    assert list(table["phase_of_means"]) == list(_TYPICAL)
    assert all(table["phase_straddles"] == "")


def test_straddling_cells_are_uncertain_not_forced():
    rows = {
        "loss": (0.09, -0.6, 0.5),       # 0.09 +- 0.02 straddles loss_threshold 0.1: I or III
        "mc-low": (0.01, -0.06, 0.95),   # -0.06 +- 0.02 straddles -mc_tol: III or IV-B
        "cka": (0.01, 0.0, 0.89),        # 0.89 +- 0.02 straddles cka_threshold: IV-A or IV-B
        "mc-high": (2.0, 0.01, 0.5),     # 0.01 +- 0.02 straddles 0 at high loss: I or II
    }
    table = classify(_table(rows, std=0.02))
    assert list(table["phase"]) == ["uncertain"] * 4
    assert list(table["phase_candidates"]) == ["I|III", "III|IV-B", "IV-A|IV-B", "I|II"]
    assert list(table["phase_straddles"]) == ["loss", "mc", "cka", "mc"]
    assert list(table["phase_of_means"]) == ["III", "III", "IV-A", "II"]
    # the same means with a tighter spread (k_std) are classified
    tight = classify(_table(rows, std=0.02), {"k_std": 0.1})
    assert list(tight["phase"]) == ["III", "III", "IV-A", "II"]


def test_missing_values_and_sharpness():
    assert classify_values({"loss": (0.01, 0.0), "mc": (0.0, 0.0)})["phase"] == "uncertain"  # CKA unknown
    out = classify_values({"loss": (0.01, math.nan), "mc": (0.0, math.nan), "cka": (0.99, math.nan)})
    assert out["phase"] == "IV-B"  # a missing std counts as no spread
    # sharpness on: low loss but sharp is outside the taxonomy
    t = {"sharpness_threshold": 2.0}
    v = {"loss": (0.01, 0.0), "mc": (0.0, 0.0), "cka": (0.99, 0.0), "sharpness": (3.0, 0.1)}
    assert classify_values(v, t)["phase"] == "unclassified"
    v["sharpness"] = (1.0, 0.1)
    assert classify_values(v, t)["phase"] == "IV-B"
    v["sharpness"] = (2.0, 0.5)
    res = classify_values(v, t)
    assert res["phase"] == "IV-B" and res["straddles"] == ("sharpness",)


def test_threshold_settings_validate():
    assert threshold_settings() == DEFAULT_THRESHOLDS
    with pytest.raises(ValueError, match="unknown threshold setting 'loss'"):
        threshold_settings({"loss": 1})
    with pytest.raises(ValueError, match="'mc_tol' must be >= 0"):
        threshold_settings({"mc_tol": -1})
    with pytest.raises(ValueError, match="'cka_threshold' must be a finite number"):
        threshold_settings({"cka_threshold": "high"})
    with pytest.raises(KeyError, match="'cka_mean'"):
        classify(_table(_TYPICAL).drop(columns=["cka_mean"]))


def _records() -> pd.DataFrame:
    rows = []
    for cell, (width, bs) in enumerate([(2, 8), (2, 64), (8, 8), (8, 64)]):
        for seed in range(3):
            mid = f"c{cell}s{seed}"
            rows.append((cell, width, bs, mid, None, "test_error", 0.5 / width + 0.01 * seed))
            rows.append((cell, width, bs, mid, None, "hessian_trace", 10.0 ** (cell + 1)))
            rows.append((cell, width, bs, mid, None, "hessian_trace_se", 10.0 ** cell))
            rows.append((cell, width, bs, mid, None, "hessian_top_eigenvalue", -100.0))
            rows.append((cell, width, bs, mid, None, "hessian_top_eigenvalue_residual", 1.0))
        rows.append((cell, width, bs, f"c{cell}s0", f"c{cell}s1", "cka", 0.9))
        rows.append((cell, width, bs, f"c{cell}s0", f"c{cell}s2", "cka", 0.7))
    return pd.DataFrame(rows, columns=["cell", "model.width", "training.batch_size", "model_id", "other_id",
                                       "metric", "value"])


def test_cell_table_means_stds_and_logs():
    records = add_log_metrics(_records())
    table = cell_table(records, by=["model.width", "training.batch_size"])
    assert len(table) == 4 and list(table["n_models"]) == [3, 3, 3, 3]
    first = table.iloc[0]
    assert first["test_error_mean"] == pytest.approx(0.26)
    assert first["test_error_std"] == pytest.approx(0.01)
    assert first["cka_mean"] == pytest.approx(0.8) and first["cka_n"] == 2
    assert first["cka_std"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    assert list(table["hessian_log_trace_mean"]) == pytest.approx([1, 2, 3, 4])
    assert first["hessian_log_trace_se_mean"] == pytest.approx(1 / (10 * math.log(10)))
    assert first["hessian_log_top_eigenvalue_mean"] == pytest.approx(2.0)  # log10 |lambda|
    assert first["hessian_log_top_eigenvalue_se_mean"] == pytest.approx(1 / (100 * math.log(10)))
    bad = _records()
    bad.loc[0, "model.width"] = 99
    with pytest.raises(ValueError, match="not constant within a cell"):
        cell_table(bad, by=["model.width"])
    with pytest.raises(KeyError, match="lack column"):
        cell_table(bad.drop(columns=["other_id"]))


def test_plot_phases_writes_every_figure(tmp_path):
    table = cell_table(add_log_metrics(_records()), by=["model.width", "training.batch_size"])
    table["train_loss_mean"] = [1.0, 1.0, 0.01, 0.01]
    table["curve_mc_loss_train_mean"] = [-0.5, 0.5, -0.3, 0.0]
    table["seed_avg_naive_acc_test_delta_mean"] = [-0.2, 0.1, -0.05, 0.0]
    classified = classify(table)
    assert list(classified["phase"]) == ["I", "II", "III", "uncertain"]  # cka 0.8 +- 0.14 straddles 0.9
    written = plot_phases(classified, tmp_path, temperature="training.batch_size", load="model.width")
    assert {"test_error", "cka", "phase", "overview", "seed_avg_naive_acc_test_delta"} <= set(written)
    for path in written.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(KeyError, match="temperature axis column"):
        plot_phases(classified, tmp_path)
