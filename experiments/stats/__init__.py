"""The statistics engine: pure maths over per-arm sufficient statistics (no I/O, no ClickHouse).

API for callers (experiments/metrics.py produces the statistics, experiments/report.py reads the results)
---------------------------------------------------------------------------------------------------------
Sufficient statistics, one per arm and metric (statistics.py; n = randomisation units):

    SampleMean(n, sum, sum_squares)                                  per-unit mean, e.g. clicks per search
    Proportion(n, successes)                                         0/1 per unit, e.g. searched-and-clicked
    RatioStatistic(n, m_sum, m_sum_squares, d_sum, d_sum_squares, md_sum)   CTR = clicks / impressions
    CupedStatistic(n, y_sum, y_sum_squares, x_sum, x_sum_squares, xy_sum)  y with pre-period covariate x
    Estimate(n, estimate, unit_variance)                             anything already reduced

Whole experiment in one call (analysis.py) -- what the report and `abgate stats` use:

    analysis = analyze(control="baseline",
                       metrics={"ctr": {"baseline": RatioStatistic(...), "finetuned": RatioStatistic(...)}},
                       specs={"ctr": MetricSpec("ctr", "ratio", relative=True)},
                       units={"baseline": 10_120, "finetuned": 9_880}, weights={"baseline": 50, "finetuned": 50},
                       settings=AnalysisSettings(alpha=0.05, sequential=True, tuning=20_000, correction="holm"))
    analysis.srm.alert                 # True: withhold the verdict (p < 0.001)
    for c in analysis.comparisons:     # one per metric x non-control arm
        c.decision                     # LiftResult: sequential when settings.sequential else fixed-horizon
        c.significant                  # adjusted p < alpha; None when the test could not run
        c.decision.error, .reason      # ErrorCode + sentence instead of numbers for impossible inputs
        c.precise                      # False: show "insufficient data" + c.decision.precision_reason,
                                       # c.decision.units_needed (more units per arm), not a verdict
    analysis.to_dict()                 # JSON-ready (no NaN anywhere: missing numbers are None)

Single methods, each returning a frozen result (results.py) and never raising on data:

    welch_t_test / z_test / proportion_z_test(control, treatment, relative=False, alpha=0.05) -> LiftResult
    sequential_test(control, treatment, relative=False, alpha=0.05, tuning=5000)          -> LiftResult
    cuped_test(control, treatment, relative=False, alpha=0.05, test="welch_t")            -> LiftResult
    probability_to_beat_control(control, treatment, relative=False)                        -> BayesianResult
    srm_check(units_per_arm, weights_per_arm, threshold=0.001)                             -> SrmResult
    holm(p_values), benjamini_hochberg(p_values)                                 -> adjusted p-values
    power(...), sample_size_mean(...), sample_size_proportion(...), mde_mean(...), mde_proportion(...)

Relative lifts take their p-value from the absolute difference (same null hypothesis) and their interval from
Fieller's method, so the interval excludes 0 exactly when p < alpha (frequentist.py explains why).
For a cumulative-lift chart, call sequential_test on the cumulative statistics of each day: every day's
interval is valid at once (see sequential.py for the method, formula and reference). Details and the JSON
input format of `abgate stats`: docs/statistics.md.
"""

from experiments.stats.analysis import Comparison, ExperimentAnalysis, MetricSpec, AnalysisSettings, analyze
from experiments.stats.bayesian import probability_to_beat_control
from experiments.stats.correction import benjamini_hochberg, holm
from experiments.stats.cuped import cuped_adjust, cuped_test
from experiments.stats.frequentist import proportion_z_test, welch_t_test, z_test
from experiments.stats.power import mde_mean, mde_proportion, power, sample_size_mean, sample_size_proportion
from experiments.stats.results import BayesianResult, ErrorCode, LiftResult, SrmResult
from experiments.stats.sequential import sequential_test
from experiments.stats.srm import srm_check
from experiments.stats.statistics import CupedStatistic, Estimate, Proportion, RatioStatistic, SampleMean

__all__ = [
    "BayesianResult", "Comparison", "CupedStatistic", "ErrorCode", "Estimate", "ExperimentAnalysis", "LiftResult",
    "MetricSpec", "Proportion", "RatioStatistic", "SampleMean", "AnalysisSettings", "SrmResult", "analyze",
    "benjamini_hochberg", "cuped_adjust", "cuped_test", "holm", "mde_mean", "mde_proportion", "power",
    "probability_to_beat_control", "proportion_z_test", "sample_size_mean", "sample_size_proportion",
    "sequential_test", "srm_check", "welch_t_test", "z_test",
]
