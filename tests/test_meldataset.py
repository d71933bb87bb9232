"""MelDataset items (waveform crops whose device mels equal the whole clip's), masks, collate, loader
options, the synthetic pool, and per-seed determinism."""
import copy

import numpy as np
import pytest
import torch

from audio import load_audio
from config_defaults import DEFAULTS
from audio import read_file_list
from f0_labels import label_settings
from features import float_wave, item_mels, mel_from_padded, mel_spectrogram, padded_samples
from meldataset import MelDataset, SeededSampler, build_dataloader, collate, loader_start_method
from pack import Pack

LOADER = DEFAULTS["dataset_params"]["dataloader"]


def dataset_params(**changes):
    params = copy.deepcopy(DEFAULTS["dataset_params"])
    params.update(changes)
    return params


@pytest.fixture
def paths(corpus):
    return read_file_list(corpus[0])


def test_crop_mels_equal_the_whole_clips_mels(paths):
    wave = load_audio(paths[0])
    whole = mel_spectrogram(wave)
    for start, frames in ((0, 32), (3, 10), (17, 40), (whole.shape[-1] - 20, 20)):
        assert torch.equal(item_mels(wave, start, frames), whole[:, start:start + frames])


def test_training_items_are_random_crops_of_max_length(paths):
    dataset = MelDataset(paths, dataset_params(max_mel_length=32), train=True)
    starts = set()
    for seed in range(8):
        wave, f0, voiced, item_seed = dataset[(0, seed)]
        assert wave.shape == (padded_samples(32),) and f0.shape == (32,) and voiced.dtype == torch.bool
        assert item_seed == seed
        assert torch.equal(voiced, f0 > 0)
        starts.add(tuple(f0.tolist()))
    assert len(starts) > 1  # different seeds crop differently


def test_validation_items_are_whole_clips_and_deterministic(paths):
    dataset = MelDataset(paths, dataset_params(max_mel_length=32), train=False)
    wave = load_audio(paths[1])
    crop, f0, _, _ = dataset[1]
    assert mel_from_padded(crop[None]).shape[-1] == f0.shape[0] == 1 + len(wave) // 300
    assert torch.equal(crop, dataset[1][0])


@pytest.mark.parametrize("train", [True, False])
def test_device_mels_of_a_batch_equal_the_whole_clips_mels(paths, train):
    """The trainer's feature step (mel_from_padded on the batch) gives mel_spectrogram of each whole clip,
    cropped to the item's frames; padding frames get the mel of silence."""
    dataset = MelDataset(paths, dataset_params(max_mel_length=40), train=train)
    keys = [(i, 100 + i) for i in range(4)]
    items = [dataset[key] for key in keys]
    batch = collate(items)
    mel = mel_from_padded(batch["wave"], batch["valid"])
    for row, ((index, _), (_, f0, _, _)) in enumerate(zip(keys, items)):
        whole = mel_spectrogram(load_audio(paths[index]))
        labels = dataset.clips.clip(index)[1]
        start = next(s for s in range(len(labels) - len(f0) + 1)
                     if np.array_equal(labels[s: s + len(f0)], f0.numpy(), equal_nan=True))
        assert torch.allclose(mel[row, :, : len(f0)], whole[:, start: start + len(f0)], atol=1e-5, rtol=0)
        assert (mel[row, :, len(f0):] == mel_spectrogram(torch.zeros(2048))[0, 0]).all()


def test_collate_pads_mixed_lengths_and_marks_padding_invalid():
    items = [(torch.randn(padded_samples(n)), torch.full((n,), 120.0), torch.ones(n, dtype=torch.bool), n)
             for n in (5, 9, 2)]
    batch = collate(items)
    assert batch["wave"].shape == (3, padded_samples(9)) and batch["seed"].tolist() == [5, 9, 2]
    assert batch["valid"].sum(1).tolist() == [5, 9, 2]
    assert not batch["voiced"][~batch["valid"]].any()  # no padded frame is voiced ...
    assert (batch["f0"][~batch["valid"]] == 0).all()    # ... or carries pitch
    assert torch.equal(batch["wave"][0, : padded_samples(5)], items[0][0])
    assert (batch["wave"][0, padded_samples(5):] == 0).all()


def test_collate_keeps_int16_crops_and_scales_mixed_batches():
    def item(wave, n=5):
        return wave, torch.full((n,), 120.0), torch.ones(n, dtype=torch.bool), 0

    pcm = [torch.randint(-32768, 32767, (padded_samples(5),), dtype=torch.int16) for _ in range(2)]
    packed = collate([item(w) for w in pcm])
    assert packed["wave"].dtype == torch.int16 and torch.equal(packed["wave"][1], pcm[1])  # half the bytes
    floats = torch.rand(padded_samples(5)) * 2 - 1
    mixed = collate([item(pcm[0]), item(floats)])  # a pack clip next to a synthetic item rendered on the fly
    assert mixed["wave"].dtype == torch.float32 and torch.equal(mixed["wave"][1], floats)
    assert torch.equal(mixed["wave"][0], pcm[0].float() / 32768) and torch.equal(float_wave(packed["wave"])[0],
                                                                                  mixed["wave"][0])


def test_loader_batches_carry_masks(paths):
    dataset = MelDataset(paths, dataset_params(max_mel_length=32), train=False)
    loader = build_dataloader(dataset, 3, 0, 0, "cpu", LOADER)
    batch = next(iter(loader))
    lengths = [dataset[i][1].shape[0] for i in range(3)]
    assert batch["valid"].sum(1).tolist() == lengths


def test_same_seed_same_data_different_seed_different_data(paths):
    params = dataset_params(max_mel_length=24)

    def first_epoch(seed, workers):
        loader = build_dataloader(MelDataset(paths, params), 2, workers, seed, "cpu", LOADER)
        loader.sampler.set_epoch(0)
        return torch.cat([b["f0"] for b in loader]), torch.cat([b["wave"] for b in loader])

    a = first_epoch(seed=5, workers=0)
    b = first_epoch(seed=5, workers=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # the worker that loads an item does not matter
    assert not torch.equal(a[0], first_epoch(seed=6, workers=0)[0])


def test_sampler_skip_resumes_mid_epoch():
    sampler = SeededSampler(10, shuffle=True, seed=1)
    sampler.set_epoch(3)
    whole = list(sampler)
    sampler.set_epoch(3, skip=4)
    assert list(sampler) == whole[4:] and len(sampler) == 6
    sampler.set_epoch(4)
    assert [i for i, _ in sampler] != [i for i, _ in whole]


def test_spawn_is_chosen_when_a_cuda_backend_runs_in_workers():
    f0_params = copy.deepcopy(DEFAULTS["dataset_params"]["f0_params"])
    assert loader_start_method(LOADER, label_settings(f0_params), num_workers=2) is None
    f0_params["torchcrepe"].update(enabled=True, device="cuda")
    crepe_on_cuda = label_settings(f0_params)
    assert loader_start_method(LOADER, crepe_on_cuda, num_workers=2) == "spawn"
    assert loader_start_method(LOADER, crepe_on_cuda, num_workers=0) is None  # no workers: nothing to spawn
    assert loader_start_method(dict(LOADER, start_method="forkserver"), crepe_on_cuda, num_workers=2) == "forkserver"


def test_loader_options_are_honoured(paths):
    dataset = MelDataset(paths, dataset_params(), train=True)
    loader = build_dataloader(dataset, 2, 2, 0, "cpu", {
        "start_method": "spawn", "persistent_workers": False, "prefetch_factor": 4, "pin_memory": False})
    assert loader.multiprocessing_context.get_start_method() == "spawn"
    assert loader.persistent_workers is False and loader.prefetch_factor == 4 and loader.pin_memory is False
    default = build_dataloader(dataset, 2, 2, 0, "cpu", LOADER)
    assert default.persistent_workers is True and default.prefetch_factor == 2


def test_empty_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="no usable audio files"):
        MelDataset([], dataset_params())


def synthetic_params(proportion, **kinds):
    params = dataset_params(max_mel_length=32)
    params["synthetic_data"].update(enabled=True, proportion=proportion)
    for kind, on in kinds.items():
        params["synthetic_data"][kind]["enabled"] = on
    return params


def test_world_items_replace_real_ones_in_training_only(paths):
    params = synthetic_params(1.0, world=True, pitch_shift=False, resynthesis=False)
    train = MelDataset(paths, params, train=True)
    real = MelDataset(paths, dataset_params(max_mel_length=32), train=True)
    assert not torch.equal(train[(0, 7)][0], real[(0, 7)][0])
    val = MelDataset(paths, params, train=False)  # apply_to_validation: false
    assert torch.equal(val[0][0], MelDataset(paths, dataset_params(), train=False)[0][0])
    params["synthetic_data"]["apply_to_validation"] = True
    assert MelDataset(paths, params, train=False).synth is not None


def test_pitch_shift_items_scale_the_cached_f0(paths):
    params = synthetic_params(1.0, world=False, pitch_shift=True, resynthesis=False)
    params["synthetic_data"]["apply_to_validation"] = True  # whole clips: labels comparable to the sources'
    dataset = MelDataset(paths, params, train=False)
    wave, f0, voiced, _ = dataset[(0, 11)]
    assert mel_from_padded(wave[None]).shape[-1] == f0.shape[0] and torch.equal(voiced, f0 > 0)
    originals = [MelDataset(paths, dataset_params(), train=False)[i][1] for i in range(len(paths))]
    ratios = [f0[(f0 > 0) & (o > 0)] / o[(f0 > 0) & (o > 0)] for o in originals if len(o) == len(f0)]
    # the shifted clip's labels are one source's labels times one constant ratio
    assert any(len(r) and float(r.std()) < 1e-3 and abs(float(r.mean()) - 1) > 1e-3 for r in ratios)


def test_blend_proportion_over_many_draws(paths):
    from synthetic import draw_synthetic_kind
    params = synthetic_params(0.3, world=True, pitch_shift=True)["synthetic_data"]
    draws = [draw_synthetic_kind(np.random.default_rng(s), params) for s in range(1000)]
    assert abs(sum(d is not None for d in draws) / 1000 - 0.3) <= 0.05


def pool_labels(folder):
    pool = Pack(folder)
    return [np.array(pool.clip(i)[1]) for i in range(len(pool))]


def crop_of(f0, contours):
    """Whether labels f0 are a window of one of the contours."""
    f0 = f0.numpy()
    return any(np.array_equal(c[s: s + len(f0)], f0) for c in contours for s in range(len(c) - len(f0) + 1))


def test_synthetic_pool_is_rendered_per_generation_and_items_come_from_it(paths, tmp_path):
    params = synthetic_params(1.0, world=True, pitch_shift=False)
    params["synthetic_data"].update(pool_size=3, pool_refresh_epochs=2)
    dataset = MelDataset(paths, params, train=True, pool_dir=tmp_path / "pool", seed=1)
    dataset.prepare_epoch(0)
    first = pool_labels(tmp_path / "pool")
    assert len(first) == 3 and crop_of(dataset[(0, 5)][1], first)
    manifest = tmp_path / "pool" / "pack.json"
    stamp = manifest.stat().st_mtime_ns
    dataset.prepare_epoch(1)  # same generation: not rendered again
    assert manifest.stat().st_mtime_ns == stamp
    dataset.prepare_epoch(2)
    second = pool_labels(tmp_path / "pool")
    assert not any(np.array_equal(a, b) for a in first for b in second if len(a) == len(b))
    assert crop_of(dataset[(0, 5)][1], second)  # the dataset maps the refreshed pool
    other = MelDataset(paths, params, train=True, pool_dir=tmp_path / "other", seed=1)
    other.prepare_epoch(3)  # a resumed run renders the same pool for the same generation
    assert all(np.array_equal(a, b) for a, b in zip(second, pool_labels(tmp_path / "other")))


def test_a_pool_made_with_other_synthetic_settings_is_rendered_again_not_reused(paths, tmp_path):
    params = synthetic_params(1.0, world=True, pitch_shift=False, resynthesis=False)
    params["synthetic_data"].update(pool_size=2, pool_refresh_epochs=2)
    params["synthetic_data"]["world"]["pitch_range"] = [80.0, 200.0]
    MelDataset(paths, params, train=True, pool_dir=tmp_path / "pool", seed=1).prepare_epoch(0)
    manifest = tmp_path / "pool" / "pack.json"
    stamp, before = manifest.stat().st_mtime_ns, pool_labels(tmp_path / "pool")
    drawn_more_often = copy.deepcopy(params)
    drawn_more_often["synthetic_data"]["proportion"] = 0.5  # how often items are drawn: same pool
    MelDataset(paths, drawn_more_often, train=True, pool_dir=tmp_path / "pool", seed=1).prepare_epoch(1)
    assert manifest.stat().st_mtime_ns == stamp
    higher = copy.deepcopy(params)
    higher["synthetic_data"]["world"]["pitch_range"] = [600.0, 900.0]
    MelDataset(paths, higher, train=True, pool_dir=tmp_path / "pool", seed=1).prepare_epoch(1)
    after = pool_labels(tmp_path / "pool")
    assert manifest.stat().st_mtime_ns != stamp
    assert max(float(np.median(f[f > 0])) for f in before) < 600 <= min(float(np.median(f[f > 0])) for f in after)


def test_resynthesis_items_have_finite_in_range_labels(paths):
    params = synthetic_params(1.0, world=False, pitch_shift=False, resynthesis=True)
    _, f0, voiced, _ = MelDataset(paths, params, train=True)[(0, 3)]
    assert torch.isfinite(f0).all() and voiced.any()
    assert (f0[voiced] >= 50.0).all() and (f0[voiced] <= 1000.0).all()
