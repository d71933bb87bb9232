"""F0 and voicing metrics — the one implementation that validation, evaluate.py and the benchmarks share.

Definitions are those of the project's evaluation benchmark (README, "Accuracy"), so validation numbers
compare with benchmark numbers. Inputs are 1-D arrays pooled frame by frame (callers concatenate the valid
frames of all clips). An estimated F0 that is ≤ 0 or not finite is "no estimate", as in the benchmark.

    RPA        reference-voiced frames whose estimate is within 50 cents (inclusive), using the estimated
               F0 even where the voicing decision says unvoiced
    RCA        as RPA with octave errors forgiven
    GPE        frames voiced in both with |est − ref| > 20 % of ref
    VUV_P/R/F1 precision / recall / F1 of the voicing decision (voiced = positive class)
    VUV_ACC    frames whose voicing decision is right
    FFE        (voicing errors + gross pitch errors) / all frames
    MED_CENTS  median |error| in cents over reference-voiced frames that have an estimate
    N_FRAMES   number of frames scored

Units: every metric is a percentage (0–100, F1/P/R included, as the benchmark table prints them), except
MED_CENTS (cents) and N_FRAMES (a count). A metric whose denominator is empty is nan: RPA, RCA, VUV_R and
MED_CENTS without reference-voiced frames; GPE without frames voiced in both; VUV_P without estimated-voiced
frames; VUV_F1 with nothing voiced in either (the benchmark prints 0 there); VUV_ACC and FFE with no frames.

The voicing decision from a probability is `prob >= threshold`; calibrate_vuv_threshold picks the threshold.
"""
import warnings

import mir_eval.melody
import numpy as np

PITCH_TOLERANCE_CENTS = 50.0
GROSS_ERROR_FRACTION = 0.2

# mir_eval counts |error| < tolerance; the benchmark's "within 50 cents" is inclusive (<=). The next float
# above 50 makes mir_eval's strict test the inclusive one.
_INCLUSIVE_TOLERANCE_CENTS = float(np.nextafter(PITCH_TOLERANCE_CENTS, np.inf))


def cents_error(ref_hz, est_hz):
    """Signed error of est_hz relative to ref_hz in cents, 1200·log2(est/ref); nan where either is ≤ 0 or nan."""
    ref_hz, est_hz = np.asarray(ref_hz, dtype=np.float64), np.asarray(est_hz, dtype=np.float64)
    both_pitched = (ref_hz > 0) & (est_hz > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cents = 1200.0 * np.log2(est_hz / ref_hz)
    return np.where(both_pitched, cents, np.nan)


def pitch_metrics(ref_f0, est_f0, est_voiced, ref_voiced=None):
    """Benchmark metrics over pooled frames (see the module docstring for definitions and units).

    ref_f0, est_f0: Hz (ref 0 = unvoiced). est_voiced: the voicing decision (bool).
    ref_voiced: the reference voicing (bool); default ref_f0 > 0. It may leave out frames that have an F0,
    but may not mark a frame without one (ValueError).
    Returns a dict of floats plus N_FRAMES (int).
    """
    ref_f0, est_f0 = np.asarray(ref_f0, dtype=np.float64), np.asarray(est_f0, dtype=np.float64)
    est_voiced = np.asarray(est_voiced, dtype=bool)
    ref_voiced = ref_f0 > 0 if ref_voiced is None else np.asarray(ref_voiced, dtype=bool)
    if not (ref_f0.ndim == 1 and ref_f0.shape == est_f0.shape == est_voiced.shape == ref_voiced.shape):
        raise ValueError(
            "pitch_metrics needs 1-D arrays of one length, got "
            f"{ref_f0.shape}, {est_f0.shape}, {est_voiced.shape}, {ref_voiced.shape}"
        )
    if (ref_voiced & ~(ref_f0 > 0)).any():
        raise ValueError("ref_voiced marks frames whose ref_f0 is not > 0")
    est_f0 = np.where(np.isfinite(est_f0) & (est_f0 > 0), est_f0, 0.0)

    n_frames = ref_f0.size
    tp = int((ref_voiced & est_voiced).sum())
    fp = int((~ref_voiced & est_voiced).sum())
    fn = int((ref_voiced & ~est_voiced).sum())
    tn = n_frames - tp - fp - fn
    gross = int(gross_errors(ref_f0, est_f0, ref_voiced & est_voiced).sum())
    rpa, rca = raw_pitch_and_chroma_accuracy(ref_f0, est_f0, ref_voiced, est_voiced)
    abs_cents = np.abs(cents_error(ref_f0[ref_voiced], est_f0[ref_voiced]))
    abs_cents = abs_cents[~np.isnan(abs_cents)]
    return {
        "RPA": rpa,
        "RCA": rca,
        "GPE": percent(gross, tp),
        "VUV_P": percent(tp, tp + fp),
        "VUV_R": percent(tp, tp + fn),
        "VUV_F1": float(f1_percent(tp, fp, fn)),
        "VUV_ACC": percent(tp + tn, n_frames),
        "FFE": percent(fp + fn + gross, n_frames),
        "MED_CENTS": float(np.median(abs_cents)) if abs_cents.size else float("nan"),
        "N_FRAMES": n_frames,
    }


def gross_errors(ref_f0, est_f0, frames):
    """Boolean array: frames (voiced in both) whose estimate is more than 20 % off the reference."""
    return frames & ~(np.abs(est_f0 - ref_f0) <= GROSS_ERROR_FRACTION * ref_f0)


def raw_pitch_and_chroma_accuracy(ref_f0, est_f0, ref_voiced, est_voiced):
    """(RPA, RCA) in percent by mir_eval; nan without reference-voiced frames, where mir_eval would say 0."""
    if not ref_voiced.any():
        return float("nan"), float("nan")
    args = (
        ref_voiced.astype(np.float64),
        mir_eval.melody.hz2cents(ref_f0),
        est_voiced.astype(np.float64),
        mir_eval.melody.hz2cents(est_f0),
    )
    with warnings.catch_warnings():
        # mir_eval warns about empty or all-unvoiced inputs; those cases are defined here (nan or 0 %).
        warnings.filterwarnings("ignore", category=UserWarning, module=r"mir_eval\.")
        rpa = mir_eval.melody.raw_pitch_accuracy(*args, cent_tolerance=_INCLUSIVE_TOLERANCE_CENTS)
        rca = mir_eval.melody.raw_chroma_accuracy(*args, cent_tolerance=_INCLUSIVE_TOLERANCE_CENTS)
    return 100.0 * float(rpa), 100.0 * float(rca)


def percent(numerator, denominator):
    """100 · numerator / denominator, nan when the denominator is 0."""
    return 100.0 * numerator / denominator if denominator else float("nan")


def f1_percent(tp, fp, fn):
    """Voicing F1 in percent from confusion counts (scalars or arrays), 2TP / (2TP + FP + FN); nan where
    nothing is voiced in either. Equal to the harmonic mean of precision and recall where both exist, and 0
    (not nan) where one side voices nothing but the other does."""
    tp, fp, fn = (np.asarray(count, dtype=np.float64) for count in (tp, fp, fn))
    denominator = 2.0 * tp + fp + fn
    return np.divide(200.0 * tp, denominator, out=np.full(denominator.shape, np.nan), where=denominator > 0)


def calibrate_vuv_threshold(prob, voiced, steps, initial=0.5):
    """The threshold on P(voiced) (a frame is voiced where prob >= threshold) that maximises voicing F1.

    Candidates: `steps` thresholds evenly inside (0, 1), i / (steps + 1) for i = 1..steps, plus `initial`.
    Ties go to the candidate closest to `initial` (then the lower), so the threshold moves only for a gain.
    Returns (threshold, F1 in percent, as pitch_metrics' VUV_F1); (initial, nan) when no frame is voiced,
    since F1 is then undefined. Counts come from one sort per class and a binary search per candidate,
    O(N log N), never a pass over the frames per candidate.
    """
    prob = np.asarray(prob, dtype=np.float64)
    voiced = np.asarray(voiced, dtype=bool)
    if prob.shape != voiced.shape:
        raise ValueError(f"prob and voiced differ in shape: {prob.shape} vs {voiced.shape}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    voiced_probs, unvoiced_probs = np.sort(prob[voiced]), np.sort(prob[~voiced])
    if voiced_probs.size == 0:
        return float(initial), float("nan")
    candidates = np.unique(np.append(np.arange(1, steps + 1) / (steps + 1), initial))
    # frames with prob >= t are those at or after the first sorted value >= t
    tp = voiced_probs.size - np.searchsorted(voiced_probs, candidates, side="left")
    fp = unvoiced_probs.size - np.searchsorted(unvoiced_probs, candidates, side="left")
    f1 = f1_percent(tp, fp, voiced_probs.size - tp)
    best = np.lexsort((candidates, np.abs(candidates - initial), -f1))[0]
    return float(candidates[best]), float(f1[best])


# Reference-F0 bands (Hz, [low, high)) of the range evaluation: low voices and creak, speech, high voices.
F0_BANDS_HZ = ((0.0, 65.0), (65.0, 80.0), (80.0, 100.0), (100.0, 150.0), (150.0, 250.0), (250.0, 400.0),
               (400.0, float("inf")))


def band_name(low, high):
    return f"<{high:g}" if low == 0 else (f">={low:g}" if high == float("inf") else f"{low:g}-{high:g}")


def band_metrics(ref_f0, est_f0, est_voiced):
    """{band name: pitch_metrics over the frames whose reference F0 lies in that band of F0_BANDS_HZ}.

    Every such frame is reference-voiced, so per band RPA is its pitch accuracy, GPE its gross errors among
    the frames the estimate calls voiced, and VUV_R its coverage (share of the band's frames called voiced).
    """
    ref_f0, est_f0, est_voiced = np.asarray(ref_f0), np.asarray(est_f0), np.asarray(est_voiced, dtype=bool)
    bands = {}
    for low, high in F0_BANDS_HZ:
        frames = (ref_f0 > 0) & (ref_f0 >= low) & (ref_f0 < high)
        bands[band_name(low, high)] = pitch_metrics(ref_f0[frames], est_f0[frames], est_voiced[frames])
    return bands
