"""infer.py: chunked == whole, batch independence, the API's resampling, the command's files and errors."""
import os
import platform
import resource
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

import infer
from audio import SAMPLE_RATE, num_frames
from f0_helpers import harmonic_tone, up_down_glide
from model import WinogradConv2d, build_model
from test_model import randomised_lstm_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

THRESHOLD = 0.3  # stored in the test checkpoint: the voicing decision must use it, not 0.5
TINY_TRANSFORMER = {"sequence_model": "transformer",
                    "transformer": {"d_model": 32, "num_layers": 1, "num_heads": 2, "ff_dim": 64}}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a busy 2-core machine its two threads wait on each other in every LSTM step
    (40x slower seen); the thread count of the rest of the session is put back afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def varied_lstm_model():
    """Random lstm weights whose F0 moves by tens of Hz from frame to frame, so 1 cent means something."""
    model = randomised_lstm_model()
    with torch.no_grad():
        model.classifier.weight.mul_(30.0)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    net = randomised_lstm_model().state_dict()
    paths = {"ours": folder / "best.pth", "host": folder / "host.pth", "transformer": folder / "t.pth"}
    torch.save({"net": net, "model_params": {"sequence_model": "lstm"}, "vuv_threshold": THRESHOLD, "epoch": 3},
               paths["ours"])
    torch.save({"net": net}, paths["host"])
    torch.save({"net": build_model(TINY_TRANSFORMER).state_dict(), "model_params": TINY_TRANSFORMER},
               paths["transformer"])
    return {key: str(path) for key, path in paths.items()}


def glide(seconds=1.0, low=120.0, high=220.0):
    return harmonic_tone(np.geomspace(low, high, int(seconds * SAMPLE_RATE))).astype(np.float32)


def one_line_error(result, *fragments):
    """The command failed with exit status 1 and one `Error: ...` line holding every fragment, no traceback."""
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def run(*args):
    return CliRunner().invoke(infer.main, [str(arg) for arg in args])


# ---------------------------------------------------------------------------------------------- windows


@pytest.mark.parametrize("n_frames", [1, 100, 101, 250, 799, 4801])
def test_chunk_windows_cover_every_frame_once_with_context(n_frames):
    window, context = 100, 20
    windows = infer.chunk_windows(n_frames, window, context)
    kept = np.concatenate([np.arange(keep_start, keep_end) for _, _, keep_start, keep_end in windows])
    assert np.array_equal(kept, np.arange(n_frames))
    for start, end, keep_start, keep_end in windows:
        assert end - start == min(window, n_frames)
        assert keep_start - start >= context or start == 0
        assert end - keep_end >= context or end == n_frames


def test_chunked_equals_whole_on_a_60_second_file():
    parts = [up_down_glide(low=100 + 10 * i, high=220 + 15 * i, ramp_seconds=2.0, silence_seconds=0.5, seed=i)
             for i in range(12)]  # 5 s each
    wave = np.concatenate([audio for audio, _ in parts])
    # Each part's last frame is the next part's first: the parts' grids abut.
    true_f0 = np.concatenate([f0[:-1] for _, f0 in parts] + [[0.0]])
    assert wave.size == 60 * SAMPLE_RATE and true_f0.size == num_frames(wave.size)
    model = varied_lstm_model()
    whole = infer.Predictor(model, chunk_seconds=120.0)
    # 20 s windows: three seams and an end-aligned last window for 80 s of compute. One batch holds every
    # window, so the LSTM steps through one window length, not four.
    chunked = infer.Predictor(model, batch_size=4, chunk_seconds=20.0, context_seconds=2.0)
    assert len(infer.chunk_windows(num_frames(wave.size), chunked.window, chunked.context)) == 4
    (f0_whole, prob_whole), = whole.predict_clips([wave])
    (f0_chunked, prob_chunked), = chunked.predict_clips([wave])
    voiced = true_f0 > 0
    assert f0_whole[voiced].std() > 5.0  # the comparison is not between two constants
    cents = 1200 * np.abs(np.log2(f0_chunked[voiced] / f0_whole[voiced]))
    assert cents.max() < 1.0
    assert np.abs(prob_chunked - prob_whole).max() < 1e-3


def test_result_does_not_depend_on_the_batch():
    model = varied_lstm_model()
    clips = [glide(0.6), glide(0.62, 150, 300), glide(1.7, 90, 180), glide(0.3)]
    batched = infer.Predictor(model, batch_size=4).predict_clips(clips)
    for clip, (f0, prob) in zip(clips, batched):
        (alone_f0, alone_prob), = infer.Predictor(model, batch_size=1).predict_clips([clip])
        assert f0.shape == (num_frames(clip.size),)
        np.testing.assert_allclose(f0, alone_f0, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(prob, alone_prob, atol=1e-5)


@pytest.mark.skipif(not torch._nnpack_available(), reason="this torch build or CPU has no NNPACK")
def test_one_thread_cpu_runs_the_winograd_model_and_more_threads_onednn_with_the_same_result():
    model = varied_lstm_model()
    clips = [glide(0.6), glide(1.7, 90, 180)]
    one_thread = infer.Predictor(model)
    assert isinstance(one_thread.model.res_block1.conv[0], WinogradConv2d)
    torch.set_num_threads(2)  # put back to 1 by the one_thread fixture
    two_threads = infer.Predictor(model)
    assert type(two_threads.model.res_block1.conv[0]) is torch.nn.Conv2d
    assert two_threads.memory_format == torch.channels_last
    for (f0, prob), (onednn_f0, onednn_prob) in zip(one_thread.predict_clips(clips),
                                                     two_threads.predict_clips(clips)):
        assert f0.std() > 5.0
        assert np.abs(1200 * np.log2(f0 / onednn_f0)).max() < 0.1  # cents
        assert np.abs(prob - onednn_prob).max() < 1e-4


# ---------------------------------------------------------------------------------------------- API


def test_predict_resamples_mixes_channels_and_uses_the_stored_threshold(checkpoints):
    predictor = infer.load_predictor(checkpoints["ours"], device="cpu")
    assert predictor.vuv_threshold == THRESHOLD
    wave_16k = harmonic_tone(np.full(16000, 180.0)).astype(np.float32)
    time, f0, voiced, prob = predictor.predict(wave_16k, 16000)
    assert f0.shape == time.shape == voiced.shape == prob.shape == (num_frames(24000),)
    np.testing.assert_allclose(time, np.arange(f0.size) * 0.0125)
    assert np.array_equal(voiced, prob >= THRESHOLD) and ((prob > 0) & (prob < 1)).all()
    assert (f0 > 0).all()  # the F0 estimate is kept in unvoiced frames too
    for stereo in (np.stack([wave_16k, wave_16k], axis=1), np.stack([wave_16k, wave_16k])):
        np.testing.assert_allclose(predictor.predict(stereo, 16000)[1], f0, rtol=1e-5)
    pcm = np.round(wave_16k * 32767).astype(np.int16)
    np.testing.assert_allclose(predictor.predict(pcm, 16000)[1], f0, rtol=1e-3)
    np.testing.assert_allclose(infer.predict(wave_16k, 16000, checkpoint=checkpoints["ours"])[1], f0, rtol=1e-5)


def test_host_weights_only_file_predicts_as_our_checkpoint(checkpoints):
    wave = glide()
    ours = infer.load_predictor(checkpoints["ours"], device="cpu").predict(wave, SAMPLE_RATE)
    host_predictor = infer.load_predictor(checkpoints["host"], device="cpu")
    host = host_predictor.predict(wave, SAMPLE_RATE)
    assert host_predictor.vuv_threshold == infer.DEFAULT_VUV_THRESHOLD
    np.testing.assert_allclose(host[1], ours[1], rtol=1e-5)


def test_transformer_checkpoint_predicts(checkpoints):
    time, f0, voiced, prob = infer.load_predictor(checkpoints["transformer"], "cpu").predict(glide(0.5), SAMPLE_RATE)
    assert f0.shape == (num_frames(12000),) and np.isfinite(f0).all()


def test_bad_waveforms_are_value_errors(checkpoints):
    predictor = infer.load_predictor(checkpoints["ours"], "cpu")
    with pytest.raises(ValueError, match="non-empty"):
        predictor.predict(np.zeros(0), SAMPLE_RATE)
    with pytest.raises(ValueError, match="NaN"):
        predictor.predict(np.full(100, np.nan), SAMPLE_RATE)


# ---------------------------------------------------------------------------------------------- command


@pytest.fixture
def audio_tree(tmp_path):
    """a/x.wav, b/x.wav (same stem), y.flac, a list naming b/x.wav, and an unreadable bad.wav."""
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    sf.write(tmp_path / "a" / "x.wav", glide(0.8), SAMPLE_RATE)
    sf.write(tmp_path / "b" / "x.wav", glide(0.5, 200, 260), 16000)  # 0.75 s, resampled to 18,000 samples
    sf.write(tmp_path / "y.flac", glide(0.7), SAMPLE_RATE)
    (tmp_path / "list.txt").write_text("b/x.wav|speaker1\n")
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    return tmp_path


def test_command_writes_csv_per_file_and_reports_bad_files(checkpoints, audio_tree):
    out = audio_tree / "out"
    result = run("--checkpoint", checkpoints["ours"], audio_tree / "a", audio_tree / "list.txt",
                 audio_tree / "y.flac", audio_tree / "bad.wav", "--out", out, "--device", "cpu")
    one_line_error(result, "1 of 4")
    assert "bad.wav" in result.output  # the bad file is named, on its own line
    assert sorted(p.name for p in out.iterdir()) == ["a__x.wav.csv", "b__x.wav.csv", "y.csv"]
    for name, samples in (("a__x.wav.csv", 19200), ("b__x.wav.csv", 18000), ("y.csv", 16800)):
        with open(out / name) as handle:
            assert handle.readline().strip() == "time,f0,voiced,voiced_prob"
        table = np.loadtxt(out / name, delimiter=",", skiprows=1)
        assert table.shape == (num_frames(samples), 4)
        np.testing.assert_allclose(table[:, 0], np.arange(len(table)) * 0.0125)
        clear = np.abs(table[:, 3] - THRESHOLD) > 1e-4  # probabilities are written to 4 decimals
        assert np.array_equal(table[clear, 2] == 1, table[clear, 3] >= THRESHOLD)


def test_command_npy_and_plot(checkpoints, audio_tree):
    out = audio_tree / "out"
    result = run("--checkpoint", checkpoints["ours"], audio_tree / "y.flac", "--out", out, "--format", "npy",
                 "--plot", "--device", "cpu")
    assert result.exit_code == 0, result.output
    table = np.load(out / "y.npy")
    assert table.dtype.names == ("time", "f0", "voiced", "voiced_prob") and len(table) == num_frames(16800)
    assert np.array_equal(table["voiced"] == 1, table["voiced_prob"] >= THRESHOLD)
    assert (out / "y.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_and_unreadable_checkpoints_are_one_line_errors(tmp_path, audio_tree):
    one_line_error(run("--checkpoint", tmp_path / "nope.pth", audio_tree / "y.flac", "--out", tmp_path),
                   "nope.pth", "not found")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00garbage")
    one_line_error(run("--checkpoint", garbage, audio_tree / "y.flac", "--out", tmp_path),
                   "garbage.pth", "not a readable PyTorch checkpoint")


def test_no_checkpoint_given_and_none_shipped(tmp_path, audio_tree, monkeypatch):
    monkeypatch.setattr(infer, "DEFAULT_CHECKPOINT", str(tmp_path / "pretrained" / "jdc_lstm.pth"))
    one_line_error(run(audio_tree / "y.flac", "--out", tmp_path), "no checkpoint given and none shipped")


def test_device_without_cuda_is_a_one_line_error(checkpoints, audio_tree, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    one_line_error(run("--checkpoint", checkpoints["ours"], audio_tree / "y.flac", "--out", tmp_path,
                       "--device", "cuda"), "no CUDA GPU")


def test_importing_infer_loads_no_training_stack():
    training_only = ("pyworld", "synthetic", "augment", "meldataset", "f0_labels", "f0_backends", "parselmouth",
                     "swift_f0", "torchcrepe", "audiomentations", "librosa", "mir_eval", "trainer")
    probe = f"import sys, infer; print(' '.join(m for m in {training_only!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            cwd=REPO_ROOT)
    assert result.stdout.strip() == "", f"import infer also loaded: {result.stdout}"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's thresholds are glibc's")
def test_the_command_keeps_freed_memory_for_reuse_instead_of_faulting_it_in_again():
    # A forward pass's activations are allocated and freed again for every batch: the page faults of a
    # 64 MB block allocated seven more times after three, as glibc's default allocator and after
    # keep_freed_memory_for_reuse().
    probe = ("import resource, sys, torch, infer\n"
             "if sys.argv[1] == 'keep': infer.keep_freed_memory_for_reuse()\n"
             "for _ in range(3): torch.ones(16 << 20)\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
             "for _ in range(7): torch.ones(16 << 20)\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    faults = {mode: int(subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True,
                                       check=True, cwd=REPO_ROOT).stdout) for mode in ("default", "keep")}
    pages = (64 << 20) // resource.getpagesize()
    assert faults["default"] > 6 * pages  # mapped fresh and unmapped every time
    assert faults["keep"] < pages // 4  # reused
