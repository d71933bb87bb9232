"""pack.py: a pack gives exactly the files' audio, labels and items; a changed source is re-packed, the rest
copied; a damaged pack is a one-line error; the command builds and verifies."""
import copy
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

import pack
from audio import as_float32, load_audio, read_file_list
from conftest import glide_clip, tiny_config
from config_defaults import DEFAULTS
from f0_labels import cached_f0, label_settings
from features import float_wave
from meldataset import MelDataset

PARAMS = copy.deepcopy(DEFAULTS["dataset_params"])
PARAMS["max_mel_length"] = 32


@pytest.fixture
def packed(corpus, tmp_path):
    paths = read_file_list(corpus[0])
    built, counts = pack.build_pack(paths, tmp_path / "train.pack", label_settings(PARAMS["f0_params"]), workers=1)
    return paths, built, counts


def test_round_trip_is_identical_to_the_files_path(packed):
    paths, built, counts = packed
    assert counts == {"packed": len(paths), "reused": 0, "skipped": 0} and built.paths == paths
    labels = label_settings(PARAMS["f0_params"])
    for index, path in enumerate(paths):
        samples, f0 = built.clip(index)
        assert samples.dtype == np.int16
        assert np.array_equal(as_float32(samples), load_audio(path))  # 16-bit 24 kHz: exact
        assert np.array_equal(f0, cached_f0(path, labels), equal_nan=True)
    assert built.verify() == len(paths)
    for train in (True, False):  # the loader's items are the same, crops and all
        from_files, from_pack = MelDataset(paths, PARAMS, train=train), MelDataset(built, PARAMS, train=train)
        for key in ((0, 3), (2, 17), (5, 99)):
            (wave_a, *rest_a), (wave_b, *rest_b) = from_files[key], from_pack[key]
            assert wave_a.dtype == torch.float32 and wave_b.dtype == torch.int16  # a pack's crops travel as int16
            torch.testing.assert_close(wave_a, float_wave(wave_b), rtol=0, atol=0)
            for a, b in zip(rest_a, rest_b):
                torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=0, atol=0, equal_nan=True)


def test_a_changed_source_is_repacked_and_the_rest_copied(packed, tmp_path):
    paths, built, _ = packed
    changed = glide_clip(150.0, 90.0, 1.1, np.random.default_rng(7))
    sf.write(paths[2], changed, 24000)
    stat = os.stat(paths[2])
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new mtime even on coarse clocks
    old_audio = [np.array(built.clip(i)[0]) for i in range(len(paths))]
    rebuilt, counts = pack.build_pack(paths, tmp_path / "train.pack", label_settings(PARAMS["f0_params"]), workers=1)
    assert counts == {"packed": 1, "reused": len(paths) - 1, "skipped": 0}
    assert np.array_equal(as_float32(rebuilt.clip(2)[0]), load_audio(paths[2]))
    assert len(rebuilt.clip(2)[1]) == 1 + len(load_audio(paths[2])) // 300
    for i in set(range(len(paths))) - {2}:
        assert np.array_equal(rebuilt.clip(i)[0], old_audio[i])
    data_files = [n for n in os.listdir(tmp_path / "train.pack") if n != "pack.json"]
    assert len(data_files) == 2  # the previous build's data files are gone
    assert rebuilt.verify() == len(paths)


def one_line(error):
    message = str(error.value)
    assert "\n" not in message and "rebuild" in message, message
    return message


def test_a_damaged_pack_is_a_one_line_error(packed, tmp_path):
    _, built, _ = packed
    folder = tmp_path / "train.pack"
    audio = folder / built.manifest["audio"]
    payload = bytearray(audio.read_bytes())
    payload[1001] ^= 0xFF
    audio.write_bytes(bytes(payload))
    with pytest.raises(pack.PackError) as error:
        pack.Pack(folder).verify()
    assert built.paths[0] in one_line(error) and "checksum" in str(error.value)
    audio.write_bytes(bytes(payload[:-10]))  # truncated
    with pytest.raises(pack.PackError) as error:
        pack.Pack(folder)
    assert str(audio) in one_line(error)
    (folder / "pack.json").write_text('{"format": 1, "entries": [')
    with pytest.raises(pack.PackError) as error:
        pack.Pack(folder)
    assert "damaged pack.json" in one_line(error)
    result = CliRunner().invoke(pack.main, ["verify", str(folder)])
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output


def test_the_command_builds_and_verifies_and_training_reads_the_pack(tmp_path):
    config_path = tiny_config(tmp_path)
    train_list = tmp_path / "data" / "train_list.txt"
    folder = tmp_path / "data" / "train.pack"
    result = CliRunner().invoke(pack.main, ["build", str(train_list), str(folder), "--config_path", config_path,
                                            "--workers", "1"])
    assert result.exit_code == 0 and "6 clips" in result.output and "6 packed" in result.output, result.output
    again = CliRunner().invoke(pack.main, ["build", str(train_list), str(folder), "--config_path", config_path])
    assert "0 packed, 6 unchanged" in again.output, again.output
    assert "all checksums match" in CliRunner().invoke(pack.main, ["verify", str(folder)]).output
    import train  # the trainer takes a pack where a list file was named
    from config import load_config
    config = load_config(config_path, [f"train_data={folder}"])
    data = train.prepare_labels(config)
    assert isinstance(data["train"], pack.Pack) and len(data["train"]) == 6 and isinstance(data["val"], list)


def test_cpu_training_leaves_workers_a_core_only_when_they_decode_files(packed, tmp_path, monkeypatch):
    from config import load_config
    from trainer import Trainer
    paths, built, _ = packed
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    config = load_config(tiny_config(tmp_path), ["device=cpu", "num_workers=1"])
    cores, previous = len(os.sched_getaffinity(0)), torch.get_num_threads()
    threads = {}
    try:
        for name, source in (("pack", built), ("files", paths)):
            Trainer(config, str(tmp_path / name), {"train": source, "val": paths})
            threads[name] = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
    assert threads == {"pack": cores, "files": max(1, cores - 1)}


def test_an_opus_pack_moves_the_audio_in_a_tenth_of_the_bytes_with_the_labels_exact(packed, tmp_path):
    paths, built, _ = packed
    result = CliRunner().invoke(pack.main, ["compress", built.folder, str(tmp_path / "train.opus"), "--kbps", "24",
                                            "--workers", "1"])
    assert result.exit_code == 0 and f"{len(paths)} clips" in result.output, result.output
    manifest = json.loads((tmp_path / "train.opus" / "opus-pack.json").read_text())
    compressed = os.path.getsize(tmp_path / "train.opus" / manifest["opus"])
    assert compressed < sum(entry["samples"] for entry in built.entries) * 2 / 8
    expanded = pack.expand_pack(tmp_path / "train.opus", tmp_path / "expanded.pack")
    assert expanded.paths == paths and expanded.label_hash == built.label_hash and expanded.verify() == len(paths)
    for index in range(len(paths)):
        (original, labels), (decoded, decoded_labels) = built.clip(index), expanded.clip(index)
        assert decoded.shape == original.shape  # the frame grid is kept
        assert np.array_equal(decoded_labels, labels, equal_nan=True)
        assert np.corrcoef(original.astype(float), decoded.astype(float))[0, 1] > 0.9  # the waveform, not noise
    wave, *_ = MelDataset(expanded, PARAMS, train=True)[(1, 5)]  # training reads it as any pack
    assert wave.dtype == torch.int16 and wave.abs().max() > 1000


def test_a_damaged_opus_pack_is_a_one_line_error(packed, tmp_path):
    _, built, _ = packed
    folder = tmp_path / "train.opus"
    pack.compress_pack(built, folder, workers=1)
    manifest = json.loads((folder / "opus-pack.json").read_text())
    audio = folder / manifest["opus"]
    payload = bytearray(audio.read_bytes())
    payload[manifest["entries"][2]["byte_offset"] + 100] ^= 0xFF
    audio.write_bytes(bytes(payload))
    with pytest.raises(pack.PackError) as error:
        pack.expand_pack(folder, tmp_path / "expanded.pack")
    message = str(error.value)
    assert "\n" not in message and built.paths[2] in message and "compress it again" in message
    (folder / "opus-pack.json").unlink()
    result = CliRunner().invoke(pack.main, ["expand", str(folder), str(tmp_path / "expanded.pack")])
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "not an Opus pack" in errors[0], result.output
