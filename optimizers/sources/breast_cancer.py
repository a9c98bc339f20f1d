"""The built-in tabular example ``breast-cancer``: scikit-learn's Wisconsin breast cancer data
(569 rows x 30 features, shipped inside scikit-learn, no download), a StandardScaler +
GradientBoostingClassifier pipeline trained when the source is loaded (about a second).

It is trained on the training split of :func:`optimizers.tabular.data.split`; the held-out
rows and their labels are its default validation data, and the whole data set is its default
``--train-data``, which feature selection splits the same way.
"""

from __future__ import annotations

import numpy as np

from serving.repository import Source

from ..tabular.data import split
from .base import SourceModel
from .tabular import tabular_source


def dataset() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return data.data.astype(np.float64), data.target.astype(np.int64), list(data.feature_names)


def build_estimator():
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()),
                     ("model", GradientBoostingClassifier(random_state=0))])


def load(name: str = "breast-cancer") -> SourceModel:
    x, y, features = dataset()
    tr, ho = split(y)
    estimator = build_estimator().fit(x[tr], y[tr])
    return tabular_source(
        estimator, name=name, where="the built-in 'breast-cancer'",
        source=Source(kind="builtin", ref="breast-cancer"),
        feature_names=features, default_validation=(x[ho], y[ho]), default_train=(x, y),
    )
