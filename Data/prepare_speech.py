"""Build a multi-speaker real-speech training set from recordings that Debian ships as packages.

    python Data/prepare_speech.py --out Data/speech [--workers N] [--val-speakers K] [--source tuxpaint ...]

Only `apt-get download` (no root, no install) and `dpkg-deb -x` are used; the packages' recordings are
converted, never committed (Data/speech/ is git-ignored). Needs a Debian/Ubuntu machine whose package
lists are current (`apt-get update`); `--deb FILE` uses an already downloaded package instead.

Sources (both GPL-2):

* `tuxpaint` — tuxpaint-stamps-default (~161 MB .deb). Each stamp `<name>.png|svg` has a main sound
  `<name>.ogg` (mostly a sound effect: animal, engine...) and spoken descriptions
  `<name>_desc[_<locale>].ogg`, one per language (no locale = English). A few stamps (digits,
  letters) have localised main sounds `<name>_<locale>.ogg`, which are the spoken digit/letter.
  Kept: every `_desc` file and every `<stamp>_<locale>` file whose `<stamp>` exists in the same folder.
  Dropped: every plain main sound `<stamp>.ogg` (effects; the few spoken ones there have no language
  tag, so no speaker) and anything else. The package carries no speaker metadata (a handful of
  Vorbis ARTIST tags only), so the speaker is the recording language: Tux Paint's descriptions are
  recorded by one volunteer per translation. Locales of one language are merged (en + en_GB,
  pt + pt_BR), so a person who recorded both stays on one side of the split. This grouping can be
  too coarse (two people under one language: harmless for the split) but could be too fine if one
  person recorded two languages; the summary prints each speaker's median F0 so that can be checked.
* `fillets` — fillets-ng-data-cs and fillets-ng-data-nl (~72 MB): the Czech and Dutch voice acting of
  Fish Fillets, plus fillets-ng-data (~71 MB) for its level scripts only. Each line's character is the
  font its level's dialogs_*.lua gives it; only the two heroes,
  `font_big` (big fish) and `font_small` (small fish), are kept — one actor each per language — so
  the speakers are cs_big, cs_small, nl_big, nl_small. Side characters (robots, parrots, vikings...)
  are often processed voices and are dropped.

Opt-in sources (`--source ktuberling --source asterisk` beside the defaults; without them the recipe, its split
and the figures below are unchanged):

* `ktuberling` — ktuberling-data (~47 MB, GPL-2+): KTuberling's spoken object names, one folder per locale,
  each recorded by its translator, so the speaker is the language (sr and its script variants merged).
  Dec 2026: 1,769 clips / 30 min kept from 23 speakers (short words: 59 clips under 0.5 s skipped).
* `asterisk` — asterisk-core-sounds-{en,es,fr,it,ru}-wav and asterisk-prompt-it-menardi-wav (~110 MB): the
  Asterisk PBX voice prompts, studio speech at 8 kHz (telephone band, content below 4 kHz), one speaker per
  voice folder `<lang>_<COUNTRY>_<f|m>_<Voice>`: Allison Smith (en_US and es_MX, CC-BY-SA-3.0), June Wallack
  (fr_CA, CC-BY-SA-3.0), Carlo Flora (it_IT, male, CC-BY-3.0), IvrvoiceRU / Maxim Topal (ru_RU, CC-BY-3.0),
  Marco Menardi / Paola Dal Zot (it_IT, CC-BY-SA-3.0). Monkey screeches, jingles, beeps and the silence/
  folder are left out (ASTERISK_NOT_SPEECH). Dec 2026: 3,133 clips / 146 min kept from 5 speakers.

Pipeline: download -> extract to a temporary folder -> keep speech -> 24 kHz mono (audio.load_audio),
silence edges trimmed (-40 dB re clip peak, 0.1 s margin kept), clips < 0.5 s skipped ->
<out>/wav/<speaker>/<name>.wav (16-bit) -> F0 labels with the default f0_params (f0_labels.precompute
with Configs/config.yml's: consensus of harvest, swiftf0 and praat at 50-1000 Hz, NaN where they disagree;
caches beside the wavs) -> speaker-disjoint split -> <out>/train_list.txt, <out>/val_list.txt
(`wav/<speaker>/<name>.wav|<speaker>`, relative to the list's folder, which read_file_list resolves).
Clips whose labels failed (no backend found voicing) are left out of both lists. Re-running skips
wavs already written and verifies the label caches instead of recomputing them.

A run on 2 CPU cores (Dec 2026): ~290 MB downloaded, 9531 clips / 318 min kept from 27 speakers,
~970 MB of wavs, 64 min in all (63 of them consensus labelling; 5 clips had no usable labels); the split:
24 speakers / 7248 clips / 215 min train, fillets_cs_big, fillets_cs_small and tuxpaint_fr / 2278 clips /
102 min validation. Median-F0 spreads
per speaker and MFCC statistics per group agree with the heuristic: each large group is consistent in
itself and far from all others; en and pt are visibly two people each (descriptions vs. spoken digits), which merging
keeps on one side of the split.

Validation speakers (deterministic): the range benchmark's two Czech heroes (HELD_OUT_SPEAKERS, so
benchmarks/range_set.py never scores a model on voices it trained on), then speakers with >= MIN_VAL_CLIPS
clips, ordered by a hash of their name, from whichever of the low-pitched (median F0 < 165 Hz, mostly male)
and high-pitched groups has fewer so far, so both ranges are validated. Everything else trains. Synthetic data and
noise augmentation are blended in at training time by Configs/pretrain.yml.
"""
import collections
import copy
import dataclasses
import glob
import hashlib
import io
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import click
import numpy as np
import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from audio import SAMPLE_RATE, AudioError, load_audio, write_atomically  # noqa: E402

MIN_SECONDS = 0.5  # shorter clips (after trimming) are skipped
TRIM_TOP_DB = 40.0  # silence = frames this far below the clip's loudest frame
TRIM_MARGIN_S = 0.1  # kept on each side of the speech, so onsets and decays stay intact
MIN_VAL_CLIPS = 100  # smaller speakers always train
LOW_PITCH_HZ = 165.0  # median F0 boundary between the two groups validation alternates over
# The range benchmark's real voices (benchmarks/range_set.py): always validation, so it never scores a model on
# speakers the recipe trained it on.
HELD_OUT_SPEAKERS = ("fillets_cs_big", "fillets_cs_small")
AUDIO_EXTENSIONS = (".ogg", ".wav")

PACKAGES = {
    "tuxpaint": ["tuxpaint-stamps-default"],
    "fillets": ["fillets-ng-data", "fillets-ng-data-cs", "fillets-ng-data-nl"],  # scripts, cs and nl voices
    # Opt-in (--source): the default recipe, its split and the figures above stay as they are.
    "ktuberling": ["ktuberling-data"],
    "asterisk": ["asterisk-core-sounds-en-wav", "asterisk-core-sounds-es-wav", "asterisk-core-sounds-fr-wav",
                 "asterisk-core-sounds-it-wav", "asterisk-core-sounds-ru-wav", "asterisk-prompt-it-menardi-wav"],
}
DEFAULT_SOURCES = ("tuxpaint", "fillets")
TUXPAINT_ROOT = "usr/share/tuxpaint/stamps"
FILLETS_ROOT = "usr/share/games/fillets-ng"
KTUBERLING_ROOT = "usr/share/ktuberling/sounds"
ASTERISK_ROOT = "usr/share/asterisk/sounds"
# An Asterisk voice folder: <lang>_<COUNTRY>_<f|m>_<Voice>, e.g. en_US_f_Allison (who also recorded es_MX).
ASTERISK_VOICE_RE = re.compile(r"^(?P<lang>[a-z]{2})_[A-Z]{2}_[fm]_(?P<voice>[A-Za-z]+)$")
# Prompts that are not speech (checked by ear and spectrum): monkey screeches and jingles. Beeps are shorter
# than MIN_SECONDS and the silence/ folder is digital silence; both are left out here as well.
ASTERISK_NOT_SPEECH = re.compile(r"^(silence/.*|tt-monkeys|spy-jingle|beep.*)$")
FILLETS_FONTS = {"font_big": "big", "font_small": "small"}

# A Tux Paint / gettext locale: language (2-3 letters), optional _TERRITORY and/or @variant.
LOCALE_RE = re.compile(r"^(?P<lang>[a-z]{2,3})(?:_[A-Za-z]{2,3})?(?:@[A-Za-z]+)?$")
DESC_RE = re.compile(r"^(?P<stamp>.+)_desc(?:_(?P<locale>[^_]+(?:_[^_]+)?))?$")
DIALOG_RE = re.compile(r'dialogId\(\s*"([^"]+)"\s*,\s*"([^"]*)"')


class RecipeError(click.ClickException):
    """A one-line reason the recipe cannot go on, with the fix."""


@dataclasses.dataclass(frozen=True)
class Clip:
    source: str  # recording inside the extracted package
    speaker: str
    name: str  # output file stem, unique per speaker


# ----------------------------------------------------------------------------------------------
# Which recordings are speech, and whose
# ----------------------------------------------------------------------------------------------


def locale_language(locale):
    """'en_GB' -> 'en', 'ca@valencia' -> 'ca', 'zh_tw' -> 'zh'; None when `locale` is not a locale tag."""
    match = LOCALE_RE.match(locale or "")
    return match.group("lang") if match else None


def tuxpaint_language(filename, stamps):
    """Language of a Tux Paint speech recording, or None for a sound effect / anything else.

    `stamps` holds the stamp names (image/.txt stems) of the file's folder. `<stamp>_desc.ogg` is the
    English description, `<stamp>_desc_<locale>.ogg` a translated one; `<stamp>_<locale>.ogg` is a
    localised main sound (spoken digits and letters); `<stamp>.ogg` is the main sound: an effect.
    """
    stem, extension = os.path.splitext(filename)
    if extension.lower() not in AUDIO_EXTENSIONS:
        return None
    match = DESC_RE.match(stem)
    if match:
        return locale_language(match.group("locale")) if match.group("locale") else "en"
    if stem in stamps:
        return None  # the stamp's main sound
    parts = stem.split("_")
    for cut in range(1, len(parts)):
        stamp, locale = "_".join(parts[:cut]), "_".join(parts[cut:])
        if stamp in stamps and locale_language(locale):
            return locale_language(locale)
    return None


def _safe(text):
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def tuxpaint_clips(root):
    """Speech clips under an extracted tuxpaint-stamps tree (`root` = the stamps folder)."""
    clips = []
    for folder, _, files in sorted(os.walk(root)):
        stamps = {os.path.splitext(name)[0] for name in files
                  if os.path.splitext(name)[1].lower() in (".png", ".svg", ".txt", ".dat")}
        relative = os.path.relpath(folder, root)
        for name in sorted(files):
            language = tuxpaint_language(name, stamps)
            if language:
                stem = os.path.splitext(name)[0]
                clip_name = _safe(stem if relative == "." else f"{relative.replace(os.sep, '_')}_{stem}")
                clips.append(Clip(os.path.join(folder, name), f"tuxpaint_{language}", clip_name))
    return clips


def fillets_fonts(lua_texts):
    """{dialog id: font} from the text of dialogs_*.lua files (one level's ids are the same in every language)."""
    fonts = {}
    for text in lua_texts:
        for dialog, font in DIALOG_RE.findall(text):
            fonts.setdefault(dialog, font)
    return fonts


def fillets_speaker(font, language):
    """'fillets_cs_big' for the big fish's Czech lines; None for side characters and narration."""
    role = FILLETS_FONTS.get(font)
    return f"fillets_{language}_{role}" if role else None


def fillets_font_maps(root):
    """({level folder: {dialog id: font}}, {dialog id: font} for ids with one font in the whole game).

    A line's font is given in its level's script folder (`script/<level>/*.lua`); shared dialogue
    (`sound/share/borejokes`...) is declared elsewhere under script/share, hence the global map.
    """
    per_level, fonts_of = {}, collections.defaultdict(set)
    script_root = os.path.join(root, "script")
    for lua in sorted(glob.glob(os.path.join(script_root, "**", "*.lua"), recursive=True)):
        with open(lua, encoding="utf-8", errors="replace") as handle:
            fonts = fillets_fonts([handle.read()])
        level = os.path.relpath(os.path.dirname(lua), script_root)
        for dialog, font in fonts.items():
            per_level.setdefault(level, {}).setdefault(dialog, font)
            fonts_of[dialog].add(font)
    return per_level, {dialog: fonts.pop() for dialog, fonts in fonts_of.items() if len(fonts) == 1}


def fillets_clips(root):
    """Hero-fish dialogue clips under an extracted fillets-ng tree (`root` = usr/share/games/fillets-ng)."""
    per_level, unambiguous = fillets_font_maps(root)
    clips = []
    sound_root = os.path.join(root, "sound")
    for path in sorted(glob.glob(os.path.join(sound_root, "**", "*.ogg"), recursive=True)):
        level, language = os.path.split(os.path.relpath(os.path.dirname(path), sound_root))
        if not level or not locale_language(language):
            continue  # sound/share/*.ogg: effects
        dialog = os.path.splitext(os.path.basename(path))[0]
        font = per_level.get(level, {}).get(dialog) or unambiguous.get(dialog)
        speaker = fillets_speaker(font, language)
        if speaker:
            clips.append(Clip(path, speaker, _safe(f"{level.replace(os.sep, '_')}_{dialog}")))
    return clips


def ktuberling_clips(root):
    """Spoken object names under an extracted ktuberling-data tree (`root` = its sounds folder): one folder per
    locale, each recorded by its translator, so the speaker is the language (sr, sr@latin, sr@ijekavian...
    merged, as for Tux Paint)."""
    clips = []
    for locale in sorted(os.listdir(root)):
        language, folder = locale_language(locale), os.path.join(root, locale)
        if not language or not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            stem, extension = os.path.splitext(name)
            if extension.lower() in (".ogg", ".wav", ".opus"):
                clips.append(Clip(os.path.join(folder, name), f"ktuberling_{language}", _safe(f"{locale}_{stem}")))
    return clips


def asterisk_clips(root):
    """Voice prompts under an extracted asterisk sounds tree (`root` = usr/share/asterisk/sounds): one speaker
    per voice name (Allison's en_US and es_MX prompts are one speaker), 8 kHz telephone-band WAVs."""
    clips = []
    for voice_folder in sorted(os.listdir(root)):
        match = ASTERISK_VOICE_RE.match(voice_folder)
        if not match:
            continue
        for folder, _, files in sorted(os.walk(os.path.join(root, voice_folder))):
            for name in sorted(files):
                relative = os.path.relpath(os.path.join(folder, name), os.path.join(root, voice_folder))
                stem, extension = os.path.splitext(relative.replace(os.sep, "/"))
                if extension.lower() == ".wav" and not ASTERISK_NOT_SPEECH.match(stem):
                    clips.append(Clip(os.path.join(folder, name), f"asterisk_{match.group('voice')}",
                                      _safe(f"{match.group('lang')}_{stem.replace('/', '_')}")))
    return clips


def deduplicate(clips):
    """(clips without byte-identical repeats, number dropped): stamps such as filled/outlined letters
    share one recording under several names; the first name in sorted order is kept."""
    seen, unique = set(), []
    for clip in sorted(clips, key=lambda clip: (clip.speaker, clip.name)):
        with open(clip.source, "rb") as handle:
            digest = hashlib.sha1(handle.read()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            unique.append(clip)
    return unique, len(clips) - len(unique)


# ----------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------


def trim_silence(audio, sample_rate=SAMPLE_RATE, top_db=TRIM_TOP_DB, margin_s=TRIM_MARGIN_S, frame_s=0.01):
    """`audio` without its leading and trailing silence (frames > top_db below the loudest), keeping margin_s."""
    frame = max(1, int(frame_s * sample_rate))
    n_frames = len(audio) // frame
    if n_frames == 0:
        return audio
    rms = np.sqrt(np.mean(np.square(audio[: n_frames * frame].reshape(n_frames, frame), dtype=np.float64), axis=1))
    if rms.max() <= 0:
        return audio[:0]
    loud = np.flatnonzero(20 * np.log10(np.maximum(rms, 1e-12) / rms.max()) > -top_db)
    margin = int(margin_s * sample_rate)
    start = max(0, loud[0] * frame - margin)
    end = min(len(audio), (loud[-1] + 1) * frame + margin)
    return audio[start:end]


def _write_wav_atomically(path, audio):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    write_atomically(path, buffer.getvalue())


def convert_clip(source, target, min_seconds=MIN_SECONDS):
    """Recording -> 24 kHz mono 16-bit WAV with silence edges trimmed; (seconds, None) or (None, why skipped)."""
    if os.path.isfile(target):
        return sf.info(target).duration, None
    try:
        audio = trim_silence(load_audio(source))
    except AudioError as error:
        return None, str(error)
    if len(audio) < min_seconds * SAMPLE_RATE:
        return None, "short"
    peak = float(np.max(np.abs(audio)))
    if peak > 1.0:
        audio = audio / peak  # resampling can overshoot full scale; 16-bit PCM would clip
    _write_wav_atomically(target, audio)
    return len(audio) / SAMPLE_RATE, None


def _convert_job(job):
    clip, target = job
    seconds, problem = convert_clip(clip.source, target)
    return clip, target, seconds, problem


# ----------------------------------------------------------------------------------------------
# Split and lists
# ----------------------------------------------------------------------------------------------


def _name_order(name):
    return hashlib.sha1(name.encode()).hexdigest()


def split_speakers(stats, val_speakers, min_clips=MIN_VAL_CLIPS, low_pitch_hz=LOW_PITCH_HZ):
    """(train speakers, validation speakers), both sorted; the same stats always give the same split.

    `stats`: {speaker: {"clips": int, "median_f0": Hz or None}}. HELD_OUT_SPEAKERS present in `stats` are
    always validation and count towards `val_speakers`. The rest are filled from the candidates (>= min_clips
    clips) in the order of a hash of their name, each time from whichever pitch group (median F0 below /
    above low_pitch_hz; unknown F0 counts as high) has fewer validation speakers so far, while both remain.
    """
    chosen = [name for name in HELD_OUT_SPEAKERS if name in stats]
    candidates = sorted((name for name, info in stats.items() if info["clips"] >= min_clips and name not in chosen),
                        key=_name_order)
    if max(val_speakers, len(chosen)) >= len(stats) or (val_speakers > len(chosen) and not candidates):
        raise ValueError(f"cannot hold out {val_speakers} of {len(stats)} speakers "
                         f"({len(candidates)} more have >= {min_clips} clips); lower --val-speakers")

    def is_low(name):
        return (stats[name].get("median_f0") or np.inf) < low_pitch_hz

    low = [name for name in candidates if is_low(name)]
    high = [name for name in candidates if not is_low(name)]
    while len(chosen) < val_speakers and (low or high):
        low_chosen = sum(is_low(name) for name in chosen)
        group = low if (low_chosen <= len(chosen) - low_chosen and low) or not high else high
        chosen.append(group.pop(0))
    if len(chosen) < val_speakers:
        raise ValueError(f"only {len(chosen)} speakers have >= {min_clips} clips; lower --val-speakers")
    return sorted(set(stats) - set(chosen)), sorted(chosen)


def list_lines(entries, list_dir):
    """`path|speaker` lines, paths relative to list_dir (audio.read_file_list resolves them there)."""
    return [f"{os.path.relpath(path, list_dir)}|{speaker}" for path, speaker in entries]


def write_list(path, entries):
    """Write entries [(audio path, speaker)] sorted, one `relative/path.wav|speaker` per line."""
    list_dir = os.path.dirname(os.path.abspath(path))
    lines = list_lines(sorted(entries, key=lambda entry: (entry[1], entry[0])), list_dir)
    write_atomically(path, "".join(line + "\n" for line in lines).encode())
    return len(lines)


# ----------------------------------------------------------------------------------------------
# Packages
# ----------------------------------------------------------------------------------------------


def _require_tools():
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        raise RecipeError(f"{' and '.join(missing)} not found: this recipe needs a Debian/Ubuntu machine "
                          "(or pass --deb FILE for each package, downloaded elsewhere)")


def download_package(package, folder):
    """The .deb of `package` in `folder` (downloaded by `apt-get download` unless already there)."""
    existing = sorted(glob.glob(os.path.join(folder, f"{package}_*.deb")))
    if existing:
        return existing[-1]
    os.makedirs(folder, exist_ok=True)
    command = ["apt-get", "download", package]
    if os.geteuid() == 0:
        command[1:1] = ["-o", "APT::Sandbox::User=root"]  # root cannot hand a download to _apt here
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    downloaded = sorted(glob.glob(os.path.join(folder, f"{package}_*.deb")))
    if result.returncode != 0 or not downloaded:
        reason = " ".join(line for line in result.stderr.splitlines() if line.startswith("E:")) or result.stderr.strip()
        if "Unable to locate" in reason or "candidate" in reason or "No packages found" in reason:
            raise RecipeError(f"apt-get does not know {package}: the package lists are missing or stale; "
                              "run `apt-get update` (as root) and retry")
        raise RecipeError(f"apt-get download {package} failed ({reason or 'exit ' + str(result.returncode)}); "
                          "check the network / apt sources, or pass --deb FILE")
    return downloaded[-1]


def extract_package(deb, folder):
    result = subprocess.run(["dpkg-deb", "-x", deb, folder], capture_output=True, text=True)
    if result.returncode != 0:
        raise RecipeError(f"dpkg-deb -x {deb} failed ({result.stderr.strip()}); delete the file and rerun")


def find_clips(source, tree):
    root, clips_under = {"tuxpaint": (TUXPAINT_ROOT, tuxpaint_clips), "fillets": (FILLETS_ROOT, fillets_clips),
                         "ktuberling": (KTUBERLING_ROOT, ktuberling_clips),
                         "asterisk": (ASTERISK_ROOT, asterisk_clips)}[source]
    root = os.path.join(tree, root)
    return clips_under(root) if os.path.isdir(root) else []


# ----------------------------------------------------------------------------------------------
# Recipe
# ----------------------------------------------------------------------------------------------


def default_f0_params():
    from config_defaults import DEFAULTS

    return copy.deepcopy(DEFAULTS["dataset_params"]["f0_params"])


def _pool(workers):
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None).Pool(workers)


def convert_all(clips, wav_dir, workers, echo):
    """Convert every clip (in parallel); [(target path, speaker, seconds)] of those kept, and skip counts."""
    jobs = [(clip, os.path.join(wav_dir, clip.speaker, clip.name + ".wav")) for clip in clips]
    duplicates = len(jobs) - len({target for _, target in jobs})
    if duplicates:
        raise RecipeError(f"{duplicates} clips map to the same output name; this is a bug in the naming")
    kept, skipped = [], collections.Counter()
    with _pool(workers) as pool:
        for done, (clip, target, seconds, problem) in enumerate(pool.imap_unordered(_convert_job, jobs, 16), 1):
            if seconds is None:
                skipped["short" if problem == "short" else "unreadable"] += 1
                if problem != "short":
                    echo(f"skipped: {problem}")
            else:
                kept.append((target, clip.speaker, seconds))
            if done % 1000 == 0:
                echo(f"  converted {done}/{len(jobs)}")
    return kept, skipped


def label_stats(kept, f0_params):
    """{path: (backend or None, voiced fraction, median voiced F0 or None)} from the label caches."""
    import json

    from f0_labels import cache_paths

    stats = {}
    for path, _, _ in kept:
        array_path, sidecar_path = cache_paths(path, f0_params)
        with open(sidecar_path, encoding="utf-8") as handle:
            meta = json.load(handle)
        f0 = np.load(array_path)
        voiced = f0[f0 > 0]
        stats[path] = (meta["backend"], meta["voiced_fraction"], float(np.median(voiced)) if voiced.size else None)
    return stats


def speaker_table(kept, labels):
    """{speaker: {"clips", "seconds", "median_f0", "voiced"}} over clips with usable labels."""
    table = collections.defaultdict(lambda: {"clips": 0, "seconds": 0.0, "f0s": [], "voiced": []})
    for path, speaker, seconds in kept:
        backend, voiced_fraction, median_f0 = labels[path]
        if backend is None:
            continue
        row = table[speaker]
        row["clips"] += 1
        row["seconds"] += seconds
        row["voiced"].append(voiced_fraction)
        if median_f0:
            row["f0s"].append(median_f0)
    return {speaker: {"clips": row["clips"], "seconds": row["seconds"],
                      "median_f0": float(np.median(row["f0s"])) if row["f0s"] else None,
                      "f0_iqr": tuple(np.percentile(row["f0s"], [25, 75])) if row["f0s"] else None,
                      "voiced": float(np.mean(row["voiced"]))}
            for speaker, row in sorted(table.items())}


def format_report(table, train, val, label_summary, skipped, wall_seconds):
    lines = [f"{'speaker':<22}{'split':<7}{'clips':>7}{'min':>8}{'median F0':>11}{'F0 IQR (clip medians)':>24}"
             f"{'voiced':>8}"]
    for speaker, row in table.items():
        iqr = "-" if row["f0_iqr"] is None else f"{row['f0_iqr'][0]:.0f}-{row['f0_iqr'][1]:.0f} Hz"
        f0 = "-" if row["median_f0"] is None else f"{row['median_f0']:.0f} Hz"
        lines.append(f"{speaker:<22}{'val' if speaker in val else 'train':<7}{row['clips']:>7}"
                     f"{row['seconds'] / 60:>8.1f}{f0:>11}{iqr:>24}{row['voiced']:>8.2f}")
    for split, speakers in (("train", train), ("val", val)):
        clips = sum(table[name]["clips"] for name in speakers)
        minutes = sum(table[name]["seconds"] for name in speakers) / 60
        lines.append(f"{split:<6} {len(speakers)} speakers, {clips} clips, {minutes:.1f} min")
    backends = ", ".join(f"{name} {count}" for name, count in sorted(label_summary["backends"].items()))
    lines.append(f"labels: {backends}; {label_summary['computed']} computed, {label_summary['verified']} verified, "
                 f"{label_summary['wall_seconds']:.0f} s")
    lines.append(f"skipped: {skipped.get('duplicate', 0)} duplicates, {skipped.get('short', 0)} shorter than "
                 f"{MIN_SECONDS} s after trimming, {skipped.get('unreadable', 0)} unreadable, "
                 f"{skipped.get('failed_f0', 0)} without usable F0 labels")
    lines.append(f"total time {wall_seconds / 60:.1f} min")
    return "\n".join(lines)


@click.command()
@click.option("--out", default="Data/speech", show_default=True, type=click.Path(file_okay=False),
              help="output folder: wav/, train_list.txt, val_list.txt, download/")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="processes [default: all cores]")
@click.option("--val-speakers", type=click.IntRange(min=1), default=3, show_default=True,
              help="speakers held out for validation")
@click.option("--source", "sources", type=click.Choice(sorted(PACKAGES)), multiple=True,
              default=DEFAULT_SOURCES, show_default=True,
              help="recording packages to use (repeatable); ktuberling and asterisk are opt-in")
@click.option("--deb", "debs", type=click.Path(exists=True, dir_okay=False), multiple=True,
              help="use this downloaded .deb instead of apt-get download (repeatable)")
@click.option("--keep-debs/--delete-debs", default=True, show_default=True,
              help="keep the downloaded .deb files in <out>/download for reruns")
def main(out, workers, val_speakers, sources, debs, keep_debs):
    """Download, filter, convert and label Debian-packaged speech; write speaker-disjoint train/val lists."""
    import logging

    from f0_labels import format_summary, precompute

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    started = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    workers = workers or len(os.sched_getaffinity(0))
    download_dir, wav_dir = os.path.join(out, "download"), os.path.join(out, "wav")
    given = {os.path.basename(deb).split("_")[0]: deb for deb in debs}
    clips = []
    for source in sources:
        packages = PACKAGES[source]
        paths = {}
        for package in packages:
            if package in given:
                paths[package] = given[package]
            else:
                _require_tools()
                click.echo(f"{package}: apt-get download")
                paths[package] = download_package(package, download_dir)
        with tempfile.TemporaryDirectory(dir=out) as tree:
            for package in packages:  # one tree: fillets' voices need the scripts of its main data package
                extract_package(paths[package], tree)
            found, duplicates = deduplicate(find_clips(source, tree))
            click.echo(f"{source}: {len(found)} speech recordings ({duplicates} byte-identical repeats dropped); "
                       "converting")
            kept, skipped = convert_all(found, wav_dir, workers, click.echo)
            skipped["duplicate"] += duplicates
        clips.append((kept, skipped))
        if not keep_debs:
            for package in packages:
                if package not in given:
                    os.remove(paths[package])
    kept = [clip for part, _ in clips for clip in part]
    skipped = sum((part for _, part in clips), collections.Counter())
    if not kept:
        raise RecipeError("no speech recordings were found in the packages; nothing to write")

    f0_params = default_f0_params()
    click.echo(f"labelling {len(kept)} clips ({sum(s for _, _, s in kept) / 60:.1f} min) with the default f0_params")
    label_summary = precompute([path for path, _, _ in kept], f0_params, workers)
    click.echo(format_summary(label_summary))
    labels = label_stats(kept, f0_params)
    skipped["failed_f0"] = sum(labels[path][0] is None for path, _, _ in kept)
    table = speaker_table(kept, labels)
    try:
        train, val = split_speakers(table, val_speakers)
    except ValueError as error:
        raise RecipeError(str(error)) from None
    usable = [(path, speaker) for path, speaker, _ in kept if labels[path][0] is not None]
    for name, speakers in (("train_list.txt", train), ("val_list.txt", val)):
        write_list(os.path.join(out, name), [entry for entry in usable if entry[1] in speakers])
    click.echo(format_report(table, train, val, label_summary, skipped, time.perf_counter() - started))
    click.echo(f"wrote {os.path.join(out, 'train_list.txt')} and {os.path.join(out, 'val_list.txt')}")


if __name__ == "__main__":
    main()
