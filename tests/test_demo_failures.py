"""demo/failures.py sorts a wrong count or relation picture by how it is wrong (issue 15's diagnosis), from what the
scorer read."""

from __future__ import annotations

from demo.failures import (
    count_failure,
    relation_failure,
    subject_first,
    text_difference,
    text_separation,
    word_distances,
)
from demo.scenes import Composition
from demo.score import Found, Reading
from demo.train import vocabulary
from krea2.demo import build_demo_pipeline

RELATION = Composition("relation", "circle", "red", "blue", relation="left", other_kind="square", other_colour="yellow")


def reading(*shapes: tuple[str, str, float]) -> Reading:
    return Reading("blue", tuple(Found(kind, colour, x, 0.5, 400) for kind, colour, x in shapes))


def test_relation_pictures_are_sorted_by_what_stands_in_for_the_missing_shape():
    cases = {
        "right": reading(("circle", "red", 0.25), ("square", "yellow", 0.75)),
        "both shapes, swapped": reading(("circle", "red", 0.75), ("square", "yellow", 0.25)),
        "neither shape": reading(("star", "green", 0.25), ("cross", "white", 0.75)),
        "only the subject, twice": reading(("circle", "red", 0.25), ("circle", "red", 0.75)),
        "only the object, once": reading(("square", "yellow", 0.75)),
        "the subject, and the other's kind in another colour": reading(("circle", "red", 0.2), ("square", "red", 0.8)),
        "the object, and the other's colour on another kind": reading(("star", "red", 0.2), ("square", "yellow", 0.8)),
        "the subject, and something else": reading(("circle", "red", 0.25), ("star", "green", 0.75)),
    }
    assert {name: relation_failure(picture, RELATION) for name, picture in cases.items()} == {n: n for n in cases}
    above = (Found("circle", "red", 0.5, 0.2, 400), Found("square", "yellow", 0.5, 0.8, 400))
    one_above_the_other = Reading("blue", above)
    assert relation_failure(one_above_the_other, RELATION) == "both shapes, other axis"


def test_relation_pictures_with_both_shapes_say_what_is_wrong_with_their_places():
    above = Composition(
        "relation", "circle", "red", "blue", relation="above", other_kind="square", other_colour="yellow"
    )
    red, yellow = ("circle", "red"), ("square", "yellow")

    def at(*shapes: tuple[tuple[str, str], float, float], background: str = "blue") -> Reading:
        return Reading(background, tuple(Found(k, c, x, y, 400) for (k, c), x, y in shapes))

    assert relation_failure(at((red, 0.5, 0.2), (yellow, 0.5, 0.8)), above) == "right"
    assert relation_failure(at((red, 0.5, 0.8), (yellow, 0.5, 0.2)), above) == "both shapes, swapped"
    assert relation_failure(at((red, 0.2, 0.5), (yellow, 0.8, 0.5)), above) == "both shapes, other axis"
    assert relation_failure(at((red, 0.5, 0.48), (yellow, 0.5, 0.52)), above) == "both shapes, too close"
    in_place = "both shapes in place, more shapes or another background"
    assert relation_failure(at((red, 0.5, 0.2), (yellow, 0.5, 0.8), (("star", "green"), 0.2, 0.5)), above) == in_place
    assert relation_failure(at((red, 0.5, 0.2), (yellow, 0.5, 0.8), background="green"), above) == in_place


def test_count_pictures_say_how_many_shapes_were_drawn():
    two = Composition("count", "star", "red", "blue", count=2)
    assert count_failure(reading(("star", "red", 0.2), ("star", "red", 0.8)), two) == "right"
    three = reading(("star", "red", 0.2), ("star", "red", 0.5), ("star", "red", 0.8))
    assert count_failure(three, two) == "asked 2, drew 3"
    assert count_failure(reading(("star", "red", 0.2), ("circle", "red", 0.8)), two) == (
        "the number asked, a wrong kind or colour"
    )


def test_text_difference_is_nothing_for_one_prompt_and_something_for_another_word():
    """The measure behind the report's `text_difference` (the relation's direction against the object's colour), on a
    randomly initialised miniature: the same prompt twice gives the same features; a changed colour word moves them."""
    pipe = build_demo_pipeline(words=vocabulary())
    assert text_difference(pipe, RELATION.prompt, RELATION.prompt) < 1e-5
    recoloured = RELATION.prompt.replace("yellow", "green")
    assert text_difference(pipe, RELATION.prompt, recoloured) > 0.01
    separation = text_separation(pipe, [RELATION])
    assert set(separation) == {"direction swapped", "object colour swapped", "single shape's place swapped"}
    assert separation["direction swapped"] == text_difference(
        pipe, RELATION.prompt, RELATION.prompt.replace("left", "right")
    )
    distances = word_distances(pipe, pairs=(("left", "right"), ("left", "left")))
    assert distances["left/left"] < 1e-5 < distances["left/right"]


def test_the_order_of_a_relations_two_shapes_is_read_whatever_was_asked():
    right_of = Composition(
        "relation", "circle", "red", "blue", relation="right", other_kind="square", other_colour="yellow"
    )
    left_to_right = reading(("circle", "red", 0.25), ("square", "yellow", 0.75))
    assert subject_first(left_to_right, RELATION) == subject_first(left_to_right, right_of) == "subject first"
    assert subject_first(reading(("square", "yellow", 0.25), ("circle", "red", 0.75)), RELATION) == "subject second"
    assert subject_first(reading(("circle", "red", 0.25)), RELATION) is None
