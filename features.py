"""The hosts' mel features: what StarGANv2-VC / StyleTTS feed the JDC network (docs/host_contract.md).

24 kHz waveform -> normalised log-mel (80, 1 + N // 300) on the repo's frame grid (audio.py). The
filterbank is laid out for 16 kHz although the audio is 24 kHz, because the hosts leave torchaudio's
`sample_rate` at its default; a model trained on "correct" 24 kHz mels would be wrong for them.
"""
import functools
import math

import numpy as np
import torch
import torchaudio

from audio import HOP_LENGTH, INT16_SCALE, num_frames

N_MELS = 80
N_FFT = 2048
WIN_LENGTH = 1200
MEL_MEAN, MEL_STD = -4.0, 4.0
MIN_SAMPLES = N_FFT // 2 + 1  # torch's reflect padding of n_fft // 2 needs a longer input
PAD_MEL = (math.log(1e-5) - MEL_MEAN) / MEL_STD  # the normalised log-mel of digital silence
CONTEXT_FRAMES = 4  # 4 * 300 samples >= n_fft // 2: a crop's mels equal the whole clip's mels


@functools.lru_cache(maxsize=None)
def _mel_transform(device="cpu"):
    # Exactly the hosts' call: every other argument at torchaudio's default (sample_rate=16000!).
    transform = torchaudio.transforms.MelSpectrogram(n_mels=N_MELS, n_fft=N_FFT, win_length=WIN_LENGTH,
                                                     hop_length=HOP_LENGTH)
    return transform.to(device)


@functools.lru_cache(maxsize=None)
def _framed_mel_transform(device):
    # The same transform on input that already carries its reflect padding (see padded_crop).
    transform = torchaudio.transforms.MelSpectrogram(n_mels=N_MELS, n_fft=N_FFT, win_length=WIN_LENGTH,
                                                     hop_length=HOP_LENGTH, center=False)
    return transform.to(device)


def mel_spectrogram(wave):
    """24 kHz waveform (..., N) -> normalised log-mel (..., 80, 1 + N // 300), as the hosts compute it.

    A tensor stays on its device. Inputs shorter than 1,025 samples (too short for the hosts' reflect
    padding) are zero-padded to that length and the result cut back to 1 + N // 300 frames, so every
    frame count rule holds.
    """
    wave = torch.as_tensor(wave, dtype=torch.float32)
    n = wave.shape[-1]
    if n == 0:
        raise ValueError("mel_spectrogram: empty waveform; give at least one sample")
    if n < MIN_SAMPLES:
        wave = torch.nn.functional.pad(wave, (0, MIN_SAMPLES - n))
    mel = _mel_transform(str(wave.device))(wave)[..., : num_frames(n)]
    return (torch.log(1e-5 + mel) - MEL_MEAN) / MEL_STD


def crop_wave(wave, start_frame, frames):
    """Samples needed for mel frames [start_frame, start_frame + frames) and the offset into them."""
    context = min(start_frame, CONTEXT_FRAMES)
    first = (start_frame - context) * HOP_LENGTH
    last = (start_frame + frames - 1 + CONTEXT_FRAMES) * HOP_LENGTH + 1
    return wave[first:last], context


def item_mels(wave, start_frame=0, frames=None):
    """Normalised log-mel frames [start_frame, start_frame + frames) of a whole clip's mel."""
    total = num_frames(len(wave))
    frames = total - start_frame if frames is None else frames
    segment, offset = crop_wave(wave, start_frame, frames)
    return mel_spectrogram(segment)[:, offset: offset + frames]


def padded_crop(wave, start_frame, frames):
    """The samples mel frames [start_frame, start_frame + frames) of the whole clip see, its edges
    reflect-padded as the hosts' transform pads them: ((frames - 1) * 300 + 2048,).

    `mel_from_padded` of a batch of these (after `float_wave`) equals `mel_spectrogram` of the whole clips,
    cropped. An int16 `wave` (a pack's memmap: only the samples needed are read) gives an int16 crop, which
    moves half the bytes of float32 from loader workers to the training device; anything else gives float32.
    Inside the clip the crop is a view of `wave` (the collate copies it once, into the batch); at its edges a copy.
    """
    if len(wave) < MIN_SAMPLES:  # as mel_spectrogram: zero-padded first
        wave = np.pad(np.asarray(wave), (0, MIN_SAMPLES - len(wave)))
    first, end = start_frame * HOP_LENGTH - N_FFT // 2, (start_frame + frames - 1) * HOP_LENGTH + N_FFT // 2
    n = len(wave)
    segment = wave[max(first, 0): min(end, n)]  # inside the clip (most training crops): a plain slice
    if first < 0 or end > n:  # numpy's reflect is torch's: about the edge sample, which is not repeated
        segment = np.pad(segment, (max(-first, 0), max(end - n, 0)), mode="reflect")
    return np.asarray(segment, dtype=np.int16 if segment.dtype == np.int16 else np.float32)


def float_wave(wave):
    """A batch of crops as float32 in [-1, 1]: int16 crops are scaled on whatever device they are on (exact)."""
    return wave.float() / INT16_SCALE if wave.dtype == torch.int16 else wave


def padded_samples(frames):
    """Samples in a padded crop of `frames` mel frames (padded_crop's length)."""
    return (frames - 1) * HOP_LENGTH + N_FFT


def mel_from_padded(padded, valid=None):
    """Padded crops (B, S) on any device -> normalised log-mel (B, 80, 1 + (S - 2048) // 300) there.

    Frames where `valid` (B, T) is False are set to PAD_MEL, the mel of silence, as batch padding.
    """
    mel = (torch.log(1e-5 + _framed_mel_transform(str(padded.device))(padded)) - MEL_MEAN) / MEL_STD
    return mel if valid is None else torch.where(valid[:, None, :], mel, PAD_MEL)
