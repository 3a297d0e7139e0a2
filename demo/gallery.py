"""The README's picture of what the demo model draws: the app's example prompts and a few single shapes, each drawn by
Turbo (8 steps) and Raw (52 steps, guidance 3.5) at 256² through the app's own manager, seed 1, nothing picked by
hand. Every picture is scored (demo/score.py) and its verdict printed under it, so misses show as misses.

    python -m demo.gallery --out docs/demo-gallery.png
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from demo.lora_effect import demo_manager
from demo.scenes import Composition
from demo.score import judge, read
from krea2 import GenerationRequest

SIDE, SEED, LABEL = 256, 1, 34
# The banner's first and last examples, a count, then a single shape of each other kind (each composition's prompt
# is what is typed).
COMPOSITIONS = [
    Composition("single", "circle", "red", "blue"),
    Composition("count", "square", "green", "white", count=2),
    Composition("relation", "triangle", "purple", "white", relation="left", other_kind="circle", other_colour="orange"),
    Composition("single", "star", "yellow", "black"),
    Composition("single", "triangle", "pink", "green"),
    Composition("single", "diamond", "white", "purple"),
    Composition("single", "cross", "orange", "blue"),
]
SETTINGS = {"turbo": (8, 0.0), "raw": (52, 3.5)}
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")  # Debian's fonts-dejavu-core (scripts/test.sh)


def label_font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans where installed, else Pillow's own scalable font (its bitmap default ran words together)."""
    return ImageFont.truetype(str(FONT), 11) if FONT.is_file() else ImageFont.load_default(size=11)


def draw(out: Path) -> list[dict]:
    with tempfile.TemporaryDirectory() as data:
        manager = demo_manager(Path(data))
        canvas = Image.new("RGB", (len(COMPOSITIONS) * SIDE, len(SETTINGS) * (SIDE + LABEL)), "white")
        pen, font = ImageDraw.Draw(canvas), label_font()
        verdicts = []
        for row, (checkpoint, (steps, guidance)) in enumerate(SETTINGS.items()):
            for column, composition in enumerate(COMPOSITIONS):
                prompt = composition.prompt
                request = GenerationRequest(prompt=prompt, checkpoint=checkpoint, width=SIDE, height=SIDE,
                                            steps=steps, guidance=guidance, seed=SEED)  # fmt: skip
                image = manager.generate(request).images[0]
                right = judge(read(image), composition)["correct"]
                x, y = column * SIDE, row * (SIDE + LABEL)
                canvas.paste(image, (x, y))
                label = f"{checkpoint} {steps} steps: {'right' if right else 'wrong'}"
                pen.text((x + 6, y + SIDE + 3), label, fill="black", font=font)
                pen.text((x + 6, y + SIDE + 18), prompt[:40], fill="dimgray", font=font)
                verdicts.append({"checkpoint": checkpoint, "prompt": prompt, "right": right})
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/demo-gallery.png"))
    args = parser.parse_args()
    for verdict in draw(args.out):
        print(verdict)


if __name__ == "__main__":
    main()
