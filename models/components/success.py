"""Success predictor: calibrated P(selected | student applies) for student x internship pairs.

A scikit-learn Pipeline (ColumnTransformer -> classifier) over `features.PAIR_FEATURES`.
Candidate algorithms are compared by stratified cross-validation with a randomised
hyper-parameter search; the winner is calibrated with CalibratedClassifierCV (sigmoid, since
positives are few: about 13 % of applications). Protected attributes are not in PAIR_FEATURES,
and `FEATURES` is asserted free of them, so the model cannot see them.

Bundle layout (`save` / `from_bundle`; format in models/bundle/format.py):
- arrays: the feature space (`features.FeatureSpace.arrays()`): `item_*`, every internship's
  columns, and `vocab_skills`, `vocab_sectors`, `vocab_districts`;
- objects: `model` (the calibrated scikit-learn pipeline, a pickle);
- documents: `model` (`algorithm`, `params`, `features` -- checked against FEATURES on load --,
  `base_rate`, `serves_base_rate`, `reference`: each feature's training median, for factors).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RandomizedSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from models.bundle.format import Bundle, BundleRef
from models.bundle.writing import write_bundle
from models.data.schema import PROTECTED_ATTRIBUTES
from models.components.features import PAIR_FEATURES

COMPONENT = "success"
FEATURES = list(PAIR_FEATURES)
assert not set(FEATURES) & set(PROTECTED_ATTRIBUTES), "protected attributes must never be features"


DISTANCE_COLUMN = FEATURES.index("distance_class")
N_DISTANCE_CLASSES = 5
# The pair feature each column of `design_matrix` comes from (the distance class: its one-hot).
DESIGN_FEATURE = np.array([j for j in range(len(FEATURES)) if j != DISTANCE_COLUMN]
                          + [DISTANCE_COLUMN] * N_DISTANCE_CLASSES)
_DISTANCE_CLASSES = np.arange(N_DISTANCE_CLASSES, dtype=np.float32)


def design_matrix(x: np.ndarray) -> np.ndarray:
    """Pair features -> model input: the distance class one-hot instead of its ordinal code.

    Plain numpy rather than a ColumnTransformer: that costs ~10 ms of dispatch per call, which
    dominated serving latency for a few hundred candidates.
    """
    x = np.asarray(x, dtype=np.float32)
    out = np.empty((len(x), len(DESIGN_FEATURE)), dtype=np.float32)
    others = len(FEATURES) - 1  # the other features' columns come first, in order
    out[:, :DISTANCE_COLUMN] = x[:, :DISTANCE_COLUMN]
    out[:, DISTANCE_COLUMN:others] = x[:, DISTANCE_COLUMN + 1:]
    np.equal(x[:, DISTANCE_COLUMN, None], _DISTANCE_CLASSES, out=out[:, others:])  # NaN: no class
    return out


def _pipeline(clf) -> Pipeline:
    return Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                     ("scale", StandardScaler()), ("clf", clf)])


def candidates(seed: int) -> dict[str, tuple[Pipeline, dict]]:
    """Algorithm name -> (pipeline, hyper-parameter distributions for the randomised search)."""
    return {
        "logistic_regression": (
            _pipeline(LogisticRegression(max_iter=2000)),
            {"clf__C": [0.01, 0.1, 1.0, 10.0]},
        ),
        "hist_gradient_boosting": (
            _pipeline(HistGradientBoostingClassifier(random_state=seed)),
            {"clf__learning_rate": [0.03, 0.06, 0.1], "clf__max_leaf_nodes": [7, 15, 31],
             "clf__min_samples_leaf": [20, 50, 100], "clf__l2_regularization": [0.0, 1.0]},
        ),
        "random_forest": (
            _pipeline(RandomForestClassifier(n_estimators=200, n_jobs=-1, random_state=seed)),
            {"clf__max_depth": [6, 10, None], "clf__min_samples_leaf": [5, 20, 50]},
        ),
    }


ALGORITHMS = ("logistic_regression", "hist_gradient_boosting", "random_forest")  # the keys of candidates()


def search(x: np.ndarray, y: np.ndarray, *, folds: int = 3, budget: int = 4, seed: int = 0,
           progress=None, algorithms=None) -> tuple[str, dict, dict]:
    """Cross-validated search over the candidates (all, or the named `algorithms`); returns
    (best name, best params, all results)."""
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    results = {}
    pool = candidates(seed)
    unknown = set(algorithms or ()) - set(pool)
    if unknown:
        raise ValueError(f"unknown success algorithms {sorted(unknown)}; choose from {list(pool)}")
    for name, (pipe, space) in pool.items():
        if algorithms and name not in algorithms:
            continue
        n_options = int(np.prod([len(v) for v in space.values()]))
        rs = RandomizedSearchCV(pipe, space, n_iter=min(budget, n_options), scoring="neg_log_loss", cv=cv,
                                random_state=seed, n_jobs=1)
        with _one_openmp_thread():
            rs.fit(design_matrix(x), y)
        results[name] = {"cv_log_loss": float(-rs.best_score_), "params": rs.best_params_}
        if progress:
            progress(name, results[name])
    best = min(results, key=lambda k: results[k]["cv_log_loss"])
    return best, results[best]["params"], results


class LinearLogit:
    """A sigmoid-calibrated logistic regression pipeline as plain arithmetic.

    impute (medians) -> standardise -> dot product -> sigmoid calibrator: the calibrated log-odds
    are `-(a * (d @ w + c) + b)` with the scaler folded into `w` and `c`. Read from the fitted
    scikit-learn objects, so it is the library's model, evaluated without its per-call dispatch.
    """

    def __init__(self, fill: np.ndarray, weights: np.ndarray, offset: float, a: float, b: float):
        self.fill, self.weights, self.offset, self.a, self.b = fill, weights, offset, a, b

    @classmethod
    def of(cls, calibrated) -> "LinearLogit | None":
        """The arithmetic of `calibrated`, or None when it is not a single sigmoid-calibrated
        imputer -> scaler -> logistic regression pipeline."""
        fitted = getattr(calibrated, "calibrated_classifiers_", None)
        if not fitted or len(fitted) != 1 or fitted[0].method != "sigmoid" or len(fitted[0].calibrators) != 1:
            return None
        pipe = fitted[0].estimator
        steps = getattr(pipe, "named_steps", {})
        if set(steps) != {"impute", "scale", "clf"} or not isinstance(steps["clf"], LogisticRegression):
            return None
        scaler, clf = steps["scale"], steps["clf"]
        mean = scaler.mean_ if scaler.with_mean else np.zeros_like(scaler.scale_)
        coef = clf.coef_[0] / scaler.scale_
        calibrator = fitted[0].calibrators[0]
        return cls(np.nan_to_num(steps["impute"].statistics_.astype(np.float64)), coef.astype(np.float64),
                   float(clf.intercept_[0] - mean @ coef), float(calibrator.a_), float(calibrator.b_))

    def logit(self, design: np.ndarray) -> np.ndarray:
        return -(self.a * (self._filled(design) @ self.weights + self.offset) + self.b)

    def swap_effects(self, design: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """(rows, features): the change in log-odds when each pair feature alone is set to the
        reference pair's value. The log-odds are linear in the design columns, so that is each
        feature's columns' weighted difference to the reference, exactly."""
        terms = -self.a * (self._filled(design) - self._filled(reference)) * self.weights
        out = np.empty((len(terms), len(FEATURES)))
        # Every feature but the distance class has one design column; the class, its one-hot (last).
        out[:, DESIGN_FEATURE[:-N_DISTANCE_CLASSES]] = terms[:, :-N_DISTANCE_CLASSES]
        out[:, DISTANCE_COLUMN] = terms[:, -N_DISTANCE_CLASSES:].sum(axis=1)
        return out

    def _filled(self, design: np.ndarray) -> np.ndarray:
        d = np.asarray(design, dtype=np.float64)
        return np.where(np.isnan(d), self.fill, d)


class SuccessModel:
    def __init__(self, calibrated: CalibratedClassifierCV, algorithm: str, params: dict,
                 reference: np.ndarray, base_rate: float, serves_base_rate: bool = False):
        self.model, self.algorithm, self.params = calibrated, algorithm, params
        # The typical applicant-internship pair (training medians): factors are measured against it.
        self.reference = np.asarray(reference, dtype=np.float32)
        self.base_rate = float(base_rate)
        # Training found the model no better than the base rate beyond noise: it serves the base
        # rate for every pair (and no factors), and says so.
        self.serves_base_rate = bool(serves_base_rate)
        # A logistic regression is served as its arithmetic; other algorithms through the library.
        self.linear = LinearLogit.of(calibrated)
        self._reference_design = design_matrix(self.reference[None, :])

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, algorithm: str, params: dict, *, folds: int = 3,
            seed: int = 0) -> "SuccessModel":
        pipe, _ = candidates(seed)[algorithm]
        pipe.set_params(**params)
        # ensemble=False: the folds only produce out-of-fold scores for the sigmoid; the served
        # model is one pipeline fitted on all rows, a third of the prediction cost of an ensemble.
        calibrated = CalibratedClassifierCV(pipe, method="sigmoid", ensemble=False,
                                            cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
        with _one_openmp_thread():
            calibrated.fit(design_matrix(x), y)
        with warnings.catch_warnings():  # a feature absent from the data (all NaN) has no median: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            reference = np.nanmedian(x, axis=0)
        return cls(calibrated, algorithm, params, reference, float(np.mean(y)))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Calibrated P(selected | applies), one per row of pair features."""
        if self.serves_base_rate:
            return np.full(len(x), self.base_rate, dtype=np.float32)
        if self.linear is not None:
            return expit(self.linear.logit(design_matrix(x))).astype(np.float32)
        return self.model.predict_proba(design_matrix(x))[:, 1].astype(np.float32)

    def _log_odds(self, x: np.ndarray) -> np.ndarray:
        if self.linear is not None:
            return self.linear.logit(design_matrix(x))
        return _logit(self.predict(x))

    def factor_table(self, x: np.ndarray, top: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every row's `top` factors, packed: (counts per row, feature index, value, contribution)
        with row r's factors the next counts[r] entries, strongest first.

        Contribution of feature j = logit(p(x)) - logit(p(x with feature j set to its training
        median)): model-agnostic, exact for the model actually served, one batch per feature.
        Features that do not move the log-odds (|contribution| <= 1e-6) are left out.
        """
        x = np.asarray(x, dtype=np.float32)
        n, width = x.shape
        if self.serves_base_rate:  # nothing moves a constant
            contrib = np.zeros((n, width))
        elif self.linear is not None:
            contrib = self.linear.swap_effects(design_matrix(x), self._reference_design)
        else:  # any model: one batch of rows per feature, each with that feature swapped
            base = self._log_odds(x)
            stacked = np.repeat(x[None, :, :], width, axis=0)  # (features, rows, features)
            stacked[np.arange(width), :, np.arange(width)] = self.reference[:, None]
            swapped = self._log_odds(stacked.reshape(-1, width)).reshape(width, n)
            contrib = (base[None, :] - swapped).T  # (rows, features)
        order = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :top]
        strongest = contrib[np.arange(n)[:, None], order]
        keep = np.abs(strongest) > 1e-6
        rows = np.nonzero(keep)[0]
        features = order[keep]
        return (keep.sum(axis=1), features, x[rows, features].astype(np.float64),
                strongest[keep].astype(np.float64))

    def save(self, root, metadata: dict, space_arrays: dict) -> BundleRef:
        return write_bundle(root, COMPONENT, arrays=space_arrays, objects={"model": self.model},
                            documents={"model": {"algorithm": self.algorithm, "params": _jsonable(self.params),
                                                 "features": FEATURES, "base_rate": self.base_rate,
                                                 "serves_base_rate": self.serves_base_rate,
                                                 "reference": [None if np.isnan(v) else float(v)
                                                               for v in self.reference]}},
                            metadata=metadata, pickled_libraries=("scikit-learn",))

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "SuccessModel":
        doc = bundle.documents["model"]
        if doc["features"] != FEATURES:
            raise ValueError("success bundle was trained on another feature schema; retrain it")
        reference = np.array([np.nan if v is None else v for v in doc["reference"]], dtype=np.float32)
        return cls(bundle.objects["model"], doc["algorithm"], doc["params"], reference, doc["base_rate"],
                   doc.get("serves_base_rate", False))


def _one_openmp_thread():
    # HistGradientBoosting's OpenMP threads busy-wait; on a 2-core machine shared with servers or
    # other jobs that oversubscription made fits ~50x slower. The fits here are small: one thread.
    return threadpool_limits(limits=1, user_api="openmp")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _jsonable(params: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in params.items()}
