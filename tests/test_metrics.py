import math
import time
import warnings

import mir_eval.melody
import numpy as np
import pytest

from metrics import band_metrics, calibrate_vuv_threshold, cents_error, pitch_metrics


def shifted(hz, cents):
    return hz * 2.0 ** (cents / 1200.0)


def hand_example():
    """12 frames whose every metric is counted by hand in test_hand_computed_metrics."""
    ref = np.array([200.0, 110.0, 150.0, 220.0, 180.0, 240.0, 130.0, 200.0, 200.0, 160.0, 0.0, 0.0])
    est = np.array([
        200.0,                  # 0 exact                               RPA RCA
        shifted(110.0, 30.0),   # 1 +30 cents                           RPA RCA
        shifted(150.0, -49.0),  # 2 -49 cents                           RPA RCA
        shifted(220.0, 51.0),   # 3 +51 cents: just outside
        360.0,                  # 4 octave up                               RCA  gross
        120.0,                  # 5 octave down                             RCA  gross
        0.0,                    # 6 no estimate
        200.0 * 1.19,           # 7 +19 % (301 cents): not gross
        200.0 * 1.21,           # 8 +21 % (330 cents): gross
        160.0,                  # 9 exact but decided unvoiced          RPA RCA
        150.0,                  # 10 reference unvoiced, decided voiced  (false alarm)
        150.0,                  # 11 reference unvoiced, decided unvoiced
    ])
    est_voiced = np.array([1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 0], dtype=bool)
    return ref, est, est_voiced


def test_hand_computed_metrics():
    m = pitch_metrics(*hand_example())
    # 10 reference-voiced frames; TP = {0,1,2,3,4,5,7,8}, FN = {6,9}, FP = {10}, TN = {11}; gross = {4,5,8}
    expected = {
        "RPA": 40.0,                 # 4 / 10
        "RCA": 60.0,                 # 6 / 10
        "GPE": 37.5,                 # 3 / 8 frames voiced in both
        "VUV_P": 100.0 * 8 / 9,
        "VUV_R": 80.0,               # 8 / 10
        "VUV_F1": 100.0 * 16 / 19,   # 2·8 / (2·8 + 1 + 2)
        "VUV_ACC": 75.0,             # 9 / 12
        "FFE": 50.0,                 # (1 + 2 + 3) / 12
        # |cents| on ref-voiced frames with an estimate: 0 0 30 49 51 301 330 1200 1200
        "MED_CENTS": 51.0,
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-9), key
    assert m["N_FRAMES"] == 12


def test_default_reference_voicing_is_f0_above_zero_and_may_be_narrowed():
    ref, est, est_voiced = hand_example()
    assert pitch_metrics(ref, est, est_voiced) == pitch_metrics(ref, est, est_voiced, ref_voiced=ref > 0)
    narrowed = ref > 0
    narrowed[9] = False  # frame 9 was an RPA hit and a miss of the voicing decision
    m = pitch_metrics(ref, est, est_voiced, ref_voiced=narrowed)
    assert m["RPA"] == pytest.approx(100.0 * 3 / 9)
    assert m["VUV_R"] == pytest.approx(100.0 * 8 / 9)
    assert m["VUV_ACC"] == pytest.approx(100.0 * 10 / 12)
    with pytest.raises(ValueError, match="ref_voiced"):
        pitch_metrics(ref, est, est_voiced, ref_voiced=np.ones(12, dtype=bool))


def test_non_positive_or_nan_estimate_is_no_estimate():
    ref = np.full(3, 200.0)
    # mir_eval's hz2cents takes |f|, so -200 Hz would count as a hit if it were passed through
    m = pitch_metrics(ref, np.array([-200.0, np.nan, 200.0]), np.ones(3, dtype=bool))
    assert m["RPA"] == pytest.approx(100.0 / 3)
    assert m["GPE"] == pytest.approx(200.0 / 3)
    assert m["MED_CENTS"] == 0.0


def random_tracks(rng, n):
    ref = np.where(rng.random(n) < 0.6, rng.uniform(70.0, 500.0, n), 0.0)
    cents = rng.normal(0.0, 60.0, n) + 1200.0 * rng.choice([-1, 0, 0, 0, 1], n)
    est = np.where(ref > 0, shifted(ref, cents), rng.uniform(70.0, 500.0, n))
    est[rng.random(n) < 0.03] = 0.0
    est_voiced = np.where(ref > 0, rng.random(n) < 0.85, rng.random(n) < 0.2)
    return ref, est, est_voiced


def test_agrees_with_mir_eval_on_random_data():
    ref, est, est_voiced = random_tracks(np.random.default_rng(0), 20_000)
    m = pitch_metrics(ref, est, est_voiced)
    ref_v, est_v = (ref > 0).astype(float), est_voiced.astype(float)
    ref_c, est_c = mir_eval.melody.hz2cents(ref), mir_eval.melody.hz2cents(est)
    assert m["RPA"] == pytest.approx(100.0 * mir_eval.melody.raw_pitch_accuracy(ref_v, ref_c, est_v, est_c))
    assert m["RCA"] == pytest.approx(100.0 * mir_eval.melody.raw_chroma_accuracy(ref_v, ref_c, est_v, est_c))
    recall, false_alarm = mir_eval.melody.voicing_measures(ref_v, est_v)
    assert m["VUV_R"] == pytest.approx(100.0 * recall)
    tp, fp = recall * ref_v.sum(), false_alarm * (1.0 - ref_v).sum()
    assert m["VUV_P"] == pytest.approx(100.0 * tp / (tp + fp))
    assert 0.0 < m["RPA"] < m["RCA"] < 100.0
    both = (ref > 0) & (est > 0)
    assert m["MED_CENTS"] == pytest.approx(np.median(np.abs(ref_c[both] - est_c[both])))


def test_cents_error():
    np.testing.assert_allclose(cents_error([100.0, 100.0, 200.0], [200.0, 50.0, 200.0]), [1200.0, -1200.0, 0.0])
    assert np.isnan(cents_error([0.0, 100.0], [100.0, 0.0])).all()


def no_warnings(*args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return pitch_metrics(*args)


def test_no_reference_voicing_gives_nan_not_a_crash():
    m = no_warnings(np.zeros(4), np.full(4, 100.0), np.array([1, 0, 0, 0], dtype=bool))
    for key in ("RPA", "RCA", "GPE", "VUV_R", "MED_CENTS"):
        assert np.isnan(m[key]), key
    assert m["VUV_P"] == 0.0 and m["VUV_F1"] == 0.0
    assert m["VUV_ACC"] == 75.0 and m["FFE"] == 25.0


def test_no_estimated_voicing_still_scores_pitch():
    m = no_warnings(np.full(4, 100.0), np.array([100.0, 100.0, 300.0, 0.0]), np.zeros(4, dtype=bool))
    assert m["RPA"] == 50.0
    assert np.isnan(m["VUV_P"]) and np.isnan(m["GPE"])
    assert m["VUV_R"] == 0.0 and m["VUV_F1"] == 0.0 and m["FFE"] == 100.0


def test_empty_input():
    m = no_warnings(np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool))
    assert m["N_FRAMES"] == 0
    assert all(np.isnan(v) for k, v in m.items() if k != "N_FRAMES")


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="1-D"):
        pitch_metrics(np.ones(3), np.ones(4), np.ones(3, dtype=bool))


def calibration_example():
    voiced_probs = [0.3, 0.35, 0.4, 0.6, 0.7, 0.8]
    unvoiced_probs = [0.05, 0.1, 0.2, 0.25]
    prob = np.array(voiced_probs + unvoiced_probs)
    return prob, np.arange(prob.size) < len(voiced_probs)


def test_calibration_beats_one_half_and_breaks_ties_towards_initial():
    prob, voiced = calibration_example()
    # at 0.5 three voiced frames are missed (F1 = 6/9); every threshold in (0.25, 0.3] is perfect
    assert pitch_metrics(np.where(voiced, 100.0, 0.0), np.full(10, 100.0), prob >= 0.5)["VUV_F1"] == pytest.approx(
        100.0 * 6 / 9
    )
    assert calibrate_vuv_threshold(prob, voiced, steps=99) == (0.3, 100.0)  # 0.30 keeps prob 0.3: >=
    assert calibrate_vuv_threshold(prob, voiced, steps=99, initial=0.1) == (0.26, 100.0)
    assert calibrate_vuv_threshold(prob, voiced, steps=99, initial=0.27) == (0.27, 100.0)
    assert calibrate_vuv_threshold(prob, voiced, steps=0, initial=0.5) == (0.5, pytest.approx(100.0 * 6 / 9))


def test_calibration_matches_brute_force_and_pitch_metrics():
    rng = np.random.default_rng(1)
    voiced = rng.random(5000) < 0.55
    prob = np.clip(np.where(voiced, rng.normal(0.62, 0.2, 5000), rng.normal(0.35, 0.2, 5000)), 0.0, 1.0)
    ref = np.where(voiced, 150.0, 0.0)
    threshold, f1 = calibrate_vuv_threshold(prob, voiced, steps=19, initial=0.5)
    candidates = [i / 20 for i in range(1, 20)]
    brute = [pitch_metrics(ref, np.full(5000, 150.0), prob >= t)["VUV_F1"] for t in candidates]
    assert f1 == max(brute)
    assert threshold == candidates[int(np.argmax(brute))]
    assert threshold != 0.5 and f1 > brute[candidates.index(0.5)]


def test_calibration_without_voiced_frames_keeps_initial():
    threshold, f1 = calibrate_vuv_threshold(np.full(5, 0.9), np.zeros(5, dtype=bool), steps=9, initial=0.4)
    assert threshold == 0.4 and np.isnan(f1)


def test_calibration_timing_one_million_frames():
    rng = np.random.default_rng(2)
    voiced = rng.random(1_000_000) < 0.5
    prob = np.clip(rng.normal(np.where(voiced, 0.65, 0.35), 0.2), 0.0, 1.0).astype(np.float32)
    start = time.perf_counter()
    threshold, f1 = calibrate_vuv_threshold(prob, voiced, steps=99)
    print(f"\ncalibrate_vuv_threshold: 1e6 frames, 99 steps: {time.perf_counter() - start:.3f} s "
          f"(threshold {threshold:.2f}, F1 {f1:.2f} %)")
    assert 0.3 < threshold < 0.6


def test_band_metrics_splits_frames_by_reference_band():
    # Per band: frames whose reference lies in it, scored alone. Unvoiced reference frames are in no band.
    ref = np.array([60.0, 60.0, 70.0, 70.0, 200.0, 200.0, 200.0, 200.0, 900.0, 0.0])
    est = np.array([60.0, 120.0, 70.0, 70.0, 210.0, 200.0, 400.0, 0.0, 905.0, 300.0])
    voiced = est > 0
    bands = band_metrics(ref, est, voiced)
    assert list(bands) == ["<65", "65-80", "80-100", "100-150", "150-250", "250-400", ">=400"]
    assert [bands[name]["N_FRAMES"] for name in bands] == [2, 2, 0, 0, 4, 0, 1]
    assert bands["<65"]["RPA"] == 50.0 and bands["<65"]["GPE"] == 50.0  # one octave error of two
    assert bands["65-80"]["RPA"] == 100.0
    # 150-250: 210 Hz is 84 cents off (a miss, not gross), 400 Hz gross, one frame called unvoiced.
    assert bands["150-250"]["RPA"] == 25.0 and bands["150-250"]["VUV_R"] == 75.0
    assert bands["150-250"]["GPE"] == pytest.approx(100 / 3)
    assert bands[">=400"]["RPA"] == 100.0 and math.isnan(bands["80-100"]["RPA"])
