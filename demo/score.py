"""Reading a demo picture back from its pixels: the background colour, and each shape's kind, colour and position.

No learned weights: the pictures are flat colours, so the background is the border's median colour, the shapes are
the connected regions that differ from it, a region's colour is its median (edges eroded away) matched to the
palette, and its kind is the template (drawn by the scene generator's own `shape_distance`) that its silhouette
overlaps best. `judge` then says whether a picture shows what a `Composition` asks for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from demo.scenes import COLOURS, KINDS, PIXEL_BLOCKS, Composition, shape_distance

SIDE = 128  # pictures are read at this size
FOREGROUND_DISTANCE = 60.0  # RGB distance (0..255) from the background that makes a pixel part of a shape
MIN_AREA = 60  # pixels (at 128²): smaller regions are specks
SIGNIFICANT = 0.25  # a region counts as a shape when at least this fraction of the largest one
TEMPLATE = 24
RELATION_MARGIN = 0.08  # how far apart (fraction of the side) two shapes' centres must be to stand left of/above

_PALETTE = torch.tensor(list(COLOURS.values()), dtype=torch.float32)
_NAMES = list(COLOURS)


@dataclass(frozen=True)
class Found:
    kind: str
    colour: str
    x: float
    y: float
    area: int  # pixels at SIDE²


@dataclass(frozen=True)
class Reading:
    background: str
    shapes: tuple[Found, ...]  # significant shapes, largest first


def _nearest_colour(rgb: torch.Tensor) -> str:
    return _NAMES[int(torch.cdist(rgb.view(1, 3), _PALETTE).argmin())]


def _silhouette(mask: torch.Tensor) -> torch.Tensor:
    """A region's mask cropped to its bounding box and resized to TEMPLATE² (what kind matching compares)."""
    rows, cols = torch.nonzero(mask.any(dim=1)).view(-1), torch.nonzero(mask.any(dim=0)).view(-1)
    crop = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].float()
    return F.interpolate(crop[None, None], size=(TEMPLATE, TEMPLATE), mode="bilinear", align_corners=False)[0, 0] > 0.5


def _templates() -> torch.Tensor:
    coords = (torch.arange(4 * TEMPLATE, dtype=torch.float32) + 0.5) / (4 * TEMPLATE)
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    shapes = []
    for index in range(len(KINDS)):
        distance = shape_distance(torch.tensor(index), u - 0.5, v - 0.5, torch.tensor(0.4))
        shapes.append(_silhouette(distance < 0))
    return torch.stack(shapes)


_TEMPLATES = _templates()


def _components(masks: torch.Tensor) -> torch.Tensor:
    """Connected regions (8-neighbourhood) of a batch of boolean masks (B, H, W), as labels (0: none)."""
    _, height, width = masks.shape
    labels = torch.arange(1, height * width + 1, dtype=torch.float32).view(1, height, width) * masks
    for _ in range(height * width):
        grown = F.max_pool2d(labels[:, None], 3, 1, 1)[:, 0] * masks
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels.long()


def to_pixels(image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Any picture as a (SIDE, SIDE, 3) float tensor of 0..255 values."""
    if isinstance(image, Image.Image):
        image = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32))
    elif isinstance(image, np.ndarray):
        image = torch.from_numpy(image.astype(np.float32))
    elif image.dim() == 3 and image.shape[0] == 3:  # (3, h, w) in [0, 1]
        image = image.permute(1, 2, 0).float() * 255
    chw = image.permute(2, 0, 1)[None].float()
    return F.interpolate(chw, size=(SIDE, SIDE), mode="area")[0].permute(1, 2, 0)


def read(image: Image.Image | np.ndarray | torch.Tensor) -> Reading:
    return read_all([image])[0]


def read_all(images) -> list[Reading]:
    """`read` for many pictures at once (their regions are found together)."""
    pixels = torch.stack([to_pixels(image) for image in images])
    border = torch.cat([pixels[:, :3].flatten(1, 2), pixels[:, -3:].flatten(1, 2), pixels[:, :, :3].flatten(1, 2),
                        pixels[:, :, -3:].flatten(1, 2)], dim=1)  # fmt: skip
    backgrounds = border.median(dim=1).values
    masks = (pixels - backgrounds[:, None, None]).norm(dim=-1) > FOREGROUND_DISTANCE
    return [_regions(p, b, labels) for p, b, labels in zip(pixels, backgrounds, _components(masks), strict=True)]


def _regions(pixels: torch.Tensor, background: torch.Tensor, labels: torch.Tensor) -> Reading:
    regions = []
    for label in labels.unique():
        if label == 0:
            continue
        region = labels == label
        area = int(region.sum())
        if area < MIN_AREA:
            continue
        inner = -F.max_pool2d(-region.float()[None, None], 5, 1, 2)[0, 0] > 0.5  # 2 pixels in from the edge
        colour = pixels[inner if inner.sum() >= 4 else region].median(dim=0).values
        overlap = (_TEMPLATES & _silhouette(region)).sum(dim=(1, 2)) / (_TEMPLATES | _silhouette(region)).sum(
            dim=(1, 2)
        )
        ys, xs = torch.nonzero(region, as_tuple=True)
        kind = KINDS[int(overlap.argmax())]
        regions.append(Found(kind, _nearest_colour(colour), float(xs.float().mean() + 0.5) / SIDE,
                             float(ys.float().mean() + 0.5) / SIDE, area))  # fmt: skip
    regions.sort(key=lambda found: -found.area)
    shapes = tuple(f for f in regions if f.area >= SIGNIFICANT * regions[0].area) if regions else ()
    return Reading(_nearest_colour(background), shapes)


def described_pair(reading: Reading, composition: Composition) -> tuple[Found, Found] | None:
    """A relation's subject and object as the picture shows them (the largest of each), if both are there."""
    subject = [s for s in reading.shapes if (s.kind, s.colour) == (composition.kind, composition.colour)]
    other = [s for s in reading.shapes if (s.kind, s.colour) == (composition.other_kind, composition.other_colour)]
    return (subject[0], other[0]) if subject and other else None


def judge(reading: Reading, composition: Composition) -> dict[str, bool]:
    """Which parts of the composition the picture shows, and `correct`: all of them."""
    shapes = reading.shapes
    verdict = {"background": reading.background == composition.background}
    if composition.layout == "relation":
        pair = described_pair(reading, composition)
        verdict["count"] = len(shapes) == 2
        verdict["shapes"] = pair is not None
        placed = False
        if pair is not None:
            a, b = pair
            placed = {
                "left": a.x < b.x - RELATION_MARGIN,
                "right": a.x > b.x + RELATION_MARGIN,
                "above": a.y < b.y - RELATION_MARGIN,
                "below": a.y > b.y + RELATION_MARGIN,
            }[composition.relation or "left"]
        verdict["relation"] = placed
    else:
        verdict["count"] = len(shapes) == composition.count
        verdict["colour"] = bool(shapes) and all(s.colour == composition.colour for s in shapes)
        verdict["kind"] = bool(shapes) and all(s.kind == composition.kind for s in shapes)
    verdict["correct"] = all(verdict.values())
    return verdict


def tally(pictures, compositions: list[Composition]) -> dict[str, int]:
    """How many pictures show each part of what their compositions ask (`judge`'s keys, `correct` included)."""
    verdicts = [judge(reading, c) for reading, c in zip(read_all(pictures), compositions, strict=True)]
    return {key: sum(verdict[key] for verdict in verdicts) for key in verdicts[0]}


def grid_edge_share(image: Image.Image | np.ndarray, blocks: int = PIXEL_BLOCKS) -> float:
    """How much of a picture's edge energy lies on the pixel style's block grid (`blocks` per side), within a pixel
    either side (the VAE blurs an edge by about that much): about 3 / (side / blocks) for a picture whose edges fall
    anywhere, close to 1 for the mosaic. It measures the demo style LoRA's effect in pixels."""
    if blocks < 2:
        raise ValueError("a block grid needs at least 2 blocks per side")
    pixels = torch.from_numpy(
        np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    )
    if pixels.dim() == 2:  # greyscale
        pixels = pixels.unsqueeze(-1)
    height, width = pixels.shape[:2]
    total, on_grid = 0.0, 0.0
    for axis, side in ((1, width), (0, height)):
        steps = pixels.diff(dim=axis).abs().sum(dim=-1)  # step j lies between pixel j and j + 1 along the axis
        energy = steps.sum(dim=1 - axis)  # per step position
        boundary = torch.arange(1, blocks) * side / blocks  # pixel index where a new block starts
        position = torch.arange(side - 1) + 1  # the step's right/lower pixel
        near = (position[:, None] - boundary[None, :]).abs().min(dim=1).values <= 1
        total += float(energy.sum())
        on_grid += float(energy[near].sum())
    return on_grid / total if total > 0 else 0.0
