"""A sample shop's folder of product images: paths, sizes and bytes, the same for the same seed.

Files sit in `products/<category>/<product>/` (or `<category>/<product>/` directly in the images
folder), some products with `variants/<colour>/` folders. Images are random bytes behind a real JPEG,
PNG or WebP signature (incompressible, as real ones are); about 5% are compressible SVG and JSON
text. The sample shop (`capsule demo create`), the files benchmark and the tests make theirs here.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

KB = 1000
MB = 1_000_000
# 2024-01-01T00:00:00Z: generated files get fixed modification times, one second apart.
BASE_MTIME_NS = 1_704_067_200 * 1_000_000_000


# --- the tree -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeModel:
    """Log-normal file sizes, clipped; compressible text files are a third of the median."""

    median: int
    sigma: float
    minimum: int
    maximum: int

    def draw(self, rng: random.Random, *, text: bool = False) -> int:
        median = self.median / 3 if text else self.median
        return self.clip(rng.lognormvariate(math.log(median), self.sigma))

    def clip(self, size: float) -> int:
        return max(self.minimum, min(self.maximum, round(size)))


# About 60 KB typical, up to 5 MB: 20,000 files make 2 to 3 GB.
IMAGE_SIZES = SizeModel(median=60 * KB, sigma=1.2, minimum=5 * KB, maximum=5 * MB)
# The scale tree: 100,000 files make about 600 MB.
SMALL_SIZES = SizeModel(median=4 * KB, sigma=0.9, minimum=1 * KB, maximum=20 * KB)

FILES_PER_PRODUCT = 60
TEXT_FRACTION = 0.05
IMAGE_KINDS = ("jpg", "png", "webp")
IMAGE_WEIGHTS = (0.70, 0.15, 0.15)
TEXT_KINDS = ("svg", "json")
CATEGORIES = (
    "accessories", "bags", "belts", "books", "dresses", "gloves", "hats", "home", "jackets",
    "jewellery", "kitchen", "knitwear", "scarves", "shirts", "shoes", "socks", "sportswear",
    "stationery", "sunglasses", "swimwear", "toys", "trousers", "wallets", "watches",
)  # fmt: skip
ADJECTIVES = (
    "black", "blue", "classic", "cotton", "green", "leather", "linen", "organic", "red", "slim",
    "striped", "summer", "vintage", "white", "winter", "wool",
)  # fmt: skip
NOUNS = (
    "beanie", "blouse", "boot", "cap", "chino", "hoodie", "lamp", "mug", "notebook", "parka",
    "ring", "scarf", "sneaker", "tote", "wallet", "watch",
)  # fmt: skip
COLOURS = ("black", "blue", "green", "grey", "navy", "red", "sand", "white")
VIEWS = ("front", "back", "side", "detail", "top", "model", "pack", "zoom")
DIMENSIONS = ("400x400", "800x800", "1200x1200", "1600x1600", "2048x2048", "thumb")
WORDS = (*ADJECTIVES, *NOUNS, *COLOURS, "size", "fit", "care", "wash", "soft", "made", "in", "with")


@dataclass(frozen=True)
class TreeFile:
    path: str  # relative to the tree's root, with "/" separators
    size: int
    kind: str  # the extension: jpg, png, webp, svg or json


@dataclass
class Tree:
    root: Path
    files: list[TreeFile]
    seconds: float = 0.0

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def folders(self) -> int:
        return len({parent for f in self.files for parent in _parents(f.path)})

    @property
    def text_files(self) -> int:
        return sum(f.kind in TEXT_KINDS for f in self.files)


def _parents(path: str) -> Iterable[str]:
    parts = path.split("/")[:-1]
    return ("/".join(parts[: i + 1]) for i in range(len(parts)))


def plan_tree(
    files: int,
    seed: int = 0,
    total: int | None = None,
    sizes: SizeModel = IMAGE_SIZES,
    top: str = "products/",
) -> list[TreeFile]:
    """Paths, sizes and kinds of a shop's uploads folder: the same for the same arguments.

    Files sit in ``<top><category>/<product>/``, a fifth of the products with
    ``variants/<colour>/`` folders. With ``total``, every size is scaled by one factor so that
    they add up to about ``total`` bytes, each still within the size model's bounds.
    """
    rng = random.Random(seed)
    products: list[tuple[str, str, list[str]]] = []
    for index in range(max(1, round(files / FILES_PER_PRODUCT))):
        slug = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
        folder = f"{top}{CATEGORIES[index % len(CATEGORIES)]}/p{100_000 + 37 * index}-{slug}"
        variants = [f"{folder}/variants/{c}" for c in rng.sample(COLOURS, 3)] if index % 5 == 0 else []
        products.append((folder, slug, variants))
    plan: list[TreeFile] = []
    for index in range(files):
        folder, slug, variants = products[rng.randrange(len(products))]
        if variants and rng.random() < 0.5:
            folder = rng.choice(variants)
        if rng.random() < TEXT_FRACTION:
            kind = rng.choice(TEXT_KINDS)
            name = f"{slug}-{'icon' if kind == 'svg' else 'specs'}-{index:06d}.{kind}"
            size = sizes.draw(rng, text=True)
        else:
            kind = rng.choices(IMAGE_KINDS, IMAGE_WEIGHTS)[0]
            name = f"{slug}-{rng.choice(VIEWS)}-{rng.choice(DIMENSIONS)}-{index:06d}.{kind}"
            size = sizes.draw(rng)
        plan.append(TreeFile(f"{folder}/{name}", size, kind))
    if total is not None and plan:
        factor = total / sum(f.size for f in plan)
        plan = [TreeFile(f.path, sizes.clip(f.size * factor), f.kind) for f in plan]
    return plan


def _image_bytes(kind: str, size: int, rng: random.Random) -> bytes:
    """Incompressible bytes behind the format's real signature (and trailer)."""
    if kind == "jpg":
        head, tail = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00", b"\xff\xd9"
    elif kind == "png":
        ihdr = b"IHDR" + (1200).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
        head = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0d" + ihdr + zlib.crc32(ihdr).to_bytes(4, "big")
        tail = b"\x00\x00\x00\x00IEND\xaeB`\x82"
    else:
        head, tail = b"RIFF" + (size - 8).to_bytes(4, "little") + b"WEBPVP8 ", b""
        head += (size - len(head) - 4).to_bytes(4, "little")
    return head + rng.randbytes(size - len(head) - len(tail)) + tail


def _filler(rng: random.Random, length: int) -> str:
    """Exactly ``length`` characters of words: text that compresses like a description."""
    text = " ".join(rng.choices(WORDS, k=length // 4 + 1))
    return text[:length].ljust(length)


def _text_bytes(kind: str, size: int, rng: random.Random) -> bytes:
    if kind == "json":
        record = {
            "sku": f"SKU-{rng.randrange(10**8):08d}",
            "price_cents": rng.randrange(500, 50_000),
            "colours": rng.sample(COLOURS, 3),
            "description": "",
        }
        base = json.dumps(record, indent=2)
        record["description"] = _filler(rng, max(0, size - len(base)))
        return json.dumps(record, indent=2).encode()
    head = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 1000 1000">\n'
    tail = "</svg>\n"
    parts, used = [head], len(head) + len(tail)
    while True:
        x, y = rng.randrange(1000), rng.randrange(1000)
        path = f'<path fill="#{rng.randrange(1 << 24):06x}" d="M{x} {y} l{x % 97} {y % 89} h-{x % 50} Z"/>\n'
        if used + len(path) > size:
            break
        parts.append(path)
        used += len(path)
    parts.append(" " * (size - used) + tail)
    return "".join(parts).encode()


def file_bytes(entry: TreeFile, rng: random.Random) -> bytes:
    if entry.kind in TEXT_KINDS:
        return _text_bytes(entry.kind, entry.size, rng)
    return _image_bytes(entry.kind, entry.size, rng)


def generate_tree(
    root: Path,
    files: int,
    seed: int = 0,
    total: int | None = None,
    *,
    sizes: SizeModel = IMAGE_SIZES,
    top: str = "products/",
) -> Tree:
    """Write a shop's uploads folder under ``root`` (missing or empty); the same seed, the same bytes.

    Images are random bytes behind a real JPEG, PNG or WebP signature; about 5% of the files are
    compressible SVG and JSON text. Modification times are fixed, one second apart.
    """
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty")
    started = time.perf_counter()
    plan = plan_tree(files, seed, total, sizes, top)
    content = random.Random(f"{seed}:content")
    made: set[str] = set()
    for index, entry in enumerate(plan):
        folder = entry.path.rpartition("/")[0]
        if folder not in made:
            (root / folder).mkdir(parents=True, exist_ok=True)
            made.add(folder)
        path = root / entry.path
        with open(path, "wb", buffering=0) as out:
            out.write(file_bytes(entry, content))
        mtime = BASE_MTIME_NS + index * 1_000_000_000
        os.utime(path, ns=(mtime, mtime))
    return Tree(root, plan, time.perf_counter() - started)
