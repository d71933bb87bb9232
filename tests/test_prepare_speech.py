"""Data/prepare_speech.py: the pure parts (no download, no apt)."""
import os

import numpy as np
import pytest
import soundfile as sf

from audio import SAMPLE_RATE, read_file_list
from Data import prepare_speech as recipe

STAMPS = {"wombat", "7", "A_filled", "apple_red", "xing_ped", "raspberry"}


@pytest.mark.parametrize("name, language", [
    ("wombat_desc.ogg", "en"),  # English description
    ("wombat_desc_fr.ogg", "fr"),
    ("raspberry_desc_pt_BR.wav", "pt"),  # locales of one language are one speaker
    ("wombat_desc_ca@valencia.ogg", "ca"),
    ("7_en_GB.ogg", "en"),  # localised main sound: the spoken digit
    ("7_zh_tw.ogg", "zh"),
    ("A_filled_en_GB.ogg", "en"),
    ("wombat.ogg", None),  # the main sound: an animal noise
    ("apple_red.ogg", None),  # main sound of a stamp whose name looks like <stamp>_<locale>
    ("xing_ped.ogg", None),
    ("cow_fr.ogg", None),  # no stamp `cow` in this folder
    ("wombat_desc_fr.png", None),
    ("wombat_desc_notalocale.ogg", None),
])
def test_tuxpaint_speech_filter(name, language):
    assert recipe.tuxpaint_language(name, STAMPS) == language


def test_tuxpaint_clips_walks_folders(tmp_path):
    folder = tmp_path / "animals" / "marsupials"
    folder.mkdir(parents=True)
    for name in ("wombat.png", "wombat.txt", "wombat.ogg", "wombat_desc.ogg", "wombat_desc_nl.ogg", "notes.ogg"):
        (folder / name).write_bytes(b"")
    clips = recipe.tuxpaint_clips(str(tmp_path))
    assert [(clip.speaker, clip.name) for clip in clips] == [
        ("tuxpaint_en", "animals_marsupials_wombat_desc"), ("tuxpaint_nl", "animals_marsupials_wombat_desc_nl")]


def test_fillets_speakers_from_dialog_fonts(tmp_path):
    lua = ('dialogId("lod-v-a", "font_big", "We are lost.")\ndialogStr("Ztratili jsme se.")\n'
           'dialogId("lod-m-b", "font_small", "No.")\ndialogId("lod-x-c", "font_parrot", "Squawk.")\n')
    assert recipe.fillets_fonts([lua]) == {"lod-v-a": "font_big", "lod-m-b": "font_small", "lod-x-c": "font_parrot"}
    assert recipe.fillets_speaker("font_big", "cs") == "fillets_cs_big"
    assert recipe.fillets_speaker("font_small", "nl") == "fillets_nl_small"
    assert recipe.fillets_speaker("font_parrot", "cs") is None
    assert recipe.fillets_speaker(None, "cs") is None

    (tmp_path / "script" / "ship").mkdir(parents=True)
    (tmp_path / "script" / "ship" / "dialogs_cs.lua").write_text(lua, encoding="utf-8")
    (tmp_path / "script" / "other").mkdir(parents=True)  # the same id with another font elsewhere
    (tmp_path / "script" / "other" / "dialogs.lua").write_text('dialogId("lod-v-a", "font_small", "")\n')
    (tmp_path / "script" / "share").mkdir(parents=True)  # shared jokes are declared outside their level
    (tmp_path / "script" / "share" / "jokes_cs.lua").write_text('dialogId("joke-v-1", "font_big", "")\n')
    for sub, name in (("ship/cs", "lod-v-a"), ("ship/cs", "lod-x-c"), ("ship/nl", "lod-m-b"), ("", "sp-bubles_00"),
                      ("share/jokes/cs", "joke-v-1"), ("ship/cs", "unknown")):
        (tmp_path / "sound" / sub).mkdir(parents=True, exist_ok=True)
        (tmp_path / "sound" / sub / f"{name}.ogg").write_bytes(b"")
    clips = recipe.fillets_clips(str(tmp_path))
    assert sorted((clip.speaker, clip.name) for clip in clips) == [
        ("fillets_cs_big", "share_jokes_joke-v-1"), ("fillets_cs_big", "ship_lod-v-a"),
        ("fillets_nl_small", "ship_lod-m-b")]


def test_ktuberling_speaker_is_the_language_with_its_variants_merged(tmp_path):
    for locale, name in (("sr", "eye.ogg"), ("sr@latin", "eye.ogg"), ("en", "hat.opus"), ("en", "hat.png"),
                         ("en", "nose.wav"), ("notalocale", "x.ogg")):
        (tmp_path / locale).mkdir(exist_ok=True)
        (tmp_path / locale / name).write_bytes(b"")
    (tmp_path / "en.soundtheme").write_text("<language code='en'/>")
    clips = recipe.ktuberling_clips(str(tmp_path))
    assert [(clip.speaker, clip.name) for clip in clips] == [
        ("ktuberling_en", "en_hat"), ("ktuberling_en", "en_nose"), ("ktuberling_sr", "sr_eye"),
        ("ktuberling_sr", "sr-latin_eye")]


def test_asterisk_speaker_is_the_voice_and_non_speech_prompts_are_left_out(tmp_path):
    files = ["en_US_f_Allison/hello.wav", "en_US_f_Allison/digits/7.wav", "en_US_f_Allison/silence/1.wav",
             "en_US_f_Allison/tt-monkeys.wav", "en_US_f_Allison/beep.wav", "en_US_f_Allison/spy-jingle.wav",
             "en_US_f_Allison/tt-monkeysintro.wav", "es_MX_f_Allison/hello.wav", "it_IT_m_Carlo/hello.wav",
             "it_IT_m_Carlo/hello.gsm", "dictate/other.wav"]
    for relative in files:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    clips = recipe.asterisk_clips(str(tmp_path))
    assert sorted((clip.speaker, clip.name) for clip in clips) == [
        ("asterisk_Allison", "en_digits_7"), ("asterisk_Allison", "en_hello"), ("asterisk_Allison", "en_tt-monkeysintro"),
        ("asterisk_Allison", "es_hello"), ("asterisk_Carlo", "it_hello")]


def test_deduplicate_keeps_first_name(tmp_path):
    for name, payload in (("a", b"x"), ("b", b"x"), ("c", b"y")):
        (tmp_path / name).write_bytes(payload)
    clips = [recipe.Clip(str(tmp_path / name), "s", name) for name in ("b", "c", "a")]
    unique, dropped = recipe.deduplicate(clips)
    assert [clip.name for clip in unique] == ["a", "c"] and dropped == 1


STATS = {
    "tuxpaint_fr": {"clips": 900, "median_f0": 120.0}, "tuxpaint_ro": {"clips": 900, "median_f0": 210.0},
    "tuxpaint_ru": {"clips": 900, "median_f0": 110.0}, "tuxpaint_es": {"clips": 880, "median_f0": 230.0},
    "fillets_cs_big": {"clips": 700, "median_f0": 105.0}, "fillets_cs_small": {"clips": 700, "median_f0": 260.0},
    "tuxpaint_ja": {"clips": 10, "median_f0": 100.0}, "tuxpaint_ml": {"clips": 6, "median_f0": None},
}


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_speaker_split_is_disjoint_and_deterministic(k):
    train, val = recipe.split_speakers(STATS, k)
    assert len(val) == max(k, 2) and not set(train) & set(val) and set(train) | set(val) == set(STATS)
    assert set(recipe.HELD_OUT_SPEAKERS) <= set(val)  # the range benchmark's voices never train
    assert "tuxpaint_ja" in train and "tuxpaint_ml" in train  # too few clips to validate on
    shuffled = dict(reversed(list(STATS.items())))
    assert recipe.split_speakers(shuffled, k) == (train, val)  # independent of dict order
    if k >= 2:  # alternates over low- and high-pitched speakers
        pitches = [STATS[name]["median_f0"] < recipe.LOW_PITCH_HZ for name in val]
        assert any(pitches) and not all(pitches)


def test_speaker_split_refuses_impossible_requests():
    with pytest.raises(ValueError, match="--val-speakers"):
        recipe.split_speakers(STATS, 7)  # only 6 speakers have enough clips
    with pytest.raises(ValueError, match="--val-speakers"):
        recipe.split_speakers({"a": {"clips": 500, "median_f0": 100.0}}, 1)  # nothing left to train on


def test_speaker_split_balances_pitch_groups_after_held_out_speakers():
    stats = {name: info for name, info in STATS.items() if name != "fillets_cs_small"}  # held out: one low voice
    _, val = recipe.split_speakers(stats, 3)
    low = [stats[name]["median_f0"] < recipe.LOW_PITCH_HZ for name in val]
    assert "fillets_cs_big" in val and sum(low) == 2 and len(val) == 3  # next a high voice, then a low one
    _, val = recipe.split_speakers({name: STATS[name] for name in ("tuxpaint_fr", "tuxpaint_ro", "tuxpaint_ru")}, 2)
    assert sorted(STATS[name]["median_f0"] < recipe.LOW_PITCH_HZ for name in val) == [False, True]


def test_write_list_format(tmp_path):
    wav = tmp_path / "wav" / "tuxpaint_fr"
    wav.mkdir(parents=True)
    paths = [str(wav / "b.wav"), str(wav / "a.wav")]
    for path in paths:
        sf.write(path, np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    list_path = str(tmp_path / "train_list.txt")
    assert recipe.write_list(list_path, [(path, "tuxpaint_fr") for path in paths]) == 2
    lines = open(list_path, encoding="utf-8").read().splitlines()
    assert lines == ["wav/tuxpaint_fr/a.wav|tuxpaint_fr", "wav/tuxpaint_fr/b.wav|tuxpaint_fr"]
    # paths are relative to the list's folder, which read_file_list resolves from any working directory
    assert [os.path.abspath(path) for path in read_file_list(list_path)] == sorted(paths)


def test_trim_silence_keeps_margin():
    sr = SAMPLE_RATE
    tone = 0.5 * np.sin(2 * np.pi * 200 * np.arange(sr) / sr)
    audio = np.concatenate([np.zeros(sr), tone, np.zeros(2 * sr)]).astype(np.float32)
    trimmed = recipe.trim_silence(audio, sr, margin_s=0.1)
    assert abs(len(trimmed) / sr - 1.2) < 0.03
    assert recipe.trim_silence(np.zeros(sr, dtype=np.float32), sr).size == 0


@pytest.mark.parametrize("extension", ["wav", "ogg"])
def test_convert_44k_stereo_to_24k_mono_wav(tmp_path, extension):
    sr = 44100
    t = np.arange(int(1.5 * sr)) / sr
    voice = 0.4 * np.sin(2 * np.pi * 180 * t) * (t > 0.5)  # 0.5 s of silence, then 1 s of tone
    source = str(tmp_path / f"clip.{extension}")
    sf.write(source, np.stack([voice, voice], axis=1).astype(np.float32), sr)
    target = str(tmp_path / "out" / "speaker" / "clip.wav")
    seconds, problem = recipe.convert_clip(source, target)
    assert problem is None
    info = sf.info(target)
    assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    assert abs(seconds - 1.1) < 0.05 and abs(info.duration - seconds) < 1e-3  # leading silence trimmed
    audio, _ = sf.read(target)
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(audio) - 180) < 2
    assert recipe.convert_clip(source, target) == (pytest.approx(seconds), None)  # rerun: kept as is


def test_convert_skips_short_clips(tmp_path):
    source = str(tmp_path / "short.wav")
    sf.write(source, (0.3 * np.sin(np.arange(int(0.3 * 44100)) * 0.05)).astype(np.float32), 44100)
    target = str(tmp_path / "out.wav")
    assert recipe.convert_clip(source, target) == (None, "short")
    assert not os.path.exists(target)
