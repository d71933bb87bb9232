"""Training data whose F0 is known by construction, and label-preserving audio augmentation.

Everything here works on the repo's frame grid: 24 kHz mono float32 audio, hop 300 samples
(12.5 ms), a clip of N samples has 1 + N // 300 frames, frame i is centred at sample 300 * i.
F0 arrays are float32 Hz on that grid, 0 = unvoiced. Every random choice comes from the numpy
Generator `rng` passed in, so the same seed gives the same output.

Public surface (used by meldataset.py):
  draw_synthetic_kind(rng, synth_params)            -> 'world' | 'pitch_shift' | None
  render_world_utterance(rng, world_params)         -> (audio, f0): speech-like WORLD rendering
  pitch_shift_clip(audio, f0, rng, shift_params)    -> (audio, f0) or None
  build_augmenter(aug_params, babble_source=None)   -> augment(audio, rng) -> audio
plus the single augmentation steps (add_noise, apply_reverb, band_limit, apply_gain).
"""

import contextlib
import random

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.signal import fftconvolve

from audio import HOP_LENGTH, SAMPLE_RATE, num_frames  # the repo's one frame grid

FRAME_MS = 1000.0 * HOP_LENGTH / SAMPLE_RATE

# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def _uniform(rng, bounds):
    lo, hi = float(bounds[0]), float(bounds[1])
    return lo if hi <= lo else float(rng.uniform(lo, hi))


def _log_uniform(rng, bounds):
    lo, hi = float(bounds[0]), float(bounds[1])
    return lo if hi <= lo else float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _db_to_amplitude(db):
    return 10.0 ** (db / 20.0)


def _rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def _peak_limit(audio, limit=0.999):
    """Scale down (never up) so that |audio| <= limit: no clipping beyond [-1, 1]."""
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    return audio * (limit / peak) if peak > limit else audio


# ---------------------------------------------------------------------------------------------
# Blending: is an item synthetic, and which kind
# ---------------------------------------------------------------------------------------------


def draw_synthetic_kind(rng, synth_params):
    """'world', 'pitch_shift' or None (use the real item), for one item with its own rng.

    With probability `proportion` the item is synthetic; its kind is then drawn among the
    enabled kinds (`world`, `pitch_shift`) in proportion to their `weight`s. None when
    synthetic data is disabled or no kind is enabled with a positive weight. Whether the split
    should use synthetic data at all (`apply_to_validation`) is the caller's decision.
    """
    if not synth_params or not synth_params.get("enabled", False):
        return None
    kinds = [
        (name, float(synth_params[name].get("weight", 1.0)))
        for name in ("world", "pitch_shift")
        if isinstance(synth_params.get(name), dict) and synth_params[name].get("enabled", False)
    ]
    kinds = [(name, weight) for name, weight in kinds if weight > 0]
    if not kinds or rng.random() >= float(synth_params.get("proportion", 0.0)):
        return None
    weights = np.array([weight for _, weight in kinds])
    return kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))][0]


# ---------------------------------------------------------------------------------------------
# Pitch shifting real clips
# ---------------------------------------------------------------------------------------------


def pitch_shift_clip(audio, f0, rng, shift_params):
    """Pitch-shift a real clip by a random number of semitones and scale its F0 label to match.

    audio: 24 kHz mono; f0: its label on the repo grid (Hz, 0 = unvoiced). The shift is uniform
    in `semitones`, the gain uniform in `gain_db_range` (dB; the result is scaled down if it
    would clip). Returns (audio float32 of the same length, f0 * 2**(st/12) float32, unvoiced
    frames stay 0), or None when fewer than `min_voiced_fraction` of the frames are voiced.
    """
    import librosa  # imported here: only this path needs it, and it is slow to import

    f0 = np.asarray(f0, dtype=np.float32)
    voiced = f0 > 0
    if len(f0) == 0 or voiced.mean() < float(shift_params.get("min_voiced_fraction", 0.0)):
        return None
    semitones = _uniform(rng, shift_params.get("semitones", [0.0, 0.0]))
    gain_db = _uniform(rng, shift_params.get("gain_db_range", [0.0, 0.0]))
    audio = np.asarray(audio, dtype=np.float32)
    shifted = librosa.effects.pitch_shift(audio, sr=SAMPLE_RATE, n_steps=semitones)
    shifted = librosa.util.fix_length(shifted, size=len(audio))  # pitch_shift keeps it; be sure
    shifted = _peak_limit(shifted * _db_to_amplitude(gain_db))
    new_f0 = np.where(voiced, f0 * np.float32(2.0 ** (semitones / 12.0)), np.float32(0.0))
    return shifted.astype(np.float32), new_f0.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# WORLD rendering of speech-like utterances
# ---------------------------------------------------------------------------------------------
# WORLD runs on a grid 5x finer than the labels (2.5 ms): label frame i is WORLD frame 5*i, the
# voicing of WORLD frames 5i-2 .. 5i+2 is that of label frame i, so WORLD's voiced/unvoiced
# switch (half-way between its frames) falls exactly on the label cell edges, sample 300*i +- 150.
# On the label grid itself WORLD would glide F0 down to half its value over the half frame after
# each voiced frame; on the fine grid that glide is confined to 1.25 ms.

_SUB = 5  # WORLD frames per label frame
_FFT_SIZE = 1024  # pyworld.get_cheaptrick_fft_size(24000)
_FREQS = np.fft.rfftfreq(_FFT_SIZE, 1.0 / SAMPLE_RATE)  # 513 bins
_F0_LIMITS = (40.0, 1100.0)  # Hz: hard limits of any rendered contour

# frame codes of the utterance plan
SIL, VOWEL, NASAL, VBAR, VFRIC, FRIC, BURST, ASPIR = range(8)
_VOICED_CODES = (VOWEL, NASAL, VBAR, VFRIC)

# adult-male reference formants F1-F3 (Hz), roughly Peterson & Barney / Hillenbrand averages
_VOWELS = np.array([
    [270, 2290, 3010], [390, 1990, 2550], [480, 2090, 2690], [530, 1840, 2480], [660, 1720, 2410],
    [730, 1090, 2440], [570, 840, 2410], [500, 910, 2450], [440, 1020, 2240], [300, 870, 2240],
    [640, 1190, 2390], [490, 1350, 1690], [500, 1500, 2500],
], dtype=float)
# voiced sonorant consonants: (frame code, F1-F3 locus)
_SONORANTS = [
    (NASAL, (270, 1100, 2200)), (NASAL, (270, 1600, 2600)), (NASAL, (270, 2000, 2700)),
    (VOWEL, (350, 1100, 2700)), (VOWEL, (350, 1150, 1650)), (VOWEL, (300, 700, 2300)),
    (VOWEL, (280, 2200, 3000)),
]
# obstruent places: F1-F3 locus, burst spectral peak range (Hz)
_PLACES = [((250, 900, 2300), (600, 1800)), ((250, 1700, 2700), (3000, 5000)),
           ((250, 2100, 2500), (1600, 3000))]
# voiceless fricatives: (peak Hz range, rising sharpness dB/oct^2, falling dB/oct, level dB range)
_FRICATIVES = [((4500, 8000), 12.0, 6.0, (-18, -8)), ((2300, 3600), 9.0, 9.0, (-18, -8)),
               ((5000, 9000), 2.0, 3.0, (-30, -20))]


class _Plan:
    """Per-label-frame description of an utterance, filled segment by segment."""

    def __init__(self):
        self.code, self.level, self.fric_level = [], [], []
        self.fric_peak, self.fric_rise, self.fric_fall = [], [], []
        self.knots_t, self.knots_f = [], []  # formant targets (frame position, F1-F3)

    def __len__(self):
        return len(self.code)

    def add(self, code, n, level_db, fric=None, fric_level_db=-np.inf, locus=None):
        start = len(self.code)
        self.code += [code] * n
        self.level += list(np.full(n, level_db, dtype=float))
        peak, rise, fall = fric if fric is not None else (4000.0, 3.0, 3.0)
        self.fric_peak += [peak] * n
        self.fric_rise += [rise] * n
        self.fric_fall += [fall] * n
        self.fric_level += [fric_level_db] * n
        if locus is not None:
            self.knots_t.append(start + 0.5 * (n - 1))
            self.knots_f.append(np.asarray(locus, dtype=float))
        return start

    def copy(self):
        other = _Plan()
        other.__dict__ = {key: list(value) for key, value in self.__dict__.items()}
        return other


def _add_syllable(plan, rng, scale):
    """Append one syllable (optional onset consonant, vowel, optional coda) to the plan."""
    def place():
        return _PLACES[rng.integers(len(_PLACES))]

    def voiceless_fricative():
        if rng.random() < 0.2:  # /h/: noise shaped by the surrounding vowel's formants
            plan.add(ASPIR, int(rng.integers(3, 8)), _uniform(rng, (-26, -16)))
            return
        peak, rise, fall, level = _FRICATIVES[rng.integers(len(_FRICATIVES))]
        n = int(rng.integers(5, 13))
        plan.add(FRIC, n, _uniform(rng, level), fric=(_uniform(rng, peak) * scale, rise, fall), locus=place()[0])

    def voiceless_stop():
        locus, burst = place()
        plan.add(SIL, int(rng.integers(3, 8)), -np.inf, locus=locus)  # closure (floor set later)
        plan.add(BURST, 1, _uniform(rng, (-16, -6)), fric=(_uniform(rng, burst) * scale, 3.0, 4.0))
        if rng.random() < 0.7:
            plan.add(ASPIR, int(rng.integers(1, 5)), _uniform(rng, (-24, -14)))

    def sonorant():
        code, locus = _SONORANTS[rng.integers(len(_SONORANTS))]
        plan.add(code, int(rng.integers(3, 8)), _uniform(rng, (-12, -4)), locus=locus)

    def voiced_fricative():
        peak, rise, fall, _ = _FRICATIVES[rng.integers(2)]
        plan.add(VFRIC, int(rng.integers(3, 8)), _uniform(rng, (-22, -14)),
                 fric=(_uniform(rng, peak) * scale, rise, fall), fric_level_db=_uniform(rng, (-26, -14)),
                 locus=place()[0])

    onset = rng.choice(6, p=[0.22, 0.18, 0.16, 0.10, 0.24, 0.10])
    if onset == 1:
        voiceless_fricative()
    elif onset == 2:
        voiceless_stop()
    elif onset == 3:  # voiced stop: voice bar during the closure
        plan.add(VBAR, int(rng.integers(2, 6)), _uniform(rng, (-26, -16)), locus=place()[0])
    elif onset == 4:
        sonorant()
    elif onset == 5:
        voiced_fricative()

    stressed = rng.random() < 0.5
    n = int(rng.integers(8, 23)) if stressed else int(rng.integers(5, 11))
    level = _uniform(rng, (-3, 0)) if stressed else _uniform(rng, (-9, -3))
    start = plan.add(VOWEL, n, level)
    first = _VOWELS[rng.integers(len(_VOWELS))]
    if rng.random() < 0.25:  # diphthong: glide to a second target
        plan.knots_t += [start + 0.25 * (n - 1), start + 0.8 * (n - 1)]
        plan.knots_f += [first, _VOWELS[rng.integers(len(_VOWELS))]]
    else:
        plan.knots_t.append(start + 0.5 * (n - 1))
        plan.knots_f.append(first)

    coda = rng.choice(5, p=[0.45, 0.2, 0.15, 0.15, 0.05])
    if coda == 1:
        sonorant()
    elif coda == 2:
        voiceless_fricative()
    elif coda == 3:
        locus, burst = place()
        plan.add(SIL, int(rng.integers(2, 6)), -np.inf, locus=locus)
        if rng.random() < 0.5:
            plan.add(BURST, 1, _uniform(rng, (-20, -10)), fric=(_uniform(rng, burst) * scale, 3.0, 4.0))
    elif coda == 4:
        voiced_fricative()


def _plan_utterance(rng, n_frames, scale):
    """Silence, phrases of syllables separated by pauses, silence: exactly n_frames frames."""
    plan = _Plan()
    plan.add(SIL, int(rng.integers(3, 17)), -np.inf)
    trail = int(rng.integers(3, 17))
    while True:
        trial = plan.copy()
        if len(plan) > 8 and rng.random() < 0.12:
            trial.add(SIL, int(rng.integers(8, 31)), -np.inf)  # pause between phrases
        _add_syllable(trial, rng, scale)
        if len(trial) + trail > n_frames:
            break
        plan = trial
    if not any(code in _VOICED_CODES for code in plan.code):  # too short for a syllable: one vowel
        plan = _Plan()
        edge = max(1, min(3, n_frames // 4))
        plan.add(SIL, edge, -np.inf)
        plan.add(VOWEL, max(1, n_frames - 2 * edge), 0.0, locus=_VOWELS[rng.integers(len(_VOWELS))])
    plan.add(SIL, n_frames - len(plan), -np.inf)
    return plan


def _voiced_runs(voiced):
    """(start, stop) of each run of True."""
    edges = np.diff(np.concatenate([[0], voiced.astype(np.int8), [0]]))
    return list(zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]))


def _resonance_db(f, freq, bw):
    """|H(f)|^2 in dB of an analog pole pair at `freq` with bandwidth `bw`, unity gain at 0 Hz."""
    a = (0.5 * bw) ** 2
    return 10.0 * np.log10((a + freq**2) ** 2 / ((a + (f - freq) ** 2) * (a + (f + freq) ** 2)))


def _normalise_rows(power):
    """Scale each frame's spectrum to mean power 1 over the bins (its level is then its power)."""
    return power / np.maximum(power.mean(axis=1, keepdims=True), 1e-30)


def _spectra(plan, speaker, voiced, level_db, breath_db, damping):
    """Spectral envelope (power) and aperiodicity (0..1) per label frame, shape (frames, 513)."""
    code = np.asarray(plan.code)
    n = len(code)
    f = _FREQS[None, :]
    # formant tracks: targets interpolated, smoothed over 5 frames (coarticulation), speaker-scaled
    knots_t = np.asarray(plan.knots_t)
    knots_f = np.asarray(plan.knots_f)
    order = np.argsort(knots_t, kind="stable")
    frames = np.arange(n)
    tracks = np.stack([np.interp(frames, knots_t[order], knots_f[order, k]) for k in range(3)], axis=1)
    pad = np.pad(tracks, ((2, 2), (0, 0)), mode="edge")
    tracks = np.stack([np.convolve(pad[:, k], np.ones(5) / 5.0, mode="valid") for k in range(3)], axis=1)
    formants = np.empty((n, 5))
    formants[:, :3] = tracks * speaker["scale"] * speaker["formant_jitter"]
    formants[:, 3] = np.maximum(speaker["f4"], formants[:, 2] + 300.0)
    formants[:, 4] = np.maximum(speaker["f5"], formants[:, 3] + 500.0)
    bandwidths = speaker["bandwidths"][None, :] * damping[:, None]
    tilt = np.full((n, 1), speaker["tilt"])
    nasal, vbar = code == NASAL, (code == VBAR) | (code == VFRIC)
    aspir = code == ASPIR
    formants[nasal, 0] = 270.0 * speaker["scale"]
    bandwidths[nasal] *= [2.0, 2.5, 2.5, 2.0, 2.0]
    formants[vbar, 0] = 220.0 * np.sqrt(speaker["scale"])
    bandwidths[vbar, 0] = 150.0
    tilt[vbar] = 16.0  # voice bar: strongly low-passed
    bandwidths[aspir] *= [4.0, 2.0, 1.5, 1.0, 1.0]  # aspiration: open glottis damps F1
    tilt[aspir] = 0.4 * speaker["tilt"]
    env_db = -tilt * np.log2(1.0 + f / speaker["tilt_corner"])
    for k in range(5):
        env_db = env_db + _resonance_db(f, formants[:, k:k + 1], bandwidths[:, k:k + 1])
    env_db[nasal] += -_resonance_db(f, speaker["nasal_zero"], 200.0)  # antiresonance
    env_db -= env_db.max(axis=1, keepdims=True)
    floor_db = speaker["hf_floor_db"] - 4.0 * np.log2(1.0 + f / 2000.0)
    formant_power = _normalise_rows(10.0 ** (env_db / 10.0) + 10.0 ** (floor_db / 10.0))
    # frication noise: rises to a broad peak and falls above it (dB/oct^2 below, dB/oct above)
    peak = np.asarray(plan.fric_peak)[:, None]
    octaves = np.log2(np.maximum(f, 20.0) / peak)
    fric_db = np.where(octaves < 0, -np.asarray(plan.fric_rise)[:, None] * octaves**2,
                       np.asarray(plan.fric_fall)[:, None] * octaves * -1.0)
    fric_power = _normalise_rows(10.0 ** (np.maximum(fric_db, -70.0) / 10.0))

    power = np.ones((n, len(_FREQS)))  # silence: flat noise at the floor level
    uses_formants = np.isin(code, (VOWEL, NASAL, VBAR, ASPIR))
    power[uses_formants] = formant_power[uses_formants]
    noisy = (code == FRIC) | (code == BURST)
    power[noisy] = fric_power[noisy]
    level = 10.0 ** (level_db[:, None] / 10.0)
    sp = power * level
    # aperiodicity: voiced frames periodic in the low band, breathier/noisier above a cutoff
    ap_db = breath_db[:, None] + (speaker["ap_high_db"] - breath_db[:, None]) / (
        1.0 + np.exp(-4.0 * np.log2(np.maximum(f, 20.0) / speaker["ap_cutoff"])))
    ap = 10.0 ** (np.minimum(ap_db, -0.05) / 10.0)
    vfric = code == VFRIC
    if vfric.any():  # voice bar (periodic) plus frication (noise)
        noise = fric_power[vfric] * 10.0 ** (np.asarray(plan.fric_level)[vfric, None] / 10.0)
        periodic = formant_power[vfric] * level[vfric] * (1.0 - ap[vfric])
        sp[vfric] = periodic + noise + formant_power[vfric] * level[vfric] * ap[vfric]
        ap[vfric] = 1.0 - periodic / sp[vfric]
    low_band = _FREQS < 1500.0
    ap[:, low_band] = np.minimum(ap[:, low_band], 0.2)  # labelled voiced => clearly periodic
    ap[~voiced] = 1.0
    return sp, ap


def _f0_contour(rng, n_fine, base, world_params, plan, voiced):
    """Continuous F0 (Hz) on the WORLD grid around `base`: intonation drift, vibrato, jitter."""
    modulation = world_params.get("modulation", {}) or {}
    dt = FRAME_MS / _SUB / 1000.0
    t = np.arange(n_fine) * dt
    total = max(t[-1], dt)
    drift_max = float(modulation.get("drift_cents", 300.0))
    drift_span = drift_max * rng.uniform(0.3, 1.0)
    knots = [0.0]
    while knots[-1] < total:
        knots.append(knots[-1] + rng.uniform(0.2, 0.6))
    knots = np.asarray(knots)
    declination = rng.uniform(0.0, 0.5) * drift_span
    values = rng.uniform(-0.5, 0.5, len(knots)) * drift_span + declination * (0.5 - knots / knots[-1])
    cents = PchipInterpolator(knots, np.clip(values, -drift_max / 2, drift_max / 2))(t)
    rate = _uniform(rng, modulation.get("vibrato_rate_hz", [4.0, 7.0]))
    depth = _uniform(rng, modulation.get("vibrato_depth_cents", [0.0, 60.0]))
    depth_envelope = PchipInterpolator(knots, rng.uniform(0.3, 1.0, len(knots)))(t)
    cents += depth * depth_envelope * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    jitter = rng.uniform(0.0, 1.0) * float(modulation.get("jitter_cents", 5.0))
    coarse = rng.normal(0.0, 1.0, len(voiced)) * jitter
    cents += np.interp(np.arange(n_fine) / _SUB, np.arange(len(voiced)), coarse)
    # micro-prosody: F0 starts a little higher right after a voiceless obstruent
    code = np.asarray(plan.code)
    for start, _ in _voiced_runs(voiced):
        if start > 0 and code[start - 1] in (FRIC, BURST, ASPIR):
            onset = start * FRAME_MS / 1000.0
            after = np.clip(t - onset, 0.0, None)
            cents += rng.uniform(10.0, 80.0) * np.exp(-after / 0.04) * (t >= onset - 0.00625)
    return np.clip(base * 2.0 ** (cents / 1200.0), *_F0_LIMITS)


def _speaker(rng, base_f0):
    """Per-utterance voice: vocal-tract scaling (tied loosely to pitch: ~1 for a 110 Hz adult
    male, ~1.2 at 220 Hz, ~1.35 for children), spectral tilt, breathiness, silence level."""
    scale = float(np.clip(1.0 + 0.18 * np.log2(base_f0 / 110.0) + rng.normal(0.0, 0.06), 0.8, 1.45))
    return {
        "scale": scale,
        "formant_jitter": rng.uniform(0.93, 1.07, 3),
        "f4": 3500.0 * scale * rng.uniform(0.95, 1.05),
        "f5": 4500.0 * scale * rng.uniform(0.95, 1.05),
        "bandwidths": np.array([rng.uniform(50, 100), rng.uniform(70, 130), rng.uniform(110, 200),
                                rng.uniform(200, 350), rng.uniform(250, 450)]),
        "tilt": rng.uniform(3.0, 9.0),  # dB/octave glottal-plus-radiation slope
        "tilt_corner": rng.uniform(150.0, 400.0),
        "nasal_zero": rng.uniform(900.0, 1800.0) * scale,
        "hf_floor_db": rng.uniform(-65.0, -50.0),
        "breath_db": rng.uniform(-40.0, -14.0),  # low-band aperiodicity: breathiness
        "ap_high_db": rng.uniform(-10.0, -1.0),
        "ap_cutoff": rng.uniform(2000.0, 6000.0),
        "floor_db": rng.uniform(-75.0, -45.0),  # silence (recording noise floor) re the vowels
    }


def _levels(rng, plan, voiced, speaker):
    """Per frame: level (dB) with onset/offset ramps on voiced runs, breathiness (low-band
    aperiodicity, dB) and formant damping (bandwidth factor: the glottis opens at offsets)."""
    level = np.asarray(plan.level, dtype=float)
    breath = np.full(len(level), speaker["breath_db"]) + rng.normal(0.0, 2.0, len(level))
    damping = np.ones(len(level))
    code = np.asarray(plan.code)
    for start, stop in _voiced_runs(voiced):
        n = stop - start
        if start == 0 or code[start - 1] in (SIL, FRIC, ASPIR, BURST):
            ramp = int(min(rng.integers(1, 5), max(1, n // 3)))
            level[start:start + ramp] += np.linspace(-_uniform(rng, (4, 12)), 0.0, ramp + 1)[:-1]
            damping[start:start + ramp] = np.linspace(_uniform(rng, (1, 2)), 1.0, ramp + 1)[:-1]
        if stop == len(level) or code[stop] in (SIL, FRIC, ASPIR, BURST):
            ramp = int(min(rng.integers(2, 6), max(1, n // 3)))
            level[stop - ramp:stop] += np.linspace(0.0, -_uniform(rng, (6, 15)), ramp + 1)[1:]
            breath[stop - ramp:stop] += np.linspace(0.0, _uniform(rng, (0, 10)), ramp + 1)[1:]
            damping[stop - ramp:stop] = np.linspace(1.0, _uniform(rng, (2, 3)), ramp + 1)[1:]
    level[code == SIL] = speaker["floor_db"]
    return level, np.minimum(breath, -8.0), damping


def _to_world_grid(values, voiced, code):
    """Label-frame rows -> WORLD-grid rows by linear interpolation, except across a voicing
    change or a burst, where each WORLD frame takes its own label cell's row (sharp edge)."""
    n = len(voiced)
    j = np.arange((n - 1) * _SUB + 1)
    left = j // _SUB
    right = np.minimum(left + 1, n - 1)
    w = (j % _SUB) / _SUB
    hard = (voiced[left] != voiced[right]) | (code[left] == BURST) | (code[right] == BURST)
    w = np.where(hard, (w > 0.5).astype(float), w)[:, None]
    return values[left] * (1.0 - w) + values[right] * w


def render_world_utterance(rng, world_params):
    """Render a speech-like utterance with WORLD; returns (audio, f0) with F0 exact by construction.

    world_params: the `synthetic_data.world` config block (`duration` s, `pitch_range` Hz with
    log-uniform base pitch, `gain_db_range` peak level dBFS, `modulation` with vibrato rate/depth,
    intonation drift and jitter; other keys ignored). The utterance is silence, phrases of
    syllables (vowels with moving formants, nasals/approximants, voice bars, voiced fricatives =
    voiced; voiceless fricatives, /h/, stop closures, bursts, aspiration = unvoiced) and pauses,
    for one random speaker (vocal-tract length, spectral tilt, breathiness). Voiced runs have
    amplitude ramps but every frame labelled voiced is clearly periodic; unvoiced frames are
    noise only (WORLD with F0 = 0). Returns audio float32 at 24 kHz and f0 float32 with
    1 + len(audio) // 300 frames, frame i describing the audio around sample 300 * i.
    """
    import pyworld

    n_samples = max(HOP_LENGTH, int(round(_uniform(rng, world_params.get("duration", [1.0, 3.0])) * SAMPLE_RATE)))
    n_frames = num_frames(n_samples)
    base_f0 = _log_uniform(rng, world_params.get("pitch_range", [70.0, 450.0]))
    speaker = _speaker(rng, base_f0)
    plan = _plan_utterance(rng, n_frames + 1, speaker["scale"])  # +1: WORLD needs the next frame
    code = np.asarray(plan.code)
    voiced = np.isin(code, _VOICED_CODES)
    level_db, breath_db, damping = _levels(rng, plan, voiced, speaker)
    sp, ap = _spectra(plan, speaker, voiced, level_db, breath_db, damping)

    f0_fine = _f0_contour(rng, (len(code) - 1) * _SUB + 1, base_f0, world_params, plan, voiced)
    voiced_fine = voiced[(np.arange(len(f0_fine)) + _SUB // 2) // _SUB]
    audio = pyworld.synthesize(np.where(voiced_fine, f0_fine, 0.0), _to_world_grid(sp, voiced, code),
                               np.clip(_to_world_grid(ap, voiced, code), 1e-6, 1.0),
                               SAMPLE_RATE, FRAME_MS / _SUB)[:n_samples]
    peak = float(np.max(np.abs(audio))) or 1.0
    audio = audio * (_db_to_amplitude(_uniform(rng, world_params.get("gain_db_range", [-12.0, 0.0]))) / peak)
    f0 = np.where(voiced[:n_frames], f0_fine[::_SUB][:n_frames], 0.0)
    return audio.astype(np.float32), f0.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Augmentation (labels unchanged)
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _global_random_from(rng):
    """Seed Python's and numpy's global generators (used inside audiomentations) from rng, and
    restore their previous states afterwards, so the result depends on rng alone."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    seed = int(rng.integers(2**32))
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


_NOISE_DECAY_DB_PER_OCTAVE = {"white": 0.0, "pink": -3.01}


def _babble(rng, n_samples, babble_source):
    """Unit-RMS sum of 2-4 clips from babble_source (a list of arrays or a callable(rng) -> array),
    each looped or cropped to n_samples at a random offset."""
    mix = np.zeros(n_samples)
    for _ in range(int(rng.integers(2, 5))):
        if callable(babble_source):
            clip = np.asarray(babble_source(rng), dtype=np.float64).reshape(-1)
        else:
            clip = np.asarray(babble_source[int(rng.integers(len(babble_source)))], dtype=np.float64).reshape(-1)
        if len(clip) == 0 or _rms(clip) == 0.0:
            continue
        start = int(rng.integers(len(clip)))
        clip = np.resize(np.roll(clip, -start), n_samples)  # loops short clips
        mix += clip / _rms(clip)
    rms = _rms(mix)
    return mix / rms if rms > 0 else mix


def add_noise(audio, rng, snr_db, color="white", babble_source=None):
    """Add white, pink (audiomentations AddColorNoise) or babble noise at `snr_db` dB relative to
    the RMS of the whole clip. Same length and float32; not yet peak-limited."""
    audio = np.asarray(audio, dtype=np.float32)
    if color == "babble":
        if babble_source is None:
            raise ValueError("babble noise needs a babble_source (clips or callable(rng) -> clip)")
        noise = _babble(rng, len(audio), babble_source)
        return (audio + noise * (_rms(audio) / _db_to_amplitude(snr_db))).astype(np.float32)
    from audiomentations import AddColorNoise

    decay = _NOISE_DECAY_DB_PER_OCTAVE[color]
    transform = AddColorNoise(min_snr_db=snr_db, max_snr_db=snr_db, min_f_decay=decay,
                              max_f_decay=decay, p=1.0)
    with _global_random_from(rng):
        return transform(audio, SAMPLE_RATE).astype(np.float32)


def synthetic_rir(rng, rt60, drr_db):
    """Room impulse response: direct path at sample 0, sparse early reflections and an
    exponentially decaying (60 dB over rt60 s) noise tail with direct-to-reverberant ratio drr_db."""
    n = max(int(rt60 * SAMPLE_RATE), 64)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.908 * t / rt60)
    tail[: int(rng.uniform(0.002, 0.008) * SAMPLE_RATE)] = 0.0  # pre-delay before the diffuse tail
    early = rng.integers(int(0.001 * SAMPLE_RATE), int(0.03 * SAMPLE_RATE), size=6)
    tail[np.minimum(early, n - 1)] += rng.uniform(-1.0, 1.0, 6) * 3.0 * np.exp(-6.908 * early / SAMPLE_RATE / rt60)
    tail[0] = 0.0
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / max(np.sum(tail**2), 1e-12))
    tail[0] = 1.0
    return tail


def apply_reverb(audio, rng, rt60_range=(0.1, 0.5), drr_db_range=(0.0, 15.0)):
    """Convolve with a synthetic RIR (direct path at 0, so no delay); same length and RMS."""
    rir = synthetic_rir(rng, _uniform(rng, rt60_range), _uniform(rng, drr_db_range))
    wet = fftconvolve(np.asarray(audio, dtype=np.float64), rir)[: len(audio)]
    rms_in, rms_out = _rms(audio), _rms(wet)
    return (wet * (rms_in / rms_out if rms_out > 0 else 1.0)).astype(np.float32)


def band_limit(audio, rng, lowpass_hz=(3000.0, 11000.0), highpass_hz=(40.0, 200.0)):
    """Random zero-phase (no delay) low-pass, high-pass or both (audiomentations filters), with
    cutoffs uniform in the given ranges (Hz); a range of None leaves that filter out."""
    from audiomentations import HighPassFilter, LowPassFilter

    audio = np.asarray(audio, dtype=np.float32)
    if len(audio) < 64:  # too short for the filters' edge padding
        return audio
    choices = [(low, high) for low, high in ((True, False), (False, True), (True, True))
               if (lowpass_hz is not None or not low) and (highpass_hz is not None or not high)]
    low, high = choices[int(rng.integers(len(choices)))]
    transforms = []
    if low:
        cutoff, rolloff = _uniform(rng, lowpass_hz), int(rng.choice([12, 24]))
        transforms.append(LowPassFilter(min_cutoff_freq=cutoff, max_cutoff_freq=cutoff, min_rolloff=rolloff,
                                        max_rolloff=rolloff, zero_phase=True, p=1.0))
    if high:
        cutoff, rolloff = _uniform(rng, highpass_hz), int(rng.choice([12, 24]))
        transforms.append(HighPassFilter(min_cutoff_freq=cutoff, max_cutoff_freq=cutoff, min_rolloff=rolloff,
                                         max_rolloff=rolloff, zero_phase=True, p=1.0))
    with _global_random_from(rng):
        for transform in transforms:
            audio = transform(audio, SAMPLE_RATE)
    return audio.astype(np.float32)


def apply_gain(audio, rng, gain_db_range):
    """Random gain in dB (audiomentations Gain)."""
    from audiomentations import Gain

    gain = _uniform(rng, gain_db_range)
    with _global_random_from(rng):
        return Gain(min_gain_db=gain, max_gain_db=gain, p=1.0)(np.asarray(audio, dtype=np.float32), SAMPLE_RATE)


class Augmenter:
    """augment(audio, rng) -> audio: reverb, noise, band-limiting, gain, each applied with
    probability `probability`, then scaled down if it would clip. Picklable (DataLoader workers)."""

    def __init__(self, aug_params, babble_source=None):
        self.params = dict(aug_params or {})
        self.babble_source = babble_source
        types = list(self.params.get("noise_types", ["white", "pink", "babble"]))
        unknown = set(types) - {"white", "pink", "babble"}
        if unknown:
            raise ValueError(f"augmentation.noise_types: unknown {sorted(unknown)}; use white, pink, babble")
        self.noise_types = [kind for kind in types if kind != "babble" or babble_source is not None]

    def __call__(self, audio, rng):
        params = self.params
        audio = np.asarray(audio, dtype=np.float32)
        if not params.get("enabled", True) or len(audio) == 0:
            return audio
        p = float(params.get("probability", 0.5))
        if params.get("reverb", False) and rng.random() < p:
            audio = apply_reverb(audio, rng, params.get("reverb_rt60", (0.1, 0.5)))
        if self.noise_types and params.get("snr_db_range") is not None and rng.random() < p:
            color = self.noise_types[int(rng.integers(len(self.noise_types)))]
            audio = add_noise(audio, rng, _uniform(rng, params["snr_db_range"]), color, self.babble_source)
        if params.get("band_limit", False) and rng.random() < p:
            audio = band_limit(audio, rng, params.get("lowpass_hz", (3000.0, 11000.0)),
                               params.get("highpass_hz", (40.0, 200.0)))
        if params.get("gain_db_range") is not None and rng.random() < p:
            audio = apply_gain(audio, rng, params["gain_db_range"])
        return _peak_limit(audio).astype(np.float32)


def build_augmenter(aug_params, babble_source=None):
    """The augmentation callable `augment(audio, rng) -> audio` for the `augmentation` config block.

    babble_source: clips for babble noise, a list of 24 kHz arrays or a callable(rng) -> array
    (picklable if used in DataLoader workers); without it babble is left out of the noise types.
    Output: float32, same length, within [-1, 1]. With `enabled: false` audio is returned as is.
    """
    return Augmenter(aug_params, babble_source)
