"""f0_labels.py: the cascade, the label cache and its sidecar, precompute and its CLI (real backends)."""
import json
import logging
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import f0_backends
import f0_labels
from audio import AudioError, SAMPLE_RATE, num_frames
from f0_backends import swiftf0_f0
from f0_labels import cache_paths, cached_f0, check_backends, compute_f0, label_file, precompute, uses_cuda
from tests.f0_helpers import default_f0_params, harmonic_tone, only_backends, up_down_glide, write_audio
from test_f0_backends import backend_settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def glide():
    return up_down_glide()


# ----------------------------------------------------------------------------------------------
# Cascade and backend availability
# ----------------------------------------------------------------------------------------------


def test_cascade_moves_on_when_first_backend_hears_silence(glide):
    audio, _ = glide
    # SwiftF0 treats audio peaking below 1e-3 as silence; PyWorld still tracks the quiet glide.
    quiet = audio * 1e-3
    params = only_backends(default_f0_params(), "swiftf0", "pyworld")
    assert f0_backends.count_voiced(swiftf0_f0(quiet, **backend_settings("swiftf0"))) == 0
    f0, backend = compute_f0(quiet, params)
    assert backend == "pyworld" and f0_backends.count_voiced(f0) >= params["min_voiced_frames"]
    assert compute_f0(audio, params)[1] == "swiftf0"


def test_cascade_reports_failure_with_zeros_when_every_backend_fails():
    silence = np.zeros(SAMPLE_RATE, np.float32)
    f0, backend = compute_f0(silence, only_backends(default_f0_params(), "swiftf0", "pyworld", "praat"))
    assert backend is None
    np.testing.assert_array_equal(f0, np.zeros(num_frames(SAMPLE_RATE), np.float32))


def test_disabled_backends_are_skipped():
    params = only_backends(default_f0_params(), "praat", "pyworld")
    assert check_backends(params) == ["praat", "pyworld"]
    params["praat"]["enabled"] = False
    assert check_backends(params) == ["pyworld"]


def test_backend_with_missing_package_is_skipped_with_one_warning(monkeypatch, caplog):
    monkeypatch.setitem(f0_backends.BACKEND_PACKAGES, "swiftf0", ("swift_f0_not_installed", "swift-f0"))
    params = only_backends(default_f0_params(), "swiftf0", "pyworld")
    with caplog.at_level(logging.WARNING, logger="f0_backends"):
        assert check_backends(params) == ["pyworld"]
        assert check_backends(params) == ["pyworld"]
    warnings = [record for record in caplog.records if "swift_f0_not_installed" in record.getMessage()]
    assert len(warnings) == 1


def test_no_available_backend_refuses_to_start(monkeypatch):
    monkeypatch.setitem(f0_backends.BACKEND_PACKAGES, "pyworld", ("pyworld_not_installed", "pyworld"))
    with pytest.raises(RuntimeError, match="no F0 backend is available") as error:
        check_backends(only_backends(default_f0_params(), "pyworld"))
    assert "\n" not in str(error.value)
    with pytest.raises(RuntimeError):
        check_backends(only_backends(default_f0_params()))


def test_unknown_backend_name_is_an_error():
    params = default_f0_params()
    params["backend_order"] = ["pyworld", "yaapt"]
    with pytest.raises(ValueError, match="yaapt"):
        check_backends(params)


def test_uses_cuda_follows_torchcrepe_device():
    import torch

    params = default_f0_params()
    params["torchcrepe"]["device"] = "cuda:1"
    assert not uses_cuda(params)  # torchcrepe disabled
    params["torchcrepe"]["enabled"] = True
    assert uses_cuda(params)
    params["torchcrepe"]["device"] = "cpu"
    assert not uses_cuda(params)
    params["torchcrepe"]["device"] = "auto"
    assert uses_cuda(params) == torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def clip(tmp_path):
    """A short voiced clip on disk and fast settings (dio, no fallback) for the cache tests."""
    (tmp_path / "data").mkdir()
    path = write_audio(tmp_path / "data" / "clip.wav", harmonic_tone(np.full(SAMPLE_RATE // 2, 180.0)))
    params = only_backends(default_f0_params(), "pyworld")
    params["pyworld"].update(algorithm="dio", fallback=None)
    return path, params


def test_cache_name_follows_effective_settings(clip):
    path, params = clip
    array_path, sidecar_path = cache_paths(path, params)
    assert os.path.dirname(array_path) == os.path.dirname(path)
    assert os.path.basename(array_path).startswith("clip.wav.f0-") and array_path.endswith(".npy")
    assert sidecar_path == array_path[: -len(".npy")] + ".json"

    def name_with(change):
        changed = json.loads(json.dumps(params))
        change(changed)
        return cache_paths(path, changed)[0]

    assert name_with(lambda p: p["pyworld"].update(f0_ceil=600.0)) != array_path
    assert name_with(lambda p: p.update(min_voiced_frames=10)) != array_path
    assert name_with(lambda p: p["praat"].update(enabled=True)) != array_path
    # Settings of disabled backends, and settings that only change speed or device, keep the cache.
    assert name_with(lambda p: p["praat"].update(min_pitch=60.0)) == array_path
    assert name_with(lambda p: p["torchcrepe"].update(batch_size=64, device="cpu")) == array_path


def test_cache_is_written_with_sidecar_and_then_reused(clip):
    path, params = clip
    f0, meta, computed = label_file(path, params)
    assert computed and f0.shape == (num_frames(SAMPLE_RATE // 2),)
    array_path, sidecar_path = cache_paths(path, params)
    np.testing.assert_array_equal(np.load(array_path), f0)
    sidecar = json.loads(pathlib.Path(sidecar_path).read_text())
    assert sidecar == meta
    assert sidecar["status"] == "ok" and sidecar["backend"] == "pyworld"
    assert sidecar["backend_settings"]["algorithm"] == "dio"
    assert "pyworld" in sidecar["versions"]
    assert {key: sidecar["audio"][key] for key in ("size", "mtime_ns")} == {
        "size": os.path.getsize(path), "mtime_ns": os.stat(path).st_mtime_ns}
    assert len(sidecar["audio"]["fingerprint"]) == 40
    assert sidecar["frames"] == f0.size and 0.9 < sidecar["voiced_fraction"] <= 1.0
    reused, _, computed_again = label_file(path, params)
    assert not computed_again
    np.testing.assert_array_equal(reused, f0)
    assert not [name for name in os.listdir(os.path.dirname(path)) if name.endswith(".tmp")]


def test_changed_audio_is_recomputed(clip):
    path, params = clip
    before = cached_f0(path, params)
    write_audio(path, harmonic_tone(np.full(SAMPLE_RATE // 2 + 600, 120.0)))
    after, _, computed = label_file(path, params)
    assert computed and after.size == before.size + 2
    assert np.median(after[after > 0]) == pytest.approx(120, rel=0.02)


def test_same_size_and_mtime_but_new_content_is_recomputed(clip):
    path, params = clip
    before = cached_f0(path, params)
    stat = os.stat(path)
    write_audio(path, harmonic_tone(np.full(SAMPLE_RATE // 2, 120.0)))  # same length and format: same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (os.path.getsize(path), os.stat(path).st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    after, _, computed = label_file(path, params)
    assert computed
    assert np.median(before[before > 0]) == pytest.approx(180, rel=0.02)
    assert np.median(after[after > 0]) == pytest.approx(120, rel=0.02)


def test_old_format_cache_is_recomputed(clip, monkeypatch):
    path, params = clip
    with monkeypatch.context() as old:
        old.setattr(f0_labels, "CACHE_FORMAT", 1)
        old_array, _ = cache_paths(path, params)
        assert label_file(path, params)[2]
    assert cache_paths(path, params)[0] != old_array and os.path.isfile(old_array)
    assert label_file(path, params)[2]  # the current format never reads the old file


def break_sidecar(array_path, sidecar_path):
    os.remove(sidecar_path)


def stale_sidecar(array_path, sidecar_path):
    meta = json.loads(pathlib.Path(sidecar_path).read_text())
    meta["settings_hash"] = "00000000"
    pathlib.Path(sidecar_path).write_text(json.dumps(meta))


def other_package_version(array_path, sidecar_path):
    meta = json.loads(pathlib.Path(sidecar_path).read_text())
    meta["versions"]["pyworld"] = "0.0.1"
    pathlib.Path(sidecar_path).write_text(json.dumps(meta))


def garbled_sidecar(array_path, sidecar_path):
    pathlib.Path(sidecar_path).write_text('{"status": "ok", ')


def truncated_array(array_path, sidecar_path):
    data = pathlib.Path(array_path).read_bytes()
    pathlib.Path(array_path).write_bytes(data[: len(data) - 40])


def corrupt_array(array_path, sidecar_path):
    data = bytearray(pathlib.Path(array_path).read_bytes())
    data[-5] ^= 0xFF  # same size, valid header: only the checksum can tell
    pathlib.Path(array_path).write_bytes(bytes(data))


def missing_array(array_path, sidecar_path):
    os.remove(array_path)


@pytest.mark.parametrize("damage", [break_sidecar, stale_sidecar, other_package_version, garbled_sidecar,
                                    truncated_array, corrupt_array, missing_array])
def test_damaged_cache_is_recomputed_never_trusted(clip, damage):
    path, params = clip
    good = cached_f0(path, params)
    damage(*cache_paths(path, params))
    recovered, _, computed = label_file(path, params)
    assert computed
    np.testing.assert_array_equal(recovered, good)
    assert not label_file(path, params)[2]  # and the repaired cache is trusted again


def test_failed_clip_is_logged_once_and_cached_as_zeros_marked_failed(tmp_path, caplog):
    path = write_audio(tmp_path / "silent.wav", np.zeros(SAMPLE_RATE, np.float32))
    params = only_backends(default_f0_params(), "pyworld")
    with caplog.at_level(logging.WARNING, logger="f0_backends"):
        f0 = cached_f0(path, params)
        cached_f0(path, params)
    assert not f0.any()
    assert len([record for record in caplog.records if path in record.getMessage()]) == 1
    sidecar = json.loads(pathlib.Path(cache_paths(path, params)[1]).read_text())
    assert sidecar["status"] == "failed" and sidecar["backend"] is None and sidecar["voiced_fraction"] == 0


def test_cache_dir_keeps_read_only_data_folder_untouched(clip, tmp_path):
    path, params = clip
    data_folder = os.path.dirname(path)
    params["cache_dir"] = str(tmp_path / "cache")
    before = sorted(os.listdir(data_folder))
    os.chmod(data_folder, 0o555)
    try:
        # Tests run as root, which ignores the mode bits; what is checked is that nothing lands there.
        f0 = cached_f0(path, params)
        assert sorted(os.listdir(data_folder)) == before
    finally:
        os.chmod(data_folder, 0o755)
    array_path, sidecar_path = cache_paths(path, params)
    assert array_path.startswith(params["cache_dir"] + os.sep)
    assert array_path.endswith(os.path.join(data_folder, os.path.basename(array_path)).lstrip(os.sep))
    np.testing.assert_array_equal(np.load(array_path), f0)
    assert os.path.isfile(sidecar_path)


def test_unwritable_cache_location_is_a_one_line_error(clip, tmp_path):
    path, params = clip
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    params["cache_dir"] = str(blocker)
    with pytest.raises(OSError, match="cache_dir") as error:
        cached_f0(path, params)
    assert "\n" not in str(error.value) and path in str(error.value)


def test_cache_of_missing_audio_is_an_audio_error(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        cached_f0(str(tmp_path / "gone.wav"), only_backends(default_f0_params(), "pyworld"))


# ----------------------------------------------------------------------------------------------
# Precompute
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def corpus(tmp_path):
    """Three good clips (two of them stereo 44.1 kHz flac) and one garbage file."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    good = [
        write_audio(folder / "a.wav", harmonic_tone(np.full(SAMPLE_RATE, 150.0))),
        write_audio(folder / "b.flac", np.stack([harmonic_tone(np.full(44100, 220.0))] * 2, axis=1), 44100),
        write_audio(folder / "c.flac", np.stack([harmonic_tone(np.full(22050, 110.0))] * 2, axis=1), 44100),
    ]
    bad = folder / "bad.wav"
    bad.write_bytes(b"not audio at all")
    params = only_backends(default_f0_params(), "pyworld")
    params["pyworld"].update(algorithm="dio", fallback=None)
    return good, str(bad), params


def test_precompute_labels_in_parallel_and_resumes(corpus, capsys):
    good, bad, params = corpus
    first = precompute(good + [bad], params, workers=2)
    assert first["files"] == 4 and first["computed"] == 3 and first["verified"] == 0
    assert first["bad_audio"] == 1 and first["bad_files"] == [bad] and first["backends"] == {"pyworld": 3}
    assert first["audio_hours"] == pytest.approx(2.5 / 3600, rel=1e-3)
    assert bad in capsys.readouterr().err
    second = precompute(good + [bad], params, workers=2)
    assert second["computed"] == 0 and second["verified"] == 3
    for path in good:
        assert os.path.isfile(cache_paths(path, params)[0])


def test_precompute_spawns_clean_workers_when_a_backend_uses_cuda(corpus, monkeypatch):
    good, _, params = corpus
    # No GPU here: force the CUDA answer to exercise the spawn start method the GPU path takes.
    monkeypatch.setattr(f0_labels, "uses_cuda", lambda f0_params: True)
    summary = precompute(good, params, workers=2)
    assert summary["computed"] == 3 and summary["backends"] == {"pyworld": 3}


def test_precompute_strict_stops_at_bad_audio(corpus):
    good, bad, params = corpus
    with pytest.raises(AudioError, match="unreadable"):
        precompute([bad] + good, params, workers=1, strict=True)


def write_config(tmp_path, corpus_files, params, strict=False):
    train_list = tmp_path / "train.txt"
    train_list.write_text("".join(f"{path}|0\n" for path in corpus_files[:-1]))
    val_list = tmp_path / "val.txt"
    val_list.write_text(f"{corpus_files[-1]}|0\n")
    config = {"train_data": str(train_list), "val_data": str(val_list),
              "dataset_params": {"strict": strict, "f0_params": params}}
    config_path = tmp_path / "config.yml"
    config_path.write_text(yaml.safe_dump(config))
    return str(config_path)


def test_cli_prints_summary(corpus, tmp_path):
    good, bad, params = corpus
    config_path = write_config(tmp_path, good + [bad], params)
    result = CliRunner().invoke(f0_labels.main, ["--config_path", config_path, "--workers", "1"])
    assert result.exit_code == 0, result.output
    for heading in ("files", "audio", "backends", "failures", "wall time", "throughput"):
        assert heading in result.output
    assert "pyworld 3" in result.output and "1 bad audio" in result.output


def test_cli_strict_fails_with_one_line(corpus, tmp_path):
    good, bad, params = corpus
    result = CliRunner().invoke(f0_labels.main, ["--config_path", write_config(tmp_path, good + [bad], params, True)])
    assert result.exit_code == 1
    assert "Error:" in result.output and bad in result.output


def test_cli_runs_as_a_script_with_worker_processes(corpus, tmp_path):
    good, bad, params = corpus
    config_path = write_config(tmp_path, good, params)
    command = [sys.executable, "f0_labels.py", "--config_path", config_path, "--workers", "2"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "3 computed" in result.stdout


# ----------------------------------------------------------------------------------------------
# Range and consensus
# ----------------------------------------------------------------------------------------------


def consensus_params(*names):
    params = only_backends(default_f0_params(), *names)
    params["mode"] = "consensus"
    return params


@pytest.mark.parametrize("hz", [55.0, 900.0])
@pytest.mark.parametrize("mode", ["cascade", "consensus"])
def test_harmonic_tones_at_both_ends_of_the_range_are_labelled_within_20_cents(hz, mode):
    audio = harmonic_tone(np.full(SAMPLE_RATE, hz)).astype(np.float32)
    params = dict(default_f0_params(), mode=mode)  # the default backends and ranges
    f0, backend = compute_f0(audio, params)
    assert backend == ("pyworld" if mode == "cascade" else "consensus")
    inner = f0[8:-8]  # away from the clip's edges
    assert np.isfinite(inner).all() and (inner > 0).all()
    assert np.abs(1200 * np.log2(inner / hz)).max() <= 20.0


def test_consensus_needs_min_agree_trackers_within_the_tolerance():
    harvest = [200.0, 200.0, 200.0, 0.0, 0.0, 100.0, 300.0, 0.0]
    swift = [202.0, 201.0, 400.0, 0.0, 0.0, 200.0, 150.0, 220.0]
    praat = [198.0, 0.0, 201.0, 0.0, 180.0, 300.0, 0.0, 0.0]
    f0 = f0_labels.consensus_f0([harvest, swift, praat], min_agree=2, tolerance_cents=50.0)
    assert f0[0] == pytest.approx((200.0 * 202.0 * 198.0) ** (1 / 3), rel=1e-5)  # all three: geometric mean
    assert f0[1] == pytest.approx((200.0 * 201.0) ** 0.5, rel=1e-5)  # two voiced agree, one unvoiced
    assert f0[2] == pytest.approx((200.0 * 201.0) ** 0.5, rel=1e-5)  # the octave error is outvoted
    assert f0[3] == 0.0 and f0[4] == 0.0 and f0[7] == 0.0  # >= 2 say unvoiced, no agreeing voiced pair
    assert np.isnan(f0[5]) and np.isnan(f0[6])  # three pitches / two apart and one unvoiced: contested
    # Two of two trackers that disagree on voicing: contested.
    assert np.isnan(f0_labels.consensus_f0([[200.0], [0.0]], 2, 50.0)).all()


def test_consensus_of_real_trackers_on_silence_then_a_tone():
    """harvest, swiftf0 and praat combined frame by frame: silence certain unvoiced, the tone certain voiced."""
    tone = harmonic_tone(np.full(SAMPLE_RATE, 150.0))
    audio = np.concatenate([np.zeros(SAMPLE_RATE // 2), tone]).astype(np.float32)
    params = consensus_params("pyworld", "swiftf0", "praat")
    f0, backend = compute_f0(audio, params)
    contours = [f0_backends.BACKENDS[name](audio, **f0_backends.backend_options(params, name))
                for name in ("pyworld", "swiftf0", "praat")]
    np.testing.assert_array_equal(f0, f0_labels.consensus_f0(contours, 2, 50.0))
    voiced = np.isfinite(f0) & (f0 > 0)
    assert backend == "consensus" and (f0[:30] == 0).all()  # silence: every tracker says unvoiced
    assert voiced[50:110].all() and np.abs(1200 * np.log2(f0[50:110] / 150.0)).max() < 20


def test_consensus_with_fewer_backends_than_min_agree_is_a_one_line_error():
    params = consensus_params("pyworld")
    with pytest.raises(RuntimeError, match="min_agree is 2 but 1 F0 backends"):
        f0_labels.label_settings(params)


def test_uncertain_frames_survive_the_cache(tmp_path):
    path = write_audio(tmp_path / "tone.wav", harmonic_tone(np.full(SAMPLE_RATE // 2, 150.0)))
    params = consensus_params("pyworld", "swiftf0", "praat")
    f0, meta, computed = label_file(path, params)
    assert computed and meta["backend"] == "consensus"
    assert meta["uncertain_fraction"] == pytest.approx(np.isnan(f0).mean())
    cached, _, computed_again = label_file(path, params)
    assert not computed_again
    np.testing.assert_array_equal(cached, f0)  # NaN where NaN


# ----------------------------------------------------------------------------------------------
# Claims: one process computes a label, others wait for it
# ----------------------------------------------------------------------------------------------


def test_second_precompute_waits_for_the_first_and_computes_nothing(tmp_path):
    long_clip = harmonic_tone(np.full(10 * SAMPLE_RATE, 130.0) * np.linspace(1.0, 1.5, 10 * SAMPLE_RATE))
    path = write_audio(tmp_path / "long.wav", long_clip)
    params = only_backends(default_f0_params(), "pyworld")
    claim = cache_paths(path, params)[0][: -len(".npy")] + ".claim"
    config_path = write_config(tmp_path, [path, path], params)
    first = subprocess.Popen([sys.executable, "f0_labels.py", "--config_path", config_path, "--workers", "1"],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(claim) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert json.loads(pathlib.Path(claim).read_text())["pid"] == first.pid
    second = precompute([path], params, workers=1)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert "1 computed" in out and second["computed"] == 0 and second["verified"] == 1
    assert not os.path.exists(claim)


def test_claim_of_a_dead_process_is_taken_over(clip):
    path, params = clip
    claim = cache_paths(path, params)[0][: -len(".npy")] + ".claim"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pathlib.Path(claim).write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout), "time": 0}))
    f0, _, computed = label_file(path, params)
    assert computed and f0_backends.count_voiced(f0) > 0 and not os.path.exists(claim)
    assert not [name for name in os.listdir(os.path.dirname(path)) if ".claim" in name]
