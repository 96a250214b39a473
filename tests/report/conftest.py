"""Fixtures of the report tests: small real zoos (one trained and analysed with LMC, curve and landscape results,
one empty) and the browser."""

from pathlib import Path

import pytest
from report_helpers import SPEC, chromium_path, visit, write_spec

from zooscape.cli import main

__all__ = ["SPEC"]


@pytest.fixture(scope="session")
def analysed_zoo(tmp_path_factory) -> Path:
    """A trained zoo with pair barriers, curve results, Hessian, spectra and CKA results."""
    tmp = tmp_path_factory.mktemp("report_zoo")
    out = tmp / "zoo"
    spec = write_spec(tmp)
    assert main(["zoo", "train", str(spec), "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    assert main(["lmc", "pairs", str(out), "--n-points", "3", "--quiet"]) == 0
    assert main(["curve", "pairs", str(out), "--epochs", "1", "--n-points", "3", "--quiet"]) == 0
    hess = ["--set", "n_samples=32", "--set", "num_steps=4", "--set", "num_probes=6", "--set", "max_iter=10"]
    assert main(["metrics", "run", str(out), "--metric", "hessian", *hess, "--quiet"]) == 0
    assert main(["metrics", "run", str(out), "--metric", "spectra", "--quiet"]) == 0
    assert main(["metrics", "run", str(out), "--metric", "cka", "--set", "n_samples=64", "--quiet"]) == 0
    return out


@pytest.fixture(scope="session")
def empty_zoo(tmp_path_factory) -> Path:
    """A zoo whose catalog lists the models of its spec but holds no metrics (as right after training starts)."""
    from zooscape.zoo import load_spec, plan_zoo
    from zooscape.zoo.store import ZooStore

    tmp = tmp_path_factory.mktemp("report_empty")
    spec_path = write_spec(tmp)
    spec = load_spec(spec_path)
    plan = plan_zoo(spec)
    store = ZooStore(tmp / "zoo")
    with store.lock():
        catalog = store.create_or_check(spec_path.read_text(), spec.fingerprint())
        catalog.add_models(plan.configs)
        catalog.close()
    return store.root


@pytest.fixture
def browser_visit():
    """:func:`visit`, after checking that chromium and Playwright are there (fails with the install command)."""
    chromium_path()
    return visit
