"""ModelManager: keeps Raw and Turbo warm side by side and runs one generation at a time per GPU."""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .checkpoints import CHECKPOINTS
from .content_filter import ContentPolicy, ImageClassifierFilter
from .errors import GenerationFailed, Krea2Error, LoadError, NotReady
from .generation import (
    GenerationResult,
    PromptEmbeddings,
    encode_prompt,
    generate,
    pipeline_inputs,
    prompt_warnings,
)
from .loading import build_pipeline_sharing
from .lru_cache import LRUCache
from .pipeline import Krea2StudioPipeline
from .placement import Placement, choose_placement, unique_modules, weight_bytes
from .preview import QWEN_IMAGE_LATENT_RGB, LatentRGB, StepCallback
from .request import GenerationRequest
from .speedups import FastPathOptions, apply, for_placement, installed
from .speedups.compile import WARMUP_BATCH_SIZES, WARMUP_SIZES, WARMUP_STEPS, warmup_requests

if TYPE_CHECKING:
    from .loading import PipelineLoader

log = logging.getLogger(__name__)


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
    fast_path: str = ""  # what of the fast path is on, e.g. "fused projections + fp8 + FlashAttention-4 + ..."
    content_filter: str = ""  # the content policy's words (krea2/content_filter.py), "" without one

    def summary(self) -> str:
        parts = [f"device {self.device}", f"placement {self.placement}"]
        for key, status in self.checkpoints.items():
            text = f"{CHECKPOINTS[key].display_name}: {status.state}"
            parts.append(text + (f" ({status.reason})" if status.reason else ""))
        if self.warmup != "off":
            parts.append(f"compile warm-up: {self.warmup}")
        if self.fast_path:
            parts.append(self.fast_path)
        if self.content_filter:
            parts.append(self.content_filter)
        return " | ".join(parts)


class ModelManager:
    """Loads both checkpoints once (in the background), puts the fast path on them, then serves `generate` calls one
    at a time.

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
        content_policy: ContentPolicy | None = None,
    ) -> None:
        self.loader = loader
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.requested_placement = placement
        self.placement: Placement | str = "pending"
        self.requested_options = options or FastPathOptions()
        self.options = self.requested_options  # final once placed: `for_placement`
        self.demo = demo
        self.pipes: dict[str, Krea2StudioPipeline] = {}
        self.load_count = 0  # how many checkpoints were read from disk: tests use it to prove switching is free
        self._status = {key: CheckpointStatus() for key in CHECKPOINTS}
        self._warmup = "off"
        self._ready = threading.Event()
        self._generate_lock = threading.Lock()  # one generation (or warm-up, or fast-path change) at a time
        self._cancel_current: threading.Event | None = None
        self._prompt_cache: LRUCache[PromptEmbeddings] = LRUCache(prompt_cache_size)
        self._loader_thread: threading.Thread | None = None
        self.latent_rgb: LatentRGB = QWEN_IMAGE_LATENT_RGB  # the live preview's colours, set with the VAE at load
        # The host's prompt block list and image classifier, applied to every generation (None: no checks at all).
        self.content_policy = content_policy

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
            self.pipes = self._load_pipelines()
            modules = unique_modules(list(self.pipes.values()))
            self.placement = choose_placement(self.requested_placement, self.device, weight_bytes(modules))
            self._apply_fast_path(self.requested_options)
            log.info("Placement: %s on %s", self.placement, self.device)
            for key in CHECKPOINTS:
                self._status[key] = CheckpointStatus("ready")
            if self.content_policy is not None:
                self.content_policy.load(self.device)
            log.info("Checkpoints ready: %s", self.status().summary())
            if self.options.compile:
                self._warmup = "running"
                threading.Thread(target=self._warm_up_in_background, name="krea2-warmup", daemon=True).start()
        except Krea2Error as error:
            self._fail(error)
        except Exception as error:
            log.exception("Unexpected error while loading")
            self._fail(LoadError(f"loading failed: {type(error).__name__}: {error}"))
        finally:
            self._ready.set()

    def _load_pipelines(self) -> dict[str, Krea2StudioPipeline]:
        """Every checkpoint's pipeline over one text encoder, tokenizer and VAE: the checkpoint that ships a whole
        pipeline is loaded whole, the others' transformers alone."""
        base_spec = next(spec for spec in CHECKPOINTS.values() if spec.ships_full_pipeline)
        base = self.loader.load_full(base_spec)
        self.latent_rgb = self.loader.latent_rgb(base_spec)
        self.load_count += 1
        pipes = {base_spec.key: Krea2StudioPipeline.from_pipeline(base)}
        for spec in CHECKPOINTS.values():
            if spec is not base_spec:
                transformer = self.loader.load_transformer(spec)
                self.load_count += 1
                pipes[spec.key] = Krea2StudioPipeline.from_pipeline(build_pipeline_sharing(base, transformer, spec))
        return pipes

    def _apply_fast_path(self, requested: FastPathOptions) -> None:
        final = for_placement(requested, self.placement)
        if final != requested:
            log.info("Placement %s: fast path %s (asked for %s)", self.placement, final, requested)
        apply(list(self.pipes.values()), final, placement=self.placement, device=self.device)
        self.requested_options, self.options = requested, final

    def apply_fast_path(self, options: FastPathOptions) -> None:
        """Put (more of) the fast path on the loaded pipelines, waiting for any running generation. Speed-ups already
        on stay on (see `speedups.apply`); a new compile needs `warm_up` again. The benchmark steps through its modes
        with it; the app sets its options once, at construction."""
        with self._generate_lock:
            self._apply_fast_path(options)

    def _fail(self, error: Exception) -> None:
        log.error("%s", error)
        for key, status in self._status.items():
            if status.state != "ready":
                self._status[key] = CheckpointStatus("failed", str(error))
        self.pipes = {k: p for k, p in self.pipes.items() if self._status[k].state == "ready"}

    # ----------------------------------------------------------------------------------------------- warm-up
    def warm_up(
        self,
        sizes: tuple[tuple[int, int], ...] = WARMUP_SIZES,
        steps: int = WARMUP_STEPS,
        batch_sizes: tuple[int, ...] = WARMUP_BATCH_SIZES,
    ) -> float:
        """Run short generations on every checkpoint at the common shapes (`speedups/compile.py`), so that no user waits
        for compilation or a CUDA-graph capture. Holds the GPU throughout. Returns the seconds it took."""
        start = time.perf_counter()
        with self._generate_lock:
            self._warmup = "running"
            try:
                for request in warmup_requests(self.pipes, sizes, steps, batch_sizes):
                    self._generate(self.pipes[request.checkpoint], request, None, threading.Event())
            except Exception:
                self._warmup = "failed"
                raise
            self._warmup = "ready"
        seconds = time.perf_counter() - start
        log.info("Compile warm-up done in %.1f s", seconds)
        return seconds

    def _warm_up_in_background(self) -> None:
        try:
            self.warm_up()
        except Exception:
            log.exception("Compile warm-up failed; continuing uncompiled")

    # ----------------------------------------------------------------------------------------------- status
    def device_name(self) -> str:
        return str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device)

    def status(self) -> ManagerStatus:
        return ManagerStatus(
            device=self.device_name(),
            placement=str(self.placement),
            demo=self.demo,
            checkpoints={k: CheckpointStatus(s.state, s.reason) for k, s in self._status.items()},
            warmup=self._warmup,
            fast_path=self._fast_path_summary(),
            content_filter=self.content_policy.status() if self.content_policy is not None else "",
        )

    def _fast_path_summary(self) -> str:
        """What `installed` finds on the ready pipelines: what they all have, then what one checkpoint has alone."""
        found = {key: installed(pipe) for key, pipe in self.pipes.items() if self._status[key].state == "ready"}
        if not found:
            return ""
        shared = [name for name in next(iter(found.values())) if all(name in names for names in found.values())]
        own = [
            f"{CHECKPOINTS[key].display_name} {name}"
            for key, names in found.items()
            for name in names
            if name not in shared
        ]
        return " + ".join(shared + own)

    # ----------------------------------------------------------------------------------------------- prompts
    def encode(self, text: str) -> PromptEmbeddings:
        """Prompt embeddings (cached; Raw and Turbo share the encoder, so one entry serves both)."""
        return encode_prompt(self._any_pipe(), text, self._prompt_cache)

    @property
    def prompt_cache(self) -> LRUCache[PromptEmbeddings]:
        return self._prompt_cache

    def pipeline_inputs(self, request: GenerationRequest) -> dict:
        """The pipeline arguments a request fixes: its (cached) prompt embeddings and its settings."""
        return pipeline_inputs(self._pipe(request.checkpoint), request, self._prompt_cache)

    # ----------------------------------------------------------------------------------------------- generation
    def _pipe(self, key: str) -> Krea2StudioPipeline:
        status = self._status[key]
        if status.state != "ready":
            name = CHECKPOINTS[key].display_name
            raise NotReady(f"{name} is {status.state}" + (f": {status.reason}" if status.reason else "; try again."))
        return self.pipes[key]

    def _any_pipe(self) -> Krea2StudioPipeline:
        """A ready pipeline: they all share the text encoder and tokenizer."""
        ready = [key for key, status in self._status.items() if status.state == "ready"]
        return self._pipe(ready[0] if ready else next(iter(CHECKPOINTS)))

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
        # The prompt block list, and fail-closed when a required filter is not ready: before any GPU work.
        image_filter = self.content_policy.admit(request) if self.content_policy is not None else None
        cancel_event = cancel_event or threading.Event()
        with self._generate_lock:
            self._cancel_current = cancel_event
            try:
                return self._generate(pipe, request, on_step, cancel_event, image_filter=image_filter)
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

    def _generate(
        self,
        pipe: Krea2StudioPipeline,
        request: GenerationRequest,
        on_step: StepCallback | None,
        cancel_event: threading.Event,
        image_filter: ImageClassifierFilter | None = None,
    ) -> GenerationResult:
        """One generation; the caller holds the GPU lock. `image_filter` judges the decoded batch (warm-up runs
        without it: its images are never shown)."""
        request = request.seeded()
        generated = generate(
            pipe,
            request,
            prompt_cache=self._prompt_cache,
            device=self.device,
            latent_rgb=self.latent_rgb,
            on_step=on_step,
            cancel_event=cancel_event,
            image_filter=image_filter,
        )
        return GenerationResult(
            request=request,
            images=generated.images,
            seeds=request.image_seeds,
            timings=generated.timings,
            peak_gpu_bytes=generated.peak_gpu_bytes,
            device=self.device_name(),
            placement=str(self.placement),
            warnings=prompt_warnings(pipe, request),
        )
