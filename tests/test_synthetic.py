"""synthetic.py: WORLD renderings and pitch shifts whose labels survive independent re-analysis, and the
blend draw (real pyworld / librosa)."""
import numpy as np
import pytest
import pyworld
import scipy.signal

import f0_backends
import synthetic
from audio import frame_times

SR, HOP = 24000, 300
WORLD = {  # the config block's values, shorter clips to keep the file fast
    "enabled": True, "weight": 0.5, "duration": [1.2, 2.0], "pitch_range": [70.0, 450.0],
    "gain_db_range": [-12.0, 0.0], "creak_probability": 0.0,
    "modulation": {"vibrato_rate_hz": [4.0, 7.0], "vibrato_depth_cents": [0.0, 60.0],
                   "drift_cents": 300.0, "jitter_cents": 5.0},
}
SEEDS = range(5)


def harvest(audio):
    """Independent reference F0 on the repo grid: WORLD Harvest + StoneMask, 12.5 ms frames."""
    x = audio.astype(np.float64)
    f0, times = pyworld.harvest(x, SR, f0_floor=50.0, f0_ceil=1100.0, frame_period=1000.0 * HOP / SR)
    return pyworld.stonemask(x, f0, times, SR)


_LOWPASS = scipy.signal.butter(4, 1500.0, fs=SR, output="sos")


def periodicity(audio, f0):
    """Per frame: best normalised correlation of the low band (< 1.5 kHz, so frication does not
    count) over one 300-sample cell with itself one period (1/f0 +- 3 %) later; 0 where f0 = 0."""
    pad = 1200
    low = np.pad(scipy.signal.sosfiltfilt(_LOWPASS, audio.astype(np.float64)), pad)
    out = np.zeros(len(f0))
    for i, hz in enumerate(f0):
        if hz <= 0:
            continue
        period = SR / hz
        centre = HOP * i + pad
        for lag in range(int(period * 0.97), int(np.ceil(period * 1.03)) + 1):
            start = centre - HOP // 2 - lag // 2
            a, b = low[start:start + HOP], low[start + lag:start + lag + HOP]
            norm = np.sqrt(np.dot(a, a) * np.dot(b, b))
            if norm > 0:
                out[i] = max(out[i], np.dot(a, b) / norm)
    return out


def away_from_voicing_edges(voiced):
    """Frames not adjacent to a change of the label's voicing (a 1-frame collar: any analysis
    window of a few periods straddles the edge there)."""
    change = np.zeros(len(voiced), dtype=bool)
    edges = np.nonzero(np.diff(voiced.astype(np.int8)))[0]
    change[edges] = change[np.minimum(edges + 1, len(voiced) - 1)] = True
    return ~change


def cents(a, b):
    return 1200.0 * np.abs(np.log2(a / b))


@pytest.fixture(scope="module")
def renders():
    out = []
    for seed in SEEDS:
        audio, f0 = synthetic.render_world_utterance(np.random.default_rng(seed), WORLD)
        out.append((audio, f0, harvest(audio)))
    return out


# --------------------------------------------------------------------------- WORLD rendering


def test_render_shapes_levels_and_grid(renders):
    for audio, f0, _ in renders:
        assert audio.dtype == np.float32 and f0.dtype == np.float32
        assert len(f0) == 1 + len(audio) // HOP
        assert 1.2 * SR - 1 <= len(audio) <= 2.0 * SR + 1
        peak_db = 20 * np.log10(np.abs(audio).max())
        assert -12.01 <= peak_db <= 0.01
        voiced = f0[f0 > 0]
        assert 0.2 < len(voiced) / len(f0) < 0.95
        assert voiced.min() >= 40.0 and voiced.max() <= 1100.0


def test_world_f0_matches_independent_reanalysis(renders):
    errors, at_offsets = [], []
    for audio, f0, ref in renders:
        both = (f0 > 0) & (ref > 0)
        errors.append(cents(ref[both], f0[both]))
        last = both & (np.r_[f0[1:], 0.0] == 0)  # last voiced frame of each run
        at_offsets.append(cents(ref[last], f0[last]))
    errors = np.concatenate(errors)
    assert np.median(errors) < 10.0, np.median(errors)
    assert np.mean(errors > 50.0) < 0.08  # octave-type or misaligned frames are rare
    # WORLD on the label grid itself would glide F0 towards half its value after each voiced frame
    assert np.median(np.concatenate(at_offsets)) < 20.0, np.median(np.concatenate(at_offsets))


def test_world_labels_are_aligned_to_the_frame_grid():
    # strong vibrato, so that a time offset shows; the re-analysis, shifted by a fraction of a
    # frame, fits the labels best at zero shift (frame i really describes the audio at 300 i)
    params = dict(WORLD, modulation=dict(WORLD["modulation"], vibrato_rate_hz=[7.0, 7.0],
                                         vibrato_depth_cents=[60.0, 60.0]))
    shifts = np.arange(-1.0, 1.01, 0.125)
    error = np.zeros(len(shifts))
    for seed in (10, 11):
        audio, f0 = synthetic.render_world_utterance(np.random.default_rng(seed), params)
        ref = harvest(audio)
        frames = np.arange(len(f0))
        interior = np.convolve(f0 > 0, np.ones(5), mode="same") == 5  # voiced, and 2 frames each side
        for k, shift in enumerate(shifts):
            moved = np.interp(frames + shift, frames, ref)
            ok = interior & (np.interp(frames + shift, frames, (ref > 0).astype(float)) == 1.0)
            error[k] += np.median(cents(moved[ok], f0[ok]))
    best = shifts[np.argmin(error)]
    assert abs(best) <= 0.25, dict(zip(shifts, error.round(1)))
    assert error[shifts == 0.0][0] < 0.7 * min(error[shifts == -1.0][0], error[shifts == 1.0][0])


def test_world_voicing_matches_independent_reanalysis(renders):
    agreement, periodic_at_label, unvoiced_but_periodic = [], [], []
    for audio, f0, ref in renders:
        voiced = f0 > 0
        keep = away_from_voicing_edges(voiced)
        # Harvest alone also reports F0 in silence and fricatives next to voiced speech (~10 % of
        # frames here); WORLD's own D4C voicing check, as the pyworld backend applies it, removes those
        ref_voiced = f0_backends.d4c_voicing_gate(audio.astype(np.float64), ref, frame_times(len(ref)), 0.85) > 0
        agreement.append(np.mean(ref_voiced[keep] == voiced[keep]))
        unvoiced_but_periodic.append(ref_voiced[keep & ~voiced])
        # what is labelled voiced really repeats at the labelled period
        periodic_at_label.append(periodicity(audio, f0)[keep & voiced] >= 0.5)
    assert np.mean(agreement) >= 0.95, agreement
    assert np.mean(np.concatenate(periodic_at_label)) >= 0.97
    assert np.mean(np.concatenate(unvoiced_but_periodic)) <= 0.08


def test_world_has_unvoiced_noise_and_silence_labelled_zero(renders):
    noisy_unvoiced = silent_unvoiced = 0
    for audio, f0, _ in renders:
        x = np.pad(audio.astype(np.float64), HOP)
        energy = np.array([np.mean(x[HOP * i + HOP // 2: HOP * i + 3 * HOP // 2] ** 2) for i in range(len(f0))])
        level_db = 10 * np.log10(energy / energy.max() + 1e-20)
        unvoiced = f0 == 0
        interior = np.zeros(len(f0), dtype=bool)
        v = np.nonzero(~unvoiced)[0]
        interior[v[0]:v[-1]] = True
        keep = away_from_voicing_edges(~unvoiced)
        # unvoiced frames inside the utterance with real energy (fricatives, bursts, /h/) ...
        noisy_unvoiced += np.sum(unvoiced & interior & keep & (level_db > -35))
        # ... and (near-)silent ones (pauses, stop closures, lead-in and tail)
        silent_unvoiced += np.sum(unvoiced & keep & (level_db < -45))
    assert noisy_unvoiced >= 10 and silent_unvoiced >= 20, (noisy_unvoiced, silent_unvoiced)


def test_world_is_deterministic_per_seed():
    a1, f1 = synthetic.render_world_utterance(np.random.default_rng(123), WORLD)
    a2, f2 = synthetic.render_world_utterance(np.random.default_rng(123), WORLD)
    a3, f3 = synthetic.render_world_utterance(np.random.default_rng(124), WORLD)
    assert np.array_equal(a1, a2) and np.array_equal(f1, f2)
    assert len(a1) != len(a3) or not np.array_equal(a1, a3)
    assert len(f1) != len(f3) or not np.array_equal(f1, f3)


def test_world_respects_pitch_range():
    params = dict(WORLD, pitch_range=[200.0, 200.0], duration=[1.0, 1.0],
                  modulation={"vibrato_rate_hz": [5.0, 5.0], "vibrato_depth_cents": [0.0, 0.0],
                              "drift_cents": 0.0, "jitter_cents": 0.0})
    audio, f0 = synthetic.render_world_utterance(np.random.default_rng(0), params)
    voiced = f0[f0 > 0]
    assert len(audio) == SR
    # only micro-prosody (< 80 cents, up after voiceless consonants) on top of the base pitch
    assert np.median(voiced) == pytest.approx(200.0, rel=0.01)
    assert voiced.min() >= 199.9 and voiced.max() <= 200.0 * 2 ** (80 / 1200) + 0.1


# --------------------------------------------------------------------------- pitch shifting

SHIFT = {"enabled": True, "weight": 0.5, "semitones": [-4.0, 4.0], "gain_db_range": [-6.0, 6.0],
         "min_voiced_fraction": 0.2}


def test_pitch_shift_labels_match_reanalysis(renders):
    errors = []
    for (audio, f0, _), semitones in zip(renders[:3], ([-4.0, -2.0], [2.0, 4.0], [-4.0, -2.0])):
        shifted = synthetic.pitch_shift_clip(audio, f0, np.random.default_rng(0), dict(SHIFT, semitones=semitones))
        assert shifted is not None
        new_audio, new_f0 = shifted
        assert new_audio.dtype == np.float32 and new_f0.dtype == np.float32
        assert len(new_audio) == len(audio) and len(new_f0) == len(f0)
        assert np.array_equal(new_f0 > 0, f0 > 0)
        ratio = new_f0[f0 > 0] / f0[f0 > 0]
        assert np.ptp(ratio) < 1e-4  # one shift for the whole clip
        assert 2 ** (min(semitones) / 12) - 1e-4 <= ratio[0] <= 2 ** (max(semitones) / 12) + 1e-4
        assert np.abs(new_audio).max() <= 1.0
        ref = harvest(new_audio)
        both = (ref > 0) & (new_f0 > 0)
        errors.append(cents(ref[both], new_f0[both]))
    assert np.median(np.concatenate(errors)) < 25.0


def test_pitch_shift_exact_ratio_and_skip(renders):
    audio, f0, _ = renders[0]
    params = dict(SHIFT, semitones=[3.0, 3.0], gain_db_range=[0.0, 0.0])
    new_audio, new_f0 = synthetic.pitch_shift_clip(audio, f0, np.random.default_rng(0), params)
    np.testing.assert_allclose(new_f0[f0 > 0], f0[f0 > 0] * 2 ** 0.25, rtol=1e-6)
    assert np.all(new_f0[f0 == 0] == 0)
    # too little voicing: skipped
    sparse = np.zeros_like(f0)
    sparse[:5] = 150.0
    assert synthetic.pitch_shift_clip(audio, sparse, np.random.default_rng(0), params) is None


def test_pitch_shift_stays_in_the_vocal_range_and_keeps_uncertain_frames(renders):
    audio, f0, _ = renders[0]
    f0 = f0.copy()
    f0[np.flatnonzero(f0 > 0)[:3]] = np.nan  # uncertain consensus frames
    lowest, highest = np.nanmin(f0[f0 > 0]), np.nanmax(f0[f0 > 0])
    for semitones, bound in (([-48.0, -48.0], 50.0 / lowest), ([48.0, 48.0], 1000.0 / highest)):
        params = dict(SHIFT, semitones=semitones, gain_db_range=[0.0, 0.0])
        _, new_f0 = synthetic.pitch_shift_clip(audio, f0, np.random.default_rng(0), params)
        assert np.array_equal(np.isnan(new_f0), np.isnan(f0)) and np.array_equal(new_f0 == 0, f0 == 0)
        voiced = new_f0 > 0
        np.testing.assert_allclose(new_f0[voiced], f0[voiced] * bound, rtol=1e-5)  # pushed to the range's edge
        assert 50.0 * (1 - 1e-5) <= new_f0[voiced].min() and new_f0[voiced].max() <= 1000.0 * (1 + 1e-5)


def test_world_creak_falls_to_irregular_low_f0():
    params = dict(WORLD, creak_probability=1.0, pitch_range=[150.0, 150.0])
    creaky, steps = [], []
    for seed in range(3):
        audio, f0 = synthetic.render_world_utterance(np.random.default_rng(seed), params)
        voiced = np.flatnonzero(f0 > 0)
        runs = [run for run in np.split(voiced, np.flatnonzero(np.diff(voiced) > 1) + 1) if len(run) >= 10]
        creaky += [f0[run[-5:]] for run in runs]
        steps += [np.diff(1200 * np.log2(f0[run[-5:]])) for run in runs]
        ref = harvest(audio)
        both = (ref > 0) & (f0 > 0) & (f0 < 75)
        # the label is a period the audio has (per-cycle jitter), not frame-wise noise no tracker can see
        assert both.sum() >= 10 and np.median(np.abs(cents(ref[both], f0[both]))) < 25
    creaky = np.concatenate(creaky)
    assert np.median(creaky) < 80 and creaky.min() >= synthetic.F0_RANGE_HZ[0] * (1 - 1e-5)
    assert np.std(np.concatenate(steps)) > 20  # irregular from frame to frame, not a smooth glide


# --------------------------------------------------------------------------- blending


def test_blend_proportion_and_weights():
    synth = {"enabled": True, "proportion": 0.3, "world": {"enabled": True, "weight": 0.25},
             "pitch_shift": {"enabled": True, "weight": 0.75}, "resynthesis": {"enabled": False, "weight": 1.0}}
    rng = np.random.default_rng(7)
    kinds = [synthetic.draw_synthetic_kind(rng, synth) for _ in range(1000)]
    synthetic_share = np.mean([k is not None for k in kinds])
    assert abs(synthetic_share - 0.3) <= 0.05
    world_share = np.mean([k == "world" for k in kinds if k is not None])
    assert abs(world_share - 0.25) <= 0.08
    assert set(kinds) == {None, "world", "pitch_shift"}
    # a disabled kind is never drawn; disabled blending gives real items only
    only_world = dict(synth, pitch_shift={"enabled": False, "weight": 0.75})
    assert {synthetic.draw_synthetic_kind(rng, only_world) for _ in range(200)} == {None, "world"}
    assert {synthetic.draw_synthetic_kind(rng, dict(synth, enabled=False)) for _ in range(50)} == {None}
    # same rng seed, same draws
    again = np.random.default_rng(7)
    assert kinds == [synthetic.draw_synthetic_kind(again, synth) for _ in range(1000)]


def test_blend_draws_resynthesis_with_its_weight_share():
    synth = {"enabled": True, "proportion": 1.0, "world": {"enabled": True, "weight": 0.2},
             "pitch_shift": {"enabled": True, "weight": 0.4}, "resynthesis": {"enabled": True, "weight": 0.4}}
    rng = np.random.default_rng(3)
    kinds = [synthetic.draw_synthetic_kind(rng, synth) for _ in range(2000)]
    assert set(kinds) == set(synthetic.SYNTHETIC_KINDS)
    assert abs(np.mean([k == "resynthesis" for k in kinds]) - 0.4) <= 0.04


# --------------------------------------------------------------------------- WORLD resynthesis

RESYNTH = {"enabled": True, "weight": 0.4, "semitones": [-12.0, 12.0], "contour": "labels", "smoothing_frames": 3,
           "gain_db_range": [0.0, 0.0], "min_voiced_fraction": 0.2}


def interior_voiced(f0):
    """Voiced frames with two voiced frames on each side."""
    return np.convolve(f0 > 0, np.ones(5), mode="same") == 5


def test_resynthesis_label_matches_reanalysis_and_moves_with_the_shift(renders):
    audio, f0, _ = renders[0]
    for semitones in (0.0, 7.0):
        out, label = synthetic.world_resynthesise(audio, f0, semitones)
        assert out.dtype == np.float32 and label.dtype == np.float32
        assert len(out) == len(audio) and len(label) == len(f0) and np.abs(out).max() <= 1.0
        np.testing.assert_allclose(label[f0 > 0], f0[f0 > 0] * 2 ** (semitones / 12), rtol=1e-5)
        ref = harvest(out)
        ok = interior_voiced(label) & (ref > 0)
        assert np.median(cents(ref[ok], label[ok])) < 20.0
        assert np.median(1200 * np.log2(ref[ok] / f0[ok])) == pytest.approx(100 * semitones, abs=20.0)


def test_resynthesis_clip_uncertain_frames_determinism_and_range(renders):
    audio, f0, _ = renders[1]
    f0 = f0.copy()
    voiced, gap = np.flatnonzero(f0 > 0), np.flatnonzero(interior_voiced(f0))[0]
    f0[gap] = np.nan  # a short gap inside a voiced run: filled and resynthesised voiced
    f0[: voiced[0]] = np.nan  # a long uncertain lead-in: resynthesised unvoiced, label exactly 0
    a1, l1 = synthetic.resynthesis_clip(audio, f0, np.random.default_rng(4), RESYNTH)
    a2, l2 = synthetic.resynthesis_clip(audio, f0, np.random.default_rng(4), RESYNTH)
    assert np.array_equal(a1, a2) and np.array_equal(l1, l2)
    assert not np.isnan(l1).any() and np.all(l1[: voiced[0]] == 0) and l1[gap] > 0
    high = f0 * np.float32(900.0 / np.nanmax(f0))  # already near the top of the range: +12 is narrowed
    _, label = synthetic.resynthesis_clip(audio, high, np.random.default_rng(0), dict(RESYNTH, semitones=[12.0, 12.0]))
    assert label.max() <= 1000.0 * (1 + 1e-5) and label[label > 0].min() >= 50.0
    sparse = np.zeros_like(f0)
    sparse[:3] = 150.0
    assert synthetic.resynthesis_clip(audio, sparse, np.random.default_rng(0), RESYNTH) is None


def test_a_target_pitch_range_gives_each_of_its_octaves_as_many_voices_within_the_semitone_bounds():
    rng = np.random.default_rng(0)
    voice = np.array([130.0, 160.0, 200.0])  # median 160 Hz
    shifts = np.array([synthetic._draw_shift(rng, voice, [-48.0, 48.0], [60.0, 960.0]) for _ in range(4000)])
    medians = 160.0 * 2 ** (shifts / 12)
    assert medians.min() >= 60.0 * (1 - 1e-6) and medians.max() <= 960.0 * (1 + 1e-6)
    per_octave = np.histogram(np.log2(medians / 60.0), bins=4, range=(0, 4))[0] / len(medians)
    np.testing.assert_allclose(per_octave, 0.25, atol=0.03)  # uniform semitones would centre them on 160 Hz
    bounded = np.array([synthetic._draw_shift(rng, voice, [-2.0, 2.0], [60.0, 960.0]) for _ in range(400)])
    assert bounded.min() == -2.0 and bounded.max() == 2.0  # targets beyond the bounds stop at them
    lowest = synthetic._draw_shift(rng, voice, [-48.0, 48.0], [20.0, 20.0])
    assert 130.0 * 2 ** (lowest / 12) == pytest.approx(50.0)  # and the clip stays in F0_RANGE_HZ


def test_both_shifting_kinds_move_the_clip_to_the_target_pitch(renders):
    audio, f0, _ = renders[0]
    target = dict(semitones=[-36.0, 36.0], target_pitch_range=[70.0, 70.0])
    _, shifted = synthetic.pitch_shift_clip(audio, f0, np.random.default_rng(0), dict(SHIFT, **target))
    out, resynthesised = synthetic.resynthesis_clip(audio, f0, np.random.default_rng(0), dict(RESYNTH, **target))
    for label in (shifted, resynthesised):
        assert np.median(label[label > 0]) == pytest.approx(70.0, rel=1e-4)
    ref = harvest(out)  # the resynthesised audio is at that pitch, not only its label
    ok = interior_voiced(resynthesised) & (ref > 0)
    assert np.median(cents(ref[ok], resynthesised[ok])) < 20.0


def test_resynthesis_with_worlds_contour_voices_what_the_labels_left_out(renders):
    audio, f0, _ = renders[2]
    labels = f0.copy()
    dropped = np.flatnonzero(interior_voiced(f0))[::2]
    labels[dropped] = 0.0  # labels that under-voice the clip: every other interior voiced frame left out
    flat = dict(RESYNTH, semitones=[5.0, 5.0])
    _, from_labels = synthetic.resynthesis_clip(audio, labels, np.random.default_rng(0), flat)
    out, from_world = synthetic.resynthesis_clip(audio, labels, np.random.default_rng(0), dict(flat, contour="world"))
    assert np.all(from_labels[dropped] == 0)
    assert np.mean(from_world[dropped] > 0) > 0.9  # the clip is periodic there, so WORLD's contour voices them
    shifted = f0[dropped] * 2 ** (5 / 12)
    assert np.median(cents(from_world[dropped][from_world[dropped] > 0], shifted[from_world[dropped] > 0])) < 20.0
    ref = harvest(out)  # and the label is the resynthesised audio's pitch
    ok = interior_voiced(from_world) & (ref > 0)
    assert np.median(cents(ref[ok], from_world[ok])) < 20.0
    assert np.mean(from_world[f0 == 0] > 0) < 0.2  # the renders' noise and silence stay mostly unvoiced
