"""`abgate experiments plan` and experiments/plan.py: exact counts, cross-checked against statsmodels and against
the confidence sequence's half-width written out from its formula (not through experiments/stats)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats as sps
from statsmodels.stats.power import NormalIndPower, normal_power_het

from experiments.plan import plan
from experiments.schema import Design
from gateway.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "experiments" / "examples"
GOOD = (EXAMPLES / "finetune-vs-baseline.yaml").read_text()


def seq_power(delta, var_c, var_t, n_c, ratio, alpha, tuning):
    """Power of the last look of the asymptotic confidence sequence, from the formula in sequential.py's doc."""
    se = math.sqrt(var_c / n_c + var_t / (ratio * n_c))
    n = n_c * (1 + ratio)
    log_a = -2 * math.log(alpha)
    rho2 = (log_a + math.log(log_a + 1)) / tuning
    width = se * math.sqrt(n) * math.sqrt(2 * (n * rho2 + 1) / (n * n * rho2) * math.log(math.sqrt(n * rho2 + 1)
                                                                                      / alpha))
    return sps.norm.cdf((delta - width) / se) + sps.norm.cdf((-delta - width) / se)


def test_rate_plan_exact_and_crosschecked():
    design = Design(alpha=0.05, power=0.8, mde=0.02, sequential=True)
    p = plan(design, 0.12, None, 2)
    assert p["fixed_horizon"] == {"per_arm": [290_270, 290_270], "total": 580_540}
    assert p["sequential"]["per_arm"] == [767_619, 767_619]
    assert p["sequential_self_tuned"]["per_arm"] == [555_838, 555_838]
    assert p["mde"] == {"relative": 0.02, "absolute": pytest.approx(0.0024)}
    # statsmodels, the two-tailed normal test with the control and treated rate variances.
    var_c, var_t = 0.12 * 0.88, 0.1224 * 0.8776
    std = math.sqrt(var_c + var_t)

    def sm_power(n):
        return normal_power_het(0.0024, n, 0.05, std_null=std, std_alternative=std)

    n = p["fixed_horizon"]["per_arm"][0]
    assert sm_power(n) >= 0.8 > sm_power(n - 1)
    # the sequential count is the first n whose last look reaches the power, at the design's tuning (5,000)
    n = p["sequential"]["per_arm"][0]
    assert p["sequential_tuning"] == 5000
    assert seq_power(0.0024, var_c, var_t, n, 1, 0.05, 5000) >= 0.8 > seq_power(0.0024, var_c, var_t, n - 1, 1,
                                                                                 0.05, 5000)
    n = p["sequential_self_tuned"]["per_arm"][0]
    assert seq_power(0.0024, var_c, var_t, n, 1, 0.05, 2 * n) >= 0.8
    assert seq_power(0.0024, var_c, var_t, n - 1, 1, 0.05, 2 * (n - 1)) < 0.8


def test_mean_plan_matches_normal_ind_power():
    design = Design(alpha=0.05, power=0.9, mde=0.05)
    p = plan(design, 2.0, 3.0, 2)
    nobs = NormalIndPower().solve_power(effect_size=0.1 / 3.0, alpha=0.05, power=0.9, ratio=1.0,
                                        alternative="two-sided")
    assert p["fixed_horizon"]["per_arm"] == [math.ceil(nobs)] * 2 == [18_914] * 2
    assert p["sequential"]["per_arm"] == [37_748] * 2
    assert p["baseline"] == {"scale": "mean", "mean": 2.0, "sd": 3.0}
    n = p["sequential"]["per_arm"][0]
    assert seq_power(0.1, 9.0, 9.0, n, 1, 0.05, 5000) >= 0.9 > seq_power(0.1, 9.0, 9.0, n - 1, 1, 0.05, 5000)


def test_unequal_weights_and_sample_size_tuning():
    # 1 control : 3 treatment; the design's sample_size tunes the interval at sample_size x arms (as the report).
    design = Design(alpha=0.05, power=0.8, mde=0.1, sample_size=4000)
    p = plan(design, 1.0, 1.0, [1, 3])
    nobs = NormalIndPower().solve_power(effect_size=0.1, alpha=0.05, power=0.8, ratio=3.0, alternative="two-sided")
    control = math.ceil(nobs)
    assert p["fixed_horizon"]["per_arm"] == [control, 3 * control] and p["shares"] == [0.25, 0.75]
    assert p["sequential_tuning"] == 8000
    n = p["sequential"]["per_arm"][0]
    assert seq_power(0.1, 1, 1, n, 3, 0.05, 8000) >= 0.8 > seq_power(0.1, 1, 1, n - 1, 3, 0.05, 8000)
    # three arms: the control's count serves the comparison that needs the most
    three = plan(Design(mde=0.1), 1.0, 1.0, [2, 1, 2])
    worst = math.ceil(NormalIndPower().solve_power(effect_size=0.1, alpha=0.05, power=0.8, ratio=0.5))
    assert three["fixed_horizon"]["per_arm"] == [worst, math.ceil(worst / 2), worst]


def test_detectable_mde_without_mde():
    p = plan(Design(sample_size=20_000), 1.5, 2.0, 2)
    effect = p["detectable_mde"]["fixed_horizon"] * 1.5 / 2.0  # relative -> standardised
    assert NormalIndPower().power(effect, 20_000, 0.05, ratio=1.0) == pytest.approx(0.8, abs=1e-9)
    assert p["detectable_mde"]["fixed_horizon"] == pytest.approx(0.0373544238, rel=1e-8)
    seq = p["detectable_mde"]["sequential"] * 1.5
    assert seq_power(seq, 4, 4, 20_000, 1, 0.05, 40_000) == pytest.approx(0.8, abs=1e-6)


@pytest.mark.parametrize("args, message", [
    ((0.12, None, 1), "at least two arms"),
    ((1.2, None, 2), "strictly between 0 and 1"),
    ((0.99, None, 2), "out of (0, 1)"),
    ((0.0, 1.0, 2), "non-zero"),
    ((1.0, -1.0, 2), "positive"),
])
def test_impossible_inputs_say_what_to_change(args, message):
    with pytest.raises(ValueError, match=re_escape(message)):
        plan(Design(mde=0.02), *args)


def re_escape(text):
    import re
    return re.escape(text)


def test_plan_command(tmp_path, capsys):
    path = str(EXAMPLES / "finetune-vs-baseline.yaml")
    assert main(["experiments", "plan", path, "--baseline-rate", "0.12", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["arms_order"] == ["baseline", "finetuned"] and out["fixed_horizon"]["total"] == 580_540
    assert main(["experiments", "plan", "finetune-vs-baseline", "--experiments", str(EXAMPLES),
                 "--baseline-rate", "0.12"]) == 0
    text = capsys.readouterr().out
    assert "580,540" in text and "<- this design" in text and "relative" in text
    assert main(["experiments", "plan", "matryoshka-256", "--experiments", str(EXAMPLES), "--sd", "2",
                 "--mean", "1.5"]) == 0
    assert "detectable" in capsys.readouterr().out
    # no baseline: exit 2, one line that says what to pass
    assert main(["experiments", "plan", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--baseline-rate P" in err and "--sd S --mean M" in err
    for extra in (["--baseline-rate", "0.1", "--sd", "1"], ["--sd", "1"], ["--baseline-rate", "1.5"],
                  ["--sd", "0", "--mean", "1"], ["--sd", "nan", "--mean", "1"]):
        assert main(["experiments", "plan", path, *extra]) == 2
        assert capsys.readouterr().err.startswith("abgate: error: ")
    assert main(["experiments", "plan", "nope", "--experiments", str(EXAMPLES), "--baseline-rate", "0.1"]) == 2
    assert "known: finetune-vs-baseline, matryoshka-256" in capsys.readouterr().err
    (tmp_path / "p95.yaml").write_text(GOOD.replace("primary: ctr", "primary: latency_p95"))
    assert main(["experiments", "plan", str(tmp_path / "p95.yaml"), "--baseline-rate", "0.1"]) == 2
    assert "quantile" in capsys.readouterr().err
