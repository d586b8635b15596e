from __future__ import annotations

import doctest
import itertools
import pickle

import pytest
from river.datasets import synth

from stream_learner.core import models
from stream_learner.core.models import (
    ESTIMATORS,
    METRICS,
    ModelSpec,
    StepSpec,
    absolute_error,
    build_model,
    loss_fn,
    make_metric,
    metric_better,
    metric_needs_proba,
    zero_one_loss,
)
from stream_learner.errors import ConfigError

GOOD = {
    "task": "binary",
    "pipeline": [
        {"estimator": "preprocessing.StandardScaler"},
        {
            "estimator": "linear_model.LogisticRegression",
            "params": {"l2": 0.0, "intercept_lr": 0.1},
        },
    ],
    "metrics": ["accuracy", "logloss"],
    "seed": 42,
}


def _with(**changes) -> dict:
    return {**GOOD, **changes}


def _last(estimator: str, **step) -> list[dict]:
    return [{"estimator": estimator, **step}]


def test_from_dict_good() -> None:
    spec = ModelSpec.from_dict(GOOD)
    assert spec.task == "binary"
    assert spec.metrics == ("accuracy", "logloss")
    assert spec.primary_metric == "accuracy"
    assert spec.seed == 42
    assert spec.pipeline == (
        StepSpec("preprocessing.StandardScaler", {}),
        StepSpec("linear_model.LogisticRegression", {"intercept_lr": 0.1, "l2": 0.0}),
    )
    assert spec.pipeline[1].params == (("intercept_lr", 0.1), ("l2", 0.0))
    assert spec.pipeline[1].kwargs == {"intercept_lr": 0.1, "l2": 0.0}
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert hash(spec) == hash(ModelSpec.from_dict(GOOD))


def test_defaults() -> None:
    spec = ModelSpec.from_dict(
        {"task": "regression", "pipeline": _last("linear_model.PARegressor")}
    )
    assert spec.metrics == ("mae",)
    assert spec.seed == 42


def test_list_params_are_frozen_and_given_back_as_lists() -> None:
    step = {"estimator": "tree.HoeffdingTreeClassifier", "params": {"nominal_attributes": ["a"]}}
    spec = ModelSpec.from_dict({"task": "binary", "pipeline": [step]})
    assert spec.pipeline[0].params == (("nominal_attributes", ("a",)),)
    model = build_model(spec)
    assert model["HoeffdingTreeClassifier"].nominal_attributes == ["a"]


BAD = [
    (
        _with(pipeline=_last("linear_model.LogisticRegresion")),
        [
            "models.default.pipeline[0].estimator: unknown estimator "
            "'linear_model.LogisticRegresion'",
            "did you mean 'linear_model.LogisticRegression'",
            "choose one of: preprocessing.StandardScaler",
        ],
    ),
    (
        _with(pipeline=_last("linear_model.LogisticRegression", params={"l3": 1.0})),
        [
            "models.default.pipeline[0].params.l3: unknown parameter for "
            "linear_model.LogisticRegression; accepted: optimizer, loss, l2, l1,",
        ],
    ),
    (
        _with(pipeline=_last("linear_model.LogisticRegression", params={"l2": "high"})),
        [
            "models.default.pipeline[0].params.l2: 'high' has the wrong type; expected a number",
        ],
    ),
    (
        _with(pipeline=_last("linear_model.LogisticRegression", params={"l2": True})),
        [
            "pipeline[0].params.l2: True has the wrong type",
        ],
    ),
    (
        _with(pipeline=_last("tree.HoeffdingTreeClassifier", params={"grace_period": 1.5})),
        [
            "pipeline[0].params.grace_period: 1.5 has the wrong type; expected int",
        ],
    ),
    (
        _with(pipeline=_last("linear_model.LogisticRegression", params={"optimizer": "adam"})),
        [
            "pipeline[0].params.optimizer: takes a River object, which a config file cannot give",
        ],
    ),
    (
        _with(pipeline=_last("linear_model.LogisticRegression", params={"l2": {"a": 1}})),
        [
            "pipeline[0].params.l2: dict values cannot be configured",
        ],
    ),
    (
        _with(pipeline=_last("forest.ARFClassifier", params={"seed": 1})),
        [
            "pipeline[0].params.seed: set the seed once, as the spec's 'seed'",
        ],
    ),
    (
        _with(task="ranking"),
        [
            "models.default.task: 'ranking' is not a task; "
            "choose one of: binary, multiclass, regression",
        ],
    ),
    (_with(task=None), ["models.default.task: None is not a task"]),
    (_with(pipeline=[]), ["models.default.pipeline: expected a non-empty list of steps"]),
    (_with(pipeline=["linear_model.LogisticRegression"]), ["models.default.pipeline[0]: expected"]),
    (
        _with(pipeline=[{"estimator": "preprocessing.StandardScaler"}]),
        [
            "models.default.pipeline[0].estimator: "
            "preprocessing.StandardScaler is not a classifier",
        ],
    ),
    (
        _with(pipeline=[{"estimator": "linear_model.LogisticRegression"}] * 2),
        [
            "models.default.pipeline[0].estimator: linear_model.LogisticRegression is not a "
            "transformer",
        ],
    ),
    (
        _with(task="regression", metrics=["mae"]),
        [
            "models.default.pipeline[1].estimator: linear_model.LogisticRegression is not a "
            "regressor",
        ],
    ),
    (
        _with(task="multiclass", metrics=["accuracy"]),
        [
            "pipeline[1].estimator: linear_model.LogisticRegression handles two classes only",
        ],
    ),
    (
        _with(metrics=["mae"]),
        [
            "models.default.metrics[0]: 'mae' is not a metric for task 'binary'; choose one of: "
            "accuracy, balanced_accuracy, f1",
        ],
    ),
    (_with(metrics=[]), ["models.default.metrics: expected a non-empty list"]),
    (_with(metrics=["accuracy", "accuracy"]), ["models.default.metrics: names must be unique"]),
    (_with(seed=-1), ["models.default.seed: -1 must be an integer"]),
    (_with(seed="42"), ["models.default.seed: '42' must be an integer"]),
    (_with(sed=1), ["models.default.sed: unknown key; accepted: task, pipeline, metrics, seed"]),
    (
        _with(pipeline=_last("linear_model.LogisticRegression", parms={})),
        [
            "models.default.pipeline[0].parms: unknown key; accepted: estimator, params, only",
        ],
    ),
    (
        _with(
            pipeline=[
                {"estimator": "preprocessing.OneHotEncoder", "only": "text"},
                GOOD["pipeline"][1],
            ]
        ),
        [
            "models.default.pipeline[0].only: 'text'; choose one of: numbers, strings",
        ],
    ),
    (
        _with(pipeline=_last("linear_model.LogisticRegression", only="numbers")),
        [
            "models.default.pipeline[0].only: only applies to a transformer",
        ],
    ),
]


@pytest.mark.parametrize(("spec", "expected"), BAD, ids=[e[0].split(":")[0] for _, e in BAD])
def test_from_dict_bad(spec: dict, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        ModelSpec.from_dict(spec)
    for fragment in expected:
        assert fragment in str(info.value)


def test_where_prefixes_every_message() -> None:
    with pytest.raises(ConfigError, match=r"^models\.fraud\.task: "):
        ModelSpec.from_dict(_with(task="x"), where="models.fraud")


def test_lineage_is_stable_under_key_order() -> None:
    reordered = {
        "seed": 42,
        "metrics": ["accuracy", "logloss"],
        "pipeline": [
            {"estimator": "preprocessing.StandardScaler"},
            {
                "params": {"intercept_lr": 0.1, "l2": 0.0},
                "estimator": "linear_model.LogisticRegression",
            },
        ],
        "task": "binary",
    }
    lineage = ModelSpec.from_dict(GOOD).lineage
    assert len(lineage) == 16 and int(lineage, 16) >= 0
    assert ModelSpec.from_dict(reordered).lineage == lineage
    assert pickle.loads(pickle.dumps(ModelSpec.from_dict(GOOD))).lineage == lineage


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 43},
        {"metrics": ["logloss", "accuracy"]},
        {"pipeline": [GOOD["pipeline"][0], {**GOOD["pipeline"][1], "params": {"l2": 0.1}}]},
        {"pipeline": [{"estimator": "preprocessing.MinMaxScaler"}, GOOD["pipeline"][1]]},
        {"pipeline": [{**GOOD["pipeline"][0], "only": "numbers"}, GOOD["pipeline"][1]]},
    ],
)
def test_lineage_changes_with_the_spec(change: dict) -> None:
    assert ModelSpec.from_dict(_with(**change)).lineage != ModelSpec.from_dict(GOOD).lineage


def _sea_predictions(spec: ModelSpec, n: int = 2000) -> list:
    model = build_model(spec)
    out = []
    for x, y in itertools.islice(synth.SEA(seed=1), n):
        x = {f"f{k}": v for k, v in x.items()}
        out.append((model.predict_one(x), model.predict_proba_one(x)))
        model.learn_one(x, y)
    return out


def test_build_model_is_deterministic_and_uses_the_seed() -> None:
    arf = {"estimator": "forest.ARFClassifier", "params": {"n_models": 3}}
    spec = ModelSpec.from_dict({"task": "binary", "pipeline": [arf], "seed": 1})
    first = _sea_predictions(spec)
    assert _sea_predictions(spec) == first
    assert build_model(spec)["ARFClassifier"].seed == 1
    other_seed = ModelSpec.from_dict({"task": "binary", "pipeline": [arf], "seed": 2})
    assert _sea_predictions(other_seed) != first


def test_build_model_returns_a_fresh_pipeline() -> None:
    spec = ModelSpec.from_dict(GOOD)
    a, b = build_model(spec), build_model(spec)
    assert a is not b and a["LogisticRegression"] is not b["LogisticRegression"]
    assert (
        a["LogisticRegression"].l2 == 0.0
        and a["LogisticRegression"].intercept_lr.learning_rate == 0.1
    )


def test_only_applies_a_step_to_one_kind_of_feature() -> None:
    spec = ModelSpec.from_dict(
        {
            "task": "binary",
            "pipeline": [
                {"estimator": "preprocessing.OneHotEncoder", "only": "strings"},
                {"estimator": "linear_model.LogisticRegression"},
            ],
        }
    )
    model = build_model(spec)
    x = {"amount": 3.5, "city": "Lyon", "vip": True}
    model.learn_one(x, True)
    encoder = model.steps[next(iter(model.steps))]
    assert encoder.transform_one(x) == {"city_Lyon": 1, "amount": 3.5, "vip": True}


def test_metric_helpers() -> None:
    for task, names in METRICS.items():
        for name in names:
            assert metric_better(name) in ("higher", "lower"), (task, name)
            assert make_metric(name) is not make_metric(name)
    assert metric_better("accuracy") == "higher"
    assert metric_better("logloss") == "lower"
    assert metric_better("mae") == "lower"
    assert metric_better("r2") == "higher"
    assert metric_needs_proba("logloss") and metric_needs_proba("crossentropy")
    assert not metric_needs_proba("accuracy") and not metric_needs_proba("mae")
    with pytest.raises(ConfigError, match="unknown metric 'auc'; choose one of: accuracy"):
        make_metric("auc")


def test_loss_fn() -> None:
    assert loss_fn("binary") is zero_one_loss and loss_fn("multiclass") is zero_one_loss
    assert loss_fn("regression") is absolute_error
    assert zero_one_loss(True, True) == 0.0
    assert zero_one_loss(1, True) == 0.0
    assert zero_one_loss("a", "b") == 1.0
    assert zero_one_loss("a", None) == 1.0
    assert absolute_error(3.0, 1.5) == 1.5
    assert absolute_error(-2.0, None) == 2.0
    assert pickle.loads(pickle.dumps(loss_fn("regression"))) is absolute_error
    with pytest.raises(ConfigError, match="task: unknown task 'x'"):
        loss_fn("x")


def test_estimators_allow_list() -> None:
    required = {
        "preprocessing.StandardScaler",
        "preprocessing.MinMaxScaler",
        "preprocessing.OneHotEncoder",
        "linear_model.LogisticRegression",
        "linear_model.LinearRegression",
        "linear_model.PARegressor",
        "linear_model.Perceptron",
        "tree.HoeffdingTreeClassifier",
        "tree.HoeffdingAdaptiveTreeClassifier",
        "tree.HoeffdingTreeRegressor",
        "forest.ARFClassifier",
        "forest.ARFRegressor",
        "naive_bayes.GaussianNB",
        "neighbors.KNNClassifier",
    }
    assert required <= set(ESTIMATORS)
    for name, cls in ESTIMATORS.items():
        module, _, cls_name = name.partition(".")
        assert cls.__name__ == cls_name and cls.__module__.startswith(f"river.{module}")


def test_direct_construction_is_normalised() -> None:
    spec = ModelSpec(
        task="binary",
        pipeline=[StepSpec("linear_model.LogisticRegression", {"l2": 0.0})],  # type: ignore[arg-type]
        metrics=["accuracy"],  # type: ignore[arg-type]
    )
    assert spec == ModelSpec.from_dict(
        {"task": "binary", "pipeline": _last("linear_model.LogisticRegression", params={"l2": 0.0})}
    )
    assert hash(spec) == hash(ModelSpec.from_dict(spec.to_dict()))


def test_doctests() -> None:
    result = doctest.testmod(models, raise_on_error=False)
    assert result.attempted >= 4 and result.failed == 0
