"""The trained demo checkpoints, their scene generator and the scorer that reads pictures back from pixels."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from demo.scenes import (
    COLOURS,
    Composition,
    held_out,
    held_out_prompts,
    held_out_triples,
    render,
    sample_scene,
    scene_for,
)
from demo.score import grid_edge_share, judge, read_all, tally
from krea2.request import GenerationRequest


def test_training_never_draws_a_held_out_composition():
    excluded, prompts = held_out_triples(), held_out_prompts()
    rng = random.Random(5)
    scenes = [sample_scene(rng, excluded) for _ in range(3000)]
    assert not [s for s in scenes if any((p.colour, p.kind, s.background) in excluded for p in s.shapes)]
    assert not prompts & {s.caption for s in scenes}
    # Without the exclusion the same sampler does draw them, so the check above can fail.
    rng = random.Random(5)
    unfiltered = [sample_scene(rng) for _ in range(3000)]
    assert [s for s in unfiltered if any((p.colour, p.kind, s.background) in excluded for p in s.shapes)]


def test_held_out_set_is_fixed_and_large_enough():
    first, second = held_out(), held_out()
    assert first == second and len({c.prompt for c in first}) == len(first) >= 200
    assert {c.layout for c in first} == {"single", "count", "relation"}


def test_rendering_is_deterministic():
    scenes = [sample_scene(random.Random(i)) for i in range(6)]
    assert torch.equal(render(scenes, 128, seed=3), render(scenes, 128, seed=3))


def _ground_truth(compositions: list[Composition], seed: int = 0) -> torch.Tensor:
    rng = random.Random(seed)
    return render([scene_for(c, rng) for c in compositions], 256, seed=seed)


def test_scorer_reads_the_generators_pictures():
    compositions = held_out()[::4]  # singles, counts and relations
    readings = read_all(list(_ground_truth(compositions)))
    verdicts = [judge(r, c) for r, c in zip(readings, compositions, strict=True)]
    wrong = [c.prompt for v, c in zip(verdicts, compositions, strict=True) if not v["correct"]]
    assert not wrong, wrong


def test_scorer_refuses_pictures_of_something_else():
    compositions = [c for c in held_out() if c.layout == "single"][:20]
    readings = read_all(list(_ground_truth(compositions)))
    for reading, asked in zip(readings, compositions, strict=True):
        other = next(name for name in COLOURS if name not in (asked.colour, asked.background))
        assert not judge(reading, Composition("single", asked.kind, other, asked.background))["correct"]
        assert not judge(reading, Composition("single", asked.kind, asked.colour, other))["correct"]


def _draw(manager, prompt: str, checkpoint: str = "turbo", seed: int = 1, **fields) -> np.ndarray:
    request = GenerationRequest(prompt=prompt, checkpoint=checkpoint, width=256, height=256, seed=seed, **fields)
    return np.asarray(manager.generate(request).images[0], dtype=np.float32)


@pytest.fixture(scope="module")
def twenty_held_out() -> list[Composition]:
    return [c for c in held_out() if c.layout == "single"][::10]


def _verdicts(manager, compositions: list[Composition], checkpoint: str, **fields) -> dict[str, int]:
    pictures = [_draw(manager, c.prompt, checkpoint, seed=i, **fields) for i, c in enumerate(compositions)]
    return tally(pictures, compositions)


def test_demo_turbo_draws_what_held_out_prompts_ask_and_beats_raw_at_8_steps(manager, twenty_held_out):
    """20 single-shape prompts training never saw, read back from the pixels. Measured on this CPU with the committed
    checkpoints (seeds 0-19, 2026-12-06, session w): Turbo 20/20 backgrounds, colours and fully right (shape kind
    included); Raw cut to Turbo's 8 steps 15/20 colours and 13/20 fully right, which is what distillation buys.
    The thresholds sit below those counts; the checkpoints before the fourth Raw round scored 9/20 on Turbo, the first
    round's 0-1, random weights 0 (demo/results/eval-*.json has all 520 held-out pictures)."""
    turbo = _verdicts(manager, twenty_held_out, "turbo")
    assert turbo["background"] >= 18 and turbo["colour"] >= 18 and turbo["correct"] >= 16, turbo
    raw_8 = _verdicts(manager, twenty_held_out, "raw", steps=8)
    assert turbo["colour"] >= raw_8["colour"] + 3 and turbo["correct"] >= raw_8["correct"] + 4, (turbo, raw_8)


def test_demo_turbo_draws_held_out_relations_and_counts(manager):
    """All 30 held-out relations ("... to the left of ...") and 30 counts ("two ...", "three ..."), Turbo at its
    defaults, seeds 0-29. Measured on this CPU (2026-12-06, session w): relations 27/30 fully right (both shapes, in
    the asked order) against 16/30 for Raw cut to 8 steps; counts 18/30 the right number, 16/30 fully right (Raw at
    8 steps: 14 and 13, too close to test a gap on). The checkpoints before drew 16/30 relations with both shapes
    and 21/30 counts fully right here; those before them (counts scattered over a 3x3 grid) the right number 30 % of
    the time (demo/results/eval-2026-12-03-h200.json), below these thresholds."""
    relations = [c for c in held_out() if c.layout == "relation"]
    turbo = _verdicts(manager, relations, "turbo")
    assert turbo["shapes"] >= 24 and turbo["correct"] >= 22, turbo
    raw_8 = _verdicts(manager, relations, "raw", steps=8)
    assert turbo["correct"] >= raw_8["correct"] + 6, (turbo, raw_8)
    counts = _verdicts(manager, [c for c in held_out() if c.layout == "count"], "turbo")
    assert counts["count"] >= 15 and counts["correct"] >= 13, counts


@pytest.mark.parametrize("checkpoint", ["turbo", "raw"])
def test_a_red_circle_on_a_blue_background(manager, checkpoint):
    """The demo's first example prompt, at each checkpoint's defaults (Raw: 52 steps, guidance 3.5): measured 4 of 4
    seeds read back as a red circle on blue for both."""
    asked = Composition("single", "circle", "red", "blue")
    pictures = [_draw(manager, "a red circle on a blue background", checkpoint, seed=seed) for seed in range(4)]
    assert sum(judge(r, asked)["correct"] for r in read_all(pictures)) >= 3


def test_raw_and_turbo_are_different_models(manager):
    prompt = "a yellow star on a black background"
    raw = _draw(manager, prompt, checkpoint="raw", steps=8)
    turbo = _draw(manager, prompt, checkpoint="turbo", steps=8, guidance=0.0)
    raw_again = _draw(manager, prompt, checkpoint="raw", steps=8)
    assert np.array_equal(raw, raw_again)
    assert np.abs(raw - turbo).mean() > 1.0


def test_live_preview_looks_like_the_picture(manager):
    """The demo VAE ships its own latent->RGB factors (fitted by demo/train.py), and the manager's previews use them:
    the last step's preview matches the decoded picture, far better than the real Qwen-Image VAE's factors do."""
    from krea2.preview import QWEN_IMAGE_LATENT_RGB, preview_pixels

    request = GenerationRequest(prompt="a red circle on a blue background", width=256, height=256, seed=4)
    previews: list[np.ndarray] = []
    result = manager.generate(request, on_step=lambda step, total, image: previews.append(np.asarray(image)))
    picture = torch.from_numpy(np.asarray(result.images[0], dtype=np.float32)).permute(2, 0, 1)[None]
    small = torch.nn.functional.avg_pool2d(picture, 8)[0].permute(1, 2, 0).numpy()

    pipe = manager.pipes["turbo"]
    with torch.inference_mode():
        latents = pipe(
            **manager.pipeline_inputs(request), generator=[torch.Generator("cpu").manual_seed(4)], output_type="latent"
        ).images
    fitted = preview_pixels(latents, 256, 256, manager.latent_rgb.on("cpu")).numpy()
    qwen = preview_pixels(latents, 256, 256, QWEN_IMAGE_LATENT_RGB.on("cpu")).numpy()
    assert np.array_equal(previews[-1], fitted)  # what the user saw
    fitted_error, qwen_error = (np.abs(p.astype(np.float32) - small).mean() for p in (fitted, qwen))
    assert fitted_error < 30 and qwen_error > 1.5 * fitted_error, (fitted_error, qwen_error)


def test_the_demo_banner_names_what_the_demo_model_knows():
    from demo.scenes import KINDS, TEXTURES
    from ui.layout import DEMO_BANNER, DEMO_EXAMPLES

    for word in [*COLOURS, *KINDS, *TEXTURES]:
        assert word in DEMO_BANNER, word
    prompts = held_out_prompts()
    for example in DEMO_EXAMPLES:  # every example is a caption training could have drawn, not a held-out one
        assert example not in prompts
        words = set(example.split())
        assert words & set(COLOURS) and words & (set(KINDS) | {k + "s" for k in KINDS}), example


def test_training_tokenises_captions_as_the_pipeline_does(manager):
    """demo/train.py tokenises its captions once and runs the text encoder on the tokens; the result must be what
    `Krea2Pipeline.get_text_hidden_states` gives for the same captions (what the app sees at generation time)."""
    from demo.train import TEXT_TOKENS, Tokens

    pipe = manager.pipes["turbo"]
    captions = ["a red circle on a blue background", "", "two small green stars on a striped white background"]
    tokens = Tokens(pipe, torch.device("cpu"))
    with torch.inference_mode():
        hidden, mask = tokens.hidden_states(*tokens(captions))
        expected, expected_mask = pipe.get_text_hidden_states(captions, TEXT_TOKENS, torch.device("cpu"))
    assert torch.equal(mask, expected_mask) and mask.sum(dim=1).unique().numel() == 3
    assert torch.equal(hidden, expected)


def test_grid_edge_share_tells_the_pixel_style_from_the_plain_pictures():
    """The measure the style LoRA's tests stand on, checked on ground truth: the generator's mosaic pictures against
    its plain ones, same compositions."""
    compositions = held_out()[:16]
    rng = random.Random(3)
    scenes = [scene_for(c, rng) for c in compositions]
    shares = {}
    for style in ("plain", "pixel"):
        pictures = render([replace(s, style=style) for s in scenes], 256, torch.device("cpu"), seed=3)
        shares[style] = [grid_edge_share((p.permute(1, 2, 0).numpy() * 255).round()) for p in pictures]
    assert min(shares["pixel"]) > 0.95
    assert np.median(shares["plain"]) < 0.3


def test_the_size_check_behind_the_demo_banner_runs(manager):
    """`python -m demo.size_effect` (the banner's "draws best at 256 px"), on its first 6 prompts at 256² only:
    measured 48 of 48 fully right there (demo/results/size-effect-2026-12-06w-cpu.json)."""
    from demo.size_effect import measure

    result = measure(manager, sides=(256,), prompts=6)
    assert set(result["sides"]) == {"256"} and result["prompts"] == 6
    assert result["sides"]["256"]["correct"] >= 4, result


def test_the_committed_demo_weights_stay_within_the_issues_30_mb():
    """Issue 15: the trained weights a fresh clone carries are at most 30 MB (a 256x8 transformer in both Raw and
    Turbo would make ~35 MB; bench/NOTES.md, session q)."""
    from krea2.demo import default_checkpoints_dir

    folder = default_checkpoints_dir()
    total = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    assert 10_000_000 < total <= 30_000_000, total  # the lower bound: the weights are there, not LFS pointers


def test_the_demo_vae_returns_its_own_colours_and_not_others(manager):
    """What the README and the banner say of uploaded pictures: the demo VAE round-trips the generator's ten colours
    and bends the others towards them (measured: pure blue comes back as the palette's blue, 90 off; a sea green as
    black, 135 off; mid-grey as a warm grey, 28 off). When a VAE that knows more colours ships, this test fails and
    the README's "Pictures you upload" paragraph and the banner's sentence go."""
    from demo.scenes import COLOURS
    from demo.train import colour_errors

    named = {**COLOURS, "mid-grey": (128, 128, 128), "pure blue": (0, 0, 255), "sea green": (0, 160, 80)}
    errors = colour_errors(manager.pipes["turbo"].vae, torch.device("cpu"), named.values())
    worst = dict(zip(named, errors, strict=True))
    assert max(worst[name] for name in COLOURS) < 12, worst
    assert worst["mid-grey"] > 20 and worst["pure blue"] > 60 and worst["sea green"] > 100, worst
