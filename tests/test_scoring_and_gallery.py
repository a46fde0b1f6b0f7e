"""Zero-shot CLIP scoring on a tiny CLIPModel folder, the metrics by hand counts, and the
gallery's PNG grid and Markdown page."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from fed_a2v.generate.gallery import (
    LINE_HEIGHT,
    PAD,
    TITLE_HEIGHT,
    GalleryItem,
    render_grid,
    write_gallery,
)
from fed_a2v.generate.scoring import ZeroShotScorer, classification_metrics, write_tiny_clip

CLASSES = ["dog", "rooster", "crackling_fire", "rain", "sea_waves"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), CLASSES)


def _images(count: int, size: int = 40) -> list[Image.Image]:
    return [Image.new("RGB", (size, size), ((53 * i) % 256, (97 * i + 40) % 256, (31 * i) % 256))
            for i in range(count)]


def test_tiny_clip_folder_loads_by_path(tiny_clip):
    names = {p.name for p in tiny_clip.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json",
            "preprocessor_config.json"} <= names
    scorer = ZeroShotScorer.load(tiny_clip)
    assert scorer.model.config.vision_config.image_size == 32
    # The trained tokenizer reads words it never saw (its alphabet covers lower-case text).
    ids = scorer.tokenizer("a photo of a zebra")["input_ids"]
    assert scorer.tokenizer.unk_token_id not in ids
    assert ids[0] == scorer.tokenizer.bos_token_id and ids[-1] == scorer.tokenizer.eos_token_id


def test_classify_returns_valid_indices_and_is_deterministic(tiny_clip, tmp_path):
    images = _images(12)
    first = ZeroShotScorer.load(tiny_clip).classify(images, CLASSES, batch_size=5)
    again = ZeroShotScorer.load(tiny_clip).classify(images, CLASSES)
    assert first == again and len(first) == 12
    assert all(0 <= i < len(CLASSES) for i in first)
    # Paths classify the same as the images they hold.
    paths = []
    for n, image in enumerate(images[:3]):
        image.save(tmp_path / f"{n}.png")
        paths.append(tmp_path / f"{n}.png")
    assert ZeroShotScorer.load(tiny_clip).classify(paths, CLASSES) == first[:3]


def test_classify_is_the_argmax_of_image_text_similarity(tiny_clip):
    scorer = ZeroShotScorer.load(tiny_clip)
    images = _images(6)
    similarity = scorer.image_features(images) @ scorer.text_features(CLASSES).T
    assert scorer.classify(images, CLASSES) == similarity.argmax(dim=1).tolist()
    # One class only: every image is that class; reversing the classes maps the indices.
    assert scorer.classify(images, ["dog"]) == [0] * 6
    reversed_pred = scorer.classify(images, CLASSES[::-1])
    assert [len(CLASSES) - 1 - i for i in reversed_pred] == scorer.classify(images, CLASSES)
    assert scorer.classify([], CLASSES) == []


def test_metrics_by_hand_counts():
    # Truth 0,1,1,2; predicted 0,0,1,2: 3 of 4 right; recalls 1, 1/2, 1;
    # F1: class 0 2/(2+1) = 2/3, class 1 2/(2+1) = 2/3, class 2 1.
    m = classification_metrics([0, 0, 1, 2], [0, 1, 1, 2], num_classes=3)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx(2.5 / 3)
    assert m["macro_f1"] == pytest.approx(7 / 9)


def test_metrics_class_sets():
    # Class 3 is only predicted: not in balanced accuracy (absent from truth), in macro F1
    # with F1 0; class 1 is in neither.
    m = classification_metrics([3, 0], [0, 0], num_classes=4)
    assert m == pytest.approx({"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_f1": 1 / 3})
    assert classification_metrics([1, 1], [1, 1], 2) == pytest.approx(
        {"accuracy": 1.0, "balanced_accuracy": 1.0, "macro_f1": 1.0})
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([5], [0], 3)
    with pytest.raises(ValueError, match="predictions"):
        classification_metrics([0], [0, 1], 3)


def _saved(tmp_path, count: int, size: int, prefix: str) -> list:
    paths = []
    for n, image in enumerate(_images(count, size)):
        paths.append(tmp_path / f"{prefix}{n}.png")
        image.save(paths[-1])
    return paths


@pytest.mark.parametrize("count, cols, rows", [(1, 1, 1), (4, 4, 1), (5, 4, 2), (9, 4, 3)])
def test_gallery_png_grid_size(tmp_path, count, cols, rows):
    size = 120  # wider than the short captions, so the image sets the cell width
    items = [GalleryItem(path, [f"c{n}", "dog"]) for n, path in
             enumerate(_saved(tmp_path, count, size, "clip"))]
    png, _ = write_gallery(tmp_path / "out", items, "title")
    with Image.open(png) as grid:
        assert grid.size == (cols * (size + 2 * PAD),
                             TITLE_HEIGHT + rows * (size + 2 * LINE_HEIGHT + 2 * PAD))
        # The first image sits in the first cell, unchanged.
        first = grid.crop((PAD, TITLE_HEIGHT + PAD, PAD + size, TITLE_HEIGHT + PAD + size))
        assert first.tobytes() == _images(1, size)[0].tobytes()


def test_gallery_compare_side_by_side_and_thumbnails(tmp_path):
    audio = _saved(tmp_path, 3, 300, "a")
    text = _saved(tmp_path, 3, 300, "t")
    items = [GalleryItem(a, ["x"], compare=t) for a, t in zip(audio, text, strict=True)]
    grid = render_grid(items, "t", columns=2, thumb=100)
    assert grid.size == (2 * (2 * 100 + PAD + 2 * PAD),
                         TITLE_HEIGHT + 2 * (100 + LINE_HEIGHT + 2 * PAD))


def test_gallery_names_the_image_and_its_comparison(tmp_path):
    audio = _saved(tmp_path, 2, 100, "a")
    text = _saved(tmp_path, 2, 100, "t")
    items = [GalleryItem(a, ["x"], compare=t) for a, t in zip(audio, text, strict=True)]
    names = ("from the audio", "from the text")
    plain = render_grid(items, "t", columns=2)
    named = render_grid(items, "t", columns=2, names=names)
    assert named.width == plain.width and named.height == plain.height + LINE_HEIGHT
    # Each name is drawn over its own image: dark pixels in the band above each one.
    for start in (0, 100 + PAD):
        band = named.crop((PAD + start, TITLE_HEIGHT + PAD, PAD + start + 100,
                           TITLE_HEIGHT + PAD + LINE_HEIGHT)).convert("L")
        assert band.getextrema()[0] < 128
    # The images sit below the band, unchanged.
    first = named.crop((PAD, TITLE_HEIGHT + PAD + LINE_HEIGHT, PAD + 100,
                        TITLE_HEIGHT + PAD + LINE_HEIGHT + 100))
    assert first.tobytes() == _images(1, 100)[0].tobytes()
    _, md = write_gallery(tmp_path / "out", items, "t", names=names)
    assert "| from the audio | from the text | caption |" in md.read_text()
    # Without comparisons there is nothing to tell apart: no band, the usual heading.
    alone = [GalleryItem(a, ["x"]) for a in audio]
    assert render_grid(alone, "t", names=names).height == render_grid(alone, "t").height
    _, md = write_gallery(tmp_path / "alone", alone, "t", names=names)
    assert "| from the audio | caption |" in md.read_text()


def test_gallery_long_caption_widens_cells(tmp_path):
    items = [GalleryItem(p, ["a caption much wider than the tiny image"])
             for p in _saved(tmp_path, 2, 16, "s")]
    grid = render_grid(items, "t")
    assert grid.width > 2 * (16 + 2 * PAD)
    # Caption text is drawn: the band under the image holds dark pixels.
    band = grid.crop((0, TITLE_HEIGHT + PAD + 16, grid.width // 2, grid.height)).convert("L")
    assert band.getextrema()[0] < 128


def test_gallery_markdown_links_every_image_and_metrics(tmp_path):
    audio = _saved(tmp_path, 3, 32, "clip_")
    text = _saved(tmp_path, 3, 32, "text_")
    items = [GalleryItem(a, [a.name, "nearest: dog (0.91)"], compare=t)
             for a, t in zip(audio, text, strict=True)]
    metrics = {"audio": {"accuracy": 0.5, "balanced_accuracy": 0.25, "macro_f1": 0.125},
               "text": {"accuracy": 1.0, "balanced_accuracy": 1.0, "macro_f1": 1.0}}
    out = tmp_path / "gallery"
    png, md = write_gallery(out, items, "From sound to picture", metrics)
    text_md = md.read_text()
    assert png == out / "gallery.png" and png.exists()
    assert text_md.startswith("# From sound to picture\n")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text_md)
    assert "gallery.png" in links
    for path in audio + text:
        assert f"../{path.name}" in links
        assert (out / f"../{path.name}").resolve() == path.resolve()
    assert "nearest: dog (0.91)" in text_md
    assert "| metric | audio | text |" in text_md
    assert "| balanced_accuracy | 0.2500 | 1.0000 |" in text_md
    assert "| macro_f1 | 0.1250 | 1.0000 |" in text_md


def test_gallery_markdown_flat_metrics_and_no_metrics(tmp_path):
    items = [GalleryItem(p, ["a|b"]) for p in _saved(tmp_path, 2, 16, "f")]
    _, md = write_gallery(tmp_path, items, "t", {"accuracy": 0.75})
    text_md = md.read_text()
    assert "| accuracy | 0.7500 |" in text_md
    assert "a\\|b" in text_md and "compare" not in text_md
    assert "](f0.png)" in text_md and "](f1.png)" in text_md
    _, md = write_gallery(tmp_path, items, "t")
    assert "metric" not in md.read_text()
    with pytest.raises(ValueError, match="at least one"):
        write_gallery(tmp_path, [], "t")
