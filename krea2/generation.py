"""One generation from request to checked images, each phase timed: encode the prompt(s), denoise (with step previews
and cancel), decode to 8-bit images. The manager runs it under its GPU lock; nothing here knows about threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from PIL import Image

from .content_filter import ImageClassifierFilter, blocked_images
from .errors import Cancelled, ContentBlocked, GenerationFailed, NonFiniteImage
from .image_to_image import start_from_image
from .lru_cache import LRUCache
from .pipeline import Krea2StudioPipeline
from .preview import FILTERED_PREVIEW_CELLS, LatentRGB, StepCallback, StepPreviews
from .request import GenerationRequest
from .speedups.step_cache import step_cache_of

MAX_SEQUENCE_LENGTH = 512  # the text length Krea 2 was trained with

PromptEmbeddings = tuple[torch.Tensor, torch.Tensor]  # (1, tokens, layers, hidden) features and their (1, tokens) mask


@dataclass
class PhaseTimings:
    encode_s: float = 0.0
    denoise_s: float = 0.0
    decode_s: float = 0.0
    total_s: float = 0.0

    def as_ms(self) -> dict[str, int]:
        return {k.removesuffix("_s") + "_ms": round(v * 1000) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class AppliedLora:
    """A LoRA as a generation ran with it: its name, its file's AutoV3 hash (64 hex digits), its weight and the
    checkpoint it was applied to."""

    name: str
    hash: str
    weight: float
    checkpoint: str


@dataclass
class GenerationResult:
    request: GenerationRequest  # with the seed actually used filled in
    images: list[Image.Image]
    seeds: list[int]  # image k uses seed + k, so each image can be reproduced alone
    timings: PhaseTimings
    peak_gpu_bytes: int | None
    device: str
    placement: str
    warnings: list[str] = field(default_factory=list)
    loras: list[AppliedLora] = field(default_factory=list)


@dataclass
class Generated:
    """What `generate` produces; the manager adds where it ran."""

    images: list[Image.Image]
    timings: PhaseTimings
    peak_gpu_bytes: int | None


class PhaseClock:
    """The end of each phase of one generation, in wall-clock seconds since its start. On a GPU each mark first waits
    for the work queued so far, so a phase is charged with its own kernels, not the next one's."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ends: dict[str, float] = {}
        self.start = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def end(self, phase: str) -> None:
        self.ends[phase] = self._now()

    def timings(self) -> PhaseTimings:
        encoded, denoised, decoded = self.ends["encode"], self.ends["denoise"], self.ends["decode"]
        return PhaseTimings(
            encode_s=encoded - self.start,
            denoise_s=denoised - encoded,
            decode_s=decoded - denoised,
            total_s=decoded - self.start,
        )


def encode_prompt(pipe: Krea2StudioPipeline, text: str, cache: LRUCache[PromptEmbeddings]) -> PromptEmbeddings:
    """The prompt's PAD-free embeddings, computed once per text: Raw and Turbo share the text encoder, so one cache
    entry serves both."""

    @torch.inference_mode()  # outside the pipeline's no_grad: without this autograd keeps every encoder
    def compute() -> PromptEmbeddings:  # layer's activations alive in the cache (GBs per prompt)
        return pipe.get_text_hidden_states(text, MAX_SEQUENCE_LENGTH, pipe._execution_device)

    return cache.get_or_compute((text, MAX_SEQUENCE_LENGTH), compute)


def pipeline_inputs(pipe: Krea2StudioPipeline, request: GenerationRequest, cache: LRUCache[PromptEmbeddings]) -> dict:
    """The pipeline arguments a request fixes: its (cached) prompt embeddings and its settings."""
    embeds, mask = encode_prompt(pipe, request.prompt, cache)
    negative = request.effective_negative_prompt
    neg_embeds, neg_mask = encode_prompt(pipe, negative, cache) if negative is not None else (None, None)
    return {
        "prompt_embeds": embeds,
        "prompt_embeds_mask": mask,
        "negative_prompt_embeds": neg_embeds,
        "negative_prompt_embeds_mask": neg_mask,
        "guidance_scale": request.guidance,
        "num_inference_steps": request.steps,
        "height": request.height,
        "width": request.width,
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
    }


def prompt_warnings(pipe: Krea2StudioPipeline, request: GenerationRequest) -> list[str]:
    """The encoder reads a fixed window of tokens; say so when a prompt is cut."""
    capacity = MAX_SEQUENCE_LENGTH - pipe.prompt_template_encode_num_suffix_tokens
    warnings = []
    for name, text in (("prompt", request.prompt), ("negative prompt", request.effective_negative_prompt)):
        if text:
            count = len(pipe.tokenizer(text).input_ids)
            if count > capacity:
                warnings.append(f"The {name} is {count} tokens; only the first {capacity} are used.")
    return warnings


def generate(
    pipe: Krea2StudioPipeline,
    request: GenerationRequest,
    *,
    prompt_cache: LRUCache[PromptEmbeddings],
    device: torch.device,
    latent_rgb: LatentRGB,
    on_step: StepCallback | None = None,
    cancel_event: threading.Event | None = None,
    image_filter: ImageClassifierFilter | None = None,
    measure_peak: bool = True,
    images_at_once: int = 0,
) -> Generated:
    """Run `request` (its seed already drawn: `request.seeded()`) on `pipe`. Raises Cancelled within one step of
    `cancel_event`, GenerationFailed for unusable output, ContentBlocked when `image_filter` flags any image (the
    previews were mosaics then, and no image of the batch is made). `measure_peak` False leaves the device's peak-memory
    counter alone (it is one per device): the manager's background compile runs beside a user's generation.
    `images_at_once` (0: all): a batch larger than that runs in parts (`in_parts`), as a small GPU's plan asks."""
    if request.seed is None:
        raise ValueError("generate needs a seeded request (GenerationRequest.seeded)")
    if 0 < images_at_once < request.num_images:

        def run(part: GenerationRequest, part_on_step: StepCallback | None) -> Generated:
            return generate(
                pipe, part, prompt_cache=prompt_cache, device=device, latent_rgb=latent_rgb, on_step=part_on_step,
                cancel_event=cancel_event, image_filter=image_filter, measure_peak=measure_peak,
            )  # fmt: skip

        return in_parts(request, images_at_once, on_step, run)
    cancel_event = cancel_event or threading.Event()
    # CPU noise: the same latents, so the same image, on every device.
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in request.image_seeds]
    if cancel_event.is_set():
        raise Cancelled()
    if (cache := step_cache_of(pipe.transformer)) is not None:
        cache.reset()  # residuals from another image must never be reused
    measure = device.type == "cuda" and measure_peak
    if measure:
        torch.cuda.reset_peak_memory_stats(device)
    clock = PhaseClock(device)

    # 1. Encode the prompt(s) through the shared cache.
    inputs = pipeline_inputs(pipe, request, prompt_cache)
    clock.end("encode")

    # 2. From an image: its latents noised to where the schedule's tail starts (image_to_image.py); the pipeline then
    #    runs that tail only, from those latents.
    start = None
    if request.source is not None:
        start = start_from_image(pipe, request, generators, inputs["prompt_embeds"].dtype, device)
        inputs.update(latents=start.latents, sigmas=start.sigmas, num_inference_steps=len(start.sigmas))
    steps = request.denoise_steps

    # 3. Denoise. The step callback honours cancel, keeps an inpaint's unmasked latents on the image's path, hands on
    #    previews, and ends the phase after the last step.
    previews = None
    if on_step is not None:
        cells = FILTERED_PREVIEW_CELLS if image_filter is not None else None
        previews = StepPreviews(on_step, steps, request.height, request.width, device, latent_rgb, cells)

    def on_step_end(_pipe, i: int, _t, tensors: dict) -> dict:
        if cancel_event.is_set():
            raise Cancelled()
        latents = tensors["latents"]
        if start is not None and start.latent_mask is not None:
            latents = start.blend(i, latents)
        if previews is not None:
            previews.push(i + 1, latents)
        if i + 1 == steps:
            if previews is not None:
                previews.flush()
            clock.end("denoise")
        return {"latents": latents}

    output = pipe(
        **inputs,
        num_images_per_prompt=request.num_images,
        generator=generators,
        output_type="pt",  # stays on the device: `to_pil_images` checks and converts it there
        callback_on_step_end=on_step_end,
    )

    # 4. Decoded (inside the pipeline call); an inpaint's unmasked pixels taken back from the image; the content
    #    filter judges the batch where it is (a flagged batch never becomes images), then it is checked and handed
    #    back as PIL images.
    decoded = output.images if start is None else start.composite(output.images)
    if image_filter is not None and (blocked := blocked_images(image_filter.check(decoded), request)):
        raise blocked
    images = to_pil_images(decoded)
    clock.end("decode")
    peak = torch.cuda.max_memory_allocated(device) if measure else None
    return Generated(images=images, timings=clock.timings(), peak_gpu_bytes=peak)


def in_parts(
    request: GenerationRequest,
    images_at_once: int,
    on_step: StepCallback | None,
    run: Callable[[GenerationRequest, StepCallback | None], Generated],
) -> Generated:
    """`request`'s images in consecutive parts of at most `images_at_once`, each a request of its own that `run`
    generates: image k still uses seed + k (a part starts at its first image's seed), so each image is the one a
    request for it alone makes (one call for all of them can differ slightly where a batch shares statistics: Raw's
    step cache, per-tensor fp8 attention scales). Progress counts every part's steps as one run's. All or nothing, as
    one call: a part that is cancelled, fails or is blocked ends the whole request, no image of an earlier part is
    handed back, and a block is reported for the whole request (its history row). An image input is encoded again
    for each part."""
    seeds = request.image_seeds
    parts = [
        replace(request, seed=seeds[start], num_images=len(seeds[start : start + images_at_once]))
        for start in range(0, len(seeds), images_at_once)
    ]
    steps = request.denoise_steps
    results: list[Generated] = []
    for index, part in enumerate(parts):
        part_on_step = None
        if on_step is not None:

            def part_on_step(step: int, _total: int, preview: Image.Image, done: int = index * steps) -> None:
                on_step(done + step, len(parts) * steps, preview)

        try:
            results.append(run(part, part_on_step))
        except ContentBlocked as blocked:
            message = str(blocked)
            if part.num_images == 1:  # the part's "this image" is one of the request's
                first = index * images_at_once + 1
                message = message.replace("this image", f"image {first} of {request.num_images}", 1)
            raise ContentBlocked(message, request) from None
    timings = PhaseTimings(
        **{name: sum(getattr(result.timings, name) for result in results) for name in PhaseTimings.__annotations__}
    )
    peaks = [result.peak_gpu_bytes for result in results if result.peak_gpu_bytes is not None]
    return Generated(
        images=[image for result in results for image in result.images],
        timings=timings,
        peak_gpu_bytes=max(peaks) if peaks else None,
    )


def to_pil_images(batch: torch.Tensor) -> list[Image.Image]:
    """A decoded (images, 3, height, width) batch in [0, 1] as 8-bit PIL images, refusing garbage: NaN anywhere, or an
    image with nothing brighter than one grey level.

    The checks and the 8-bit rounding run where the batch is (the GPU), so only the 8-bit pixels cross to the CPU.
    The rounding is diffusers' own (`numpy_to_pil`: float32, times 255, round half to even), so the pixels are the
    ones `output_type="pil"` would give."""
    batch = batch.float()
    if not bool(torch.isfinite(batch).all()):
        raise NonFiniteImage("The model produced NaN values; no image was saved. Try another seed or settings.")
    if bool((batch.amax(dim=(1, 2, 3)) < 1.0 / 255).any()):
        raise GenerationFailed("The model produced an all-black image; no image was saved.")
    pixels = (batch * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
    return [Image.fromarray(image) for image in pixels]
