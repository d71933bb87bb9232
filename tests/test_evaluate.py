"""evaluate.py on a tiny reference corpus of glides with known F0, and its agreement with the bench scorer."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

import evaluate
from audio import SAMPLE_RATE
from f0_helpers import harmonic_tone
from metrics import F0_BANDS_HZ, band_name
from test_model import randomised_lstm_model

# An independent scorer to agree with: the evaluation benchmark's score.py, where a developer has it.
SCORE_PY = os.environ.get("PITCH_BENCH_SCORER", "")
CLIPS = {  # id -> (start Hz, end Hz, white-noise SNR dB or None)
    "glide_a_clean": (110.0, 190.0, None),
    "glide_b_clean": (220.0, 160.0, None),
    "glide_a_white20": (110.0, 190.0, 20.0),
    "glide_c_shift+7": (150.0 * 2 ** (7 / 12), 240.0 * 2 ** (7 / 12), None),
}
SCORED = ("RPA", "RCA", "GPE", "VUV_F1", "FFE", "MED_CENTS")


def write_reference_corpus(folder, silence=0.25, voiced=1.0, seed=0):
    """FLAC glides between silences and their exact F0 at 5 ms, laid out as an evaluation corpus."""
    rng = np.random.default_rng(seed)
    (folder / "wav").mkdir(parents=True)
    (folder / "ref").mkdir()
    rows = ["id,wav,ref"]
    for clip_id, (start_hz, end_hz, snr_db) in CLIPS.items():
        gap, f0_voiced = np.zeros(int(silence * SAMPLE_RATE)), np.geomspace(start_hz, end_hz, int(voiced * SAMPLE_RATE))
        f0_per_sample = np.concatenate([gap, f0_voiced, gap])
        audio = np.concatenate([gap, harmonic_tone(f0_voiced), gap]) + 1e-4 * rng.standard_normal(f0_per_sample.size)
        if snr_db is not None:
            audio += rng.standard_normal(audio.size) * np.sqrt(np.mean(audio ** 2) / 10 ** (snr_db / 10))
        sf.write(folder / "wav" / f"{clip_id}.flac", audio.astype(np.float32), SAMPLE_RATE)
        ref_times = np.arange(0, f0_per_sample.size / SAMPLE_RATE, 0.005)
        ref_f0 = f0_per_sample[np.minimum(np.round(ref_times * SAMPLE_RATE).astype(int), f0_per_sample.size - 1)]
        np.savetxt(folder / "ref" / f"{clip_id}.csv", np.column_stack([ref_times, ref_f0]), fmt=["%.4f", "%.3f"],
                   delimiter=",", header="time,f0", comments="")
        rows.append(f"{clip_id},wav/{clip_id}.flac,ref/{clip_id}.csv")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One run of the command over a checkpoint and harvest, reused by the tests below."""
    root = tmp_path_factory.mktemp("evaluate")
    corpus = write_reference_corpus(root / "corpus")
    checkpoint = root / "best.pth"
    torch.save({"net": randomised_lstm_model().state_dict(), "vuv_threshold": 0.4,
                "config": {"model_params": {"sequence_model": "lstm"}}}, checkpoint)
    result = CliRunner().invoke(evaluate.main, [
        "--reference", str(corpus), "--checkpoint", str(checkpoint), "--backends", "harvest", "--by-condition", "--by-band",
        "--out", str(root / "out"), "--save-predictions", str(root / "pred"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with open(root / "out" / "results.json") as handle:
        results = json.load(handle)
    return {"root": root, "corpus": corpus, "checkpoint": str(checkpoint), "output": result.stdout,
            "rows": {(row["system"], row["condition"]): row for row in results["rows"]}, "json": results,
            "bands": {(row["system"], row["band_hz"]): row for row in results["bands"]}}


def test_table_has_a_row_per_system_and_condition(evaluated):
    systems = (evaluated["checkpoint"], "harvest")
    conditions = ("all", "clean", "white20", "shift+7")
    assert list(evaluated["rows"]) == [(system, name) for system in systems for name in conditions]
    lines = evaluated["output"].splitlines()
    table = lines[: next(i for i, line in enumerate(lines) if "band_hz" in line)]  # the --by-band table follows
    header = table[0].split()
    assert header[:3] == ["system", "condition", "clips"] and header[3:] == list(evaluate.TABLE_COLUMNS)
    assert sum(line.startswith("harvest ") for line in table) == 4
    assert evaluated["rows"][("harvest", "clean")]["clips"] == 2
    assert evaluated["rows"][("harvest", "all")]["x_realtime"] > 0


def test_harvest_tracks_clean_glides(evaluated):
    clean = evaluated["rows"][("harvest", "clean")]
    assert clean["RPA"] > 90 and clean["VUV_F1"] > 90 and clean["MED_CENTS"] < 20


def test_by_band_reports_every_band_per_system(evaluated):
    names = [band_name(low, high) for low, high in F0_BANDS_HZ]
    assert list(evaluated["bands"]) == [(system, name) for system in (evaluated["checkpoint"], "harvest")
                                        for name in names]
    # The glides span 110-360 Hz: their frames fall in 100-150, 150-250 and 250-400 only, and harvest tracks them.
    harvest = {name: evaluated["bands"][("harvest", name)] for name in names}
    assert [name for name in names if harvest[name]["N_FRAMES"]] == ["100-150", "150-250", "250-400"]
    for name in ("100-150", "150-250"):
        assert harvest[name]["RPA"] > 90 and harvest[name]["VUV_R"] > 90 and harvest[name]["GPE"] < 5
    assert harvest["<65"]["RPA"] is None  # no frames: undefined, written as null
    band_lines = [line for line in evaluated["output"].splitlines() if line.startswith("harvest ")]
    assert len(band_lines) == 4 + len(names)  # four condition rows, then one row per band


def test_results_written_as_csv_and_json(evaluated):
    out = evaluated["root"] / "out"
    with open(out / "results.csv") as handle:
        header = handle.readline().strip().split(",")
    assert {"system", "condition", *SCORED, "x_realtime", "VUV_P", "VUV_R", "N_FRAMES"} <= set(header)
    assert evaluated["json"]["systems"]["harvest"]["algorithm"] == "harvest"
    assert evaluated["json"]["systems"][evaluated["checkpoint"]]["vuv_threshold"] == 0.4


@pytest.mark.skipif(not os.path.isfile(SCORE_PY), reason="set PITCH_BENCH_SCORER to the benchmark's score.py")
def test_agrees_with_the_bench_scorer(evaluated):
    for system, folder in ((evaluated["checkpoint"], evaluate.folder_name(evaluated["checkpoint"])),
                           ("harvest", "harvest")):
        scored = evaluated["root"] / f"{folder}.json"
        subprocess.run([sys.executable, SCORE_PY, "--corpus", str(evaluated["corpus"]), "--by-condition",
                        "--pred", str(evaluated["root"] / "pred" / folder), "--json", str(scored)],
                       check=True, capture_output=True)
        with open(scored) as handle:
            theirs = json.load(handle)
        for condition_name, their_row in [("all", theirs), *theirs["by_condition"].items()]:
            ours = evaluated["rows"][(system, condition_name)]
            for metric in SCORED:
                if ours[metric] is None:  # undefined here; score.py prints 0 (F1) or nan
                    assert their_row[metric] == 0 or math.isnan(their_row[metric]), (system, metric)
                else:
                    assert abs(ours[metric] - their_row[metric]) < 0.1, (system, condition_name, metric)


def test_alignment_follows_the_bench_rule():
    times = np.array([0.0, 0.1, 0.2, 0.3])
    f0 = np.array([100.0, 200.0, 0.0, 300.0])
    voiced = np.array([True, False, True, True])
    ref_times = np.array([-0.03, 0.05, 0.07, 0.15, 0.26, 0.31, 0.33])
    est_f0, est_voiced = evaluate.align_to_reference(ref_times, times, f0, voiced)
    # log-interpolated between two pitched frames; nearest frame next to an unpitched one; none outside span
    np.testing.assert_allclose(est_f0, [0.0, 100 * 2 ** 0.5, 100 * 2 ** 0.7, 200.0, 300.0, 300.0, 0.0])
    assert est_voiced.tolist() == [False, True, False, False, True, True, False]  # ties go to the earlier frame


def test_folder_without_manifest_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(evaluate.main, ["--reference", str(tmp_path), "--backends", "harvest"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [f"Error: {tmp_path}: no manifest.csv; give an evaluation corpus "
                                                  "folder (manifest.csv with id,wav,ref and one time,f0 CSV per "
                                                  "clip)"]


def test_unknown_backend_and_nothing_to_evaluate_are_usage_errors(tmp_path):
    runner = CliRunner()
    unknown = runner.invoke(evaluate.main, ["--reference", str(tmp_path), "--backends", "harvest,yin"])
    assert unknown.exit_code == 2 and "yin" in unknown.output
    nothing = runner.invoke(evaluate.main, ["--reference", str(tmp_path)])
    assert nothing.exit_code == 2 and "nothing to evaluate" in nothing.output


def test_training_labels_are_scored_as_systems(tmp_path):
    corpus = write_reference_corpus(tmp_path / "corpus")
    result = CliRunner().invoke(evaluate.main, ["--reference", str(corpus), "--backends", "consensus,cascade,harvest",
                                                "--by-condition", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "out" / "results.json") as handle:
        results = json.load(handle)
    rows = {(row["system"], row["condition"]): row for row in results["rows"]}
    assert rows[("consensus", "clean")]["RPA"] > 90 and rows[("consensus", "clean")]["VUV_F1"] > 90
    # The default cascade's first backend is harvest, which voices every glide: its labels are harvest's contour.
    for metric in SCORED:
        assert rows[("cascade", "all")][metric] == rows[("harvest", "all")][metric], metric
    assert results["systems"]["consensus"]["mode"] == "consensus"
    assert [name for name, _ in results["systems"]["consensus"]["backends"]] == ["pyworld", "swiftf0", "praat"]
