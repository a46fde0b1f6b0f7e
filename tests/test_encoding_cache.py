"""Frozen encoders run once per clip: token cache hits, misses and invalidation; target caching
and target files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

import fed_a2v.encode.node_data as node_data_module
from fed_a2v.cli import main
from fed_a2v.config.schema import Config, NodeConfig
from fed_a2v.data.builtin.synthetic import ensure_synthetic_corpus
from fed_a2v.data.node_corpora import open_corpus
from fed_a2v.encode.cache import TokenCache
from fed_a2v.encode.node_data import NodeIdentity, node_data
from fed_a2v.encode.text_targets import Targets, compute_targets, target_prompts, targets_for


@pytest.fixture
def setup(tmp_path: Path):
    data = ensure_synthetic_corpus(tmp_path / "data", 0, 3, 10, 0.5, 16000)
    config = Config()
    config.dataset.name = "esc50"  # the folder has the ESC-50 layout
    config.dataset.path = str(data)
    config.dataset.clip_seconds = 0.5
    config.experiment.cache_dir = str(tmp_path / "cache")
    targets = compute_targets(config, *target_prompts(open_corpus(config), config))
    ident = NodeIdentity(NodeConfig(), 0, 1, "node 0")
    node_data_module._DATA.clear()  # each load below starts a fresh process, as far as caching goes
    return config, ident, targets, data


def load(config, ident, targets):
    node_data_module._DATA.clear()
    data, fresh = node_data(config, ident, targets)
    assert fresh
    return data


def test_second_load_reads_the_cache_and_encodes_nothing(setup) -> None:
    config, ident, targets, _ = setup
    first = load(config, ident, targets)
    n = len(first.train) + len(first.test)
    assert first.counts == {"encoded-clips": n, "cached-clips": 0, "skipped-clips": 0}
    second = load(config, ident, targets)
    assert second.counts == {"encoded-clips": 0, "cached-clips": n, "skipped-clips": 0}
    assert isinstance(second.train.tokens.arrays[0], np.memmap)
    assert second.train.tokens.arrays[0].dtype == np.float16
    np.testing.assert_array_equal(first.train.tokens.batch([0, 1]),
                                  second.train.tokens.batch([0, 1]))
    # Within one process the encoded data is kept: no cache reads at all.
    again, fresh = node_data(config, ident, targets)
    assert again is second and not fresh


def test_changed_file_and_changed_settings_invalidate(setup) -> None:
    config, ident, targets, data = setup
    first = load(config, ident, targets)
    n = len(first.train) + len(first.test)
    victim = sorted((data / "audio").glob("*.wav"))[0]
    wave, sr = soundfile.read(victim)
    soundfile.write(victim, wave[::-1].copy(), sr)  # same length, other content
    assert load(config, ident, targets).counts["encoded-clips"] == 1
    config.dataset.clip_seconds = 0.4  # other padding: every token changes
    assert load(config, ident, targets).counts["encoded-clips"] == n
    config.experiment.dtype = "bf16"  # other precision: other key again
    assert load(config, ident, targets).counts["encoded-clips"] == n


def test_half_written_entry_is_encoded_again(setup) -> None:
    config, ident, targets, _ = setup
    load(config, ident, targets)
    entries = sorted(Path(config.experiment.cache_dir, "tokens").rglob("*.npy"))
    entries[0].write_bytes(entries[0].read_bytes()[:50])
    counts = load(config, ident, targets).counts
    assert counts["encoded-clips"] == 1 and counts["cached-clips"] == len(entries) - 1


def test_unreadable_clip_is_skipped_and_counted(setup) -> None:
    config, ident, targets, data = setup
    victim = sorted((data / "audio").glob("*.wav"))[0]
    victim.write_bytes(b"not audio at all")
    loaded = load(config, ident, targets)
    assert loaded.counts["skipped-clips"] == 1
    assert len(loaded.train) + len(loaded.test) == loaded.counts["encoded-clips"] == 29


def test_token_cache_key_is_the_file_content(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path, "enc")
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    assert cache.path(a) == cache.path(b)
    b.write_bytes(b"other")
    assert cache.path(a) != cache.path(b)


def test_targets_are_cached_then_read_back(setup) -> None:
    config, _, _, _ = setup
    first = targets_for(config, open_corpus(config))
    second = targets_for(config, open_corpus(config))
    assert first.source == "computed" and second.source == "cache"
    assert first.key == second.key
    config.dataset.prompt_template = "the sound of {label}"
    assert targets_for(config, open_corpus(config)).source == "computed"


def test_targets_file_means_no_text_encoder_is_loaded(setup, tmp_path: Path, capsys) -> None:
    config, _, targets, _ = setup
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(config.to_dict()))
    out = tmp_path / "targets.safetensors"
    assert main(["targets", str(path), "--out", str(out)]) == 0
    assert "3 targets" in capsys.readouterr().out
    offline = copy.deepcopy(config)
    offline.feda2v.clip_model_name = str(tmp_path / "no-such-model")
    offline.feda2v.t5_model_name = str(tmp_path / "no-such-model")
    offline.feda2v.targets_file = str(out)
    loaded = targets_for(offline, open_corpus(offline))
    assert loaded.source == f"file:{out}"
    assert loaded.key == targets.key
    saved = Targets.load(out, "x")
    assert saved.names == ["dog", "rooster", "siren"]


def test_targets_cache_follows_changed_local_weights(setup, tmp_path: Path) -> None:
    """A local text encoder retrained in place (same directory, same name) makes new targets."""
    import torch
    from transformers import T5EncoderModel

    from fed_a2v.encode.encoders import save_builtin

    config, _, _, _ = setup
    config.feda2v.clip_model_name = str(save_builtin("builtin:tiny-clip", tmp_path / "clip"))
    t5_dir = save_builtin("builtin:tiny-t5", tmp_path / "t5")
    config.feda2v.t5_model_name = str(t5_dir)
    first = targets_for(config, open_corpus(config))
    assert first.source == "computed"
    assert targets_for(config, open_corpus(config)).source == "cache"
    model = T5EncoderModel.from_pretrained(t5_dir)
    with torch.no_grad():
        model.shared.weight.mul_(2.0)  # "retrained"
    model.save_pretrained(t5_dir)
    changed = targets_for(config, open_corpus(config))
    assert changed.source == "computed" and changed.key != first.key
    torch.testing.assert_close(changed.tensors["clip"], first.tensors["clip"])
    assert not torch.allclose(changed.tensors["t5"], first.tensors["t5"])


def _live_waveforms(num_samples: int) -> int:
    import gc

    import torch

    gc.collect()  # waveforms alive in this process, counted by storage (a view shares one)
    return len({o.untyped_storage().data_ptr() for o in gc.get_objects()
                if isinstance(o, torch.Tensor) and tuple(o.shape) == (num_samples,)})


def test_encoding_streams_a_batch_at_a_time(setup) -> None:
    """Every batch's tokens are in the cache before the next batch is encoded, and only one
    batch of waveforms is alive while the encoder runs."""
    from fed_a2v.data.splits import split_for_node
    from fed_a2v.encode.node_data import Encoding

    config, ident, _, _ = setup
    clips = split_for_node(open_corpus(config), ident.settings, 0, 1, config).train
    encoding = Encoding(config, ident)
    encoding.batch_size = 4
    samples = round(config.dataset.clip_seconds * encoding.encoder.settings.sampling_rate)
    seen: list[tuple[int, int]] = []  # (entries in the cache, live waveforms) per forward pass

    def before_forward(module, args, kwargs):
        seen.append((len(list(encoding.cache.dir.glob("*.npy"))), _live_waveforms(samples)))

    encoding.encoder.model.register_forward_pre_hook(before_forward, with_kwargs=True)
    kept, arrays = encoding.encode(clips)
    assert len(kept) == len(clips) == 24
    assert [entries for entries, _ in seen] == [4 * k for k in range(6)]
    assert all(live <= encoding.batch_size for _, live in seen), seen


def test_a_crash_mid_encoding_keeps_the_batches_done(setup) -> None:
    from fed_a2v.data.splits import split_for_node
    from fed_a2v.encode.node_data import Encoding

    config, ident, _, _ = setup
    clips = split_for_node(open_corpus(config), ident.settings, 0, 1, config).train
    encoding = Encoding(config, ident)
    encoding.batch_size = 4
    calls = []

    def fail_third_batch(module, args, kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")  # what a GPU says mid-way through a corpus

    encoding.encoder.model.register_forward_pre_hook(fail_third_batch, with_kwargs=True)
    with pytest.raises(RuntimeError, match="out of memory"):
        encoding.encode(clips)
    again = Encoding(config, ident)
    kept, _ = again.encode(clips)
    assert len(kept) == 24
    assert again.counts["cached-clips"] == 8 and again.counts["encoded-clips"] == 16
