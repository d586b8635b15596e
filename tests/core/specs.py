"""Model specs shared by the core's tests."""

from __future__ import annotations

from stream_learner.core.models import ModelSpec

TREE = ModelSpec.from_dict(
    {"task": "binary", "pipeline": [{"estimator": "tree.HoeffdingTreeClassifier"}]}
)
LINEAR = ModelSpec.from_dict(
    {
        "task": "binary",
        "pipeline": [
            {"estimator": "preprocessing.StandardScaler"},
            {"estimator": "linear_model.LogisticRegression"},
        ],
    }
)
