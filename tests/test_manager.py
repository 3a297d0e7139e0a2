import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import Krea2Pipeline

from krea2 import Cancelled, GenerationFailed, GenerationRequest
from krea2.errors import ContentBlocked
from krea2.generation import MAX_SEQUENCE_LENGTH, Generated, PhaseTimings, in_parts
from krea2.loading import derive_prompt_template_lengths

SMALL = {"width": 256, "height": 256}


def pixels(result, k=0):
    return np.asarray(result.images[k], dtype=np.int16)


def test_same_seed_same_pixels_different_seed_differs(manager):
    a = manager.generate(GenerationRequest(prompt="a red fox", seed=7, **SMALL))
    b = manager.generate(GenerationRequest(prompt="a red fox", seed=7, **SMALL))
    c = manager.generate(GenerationRequest(prompt="a red fox", seed=8, **SMALL))
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))
    assert a.request.seed == 7 and a.seeds == [7]


def test_raw_differs_from_turbo_and_switching_never_reloads(manager):
    loads = manager.load_count
    turbo = manager.generate(GenerationRequest(prompt="a red fox", seed=1, **SMALL))
    raw = manager.generate(GenerationRequest(prompt="a red fox", checkpoint="raw", seed=1, steps=4, **SMALL))
    manager.generate(GenerationRequest(prompt="a red fox", seed=1, **SMALL))
    assert not np.array_equal(pixels(turbo), pixels(raw))
    assert manager.load_count == loads == 2


def test_prompt_is_encoded_once_across_checkpoints(manager):
    hits, misses = manager.prompt_cache.hits, manager.prompt_cache.misses
    manager.generate(GenerationRequest(prompt="cache me once", seed=1, **SMALL))
    manager.generate(GenerationRequest(prompt="cache me once", checkpoint="raw", guidance=0, steps=2, **SMALL))
    assert manager.prompt_cache.misses == misses + 1
    assert manager.prompt_cache.hits == hits + 1


def test_cached_embeddings_hold_no_autograd_graph(manager):
    """A cached prompt must be just its embeddings: a grad graph would pin every encoder activation in memory."""
    embeds, mask = manager.encode("no graph please")
    assert not embeds.requires_grad and embeds.grad_fn is None
    assert mask.dtype == torch.bool


def test_random_seed_is_reported_and_reproduces(manager):
    first = manager.generate(GenerationRequest(prompt="seedless", **SMALL))
    assert 0 <= first.request.seed < 2**32
    again = manager.generate(GenerationRequest(prompt="seedless", seed=first.request.seed, **SMALL))
    assert np.array_equal(pixels(first), pixels(again))


def test_each_image_of_a_batch_reproduces_alone(manager):
    batch = manager.generate(GenerationRequest(prompt="batch", seed=10, num_images=2, **SMALL))
    assert batch.seeds == [10, 11]
    second = manager.generate(GenerationRequest(prompt="batch", seed=11, **SMALL))
    assert np.abs(pixels(batch, 1) - pixels(second)).max() <= 1


def test_a_plan_that_holds_one_image_runs_a_batch_one_image_at_a_time(manager, monkeypatch):
    """A small GPU's plan (`images_at_once` 1): a 3-image request runs three pipeline calls of one image each, gives
    the images a 3-image call gives (each reproduces alone), and counts its progress over all of them."""
    together = manager.generate(GenerationRequest(prompt="parts", seed=20, num_images=3, steps=2, **SMALL))
    monkeypatch.setattr(manager, "plan", replace(manager.plan, images_at_once=1))
    batches: list[int] = []
    hook = manager.pipes["turbo"].transformer.register_forward_pre_hook(
        lambda _module, args, kwargs: batches.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    progress: list[tuple[int, int]] = []
    try:
        parts = manager.generate(
            GenerationRequest(prompt="parts", seed=20, num_images=3, steps=2, **SMALL),
            on_step=lambda i, n, _preview: progress.append((i, n)),
        )
    finally:
        hook.remove()
    assert batches == [1] * 6  # three calls of two steps, one image each
    assert progress == [(i, 6) for i in range(1, 7)]
    assert parts.seeds == together.seeds == [20, 21, 22] and len(parts.images) == 3
    for k in range(3):
        assert np.abs(pixels(parts, k) - pixels(together, k)).max() <= 1
    assert parts.timings.total_s >= parts.timings.denoise_s > 0


def test_a_batch_in_parts_is_all_or_nothing():
    """A part that is cancelled or blocked ends the request: no image of an earlier part comes back, and a block is
    reported for the whole request (its history row), not for the part."""
    request = GenerationRequest(prompt="parts", seed=5, num_images=3, steps=2, **SMALL)
    ran: list[GenerationRequest] = []

    def run(fail: Exception):
        def one_part(part, on_step):
            ran.append(part)
            if len(ran) == 2:
                raise fail
            on_step(1, 2, None)
            return Generated(images=["image"], timings=PhaseTimings(), peak_gpu_bytes=None)

        return one_part

    flagged = "The content filter flagged this image as nudity (score 0.91), so nothing was saved or shown."
    with pytest.raises(ContentBlocked) as blocked:
        in_parts(request, 1, lambda *_: None, run(ContentBlocked(flagged, "the part")))
    assert blocked.value.request is request and [part.seed for part in ran] == [5, 6]
    assert str(blocked.value).startswith("The content filter flagged image 2 of 3 as nudity (score 0.91)")
    ran.clear()
    with pytest.raises(Cancelled):
        in_parts(request, 2, lambda *_: None, run(Cancelled()))
    assert [(part.seed, part.num_images) for part in ran] == [(5, 2), (7, 1)]


def test_timings_and_preview(manager):
    previews = []
    result = manager.generate(
        GenerationRequest(prompt="timed", seed=1, **SMALL), on_step=lambda i, n, img: previews.append((i, n, img.size))
    )
    assert [p[0] for p in previews] == list(range(1, 9)) and all(p[1] == 8 for p in previews)
    assert previews[0][2] == (32, 32)  # 1/8 of 256
    assert (result.peak_gpu_bytes is None) == (manager.device.type == "cpu")  # measured on a GPU only


def test_each_phase_is_charged_with_its_own_work(manager):
    """A known delay in the text encoder, in every transformer call and in the VAE decoder lands in the phase that
    owns it: a phase boundary marked too early or too late moves a delay into a neighbour and fails a bound."""
    encode_delay, step_delay, decode_delay, steps = 0.3, 0.1, 0.3, 4
    pipe = manager.pipes["turbo"]

    def sleep(seconds: float):
        return lambda *_args: time.sleep(seconds)

    hooks = [
        pipe.text_encoder.register_forward_hook(sleep(encode_delay)),
        pipe.transformer.register_forward_pre_hook(sleep(step_delay)),
        pipe.vae.decoder.register_forward_pre_hook(sleep(decode_delay)),  # hooked: the stock decoder runs, with it
    ]
    try:
        result = manager.generate(GenerationRequest(prompt="a prompt timed once", seed=1, steps=steps, **SMALL))
    finally:
        for hook in hooks:
            hook.remove()
    timings = result.timings
    assert timings.encode_s >= encode_delay
    assert timings.denoise_s >= steps * step_delay  # Turbo: one transformer call per step
    assert timings.decode_s >= decode_delay
    assert timings.total_s >= encode_delay + steps * step_delay + decode_delay
    assert timings.as_ms()["denoise_ms"] == round(timings.denoise_s * 1000)


def test_cancel_stops_within_one_step(manager):
    cancel = threading.Event()
    seen = []

    def on_step(i, n, _preview):
        seen.append(i)
        if i == 3:
            cancel.set()

    with pytest.raises(Cancelled):
        manager.generate(GenerationRequest(prompt="stop me", checkpoint="raw", seed=1, **SMALL), on_step, cancel)
    assert seen == [1, 2, 3]


def test_manager_cancel_reaches_the_running_generation(manager):
    started = threading.Event()

    def on_step(i, n, _preview):
        started.set()

    errors = []

    def run():
        try:
            manager.generate(GenerationRequest(prompt="long", checkpoint="raw", steps=100, **SMALL), on_step)
        except Cancelled as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(30)
    assert manager.cancel()
    thread.join(30)
    assert errors and not manager.cancel()


def test_nan_output_is_an_error_not_an_image(manager):
    vae = manager.pipes["turbo"].vae
    handle = vae.decoder.register_forward_hook(lambda _m, _i, out: out * float("nan"))
    try:
        with pytest.raises(GenerationFailed, match="NaN"):
            manager.generate(GenerationRequest(prompt="nan", seed=1, **SMALL))
    finally:
        handle.remove()


def test_all_black_output_is_an_error(manager):
    vae = manager.pipes["turbo"].vae
    handle = vae.decoder.register_forward_hook(lambda _m, _i, out: torch.full_like(out, -1.0))
    try:
        with pytest.raises(GenerationFailed, match="all-black"):
            manager.generate(GenerationRequest(prompt="black", seed=1, **SMALL))
    finally:
        handle.remove()


@pytest.mark.parametrize("checkpoint", ["turbo", "raw"])
def test_parity_with_stock_pipeline(manager, checkpoint):
    """The manager's image equals stock Krea2Pipeline's for the same components, prompt and seed."""
    request = GenerationRequest(
        prompt="parity fox", checkpoint=checkpoint, negative_prompt="blurry", seed=5, steps=4, **SMALL
    )
    ours = manager.generate(request)
    pipe = manager.pipes[checkpoint]
    stock = Krea2Pipeline(
        **pipe.components,
        text_encoder_select_layers=pipe.text_encoder_select_layers,
        is_distilled=pipe.config.is_distilled,
    )
    derive_prompt_template_lengths(stock)
    stock.set_progress_bar_config(disable=True)
    reference = stock(
        prompt=request.prompt,
        negative_prompt=request.effective_negative_prompt,
        guidance_scale=request.guidance,
        num_inference_steps=request.steps,
        width=request.width,
        height=request.height,
        generator=[torch.Generator("cpu").manual_seed(5)],
        output_type="np",
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    ).images[0]
    ours_np = np.asarray(ours.images[0], dtype=np.float64) / 255
    assert np.abs(ours_np - reference).max() <= 2 / 255  # PAD-free attention: same math, other summation order


@pytest.mark.parametrize("prompt", ["a fox", "long " * 700])  # the second is cut at the stock truncation length
def test_text_encoder_without_padding_matches_stock_real_tokens(manager, prompt):
    """The PAD-free encoder reads only real tokens; its features equal stock's padded run at the real positions."""
    pipe = manager.pipes["turbo"]
    stock = Krea2Pipeline(
        **pipe.components, text_encoder_select_layers=pipe.text_encoder_select_layers, is_distilled=True
    )
    derive_prompt_template_lengths(stock)
    with torch.inference_mode():
        ours, ours_mask = pipe.get_text_hidden_states(prompt, MAX_SEQUENCE_LENGTH)
        reference, mask = stock.get_text_hidden_states(prompt, MAX_SEQUENCE_LENGTH)
    assert bool(ours_mask.all())
    assert ours.shape[1] == int(mask.sum())
    torch.testing.assert_close(ours, reference[:, mask[0]], rtol=1e-4, atol=1e-4)
