"""The hosts' mel features, bit for bit, and the frame-count rule."""
import numpy as np
import pytest
import torch
import torchaudio

from features import mel_spectrogram


def host_mel(wave):
    """What StarGANv2-VC / StyleTTS compute (docs/host_contract.md), straight from torchaudio."""
    to_mel = torchaudio.transforms.MelSpectrogram(n_mels=80, n_fft=2048, win_length=1200, hop_length=300)
    return (torch.log(1e-5 + to_mel(wave)) - (-4)) / 4


@pytest.mark.parametrize("n", [1025, 1200, 24000, 24299, 100_000])
def test_mel_is_bit_identical_to_host_recipe(n):
    wave = torch.from_numpy(np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1)
    ours = mel_spectrogram(wave)
    assert ours.shape == (80, 1 + n // 300)
    assert torch.equal(ours, host_mel(wave))


def test_mel_batch_and_numpy_input():
    wave = np.random.default_rng(0).standard_normal((3, 4800)).astype(np.float32)
    mel = mel_spectrogram(wave)
    assert mel.shape == (3, 80, 17)
    assert torch.equal(mel[1], host_mel(torch.from_numpy(wave[1])))


def test_frame_count_rule_up_to_a_million_samples():
    for n in (1025, 1199, 1200, 1201, 299_999, 1_000_000):
        assert mel_spectrogram(torch.zeros(n)).shape[-1] == 1 + n // 300


@pytest.mark.parametrize("n", [1, 299, 300, 1024])
def test_short_input_is_zero_padded_not_a_traceback(n):
    wave = torch.full((n,), 0.1)
    mel = mel_spectrogram(wave)
    assert mel.shape == (80, 1 + n // 300)
    padded = torch.nn.functional.pad(wave, (0, 1025 - n))
    assert torch.equal(mel, host_mel(padded)[:, : 1 + n // 300])


def test_empty_input_is_a_one_line_error():
    with pytest.raises(ValueError, match="empty waveform"):
        mel_spectrogram(torch.zeros(0))


@pytest.mark.parametrize("n", [500, 1025, 5000, 72_017])
def test_device_mel_of_padded_crops_equals_mel_spectrogram(n):
    """The training device's mel (features.mel_from_padded on features.padded_crop) is the whole clip's
    mel_spectrogram, cropped, within 1e-5: at both edges, inside, for one frame and for short clips."""
    from audio import as_float32
    from features import float_wave, mel_from_padded, padded_crop
    from pack import to_int16

    wave = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1
    for source in (wave, to_int16(wave)):  # float audio, and a pack's int16 (scaled on the device)
        whole = mel_spectrogram(as_float32(source))
        frames = whole.shape[-1]
        for start, count in ((0, frames), (0, 1), (frames - 1, 1), (frames // 2, frames - frames // 2)):
            crop = float_wave(torch.from_numpy(padded_crop(source, start, count)))
            assert crop.dtype == torch.float32
            assert torch.allclose(mel_from_padded(crop[None])[0], whole[:, start: start + count], atol=1e-5, rtol=0)
