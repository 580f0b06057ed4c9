"""One call that analyses a whole experiment from per-arm sufficient statistics.

`analyze()` runs, for every metric and every non-control arm: the fixed-horizon test suited to the metric's
kind, the sequential test when asked, the Bayesian probability to beat control, the achieved MDE; then the
multiple-testing correction across all comparisons, and the SRM check on units per arm. It never raises on
data: problems come back as error codes inside the results. Used by `abgate stats` and by the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from experiments.stats import correction
from experiments.stats.bayesian import probability_to_beat_control
from experiments.stats.cuped import cuped_adjust, cuped_test
from experiments.stats.frequentist import proportion_z_test, welch_t_test, z_test
from experiments.stats.power import achieved_mde
from experiments.stats.results import BayesianResult, ErrorCode, LiftResult, SrmResult, failed_lift
from experiments.stats.sequential import DEFAULT_TUNING, sequential_test
from experiments.stats.srm import SRM_THRESHOLD, srm_check
from experiments.stats.statistics import CupedStatistic, Proportion, RatioStatistic, SampleMean

KINDS = {"mean": SampleMean, "proportion": Proportion, "ratio": RatioStatistic, "cuped": CupedStatistic}
# The fixed-horizon test per kind: t for means of small samples, z where the variance is itself
# approximate (ratio: delta method) or a known function of the mean (proportion).
FIXED_TESTS = {"mean": welch_t_test, "proportion": proportion_z_test, "ratio": z_test}


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str                    # mean | proportion | ratio | cuped
    relative: bool = True        # lift as treatment/control - 1 (True) or treatment - control
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise ValueError(f"unknown metric kind {self.kind!r}; use one of {sorted(KINDS)}")


@dataclass(frozen=True)
class AnalysisSettings:
    alpha: float = 0.05
    sequential: bool = False
    tuning: float = DEFAULT_TUNING          # sequential: total units at which the interval is tightest
    correction: str = "holm"                # holm | bh | none, across all metrics x arms
    power: float = 0.8                      # for the achieved MDE
    srm_threshold: float = SRM_THRESHOLD

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")
        if not isinstance(self.correction, str) or self.correction not in correction.METHODS:
            raise ValueError(f"unknown correction {self.correction!r}; use one of {sorted(correction.METHODS)}")
        if not (isinstance(self.tuning, (int, float)) and math.isfinite(self.tuning) and self.tuning > 0):
            raise ValueError(f"tuning must be a positive number of units, got {self.tuning!r}")
        if not self.alpha < self.power < 1:
            raise ValueError(f"power must be in (alpha, 1) = ({self.alpha}, 1), got {self.power!r}")
        if not 0 < self.srm_threshold < 1:
            raise ValueError(f"srm_threshold must be in (0, 1), got {self.srm_threshold!r}")


@dataclass(frozen=True)
class Comparison:
    metric: str
    kind: str
    arm: str
    control: str
    fixed: LiftResult
    sequential: LiftResult | None = None
    bayesian: BayesianResult | None = None
    adjusted_p_value: float | None = None
    achieved_mde: float | None = None       # on the lift's scale, at the settings' alpha and power
    cuped_theta: float | None = None
    higher_is_better: bool = True

    @property
    def decision(self) -> LiftResult:
        """The result a verdict should use: the sequential one when the experiment is analysed sequentially."""
        return self.sequential or self.fixed

    @property
    def precise(self) -> bool | None:
        """Whether both arms are precise enough to trust the decision (precision.py); None without a result.
        A report shows an imprecise comparison as "insufficient data" with decision.precision_reason."""
        return self.decision.precise

    @property
    def significant(self) -> bool | None:
        p = self.adjusted_p_value
        return None if p is None else p < self.decision.alpha

    def to_dict(self) -> dict:
        return {
            "metric": self.metric, "kind": self.kind, "arm": self.arm, "control": self.control,
            "higher_is_better": self.higher_is_better, "decision_method": self.decision.method,
            "precise": self.decision.precise, "units_needed": self.decision.units_needed,
            "adjusted_p_value": self.adjusted_p_value, "significant": self.significant,
            "achieved_mde": self.achieved_mde, "cuped_theta": self.cuped_theta,
            "fixed": self.fixed.to_dict(), "sequential": self.sequential and self.sequential.to_dict(),
            "bayesian": self.bayesian and self.bayesian.to_dict(),
        }


@dataclass(frozen=True)
class ExperimentAnalysis:
    control: str
    arms: list[str]
    settings: AnalysisSettings
    comparisons: list[Comparison] = field(default_factory=list)
    srm: SrmResult | None = None

    def to_dict(self) -> dict:
        return {"control": self.control, "arms": self.arms, "settings": vars(self.settings),
                "srm": self.srm and self.srm.to_dict(), "comparisons": [c.to_dict() for c in self.comparisons]}


def _compare(spec: MetricSpec, arm: str, control_name: str, control, treatment, settings: AnalysisSettings) -> Comparison:
    base = dict(metric=spec.name, kind=spec.kind, arm=arm, control=control_name,
                higher_is_better=spec.higher_is_better)
    relative, alpha = spec.relative, settings.alpha
    if control is None or treatment is None:
        missing = control_name if control is None else arm
        failed = failed_lift("missing", relative, alpha, ErrorCode.MISSING_ARM,
                             f"Metric {spec.name!r} has no statistics for arm {missing!r}.")
        return Comparison(fixed=failed, sequential=failed if settings.sequential else None, **base)
    theta = None
    if spec.kind == "cuped":
        fixed = cuped_test(control, treatment, relative=relative, alpha=alpha)
        sequential = (cuped_test(control, treatment, relative=relative, alpha=alpha, test="sequential",
                                 tuning=settings.tuning) if settings.sequential else None)
        if control.problem() or treatment.problem():
            bayesian = BayesianResult(relative=relative, error=fixed.error, reason=fixed.reason)
            return Comparison(fixed=fixed, sequential=sequential, bayesian=bayesian, **base)
        adjustment = cuped_adjust(control, treatment)
        control = adjustment.control or adjustment.plain_control
        treatment = adjustment.treatment or adjustment.plain_treatment
        theta = adjustment.theta[0] if "pre_value" in adjustment.covariates else 0.0
    else:
        fixed = FIXED_TESTS[spec.kind](control, treatment, relative=relative, alpha=alpha)
        sequential = (sequential_test(control, treatment, relative=relative, alpha=alpha, tuning=settings.tuning)
                      if settings.sequential else None)
    bayesian = probability_to_beat_control(control, treatment, relative=relative,
                                           higher_is_better=spec.higher_is_better, credible=1 - alpha)
    mde = achieved_mde(fixed.standard_error, alpha=alpha, power_target=settings.power) if fixed.ok else None
    return Comparison(fixed=fixed, sequential=sequential, bayesian=bayesian, achieved_mde=mde,
                      cuped_theta=theta, **base)


def analyze(control: str, metrics: Mapping[str, Mapping[str, object]], specs: Mapping[str, MetricSpec], *,
            units: Mapping[str, int] | None = None, weights: Mapping[str, float] | None = None,
            settings: AnalysisSettings = AnalysisSettings()) -> ExperimentAnalysis:
    """metrics: {metric: {arm: statistic}}; specs: {metric: MetricSpec}; units/weights feed the SRM check."""
    arms: list[str] = []
    for source in (weights or {}, units or {}, *metrics.values()):
        arms += [arm for arm in source if arm not in arms]
    if control not in arms:
        arms.insert(0, control)
    comparisons = [
        _compare(specs[name], arm, control, per_arm.get(control), per_arm.get(arm), settings)
        for name, per_arm in metrics.items() for arm in arms if arm != control
    ]
    adjusted = correction.adjust([c.decision.p_value for c in comparisons], settings.correction)
    comparisons = [replace(c, adjusted_p_value=p) for c, p in zip(comparisons, adjusted)]
    srm = None
    if units is not None and weights is not None:
        srm = srm_check(units, weights, threshold=settings.srm_threshold)
    return ExperimentAnalysis(control=control, arms=arms, settings=settings, comparisons=comparisons, srm=srm)
