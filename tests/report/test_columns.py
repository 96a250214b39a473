"""Every stored analysis result is a column users can reach: zoo.table(), zoo.pairs(), zoo plot/info, predict."""

import numpy as np

from zooscape.cli import main
from zooscape.zoo import open as open_zoo


def test_analyses_join_the_table(analysed_zoo):
    with open_zoo(analysed_zoo) as zoo:
        table = zoo.table()
        plain = zoo.table(analyses=False)
        rows = zoo.analyses()
        pairs = zoo.pairs()
        names = zoo.metric_names()
    assert len(table) == len(plain) and list(table.columns[: len(plain.columns)]) == list(plain.columns)
    for col in ("hessian_top_eigenvalue", "hessian_trace", "spectra_alpha", "cka", "distance",
                "barrier_loss_test_linear", "curve_mc_loss_test"):
        assert col in table.columns and col in names, col
    last = table[table["epoch"] == 2].set_index("model_id")
    # single-model results: exactly the stored value, at the stored epoch only
    hess = rows[rows["metric"] == "hessian_top_eigenvalue"].set_index("model_id")["value"]
    assert np.array_equal(last.loc[hess.index, "hessian_top_eigenvalue"].to_numpy(), hess.to_numpy())
    assert table.loc[table["epoch"] < 2, "hessian_top_eigenvalue"].isna().all()
    # pairwise results: the mean over the pairs a model belongs to (computed here the slow way)
    bar = rows[rows["metric"] == "barrier_loss_test_linear"]
    for mid in last.index:
        mine = bar[(bar["model_id"] == mid) | (bar["other_id"] == mid)]["value"]
        assert np.isclose(last.loc[mid, "barrier_loss_test_linear"], mine.mean())
    # the companion table: one row per stored pair, with every pairwise metric
    lmc = pairs[pairs["barrier_loss_test_linear"].notna()]
    assert len(lmc) == 6 and (lmc["epoch"] == 2).all()  # 2 cells x 3 seed pairs
    merged = bar.merge(pairs, on=["model_id", "other_id"])
    assert np.array_equal(merged["value"].to_numpy(), merged["barrier_loss_test_linear"].to_numpy())


def test_zoo_plot_of_a_landscape_metric(analysed_zoo, tmp_path, capsys):
    png = tmp_path / "hess.png"
    assert main(["zoo", "plot", str(analysed_zoo), "--x", "training.lr", "--y", "training.seed",
                 "--metric", "hessian_top_eigenvalue", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_zoo_info_metrics(analysed_zoo, capsys):
    assert main(["zoo", "info", str(analysed_zoo), "--metrics", "hessian_top_eigenvalue,cka"]) == 0
    out = capsys.readouterr().out
    assert "hessian_top_eigenvalue_mean" in out and "cka_mean" in out
    assert main(["zoo", "info", str(analysed_zoo), "--metrics", "test_acc,hesian"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown metric 'hesian'; valid names: ")
    assert "hessian_top_eigenvalue" in err and "test_acc" in err


def test_predict_a_landscape_property(analysed_zoo, capsys):
    assert main(["predict", str(analysed_zoo), "--properties", "hessian_top_eigenvalue", "--epochs", "last",
                 "--features", "wstats", "--fractions", "0.5,0.17,0.33"]) == 0
    out = capsys.readouterr().out
    assert "hessian_top_eigenvalue" in out

