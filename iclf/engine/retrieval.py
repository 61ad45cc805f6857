"""Retrieval pictures: what the selected checkpoint retrieves for a fixed set of queries.

The engine evaluates the selection split with :func:`iclf.engine.evaluate.evaluate_split_ranked`,
which keeps the top-10 gallery images of :func:`retrieval_queries` (the same captions in every
trial of a dataset) from the evaluation's own similarity chunks. Each time the selected checkpoint
changes, :func:`save_retrieval` writes that ranking beside ``best.pt`` as ``best_retrieval.json``
(:func:`retrieval_record`: captions, image paths, identities, scores) and draws it as
``best_retrieval.png`` (:func:`render_grid`): one row per query, its caption and its top-10 images,
framed green when the image shows the query's identity and red when it does not. The sweep report
draws the same queries for the baseline and the best configuration side by side
(:func:`render_side_by_side`) from two such records. PIL only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from iclf.files import write_atomic

__all__ = ["retrieval_queries", "retrieval_record", "save_retrieval", "render_grid",
           "render_side_by_side", "GridLayout", "RECORD_FILE", "PICTURE_FILE", "GREEN", "RED",
           "NUM_QUERIES", "TOP_K"]

NUM_QUERIES = 8
TOP_K = 10
RECORD_FILE = "best_retrieval.json"
PICTURE_FILE = "best_retrieval.png"
GREEN = (0, 170, 0)
RED = (215, 25, 25)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MUTED = (110, 110, 110)


def retrieval_queries(caption_pids: Sequence[int], n: int = NUM_QUERIES) -> list[int]:
    """``n`` caption indices of ``n`` different identities, spread evenly over the split's
    identities (sorted), the first caption of each: the same queries in every trial."""
    first: dict[int, int] = {}
    for i, pid in enumerate(caption_pids):
        first.setdefault(int(pid), i)
    ids = sorted(first)
    if not ids or n <= 0:
        return []
    if len(ids) <= n:
        return [first[p] for p in ids]
    step = len(ids) / n
    return [first[ids[int(j * step + step / 2)]] for j in range(n)]


def retrieval_record(ranking: Any, eval_set: Any, *, split: str, epoch: int) -> dict[str, Any]:
    """The JSON-able record of a :class:`iclf.metrics.Ranking` over ``eval_set``: per query its
    caption and identity, per retrieved image its path, identity, score and whether it is right."""
    queries = []
    for row, q in enumerate(ranking.queries):
        pid = int(eval_set.caption_pids[q])
        gallery = []
        for index, score in zip(ranking.indices[row].tolist(), ranking.scores[row].tolist()):
            g_pid = int(eval_set.image_pids[index])
            gallery.append({"index": int(index), "path": str(eval_set.image_paths[index]),
                            "pid": g_pid, "score": round(float(score), 6),
                            "correct": g_pid == pid})
        queries.append({"index": int(q), "caption": str(eval_set.captions[q]), "pid": pid,
                        "gallery": gallery})
    return {"split": split, "epoch": int(epoch), "k": int(ranking.indices.shape[1]),
            "queries": queries}


def save_retrieval(ranking: Any, eval_set: Any, directory: str | Path, *, split: str,
                   epoch: int) -> tuple[Path, Path]:
    """Write ``best_retrieval.json`` and ``best_retrieval.png`` under ``directory`` (atomically,
    beside the selected checkpoint); returns their paths."""
    directory = Path(directory)
    record = retrieval_record(ranking, eval_set, split=split, epoch=epoch)
    record_path, picture_path = directory / RECORD_FILE, directory / PICTURE_FILE
    write_atomic(record_path, lambda p: Path(p).write_text(json.dumps(record, indent=1)))
    write_atomic(picture_path, lambda p: render_grid(record, p))
    return record_path, picture_path


# ------------------------------------------------------------------------------------ drawing


@dataclass(frozen=True)
class GridLayout:
    """Where everything goes: a caption column, then ``panels`` blocks of ``k`` framed images per
    row. :meth:`cell_box` is the outer box of a frame (the image sits ``frame`` pixels inside)."""

    rows: int
    k: int
    panels: int = 1
    thumb_w: int = 48
    thumb_h: int = 96
    frame: int = 4
    gap: int = 6
    pad: int = 12
    caption_w: int = 300
    title_h: int = 40
    panel_gap: int = 24

    @property
    def cell_w(self) -> int:
        return self.thumb_w + 2 * self.frame

    @property
    def cell_h(self) -> int:
        return self.thumb_h + 2 * self.frame

    @property
    def panel_w(self) -> int:
        return self.k * self.cell_w + (self.k - 1) * self.gap

    def panel_x(self, panel: int) -> int:
        return self.pad + self.caption_w + self.gap + panel * (self.panel_w + self.panel_gap)

    def row_y(self, row: int) -> int:
        return self.title_h + self.pad + row * (self.cell_h + self.gap)

    def cell_box(self, row: int, col: int, panel: int = 0) -> tuple[int, int, int, int]:
        x0 = self.panel_x(panel) + col * (self.cell_w + self.gap)
        y0 = self.row_y(row)
        return x0, y0, x0 + self.cell_w - 1, y0 + self.cell_h - 1

    @property
    def size(self) -> tuple[int, int]:
        width = self.panel_x(self.panels) - self.panel_gap + self.pad
        height = self.row_y(self.rows) - self.gap + self.pad
        return width, height


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int, max_lines: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and draw.textlength(last + " ...", font=font) > width:
            last = last[:-1]
        lines[-1] = last.rstrip() + " ..."
    return lines


def _thumbnail(path: str, width: int, height: int):
    """The image fitted into ``width`` x ``height`` on a light background (gray when missing)."""
    from PIL import Image

    canvas = Image.new("RGB", (width, height), (235, 235, 235))
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            scale = min(width / img.width, height / img.height)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img = img.resize(size, Image.BILINEAR)
            canvas.paste(img, ((width - size[0]) // 2, (height - size[1]) // 2))
    except OSError:
        canvas.paste((170, 170, 170), (0, 0, width, height))
    return canvas


def _draw(records: Sequence[Mapping[str, Any]], titles: Sequence[str], title: str, path) -> Path:
    from PIL import Image, ImageDraw

    queries = records[0]["queries"]
    k = max(len(q["gallery"]) for r in records for q in r["queries"]) if queries else 0
    layout = GridLayout(rows=len(queries), k=max(k, 1), panels=len(records))
    image = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    big, small = _font(15), _font(12)
    draw.text((layout.pad, 6), title, fill=TEXT, font=big)
    line_h = 15
    for panel, name in enumerate(titles):
        draw.text((layout.panel_x(panel), 24), name, fill=MUTED, font=small)
    for row, query in enumerate(queries):
        y = layout.row_y(row)
        lines = _wrap(draw, f"{row + 1}. {query['caption']}", small, layout.caption_w - 8,
                      max_lines=layout.cell_h // line_h - 1)
        for i, text in enumerate(lines):
            draw.text((layout.pad, y + i * line_h), text, fill=TEXT, font=small)
        draw.text((layout.pad, y + layout.cell_h - line_h), f"identity {query['pid']}",
                  fill=MUTED, font=small)
        for panel, record in enumerate(records):
            theirs = {q["index"]: q for q in record["queries"]}.get(query["index"])
            for col, item in enumerate((theirs or {}).get("gallery", [])):
                x0, y0, x1, y1 = layout.cell_box(row, col, panel)
                color = GREEN if item["correct"] else RED
                draw.rectangle((x0, y0, x1, y1), fill=color)
                image.paste(_thumbnail(item["path"], layout.thumb_w, layout.thumb_h),
                            (x0 + layout.frame, y0 + layout.frame))
    path = Path(path)
    image.save(path, format="PNG")
    return path


def render_grid(record: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """One record as a picture: per query its caption, then its top-k images framed green (the
    query's identity) or red (another one)."""
    split = record.get("split", "val")
    title = title or (f"{split}: top-{record.get('k', TOP_K)} images of {len(record['queries'])} "
                      f"fixed queries at the selected epoch {record.get('epoch', '?')} "
                      f"(green: same person, red: another)")
    return _draw([record], [f"rank 1 .. {record.get('k', TOP_K)}"], title, path)


def render_side_by_side(left: Mapping[str, Any], right: Mapping[str, Any], path: str | Path, *,
                        left_title: str, right_title: str, title: str | None = None) -> Path:
    """Two records of the same queries (the baseline's and the best configuration's) next to each
    other, each query's caption once."""
    split = left.get("split", "val")
    title = title or (f"{split}: the same {len(left['queries'])} queries, top-"
                      f"{left.get('k', TOP_K)} images (green: same person, red: another)")
    return _draw([left, right], [left_title, right_title], title, path)
