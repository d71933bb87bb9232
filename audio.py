"""Audio files and list files in: everything else in the repo sees 24 kHz mono float32."""

import logging
import os
import struct
import uuid

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 24000  # Hz, fixed by the host models
HOP_LENGTH = 300  # samples per model frame
FRAME_SECONDS = HOP_LENGTH / SAMPLE_RATE  # 12.5 ms: the one frame period every module uses
FRAME_PERIOD_MS = 1000.0 * FRAME_SECONDS
FRAMES_PER_SECOND = SAMPLE_RATE / HOP_LENGTH
INT16_SCALE = 32768.0  # a 16-bit sample k reads as k / 32768, as soundfile reads 16-bit files
UTF8_BOM = b"\xef\xbb\xbf"

log = logging.getLogger("pitchextractor")
_warned_truncated = set()


class AudioError(ValueError):
    """A file that cannot serve as training audio; the message is one line naming file, problem and fix."""


def num_frames(n_samples):
    """Frames on the model grid for a clip of n_samples: frame i is centred at sample HOP_LENGTH * i."""
    return 1 + n_samples // HOP_LENGTH


def as_float32(samples):
    """float32 audio in [-1, 1] from float or int16 samples (int16: k / INT16_SCALE, exact)."""
    samples = np.asarray(samples)
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / np.float32(INT16_SCALE)
    return samples.astype(np.float32, copy=False)


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
        samples, sample_rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as error:
        reason = str(error).replace("\n", " ")
        if "does not exist" in reason:  # libsndfile's words for bytes its MPEG decoder rejects: the file exists
            reason = "not audio in any format soundfile reads"
        raise AudioError(f"{path}: unreadable audio ({reason}); re-export it as wav, flac or ogg") from None
    _warn_if_truncated(path, len(samples), sample_rate)
    return samples, sample_rate


def wav_data_shortfall(path):
    """(bytes the WAV header's data chunk declares, bytes the file holds of it), or None for a file that is no
    RIFF/WAVE or whose data size is a streaming placeholder. soundfile reads a truncated WAV without a word."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            header = handle.read(12)
            if len(header) < 12 or header[:4] not in (b"RIFF", b"RIFX") or header[8:12] != b"WAVE":
                return None
            order = "<" if header[:4] == b"RIFF" else ">"
            offset = 12
            while offset + 8 <= size:
                handle.seek(offset)
                chunk, length = struct.unpack(f"{order}4sI", handle.read(8))
                if chunk == b"data":
                    if length in (0, 0xFFFFFFFF):  # written by a stream that never patched its header
                        return None
                    return length, size - offset - 8
                offset += 8 + length + (length & 1)
    except (OSError, struct.error):
        return None
    return None


def _warn_if_truncated(path, frames, sample_rate):
    shortfall = wav_data_shortfall(path)
    if shortfall is None or shortfall[1] >= shortfall[0] or path in _warned_truncated:
        return
    _warned_truncated.add(path)  # once per process and file: items decode their file every epoch
    declared, held = shortfall
    log.warning("%s: truncated WAV: its header declares %d data bytes but the file holds %d; using the %.2f s "
                "that are there (re-export or re-copy the file)", path, declared, held, frames / sample_rate)


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
    with open(list_path, "rb") as handle:
        lines = decode_lines(handle.read(), list_path, "list")
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


def decode_lines(data, path, what="file"):
    """The lines (ends kept) of UTF-8 bytes with or without a BOM; a ValueError naming the file and the line
    of the first byte that is not UTF-8 (a latin-1 export, say)."""
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
    lines = []
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}:{number}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column "
                             f"{error.start + 1}); save the {what} as UTF-8") from None
    return lines


def write_atomically(target, payload):
    """Write bytes so that readers see the old file or the new one, never a partial one."""
    temporary = f"{target}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(temporary, "xb") as handle:  # a plain open honours the umask, unlike mkstemp
            handle.write(payload)
        os.replace(temporary, target)
    except BaseException as error:
        if os.path.exists(temporary):
            os.remove(temporary)
        if isinstance(error, OSError) and error.errno is not None:  # name the target, not the temporary file
            raise OSError(error.errno, error.strerror, os.fspath(target)) from None
        raise
