import os

import numpy as np
import pytest

from audio import AudioError, HOP_LENGTH, SAMPLE_RATE, frame_times, load_audio, num_frames, read_file_list
from tests.f0_helpers import write_audio


def sine(frequency, seconds, sample_rate, amplitude=0.5):
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(int(seconds * sample_rate)) / sample_rate)).astype(
        np.float32)


def dominant_frequency(audio):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return np.argmax(spectrum) * SAMPLE_RATE / audio.size


def assert_one_line_about(error, path, words):
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message
    assert words in message


def test_frame_grid():
    assert (SAMPLE_RATE, HOP_LENGTH) == (24000, 300)
    assert [num_frames(n) for n in (0, 299, 300, 24000)] == [1, 1, 2, 81]
    np.testing.assert_allclose(frame_times(3), [0.0, 0.0125, 0.025])


def test_float_wav_at_24k_is_returned_unchanged(tmp_path):
    audio = sine(220, 0.5, SAMPLE_RATE)
    loaded = load_audio(write_audio(tmp_path / "a.wav", audio, subtype="FLOAT"))
    assert loaded.dtype == np.float32 and loaded.shape == audio.shape
    np.testing.assert_array_equal(loaded, audio)


def test_int16_pcm_is_scaled_to_unit_range(tmp_path):
    pcm = (sine(220, 0.5, SAMPLE_RATE) * 32767).astype(np.int16)
    loaded = load_audio(write_audio(tmp_path / "a.wav", pcm, subtype="PCM_16"))
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, pcm / 32768.0, atol=1e-6)


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = sine(220, 0.5, SAMPLE_RATE), sine(330, 0.5, SAMPLE_RATE, amplitude=0.25)
    loaded = load_audio(write_audio(tmp_path / "s.wav", np.stack([left, right], axis=1), subtype="FLOAT"))
    assert loaded.ndim == 1
    np.testing.assert_allclose(loaded, (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("name, subtype", [("a.flac", "PCM_16"), ("a.ogg", "VORBIS")])
def test_44k1_files_are_resampled_to_24k(tmp_path, name, subtype):
    audio = sine(1000, 1.0, 44100)
    loaded = load_audio(write_audio(tmp_path / name, audio, 44100, subtype=subtype))
    assert abs(loaded.size - SAMPLE_RATE) <= 1
    assert dominant_frequency(loaded) == pytest.approx(1000, abs=2)
    # A proper resampler keeps the level of an in-band tone (away from the edge transients).
    middle = loaded[SAMPLE_RATE // 4: -SAMPLE_RATE // 4]
    assert np.sqrt(np.mean(middle ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError) as error:
        load_audio(tmp_path / "nowhere.wav")
    assert_one_line_about(error, tmp_path / "nowhere.wav", "not found")


def test_garbage_bytes_are_unreadable(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"RIFF" + bytes(range(256)) * 4)
    with pytest.raises(AudioError) as error:
        load_audio(path)
    assert_one_line_about(error, path, "unreadable")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "zero.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError) as error:
        load_audio(path)
    assert_one_line_about(error, path, "empty")


def test_wav_without_samples(tmp_path):
    path = write_audio(tmp_path / "empty.wav", np.zeros(0, np.float32))
    with pytest.raises(AudioError) as error:
        load_audio(path)
    assert_one_line_about(error, path, "empty")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad_value):
    audio = sine(220, 0.1, SAMPLE_RATE)
    audio[100] = bad_value
    path = write_audio(tmp_path / "bad.wav", audio, subtype="FLOAT")
    with pytest.raises(AudioError) as error:
        load_audio(path)
    assert_one_line_about(error, path, "NaN")


def test_audio_error_is_a_value_error():
    assert issubclass(AudioError, ValueError)


def write_list(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_list_skips_comments_and_blank_lines_and_keeps_order(tmp_path):
    for name in ("a.wav", "b.wav", "c.wav"):
        (tmp_path / name).touch()
    list_path = write_list(tmp_path / "list.txt", "# header\n\na.wav|0\n  b.wav|speaker|x  \n\nc.wav\n")
    expected = [os.path.join(str(tmp_path), name) for name in ("a.wav", "b.wav", "c.wav")]
    assert read_file_list(list_path) == expected


def test_list_paths_from_the_working_directory_win(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.wav").touch()
    (tmp_path / "lists").mkdir()
    list_path = write_list(tmp_path / "lists" / "list.txt", "data/a.wav|0\n")
    monkeypatch.chdir(tmp_path)
    assert read_file_list(list_path) == ["data/a.wav"]


def test_list_keeps_absolute_and_missing_paths_as_written(tmp_path):
    absolute = str(tmp_path / "abs.wav")
    list_path = write_list(tmp_path / "list.txt", f"{absolute}|0\nmissing/x.wav|1\n")
    assert read_file_list(list_path) == [absolute, "missing/x.wav"]


def test_list_line_with_empty_filename(tmp_path):
    list_path = write_list(tmp_path / "list.txt", "a.wav|0\n|speaker\n")
    with pytest.raises(ValueError) as error:
        read_file_list(list_path)
    message = str(error.value)
    assert "\n" not in message
    assert f"{list_path}:2" in message and "'|speaker'" in message


def test_missing_list_file(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        read_file_list(tmp_path / "nope.txt")
    assert_one_line_about(error, tmp_path / "nope.txt", "list file not found")
