"""Model specs: what a configured model is, how it is validated, built and identified.

A spec comes from the ``[models.<key>]`` table of the TOML config::

    [models.default]
    task = "binary"              # binary | multiclass | regression
    pipeline = [
      { estimator = "preprocessing.StandardScaler" },
      { estimator = "linear_model.LogisticRegression", params = { l2 = 0.0 } },
    ]
    metrics = ["accuracy", "logloss"]   # the first one is the primary metric
    seed = 42

Only estimators in the :data:`ESTIMATORS` allow-list can be named, and only with parameters that
a config file can express (numbers, strings, booleans and lists of them): a checkpoint is a
pickle of what :func:`build_model` returns, so everything it may contain is covered by the
contract test. A transformer step may say ``only = "numbers"`` or ``only = "strings"`` to apply
to those features alone and pass the others through unchanged, which is how a pipeline mixes
one-hot encoded strings with scaled numbers.

The spec's :attr:`~ModelSpec.lineage` identifies a *model iteration*: any change to the spec
starts a new lineage, while retrains within one lineage are *data iterations*.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import inspect
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from river import (
    base,
    compose,
    dummy,
    forest,
    linear_model,
    metrics,
    naive_bayes,
    neighbors,
    preprocessing,
    stats,
    tree,
)
from river.tree.hoeffding_tree import HoeffdingTree

from stream_learner.core.events import TASKS
from stream_learner.errors import ConfigError

__all__ = [
    "ESTIMATORS",
    "METRICS",
    "TASKS",
    "ModelSpec",
    "StepSpec",
    "absolute_error",
    "build_model",
    "loss_fn",
    "make_metric",
    "metric_better",
    "metric_needs_proba",
    "zero_one_loss",
]

#: The River estimators a spec may name. Everything here passes the contract test
#: (pickle and deepcopy round-trips, deterministic builds).
ESTIMATORS: dict[str, type] = {
    f"{cls.__module__.split('.')[1]}.{cls.__name__}": cls
    for cls in (
        preprocessing.StandardScaler,
        preprocessing.MinMaxScaler,
        preprocessing.MaxAbsScaler,
        preprocessing.OneHotEncoder,
        linear_model.LogisticRegression,
        linear_model.Perceptron,
        linear_model.PAClassifier,
        linear_model.LinearRegression,
        linear_model.PARegressor,
        tree.HoeffdingTreeClassifier,
        tree.HoeffdingAdaptiveTreeClassifier,
        tree.HoeffdingTreeRegressor,
        tree.HoeffdingAdaptiveTreeRegressor,
        forest.ARFClassifier,
        forest.ARFRegressor,
        forest.AMFClassifier,
        naive_bayes.GaussianNB,
        neighbors.KNNClassifier,
        neighbors.KNNRegressor,
        dummy.PriorClassifier,
    )
}

#: Metric names allowed per task.
METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("accuracy", "balanced_accuracy", "f1", "precision", "recall", "logloss"),
    "multiclass": ("accuracy", "balanced_accuracy", "macro_f1", "crossentropy"),
    "regression": ("mae", "rmse", "r2"),
}

_METRIC_CLASSES: dict[str, type] = {
    "accuracy": metrics.Accuracy,
    "balanced_accuracy": metrics.BalancedAccuracy,
    "f1": metrics.F1,
    "precision": metrics.Precision,
    "recall": metrics.Recall,
    "logloss": metrics.LogLoss,
    "macro_f1": metrics.MacroF1,
    "crossentropy": metrics.CrossEntropy,
    "mae": metrics.MAE,
    "rmse": metrics.RMSE,
    "r2": metrics.R2,
}

_DEFAULT_METRICS = {"binary": ("accuracy",), "multiclass": ("accuracy",), "regression": ("mae",)}
_SPEC_KEYS = ("task", "pipeline", "metrics", "seed")
_STEP_KEYS = ("estimator", "params", "only")
_ONLY = {"numbers": numbers.Number, "strings": str}


def _one_of(choices: Any) -> str:
    return ", ".join(choices)


@dataclass(frozen=True)
class StepSpec:
    """One pipeline step: an allow-listed estimator name and its constructor parameters.

    ``params`` is stored as a tuple of sorted ``(name, value)`` items (lists as tuples) so the
    spec is immutable, hashable and picklable; :attr:`kwargs` gives them back as a dict.
    """

    estimator: str
    params: tuple[tuple[str, Any], ...] = ()
    only: str | None = None

    def __post_init__(self) -> None:
        items = self.params.items() if isinstance(self.params, Mapping) else self.params
        frozen = tuple(
            sorted((k, tuple(v) if isinstance(v, list | tuple) else v) for k, v in items)
        )
        object.__setattr__(self, "params", frozen)

    @property
    def kwargs(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.params}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"estimator": self.estimator, "params": self.kwargs}
        if self.only is not None:
            d["only"] = self.only
        return d


@dataclass(frozen=True)
class ModelSpec:
    """A validated model specification; see the module docstring for the TOML form.

    >>> spec = ModelSpec.from_dict(
    ...     {"task": "regression", "pipeline": [{"estimator": "linear_model.LinearRegression"}]}
    ... )
    >>> spec.metrics, spec.seed, len(spec.lineage)
    (('mae',), 42, 16)
    >>> model = build_model(spec)
    >>> model.learn_one({"f": 1.0}, 2.0)
    >>> model.predict_one({"f": 1.0})
    0.08
    """

    task: str
    pipeline: tuple[StepSpec, ...]
    metrics: tuple[str, ...]
    seed: int = 42
    _lineage: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pipeline", tuple(self.pipeline))
        object.__setattr__(self, "metrics", tuple(self.metrics))

    @classmethod
    def from_dict(cls, d: Mapping, *, where: str = "models.default") -> ModelSpec:
        """Validate a spec table; every error names its key path and, where useful, choices."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: expected a table, got {type(d).__name__}")
        for k in d:
            if k not in _SPEC_KEYS:
                raise ConfigError(f"{where}.{k}: unknown key; accepted: {_one_of(_SPEC_KEYS)}")

        task = d.get("task")
        if not isinstance(task, str) or task not in TASKS:
            raise ConfigError(
                f"{where}.task: {task!r} is not a task; choose one of: {_one_of(TASKS)}"
            )

        seed = d.get("seed", 42)
        if type(seed) is not int or not 0 <= seed < 2**32:
            raise ConfigError(f"{where}.seed: {seed!r} must be an integer in [0, 2**32)")

        pipeline = d.get("pipeline")
        if not isinstance(pipeline, list | tuple) or not pipeline:
            raise ConfigError(f"{where}.pipeline: expected a non-empty list of steps")
        steps = tuple(
            _step(step, f"{where}.pipeline[{i}]", last=i == len(pipeline) - 1, task=task)
            for i, step in enumerate(pipeline)
        )

        names = d.get("metrics", _DEFAULT_METRICS[task])
        if not isinstance(names, list | tuple) or not names:
            raise ConfigError(f"{where}.metrics: expected a non-empty list of metric names")
        for i, name in enumerate(names):
            if name not in METRICS[task]:
                raise ConfigError(
                    f"{where}.metrics[{i}]: {name!r} is not a metric for task {task!r}; "
                    f"choose one of: {_one_of(METRICS[task])}"
                )
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}.metrics: names must be unique, got {list(names)}")

        return cls(task=task, pipeline=steps, metrics=tuple(names), seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """The canonical plain form: ``from_dict(spec.to_dict()) == spec``."""
        return {
            "task": self.task,
            "pipeline": [s.to_dict() for s in self.pipeline],
            "metrics": list(self.metrics),
            "seed": self.seed,
        }

    @property
    def lineage(self) -> str:
        """A stable id of this spec: sha256 of its canonical JSON, first 16 hex characters."""
        if not self._lineage:
            canonical = orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)
            object.__setattr__(self, "_lineage", hashlib.sha256(canonical).hexdigest()[:16])
        return self._lineage

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]


def _step(step: Any, where: str, *, last: bool, task: str) -> StepSpec:
    if not isinstance(step, Mapping):
        raise ConfigError(f"{where}: expected a table with 'estimator' and optional 'params'")
    for k in step:
        if k not in _STEP_KEYS:
            raise ConfigError(f"{where}.{k}: unknown key; accepted: {_one_of(_STEP_KEYS)}")

    name = step.get("estimator")
    if not isinstance(name, str) or name not in ESTIMATORS:
        close = difflib.get_close_matches(str(name), ESTIMATORS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{where}.estimator: unknown estimator {name!r}{hint}; "
            f"choose one of: {_one_of(ESTIMATORS)}"
        )
    cls = ESTIMATORS[name]

    params = step.get("params", {})
    if not isinstance(params, Mapping):
        raise ConfigError(f"{where}.params: expected a table of constructor parameters")
    signature = inspect.signature(cls).parameters
    accepted = [p for p in signature if p != "seed"]
    for pname, value in params.items():
        if pname == "seed" and "seed" in signature:
            raise ConfigError(f"{where}.params.seed: set the seed once, as the spec's 'seed'")
        if pname not in accepted:
            raise ConfigError(
                f"{where}.params.{pname}: unknown parameter for {name}; "
                f"accepted: {_one_of(accepted) or '(none)'}"
            )
        _check_param(value, signature[pname], f"{where}.params.{pname}")

    only = step.get("only")
    if only is not None and (not isinstance(only, str) or only not in _ONLY):
        raise ConfigError(f"{where}.only: {only!r}; choose one of: {_one_of(_ONLY)}")

    spec = StepSpec(name, params, only)
    try:
        estimator = cls(**spec.kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}.params: {name} rejected them: {e}") from None

    if not last:
        if not isinstance(estimator, base.Transformer):
            raise ConfigError(
                f"{where}.estimator: {name} is not a transformer; only the last step may "
                "be a classifier or regressor"
            )
    else:
        if only is not None:
            raise ConfigError(f"{where}.only: only applies to a transformer, not the last step")
        if task == "regression":
            if not isinstance(estimator, base.Regressor):
                raise ConfigError(
                    f"{where}.estimator: {name} is not a regressor (task 'regression')"
                )
        elif not isinstance(estimator, base.Classifier):
            raise ConfigError(f"{where}.estimator: {name} is not a classifier (task {task!r})")
        elif task == "multiclass" and not estimator._multiclass:
            raise ConfigError(
                f"{where}.estimator: {name} handles two classes only; use task 'binary' "
                "or a multiclass classifier"
            )
    return spec


# Scalar types a config file can give, by the names used in River's annotations.
_ANNOTATION_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "None": (type(None),),
    "list": (list, tuple),
}


def _check_param(value: Any, param: inspect.Parameter, where: str) -> None:
    """Reject values of a type the constructor does not take, so a typo fails at startup
    rather than on the first event."""
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if not isinstance(item, str | int | float | bool):
                raise ConfigError(f"{where}[{i}]: expected a number, string or bool")
    elif not (value is None or isinstance(value, str | int | float | bool)):
        raise ConfigError(
            f"{where}: {type(value).__name__} values cannot be configured; "
            "expected a number, string, bool or a list of them"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {value} is not finite")

    ann = param.annotation
    if ann is inspect.Parameter.empty:
        # Unannotated: judge by the default, but never constrain strings (River sometimes
        # defaults to a string where numbers are also accepted, e.g. max_features).
        default = param.default
        if isinstance(default, bool):
            allowed: tuple[type, ...] = (bool,)
            expected = "a bool"
        elif isinstance(default, int | float):
            allowed = (int, float)
            expected = "a number"
        else:
            return
    else:
        allowed = ()
        expected = str(ann)
        for token in str(ann).split("|"):
            allowed += _ANNOTATION_TYPES.get(token.strip().split("[", 1)[0], ())
    # bool is an int in Python, but a bool where a number is expected is a mistake.
    ok = isinstance(value, allowed) and (bool in allowed or not isinstance(value, bool))
    if not ok:
        if not allowed or allowed == (type(None),):
            raise ConfigError(f"{where}: takes a River object, which a config file cannot give")
        raise ConfigError(f"{where}: {value!r} has the wrong type; expected {expected}")


def build_model(spec: ModelSpec) -> compose.Pipeline:
    """A fresh, untrained pipeline for ``spec``.

    Every estimator whose constructor takes ``seed`` gets ``spec.seed``, so two builds fed
    the same events make bit-identical predictions.
    """
    steps = []
    for step in spec.pipeline:
        cls = ESTIMATORS[step.estimator]
        kwargs = step.kwargs
        if "seed" in inspect.signature(cls).parameters:
            kwargs["seed"] = spec.seed
        estimator = cls(**kwargs)
        if step.only is not None:
            chosen = _ONLY[step.only]
            rest = str if chosen is numbers.Number else numbers.Number
            estimator = compose.TransformerUnion(
                compose.SelectType(chosen) | estimator, compose.SelectType(rest)
            )
        steps.append(estimator)
    return compose.Pipeline(*steps)


def quicken(model: compose.Pipeline, grace_period: int) -> bool:
    """Let the Hoeffding trees of ``model`` attempt a split every ``grace_period`` examples
    per leaf (River's default is 200): a fresh tree needs that many per split, and splits
    stay statistically sound (the Hoeffding bound decides, not the grace period). Whether
    ``model`` has such a tree."""
    trees = [step for step in model.steps.values() if isinstance(step, HoeffdingTree)]
    for step in trees:
        step.grace_period = min(step.grace_period, grace_period)
    return bool(trees)


def regrow(model: compose.Pipeline) -> compose.Pipeline | None:
    """A copy of ``model`` whose Hoeffding trees keep their splits and start every leaf
    afresh, or ``None`` when it has no Hoeffding tree.

    After a change, the champion's splits are often still the right questions and only its
    leaves' answers are wrong (a function of the same features changed); a regrown tree
    relearns the answers in a few examples per leaf where a fresh tree must find every split
    again. A leaf starts from its old class distribution scaled to a total weight of one (a
    regression leaf: its mean target, as one example): a classifier's leaf predicts from its
    first event, and one example outweighs what it kept; an adaptive tree's
    alternate subtrees go and its branches' detectors start over. The pipeline's other steps
    (a scaler, say) are copied as they are. The old leaves are not copied at all: they hold
    most of a tree (a splitter per feature), and copying them cost ~100 ms on a grown tree.

    This reads River 0.26's tree internals (``_root``, ``_new_leaf``, a branch's
    ``children``), which is why ``pyproject.toml`` pins River's minor version and
    ``tests/core/test_race.py`` checks a regrown tree's structure."""
    trees = [step for step in model.steps.values() if isinstance(step, HoeffdingTree)]
    if not trees:
        return None
    memo: dict[int, Any] = {}
    priors = []  # per tree: the old leaves' priors, in the order _leaf_slots finds them
    for step in trees:
        branches = _branches(step)
        slots = list(_leaf_slots(step, branches))
        priors.append([_prior(leaf.stats) for _, _, leaf in slots])
        for _, _, leaf in slots:
            memo[id(leaf)] = None  # deepcopy takes None for the leaf and copies none of it
        for branch in branches:
            if getattr(branch, "_alternate_tree", None) is not None:
                memo[id(branch._alternate_tree)] = None
    copied = copy.deepcopy(model, memo)
    new_trees = [step for step in copied.steps.values() if isinstance(step, HoeffdingTree)]
    for step, step_priors in zip(new_trees, priors, strict=True):
        branches = _branches(step)
        if branches:  # each leaf is None here, in the order the original's were found
            slots = _leaf_slots(step, branches)
            for (branch, i, _), prior in zip(slots, step_priors, strict=True):
                branch.children[i] = step._new_leaf(prior, parent=branch)
        elif step_priors:  # a tree of one leaf: its root was left out
            step._root = step._new_leaf(step_priors[0])
        for branch in branches:
            if hasattr(branch, "_alternate_tree"):  # a Hoeffding adaptive tree's branch
                branch._alternate_tree = None
                branch.drift_detector = step.drift_detector.clone()
                for name in ("_mean_error", "_error_tracker"):  # classifier's, regressor's
                    if hasattr(branch, name):
                        setattr(branch, name, type(getattr(branch, name))())
        step._n_active_leaves = len(step_priors)
        step._n_inactive_leaves = 0
    return copied


def _branches(step: HoeffdingTree) -> list:
    """The branches of a tree's main structure, depth first (alternate subtrees excluded;
    a leaf may be ``None``, as in a copy whose leaves were left out)."""
    found = []
    stack = [step._root] if hasattr(step._root, "children") else []
    while stack:
        branch = stack.pop()
        found.append(branch)
        stack.extend(c for c in reversed(branch.children) if hasattr(c, "children"))
    return found


def _leaf_slots(step: HoeffdingTree, branches: list):
    """``(branch, index, leaf)`` for every leaf of a tree's main structure, in a fixed
    order, given its :func:`_branches`; ``branch`` is ``None`` for a tree of one leaf."""
    root = step._root
    if root is not None and not hasattr(root, "children"):
        yield None, 0, root
        return
    for branch in branches:
        for i, child in enumerate(branch.children):
            if not hasattr(child, "children"):
                yield branch, i, child


def _prior(leaf_stats: Any) -> Any:
    """What a regrown leaf starts from: the old leaf's class distribution scaled to a total
    weight of one, or for a regression leaf its mean target as one example (``None`` for an
    empty leaf)."""
    if isinstance(leaf_stats, dict):
        total = sum(leaf_stats.values())
        return {c: w / total for c, w in leaf_stats.items()} if total > 0 else None
    if isinstance(leaf_stats, stats.Var) and leaf_stats.mean.n > 0:
        prior = stats.Var()
        prior.update(leaf_stats.mean.get())
        return prior
    return None


def settle(model: compose.Pipeline, spec: ModelSpec) -> None:
    """Give the Hoeffding trees of ``model`` their ``spec``'s grace period again (undoes
    :func:`quicken`, so that a grown tree costs what the spec's does)."""
    built = build_model(spec).steps.values()
    for step, fresh in zip(model.steps.values(), built, strict=False):
        if isinstance(step, HoeffdingTree) and isinstance(fresh, HoeffdingTree):
            step.grace_period = fresh.grace_period


def make_metric(name: str) -> metrics.base.Metric:
    """A fresh River metric for ``name`` (one of the names in :data:`METRICS`)."""
    try:
        return _METRIC_CLASSES[name]()
    except (KeyError, TypeError):
        raise ConfigError(
            f"metric: unknown metric {name!r}; choose one of: {_one_of(_METRIC_CLASSES)}"
        ) from None


def metric_better(name: str) -> str:
    """``"higher"`` or ``"lower"``: which way the metric improves."""
    return "higher" if make_metric(name).bigger_is_better else "lower"


def metric_needs_proba(name: str) -> bool:
    """True for metrics scored on predicted probabilities (logloss, crossentropy)."""
    return getattr(make_metric(name), "requires_labels", True) is False


def zero_one_loss(y_true: Any, y_pred: Any) -> float:
    """0.0 for a right class, 1.0 for a wrong one (or for no prediction at all)."""
    return 0.0 if y_pred == y_true else 1.0


def absolute_error(y_true: float, y_pred: float | None) -> float:
    """|y_true - y_pred|; a missing prediction counts as 0."""
    return abs(y_true - (y_pred or 0.0))


def loss_fn(task: str):
    """The per-event loss fed to drift detectors: 0/1 error, or absolute error for regression."""
    if task == "regression":
        return absolute_error
    if task in TASKS:
        return zero_one_loss
    raise ConfigError(f"task: unknown task {task!r}; choose one of: {_one_of(TASKS)}")
