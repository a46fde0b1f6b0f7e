"""A gallery of generated images: `gallery.png`, a grid with caption lines drawn under each
image (and its comparison image beside it, each named above it), and `gallery.md`, the title,
the metrics and every image with its caption, linked relative to the gallery."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

PAD = 8  # around each cell, and between an image and its comparison
FONT_SIZE = 12
LINE_HEIGHT = 16
TITLE_HEIGHT = 28
COLUMNS = 4
THUMB = 256  # longest side of an image in the grid; smaller images keep their size

Metrics = Mapping[str, float] | Mapping[str, Mapping[str, float]]


@dataclass
class GalleryItem:
    """One image, the caption lines drawn under it, and an optional image shown beside it."""

    image: Path
    caption: list[str] = field(default_factory=list)
    compare: Path | None = None


def _thumbnail(path: Path, thumb: int) -> Image.Image:
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    image.thumbnail((thumb, thumb))
    return image


def _tile(item: GalleryItem, thumb: int) -> tuple[Image.Image, list[int]]:
    """The image, and its comparison to the right of it, on one white tile; and where each
    starts."""
    parts = [_thumbnail(item.image, thumb)]
    if item.compare is not None:
        parts.append(_thumbnail(item.compare, thumb))
    width = sum(p.width for p in parts) + PAD * (len(parts) - 1)
    tile = Image.new("RGB", (width, max(p.height for p in parts)), "white")
    x, starts = 0, []
    for part in parts:
        tile.paste(part, (x, 0))
        starts.append(x)
        x += part.width + PAD
    return tile, starts


def render_grid(items: Sequence[GalleryItem], title: str, columns: int = COLUMNS,
                thumb: int = THUMB, names: tuple[str, str] | None = None) -> Image.Image:
    """Cells of equal size, `columns` wide: a tile, then its caption lines, each line drawn in
    PIL's default font; the title on a band above. `names`: what the image and its comparison
    are, drawn above each (where some item has a comparison)."""
    if not items:
        raise ValueError("a gallery needs at least one image")
    font = ImageFont.load_default(size=FONT_SIZE)
    tiles = [_tile(item, thumb) for item in items]
    named = names is not None and any(item.compare is not None for item in items)
    head = LINE_HEIGHT if named else 0
    lines = max(len(item.caption) for item in items)
    text_width = max((font.getlength(line) for item in items for line in item.caption),
                     default=0)
    if named:  # a name must fit over its image
        text_width = max(text_width, *(start + font.getlength(name) for _, starts in tiles
                                       for start, name in zip(starts, names, strict=False)))
    cell_w = max(max(t.width for t, _ in tiles), math.ceil(text_width)) + 2 * PAD
    cell_h = head + max(t.height for t, _ in tiles) + lines * LINE_HEIGHT + 2 * PAD
    cols = min(columns, len(items))
    rows = math.ceil(len(items) / cols)
    grid = Image.new("RGB", (cols * cell_w, TITLE_HEIGHT + rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((PAD, (TITLE_HEIGHT - FONT_SIZE) // 2), title, fill="black", font=font)
    for index, (item, (tile, starts)) in enumerate(zip(items, tiles, strict=True)):
        x = (index % cols) * cell_w + PAD
        y = TITLE_HEIGHT + (index // cols) * cell_h + PAD
        if named:
            for start, name in zip(starts, names, strict=False):
                draw.text((x + start, y), name, fill="black", font=font)
        grid.paste(tile, (x, y + head))
        for n, line in enumerate(item.caption):
            draw.text((x, y + head + tile.height + n * LINE_HEIGHT + 2), line, fill="black",
                      font=font)
    return grid


def _link(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), out_dir.resolve())).as_posix()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _metrics_table(metrics: Metrics) -> list[str]:
    """One row per metric; one value column, or one column per group (e.g. audio, text)."""
    groups = {name: value for name, value in metrics.items() if isinstance(value, Mapping)}
    if not groups:
        return ["| metric | value |", "|---|---|",
                *(f"| {name} | {value:.4f} |" for name, value in metrics.items())]
    names = list(dict.fromkeys(name for values in groups.values() for name in values))
    header = ["| metric | " + " | ".join(map(_cell, groups)) + " |",
              "|---|" + "---|" * len(groups)]
    return header + [
        f"| {name} | " + " | ".join(f"{values[name]:.4f}" if name in values else ""
                                    for values in groups.values()) + " |"
        for name in names]


def render_markdown(out_dir: Path, items: Sequence[GalleryItem], title: str,
                    metrics: Metrics | None = None,
                    names: tuple[str, str] | None = None) -> str:
    """The page: title, grid, metrics, then a table of the images (`names`: the image's and
    its comparison's column headings), each with its caption."""
    lines = [f"# {title}", "", "![gallery](gallery.png)", ""]
    if metrics:
        lines += ["## Zero-shot classification", "", *_metrics_table(metrics), ""]
    compare = any(item.compare is not None for item in items)
    image, other = names or ("image", "compare")
    lines += ["## Images", "",
              f"| {_cell(image)} | " + (f"{_cell(other)} | " if compare else "") + "caption |",
              "|---|" + ("---|" if compare else "") + "---|"]
    for item in items:
        row = [f"![{_cell(item.image.name)}]({_link(item.image, out_dir)})"]
        if compare:
            row.append(f"![{_cell(item.compare.name)}]({_link(item.compare, out_dir)})"
                       if item.compare is not None else "")
        row.append("<br>".join(_cell(line) for line in item.caption))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_gallery(out_dir: str | Path, items: Sequence[GalleryItem], title: str,
                  metrics: Metrics | None = None, columns: int = COLUMNS,
                  thumb: int = THUMB, names: tuple[str, str] | None = None) -> tuple[Path, Path]:
    """Write `out_dir/gallery.png` and `out_dir/gallery.md`; returns both paths. `metrics`:
    name -> value, or group -> name -> value (one column per group). `names`: what an image
    and its comparison are, above each in the grid and as the page's column headings."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, md = out_dir / "gallery.png", out_dir / "gallery.md"
    render_grid(items, title, columns, thumb, names).save(png)
    md.write_text(render_markdown(out_dir, items, title, metrics, names), encoding="utf-8")
    log.info("gallery of %d images: %s, %s", len(items), png, md)
    return png, md
