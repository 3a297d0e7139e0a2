"""ModelManager: keeps Raw and Turbo warm side by side and runs one generation at a time per GPU."""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from PIL import Image

from .checkpoints import CHECKPOINTS, RAW, TURBO
from .errors import Cancelled, GenerationFailed, Krea2Error, LoadError, NotReady
from .loading import build_pipeline_sharing, derive_prompt_template_lengths
from .pipeline import Krea2StudioPipeline, drop_padding
from .placement import Placement, apply_placement, choose_placement, unique_modules, weight_bytes
from .preview import QWEN_IMAGE_LATENT_RGB, LatentRGB, StepCallback, StepPreviews
from .prompt_cache import LRUCache
from .request import MAX_SEED, GenerationRequest, random_seed
from .step_cache import step_cache_of
from .text_graphs import TextEncoderGraphs
from .vae_decode import use_single_frame_decode

if TYPE_CHECKING:
    from .loading import PipelineLoader

log = logging.getLogger(__name__)

MAX_SEQUENCE_LENGTH = 512  # the text length Krea 2 was trained with


@dataclass
class CheckpointStatus:
    state: str = "loading"  # loading | ready | failed
    reason: str = ""


@dataclass
class ManagerStatus:
    device: str
    placement: str
    demo: bool
    checkpoints: dict[str, CheckpointStatus]
    warmup: str = "off"  # off | running | ready | failed
    fast_path: str = ""  # what of the fast path is active, e.g. "fp8 + FlashAttention-4"

    def summary(self) -> str:
        parts = [f"device {self.device}", f"placement {self.placement}"]
        for key, status in self.checkpoints.items():
            text = f"{CHECKPOINTS[key].display_name}: {status.state}"
            parts.append(text + (f" ({status.reason})" if status.reason else ""))
        if self.warmup != "off":
            parts.append(f"compile warm-up: {self.warmup}")
        if self.fast_path:
            parts.append(self.fast_path)
        return " | ".join(parts)


@dataclass
class PhaseTimings:
    encode_s: float = 0.0
    denoise_s: float = 0.0
    decode_s: float = 0.0
    total_s: float = 0.0

    def as_ms(self) -> dict[str, int]:
        return {k.removesuffix("_s") + "_ms": round(v * 1000) for k, v in self.__dict__.items()}


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


@dataclass
class FastPathOptions:
    drop_text_padding: bool = True  # exact
    compile: bool = False  # regional compile of the repeated blocks (GPU), warmed up in the background
    fp8: bool = False  # fused projections + torchao fp8 rowwise weights+activations (GPU, compute capability >= 8.9)
    attention: str | None = None  # "flash4", "cudnn-fp8" (fp8, approximate) or a diffusers backend name (GPU)
    step_cache: float | None = None  # Raw only: first-block cache threshold (krea2/step_cache.py); None = off
    prepare_on_cpu: bool = False  # fuse/quantise before the move to the GPU (ZeroGPU: no GPU work at start-up)
    single_frame_decode: bool = True  # exact: the VAE's causal 3D convolutions as 2D ones (krea2/vae_decode.py)
    text_graphs: bool = False  # the text encoder from CUDA graphs (GPU-resident only; krea2/text_graphs.py)
    denoiser_graphs: bool = False  # exact: compiled transformer calls from CUDA graphs (krea2/denoiser_graphs.py)


def image_seeds(seed: int, count: int) -> list[int]:
    return [(seed + k) % (MAX_SEED + 1) for k in range(count)]


class ModelManager:
    """Loads both checkpoints once (in the background), then serves `generate` calls one at a time.

    Raw and Turbo share the text encoder, tokenizer and VAE objects; switching between them never reloads.
    """

    def __init__(
        self,
        loader: PipelineLoader,
        *,
        device: str | None = None,
        placement: str = "auto",
        options: FastPathOptions | None = None,
        prompt_cache_size: int = 8,
        demo: bool = False,
    ) -> None:
        self.loader = loader
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.requested_placement = placement
        self.placement: Placement | str = "pending"
        self.options = options or FastPathOptions()
        self.demo = demo
        self.pipes: dict[str, Krea2StudioPipeline] = {}
        self.load_count = 0  # how many checkpoints were read from disk: tests use it to prove switching is free
        self._status = {key: CheckpointStatus() for key in CHECKPOINTS}
        self._warmup = "off"
        self._ready = threading.Event()
        self._generate_lock = threading.Lock()
        self._cancel_current: threading.Event | None = None
        self._prompt_cache: LRUCache[tuple[torch.Tensor, torch.Tensor]] = LRUCache(prompt_cache_size)
        self._loader_thread: threading.Thread | None = None
        self.latent_rgb: LatentRGB = QWEN_IMAGE_LATENT_RGB  # the live preview's colours, set with the VAE at load

    # ----------------------------------------------------------------------------------------------- loading
    def start(self, background: bool = True) -> None:
        """Load both checkpoints; in the background by default so a UI can show progress meanwhile."""
        if background:
            self._loader_thread = threading.Thread(target=self._load_all, name="krea2-loader", daemon=True)
            self._loader_thread.start()
        else:
            self._load_all()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def _load_all(self) -> None:
        try:
            turbo = self._wrap(self.loader.load_full(TURBO))
            self.latent_rgb = self.loader.latent_rgb(TURBO)
            self.load_count += 1
            self.pipes["turbo"] = turbo
            self.pipes["raw"] = self._wrap_shared(turbo, self.loader.load_transformer(RAW))
            self.load_count += 1
            self._place()
            for key in CHECKPOINTS:
                self._status[key] = CheckpointStatus("ready")
            log.info("Checkpoints ready: %s", self.status().summary())
            if self.options.compile:
                self._start_warmup()
        except Krea2Error as error:
            self._fail(error)
        except Exception as error:
            log.exception("Unexpected error while loading")
            self._fail(LoadError(f"loading failed: {type(error).__name__}: {error}"))
        finally:
            self._ready.set()

    def _fail(self, error: Exception) -> None:
        log.error("%s", error)
        for key, status in self._status.items():
            if status.state != "ready":
                self._status[key] = CheckpointStatus("failed", str(error))
        self.pipes = {k: p for k, p in self.pipes.items() if self._status[k].state == "ready"}

    def _wrap(self, pipe) -> Krea2StudioPipeline:
        """Loaded pipelines become the studio subclass over the very same component objects."""
        studio = Krea2StudioPipeline(
            **pipe.components,
            text_encoder_select_layers=pipe.text_encoder_select_layers,
            is_distilled=pipe.config.is_distilled,
        )
        studio.drop_text_padding = self.options.drop_text_padding
        derive_prompt_template_lengths(studio)
        studio.set_progress_bar_config(disable=True)
        return studio

    def _wrap_shared(self, base: Krea2StudioPipeline, transformer) -> Krea2StudioPipeline:
        return self._wrap(build_pipeline_sharing(base, transformer, RAW))

    def _place(self) -> None:
        modules = unique_modules(list(self.pipes.values()))
        self.placement = choose_placement(self.requested_placement, self.device, weight_bytes(modules))
        options = self.options
        gpu_only = (options.fp8, options.attention, options.compile, options.text_graphs, options.denoiser_graphs)
        if self.placement != "gpu" and any(gpu_only):
            # Offload was measured in bf16 with stock attention and no compile (bench/results/*memory24gb*); fp8 and
            # compile on top of group offloading were never run together, so they are not switched on here. CUDA
            # graphs hold the addresses of weights that offloading moves.
            log.info("Placement %s: fp8, compile, the attention kernel and CUDA graphs are off", self.placement)
            self.options = replace(
                options, fp8=False, compile=False, attention=None, text_graphs=False, denoiser_graphs=False
            )
        self._install_shared_speedups()
        if self.options.step_cache is not None and "raw" in self.pipes:
            from .step_cache import install_step_cache

            install_step_cache(self.pipes["raw"].transformer, self.options.step_cache)
        prepare = self.device.type == "cuda" and (self.options.fp8 or self.options.attention)
        if prepare and self.options.prepare_on_cpu:
            self._prepare_transformers()
        apply_placement(modules, self.placement, self.device)
        if prepare and not self.options.prepare_on_cpu:
            # On the GPU, as the benchmark measured it (quantising there takes seconds); the bf16 weights fit there by
            # the placement rule, and quantising frees half of the transformers' memory afterwards.
            self._prepare_transformers()
        log.info("Placement: %s on %s", self.placement, self.device)

    def _install_shared_speedups(self) -> None:
        """The exact speed-ups of the components Raw and Turbo share: single-frame VAE decode, text encoder graphs."""
        for pipe in self.pipes.values():
            use_single_frame_decode(pipe.vae, self.options.single_frame_decode)
        if self.options.text_graphs and self.pipes:
            base = self.pipes.get("turbo") or next(iter(self.pipes.values()))
            graphs = TextEncoderGraphs(
                base.text_encoder, base.text_encoder_select_layers, pad_id=base.tokenizer.pad_token_id or 0
            )
            for pipe in self.pipes.values():
                pipe.text_graphs = graphs  # one encoder, one set of graphs

    def _prepare_transformers(self) -> None:
        from .acceleration import prepare_transformer

        for pipe in self.pipes.values():
            prepare_transformer(pipe.transformer, fp8=self.options.fp8, attention=self.options.attention)

    def _start_warmup(self) -> None:
        from .acceleration import compile_and_warm_up

        def run() -> None:
            self._warmup = "running"
            try:
                with self._generate_lock:
                    compile_and_warm_up(self)
                self._warmup = "ready"
            except Exception:
                log.exception("Compile warm-up failed; continuing uncompiled")
                self._warmup = "failed"

        threading.Thread(target=run, name="krea2-warmup", daemon=True).start()

    def status(self) -> ManagerStatus:
        return ManagerStatus(
            device=str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device),
            placement=str(self.placement),
            demo=self.demo,
            checkpoints={k: CheckpointStatus(s.state, s.reason) for k, s in self._status.items()},
            warmup=self._warmup,
            fast_path=self._fast_path_summary(),
        )

    def _fast_path_summary(self) -> str:
        if not any(status.state == "ready" for status in self._status.values()):  # options settle at placement
            return ""
        options, parts = self.options, []
        if options.fp8:
            parts.append("fp8")
        if options.attention:
            from .attention import KERNEL_NAMES

            parts.append(KERNEL_NAMES.get(options.attention, f"attention {options.attention}"))
        if options.denoiser_graphs and options.compile:
            parts.append("CUDA graphs")
        if options.step_cache is not None:
            parts.append(f"Raw step cache {options.step_cache:g}")
        return " + ".join(parts)

    # ----------------------------------------------------------------------------------------------- prompts
    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings (cached; Raw and Turbo share the encoder, so one entry serves both)."""
        pipe = self._pipe("turbo") if "turbo" in self.pipes else next(iter(self.pipes.values()))

        @torch.inference_mode()  # outside the pipeline's no_grad: without this autograd keeps every encoder
        def compute() -> tuple[torch.Tensor, torch.Tensor]:  # layer's activations alive in the cache (GBs/prompt)
            embeds, mask = pipe.get_text_hidden_states(text, MAX_SEQUENCE_LENGTH, pipe._execution_device)
            if pipe.drop_text_padding:
                embeds, mask = drop_padding(embeds, mask)
            return embeds, mask

        return self._prompt_cache.get_or_compute((text, MAX_SEQUENCE_LENGTH, pipe.drop_text_padding), compute)

    @property
    def prompt_cache(self) -> LRUCache:
        return self._prompt_cache

    def prompt_warnings(self, request: GenerationRequest) -> list[str]:
        """The encoder reads a fixed window of tokens; say so when a prompt is cut."""
        pipe = self._pipe(request.checkpoint)
        capacity = MAX_SEQUENCE_LENGTH - pipe.prompt_template_encode_num_suffix_tokens
        warnings = []
        for name, text in (("prompt", request.prompt), ("negative prompt", request.effective_negative_prompt)):
            if text:
                count = len(pipe.tokenizer(text).input_ids)
                if count > capacity:
                    warnings.append(f"The {name} is {count} tokens; only the first {capacity} are used.")
        return warnings

    # ----------------------------------------------------------------------------------------------- generation
    def _pipe(self, key: str) -> Krea2StudioPipeline:
        status = self._status[key]
        if status.state != "ready":
            name = CHECKPOINTS[key].display_name
            raise NotReady(f"{name} is {status.state}" + (f": {status.reason}" if status.reason else "; try again."))
        return self.pipes[key]

    def cancel(self) -> bool:
        """Stop the running generation within one step. Returns whether one was running."""
        event = self._cancel_current
        if event is None:
            return False
        event.set()
        return True

    def generate(
        self,
        request: GenerationRequest,
        on_step: StepCallback | None = None,
        cancel_event: threading.Event | None = None,
    ) -> GenerationResult:
        pipe = self._pipe(request.checkpoint)  # fail fast, before waiting for the GPU
        cancel_event = cancel_event or threading.Event()
        with self._generate_lock:
            self._cancel_current = cancel_event
            try:
                return self._generate_locked(pipe, request, on_step, cancel_event)
            except torch.OutOfMemoryError as error:
                # Free what the failed attempt cached so the next request starts clean. Only here: emptying the
                # cache after every image would make the next one pay for cudaMalloc again.
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                raise GenerationFailed(
                    "The GPU ran out of memory. Try a smaller size or fewer images"
                    + ("." if self.placement == "offload" else ", or start with --placement offload.")
                ) from error
            finally:
                self._cancel_current = None

    def pipeline_inputs(self, request: GenerationRequest) -> dict:
        """The pipeline arguments a request fixes: its (cached) prompt embeddings and its settings."""
        embeds, mask = self.encode(request.prompt)
        negative = request.effective_negative_prompt
        neg_embeds, neg_mask = self.encode(negative) if negative is not None else (None, None)
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

    def _generate_locked(
        self,
        pipe: Krea2StudioPipeline,
        request: GenerationRequest,
        on_step: StepCallback | None,
        cancel_event: threading.Event,
    ) -> GenerationResult:
        # 1. Seed: drawn here when not given; image k uses seed + k.
        seed = request.seed if request.seed is not None else random_seed()
        request = request.with_seed(seed)
        seeds = image_seeds(seed, request.num_images)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]  # CPU noise: same on every device
        if cancel_event.is_set():
            raise Cancelled()

        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        if (cache := step_cache_of(pipe.transformer)) is not None:
            cache.reset()  # residuals from another image must never be reused
        sync = torch.cuda.synchronize if cuda else (lambda *a: None)
        start = time.perf_counter()

        # 2. Encode the prompt(s) through the shared cache.
        inputs = self.pipeline_inputs(request)
        sync()
        encoded_at = time.perf_counter()

        # 3. Denoise; the step callback previews, honours cancel and timestamps the end of the loop.
        denoised_at = [encoded_at]
        previews = None
        if on_step is not None:
            previews = StepPreviews(on_step, request.steps, request.height, request.width, self.device, self.latent_rgb)

        def on_step_end(_pipe, i: int, _t, tensors: dict) -> dict:
            if cancel_event.is_set():
                raise Cancelled()
            if previews is not None:
                previews.push(i + 1, tensors["latents"])
            if i + 1 == request.steps:
                sync()
                if previews is not None:
                    previews.flush()
                denoised_at[0] = time.perf_counter()
            return {}

        output = pipe(
            **inputs,
            num_images_per_prompt=request.num_images,
            generator=generators,
            output_type="pt",  # stays on the device: `to_pil_images` checks and converts it there
            callback_on_step_end=on_step_end,
        )
        # 4. Decoded: check, then hand back PIL images.
        images = to_pil_images(output.images)
        sync()
        finished_at = time.perf_counter()
        timings = PhaseTimings(
            encode_s=encoded_at - start,
            denoise_s=denoised_at[0] - encoded_at,
            decode_s=finished_at - denoised_at[0],
            total_s=finished_at - start,
        )
        return GenerationResult(
            request=request,
            images=images,
            seeds=seeds,
            timings=timings,
            peak_gpu_bytes=torch.cuda.max_memory_allocated(self.device) if cuda else None,
            device=self.status().device,
            placement=str(self.placement),
            warnings=self.prompt_warnings(request),
        )


def to_pil_images(batch: torch.Tensor) -> list[Image.Image]:
    """A decoded (images, 3, height, width) batch in [0, 1] as 8-bit PIL images, refusing garbage: NaN anywhere, or an
    image with nothing brighter than one grey level.

    The checks and the 8-bit rounding run where the batch is (the GPU), so only the 8-bit pixels cross to the CPU.
    The rounding is diffusers' own (`numpy_to_pil`: float32, times 255, round half to even), so the pixels are the
    ones `output_type="pil"` would give."""
    batch = batch.float()
    if not bool(torch.isfinite(batch).all()):
        raise GenerationFailed("The model produced NaN values; no image was saved. Try another seed or settings.")
    if bool((batch.amax(dim=(1, 2, 3)) < 1.0 / 255).any()):
        raise GenerationFailed("The model produced an all-black image; no image was saved.")
    pixels = (batch * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
    return [Image.fromarray(image) for image in pixels]
