"""The CLIP/T5 adapters: output shapes, batch independence, channel GroupNorm, state round trip."""

from __future__ import annotations

import pytest
import torch

from fed_a2v.config.feda2v_section import FedA2VConfig
from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.load import load_config
from fed_a2v.config.validate import config_from_dict
from fed_a2v.model.adapters import (
    SpanAdapter,
    adapters_for_targets,
    adapters_state,
    build_adapters,
    load_adapters_state,
)
from fed_a2v.model.layers import ChannelGroupNorm, token_statistics

D_AUDIO, D_CLIP, D_T5, TOKENS = 32, 24, 16, 10
ROWS = 6  # target rows: a span adapter's width follows them


@pytest.fixture(scope="module")
def adapters():
    built = build_adapters(D_AUDIO, D_CLIP, D_T5, FedA2VConfig(), seed=0, target_rows=ROWS)
    for a in built.values():
        a.eval()
    return built


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_output_shapes(adapters, batch):
    tokens = torch.randn(batch, TOKENS, D_AUDIO)
    with torch.no_grad():
        assert adapters["clip"](tokens).shape == (batch, D_CLIP)
        assert adapters["t5"](tokens).shape == (batch, FedA2VConfig().t5_max_length, D_T5)


def test_t5_length_follows_config():
    cfg = FedA2VConfig(t5_max_length=5)
    t5 = build_adapters(D_AUDIO, D_CLIP, D_T5, cfg, seed=0, target_rows=ROWS)["t5"].eval()
    with torch.no_grad():
        assert t5(torch.randn(2, TOKENS, D_AUDIO)).shape == (2, 5, D_T5)


@pytest.mark.parametrize("name", ["clip", "t5"])
def test_eval_output_is_batch_independent(adapters, name):
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(1, TOKENS, D_AUDIO, generator=gen)
    others = torch.randn(7, TOKENS, D_AUDIO, generator=gen) * 3 + 2  # very different stats
    batch = torch.cat([others[:4], sample, others[4:]])
    with torch.no_grad():
        alone = adapters[name](sample)[0]
        inside = adapters[name](batch)[4]
        # The same sample in another batch, to rule out position effects.
        inside2 = adapters[name](torch.cat([sample, others[:2]]))[0]
    assert torch.allclose(alone, inside, atol=1e-5)
    assert torch.allclose(alone, inside2, atol=1e-5)


def test_channel_group_norm_normalises_channels_per_token():
    norm = ChannelGroupNorm(16, 4)
    assert norm.num_groups == 4
    assert torch.equal(norm.weight, torch.ones(16)) and torch.equal(norm.bias, torch.zeros(16))
    x = (torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(0)) * 4
         + torch.arange(5.0).view(1, 5, 1) * 10)  # per-position offset
    with torch.no_grad():
        y = norm(x)
    assert y.shape == x.shape
    groups = y.reshape(3, 5, 4, 4)  # (B, L, groups, channels per group)
    assert torch.allclose(groups.mean(-1), torch.zeros(3, 5, 4), atol=1e-4)
    # unit spread up to GroupNorm's eps: var / (var + eps), whatever a group's own spread
    var = x.reshape(3, 5, 4, 4).var(-1, unbiased=False)
    assert torch.allclose(groups.std(-1, unbiased=False), (var / (var + norm.eps)).sqrt(),
                          atol=1e-5)


def test_channel_group_norm_positions_are_independent():
    norm = ChannelGroupNorm(16, 4)
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(0))
    changed = x.clone()
    changed[:, 2] = changed[:, 2] * 100 + 50
    with torch.no_grad():
        y, y_changed = norm(x), norm(changed)
    others = [i for i in range(6) if i != 2]
    # Equal up to float rounding: vectorised kernels may sum a row in another order.
    assert torch.allclose(y[:, others], y_changed[:, others], atol=1e-6)
    assert not torch.allclose(y[:, 2], y_changed[:, 2])


def test_channel_group_norm_picks_a_dividing_group_count():
    assert ChannelGroupNorm(12, 8).num_groups == 6
    assert ChannelGroupNorm(7, 8).num_groups == 7


def test_state_round_trip_into_differently_seeded_adapters(adapters):
    state = adapters_state(adapters)
    assert state
    assert all(k.startswith(("clip.", "t5.")) for k in state)
    assert any(k.startswith("clip.") for k in state) and any(k.startswith("t5.") for k in state)
    n_params = sum(len(a.state_dict()) for a in adapters.values())
    assert len(state) == n_params

    fresh = build_adapters(D_AUDIO, D_CLIP, D_T5, FedA2VConfig(), seed=1, target_rows=ROWS)
    before = adapters_state(fresh)
    assert any(not torch.equal(before[k], state[k]) for k in state)

    load_adapters_state(fresh, state)
    after = adapters_state(fresh)
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], state[k]) for k in state)
    tokens = torch.randn(3, TOKENS, D_AUDIO)
    with torch.no_grad():
        for name in ("clip", "t5"):
            fresh[name].eval()
            assert torch.equal(fresh[name](tokens), adapters[name](tokens))


def test_same_seed_builds_same_adapters():
    a, b = (adapters_state(build_adapters(D_AUDIO, D_CLIP, D_T5, FedA2VConfig(), seed=3,
                                          target_rows=ROWS)) for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_t5_positions_differ_even_for_uniform_tokens():
    """The queries stay in the residual path: identical tokens must not collapse all latents."""
    adapters = build_adapters(32, 16, 8, FedA2VConfig(t5_max_length=5, span_adapters=[]), seed=0)
    tokens = torch.ones(2, 7, 32)
    out = adapters["t5"].eval()(tokens)
    assert out.shape == (2, 5, 8)
    assert (out[:, 1:] - out[:, :1]).abs().amax() > 1e-3


def _linear(d_in: int, d_out: int) -> int:
    return d_in * d_out + d_out


def _upstream_count(hidden: tuple[int, ...], d_out: int, n_latents: int) -> int:
    """Upstream's adapter by its layer list: MLP (Linear + GroupNorm per hidden layer, Linear
    out), then map.py's MAPBlock at `d_out` (latents, q/k/v/out, 2 LayerNorms, MLP ratio 4)."""
    mlp = (sum(_linear(a, b) + 2 * b for a, b in zip((768, *hidden[:-1]), hidden, strict=True))
           + _linear(hidden[-1], d_out))
    block = (n_latents * d_out + 4 * _linear(d_out, d_out) + 4 * d_out
             + _linear(d_out, 4 * d_out) + _linear(4 * d_out, d_out))
    return mlp + block


def test_upstream_design_has_upstreams_parameter_counts_at_real_widths():
    with torch.device("meta"):
        built = build_adapters(768, 768, 4096, FedA2VConfig(adapter_design="upstream"))
    counts = {name: sum(p.numel() for p in a.parameters()) for name, a in built.items()}
    assert counts == {"clip": _upstream_count((1024, 2048), 768, 1),
                      "t5": _upstream_count((1024, 2048, 2048), 4096, 17)}
    assert 216e6 < counts["t5"] < 218e6  # the issue's ~217 M
    assert built["t5"].projection.latents.shape == (17, 4096)  # pools at the T5 width


@pytest.mark.parametrize("diffusion_type", ["flux", "sd"])
def test_upstream_design_has_fed_a2vs_interface(diffusion_type):
    cfg = FedA2VConfig(adapter_design="upstream", diffusion_type=diffusion_type,
                       clip_max_length=6)
    built = build_adapters(D_AUDIO, D_CLIP, D_T5, cfg, seed=0, target_rows=ROWS)
    assert set(built) == ({"clip", "t5"} if diffusion_type == "flux" else {"clip"})
    gen = torch.Generator().manual_seed(2)
    batch = torch.randn(4, TOKENS, D_AUDIO, generator=gen)
    want = {"clip": (D_CLIP,) if diffusion_type == "flux" else (6, D_CLIP),
            "t5": (cfg.t5_max_length, D_T5)}
    with torch.no_grad():
        for name, adapter in built.items():
            adapter.eval()
            assert adapter.out_features == want[name][-1]
            out = adapter(batch)
            assert out.shape == (4, *want[name])
            assert torch.allclose(adapter(batch[2:3]), out[2:3], atol=1e-5)
    again = adapters_state(build_adapters(D_AUDIO, D_CLIP, D_T5, cfg, seed=0, target_rows=ROWS))
    assert all(torch.equal(v, again[k]) for k, v in adapters_state(built).items())


def test_a_package_rebuilds_the_design_it_was_trained_with():
    from fed_a2v.encode.text_targets import Targets
    from fed_a2v.model.pretrained import FedA2VAdapters

    cfg = FedA2VConfig(adapter_design="upstream")
    state = adapters_state(build_adapters(D_AUDIO, D_CLIP, D_T5, cfg, seed=4, target_rows=ROWS))
    config = {"diffusion_type": "flux",
              "dims": {"d_audio": D_AUDIO, "d_clip": D_CLIP, "d_t5": D_T5,
                       "t5_max_length": cfg.t5_max_length, "clip_max_length": 77},
              "adapter": {"adapter_dropout": cfg.adapter_dropout, "adapter_design": "upstream"}}
    targets = Targets(["a"], ["a"], {"clip": torch.zeros(1, D_CLIP),
                                     "t5": torch.zeros(1, cfg.t5_max_length, D_T5)})
    loaded = FedA2VAdapters.from_state(config, state, targets)
    assert all(torch.equal(v, state[k]) for k, v in adapters_state(loaded.adapters).items())


def test_adapter_design_is_validated(tmp_path):
    path = tmp_path / "exp.json"
    path.write_text('{"feda2v": {"adapter_design": "upstreem"}}')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "feda2v.adapter_design" in message and '"fed_a2v"' in message
    assert "did you mean 'upstream'" in message


def _table(rows: int = 6) -> dict[str, torch.Tensor]:
    """A target table whose rows share most values: one column and one position differ."""
    g = torch.Generator().manual_seed(0)
    clip = torch.randn(D_CLIP, generator=g).repeat(rows, 1)
    clip[:, 3] += torch.randn(rows, generator=g)
    t5 = torch.randn(5, D_T5, generator=g).repeat(rows, 1, 1)
    t5[:, 2] += torch.randn(rows, D_T5, generator=g)
    return {"clip": clip, "t5": t5}


def test_a_span_adapter_predicts_the_mean_row_plus_coordinates_along_where_rows_differ():
    table = _table()
    cfg = FedA2VConfig(t5_max_length=5, span_adapters=["clip", "t5"])
    adapters = adapters_for_targets(D_AUDIO, table, cfg)
    tokens = torch.randn(3, TOKENS, D_AUDIO)
    for name, adapter in adapters.items():
        assert isinstance(adapter, SpanAdapter)
        rows = table[name]
        coords = adapter.out.normalize(rows)
        assert coords.shape == (6, 5)  # K - 1 directions
        assert torch.allclose(adapter.out(coords), rows, atol=1e-5)  # rows are in the span
        assert torch.allclose(adapter.out(torch.zeros(1, 5))[0], rows.mean(0), atol=1e-6)
        used = coords.abs().amax(0) > 0  # clip's rows differ in one column: one direction
        assert used.sum() == (1 if name == "clip" else 5)
        assert 0.5 < coords[:, used].pow(2).mean().sqrt() < 2  # coordinates of unit size
        with torch.no_grad():
            pred = adapter.eval()(tokens)
        assert pred.shape == (3, *rows.shape[1:])
        # whatever it predicts, the values every row shares are the rows' own
        shared = (rows == rows[0]).all(0)
        assert torch.allclose(pred[:, shared], rows[0][shared].expand(3, -1), atol=1e-5)


def test_span_settings_pick_the_adapters_and_keep_the_weights_apart_from_the_table():
    table = _table()
    t5_only = adapters_for_targets(D_AUDIO, table, FedA2VConfig(t5_max_length=5))
    assert isinstance(t5_only["t5"], SpanAdapter) and not isinstance(t5_only["clip"],
                                                                     SpanAdapter)
    none = adapters_for_targets(D_AUDIO, table, FedA2VConfig(t5_max_length=5,
                                                             span_adapters=[]))
    assert not any(isinstance(a, SpanAdapter) for a in none.values())
    # the basis is not a weight: not sent, not saved; a package rebuilds it from its targets
    assert not any(".out." in k for k in adapters_state(t5_only))
    upstream = adapters_for_targets(D_AUDIO, table, FedA2VConfig(
        t5_max_length=5, adapter_design="upstream"))
    assert not any(isinstance(a, SpanAdapter) for a in upstream.values())
    with pytest.raises(ConfigError, match="span_adapters.*\"t6\" is not allowed"):
        config_from_dict({"feda2v": {"span_adapters": ["t6"]}})


def test_token_statistics_reach_the_head_and_only_with_the_setting():
    tokens = torch.randn(2, TOKENS, D_AUDIO)
    moved = tokens.clone()
    moved[:, 2:] = tokens[:, 2:] * 3.0  # the same mean direction, a larger spread
    for stats in (True, False):
        cfg = FedA2VConfig(adapter_token_statistics=stats)
        clip = build_adapters(D_AUDIO, D_CLIP, D_T5, cfg, seed=0, target_rows=ROWS)["clip"].eval()
        assert (clip.stats is not None) == stats
        assert clip.head[0].in_features == D_AUDIO * (5 if stats else 1)
        with torch.no_grad():
            assert clip(tokens).shape == (2, D_CLIP)
    assert token_statistics(tokens).shape == (2, 4 * D_AUDIO)
    assert torch.allclose(token_statistics(moved)[:, D_AUDIO:2 * D_AUDIO],
                          moved.std(1, correction=0))
