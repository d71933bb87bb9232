"""Audio -> training items: the hosts' mel features, the dataset over list files, the loader."""
import functools

import torch
import torchaudio

MEL_MEAN, MEL_STD = -4.0, 4.0
N_FFT = 2048
MIN_SAMPLES = N_FFT // 2 + 1  # torch's reflect padding of n_fft // 2 needs a longer input


@functools.lru_cache(maxsize=None)
def _mel_transform():
    # Exactly the hosts' call: every other argument at torchaudio's default (sample_rate=16000!),
    # so the filterbank is laid out for 16 kHz although the audio is 24 kHz. See CONTRACT.md.
    return torchaudio.transforms.MelSpectrogram(n_mels=80, n_fft=N_FFT, win_length=1200, hop_length=300)


def mel_spectrogram(wave):
    """24 kHz waveform (..., N) -> normalised log-mel (..., 80, 1 + N // 300), as the hosts compute it.

    Inputs shorter than 1,025 samples (too short for the hosts' reflect padding) are zero-padded to
    that length and the result cut back to 1 + N // 300 frames, so every frame count rule holds.
    """
    wave = torch.as_tensor(wave, dtype=torch.float32)
    n = wave.shape[-1]
    if n == 0:
        raise ValueError("mel_spectrogram: empty waveform; give at least one sample")
    if n < MIN_SAMPLES:
        wave = torch.nn.functional.pad(wave, (0, MIN_SAMPLES - n))
    mel = _mel_transform()(wave)[..., : 1 + n // 300]
    return (torch.log(1e-5 + mel) - MEL_MEAN) / MEL_STD
