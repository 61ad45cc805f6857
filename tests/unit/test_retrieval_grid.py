"""Retrieval pictures (iclf.engine.retrieval): the evaluation's own ranking of chosen queries (one
pass, the same metrics), the fixed queries, and the PNG itself: its size, the green frames of right
images and the red ones of wrong images of a known ranking, each image inside its frame; the
report's baseline-vs-best picture from two records."""

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from iclf.engine.retrieval import (
    GREEN, PICTURE_FILE, RECORD_FILE, RED, GridLayout, render_side_by_side, retrieval_queries,
    retrieval_record, save_retrieval)
from iclf.metrics import evaluate_features, rank_and_evaluate

G = 12  # gallery images; image i shows identity i // 2
K = 10
# The known rankings: query caption -> gallery order (best first)
ORDERS = {0: [0, 5, 1, 7, 2, 3, 4, 6, 8, 9, 10, 11],      # identity 0: images 0 and 1
          3: [9, 8, 11, 10, 0, 1, 2, 3, 4, 5, 6, 7]}      # identity 4: images 8 and 9
COLORS = [(40 + 15 * i, 200 - 12 * i, 90) for i in range(G)]


@pytest.fixture()
def split(tmp_path):
    paths = []
    for i in range(G):
        path = tmp_path / f"img{i:02d}.png"
        Image.new("RGB", (32, 64), COLORS[i]).save(path)  # a person-shaped 1:2 image
        paths.append(str(path))
    captions = ["a man in a red jacket and black trousers carrying a bag", "a woman in white",
                "someone", "a person in a blue coat walking with a long grey scarf and boots"]
    return SimpleNamespace(image_paths=tuple(paths), image_pids=tuple(i // 2 for i in range(G)),
                           captions=tuple(captions), caption_pids=(0, 2, 3, 4))


def _features():
    """Image i is the basis vector e_i; a query's text feature weighs the images in its order."""
    image = torch.eye(G)
    text = torch.full((4, G), 0.0)
    text[1, 2], text[2, 6] = 1.0, 1.0
    for q, order in ORDERS.items():
        for rank, i in enumerate(order):
            text[q, i] = float(G - rank)
    return text, image


def test_ranking_comes_from_the_same_pass_and_metrics(split):
    text, image = _features()
    tp, ip = torch.tensor(split.caption_pids), torch.tensor(split.image_pids)
    metrics, ranking = rank_and_evaluate(text, image, tp, ip, [3, 0], k=K, chunk_size=3)
    assert metrics == evaluate_features(text, image, tp, ip)
    assert ranking.queries == (3, 0)
    assert ranking.indices.tolist() == [ORDERS[3][:K], ORDERS[0][:K]]
    assert (ranking.scores[:, :-1] >= ranking.scores[:, 1:]).all()
    with pytest.raises(ValueError, match="outside"):
        rank_and_evaluate(text, image, tp, ip, [4])


def test_fixed_queries_are_distinct_identities():
    pids = [p for p in range(40) for _ in range(2)]  # 40 identities, 2 captions each
    chosen = retrieval_queries(pids, 8)
    assert len(chosen) == 8 and len({pids[q] for q in chosen}) == 8
    assert chosen == retrieval_queries(pids, 8) and all(q % 2 == 0 for q in chosen)
    assert retrieval_queries([5, 5, 7], 8) == [0, 2]


def test_grid_picture_frames_a_known_ranking(split, tmp_path):
    text, image = _features()
    _, ranking = rank_and_evaluate(text, image, torch.tensor(split.caption_pids),
                                   torch.tensor(split.image_pids), [0, 3], k=K)
    record_path, picture_path = save_retrieval(ranking, split, tmp_path / "checkpoint",
                                               split="val", epoch=4)
    assert record_path.name == RECORD_FILE and picture_path.name == PICTURE_FILE
    record = json.loads(record_path.read_text())
    assert record["split"] == "val" and record["epoch"] == 4 and record["k"] == K
    assert [q["caption"] for q in record["queries"]] == [split.captions[0], split.captions[3]]
    expected = {0: [True, False, True] + [False] * 7, 1: [True, True] + [False] * 8}
    for row, query in enumerate(record["queries"]):
        assert [g["correct"] for g in query["gallery"]] == expected[row]

    layout = GridLayout(rows=2, k=K)
    with Image.open(picture_path) as picture:
        picture = picture.convert("RGB")
        assert picture.size == layout.size
        for row in range(2):
            for col in range(K):
                x0, y0, x1, y1 = layout.cell_box(row, col)
                color = GREEN if expected[row][col] else RED
                for x, y in ((x0, y0), (x1, y1), (x0 + 1, (y0 + y1) // 2), ((x0 + x1) // 2, y1 - 1)):
                    assert picture.getpixel((x, y)) == color, (row, col, x, y)
                image_index = (ORDERS[0] if row == 0 else ORDERS[3])[col]
                inside = ((x0 + x1) // 2, (y0 + y1) // 2)
                assert picture.getpixel(inside) == COLORS[image_index], (row, col)
        # the caption column holds text (dark pixels), the gap between frames is background
        caption = picture.crop((layout.pad, layout.row_y(0), layout.pad + layout.caption_w,
                                layout.row_y(0) + layout.cell_h))
        assert min(sum(p) for p in caption.getdata()) < 200
        x_gap = layout.cell_box(0, 0)[2] + 2
        assert picture.getpixel((x_gap, layout.row_y(0) + 10)) == (255, 255, 255)


def test_side_by_side_keeps_each_records_frames(split, tmp_path):
    text, image = _features()
    tp, ip = torch.tensor(split.caption_pids), torch.tensor(split.image_pids)
    _, good = rank_and_evaluate(text, image, tp, ip, [0], k=K)
    _, bad = rank_and_evaluate(-text, image, tp, ip, [0], k=K)  # the reverse order
    left, right = (retrieval_record(r, split, split="val", epoch=1) for r in (bad, good))
    path = render_side_by_side(left, right, tmp_path / "retrieval.png",
                               left_title="baseline", right_title="best")
    layout = GridLayout(rows=1, k=K, panels=2)
    with Image.open(path) as picture:
        picture = picture.convert("RGB")
        assert picture.size == layout.size
        for panel, record in enumerate((left, right)):
            for col, item in enumerate(record["queries"][0]["gallery"]):
                x0, y0, _, _ = layout.cell_box(0, col, panel)
                assert picture.getpixel((x0, y0)) == (GREEN if item["correct"] else RED)
    assert [g["correct"] for g in right["queries"][0]["gallery"]][:3] == [True, False, True]
    assert [g["index"] for g in left["queries"][0]["gallery"]][:2] == [11, 10]
