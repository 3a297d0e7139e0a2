"""What the demo checkpoints get wrong on counts and relations: the held-out count and relation prompts, drawn and read
back, each wrong picture sorted by how it is wrong.

    python -m demo.failures --setting turbo_8 --out demo/results/failures-2026-12-06w-cpu.json

`demo.evaluate` says how often a picture is right; this says what the wrong ones show. For a count, how many shapes
were drawn against how many were asked. For a relation (two described shapes), whether each of the two came out;
when both did, whether they lie along the asked axis but swapped or along the other axis; when one is missing, what
stands in for it: a second copy of the one that came out, the missing one's kind in another colour, its colour on
another kind, or something else. Issue 15's next training run is chosen from these.

It also measures what the text side tells apart (`text_difference`): for each held-out relation prompt, how far the
transformer's text features (after its text fusion) move when the relation's direction is swapped ("to the left of"
for "to the right of", "above" for "below"), against when the object's colour is swapped, a word the model has
learnt. A direction the features do not carry cannot put the shapes in order.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from demo.evaluate import SETTINGS, draw, load_manager
from demo.scenes import COLOURS, Composition, held_out
from demo.score import Found, Reading, described_pair, judge, read_all

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


def offset_along_axis(a: Found, b: Found, composition: Composition) -> float:
    """How far the subject `a` lies right of (or below, for "above" and "below") the object `b`."""
    return a.x - b.x if composition.relation in ("left", "right") else a.y - b.y


def subject_first(reading: Reading, composition: Composition) -> str | None:
    """Whether the subject comes first (left of, or above, the object, along the relation's axis) whatever the
    relation asks: a model that ignores the direction puts it first about half the time."""
    pair = described_pair(reading, composition)
    if pair is None:
        return None
    return "subject first" if offset_along_axis(*pair, composition) < 0 else "subject second"


def placement_failure(reading: Reading, composition: Composition, verdict: dict[str, bool]) -> str:
    """A relation picture with both described shapes that is still wrong: in place but with more shapes or another
    background, on the other axis (one above the other for "to the left of"), swapped, or too close to tell."""
    if verdict["relation"]:
        return "both shapes in place, more shapes or another background"
    pair = described_pair(reading, composition)
    assert pair is not None  # verdict["shapes"]: both are there
    a, b = pair
    if (abs(a.x - b.x) > abs(a.y - b.y)) != (composition.relation in ("left", "right")):
        return "both shapes, other axis"
    subject_after = offset_along_axis(a, b, composition) > 0  # the subject right of (below) the object
    if subject_after == (composition.relation in ("left", "above")):
        return "both shapes, swapped"
    return "both shapes, too close"  # the asked order, nearer than the scorer's margin


# Each relation's opposite: its words have as many tokens, so the two prompts' features compare token by token.
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def text_features(transformer, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The transformer's text features for the text encoder's tapped layers `embeds`, as its forward pass makes them
    (text fusion, then input projection; demo.train's structure objective reads the same from that pass)."""
    return transformer.txt_in(transformer.text_fusion(embeds, attention_mask=mask[:, None, None, :]))


@torch.no_grad()
def text_difference(pipe, first: str, second: str) -> float:
    """The largest cosine distance, token by token, between the text features `pipe.transformer` computes for two
    prompts (its text fusion and input projection over the text encoder's tapped layers): 0 for the same features."""
    embeds, mask = pipe.get_text_hidden_states([first, second], 64, pipe.transformer.device)
    features = text_features(pipe.transformer, embeds.to(pipe.transformer.dtype), mask.bool()).float()
    tokens = int(mask.sum(dim=1).min())
    distance = 1 - F.cosine_similarity(features[0, :tokens], features[1, :tokens], dim=-1)
    return round(float(distance.max()), 4)


def text_separation(pipe, relations: list[Composition]) -> dict[str, float]:
    """Median `text_difference` over relation prompts for their direction swapped and for their object's colour, and
    over their subjects alone "on the left" against "on the right" of a single-shape prompt (a place the model
    draws)."""
    direction, colour, place = [], [], []
    for composition in relations:
        alone = Composition("single", composition.kind, composition.colour, composition.background).prompt
        left, right = (alone.replace(" on ", f" on the {side} on ", 1) for side in ("left", "right"))
        place.append(text_difference(pipe, left, right))
        swapped = replace(composition, relation=OPPOSITE[composition.relation or "left"])
        recoloured = replace(composition, other_colour=next(
            c for c in COLOURS if c not in (composition.colour, composition.other_colour, composition.background)
        ))  # fmt: skip
        direction.append(text_difference(pipe, composition.prompt, swapped.prompt))
        colour.append(text_difference(pipe, composition.prompt, recoloured.prompt))
    return {
        "direction swapped": round(float(np.median(direction)), 4),
        "object colour swapped": round(float(np.median(colour)), 4),
        "single shape's place swapped": round(float(np.median(place)), 4),
    }


def word_distances(pipe, pairs=(("left", "right"), ("above", "below"), ("red", "blue"))) -> dict[str, float]:
    """Cosine distance between the text encoder's input embeddings of word pairs (each word one token)."""
    table = pipe.text_encoder.get_input_embeddings().weight.detach().float()
    ids = {word: pipe.tokenizer(" " + word, add_special_tokens=False)["input_ids"] for pair in pairs for word in pair}
    return {
        f"{a}/{b}": round(float(1 - F.cosine_similarity(table[ids[a][0]], table[ids[b][0]], dim=0)), 4)
        for a, b in pairs
    }


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
    relations = [c for c in every if c.layout == "relation"]
    tallies: dict[str, Counter] = {"count": Counter(), "relation": Counter()}
    order: Counter = Counter()  # relation pictures with both shapes: (asked direction, subject first or second)
    for (composition, _), reading in zip(cases, readings, strict=True):
        sort = count_failure if composition.layout == "count" else relation_failure
        tallies[composition.layout][sort(reading, composition)] += 1
        if composition.layout == "relation" and (first := subject_first(reading, composition)):
            order[f"{composition.relation}: {first}"] += 1
    report = {
        "setting": args.setting,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "seeds": args.seeds,
        **{layout: dict(tally.most_common()) for layout, tally in tallies.items()},
        "relation_order": dict(sorted(order.items())),
        "text_difference": {  # per checkpoint, the median over the held-out relation prompts (text_separation)
            key: text_separation(pipe, relations) for key, pipe in manager.pipes.items()
        },
        "word_embedding_distance": word_distances(manager.pipes["turbo"]),  # one text encoder for both
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    log.info("%s", json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
