"""Zero-shot CLIP scoring of generated images, as upstream did (`openai/clip-vit-base-patch32`):
each image is classified by its similarity to the class prompts, and the predictions are scored
with accuracy, balanced accuracy and macro F1.

`write_tiny_clip` writes a small, seeded, randomly initialised `CLIPModel` folder (text and
vision towers, a tokenizer trained with `tokenizers` on the class prompts, a
`CLIPImageProcessor`), so the real `from_pretrained` path runs offline in tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from tqdm import tqdm
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from fed_a2v.encode.encoders import _ALPHABET, CLIP_MAX_LENGTH, class_prompt, resolve_device

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "a photo of a {label}"
UPSTREAM_SCORER = "openai/clip-vit-base-patch32"
_TINY_IMAGE_SIZE = 32
_SEED = 1234

ImageLike = Image.Image | str | Path


def _trained_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained on `texts`; its alphabet covers any lower-case text."""
    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=256, special_tokens=specials, initial_alphabet=_ALPHABET, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>",
        special_tokens=[("<bos>", tok.token_to_id("<bos>")), ("<eos>", tok.token_to_id("<eos>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=CLIP_MAX_LENGTH,
                                   pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                   eos_token="<eos>")


def write_tiny_clip(directory: str | Path, class_names: Sequence[str],
                    template: str = DEFAULT_TEMPLATE) -> Path:
    """Save a tiny seeded `CLIPModel`, its tokenizer and image processor to `directory`."""
    tokenizer = _trained_tokenizer([class_prompt(name, template) for name in class_names])
    ids = tokenizer.convert_tokens_to_ids(["<pad>", "<bos>", "<eos>"])
    # eos_token_id != 2: CLIP pools at the first <eos>, not at the largest token id (legacy).
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4,
                     "max_position_embeddings": CLIP_MAX_LENGTH, "pad_token_id": ids[0],
                     "bos_token_id": ids[1], "eos_token_id": ids[2]},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "image_size": _TINY_IMAGE_SIZE,
                       "patch_size": 8},
        projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = CLIPModel(config).eval()
    processor = CLIPImageProcessor(
        size={"shortest_edge": _TINY_IMAGE_SIZE},
        crop_size={"height": _TINY_IMAGE_SIZE, "width": _TINY_IMAGE_SIZE})
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def _rgb(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as opened:
        return opened.convert("RGB")


@dataclass
class ZeroShotScorer:
    """A `CLIPModel` that classifies images by cosine similarity to class prompts."""

    model: CLIPModel
    tokenizer: PreTrainedTokenizerBase
    image_processor: Callable  # a CLIP image processor (either backend)
    device: torch.device

    @classmethod
    def load(cls, name_or_dir: str | Path, device: str = "cpu") -> ZeroShotScorer:
        """Model, tokenizer and image processor `from_pretrained` (hub id or local folder)."""
        torch_device = resolve_device(device)
        model = CLIPModel.from_pretrained(str(name_or_dir)).to(torch_device).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_dir))
        image_processor = AutoImageProcessor.from_pretrained(str(name_or_dir))
        log.info("zero-shot scorer %s on %s", name_or_dir, torch_device)
        return cls(model, tokenizer, image_processor, torch_device)

    @torch.no_grad()
    def text_features(self, class_names: Sequence[str],
                      template: str = DEFAULT_TEMPLATE) -> torch.Tensor:
        """Unit-norm projected text embeddings of the class prompts, `(classes, dim)`."""
        prompts = [class_prompt(name, template) for name in class_names]
        batch = self.tokenizer(prompts, padding=True, truncation=True,
                               max_length=self.model.config.text_config.max_position_embeddings,
                               return_tensors="pt").to(self.device)
        features = self.model.get_text_features(input_ids=batch["input_ids"],
                                                attention_mask=batch["attention_mask"])
        return F.normalize(_tensor(features).float(), dim=-1)

    @torch.no_grad()
    def image_features(self, images: Sequence[ImageLike], batch_size: int = 32) -> torch.Tensor:
        """Unit-norm projected image embeddings, `(images, dim)`."""
        chunks = []
        for start in tqdm(range(0, len(images), batch_size), desc="scoring images",
                          unit="batch", disable=None, leave=False):
            pixels = self.image_processor(
                [_rgb(image) for image in images[start:start + batch_size]],
                return_tensors="pt")["pixel_values"].to(self.device, self.model.dtype)
            chunks.append(_tensor(self.model.get_image_features(pixel_values=pixels)).float())
        return F.normalize(torch.cat(chunks), dim=-1)

    def classify(self, images: Sequence[ImageLike], class_names: Sequence[str],
                 template: str = DEFAULT_TEMPLATE, batch_size: int = 32) -> list[int]:
        """Index into `class_names` of the most similar class prompt, per image."""
        if not images:
            return []
        if not class_names:
            raise ValueError("zero-shot classification needs at least one class name")
        similarity = self.image_features(images, batch_size) @ self.text_features(
            class_names, template).T
        return similarity.argmax(dim=1).cpu().tolist()


def _tensor(output) -> torch.Tensor:
    """`get_*_features` return a tensor, or (newer transformers) an output with `pooler_output`."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def classification_metrics(predicted: Sequence[int], truth: Sequence[int],
                           num_classes: int) -> dict[str, float]:
    """Accuracy; balanced accuracy: the mean recall over the classes present in `truth`; macro
    F1: the mean F1 over the classes present in `truth` or `predicted` (scikit-learn's default
    label set), a class's F1 being 2·TP / (2·TP + FP + FN)."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} labels")
    if not truth:
        raise ValueError("classification metrics need at least one sample")
    out_of_range = sorted({i for i in (*predicted, *truth) if not 0 <= i < num_classes})
    if out_of_range:
        raise ValueError(f"class indices {out_of_range} outside 0..{num_classes - 1}")
    pred = torch.tensor(list(predicted))
    true = torch.tensor(list(truth))
    hits = pred == true
    tp = torch.bincount(true[hits], minlength=num_classes).double()
    support = torch.bincount(true, minlength=num_classes).double()
    claimed = torch.bincount(pred, minlength=num_classes).double()
    in_truth = support > 0
    seen = in_truth | (claimed > 0)
    f1 = 2 * tp / (support + claimed).clamp(min=1)  # 2TP + FP + FN = support + claimed
    return {"accuracy": hits.double().mean().item(),
            "balanced_accuracy": (tp[in_truth] / support[in_truth]).mean().item(),
            "macro_f1": f1[seen].mean().item()}
