"""The synthetic patient population: who the patients are and how their risks arise.

The model is a small causal chain, calibrated to published adult-population
figures (``data/README.md`` lists them with sources): demographics and
lifestyle, then BMI, then two logistic risk models for diabetes and
hypertension, then laboratory values and blood pressure drawn given the
outcome. Drawing the measurements *after* the outcome is what makes the
outcomes learnable from the features, as they are in real records.

Hospitals differ through :class:`SiteEffects`: case mix (age, sex), outcome
prevalence, and measurement calibration, each scaled by the federation's
heterogeneity so that ``heterogeneity=0`` gives identically distributed sites.

The *incident* outcomes (``diabetes_5y``, ``hypertension_5y``) run the other
way: they are drawn *from* the baseline measurements through risk models shaped
like published incidence scores (FINDRISC, the Framingham Offspring diabetes
score, the Framingham hypertension score), so no feature is a consequence of
them and the best achievable AUC is about 0.8 rather than near 1. They are
defined only for patients free of the condition at baseline (``NaN`` for the
others). :class:`IncidenceEffects` lets hospitals differ in incidence and in
how strongly BMI and blood pressure act, which local-only models can overfit
and a pooled model averages away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEX = ("F", "M")
SMOKING = ("never", "former", "current")
ACTIVITY = ("low", "moderate", "high")
YES_NO = ("no", "yes")

#: Intercepts of the two risk models, solved so that the pooled IID population
#: has about 12 % diabetes and 38 % hypertension (see data/README.md).
DIABETES_INTERCEPT = -3.21
HYPERTENSION_INTERCEPT = -1.03
#: Intercepts of the two 5-year incidence models, solved so that about 9 % of
#: patients free of diabetes develop it and about 21 % of patients free of
#: hypertension develop it within 5 years (IID population; see data/README.md).
DIABETES_5Y_INTERCEPT = -3.05
HYPERTENSION_5Y_INTERCEPT = -0.9
#: Incident outcome -> the baseline outcome its patients must be free of.
INCIDENT = {"diabetes_5y": "diabetes", "hypertension_5y": "hypertension"}

_LOG = np.log


@dataclass(frozen=True)
class SiteEffects:
    """Per-hospital deviations from the reference population (one entry per hospital)."""

    age_tilt: np.ndarray  # shifts the age distribution: > 0 older patients
    female_fraction: np.ndarray
    diabetes_shift: np.ndarray  # added to the diabetes log-odds
    hypertension_shift: np.ndarray  # added to the hypertension log-odds
    sbp_offset: np.ndarray  # blood-pressure device calibration, mmHg
    dbp_offset: np.ndarray
    glucose_factor: np.ndarray  # glucose analyser calibration, multiplicative
    hba1c_offset: np.ndarray  # HbA1c assay offset, percentage points


@dataclass(frozen=True)
class IncidenceEffects:
    """Per-hospital deviations of the 5-year incidence models (one entry per hospital)."""

    diabetes_5y_shift: np.ndarray  # added to the incident-diabetes log-odds
    hypertension_5y_shift: np.ndarray
    bmi_slope: np.ndarray  # added to the log odds ratio per 5 kg/m2 of incident diabetes
    sbp_slope: np.ndarray  # added to the log odds ratio per 10 mmHg of incident hypertension


def draw_incidence_effects(
    rng: np.random.Generator, sites: SiteEffects, heterogeneity: float
) -> IncidenceEffects:
    """Each hospital's incidence deviations; all exactly zero when ``heterogeneity`` is 0.

    Sites with more prevalent disease also see more new cases (half of their
    prevalence shift carries over), and the effect of BMI and of blood pressure
    varies between sites as it does between populations (for example by
    ancestry mix), so one pooled model fits no site exactly.
    """
    n = len(sites.diabetes_shift)
    h = float(heterogeneity)
    return IncidenceEffects(
        diabetes_5y_shift=0.5 * sites.diabetes_shift + h * 0.4 * rng.standard_normal(n),
        hypertension_5y_shift=0.5 * sites.hypertension_shift + h * 0.4 * rng.standard_normal(n),
        bmi_slope=h * 0.25 * rng.standard_normal(n),
        sbp_slope=h * 0.2 * rng.standard_normal(n),
    )


def draw_site_effects(
    rng: np.random.Generator, referral: np.ndarray, heterogeneity: float
) -> SiteEffects:
    """Draw each hospital's deviations; all are exactly zero when ``heterogeneity`` is 0.

    ``referral`` marks large referral centres, which see an older and sicker
    case mix than community sites.
    """
    n = len(referral)
    h = float(heterogeneity)
    referral = referral.astype(float)
    case_mix = rng.standard_normal(n)  # shared: sicker sites are sicker in both outcomes
    return SiteEffects(
        age_tilt=h * (0.35 * rng.standard_normal(n) + 0.25 * referral),
        female_fraction=np.clip(0.51 + h * 0.08 * rng.standard_normal(n), 0.2, 0.8),
        diabetes_shift=h * (0.35 * case_mix + 0.35 * rng.standard_normal(n) + 0.3 * referral),
        hypertension_shift=h * (0.3 * case_mix + 0.3 * rng.standard_normal(n) + 0.3 * referral),
        sbp_offset=h * 5.0 * rng.standard_normal(n),
        dbp_offset=h * 3.0 * rng.standard_normal(n),
        glucose_factor=1.0 + h * 0.05 * rng.standard_normal(n),
        hba1c_offset=h * 0.2 * rng.standard_normal(n),
    )


def draw_patients(
    rng: np.random.Generator,
    sites: SiteEffects,
    hospital: np.ndarray,
    incidence: tuple[np.random.Generator, IncidenceEffects] | None = None,
) -> dict[str, np.ndarray]:
    """Draw one patient per entry of ``hospital`` (an index into ``sites``).

    Returns numeric columns as float arrays and categorical columns as integer
    codes into :data:`SEX`, :data:`SMOKING`, :data:`ACTIVITY` and :data:`YES_NO`;
    ``diabetes`` and ``hypertension`` are 0/1 ``int8`` arrays.

    With ``incidence`` (a generator of its own and the sites' incidence
    effects) it also returns ``diabetes_5y`` and ``hypertension_5y`` (0/1 as
    floats, ``NaN`` for patients who have the condition at baseline) and their
    true probabilities ``risk:diabetes_5y`` and ``risk:hypertension_5y``. The
    separate generator leaves every other column exactly as without it.
    """
    n = len(hospital)
    normal = rng.standard_normal

    # Demographics: adults 18-90, mean age about 50 (a Beta shape tilted per site).
    tilt = np.exp(sites.age_tilt[hospital])
    age = np.rint(18.0 + 72.0 * rng.beta(1.6 * tilt, 2.0 / tilt))
    decades = (age - 50.0) / 10.0
    male = (rng.random(n) >= sites.female_fraction[hospital]).astype(np.int8)
    young = np.clip((age - 18.0) / 72.0, 0.0, 1.0)

    # Lifestyle: smoking peaks in mid-life and in men; activity falls with age.
    p_current = np.where(male == 1, 0.16, 0.12) * np.where((age >= 25) & (age < 65), 1.0, 0.6)
    p_former = 0.08 + 0.28 * young
    u = rng.random(n)
    smoking = np.where(u < p_current, 2, np.where(u < p_current + p_former, 1, 0)).astype(np.int8)
    p_low = 0.22 + 0.2 * young
    p_high = 0.32 - 0.17 * young
    u = rng.random(n)
    activity = np.where(u < p_low, 0, np.where(u < 1.0 - p_high, 1, 2)).astype(np.int8)
    family = (rng.random(n) < 0.30).astype(np.int8)
    low_active = activity == 0
    high_active = activity == 2

    # BMI: right-skewed, rising through mid-life, lower with activity.
    log_bmi = (
        _LOG(25.8)
        + 0.0025 * np.minimum(age - 18.0, 40.0)
        + 0.035 * low_active
        - 0.04 * high_active
        + 0.02 * family
        + 0.19 * normal(n)
    )
    bmi = np.clip(np.exp(log_bmi), 15.0, 65.0)
    bmi_5 = (bmi - 28.0) / 5.0

    # Risk models (odds ratios in data/README.md), then the outcomes.
    diabetes_logit = (
        DIABETES_INTERCEPT
        + _LOG(1.75) * decades
        + _LOG(1.9) * bmi_5
        + _LOG(2.5) * family
        + _LOG(1.37) * (smoking == 2)
        + _LOG(1.14) * (smoking == 1)
        + _LOG(1.35) * low_active
        - _LOG(1.2) * high_active
        + _LOG(1.3) * male
        + sites.diabetes_shift[hospital]
    )
    diabetes = (rng.random(n) < _sigmoid(diabetes_logit)).astype(np.int8)
    hypertension_logit = (
        HYPERTENSION_INTERCEPT
        + _LOG(2.0) * decades
        + _LOG(1.6) * bmi_5
        + _LOG(1.4) * male
        + _LOG(1.8) * diabetes
        + _LOG(1.15) * (smoking == 2)
        + _LOG(1.25) * low_active
        + sites.hypertension_shift[hospital]
    )
    hypertension = (rng.random(n) < _sigmoid(hypertension_logit)).astype(np.int8)

    # Glycaemia given diabetes: HbA1c first, fasting glucose from it (ADAG relation).
    # About half of patients with diabetes are treated to target (HbA1c near 6-7 %).
    hba1c_healthy = 5.35 + 0.006 * (age - 50.0) + 0.06 * bmi_5 + 0.35 * normal(n)
    controlled = rng.random(n) < 0.5
    hba1c_diabetic = np.where(controlled, 6.0 + 0.5 * normal(n), 6.5 + rng.gamma(2.0, 0.75, n))
    hba1c = np.where(diabetes == 1, hba1c_diabetic, np.minimum(hba1c_healthy, 6.4))
    glucose = 28.7 * hba1c - 46.7 - 8.0 + np.where(diabetes == 1, 20.0, 9.0) * normal(n)
    glucose = np.clip(glucose, 55.0, 450.0)
    hba1c = np.clip(hba1c, 4.0, 15.0)
    true_glucose, true_hba1c = glucose, hba1c  # before the site's assay calibration
    glucose = glucose * sites.glucose_factor[hospital]
    hba1c = hba1c + sites.hba1c_offset[hospital]

    # Blood pressure given hypertension; about half are treated to near-normal values.
    treated = rng.random(n) < 0.5
    sbp = (
        2.5 * decades
        + 2.5 * bmi_5
        + 4.0 * male
        + np.where(
            hypertension == 0,
            114.0 + 9.0 * normal(n),
            np.where(treated, 122.0 + 10.0 * normal(n), 146.0 + 14.0 * normal(n)),
        )
    )
    sbp = np.clip(sbp, 85.0, 230.0)
    dbp = 20.0 + 0.42 * sbp - 1.0 * decades + 2.0 * male + 6.0 * normal(n)
    dbp = np.clip(dbp, 45.0, 130.0)
    true_sbp, true_dbp = sbp, dbp  # before the site's device calibration
    sbp = sbp + sites.sbp_offset[hospital]
    dbp = dbp + sites.dbp_offset[hospital]

    # Lipids: total cholesterol peaks in late middle age; HDL lower in men and with BMI.
    total_chol = 190.0 + 4.5 * decades - 1.5 * decades**2 + 5.0 * bmi_5 + 40.0 * normal(n)
    hdl = (
        np.where(male == 1, 47.0, 59.0)
        - 3.0 * bmi_5
        + 3.0 * high_active
        - 2.0 * low_active
        + 1.0 * decades
        - 3.0 * diabetes
        + 13.0 * normal(n)
    )

    columns = {
        "age": age,
        "sex": male,
        "bmi": np.round(bmi, 1),
        "systolic_bp": np.rint(sbp),
        "diastolic_bp": np.rint(dbp),
        "fasting_glucose": np.rint(glucose),
        "hba1c": np.round(hba1c, 1),
        "total_cholesterol": np.rint(np.clip(total_chol, 100.0, 400.0)),
        "hdl_cholesterol": np.rint(np.clip(hdl, 20.0, 120.0)),
        "smoking": smoking,
        "physical_activity": activity,
        "family_history_diabetes": family,
        "diabetes": diabetes,
        "hypertension": hypertension,
    }
    if incidence is None:
        return columns

    # Incidence within 5 years, from the true baseline values (see data/README.md):
    # FINDRISC-like lifestyle terms plus baseline glycaemia for diabetes, and the
    # Framingham hypertension score's blood pressure, age, BMI, sex and smoking.
    inc_rng, effects = incidence
    site = hospital
    diabetes_5y_logit = (
        DIABETES_5Y_INTERCEPT
        + _LOG(1.3) * decades
        + (_LOG(1.6) + effects.bmi_slope[site]) * bmi_5
        + _LOG(1.8) * family
        + _LOG(1.3) * low_active
        - _LOG(1.2) * high_active
        + _LOG(1.3) * (smoking == 2)
        + _LOG(1.15) * male
        + _LOG(1.5) * hypertension
        + _LOG(2.2) * (true_hba1c - 5.5) / 0.5
        + _LOG(1.25) * (true_glucose - 100.0) / 10.0
        - _LOG(1.15) * (hdl - 50.0) / 10.0
        + effects.diabetes_5y_shift[site]
    )
    hypertension_5y_logit = (
        HYPERTENSION_5Y_INTERCEPT
        + _LOG(1.3) * decades
        + (_LOG(2.1) + effects.sbp_slope[site]) * (true_sbp - 120.0) / 10.0
        + _LOG(1.3) * (true_dbp - 75.0) / 5.0
        + _LOG(1.25) * bmi_5
        + _LOG(1.15) * male
        + _LOG(1.2) * (smoking == 2)
        + _LOG(1.15) * low_active
        + _LOG(1.4) * diabetes
        + effects.hypertension_5y_shift[site]
    )
    for name, logit, baseline in (
        ("diabetes_5y", diabetes_5y_logit, diabetes),
        ("hypertension_5y", hypertension_5y_logit, hypertension),
    ):
        risk = np.where(baseline == 1, np.nan, _sigmoid(logit))
        drawn = (inc_rng.random(n) < risk).astype(np.float64)
        columns[name] = np.where(baseline == 1, np.nan, drawn)
        columns[f"risk:{name}"] = risk
    return columns


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
