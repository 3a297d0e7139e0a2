"""What the demo checkpoints get wrong on counts and relations: the held-out count and relation prompts, drawn and read
back, each wrong picture sorted by how it is wrong.

    python -m demo.failures --setting turbo_8 --out demo/results/failures-2026-12-03k-cpu.json

`demo.evaluate` says how often a picture is right; this says what the wrong ones show. For a count, how many shapes
were drawn against how many were asked. For a relation (two described shapes), whether each of the two came out;
when both did, whether they lie along the asked axis but swapped or along the other axis; when one is missing, what
stands in for it: a second copy of the one that came out, the missing one's kind in another colour, its colour on
another kind, or something else. Issue 15's next training run is chosen from these.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

import torch

from demo.evaluate import SETTINGS, draw, load_manager
from demo.scenes import Composition, held_out
from demo.score import Reading, judge, read_all

log = logging.getLogger("demo.failures")


def count_failure(reading: Reading, composition: Composition) -> str:
    if judge(reading, composition)["correct"]:
        return "right"
    if len(reading.shapes) == composition.count:
        return "the number asked, a wrong kind or colour"
    return f"asked {composition.count}, drew {len(reading.shapes)}"


def relation_failure(reading: Reading, composition: Composition) -> str:
    """How a relation picture is wrong. The first described shape is the subject ("a red circle"), the second the
    object ("... to the left of a blue square")."""
    verdict = judge(reading, composition)
    if verdict["correct"]:
        return "right"
    if verdict["shapes"]:
        return placement_failure(reading, composition, verdict)
    found = [(shape.kind, shape.colour) for shape in reading.shapes]
    subject, other = (composition.kind, composition.colour), (composition.other_kind, composition.other_colour)
    if subject not in found and other not in found:
        return "neither shape"
    good, missing = (subject, other) if subject in found else (other, subject)
    rest = [shape for shape in found if shape != good]
    which = "subject" if good == subject else "object"
    if not rest:
        return f"only the {which}, {'twice' if len(found) > 1 else 'once'}"
    stand_in = rest[0]
    if stand_in[0] == missing[0]:
        return f"the {which}, and the other's kind in another colour"
    if stand_in[1] == missing[1]:
        return f"the {which}, and the other's colour on another kind"
    return f"the {which}, and something else"


def placement_failure(reading: Reading, composition: Composition, verdict: dict[str, bool]) -> str:
    """A relation picture with both described shapes that is still wrong: in place but with more shapes or another
    background, on the other axis (one above the other for "to the left of"), swapped, or too close to tell."""
    if verdict["relation"]:
        return "both shapes in place, more shapes or another background"
    a = next(s for s in reading.shapes if (s.kind, s.colour) == (composition.kind, composition.colour))
    b = next(s for s in reading.shapes if (s.kind, s.colour) == (composition.other_kind, composition.other_colour))
    horizontal = composition.relation in ("left", "right")
    if (abs(a.x - b.x) > abs(a.y - b.y)) != horizontal:
        return "both shapes, other axis"
    subject_after = (a.x - b.x if horizontal else a.y - b.y) > 0  # the subject right of (below) the object
    if subject_after == (composition.relation in ("left", "above")):
        return "both shapes, swapped"
    return "both shapes, too close"  # the asked order, nearer than the scorer's margin


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", type=Path, default=None, help="folder with the two demo checkpoints")
    parser.add_argument("--setting", choices=list(SETTINGS), default="turbo_8")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("demo/results/failures.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    manager = load_manager(args.checkpoints, args.device)
    every = held_out()  # the seeds demo.evaluate gives these compositions
    cases = [(c, 1000 * s + i) for s in range(args.seeds) for i, c in enumerate(every) if c.layout != "single"]
    pictures = draw(manager, args.setting, [c.prompt for c, _ in cases], [seed for _, seed in cases], batch=30)
    readings = read_all(list(pictures))
    tallies: dict[str, Counter] = {"count": Counter(), "relation": Counter()}
    for (composition, _), reading in zip(cases, readings, strict=True):
        sort = count_failure if composition.layout == "count" else relation_failure
        tallies[composition.layout][sort(reading, composition)] += 1
    report = {
        "setting": args.setting,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "seeds": args.seeds,
        **{layout: dict(tally.most_common()) for layout, tally in tallies.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    log.info("%s", json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
