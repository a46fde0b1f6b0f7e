"""Frozen encoders: AST for audio tokens, CLIP and T5 text encoders for targets.

`builtin:*` names build small, seeded, randomly initialised models from configs in code, with
character tokenizers, so everything runs offline. Every other name (hub id or local directory)
goes through `from_pretrained`, as a user with real weights expects.
"""

from __future__ import annotations

import logging
import string
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from tqdm import tqdm
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTModel,
    AutoConfig,
    AutoTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

from fed_a2v.data.audio import FeatureSettings, fbank_features
from fed_a2v.encode.cache import file_stamp, fingerprint
from fed_a2v.encode.devices import BUILTIN, DTYPES, resolve_device

log = logging.getLogger(__name__)

_ALPHABET = list(string.ascii_lowercase + string.digits + " _-'.,!?")
_SEED = 1234
CLIP_MAX_LENGTH = 77
# The built-in text encoders' widths: what `builtin:tiny-flux` is conditioned on.
BUILTIN_CLIP_WIDTH = 64
BUILTIN_T5_WIDTH = 64


def _char_tokenizer(specials: list[str], template: str, max_length: int,
                    **special_names: str) -> PreTrainedTokenizerFast:
    """A character-level tokenizer: no vocabulary file, no download, any lower-case text."""
    vocab = {tok: i for i, tok in enumerate(specials + _ALPHABET)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(s, vocab[s]) for s in specials if s in template]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length,
                                   unk_token="<unk>", **special_names)


def _seeded(build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        return build().eval()


def builtin_audio() -> tuple[ASTModel, ASTFeatureExtractor]:
    config = ASTConfig(hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=192, num_mel_bins=64, max_length=256)
    extractor = ASTFeatureExtractor(num_mel_bins=64, max_length=256)
    return _seeded(lambda: ASTModel(config)), extractor


def builtin_clip() -> tuple[CLIPTextModel, PreTrainedTokenizerFast]:
    tokenizer = _char_tokenizer(["<pad>", "<bos>", "<unk>", "<eos>"], "<bos> $A <eos>",
                                CLIP_MAX_LENGTH, pad_token="<pad>", bos_token="<bos>",
                                eos_token="<eos>")
    # initializer_factor 5 spreads the random class targets apart (max pairwise cosine ~0.81).
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=BUILTIN_CLIP_WIDTH,
                            intermediate_size=128, projection_dim=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH,
                            pad_token_id=0, bos_token_id=1, eos_token_id=3, initializer_factor=5.0)
    return _seeded(lambda: CLIPTextModel(config)), tokenizer


def builtin_t5() -> tuple[T5EncoderModel, PreTrainedTokenizerFast]:
    tokenizer = _char_tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>", 512,
                                pad_token="<pad>", eos_token="</s>")
    config = T5Config(vocab_size=len(tokenizer), d_model=BUILTIN_T5_WIDTH, d_kv=16,
                      d_ff=128, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return _seeded(lambda: T5EncoderModel(config)), tokenizer


BUILTINS = {"builtin:tiny-ast": builtin_audio, "builtin:tiny-clip": builtin_clip,
            "builtin:tiny-t5": builtin_t5}


def _builtin(name: str):
    if name not in BUILTINS:
        raise ValueError(f"unknown built-in model '{name}'; built-ins: {', '.join(BUILTINS)}")
    return BUILTINS[name]()


def save_builtin(name: str, directory: str | Path) -> Path:
    """Write a built-in model and its tokenizer/feature extractor with `save_pretrained`."""
    model, processor = _builtin(name)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return Path(directory)


def model_identity(name: str, subfolders: tuple[str | None, ...] = (None,)) -> dict:
    """What a model is, for cache keys. A built-in: its config. A local directory: a stamp of
    every file (config, tokenizer, weights) in its folder or the given subfolders. A hub id:
    the revision it resolves to, where the hub or its local cache can say."""
    if name.startswith(BUILTIN):
        return {"builtin": name, "config": _builtin(name)[0].config.to_dict()}
    root = Path(name)
    if root.is_dir():
        folders = [root / sub if sub else root for sub in dict.fromkeys(subfolders)]
        return {"files": {str(p.relative_to(root)): file_stamp(p) for folder in folders
                          if folder.is_dir() for p in sorted(folder.iterdir())
                          if p.is_file() and not p.name.startswith(".")}}
    try:
        config = AutoConfig.from_pretrained(name, subfolder=subfolders[0] or "")
    except (OSError, ValueError) as err:
        log.warning("%s: revision unknown (%s); cached results are keyed by its name", name, err)
        return {"hub": name, "revision": None}
    return {"hub": name, "revision": config._commit_hash, "config": config.to_dict()}


def _settings(extractor: ASTFeatureExtractor) -> FeatureSettings:
    return FeatureSettings(
        sampling_rate=extractor.sampling_rate, num_mel_bins=extractor.num_mel_bins,
        max_length=extractor.max_length, mean=float(extractor.mean), std=float(extractor.std),
        do_normalize=bool(extractor.do_normalize))


def describe_audio_encoder(name: str) -> tuple[ASTConfig, FeatureSettings]:
    """The AST's config and feature settings, without loading its weights. A model's own
    `preprocessor_config.json` wins; without one, its config's mel bins and length are used."""
    if name.startswith(BUILTIN):
        model, extractor = _builtin(name)
        return model.config, _settings(extractor)
    config = ASTConfig.from_pretrained(name)
    try:
        extractor = ASTFeatureExtractor.from_pretrained(name)
    except OSError:
        extractor = ASTFeatureExtractor(num_mel_bins=config.num_mel_bins,
                                        max_length=config.max_length)
    return config, _settings(extractor)


def audio_encoder_key(name: str, dtype: str) -> str:
    """What decides the tokens, besides the audio: model, weights, features, precision."""
    config, settings = describe_audio_encoder(name)
    return fingerprint(name, config.to_dict(), model_identity(name), asdict(settings), dtype)


@dataclass
class AudioEncoder:
    """A frozen AST: waveforms in, `(N, tokens, hidden)` last hidden states out."""

    name: str
    model: ASTModel
    settings: FeatureSettings
    device: torch.device
    dtype: str = "fp32"

    @classmethod
    def load(cls, name: str, device: str = "cpu", dtype: str = "fp32") -> AudioEncoder:
        """A built-in, or `from_pretrained` (hub id or local directory)."""
        _, settings = describe_audio_encoder(name)
        if name.startswith(BUILTIN):
            model, _ = _builtin(name)
        else:
            model = ASTModel.from_pretrained(name, dtype=DTYPES[dtype])
        dev = resolve_device(device)
        return cls(name, model.to(dev, DTYPES[dtype]).eval(), settings, dev, dtype)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode_batch(self, waveforms: list[torch.Tensor]) -> torch.Tensor:
        """One forward pass over `waveforms`."""
        feats = torch.stack([fbank_features(w, self.settings) for w in waveforms])
        feats = feats.to(self.device, DTYPES[self.dtype])
        return self.model(input_values=feats).last_hidden_state.float().cpu()

    def encode(self, waveforms: list[torch.Tensor], batch_size: int = 16,
               desc: str = "encoding audio") -> torch.Tensor:
        return torch.cat([self.encode_batch(waveforms[start:start + batch_size])
                          for start in tqdm(range(0, len(waveforms), batch_size), desc=desc,
                                            unit="batch", disable=None, leave=False)])


def flux_tokenizer_subfolder(model_subfolder: str | None) -> str | None:
    """FLUX keeps `text_encoder` + `tokenizer` and `text_encoder_2` + `tokenizer_2`."""
    if model_subfolder and "text_encoder" in model_subfolder:
        return model_subfolder.replace("text_encoder", "tokenizer")
    return model_subfolder


def load_text_encoder(name: str, model_cls: type[PreTrainedModel], subfolder: str | None = None,
                      tokenizer_subfolder: str | None = None, dtype: str = "fp32"):
    """`(model, tokenizer)`: a built-in, or both `from_pretrained` (hub id or local directory)."""
    if name.startswith(BUILTIN):
        return _builtin(name)
    model = model_cls.from_pretrained(name, dtype=DTYPES[dtype],
                                      **({"subfolder": subfolder} if subfolder else {}))
    tok_sub = tokenizer_subfolder or flux_tokenizer_subfolder(subfolder)
    tokenizer = AutoTokenizer.from_pretrained(name, **({"subfolder": tok_sub} if tok_sub else {}))
    return model.eval(), tokenizer


@torch.no_grad()
def clip_targets(name: str, prompts: list[str], device: str = "cpu", subfolder: str | None = None,
                 tokenizer_subfolder: str | None = None, dtype: str = "fp32",
                 sequence_length: int | None = None) -> torch.Tensor:
    """CLIP text encoder output per prompt. `sequence_length` None: the pooled output,
    `(len(prompts), hidden)`, FLUX's pooled embeds; a length: the last hidden states of the
    prompt padded/truncated to it, `(len(prompts), sequence_length, hidden)`, what Stable
    Diffusion 1.x is conditioned on."""
    model, tokenizer = load_text_encoder(name, CLIPTextModel, subfolder, tokenizer_subfolder,
                                         dtype)
    model = model.to(resolve_device(device))
    if sequence_length is None:
        return torch.cat([model(input_ids=ids).pooler_output.float().cpu() for ids in
                          _token_batches(tokenizer, prompts, CLIP_MAX_LENGTH, model.device,
                                         "CLIP")])
    positions = model.config.max_position_embeddings
    if sequence_length > positions:
        raise ValueError(f"{name}: 'feda2v.clip_max_length' {sequence_length} exceeds the "
                         f"CLIP text encoder's {positions} positions")
    # SD 1.x runs CLIP without an attention mask and keeps every position, padding included.
    return torch.cat([model(input_ids=ids).last_hidden_state.float().cpu() for ids in
                      _token_batches(tokenizer, prompts, sequence_length, model.device, "CLIP")])


@torch.no_grad()
def t5_targets(name: str, prompts: list[str], max_length: int, device: str = "cpu",
               subfolder: str | None = None, tokenizer_subfolder: str | None = None,
               dtype: str = "fp32") -> torch.Tensor:
    """T5 encoder hidden states per prompt padded to `max_length`: FLUX's prompt embeds."""
    model, tokenizer = load_text_encoder(name, T5EncoderModel, subfolder, tokenizer_subfolder,
                                         dtype)
    model = model.to(resolve_device(device))
    # FLUX runs T5 without an attention mask, so padded positions carry real states too.
    return torch.cat([model(input_ids=ids).last_hidden_state.float().cpu() for ids in
                      _token_batches(tokenizer, prompts, max_length, model.device, "T5")])


def _token_batches(tokenizer, prompts: list[str], max_length: int, device: torch.device,
                   what: str, batch_size: int = 32):
    """Prompts tokenized and padded to `max_length`, a batch at a time, with a progress bar."""
    for start in tqdm(range(0, len(prompts), batch_size), desc=f"{what} targets", unit="batch",
                      disable=None, leave=False):
        batch = tokenizer(prompts[start:start + batch_size], padding="max_length",
                          max_length=max_length, truncation=True, return_tensors="pt")
        yield batch["input_ids"].to(device)


def class_prompt(label: str, template: str = "{label}") -> str:
    return template.format(label=label.replace("_", " "))
