"""Fault matrix (issue 15): every fault a user can hit gives one clear line or recovers, and nothing is lost.

Real files and real processes throughout, no mocks: a SIGTERM to the whole process group of a `train.py`
with loader workers, a full disk (a tiny tmpfs in a private mount namespace where the machine allows it,
else a file-size limit), a read-only data folder (a read-only bind mount, or file modes when not root),
damaged checkpoints, lists and corpora on disk. Each test names the defect of the issue it covers.
"""
import copy
import functools
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from click.testing import CliRunner

import evaluate
import infer
import model as model_module
import train
from audio import AudioError, SAMPLE_RATE, load_audio, read_file_list
from config import ConfigError, load_config
from conftest import glide_clip, tiny_config
from model import CheckpointError
from train import prepare_labels
from trainer import Trainer, TrainingStopped
from test_model import randomised_lstm_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------- helpers


def one_line_error(result, *fragments):
    """A CLI result that failed with one `Error: ...` line holding every fragment, and no traceback."""
    assert result.exit_code != 0, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def one_line_process_error(completed, *fragments):
    """The same for a finished subprocess (stdout and stderr together)."""
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def train_cli(*args):
    return CliRunner().invoke(train.main, [str(arg) for arg in args])


def infer_cli(*args):
    return CliRunner().invoke(infer.main, [str(arg) for arg in args])


def evaluate_cli(*args):
    return CliRunner().invoke(evaluate.main, [str(arg) for arg in args])


def label_caches(folder):
    return [name for name in os.listdir(folder) if ".f0-" in name]


@functools.lru_cache(maxsize=None)
def private_mounts():
    """Whether this machine lets a process mount in a private mount namespace (root in most containers)."""
    with tempfile.TemporaryDirectory() as folder:
        probe = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=8k tmpfs "$0"', folder]
        try:
            return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


def on_full_disk(folder, size_kb, argv):
    """(argv, preexec_fn) that run argv with `folder` on a fresh tmpfs of size_kb (a real full disk: ENOSPC);
    where mounting is not allowed, with files capped at size_kb instead (RLIMIT_FSIZE: EFBIG)."""
    if private_mounts():
        script = f'mount -t tmpfs -o size={size_kb}k tmpfs "$0" && exec "$@"'
        return ["unshare", "-m", "sh", "-c", script, str(folder), *map(str, argv)], None

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (size_kb * 1024, size_kb * 1024))

    return list(map(str, argv)), limit_file_size


def on_read_only(folder, argv):
    """argv run with `folder` read-only: a read-only bind mount (root ignores file modes), or file modes."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        return list(map(str, argv))
    if not private_mounts():
        pytest.skip("running as root without mount namespaces: no way to make a folder read-only")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, str(folder), *map(str, argv)]


def run_process(argv, preexec_fn=None, timeout=600):
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def config_file(tmp_path, **sections):
    path = tiny_config(tmp_path, **sections)
    return path, load_config(path)


def state_of(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture
def lstm_checkpoint(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"net": randomised_lstm_model().state_dict(), "model_params": {"sequence_model": "lstm"},
                "vuv_threshold": 0.4}, path)
    return path


def write_wave(path, seconds, sr=SAMPLE_RATE, seed=0):
    wave = glide_clip(120, 220, seconds, np.random.default_rng(seed), silence=0.05)
    sf.write(path, wave, sr)
    return path


# ---------------------------------------------------------------------------------------------- 1: SIGTERM


def test_1_sigterm_to_the_process_group_with_loader_workers_saves_last(tmp_path):
    """Slurm and pre-emption signal the whole process group: the loader worker must outlive the main process's
    clean stop, which saves last.pth after the current step."""
    path, config = config_file(tmp_path, epochs=40, training={"plot_every": 1000}, save_freq=1000)
    log = os.path.join(config["log_dir"], "train.log")
    process = subprocess.Popen([sys.executable, "train.py", "--config_path", path, "--set", "num_workers=1"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # setsid: its own process group, as under Slurm
    try:
        deadline = time.monotonic() + 400
        while not (os.path.exists(log) and "epoch 1:" in open(log).read()):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 1, output
    assert "stopped by signal SIGTERM" in output and "killed by signal" not in output, output
    assert "Traceback" not in output, output
    state = state_of(os.path.join(config["log_dir"], "last.pth"))
    assert state["batches_done"] >= 1 and state["step"] >= 4  # saved on the signal, mid-epoch, not by epoch 1
    for _ in range(100):  # the workers, which ignored the signal, are gone with the main process
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a loader worker outlived the stopped run")


# ---------------------------------------------------------------------------------------------- 2: non-finite


@pytest.mark.parametrize("override", ["optimizer_params.lr=.inf", "training.grad_clip=.nan",
                                      "optimizer_params.betas=[0.9, .inf]", "loss_params.lambda_vuv_candidates=[.nan]",
                                      "dataset_params.dataloader.prefetch_factor=.inf"])
def test_2_non_finite_numbers_are_config_errors(tmp_path, override):
    with pytest.raises(ConfigError, match="finite") as info:
        load_config(tiny_config(tmp_path), [override])
    assert "\n" not in str(info.value)


def test_2_an_override_does_not_leak_into_the_defaults(tmp_path):
    """`--set` on a key the file does not give changed the shared DEFAULTS, so the next config read in the same
    process (a test, a notebook) inherited it."""
    from config_defaults import DEFAULTS
    load_config(tiny_config(tmp_path), ["dataset_params.dataloader.prefetch_factor=4", "training.grad_clip=2.0"])
    assert DEFAULTS["dataset_params"]["dataloader"]["prefetch_factor"] is None
    assert load_config(tiny_config(tmp_path))["training"]["grad_clip"] == DEFAULTS["training"]["grad_clip"] == 5.0


def test_2_non_finite_weights_stop_the_run_and_never_make_a_best_checkpoint(tmp_path):
    """A BatchNorm running variance that overflowed: training's losses stay finite (a training step normalises
    by the batch's own statistics), so only the weights show it; validation then scores nonsense."""
    path, config = config_file(tmp_path, epochs=2)
    trainer = Trainer(config, config["log_dir"], prepare_labels(config))
    with torch.no_grad():
        trainer.model.pool_block[0].running_var[0] = float("inf")
    with pytest.raises(TrainingStopped, match="non-finite weights after step 3 .*pool_block.0.running_var") as info:
        trainer.fit()
    assert "\n" not in str(info.value)
    assert not any(name.endswith(".pth") for name in os.listdir(config["log_dir"]))


def test_2_infer_and_the_export_refuse_non_finite_weights(tmp_path):
    net = randomised_lstm_model().state_dict()
    net["classifier.bias"] = torch.full_like(net["classifier.bias"], float("nan"))
    checkpoint = tmp_path / "diverged.pth"
    torch.save({"net": net, "model_params": {"sequence_model": "lstm"}}, checkpoint)
    wav = write_wave(tmp_path / "a.wav", 0.5)
    one_line_error(infer_cli("--checkpoint", checkpoint, wav, "--out", tmp_path / "out", "--device", "cpu"),
                   "diverged.pth", "NaN or infinite", "classifier.bias")
    assert not (tmp_path / "out").exists()
    export = CliRunner().invoke(model_module.main, [str(checkpoint), str(tmp_path / "host.pth")])
    one_line_error(export, "diverged.pth", "NaN or infinite")
    assert not (tmp_path / "host.pth").exists()


# ---------------------------------------------------------------------------------------------- 3: infer writes


def test_3_full_disk_during_infer_gives_one_line_and_no_truncated_output(tmp_path, lstm_checkpoint):
    short, long = write_wave(tmp_path / "short.wav", 0.2), write_wave(tmp_path / "long.wav", 10.0, seed=1)
    out = tmp_path / "out"
    out.mkdir()
    argv, preexec = on_full_disk(out, 16, [sys.executable, "infer.py", "--checkpoint", lstm_checkpoint, short, long,
                                           "--out", out, "--device", "cpu"])
    completed = run_process(argv, preexec)
    line = one_line_process_error(completed, "long.csv", "cannot write", "1 file(s) written before it")
    assert "No space left on device" in line or "File too large" in line
    if preexec is not None:  # a file-size limit leaves the folder visible: the short CSV is complete, no temporary
        assert sorted(os.listdir(out)) == ["short.csv"]
        assert np.loadtxt(out / "short.csv", delimiter=",", skiprows=1).shape == (1 + 7200 // 300, 4)


def test_3_unwritable_out_is_one_line(tmp_path, lstm_checkpoint):
    wav = write_wave(tmp_path / "a.wav", 0.3)
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    one_line_error(infer_cli("--checkpoint", lstm_checkpoint, wav, "--out", blocker / "out", "--device", "cpu"),
                   "cannot create the output folder")
    taken = tmp_path / "out"  # the output name is taken by a folder: the rename fails
    (taken / "a.csv").mkdir(parents=True)
    one_line_error(infer_cli("--checkpoint", lstm_checkpoint, wav, "--out", taken, "--device", "cpu"),
                   "a.csv: cannot write")
    assert os.listdir(taken) == ["a.csv"]  # no temporary file left behind


# ---------------------------------------------------------------------------------------------- 4: resume


def test_4_mid_epoch_resume_with_dropout_gives_the_uninterrupted_weights(tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        straight_config = load_config(tiny_config(tmp_path, epochs=1, model_params={"cnn_dropout": 0.5},
                                                  training={"plot_every": 1000}))
        data = prepare_labels(straight_config)
        straight = Trainer(straight_config, str(tmp_path / "straight"), data)
        straight.fit()
        # The time budget ends epoch 1 after its first batch (then validates and saves), as a signal would.
        budget = copy.deepcopy(straight_config)
        budget["training"]["max_minutes"] = 1e-6
        part = Trainer(budget, budget["log_dir"], data)
        part.fit()
        last = os.path.join(budget["log_dir"], "last.pth")
        assert (state_of(last)["epoch"], state_of(last)["batches_done"]) == (0, 1)
        resumed = Trainer(straight_config, budget["log_dir"], data, resume_from=last)
        resumed.fit()
    finally:
        torch.use_deterministic_algorithms(False)
    assert resumed.step == straight.step == 3
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


# ---------------------------------------------------------------------------------------------- 6: read-only data


def test_6_read_only_data_folder_is_one_line(tmp_path):
    path, config = config_file(tmp_path, epochs=1)
    data = os.path.dirname(config["train_data"])
    try:
        completed = run_process(on_read_only(data, [sys.executable, "train.py", "--config_path", path]))
    finally:
        os.chmod(data, 0o755)
    line = one_line_process_error(completed, data)
    assert "Read-only file system" in line or "Permission denied" in line
    assert not label_caches(data)


# ---------------------------------------------------------------------------------------------- 7: no labels


def test_7_all_silent_audio_stops_before_training_counting_the_files(tmp_path):
    path, config = config_file(tmp_path)
    for list_file in (config["train_data"], config["val_data"]):
        for audio in read_file_list(list_file):
            sf.write(audio, np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    one_line_error(train_cli("--config_path", path), "all 6 files got no F0 label")
    assert not os.path.exists(os.path.join(config["log_dir"], "last.pth"))


# ---------------------------------------------------------------------------------------------- 8: encodings


def test_8_a_bom_keeps_the_first_file_and_latin1_is_one_line(tmp_path):
    first, second = write_wave(tmp_path / "é1.wav", 0.2), write_wave(tmp_path / "b.wav", 0.2)
    bom_list = tmp_path / "bom.txt"
    bom_list.write_bytes(b"\xef\xbb\xbf" + f"{first}|spk\n{second}|spk\n".encode())
    assert read_file_list(bom_list) == [str(first), str(second)]
    latin = tmp_path / "latin.txt"
    latin.write_bytes(f"{second}|spk\n".encode() + "café.wav|spk\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.txt:2: not UTF-8 text \(byte 0xe9") as info:
        read_file_list(latin)
    assert "\n" not in str(info.value)
    path = tiny_config(tmp_path, val_data=str(latin))  # through the command: one line, before any training
    one_line_error(train_cli("--config_path", path), "latin.txt:2", "not UTF-8")


def reference_corpus(folder, clips=2):
    """A small evaluation corpus: manifest.csv, wav/<id>.wav and ref/<id>.csv (5 ms steps)."""
    (folder / "wav").mkdir(parents=True)
    (folder / "ref").mkdir()
    rows = ["id,wav,ref"]
    for index in range(clips):
        clip_id = f"clip{index}_clean"
        write_wave(folder / "wav" / f"{clip_id}.wav", 0.5, seed=index)
        times = np.arange(0, 0.6, 0.005)
        np.savetxt(folder / "ref" / f"{clip_id}.csv", np.column_stack([times, np.full(times.size, 150.0)]),
                   fmt="%.4f", delimiter=",", header="time,f0", comments="")
        rows.append(f"{clip_id},wav/{clip_id}.wav,ref/{clip_id}.csv")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_8_evaluate_manifest_with_a_bom_and_with_latin1(tmp_path):
    corpus = reference_corpus(tmp_path / "corpus")
    manifest = corpus / "manifest.csv"
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    assert [clip["id"] for clip in evaluate.read_manifest(str(corpus))] == ["clip0_clean", "clip1_clean"]
    manifest.write_bytes(manifest.read_bytes() + "caf\xe9_clean,wav/x.wav,ref/x.csv\n".encode("latin-1"))
    one_line_error(evaluate_cli("--reference", corpus, "--backends", "harvest"), "manifest.csv:4", "not UTF-8")


# ---------------------------------------------------------------------------------------------- 9: output names


def test_9_outputs_of_clashing_names_stay_distinct(tmp_path, lstm_checkpoint):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for path in (folder / "a.wav", folder / "sub" / "a.wav", folder / "a.wav.flac"):
        write_wave(path, 0.3)
    result = infer_cli("--checkpoint", lstm_checkpoint, folder, "--out", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "wrote 3 file(s)" in result.output
    assert sorted(os.listdir(tmp_path / "out")) == ["a.wav.csv", "a.wav.flac.csv", "sub__a.wav.csv"]
    # distinct files whose relative names still meet (`a__b.wav` and `a/b.wav`) get a number
    assert infer.output_names(["a__b.wav", "a__b.flac", "a/b.wav", "b.wav"]) == \
        ["a__b.wav", "a__b.flac", "a__b.wav~2", "b.wav"]


# ---------------------------------------------------------------------------------------------- 10: evaluate


@pytest.mark.parametrize("damage, fragments", [
    (lambda c: (c / "ref" / "clip1_clean.csv").write_text(""), ["clip1_clean.csv", "needs a header time,f0"]),
    (lambda c: (c / "ref" / "clip1_clean.csv").write_text("time,f0\n"), ["clip1_clean.csv", "at least one row"]),
    (lambda c: (c / "ref" / "clip0_clean.csv").write_text("time,f0\n0.0,150\n0.005,abc\n"),
     ["clip0_clean.csv:3", "'abc'", "not a pair of numbers"]),
    (lambda c: (c / "ref" / "clip0_clean.csv").write_text("time,f0\n0.0\n"), ["clip0_clean.csv:2", "None"]),
    (lambda c: (c / "manifest.csv").write_text("id,wav,ref\nclip0_clean,wav/clip0_clean.wav\n"),
     ["manifest.csv:2", "no ref"]),
    (lambda c: (c / "manifest.csv").write_text(""), ["manifest.csv", "needs a header id,wav,ref"]),
    (lambda c: os.remove(c / "wav" / "clip1_clean.wav"), ["manifest.csv:3", "audio file not found", "fix the row"]),
])
def test_10_broken_references_and_manifest_rows_are_one_line(tmp_path, damage, fragments):
    corpus = reference_corpus(tmp_path / "corpus")
    damage(corpus)
    line = one_line_error(evaluate_cli("--reference", corpus, "--backends", "harvest"), *fragments)
    assert "list file" not in line  # 13: a manifest row is not a list file's


def test_10_evaluate_unwritable_out_is_one_line_before_the_evaluation(tmp_path):
    corpus = reference_corpus(tmp_path / "corpus")
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    result = evaluate_cli("--reference", corpus, "--backends", "harvest", "--out", blocker / "results")
    one_line_error(result, "results", "cannot write")
    assert "RPA" not in result.output  # refused before any system ran


# ---------------------------------------------------------------------------------------------- 11-14: config


@pytest.mark.parametrize("text, overrides, fragments", [
    ("epochs:\n", [], ["`epochs` is empty"]),
    ("device:\n", [], ["`device` is empty"]),
    ("log_dir:\n", [], ["`log_dir` is empty"]),
    ("", ["seed=null"], ["`seed` is empty"]),
    ("", ["optimizer_params.betas=[0.9]"], ["optimizer_params.betas", "two numbers"]),
    ("", ["model_params.sequence_model=transformer", "model_params.transformer.num_heads=3"],
     ["num_heads", "must divide", "d_model"]),
    ("", ["dataset_params.f0_params.pyworld.f0_floor=-1"], ["pyworld.f0_floor", "> 0"]),
    ("", ["optimizer_params.weight_decay=-0.1"], ["weight_decay", ">= 0"]),  # 13: from config.py, not AdamW
    ("", ["model_params.lstm.hidden_size=0"], ["hidden_size", "> 0"]),  # 13: from config.py, not nn.LSTM
    ("", ["dataset_params.sr=16000"], ["dataset_params.sr", "must be 24000"]),  # 14
    ("", ["training.max_minutes=-5"], ["max_minutes", ">= 0"]),  # 14
    ("", ["optimizer_params.lr=.inf"], ["optimizer_params.lr", "finite"]),  # 2
    ("", ["optimizer_params.lr=abc"], ["optimizer_params.lr", "must be a float"]),
    ("", ["dataset_params.synthetic_data.resynthesis.target_pitch_range=[0, 1000]"],
     ["resynthesis.target_pitch_range", "0 < low <= high"]),
])
def test_11_config_faults_are_one_line_before_any_work(tmp_path, text, overrides, fragments):
    path = tiny_config(tmp_path)
    with open(path, "a") as handle:
        handle.write(text)
    result = train_cli("--config_path", path, *[arg for item in overrides for arg in ("--set", item)])
    one_line_error(result, *fragments)
    assert not os.path.exists(tmp_path / "run") and not label_caches(tmp_path / "data")


def test_11_unreadable_config_files_are_one_line(tmp_path):
    latin = tmp_path / "latin.yml"
    latin.write_bytes("# réglages\nepochs: 3\n".encode("latin-1"))
    one_line_error(train_cli("--config_path", latin), "latin.yml:1", "not UTF-8")
    one_line_error(train_cli("--config_path", tmp_path), "is a folder")


def damaged_checkpoints(folder):
    """name -> a file that is not a usable checkpoint."""
    good = folder / "good.pth"
    torch.save({"net": randomised_lstm_model().state_dict()}, good)
    files = {"empty": b"", "garbage": os.urandom(4096), "text": b"epochs: 3\nthis is not a checkpoint\n",
             "truncated": good.read_bytes()[:100_000]}
    paths = {}
    for name, payload in files.items():
        paths[name] = folder / f"{name}.pth"
        paths[name].write_bytes(payload)
    paths["folder"] = folder / "folder.pth"
    paths["folder"].mkdir()
    return paths


@pytest.mark.parametrize("kind", ["empty", "garbage", "text", "truncated", "folder"])
def test_11_damaged_resume_and_pretrained_checkpoints_are_one_line_before_any_work(tmp_path, kind):
    bad = damaged_checkpoints(tmp_path)[kind]
    path = tiny_config(tmp_path)
    one_line_error(train_cli("--config_path", path, "--resume", bad), bad.name)
    one_line_error(train_cli("--config_path", path, "--set", f"pretrained_model={bad}"), bad.name)
    assert not os.path.exists(tmp_path / "run") and not label_caches(tmp_path / "data")


@pytest.mark.parametrize("kind", ["empty", "garbage", "text", "truncated"])
def test_11_export_of_damaged_checkpoints_is_one_line(tmp_path, kind):
    bad = damaged_checkpoints(tmp_path)[kind]
    one_line_error(CliRunner().invoke(model_module.main, [str(bad), str(tmp_path / "host.pth")]), bad.name)
    assert not (tmp_path / "host.pth").exists()


def test_11_export_to_a_folder_is_one_line(tmp_path):
    source = damaged_checkpoints(tmp_path)["folder"].parent / "good.pth"
    destination = tmp_path / "Utils"
    destination.mkdir()
    one_line_error(CliRunner().invoke(model_module.main, [str(source), str(destination)]), "Utils")
    assert os.listdir(destination) == []


def test_11_unwritable_log_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    path = tiny_config(tmp_path, log_dir=str(blocker / "run"))
    one_line_error(train_cli("--config_path", path), str(blocker))


def test_11_full_disk_during_training_is_one_line_and_leaves_no_partial_checkpoint(tmp_path):
    path, config = config_file(tmp_path, epochs=1, training={"plot_every": 1000})
    run = config["log_dir"]
    os.makedirs(run)
    # 4 MB: train.log and TensorBoard's scalars and figure fit, a checkpoint (tens of MB) does not.
    argv, preexec = on_full_disk(run, 4096, [sys.executable, "train.py", "--config_path", path])
    completed = run_process(argv, preexec)
    line = one_line_process_error(completed, "last.pth", "disk has space")
    assert "No space left on device" in line or "File too large" in line
    assert not [name for name in os.listdir(run) if name.endswith((".pth", ".tmp"))]


# ---------------------------------------------------------------------------------------------- 12: resume epochs


def test_12_onecycle_resume_with_more_epochs_is_refused_up_front_and_config_yml_kept(tmp_path):
    path, config = config_file(tmp_path, epochs=1, training={"plot_every": 1000})
    assert train_cli("--config_path", path).exit_code == 0
    run = config["log_dir"]
    saved = {name: os.path.getmtime(os.path.join(run, name)) for name in ("last.pth", "config.yml", "train.log")}
    one_line_error(train_cli("--config_path", path, "--set", "epochs=3"), "onecycle", "resume with epochs: 1")
    assert {name: os.path.getmtime(os.path.join(run, name)) for name in saved} == saved
    # A resume that fails inside the trainer (a damaged optimizer state) keeps the run's config.yml too.
    state = state_of(os.path.join(run, "last.pth"))
    state["optimizer"]["param_groups"] = []
    torch.save(state, os.path.join(run, "last.pth"))
    one_line_error(train_cli("--config_path", path, "--set", "epochs=1"), "parameter group")
    with open(os.path.join(run, "config.yml")) as handle:
        assert yaml.safe_load(handle)["epochs"] == 1
    assert os.path.getmtime(os.path.join(run, "config.yml")) == saved["config.yml"]


def test_12_a_constant_schedule_resumes_with_more_epochs(tmp_path):
    path, config = config_file(tmp_path, epochs=1, optimizer_params={"lr": 0.001, "scheduler": "constant"},
                               training={"plot_every": 1000})
    assert train_cli("--config_path", path).exit_code == 0
    result = train_cli("--config_path", path, "--set", "epochs=2")
    assert result.exit_code == 0, result.output
    assert state_of(os.path.join(config["log_dir"], "last.pth"))["epoch"] == 2


def test_12_resume_with_another_f0_head_lr_scale_is_refused_up_front(tmp_path):
    path, config = config_file(tmp_path, epochs=1, training={"plot_every": 1000},
                               optimizer_params={"lr": 0.001, "scheduler": "constant", "f0_head_lr_scale": 20.0})
    assert train_cli("--config_path", path).exit_code == 0
    last = os.path.join(config["log_dir"], "last.pth")
    saved = os.path.getmtime(last)
    one_line_error(train_cli("--config_path", path, "--set", "epochs=2", "--set", "optimizer_params.f0_head_lr_scale=1"),
                   "f0_head_lr_scale = 20, not 1", "resume with f0_head_lr_scale: 20")
    assert os.path.getmtime(last) == saved
    result = train_cli("--config_path", path, "--set", "epochs=2")
    assert result.exit_code == 0, result.output
    state = state_of(last)
    assert state["epoch"] == 2 and [g["lr"] for g in state["optimizer"]["param_groups"]] == [0.001, 0.02]


# ---------------------------------------------------------------------------------------------- 13: messages


def test_13_yaml_exponent_without_a_dot_is_a_number(tmp_path):
    path = tiny_config(tmp_path)
    with open(path, "a") as handle:
        handle.write("save_freq: 1e1\n")
    config = load_config(path, ["optimizer_params.lr=1e-3"])
    assert config["optimizer_params"]["lr"] == 0.001 and config["save_freq"] == 10
    (tmp_path / "lr.yml").write_text("optimizer_params:\n  lr: 1e-3\n  eps: 1e-9\n")
    loaded = load_config(str(tmp_path / "lr.yml"))["optimizer_params"]
    assert (loaded["lr"], loaded["eps"]) == (0.001, 1e-9)


def test_13_random_bytes_are_unreadable_audio_not_a_missing_file(tmp_path):
    path = tmp_path / "noise.wav"
    for head in (b"", b"\xff\xfb\x90\x00"):  # an MPEG frame header: libsndfile then says "File does not exist"
        for seed in range(3):
            path.write_bytes(head + np.random.default_rng(seed).bytes(5000))
            with pytest.raises(AudioError) as info:
                load_audio(path)
            message = str(info.value)
            assert "unreadable audio" in message and "not exist" not in message and "not found" not in message


# ---------------------------------------------------------------------------------------------- 14: silently accepted


def test_14_pretrained_model_matching_no_tensor_is_an_error(tmp_path):
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"net": {"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}}, unrelated)
    path, config = config_file(tmp_path, pretrained_model=str(unrelated), load_only_params=True)
    one_line_error(train_cli("--config_path", path), "none of its 2 tensors fits")
    assert not label_caches(tmp_path / "data")  # refused before labelling
    with pytest.raises(CheckpointError, match="none of its 2 tensors fits"):  # and by the trainer itself
        Trainer(config, str(tmp_path / "direct"), prepare_labels(config))


def test_14_a_truncated_wav_is_read_with_a_warning(tmp_path, caplog):
    whole = write_wave(tmp_path / "whole.wav", 1.0)  # 1.1 s: 26,400 16-bit samples
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[: -2 * 14400])  # the header and the first 12,000 samples
    with caplog.at_level("WARNING", logger="pitchextractor"):
        assert len(load_audio(whole)) == 26400
        assert not caplog.records
        assert len(load_audio(cut)) == 12000
    assert "cut.wav: truncated WAV" in caplog.text and "0.50 s" in caplog.text
