"""demo/caption_information.py measures at which noise levels a caption's kind and colour matter to Raw (issue 15:
why a from-scratch Raw binds colours long before kinds)."""

from __future__ import annotations

import random

import pytest

from demo.caption_information import SIGMAS, measure, swapped, training_density
from demo.scenes import COLOURS, KINDS, held_out


def test_a_swapped_caption_changes_only_the_field_named():
    rng = random.Random(0)
    for composition in [c for c in held_out() if c.layout == "single"][:40]:
        kind, colour = swapped(composition, "kind", rng), swapped(composition, "colour", rng)
        assert kind.kind in KINDS and kind.kind != composition.kind
        assert (kind.colour, kind.background) == (composition.colour, composition.background)
        assert colour.colour in COLOURS and colour.colour not in (composition.colour, composition.background)
        assert (colour.kind, colour.background) == (composition.kind, composition.background)


def test_the_training_density_is_a_share_per_noise_level_that_larger_pictures_move_up():
    low, high = training_density(256), training_density(4096)  # 256² and 1024² pictures: shifts e^0.5 and e^1.1
    assert sum(low) == pytest.approx(1.0) and sum(high) == pytest.approx(1.0)
    assert max(low) == pytest.approx(0.176, abs=0.01)  # what bench/NOTES.md quotes for 256² at sigma 0.75
    mean_low, mean_high = (sum(d * s for d, s in zip(density, SIGMAS, strict=True)) for density in (low, high))
    assert mean_high > mean_low + 0.05


def test_the_shipped_raw_gains_from_the_right_kind_and_colour(manager):
    singles = [c for c in held_out() if c.layout == "single"][:6]
    result = measure(manager.pipes["raw"], singles, sigmas=(0.05, 0.75))
    assert result["sigmas"] == [0.05, 0.75] and result["pictures"] == 6
    # At three-quarters noise the kind and the colour decide much of the picture: a model that learnt them loses more
    # with the wrong word; at 5 % noise the picture is nearly there whatever the caption says.
    for field in ("kind", "colour"):
        near_clean, noisy = result["gain"][field]
        assert noisy > 0.01 and noisy > 3 * abs(near_clean)
