"""Fixtures for zooscape.connect tests."""

import pytest
from connect_helpers import classification_data, make_cnn, make_mlp, perturb_bn_stats


@pytest.fixture
def mlp_pair():
    return perturb_bn_stats(make_mlp(0, dropout=0.3), 1), perturb_bn_stats(make_mlp(1, dropout=0.3), 2)


@pytest.fixture
def mlp_data():
    return classification_data(0, (6,), 3)


@pytest.fixture
def cnn_pair():
    return perturb_bn_stats(make_cnn(3), 3), perturb_bn_stats(make_cnn(4), 4)


@pytest.fixture
def cnn_data():
    return classification_data(1, (1, 6, 6), 4)
