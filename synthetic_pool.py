"""A pool of pre-rendered synthetic utterances, refreshed every `pool_refresh_epochs` epochs.

Rendering WORLD utterances (or pitch-shifting clips) costs far more than reading a slice, so the main
process renders `pool_size` of them into a pack (pack.py) before an epoch whose pool is due, and loader
workers read crops from it. Pool generation g = epoch // pool_refresh_epochs is rendered from the
seeds [seed, g, i] and the rendering settings, so a resumed run gets the same pool, and a run whose
synthetic_data settings changed renders its own instead of reusing a pool made with the old ones. Workers
notice a refreshed pool by its manifest's modification time and map the new one.
"""
import hashlib
import json
import logging
import os

import numpy as np

from pack import MANIFEST, Pack, is_pack, to_int16, write_pack

log = logging.getLogger("pitchextractor")


def rendering_settings_digest(synth_params):
    """A short digest of the settings a pool's utterances depend on: not `proportion` (how often items
    are drawn from it) nor `pool_refresh_epochs` (when a generation starts)."""
    settings = {k: v for k, v in synth_params.items() if k not in ("proportion", "pool_refresh_epochs")}
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


class SyntheticPool:
    def __init__(self, folder, synth_params, seed):
        self.folder, self.seed = os.fspath(folder), int(seed)
        self.size, self.every = int(synth_params["pool_size"]), int(synth_params["pool_refresh_epochs"])
        self.proportion = float(synth_params["proportion"])
        self.settings = rendering_settings_digest(synth_params)
        self._pack, self._stamp = None, None

    def generation(self, epoch):
        return epoch // max(self.every, 1)

    def refresh(self, epoch, render):
        """Render the pool of `epoch`'s generation unless it is there; render(rng) -> (wave, f0) or None."""
        generation = self.generation(epoch)
        identity = f"pool-{self.seed}-{generation}-{self.settings}"
        if is_pack(self.folder) and Pack(self.folder).label_hash == identity:
            return
        log.info("rendering %d synthetic utterances (pool %d)", self.size, generation)

        def clips():
            for i in range(self.size):
                rendered = render(np.random.default_rng([self.seed, generation, i]))
                if rendered is not None:
                    wave, f0 = rendered
                    yield f"pool-{generation}/{i}", {"size": 0, "mtime_ns": 0}, to_int16(wave), f0

        write_pack(self.folder, clips(), identity)

    def _current(self):
        stamp = os.stat(os.path.join(self.folder, MANIFEST)).st_mtime_ns
        if stamp != self._stamp:
            self._pack, self._stamp = Pack(self.folder), stamp
        return self._pack

    def draw(self, rng):
        """(int16 samples, f0) of a random pool utterance for a `proportion` of draws, else None."""
        if rng.random() >= self.proportion:
            return None
        pack = self._current()
        return pack.clip(int(rng.integers(len(pack))))

    def __getstate__(self):
        return {**self.__dict__, "_pack": None, "_stamp": None}
