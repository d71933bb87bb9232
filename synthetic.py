"""Training data whose F0 is known by construction: WORLD renders, pitch-shifted and resynthesised real clips.

Everything here works on the repo's frame grid: 24 kHz mono float32 audio, hop 300 samples
(12.5 ms), a clip of N samples has 1 + N // 300 frames, frame i is centred at sample 300 * i.
F0 arrays are float32 Hz on that grid, 0 = unvoiced. Every random choice comes from the numpy
Generator `rng` passed in, so the same seed gives the same output.

Public surface (used by meldataset.py):
  draw_synthetic_kind(rng, synth_params)            -> one of SYNTHETIC_KINDS or None
  render_world_utterance(rng, world_params)         -> (audio, f0): speech-like WORLD rendering
  pitch_shift_clip(audio, f0, rng, shift_params)    -> (audio, f0) or None
  resynthesis_clip(audio, f0, rng, resynth_params)  -> (audio, f0) or None: a real clip through WORLD
  world_resynthesise(audio, f0, semitones)          -> (audio, f0): WORLD resynthesis with a given contour
Label-preserving augmentation (noise, reverb, band-limiting, gain) is augment.py's.
"""

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.ndimage import median_filter

from audio import FRAME_PERIOD_MS, HOP_LENGTH, SAMPLE_RATE, frame_times, num_frames  # the repo's one frame grid
from augment import db_to_amplitude, peak_limit, uniform
from f0_backends import pyworld_f0

F0_RANGE_HZ = (50.0, 1000.0)  # the vocal range every F0 component covers (pitch shifts stay inside it)
RESYNTHESIS_CONTOURS = ("labels", "world")  # where resynthesis takes its F0 from (resynthesis_clip)
WORLD_D4C_THRESHOLD = 0.85  # D4C's default voicing threshold in WORLD, which exact-F0 resynthesis corpora inherit
SYNTHETIC_KINDS = ("world", "pitch_shift", "resynthesis")  # the synthetic_data blocks an item can be drawn from

# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def _log_uniform(rng, bounds):
    lo, hi = float(bounds[0]), float(bounds[1])
    return lo if hi <= lo else float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _too_little_voicing(f0, min_voiced_fraction):
    """Whether fewer than `min_voiced_fraction` of the frames are voiced (uncertain NaN frames are not)."""
    return len(f0) == 0 or np.mean(f0 > 0) < float(min_voiced_fraction)


def _draw_shift(rng, voiced_f0, semitones, target_pitch_range=None):
    """Semitones for a clip whose voiced F0 is voiced_f0 (Hz, all > 0): inside the range `semitones`, narrowed
    so voiced_f0 stays in F0_RANGE_HZ (no shift is always allowed, for a clip already outside it).

    Without `target_pitch_range` the shift is uniform in that range: a wide range pushes each clip towards
    both ends of the vocal range, but the shifted voices stay centred on the speakers' own pitch. With it
    ([low, high] Hz), the shift moves the clip's median voiced F0 to a target drawn log-uniform in it, clipped
    to the range: every octave of the target range then gets as many voices, whatever the speakers' pitch.
    """
    lowest, highest = float(voiced_f0.min()), float(voiced_f0.max())
    feasible = (min(12.0 * np.log2(F0_RANGE_HZ[0] / lowest), 0.0), max(12.0 * np.log2(F0_RANGE_HZ[1] / highest), 0.0))
    bounds = np.clip(semitones, *feasible)
    if target_pitch_range is None:
        return uniform(rng, bounds)
    to_target = 12.0 * np.log2(_log_uniform(rng, target_pitch_range) / float(np.median(voiced_f0)))
    return float(np.clip(to_target, *bounds))


# ---------------------------------------------------------------------------------------------
# Blending: is an item synthetic, and which kind
# ---------------------------------------------------------------------------------------------


def draw_synthetic_kind(rng, synth_params):
    """One of SYNTHETIC_KINDS or None (use the real item), for one item with its own rng.

    With probability `proportion` the item is synthetic; its kind is then drawn among the
    enabled kinds (`world`, `pitch_shift`, `resynthesis`) in proportion to their `weight`s. None when
    synthetic data is disabled or no kind is enabled with a positive weight. Whether the split
    should use synthetic data at all (`apply_to_validation`) is the caller's decision.
    """
    if not synth_params["enabled"]:
        return None
    kinds = [
        (name, float(synth_params[name]["weight"]))
        for name in SYNTHETIC_KINDS
        if synth_params[name]["enabled"]
    ]
    kinds = [(name, weight) for name, weight in kinds if weight > 0]
    if not kinds or rng.random() >= float(synth_params["proportion"]):
        return None
    weights = np.array([weight for _, weight in kinds])
    return kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))][0]


# ---------------------------------------------------------------------------------------------
# Pitch shifting real clips
# ---------------------------------------------------------------------------------------------


def pitch_shift_clip(audio, f0, rng, shift_params):
    """Pitch-shift a real clip by a random number of semitones and scale its F0 label to match.

    audio: 24 kHz mono; f0: its label on the repo grid (Hz, 0 = unvoiced, NaN = uncertain). The shift
    is drawn in `semitones` (towards a pitch in the optional `target_pitch_range`, _draw_shift), narrowed so
    the clip's voiced F0 stays inside F0_RANGE_HZ, the gain uniform in `gain_db_range` (dB;
    the result is scaled down if it would clip). Returns (audio float32 of the same length,
    f0 * 2**(st/12) float32, unvoiced frames stay 0 and uncertain ones NaN), or None when fewer than
    `min_voiced_fraction` of the frames are voiced.
    """
    import librosa  # imported here: only this path needs it, and it is slow to import

    f0 = np.asarray(f0, dtype=np.float32)
    if _too_little_voicing(f0, shift_params["min_voiced_fraction"]):
        return None
    semitones = _draw_shift(rng, f0[f0 > 0], shift_params["semitones"], shift_params.get("target_pitch_range"))
    gain_db = uniform(rng, shift_params["gain_db_range"])
    audio = np.asarray(audio, dtype=np.float32)
    shifted = librosa.effects.pitch_shift(audio, sr=SAMPLE_RATE, n_steps=semitones)
    shifted = librosa.util.fix_length(shifted, size=len(audio))  # pitch_shift keeps it; be sure
    shifted = peak_limit(shifted * db_to_amplitude(gain_db))
    new_f0 = f0 * np.float32(2.0 ** (semitones / 12.0))  # 0 stays unvoiced, NaN uncertain
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
CREAK_HZ = (50.0, 75.0)  # creak / vocal fry: the irregular low F0 a phrase-final voiced run may fall to
# Creak is irregular from one glottal cycle to the next (s.d. 40 cents, i.e. ~2.6 % mean absolute period
# change: several times modal voice's), never within a cycle: at 50-75 Hz a cycle outlasts a 12.5 ms frame,
# so frame-wise jitter would write label values no period in the signal has. Per frame at 60 cents, consensus
# labels matched only 71 % of such "exact" frames; per cycle at 40 cents, with the fall below, 97 %.
CREAK_JITTER_CENTS = 40.0
CREAK_FALL_FRAMES = 3  # the fall into creak spans 2-3 of its cycles; faster, mid-fall labels match no period

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
            plan.add(ASPIR, int(rng.integers(3, 8)), uniform(rng, (-26, -16)))
            return
        peak, rise, fall, level = _FRICATIVES[rng.integers(len(_FRICATIVES))]
        n = int(rng.integers(5, 13))
        plan.add(FRIC, n, uniform(rng, level), fric=(uniform(rng, peak) * scale, rise, fall), locus=place()[0])

    def voiceless_stop():
        locus, burst = place()
        plan.add(SIL, int(rng.integers(3, 8)), -np.inf, locus=locus)  # closure (floor set later)
        plan.add(BURST, 1, uniform(rng, (-16, -6)), fric=(uniform(rng, burst) * scale, 3.0, 4.0))
        if rng.random() < 0.7:
            plan.add(ASPIR, int(rng.integers(1, 5)), uniform(rng, (-24, -14)))

    def sonorant():
        code, locus = _SONORANTS[rng.integers(len(_SONORANTS))]
        plan.add(code, int(rng.integers(3, 8)), uniform(rng, (-12, -4)), locus=locus)

    def voiced_fricative():
        peak, rise, fall, _ = _FRICATIVES[rng.integers(2)]
        plan.add(VFRIC, int(rng.integers(3, 8)), uniform(rng, (-22, -14)),
                 fric=(uniform(rng, peak) * scale, rise, fall), fric_level_db=uniform(rng, (-26, -14)),
                 locus=place()[0])

    onset = rng.choice(6, p=[0.22, 0.18, 0.16, 0.10, 0.24, 0.10])
    if onset == 1:
        voiceless_fricative()
    elif onset == 2:
        voiceless_stop()
    elif onset == 3:  # voiced stop: voice bar during the closure
        plan.add(VBAR, int(rng.integers(2, 6)), uniform(rng, (-26, -16)), locus=place()[0])
    elif onset == 4:
        sonorant()
    elif onset == 5:
        voiced_fricative()

    stressed = rng.random() < 0.5
    n = int(rng.integers(8, 23)) if stressed else int(rng.integers(5, 11))
    level = uniform(rng, (-3, 0)) if stressed else uniform(rng, (-9, -3))
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
            plan.add(BURST, 1, uniform(rng, (-20, -10)), fric=(uniform(rng, burst) * scale, 3.0, 4.0))
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
    return sp, _clearly_periodic(ap, voiced)


def _creak(rng, n_fine, f0, voiced, probability):
    """`f0` with creak: each voiced run, with `probability`, ends in 90-250 ms of irregular F0 around CREAK_HZ (>= 50 Hz)."""
    dt = FRAME_PERIOD_MS / _SUB / 1000.0
    for start, stop in _voiced_runs(voiced):
        if rng.uniform() >= probability:
            continue
        frames = int(min(stop - start, rng.integers(7, 21)))  # label frames of 12.5 ms
        first, last = (stop - frames) * _SUB, min(stop * _SUB, n_fine)
        creak = _creak_cycles(rng, uniform(rng, CREAK_HZ), np.arange(last - first) * dt)
        fall = np.clip(np.arange(last - first) / (CREAK_FALL_FRAMES * _SUB), 0.0, 1.0)
        f0[first:last] = np.exp((1.0 - fall) * np.log(f0[first:last]) + fall * np.log(creak))
    return f0


def _creak_cycles(rng, base, t):
    """F0 at times `t` (s, from 0): one jittered value per glottal cycle around `base`, joined in log-F0."""
    starts, values = [0.0], []
    while starts[-1] <= t[-1]:
        values.append(max(base * 2.0 ** (rng.normal(0.0, CREAK_JITTER_CENTS) / 1200.0), F0_RANGE_HZ[0]))
        starts.append(starts[-1] + 1.0 / values[-1])
    return np.exp(np.interp(t, starts[:-1], np.log(values)))


def _f0_contour(rng, n_fine, base, world_params, plan, voiced):
    """Continuous F0 (Hz) on the WORLD grid around `base`: intonation drift, vibrato, jitter, creak."""
    modulation = world_params["modulation"]
    dt = FRAME_PERIOD_MS / _SUB / 1000.0
    t = np.arange(n_fine) * dt
    total = max(t[-1], dt)
    drift_max = float(modulation["drift_cents"])
    drift_span = drift_max * rng.uniform(0.3, 1.0)
    knots = [0.0]
    while knots[-1] < total:
        knots.append(knots[-1] + rng.uniform(0.2, 0.6))
    knots = np.asarray(knots)
    declination = rng.uniform(0.0, 0.5) * drift_span
    values = rng.uniform(-0.5, 0.5, len(knots)) * drift_span + declination * (0.5 - knots / knots[-1])
    cents = PchipInterpolator(knots, np.clip(values, -drift_max / 2, drift_max / 2))(t)
    rate = uniform(rng, modulation["vibrato_rate_hz"])
    depth = uniform(rng, modulation["vibrato_depth_cents"])
    depth_envelope = PchipInterpolator(knots, rng.uniform(0.3, 1.0, len(knots)))(t)
    cents += depth * depth_envelope * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    jitter = rng.uniform(0.0, 1.0) * float(modulation["jitter_cents"])
    coarse = rng.normal(0.0, 1.0, len(voiced)) * jitter
    cents += np.interp(np.arange(n_fine) / _SUB, np.arange(len(voiced)), coarse)
    # micro-prosody: F0 starts a little higher right after a voiceless obstruent
    code = np.asarray(plan.code)
    for start, _ in _voiced_runs(voiced):
        if start > 0 and code[start - 1] in (FRIC, BURST, ASPIR):
            onset = start * FRAME_PERIOD_MS / 1000.0
            after = np.clip(t - onset, 0.0, None)
            cents += rng.uniform(10.0, 80.0) * np.exp(-after / 0.04) * (t >= onset - 0.00625)
    f0 = _creak(rng, n_fine, base * 2.0 ** (cents / 1200.0), voiced, world_params["creak_probability"])
    return np.clip(f0, *_F0_LIMITS)


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
            level[start:start + ramp] += np.linspace(-uniform(rng, (4, 12)), 0.0, ramp + 1)[:-1]
            damping[start:start + ramp] = np.linspace(uniform(rng, (1, 2)), 1.0, ramp + 1)[:-1]
        if stop == len(level) or code[stop] in (SIL, FRIC, ASPIR, BURST):
            ramp = int(min(rng.integers(2, 6), max(1, n // 3)))
            level[stop - ramp:stop] += np.linspace(0.0, -uniform(rng, (6, 15)), ramp + 1)[1:]
            breath[stop - ramp:stop] += np.linspace(0.0, uniform(rng, (0, 10)), ramp + 1)[1:]
            damping[stop - ramp:stop] = np.linspace(1.0, uniform(rng, (2, 3)), ramp + 1)[1:]
    level[code == SIL] = speaker["floor_db"]
    return level, np.minimum(breath, -8.0), damping


def _to_world_grid(values, sharp):
    """Label-frame rows (2-D) -> WORLD-grid rows by linear interpolation (as WORLD interpolates between
    its frames), except after a label frame k with sharp[k] (a voicing change, a burst), where
    each WORLD frame takes its own label cell's row (sharp edge). sharp[-1] is unused."""
    n = len(values)
    j = np.arange((n - 1) * _SUB + 1)
    left = j // _SUB
    right = np.minimum(left + 1, n - 1)
    w = (j % _SUB) / _SUB
    w = np.where(sharp[left], (w > 0.5).astype(float), w)[:, None]
    return values[left] * (1.0 - w) + values[right] * w


def _voicing_changes(voiced):
    """Per label frame: whether the next frame's voicing differs (False for the last frame)."""
    return np.r_[voiced[:-1] != voiced[1:], False]


def _clearly_periodic(ap, voiced):
    """Aperiodicity with the low band (< 1.5 kHz) of voiced frames at most 0.2 and unvoiced frames
    fully aperiodic: whatever is labelled voiced is clearly periodic, whatever is not is noise."""
    low_band = np.fft.rfftfreq(2 * (ap.shape[1] - 1), 1.0 / SAMPLE_RATE) < 1500.0  # any FFT size
    ap = np.where(low_band[None, :], np.minimum(ap, 0.2), ap)
    ap[~voiced] = 1.0
    return ap


def render_world_utterance(rng, world_params):
    """Render a speech-like utterance with WORLD; returns (audio, f0) with F0 exact by construction.

    world_params: the `synthetic_data.world` config block (`duration` s, `pitch_range` Hz with
    log-uniform base pitch, `gain_db_range` peak level dBFS, `modulation` with vibrato rate/depth,
    intonation drift and jitter, `creak_probability` per voiced run; other keys ignored). The utterance is silence, phrases of
    syllables (vowels with moving formants, nasals/approximants, voice bars, voiced fricatives =
    voiced; voiceless fricatives, /h/, stop closures, bursts, aspiration = unvoiced) and pauses,
    for one random speaker (vocal-tract length, spectral tilt, breathiness). Voiced runs have
    amplitude ramps but every frame labelled voiced is clearly periodic; unvoiced frames are
    noise only (WORLD with F0 = 0). Returns audio float32 at 24 kHz and f0 float32 with
    1 + len(audio) // 300 frames, frame i describing the audio around sample 300 * i.
    """
    import pyworld

    n_samples = max(HOP_LENGTH, int(round(uniform(rng, world_params["duration"]) * SAMPLE_RATE)))
    n_frames = num_frames(n_samples)
    base_f0 = _log_uniform(rng, world_params["pitch_range"])
    speaker = _speaker(rng, base_f0)
    plan = _plan_utterance(rng, n_frames + 1, speaker["scale"])  # +1: WORLD needs the next frame
    code = np.asarray(plan.code)
    voiced = np.isin(code, _VOICED_CODES)
    level_db, breath_db, damping = _levels(rng, plan, voiced, speaker)
    sp, ap = _spectra(plan, speaker, voiced, level_db, breath_db, damping)

    f0_fine = _f0_contour(rng, (len(code) - 1) * _SUB + 1, base_f0, world_params, plan, voiced)
    voiced_fine = voiced[(np.arange(len(f0_fine)) + _SUB // 2) // _SUB]
    sharp = _voicing_changes(voiced) | np.r_[(code[:-1] == BURST) | (code[1:] == BURST), False]
    audio = pyworld.synthesize(np.where(voiced_fine, f0_fine, 0.0), _to_world_grid(sp, sharp),
                               np.clip(_to_world_grid(ap, sharp), 1e-6, 1.0),
                               SAMPLE_RATE, FRAME_PERIOD_MS / _SUB)[:n_samples]
    peak = float(np.max(np.abs(audio))) or 1.0
    audio = audio * (db_to_amplitude(uniform(rng, world_params["gain_db_range"])) / peak)
    f0 = np.where(voiced[:n_frames], f0_fine[::_SUB][:n_frames], 0.0)
    return audio.astype(np.float32), f0.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# WORLD resynthesis of real clips with a given contour
# ---------------------------------------------------------------------------------------------
# The clip's own spectral envelope and aperiodicity are analysed on the label grid with the given
# F0 and resynthesised on the fine WORLD grid as render_world_utterance does, so the label's
# voicing edges fall on the cell edges and no F0 glide leaks into the frames next to them.

MAX_FILLED_GAP_FRAMES = 3  # uncertain (NaN) gaps up to this long inside a voiced run are resynthesised voiced


def world_resynthesise(audio, f0, semitones=0.0):
    """WORLD resynthesis of `audio` with the contour `f0` scaled by 2**(semitones/12); returns (audio, exact f0).

    audio: 24 kHz mono; f0: Hz on the repo grid (1 + len(audio) // 300 frames, 0 = unvoiced, NaN =
    uncertain), the clip's F0 as well as it is known: CheapTrick and D4C analyse the clip with it.
    The scaled contour is clipped to F0_RANGE_HZ and synthesised; it is returned as the label
    (float32, exact by construction), with the audio (float32, same length, peak-limited).
    """
    import pyworld

    audio = np.asarray(audio, dtype=np.float32)
    n_frames = num_frames(len(audio))
    if len(f0) != n_frames:
        raise ValueError(f"world_resynthesise: {len(f0)} F0 frames for {len(audio)} samples (expected {n_frames})")
    # Uncertain frames are analysed and synthesised unvoiced: their F0 is unknown, so a voiced frame there
    # would carry a guessed pitch, while unvoiced (WORLD noise) its label is exactly 0.
    given = np.nan_to_num(np.asarray(f0, dtype=np.float64), nan=0.0)
    given = np.r_[given, given[-1]]  # one frame past the end, so that the WORLD grid covers every sample
    times = frame_times(len(given))
    x = audio.astype(np.float64)
    fft_size = pyworld.get_cheaptrick_fft_size(SAMPLE_RATE, F0_RANGE_HZ[0])  # windows long enough for 50 Hz
    sp = pyworld.cheaptrick(x, given, times, SAMPLE_RATE, fft_size=fft_size)
    # threshold 0: D4C keeps every frame given voiced voiced (its own voicing check would make some pure noise)
    ap = pyworld.d4c(x, given, times, SAMPLE_RATE, threshold=0.0, fft_size=fft_size)
    voiced = given > 0
    target = np.where(voiced, np.clip(given * 2.0 ** (semitones / 12.0), *F0_RANGE_HZ), 0.0)
    sharp = _voicing_changes(voiced)
    out = pyworld.synthesize(_to_world_grid(target[:, None], sharp)[:, 0], _to_world_grid(sp, sharp),
                             np.clip(_to_world_grid(_clearly_periodic(ap, voiced), sharp), 1e-6, 1.0),
                             SAMPLE_RATE, FRAME_PERIOD_MS / _SUB)[: len(audio)]
    return peak_limit(out).astype(np.float32), target[:n_frames].astype(np.float32)


def _fill_uncertain_gaps(f0, max_frames):
    """f0 with each run of at most `max_frames` NaN frames between two voiced frames interpolated in log-F0.

    Such a gap is a short consensus disagreement inside a voiced run; leaving it unvoiced would punch
    a noise hole into the middle of a vowel.
    """
    f0 = f0.copy()
    for start, stop in _voiced_runs(np.isnan(f0)):
        if stop - start <= max_frames and start > 0 and stop < len(f0) and f0[start - 1] > 0 and f0[stop] > 0:
            ends = np.log([f0[start - 1], f0[stop]])
            f0[start:stop] = np.exp(np.interp(np.arange(start, stop), [start - 1, stop], ends))
    return f0


def median_smoothed(f0, frames):
    """f0 with each voiced run median-filtered over `frames` frames (edges repeated; 0 or 1: unchanged)."""
    f0 = f0.copy()
    if frames > 1:
        for start, stop in _voiced_runs(f0 > 0):
            f0[start:stop] = median_filter(f0[start:stop], size=frames, mode="nearest")
    return f0


def world_contour(audio):
    """The clip's F0 as WORLD itself sees it: harvest + StoneMask over F0_RANGE_HZ, voiced where D4C's
    voicing check (at WORLD's own threshold) finds the frame periodic; float32 on the repo grid, 0 = unvoiced."""
    return pyworld_f0(audio, fallback=None, f0_floor=F0_RANGE_HZ[0], f0_ceil=F0_RANGE_HZ[1],
                      d4c_threshold=WORLD_D4C_THRESHOLD).astype(np.float32)


def resynthesis_clip(audio, f0, rng, resynth_params):
    """A real clip resynthesised by WORLD with a smoothed contour, shifted; labels exact.

    audio: 24 kHz mono; f0: its label on the repo grid (Hz, 0 = unvoiced, NaN = uncertain). The contour is
    that label (`contour: labels`) or WORLD's own analysis of the clip (`contour: world`, world_contour:
    voiced wherever the clip is periodic enough for WORLD, which is more than the consensus labels voice;
    the way exact-F0 corpora are made from real speech). Uncertain gaps of up to MAX_FILLED_GAP_FRAMES
    inside voiced runs are interpolated, longer ones become unvoiced; each voiced run is median-filtered
    over `smoothing_frames` (label jitter would otherwise become real jitter). The shift is drawn in
    `semitones` (towards a pitch in the optional `target_pitch_range`, _draw_shift), narrowed so the voiced F0
    stays inside F0_RANGE_HZ, the gain uniform in `gain_db_range`
    (dB; scaled down if it would clip). Returns (audio float32 of the same length, the synthesised F0
    float32: no NaN), or None when fewer than `min_voiced_fraction` of the frames are voiced.
    """
    f0 = world_contour(audio) if resynth_params["contour"] == "world" else np.asarray(f0, dtype=np.float32)
    if _too_little_voicing(f0, resynth_params["min_voiced_fraction"]):
        return None
    contour = median_smoothed(_fill_uncertain_gaps(f0, MAX_FILLED_GAP_FRAMES), int(resynth_params["smoothing_frames"]))
    semitones = _draw_shift(rng, contour[contour > 0], resynth_params["semitones"],
                            resynth_params.get("target_pitch_range"))
    gain_db = uniform(rng, resynth_params["gain_db_range"])
    out, label = world_resynthesise(audio, contour, semitones)
    return peak_limit(out * np.float32(db_to_amplitude(gain_db))).astype(np.float32), label
