"""Audio files and list files in: everything else in the repo sees 24 kHz mono float32."""

import os
import uuid

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 24000  # Hz, fixed by the host models
HOP_LENGTH = 300  # samples per model frame
FRAME_SECONDS = HOP_LENGTH / SAMPLE_RATE  # 12.5 ms: the one frame period every module uses
FRAME_PERIOD_MS = 1000.0 * FRAME_SECONDS
FRAMES_PER_SECOND = SAMPLE_RATE / HOP_LENGTH


class AudioError(ValueError):
    """A file that cannot serve as training audio; the message is one line naming file, problem and fix."""


def num_frames(n_samples):
    """Frames on the model grid for a clip of n_samples: frame i is centred at sample HOP_LENGTH * i."""
    return 1 + n_samples // HOP_LENGTH


def frame_times(n_frames):
    """Seconds of the frame centres on the model grid."""
    return np.arange(n_frames) * FRAME_SECONDS


def require_file(path):
    """Raise the AudioError for a missing audio file (used before trusting anything derived from it)."""
    if not os.path.isfile(path):
        raise AudioError(f"{path}: file not found; fix the path in the list file or restore the file")


def _read(path):
    """(samples x channels float32, sample rate) or an AudioError saying why the file cannot be read."""
    require_file(path)
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: empty file (0 bytes); remove it from the list or re-export it")
    try:
        # always_2d gives one code path for mono and multichannel; soundfile scales int PCM to [-1, 1).
        return sf.read(path, dtype="float32", always_2d=True)
    except sf.SoundFileError as error:
        reason = str(error).replace("\n", " ")
        raise AudioError(f"{path}: unreadable audio ({reason}); re-export it as wav, flac or ogg") from None


def to_model_rate(wave, sr):
    """A waveform (float in [-1, 1] or integer PCM, numpy or torch) as 24 kHz mono float32 (N,).

    2-D input is averaged over its channel axis, taken to be the shorter one, so both soundfile's
    (samples, channels) and torchaudio's (channels, samples) work. Other rates go through soxr (HQ).
    A ValueError for empty, non-finite or >2-D input.
    """
    if hasattr(wave, "detach"):  # a torch tensor, without importing torch here
        wave = wave.detach().cpu().numpy()
    wave = np.asarray(wave)
    if np.issubdtype(wave.dtype, np.integer):  # PCM: scaled to [-1, 1) as soundfile reads it
        wave = wave / -np.iinfo(wave.dtype).min
    wave = wave.astype(np.float32, copy=False)
    if wave.ndim == 2:
        wave = wave.mean(axis=int(np.argmin(wave.shape)))
    if wave.ndim != 1 or wave.size == 0:
        raise ValueError(f"expected a non-empty mono (N,) or multichannel 2-D waveform, got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise ValueError("the waveform contains NaN or infinite samples")
    if sr != SAMPLE_RATE:
        wave = soxr.resample(wave, sr, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def load_audio(path):
    """Any file soundfile reads, at any rate and channel count, as 24 kHz mono float32 (N,)."""
    path = os.fspath(path)
    samples, sample_rate = _read(path)
    if samples.size == 0:
        raise AudioError(f"{path}: empty audio (0 samples); remove it from the list or re-export it")
    try:
        return to_model_rate(samples.mean(axis=1), sample_rate)  # soundfile gives (samples, channels)
    except ValueError:
        raise AudioError(f"{path}: audio contains NaN or infinite samples; re-export it or remove it from the list") from None


def _list_entry_path(field, list_dir):
    """A list entry as given when it exists from the working directory, else relative to the list's folder."""
    if os.path.isabs(field) or os.path.exists(field):
        return field
    beside_list = os.path.join(list_dir, field)
    # Neither exists: keep the path as written so the missing-file message shows what the user wrote.
    return beside_list if os.path.exists(beside_list) else field


def read_file_list(list_path):
    """Audio paths from a `filename.wav|anything` list; blank lines and # comments are skipped.

    A bare `filename.wav` (no `|`) is accepted; a line whose first field is empty is a ValueError.
    """
    list_path = os.fspath(list_path)
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"{list_path}: list file not found; set train_data/val_data to an existing list")
    list_dir = os.path.dirname(os.path.abspath(list_path))
    paths = []
    with open(list_path, encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            field = entry.split("|", 1)[0].strip()
            if not field:
                raise ValueError(
                    f"{list_path}:{line_number}: empty filename in {entry!r}; expected `filename.wav|anything`"
                )
            paths.append(_list_entry_path(field, list_dir))
    return paths


def write_atomically(target, payload):
    """Write bytes so that readers see the old file or the new one, never a partial one."""
    temporary = f"{target}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(temporary, "xb") as handle:  # a plain open honours the umask, unlike mkstemp
            handle.write(payload)
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
