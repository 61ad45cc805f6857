"""A synthetic person dataset written in the exact on-disk format of a PEDES dataset.

Each identity has fixed, visible attributes drawn procedurally (gender, hair length and colour,
upper garment type/colour/sleeves/pattern, lower garment type and colour, shoes, backpack/bag/hat).
Each image draws that person with PIL under varied camera conditions (framing scale, offset,
brightness and colour cast, background clutter, blur) into a small vertical JPEG. Captions are
generated from the attributes with varied templates, synonyms and order, some naming only part
of the attributes, so that text-to-image retrieval is learnable but not trivial.

Splits (identities, ``ids`` is the total): CUHK-PEDES and RSTPReid get 10% val and 10% test
identities (at least 1 each), the rest train; ICFG-PEDES gets 20% test identities (at least 1)
and the rest train (its loader holds validation identities out of train, method.md 4.2).
``eval_ids`` sets the number of val and of test identities instead (ICFG-PEDES: test only), for
evaluation splits large enough that one query moves R1 by little (the demo: 40 identities, 240
captions, so R1 moves in steps of 0.42 points).
Raw ids are 1-based for CUHK-PEDES (as in reid_raw.json) and 0-based for the others. Captions per
image: 2 (CUHK-PEDES, RSTPReid) or 1 (ICFG-PEDES). The same arguments give the same bytes.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFilter

from iclf.data.pedes import DATASETS, FORMATS, IMAGE_DIR

VAL_FRACTION = 0.1  # of identities, CUHK-PEDES and RSTPReid
TEST_FRACTION = 0.1  # of identities, CUHK-PEDES and RSTPReid
ICFG_TEST_FRACTION = 0.2  # of identities, ICFG-PEDES (train/test only)
MIN_IDS = 3
JPEG_QUALITY = 90
BASE_WIDTH = (64, 80)
BASE_HEIGHT = (128, 192)

# name -> RGB; the names are what captions say (with the synonyms below).
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (24, 24, 28), "white": (236, 236, 232), "gray": (128, 128, 132),
    "red": (200, 32, 36), "blue": (40, 72, 196), "green": (40, 140, 64),
    "yellow": (232, 204, 40), "brown": (122, 76, 40), "pink": (236, 140, 182),
    "purple": (122, 50, 152), "orange": (240, 130, 30), "navy": (24, 36, 96),
}
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "gray": ("gray", "grey"), "navy": ("navy", "dark blue", "navy blue"),
}
HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (20, 18, 18), "brown": (96, 60, 30), "blonde": (222, 192, 110),
    "gray": (170, 170, 170), "red": (160, 60, 30),
}
HAIR_WORDS: dict[str, tuple[str, ...]] = {
    "blonde": ("blonde", "blond", "golden"), "gray": ("gray", "grey", "silver"),
    "red": ("red", "auburn"), "black": ("black", "dark"),
}
SKIN = ((241, 194, 160), (224, 172, 128), (198, 134, 90), (141, 85, 54), (255, 220, 190))
UPPER_TYPES = ("t-shirt", "shirt", "jacket", "sweater", "coat", "hoodie")
UPPER_WORDS: dict[str, tuple[str, ...]] = {
    "t-shirt": ("t-shirt", "tee", "t shirt"), "shirt": ("shirt", "button-up shirt"),
    "jacket": ("jacket",), "sweater": ("sweater", "jumper"), "coat": ("coat", "long coat"),
    "hoodie": ("hoodie", "hooded sweatshirt"),
}
PATTERNS = ("plain", "striped", "checked", "logo")
LOWER_TYPES = ("jeans", "trousers", "shorts", "skirt")
SHOE_TYPES = ("shoes", "sneakers", "boots")
BAG_TYPES = ("backpack", "handbag", "shoulder bag")
HAT_TYPES = ("cap", "hat")
CUHK_GROUPS_TRAIN = ("CUHK01", "CUHK03", "Market", "train_query")
CUHK_GROUPS_EVAL = ("CUHK01", "CUHK03", "Market", "test_query")

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Person:
    """The fixed visible attributes of one synthetic identity."""

    gender: str  # "man" | "woman"
    skin: RGB
    hair_length: str  # "short" | "long"
    hair_colour: str
    upper_type: str
    upper_colour: str
    sleeves: str  # "short" | "long"
    pattern: str
    pattern_colour: str
    lower_type: str
    lower_colour: str
    shoe_type: str
    shoe_colour: str
    bag: str | None
    bag_colour: str
    hat: str | None
    hat_colour: str


@dataclass
class SynthSummary:
    """What :func:`write_synthetic` wrote: paths and the per-split counts it was asked for."""

    dataset: str
    root: str
    annotation_file: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0


def write_synthetic(
    root: str | os.PathLike[str],
    dataset: str,
    ids: int,
    images_per_id: int,
    seed: int = 0,
    *,
    scale: float = 1.0,
    overwrite: bool = False,
    progress: bool = False,
    eval_ids: int | None = None,
) -> SynthSummary:
    """Write a synthetic dataset under ``root/<dataset>/`` in that dataset's on-disk format.

    Args:
        root: directory that will contain ``<dataset>/`` (as :func:`iclf.data.pedes.load_pedes`
            expects it).
        dataset: one of :data:`iclf.data.pedes.DATASETS`.
        ids: total number of identities over all splits (at least 3).
        images_per_id: images per identity.
        seed: generation seed; the same arguments write the same bytes.
        scale: multiplies the image sizes (64-80 x 128-192 px at 1.0).
        overwrite: replace an existing ``root/<dataset>/`` directory.
        progress: show a progress bar.
        eval_ids: identities in val and in test each (None: the fractions above).
    """
    from tqdm import tqdm

    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if ids < MIN_IDS:
        raise ValueError(f"--ids must be at least {MIN_IDS} (train, val and test identities), "
                         f"got {ids}")
    if images_per_id < 1:
        raise ValueError(f"--images-per-id must be at least 1, got {images_per_id}")
    held_out = 0 if eval_ids is None else eval_ids * (1 if dataset == "ICFG-PEDES" else 2)
    if eval_ids is not None and (eval_ids < 1 or held_out >= ids):
        raise ValueError(f"--eval-ids must be at least 1 and leave training identities: "
                         f"{held_out} of {ids} identities held out for evaluation")
    if not 0.25 <= scale <= 8:
        raise ValueError(f"scale must be in [0.25, 8], got {scale}")
    fmt = FORMATS[dataset]
    start = time.perf_counter()
    base = os.path.join(os.fspath(root), dataset)
    if os.path.exists(base) and (not os.path.isdir(base) or os.listdir(base)):
        if not overwrite:
            raise ValueError(f"{base} already exists and is not empty; choose another --root or "
                             "pass --overwrite")
        if os.path.isdir(base):
            shutil.rmtree(base)
        else:
            os.remove(base)
    image_dir = os.path.join(base, IMAGE_DIR)
    os.makedirs(image_dir, exist_ok=True)

    splits = split_identities(dataset, ids, seed, eval_ids)
    raw_offset = 1 if dataset == "CUHK-PEDES" else 0
    captions_per_image = fmt.captions_per_image
    records: list[dict[str, object]] = []
    counts = {s: {"ids": 0, "images": 0, "captions": 0} for s in ("train", "val", "test")}
    serial = 0
    bar = tqdm(total=ids * images_per_id, desc=f"synth {dataset}", unit="img",
               disable=not progress)
    for index in range(ids):
        raw_id = index + raw_offset
        split = splits[index]
        person = make_person(random.Random(f"{seed}/{dataset}/person/{index}"))
        path_rng = random.Random(f"{seed}/{dataset}/paths/{index}")
        group = path_rng.choice(CUHK_GROUPS_TRAIN if split == "train" else CUHK_GROUPS_EVAL)
        counts[split]["ids"] += 1
        for j in range(images_per_id):
            serial += 1
            rel = _image_path(dataset, group, split, raw_id, j, serial, path_rng)
            image_rng = random.Random(f"{seed}/{dataset}/image/{index}/{j}")
            data = render_jpeg(person, image_rng, scale)
            out = os.path.join(image_dir, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "wb") as f:
                f.write(data)
            caps = [describe(person, random.Random(f"{seed}/{dataset}/caption/{index}/{j}/{c}"))
                    for c in range(captions_per_image)]
            record: dict[str, object] = {"id": raw_id, fmt.path_field: rel, "captions": caps,
                                         "split": split}
            if dataset != "RSTPReid":
                record["processed_tokens"] = [_words(c) for c in caps]
            records.append(record)
            counts[split]["images"] += 1
            counts[split]["captions"] += len(caps)
            bar.update(1)
    bar.close()
    ann = os.path.join(base, fmt.annotation_files[0])
    with open(ann, "w", encoding="utf-8") as f:
        json.dump(records, f, sort_keys=True, indent=1)
        f.write("\n")
    return SynthSummary(dataset, os.path.abspath(base), os.path.abspath(ann), counts,
                        time.perf_counter() - start)


def split_identities(dataset: str, ids: int, seed: int,
                     eval_ids: int | None = None) -> list[str]:
    """The split of each identity index (seeded shuffle; fractions in the module docstring, or
    ``eval_ids`` val and test identities each)."""
    if dataset == "ICFG-PEDES":
        n_val, n_test = 0, eval_ids or max(1, round(ICFG_TEST_FRACTION * ids))
    elif eval_ids is not None:
        n_val, n_test = eval_ids, eval_ids
    else:
        n_val, n_test = max(1, round(VAL_FRACTION * ids)), max(1, round(TEST_FRACTION * ids))
    order = random.Random(f"{seed}/{dataset}/splits").sample(range(ids), ids)
    splits = ["train"] * ids
    for i in order[:n_test]:
        splits[i] = "test"
    for i in order[n_test:n_test + n_val]:
        splits[i] = "val"
    return splits


def make_person(rng: random.Random) -> Person:
    """Draw one identity's attributes."""
    gender = rng.choice(("man", "woman"))
    colours = sorted(COLOURS)
    upper_type = rng.choice(UPPER_TYPES)
    if upper_type == "t-shirt":
        sleeves = "short" if rng.random() < 0.85 else "long"
    elif upper_type == "shirt":
        sleeves = rng.choice(("short", "long"))
    else:
        sleeves = "long"
    upper_colour = rng.choice(colours)
    pattern = rng.choice(PATTERNS) if upper_type != "coat" else rng.choice(("plain", "checked"))
    pattern_colour = rng.choice([c for c in colours if c != upper_colour])
    lower_types = LOWER_TYPES if gender == "woman" else LOWER_TYPES[:3]
    lower_type = rng.choice(lower_types)
    lower_colour = (rng.choice(("blue", "blue", "navy", "black", "gray")) if lower_type == "jeans"
                    else rng.choice(colours))
    hair_length = (rng.choice(("long", "long", "short")) if gender == "woman"
                   else rng.choice(("short", "short", "short", "long")))
    bag = rng.choice(BAG_TYPES) if rng.random() < 0.55 else None
    hat = rng.choice(HAT_TYPES) if rng.random() < 0.25 else None
    return Person(
        gender=gender, skin=rng.choice(SKIN), hair_length=hair_length,
        hair_colour=rng.choice(sorted(HAIR_COLOURS)), upper_type=upper_type,
        upper_colour=upper_colour, sleeves=sleeves, pattern=pattern,
        pattern_colour=pattern_colour, lower_type=lower_type, lower_colour=lower_colour,
        shoe_type=rng.choice(SHOE_TYPES), shoe_colour=rng.choice(("black", "white", "brown",
                                                                   "gray", "red", "blue")),
        bag=bag, bag_colour=rng.choice(colours), hat=hat, hat_colour=rng.choice(colours),
    )


# ----------------------------------------------------------------------------- rendering


def render_jpeg(person: Person, rng: random.Random, scale: float = 1.0) -> bytes:
    """One camera view of ``person`` as JPEG bytes."""
    image = render(person, rng, scale)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def render(person: Person, rng: random.Random, scale: float = 1.0) -> Image.Image:
    """Draw ``person`` on a cluttered background; random camera: size, framing, light, blur."""
    width = round(rng.randint(*BASE_WIDTH) * scale)
    height = round(rng.randint(*BASE_HEIGHT) * scale)
    image = Image.new("RGB", (width, height), _muted(rng))
    draw = ImageDraw.Draw(image)
    _background(draw, rng, width, height)
    figure = rng.uniform(0.72, 0.95) * height
    cx = width / 2 + rng.uniform(-0.12, 0.12) * width
    top = (height - figure) / 2 + rng.uniform(-0.05, 0.05) * height
    side = rng.choice((-1, 1))  # the side the bag hangs on
    _person(draw, person, cx, top, figure, side)
    gain = rng.uniform(0.65, 1.35)
    cast = [gain * rng.uniform(0.92, 1.08) for _ in range(3)]
    image = image.point([min(255, round(v * g)) for g in cast for v in range(256)])
    if rng.random() < 0.6:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * scale))
    return image


def _muted(rng: random.Random) -> RGB:
    grey = rng.randint(70, 190)
    r, g, b = (max(0, min(255, grey + rng.randint(-30, 30))) for _ in range(3))
    return r, g, b


def _background(draw: ImageDraw.ImageDraw, rng: random.Random, w: int, h: int) -> None:
    horizon = rng.uniform(0.55, 0.8) * h
    draw.rectangle((0, horizon, w, h), fill=_muted(rng))
    for _ in range(rng.randint(1, 10)):
        colour = (rng.choice(list(COLOURS.values())) if rng.random() < 0.3 else _muted(rng))
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.2, 1.0) * h
        x1, y1 = x0 + rng.uniform(0.05, 0.6) * w, y0 + rng.uniform(0.03, 0.5) * h
        kind = rng.random()
        if kind < 0.45:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind < 0.7:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind < 0.85:
            pole = rng.uniform(0.02, 0.06) * w
            draw.rectangle((x0, 0, x0 + pole, h), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=max(1, round(0.02 * w)))


def _person(draw: ImageDraw.ImageDraw, p: Person, cx: float, top: float, h: float,
            side: int) -> None:
    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        xa, xb = sorted((cx + x0 * h, cx + x1 * h))
        return (xa, top + y0 * h, xb, top + y1 * h)

    upper = COLOURS[p.upper_colour]
    lower = COLOURS[p.lower_colour]
    hair = HAIR_COLOURS[p.hair_colour]
    bag = COLOURS[p.bag_colour]
    line = max(1, round(0.018 * h))

    if p.bag == "backpack":  # visible beside the torso, behind it
        draw.rounded_rectangle(box(side * 0.12, 0.16, side * 0.25, 0.44), radius=0.02 * h, fill=bag)
    if p.hair_length == "long":
        draw.rectangle(box(-0.075, 0.05, 0.075, 0.23), fill=hair)
    if p.upper_type == "hoodie":
        draw.ellipse(box(-0.09, 0.08, 0.09, 0.18), fill=upper)

    # legs and lower garment
    for s in (-1, 1):
        leg = box(s * 0.012, 0.49, s * 0.105, 0.93)
        draw.rectangle(leg, fill=p.skin if p.lower_type in ("shorts", "skirt") else lower)
        if p.lower_type == "shorts":
            draw.rectangle(box(s * 0.005, 0.49, s * 0.12, 0.65), fill=lower)
        if p.lower_type == "jeans":
            seam = tuple(max(0, c - 35) for c in lower)
            x = cx + s * 0.06 * h
            draw.line((x, top + 0.55 * h, x, top + 0.92 * h), fill=seam, width=1)
    if p.lower_type == "skirt":
        draw.polygon([(cx - 0.125 * h, top + 0.48 * h), (cx + 0.125 * h, top + 0.48 * h),
                      (cx + 0.17 * h, top + 0.69 * h), (cx - 0.17 * h, top + 0.69 * h)], fill=lower)
    shoe = COLOURS[p.shoe_colour]
    for s in (-1, 1):
        if p.shoe_type == "boots":
            draw.rectangle(box(s * 0.01, 0.83, s * 0.115, 0.975), fill=shoe)
        else:
            draw.ellipse(box(s * 0.0, 0.905, s * 0.13, 0.975), fill=shoe)

    # arms with sleeves
    for s in (-1, 1):
        draw.rectangle(box(s * 0.13, 0.16, s * 0.19, 0.52), fill=p.skin)
        sleeve_end = 0.48 if p.sleeves == "long" else 0.27
        draw.rectangle(box(s * 0.13, 0.15, s * 0.19, sleeve_end), fill=upper)

    # torso and pattern
    bottom = 0.62 if p.upper_type == "coat" else 0.51
    torso = box(-0.135, 0.14, 0.135, bottom)
    draw.rounded_rectangle(torso, radius=0.03 * h, fill=upper)
    accent = COLOURS[p.pattern_colour]
    if p.pattern in ("striped", "checked"):
        y = 0.19
        while y < bottom - 0.02:
            draw.rectangle(box(-0.135, y, 0.135, y + 0.022), fill=accent)
            y += 0.06
    if p.pattern == "checked":
        for x in (-0.09, -0.03, 0.03, 0.09):
            draw.rectangle(box(x - 0.01, 0.15, x + 0.01, bottom - 0.01), fill=accent)
    if p.pattern == "logo":
        draw.ellipse(box(-0.045, 0.22, 0.045, 0.31), fill=accent)
    if p.upper_type == "jacket":
        zip_colour = tuple(max(0, c - 60) for c in upper)
        draw.line((cx, top + 0.15 * h, cx, top + bottom * h), fill=zip_colour, width=line)
    if p.upper_type == "shirt":
        for y in (0.2, 0.28, 0.36, 0.44):
            draw.ellipse(box(-0.008, y, 0.008, y + 0.016), fill=(240, 240, 240))

    # accessories in front of the torso
    if p.bag == "backpack":
        for s in (-1, 1):
            x = cx + s * 0.075 * h
            draw.line((x, top + 0.145 * h, x, top + 0.36 * h), fill=bag, width=line)
    elif p.bag == "handbag":
        draw.rectangle(box(side * 0.17, 0.46, side * 0.26, 0.57), fill=bag)
        draw.line((cx + side * 0.17 * h, top + 0.47 * h, cx + side * 0.195 * h, top + 0.51 * h),
                  fill=bag, width=1)
    elif p.bag == "shoulder bag":
        draw.line((cx - side * 0.11 * h, top + 0.15 * h, cx + side * 0.13 * h, top + 0.46 * h),
                  fill=bag, width=line)
        draw.rectangle(box(side * 0.09, 0.44, side * 0.2, 0.54), fill=bag)

    # neck, head, hair, hat
    draw.rectangle(box(-0.025, 0.11, 0.025, 0.15), fill=p.skin)
    draw.ellipse(box(-0.06, 0.01, 0.06, 0.14), fill=p.skin)
    draw.chord(box(-0.064, 0.0, 0.064, 0.11), 180, 360, fill=hair)
    if p.hair_length == "long":
        for s in (-1, 1):
            draw.rectangle(box(s * 0.05, 0.05, s * 0.075, 0.2), fill=hair)
    if p.hat is not None:
        hat = COLOURS[p.hat_colour]
        if p.hat == "cap":
            draw.chord(box(-0.066, -0.01, 0.066, 0.09), 180, 360, fill=hat)
            draw.rectangle(box(side * 0.0, 0.035, side * 0.1, 0.05), fill=hat)
        else:
            draw.rectangle(box(-0.05, -0.03, 0.05, 0.045), fill=hat)
            draw.ellipse(box(-0.1, 0.03, 0.1, 0.06), fill=hat)


# ----------------------------------------------------------------------------- captions


def describe(p: Person, rng: random.Random) -> str:
    """One caption of ``p``: random templates, synonyms and order, often naming only some parts."""
    he = "he" if p.gender == "man" else "she"
    his = "his" if p.gender == "man" else "her"
    subject = rng.choice(
        ("A man", "The man", "A young man", "This man", "A male pedestrian", "A guy")
        if p.gender == "man" else
        ("A woman", "The woman", "A young woman", "This lady", "A female pedestrian", "A girl"))

    mention = {
        "hair": rng.random() < 0.7,
        "upper": rng.random() < 0.92,
        "lower": rng.random() < 0.85,
        "shoes": rng.random() < 0.6,
        "bag": p.bag is not None and rng.random() < 0.8,
        "hat": p.hat is not None and rng.random() < 0.8,
    }
    if not (mention["upper"] or mention["lower"]):
        mention[rng.choice(("upper", "lower"))] = True
    if sum(mention.values()) < 2:
        mention["upper"] = mention["lower"] = True

    hair = _word(rng, HAIR_WORDS, p.hair_colour, p.hair_length)
    hair_mode = rng.choice(("subject", "first", "after")) if mention["hair"] else None
    sentences: list[str] = []
    if hair_mode == "subject":
        subject = f"{subject} with {hair}"
    elif hair_mode == "first":
        sentences.append(f"{subject} has {hair}.")
        subject = he.capitalize()
    builders = (("upper", _upper), ("lower", _lower), ("shoes", _shoes))
    items = [build(p, rng) for part, build in builders if mention[part]]
    if len(items) > 1 and rng.random() < 0.25:
        rng.shuffle(items)
    verb = rng.choice(("is wearing", "wears", "is dressed in", "has on", "is in"))
    sentences.append(f"{subject} {verb} {_join(items)}.")
    if hair_mode == "after":
        sentences.append(rng.choice((f"{his.capitalize()} hair is {_hair_predicate(p, rng)}.",
                                     f"{he.capitalize()} has {hair}.")))
    if mention["bag"]:
        sentences.append(_bag(p, rng, he, his))
    if mention["hat"]:
        colour = _word(rng, COLOUR_WORDS, p.hat_colour)
        sentences.append(rng.choice((f"{he.capitalize()} wears a {colour} {p.hat}.",
                                     f"{he.capitalize()} has a {colour} {p.hat} on {his} head.",
                                     f"A {colour} {p.hat} is on {his} head.")))
    if rng.random() < 0.25:
        sentences.append(rng.choice((f"{he.capitalize()} is walking forward.",
                                     f"{he.capitalize()} is looking down.",
                                     f"{he.capitalize()} seems to be in a hurry.",
                                     f"{he.capitalize()} is standing on the street.")))
    text = " ".join(sentences)
    if rng.random() < 0.15:  # the lower-case, unpunctuated style of some CUHK-PEDES captions
        text = text.lower().rstrip(".")
    return text


def _word(rng: random.Random, table: dict[str, tuple[str, ...]], colour: str,
          length: str | None = None) -> str:
    word = rng.choice(table.get(colour, (colour,)))
    return f"{length} {word} hair" if length is not None else word


def _hair_predicate(p: Person, rng: random.Random) -> str:
    return f"{p.hair_length} and {rng.choice(HAIR_WORDS.get(p.hair_colour, (p.hair_colour,)))}"


def _upper(p: Person, rng: random.Random) -> str:
    colour = _word(rng, COLOUR_WORDS, p.upper_colour)
    noun = rng.choice(UPPER_WORDS[p.upper_type])
    accent = _word(rng, COLOUR_WORDS, p.pattern_colour)
    pre: list[str] = []
    post: list[str] = []
    if p.pattern == "striped":
        (pre.append("striped") if rng.random() < 0.5 else post.append(f"with {accent} stripes"))
    elif p.pattern == "checked":
        (pre.append(rng.choice(("checked", "plaid"))) if rng.random() < 0.5
         else post.append(f"with a {accent} check pattern"))
    elif p.pattern == "logo":
        post.append(rng.choice(("with a logo on the front", f"with a {accent} print on the chest")))
    if p.upper_type in ("t-shirt", "shirt") and rng.random() < 0.6:
        if rng.random() < 0.5:
            pre.insert(0, f"{p.sleeves}-sleeved")
        else:
            post.append(f"with {p.sleeves} sleeves")
    phrase = " ".join([*pre, colour, noun, *post])
    return f"{_article(phrase)} {phrase}"


def _lower(p: Person, rng: random.Random) -> str:
    colour = _word(rng, COLOUR_WORDS, p.lower_colour)
    if p.lower_type == "jeans":
        return rng.choice((f"{colour} jeans", f"a pair of {colour} jeans", f"{colour} denim pants"))
    if p.lower_type == "trousers":
        return rng.choice((f"{colour} trousers", f"{colour} pants", f"a pair of {colour} trousers"))
    if p.lower_type == "shorts":
        return rng.choice((f"{colour} shorts", f"a pair of {colour} shorts"))
    phrase = rng.choice((f"{colour} skirt", f"short {colour} skirt"))
    return f"{_article(phrase)} {phrase}"


def _shoes(p: Person, rng: random.Random) -> str:
    colour = _word(rng, COLOUR_WORDS, p.shoe_colour)
    return rng.choice((f"{colour} {p.shoe_type}", f"a pair of {colour} {p.shoe_type}"))


def _bag(p: Person, rng: random.Random, he: str, his: str) -> str:
    colour = _word(rng, COLOUR_WORDS, p.bag_colour)
    He = he.capitalize()
    if p.bag == "backpack":
        options: Sequence[str] = (f"{He} carries a {colour} backpack.",
                                  f"{He} has a {colour} backpack on {his} back.",
                                  f"A {colour} backpack is on {his} back.")
    elif p.bag == "handbag":
        options = (f"{He} holds a {colour} handbag.",
                   f"{He} is carrying a {colour} handbag in {his} hand.",
                   f"{He} carries a {colour} purse.")
    else:
        options = (f"{He} has a {colour} bag over {his} shoulder.",
                   f"{He} carries a {colour} shoulder bag.",
                   f"A {colour} bag hangs from {his} shoulder.")
    return rng.choice(options)


def _article(phrase: str) -> str:
    return "an" if phrase[0] in "aeiou" else "a"


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _words(caption: str) -> list[str]:
    """The ``processed_tokens`` of a caption: lower-case words without punctuation."""
    return [w.strip(".,") for w in caption.lower().split() if w.strip(".,")]


def _image_path(dataset: str, group: str, split: str, raw_id: int, j: int, serial: int,
                rng: random.Random) -> str:
    if dataset == "CUHK-PEDES":
        if group == "CUHK01":
            return f"CUHK01/{raw_id:04d}{j + 1:03d}.jpg"
        if group == "CUHK03":
            return f"CUHK03/{raw_id}_{j + 1}.jpg"
        if group == "Market":
            return f"Market/{raw_id:04d}_c{rng.randint(1, 6)}s1_{serial:06d}_00.jpg"
        return f"{group}/p{raw_id}_s{serial}.jpg"
    if dataset == "ICFG-PEDES":
        return f"{split}/{raw_id:04d}/{raw_id:04d}_{j + 1:03d}.jpg"
    return f"{raw_id:04d}_c{rng.randint(1, 15)}_{j + 1:04d}.jpg"

