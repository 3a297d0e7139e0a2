"""The demo model's world: captioned pictures of flat shapes, drawn procedurally.

A `Scene` is what a picture shows (shapes of a kind and colour at a position and size, on a plain or textured
background) together with a caption a person would write for it. `sample_scene` draws random scenes, `render` draws a
batch of them as pixels (vectorised in torch, so training can draw millions of pictures on the GPU without a data
loader), and `held_out` is the fixed set of compositions that training never sees, on which the model is evaluated.

The optional `style="pixel"` rendering (a coarse mosaic) is a look the captions never name: the base demo model never
produces it, so a LoRA trained on it has a visible, measurable effect.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (245, 215, 40),
    "green": (40, 160, 70),
    "blue": (40, 90, 220),
    "purple": (135, 60, 180),
    "pink": (245, 140, 190),
    "brown": (125, 80, 45),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
KINDS = ("circle", "square", "triangle", "star", "diamond", "cross")
PLURALS = {kind: kind + ("es" if kind.endswith("ss") else "s") for kind in KINDS}
TEXTURES = ("plain", "striped", "checkered", "dotted")
COUNT_WORDS = {2: "two", 3: "three"}
RELATIONS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
# Where a caption may place a single shape: name -> (x, y) anchor of the picture, in [0, 1] from the top left.
PLACES = {
    "in the top left corner": (0.27, 0.27),
    "at the top": (0.5, 0.25),
    "in the top right corner": (0.73, 0.27),
    "on the left": (0.25, 0.5),
    "in the center": (0.5, 0.5),
    "on the right": (0.75, 0.5),
    "in the bottom left corner": (0.27, 0.73),
    "at the bottom": (0.5, 0.75),
    "in the bottom right corner": (0.73, 0.73),
}
SIZES = {"small": (0.09, 0.13), "": (0.15, 0.21), "large": (0.23, 0.29)}  # half-extent, as a fraction of the side
Style = Literal["plain", "pixel"]
# The pixel style's mosaic has this many blocks per side, whatever the picture's size: 16 px blocks at 256², two latent
# cells of the VAE's 8x grid, so the VAE reproduces their edges crisply (24 blocks, 10.7 px, fell between the cells and
# a LoRA trained on them learned only blurred, fringed edges).
PIXEL_BLOCKS = 16


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    x: float  # centre, fraction of the width from the left
    y: float  # centre, fraction of the height from the top
    size: float  # half-extent, fraction of the side


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: str
    texture: str
    caption: str
    layout: Literal["single", "count", "relation"]
    relation: str | None = None  # for layout "relation": where shapes[0] is relative to shapes[1]
    style: Style = "plain"


@dataclass(frozen=True)
class Composition:
    """What a prompt asks for, without the free choices (position, size, seed): the unit of held-out evaluation."""

    layout: Literal["single", "count", "relation"]
    kind: str
    colour: str
    background: str
    count: int = 1
    relation: str | None = None
    other_kind: str | None = None
    other_colour: str | None = None

    @property
    def prompt(self) -> str:
        if self.layout == "count":
            return f"{COUNT_WORDS[self.count]} {self.colour} {PLURALS[self.kind]} on {_bg(self.background)}"
        first = f"{_article(self.colour)} {self.colour} {self.kind}"
        if self.layout == "relation":
            second = f"{_article(self.other_colour or '')} {self.other_colour} {self.other_kind}"
            return f"{first} {RELATIONS[self.relation or 'left']} {second} on {_bg(self.background)}"
        return f"{first} on {_bg(self.background)}"

    def triples(self) -> set[tuple[str, str, str]]:
        """The (colour, kind, background) pairings this composition shows."""
        found = {(self.colour, self.kind, self.background)}
        if self.other_kind is not None and self.other_colour is not None:
            found.add((self.other_colour, self.other_kind, self.background))
        return found


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _bg(colour: str, texture: str = "plain") -> str:
    words = colour if texture == "plain" else f"{texture} {colour}"
    return f"{_article(words)} {words} background"


# ----------------------------------------------------------------------------------------------- held-out set
HELD_OUT_SEED = 2026
HELD_OUT_SINGLES = 200
HELD_OUT_COUNTS = 30
HELD_OUT_RELATIONS = 30


def _contrasting(colour: str) -> list[str]:
    return [c for c in COLOURS if c != colour]


def held_out() -> list[Composition]:
    """The compositions training never shows: 200 single shapes, 30 counts and 30 relations, fixed by a seed."""
    rng = random.Random(HELD_OUT_SEED)
    singles = [
        Composition("single", kind, colour, bg) for colour in COLOURS for kind in KINDS for bg in _contrasting(colour)
    ]
    chosen = rng.sample(singles, HELD_OUT_SINGLES)
    counts = [
        Composition("count", kind, colour, bg, count=n)
        for n in COUNT_WORDS
        for colour in COLOURS
        for kind in KINDS
        for bg in _contrasting(colour)
    ]
    chosen += rng.sample(counts, HELD_OUT_COUNTS)
    while len(chosen) < HELD_OUT_SINGLES + HELD_OUT_COUNTS + HELD_OUT_RELATIONS:
        bg = rng.choice(list(COLOURS))
        first, second = rng.sample(_contrasting(bg), 2)
        kind, other = rng.sample(KINDS, 2)
        relation = rng.choice(list(RELATIONS))
        candidate = Composition("relation", kind, first, bg, relation=relation, other_kind=other, other_colour=second)
        if candidate not in chosen:
            chosen.append(candidate)
    return chosen


def held_out_prompts() -> set[str]:
    return {composition.prompt for composition in held_out()}


# ----------------------------------------------------------------------------------------------- sampling
def _place(rng: random.Random, size: float) -> tuple[float, float]:
    margin = size + 0.04
    return rng.uniform(margin, 1 - margin), rng.uniform(margin, 1 - margin)


def _single(rng: random.Random, colour: str, kind: str, bg: str, texture: str) -> Scene:
    size_word = rng.choice(list(SIZES))
    size = rng.uniform(*SIZES[size_word])
    place = rng.choice(list(PLACES)) if rng.random() < 0.35 else None
    if place is None:
        x, y = _place(rng, size)
    else:
        ax, ay = PLACES[place]
        x = min(max(ax + rng.uniform(-0.05, 0.05), size + 0.03), 1 - size - 0.03)
        y = min(max(ay + rng.uniform(-0.05, 0.05), size + 0.03), 1 - size - 0.03)
    say_size = size_word and rng.random() < 0.5
    noun = f"{size_word + ' ' if say_size else ''}{colour} {kind}"
    obj = f"{_article(noun)} {noun}"
    background = _bg(bg, texture)
    if place is not None:
        caption = f"{obj} {place} on {background}"
    elif rng.random() < 0.12:  # terse, the way people also type
        caption = f"{noun} on {bg} background" if texture == "plain" else f"{noun} on {texture} {bg} background"
    else:
        caption = f"{obj} on {background}"
    return Scene((Shape(kind, colour, x, y, size),), bg, texture, caption, "single")


def _count(rng: random.Random, colour: str, kind: str, bg: str, texture: str) -> Scene:
    """Two or three shapes evenly spaced in a row or a column. Scattered over free cells of a 3x3 grid (sessions
    b-j), the miniature learned to draw shapes but not how many: it drew one in most cells, 38 of 60 held-out count
    pictures had too many (demo.failures). A row or column makes the number an arrangement it can learn."""
    n = rng.choice(list(COUNT_WORDS))
    size = rng.uniform(0.08, 0.12)
    # Neighbours at least 0.03 of the side apart (after the jitter); the outer one of three touches the edge about once
    # in 10,000 scenes (left as the committed checkpoints were trained on it).
    gap = rng.uniform(max(0.26, 2 * size + 0.07), 0.33)
    middle, across = 0.5 + rng.uniform(-0.04, 0.04), rng.uniform(0.25, 0.75)
    along = [middle + (k - (n - 1) / 2) * gap + rng.uniform(-0.02, 0.02) for k in range(n)]
    row = rng.random() < 0.5
    shapes = tuple(Shape(kind, colour, *((a, across) if row else (across, a)), size) for a in along)
    caption = f"{COUNT_WORDS[n]} {colour} {PLURALS[kind]} on {_bg(bg, texture)}"
    return Scene(shapes, bg, texture, caption, "count")


def _relation(rng: random.Random, colour: str, kind: str, bg: str, texture: str) -> Scene:
    other_colour = rng.choice([c for c in _contrasting(bg) if c != colour])
    other_kind = rng.choice([k for k in KINDS if k != kind])
    relation = rng.choice(list(RELATIONS))
    size = rng.uniform(0.1, 0.15)
    near, far = rng.uniform(0.2, 0.32), rng.uniform(0.68, 0.8)
    a, b = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
    first, second = {
        "left": ((near, a), (far, b)),
        "right": ((far, a), (near, b)),
        "above": ((a, near), (b, far)),
        "below": ((a, far), (b, near)),
    }[relation]
    shapes = (Shape(kind, colour, *first, size), Shape(other_kind, other_colour, *second, size))
    obj = f"{_article(colour)} {colour} {kind}"
    other = f"{_article(other_colour)} {other_colour} {other_kind}"
    caption = f"{obj} {RELATIONS[relation]} {other} on {_bg(bg, texture)}"
    return Scene(shapes, bg, texture, caption, "relation", relation=relation)


# What share of training scenes has each layout (the held-out set is fixed: 200 singles, 30 counts, 30 relations).
LAYOUT_MIX: dict[str, float] = {"single": 0.6, "count": 0.2, "relation": 0.2}


def sample_scene(
    rng: random.Random,
    exclude: set[tuple[str, str, str]] | None = None,
    style: Style = "plain",
    mix: dict[str, float] | None = None,
) -> Scene:
    """A random scene (by default `LAYOUT_MIX`: 60% one shape, 20% a count, 20% a relation), never showing an
    excluded (colour, kind, background) pairing: pass `held_out_triples()` so that training never sees what evaluation
    asks for."""
    mix = mix or LAYOUT_MIX
    single, count = mix["single"], mix["single"] + mix["count"]
    while True:
        bg = rng.choice(list(COLOURS))
        colour = rng.choice(_contrasting(bg))
        kind = rng.choice(KINDS)
        texture = "plain" if rng.random() < 0.7 else rng.choice(TEXTURES[1:])
        roll = rng.random()
        make = _single if roll < single else _count if roll < count else _relation
        scene = make(rng, colour, kind, bg, texture)
        if exclude and any((s.colour, s.kind, bg) in exclude for s in scene.shapes):
            continue
        return replace(scene, style=style)


def held_out_triples() -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    for composition in held_out():
        found |= composition.triples()
    return found


def scene_for(composition: Composition, rng: random.Random) -> Scene:
    """A ground-truth picture of a composition (random position and size), captioned with its prompt."""
    make = {"single": _single, "count": _count, "relation": _relation}[composition.layout]
    while True:
        scene = make(rng, composition.colour, composition.kind, composition.background, "plain")
        if composition.layout == "count" and len(scene.shapes) != composition.count:
            continue
        if composition.layout == "relation":
            second = scene.shapes[1]
            if (scene.relation, second.kind, second.colour) != (
                composition.relation,
                composition.other_kind,
                composition.other_colour,
            ):
                continue
        return replace(scene, caption=composition.prompt)


# ----------------------------------------------------------------------------------------------- rendering
def _rgb(name: str) -> list[float]:
    return [v / 255 for v in COLOURS[name]]


def shape_distance(kind: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (negative inside, in picture-side units) of each pixel to an upright shape of half-extent `r`.
    `kind` holds indices into KINDS; all tensors broadcast together."""
    ax, ay = dx.abs(), dy.abs()
    circle = torch.sqrt(dx * dx + dy * dy) - r
    square = torch.maximum(ax, ay) - 0.86 * r
    diamond = (ax + ay - r) / math.sqrt(2)
    ty = dy - 0.25 * r  # the triangle's box centred on the shape's centre
    triangle = torch.maximum(
        torch.maximum(ty - 0.5 * r, 0.866 * dx - 0.5 * ty - 0.5 * r), -0.866 * dx - 0.5 * ty - 0.5 * r
    )
    angle = torch.atan2(dy, dx) + math.pi / 2  # 0 points up
    phase = torch.remainder(angle / (2 * math.pi / 5), 1.0)
    radius = r * (0.45 + 0.55 * (1 - 2 * phase).abs())
    star = (torch.sqrt(dx * dx + dy * dy) - radius) * 0.6
    arm = 0.32 * r
    cross = torch.minimum(torch.maximum(ax - arm, ay - r), torch.maximum(ax - r, ay - arm))
    choices = torch.stack(torch.broadcast_tensors(circle, square, triangle, star, diamond, cross))
    index = kind.expand_as(choices[0]).unsqueeze(0)
    return choices.gather(0, index.long()).squeeze(0)


def _texture_mask(texture: list[str], u: torch.Tensor, v: torch.Tensor, jitter: torch.Tensor) -> torch.Tensor:
    """1 where a textured background shows its second tone."""
    period = 0.1 + 0.04 * jitter  # (B, 1, 1)
    stripes = (torch.remainder((u + v) / period, 1.0) < 0.5).float()
    checks = ((torch.floor(u / period) + torch.floor(v / period)) % 2).float()
    du = torch.remainder(u / period, 1.0) - 0.5
    dv = torch.remainder(v / period, 1.0) - 0.5
    dots = (du * du + dv * dv < 0.07).float()
    which = torch.tensor([TEXTURES.index(t) for t in texture], device=u.device).view(-1, 1, 1)
    return torch.where(which == 1, stripes, torch.where(which == 2, checks, torch.where(which == 3, dots, 0.0)))


def _grid(batch: int, size: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres as (u: columns, v: rows), fractions of the side, (batch, size, size) each."""
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    return u.expand(batch, size, size), v.expand(batch, size, size)


def _layers(
    scenes: list[Scene], size: int, u: torch.Tensor, v: torch.Tensor
) -> Iterator[tuple[list[Shape], torch.Tensor]]:
    """The scenes' shapes in drawing order, one layer per position in `Scene.shapes`: (each scene's shape there, its
    anti-aliased coverage (batch, size, size)); a scene with fewer shapes has coverage 0 in the later layers."""
    batch, device = len(scenes), u.device
    for j in range(max(len(s.shapes) for s in scenes)):
        present = [j < len(s.shapes) for s in scenes]
        shapes = [s.shapes[j] if j < len(s.shapes) else s.shapes[0] for s in scenes]
        kind = torch.tensor([KINDS.index(s.kind) for s in shapes], device=device).view(batch, 1, 1)
        cx = torch.tensor([s.x for s in shapes], device=device).view(batch, 1, 1)
        cy = torch.tensor([s.y for s in shapes], device=device).view(batch, 1, 1)
        r = torch.tensor([s.size for s in shapes], device=device).view(batch, 1, 1)
        alpha = (0.5 - shape_distance(kind, u - cx, v - cy, r) * size).clamp(0, 1)
        yield shapes, alpha * torch.tensor(present, device=device, dtype=torch.float32).view(batch, 1, 1)


def _coverage(
    scenes: list[Scene],
    size: int,
    cell: int,
    device,
    classes: int,
    background: list[int],
    of_shape: Callable[[Shape], int],
) -> torch.Tensor:
    """The share of each `cell`x`cell` square's pixels in each of `classes` classes: every pixel starts in its scene's
    `background` class, and each shape paints its class (`of_shape`) over it in drawing order, as `render` paints."""
    batch = len(scenes)
    u, v = _grid(batch, size, device)
    start = F.one_hot(torch.tensor(background, device=device), classes).float().view(batch, -1, 1, 1)
    shares = start.expand(-1, -1, size, size)
    for shapes, alpha in _layers(scenes, size, u, v):
        paint = F.one_hot(torch.tensor([of_shape(s) for s in shapes], device=device), classes)
        shares = shares * (1 - alpha.unsqueeze(1)) + paint.float().view(batch, -1, 1, 1) * alpha.unsqueeze(1)
    return F.avg_pool2d(shares, cell).flatten(2).transpose(1, 2)


def kind_coverage(scenes: list[Scene], size: int, cell: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """What each `cell`x`cell` square of the pictures `render` draws shows: the share of its pixels that are
    background (class 0) or a shape of each kind (class 1 + its index in KINDS), shapes composited in drawing order
    as `render` paints them. (batch, (size / cell)², 1 + len(KINDS)), squares row by row; each row sums to 1."""
    return _coverage(
        scenes, size, cell, device, 1 + len(KINDS), [0] * len(scenes), lambda shape: 1 + KINDS.index(shape.kind)
    )


def colour_coverage(scenes: list[Scene], size: int, cell: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """`kind_coverage`'s squares by palette colour instead of kind: the share of each square's pixels painted in each
    of COLOURS (a textured background's second tone counts as its background colour, which the caption names).
    (batch, (size / cell)², len(COLOURS)), each row summing to 1."""
    names = list(COLOURS)
    background = [names.index(scene.background) for scene in scenes]
    return _coverage(scenes, size, cell, device, len(names), background, lambda shape: names.index(shape.colour))


def render(scenes: list[Scene], size: int, device: torch.device | str = "cpu", seed: int = 0) -> torch.Tensor:
    """Draw scenes as a (batch, 3, size, size) float tensor in [0, 1], anti-aliased, with a faint colour jitter."""
    batch = len(scenes)
    gen = torch.Generator().manual_seed(seed)
    u, v = _grid(batch, size, device)

    background = torch.tensor([_rgb(s.background) for s in scenes], device=device).view(batch, 3, 1, 1)
    jitter = torch.rand(batch, 1, 1, generator=gen).to(device)
    second = _texture_mask([s.texture for s in scenes], u, v, jitter).unsqueeze(1)
    # The second tone: towards white, or towards black for light backgrounds.
    light = (background.mean(dim=1, keepdim=True) > 0.75).float()
    tone = background + (light * (0 - background) + (1 - light) * (1 - background)) * 0.35
    image = background * (1 - second) + tone * second

    for shapes, alpha in _layers(scenes, size, u, v):
        colour = torch.tensor([_rgb(s.colour) for s in shapes], device=device).view(batch, 3, 1, 1)
        image = image * (1 - alpha.unsqueeze(1)) + colour * alpha.unsqueeze(1)

    image = image + (torch.rand(batch, 3, 1, 1, generator=gen).to(device) - 0.5) * (8 / 255)
    pixel = torch.tensor([s.style == "pixel" for s in scenes], device=device).view(batch, 1, 1, 1)
    if bool(pixel.any()):
        mosaic = F.interpolate(F.adaptive_avg_pool2d(image, PIXEL_BLOCKS), size=(size, size), mode="nearest")
        image = torch.where(pixel, mosaic, image)
    return image.clamp(0, 1)
