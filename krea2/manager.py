"""ModelManager: keeps Raw and Turbo warm side by side and runs one generation at a time per GPU."""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from .checkpoints import CHECKPOINTS, DEFAULT_CHECKPOINT
from .content_filter import ContentPolicy, ImageClassifierFilter
from .errors import GenerationFailed, Krea2Error, LoadError, LoraError, NonFiniteImage, NotReady
from .generation import (
    AppliedLora,
    GenerationResult,
    PromptEmbeddings,
    encode_prompt,
    generate,
    pipeline_inputs,
    prompt_warnings,
)
from .loading import build_pipeline_sharing
from .lora_files import LoraContents
from .lora_fold import FoldReport, patcher_of, target_shapes
from .lora_library import request_lora_files
from .lora_weights import LoraWeights, lora_weights
from .lru_cache import LRUCache
from .pipeline import Krea2StudioPipeline
from .placement import Placement
from .plans import MemoryBudget, ModelSizes, PlacementPlan, choose_plan, read_budget
from .preview import QWEN_IMAGE_LATENT_RGB, LatentRGB, StepCallback
from .request import GenerationRequest
from .residency import Residency
from .speedups import FastPathOptions, apply, for_plan, installed, weights_moved
from .speedups.compile import (
    WARMUP_BATCH_SIZES,
    WARMUP_SIZES,
    WARMUP_STEPS,
    compile_order,
    compile_times_table,
    compiled_graph_count,
    eager_in_this_thread,
    warmup_requests,
)
from .speedups.denoiser_graphs import denoiser_graphs_of
from .speedups.step_cache import step_cache_of

if TYPE_CHECKING:
    from .compile_cache import CompileCache
    from .loading import PipelineLoader
    from .lora_library import LoraFile, LoraLibrary

log = logging.getLogger(__name__)
# LoRAs kept read and checked, in CPU memory (a rank-32 LoRA of the full-size model is ~0.2 GB in bf16).
LORA_CACHE_SIZE = 8


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
    plan: str = ""  # the placement plan, one line (`PlacementPlan.describe`)
    warmup_progress: tuple[int, int] = (0, 0)  # warm-up generations done, of how many (in the current stage)
    warmup_stage: str = ""  # "" (one stage) | compiling (beside requests) | capturing (one at a time, between them)
    warmup_skipped: tuple[str, ...] = ()  # failed warm-up generations (`ModelManager._warm_up_one` says how named)
    content_filter: str = ""  # the content policy's words (krea2/content_filter.py), "" without one

    @property
    def settled(self) -> bool:
        """Nothing is loading or warming up: what still changes comes from use (which transformer a swap plan holds),
        so a page reads the status again after each run rather than every few seconds."""
        loading = any(status.state == "loading" for status in self.checkpoints.values())
        return not loading and self.warmup != "running" and "content filter: loading" not in self.content_filter

    def summary(self) -> str:
        parts = [f"device {self.device}", self.plan or f"placement {self.placement}"]
        for key, status in self.checkpoints.items():
            text = f"{CHECKPOINTS[key].display_name}: {status.state}"
            parts.append(text + (f" ({status.reason})" if status.reason else ""))
        if self.warmup == "running":
            done, total = self.warmup_progress
            stage = {"compiling": "compiling in the background", "capturing": "capturing graphs"}
            word = stage.get(self.warmup_stage, "running")
            parts.append(f"compile warm-up: {word} {done}/{total} (generating uncompiled meanwhile)")
        elif self.warmup == "ready" and self.warmup_skipped:
            total = self.warmup_progress[1]
            skipped = len(self.warmup_skipped)
            parts.append(f"compile warm-up: ready, {skipped} of {total} shapes skipped ({self.warmup_skipped[0]})")
        elif self.warmup != "off":
            detail = " (full speed)" if self.warmup == "ready" else ""
            detail = f" ({self.warmup_skipped[0]})" if self.warmup == "failed" and self.warmup_skipped else detail
            parts.append(f"compile warm-up: {self.warmup}{detail}")
        if self.fast_path:
            parts.append(self.fast_path)
        if self.content_filter:
            parts.append(self.content_filter)
        return " | ".join(parts)


def out_of_host_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation in the computer's memory that failed (PyTorch's CPU allocator raises a
    RuntimeError saying so; Python a MemoryError), as opposed to any other failure."""
    return isinstance(error, MemoryError) or "can't allocate memory" in str(error)


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
        plan: PlacementPlan | None = None,
        memory_probe: Callable[[torch.device], MemoryBudget] = read_budget,
        compile_cache: CompileCache | None = None,
        loras: LoraLibrary | None = None,
        content_policy: ContentPolicy | None = None,
        background_compile: bool | None = None,
    ) -> None:
        """`plan` forces a placement plan (tests, benchmarks); otherwise `placement` (the setting) and what
        `memory_probe` finds free once the checkpoints are loaded choose one (`plans.choose_plan`).
        `background_compile`: whether the warm-up compiles beside users' requests (`warm_up`); None: on a GPU where
        every weight stays put."""
        self.loader = loader
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.requested_placement = placement
        self.placement: Placement | str = "pending"  # the plan's name once placed (recorded with each image)
        self.requested_plan = plan
        self.memory_probe = memory_probe
        self.plan: PlacementPlan | None = None
        self.residency: Residency | None = None  # a small-GPU plan's: which transformer is on the GPU
        self.compile_cache = compile_cache  # torch's compile artifacts, loaded before the warm-up, saved after it
        self._warmup_progress = (0, 0)
        self._warmup_skipped: tuple[str, ...] = ()
        self._warmup_stage = ""
        self.background_compile = background_compile
        self._waiting_users = 0  # requests waiting for the GPU: the warm-up lets them go first
        self._turns = threading.Condition()
        self.requested_options = options or FastPathOptions()
        self.options = self.requested_options  # final once placed: `for_placement`
        self.demo = demo
        self.pipes: dict[str, Krea2StudioPipeline] = {}
        self.load_count = 0  # how many checkpoints were read from disk: tests use it to prove switching is free
        self._status = {key: CheckpointStatus() for key in CHECKPOINTS}
        self._warmup = "off"
        self._ready = threading.Event()
        self._generate_lock = threading.Lock()  # one generation (or warm-up, or fast-path change) at a time
        self._warmup_lock = threading.Lock()  # one warm-up at a time (`warm_up`)
        self._cancel_current: threading.Event | None = None
        self._prompt_cache: LRUCache[PromptEmbeddings] = LRUCache(prompt_cache_size)
        self._loader_thread: threading.Thread | None = None
        self.latent_rgb: LatentRGB = QWEN_IMAGE_LATENT_RGB  # the live preview's colours, set with the VAE at load
        self.loras = loras  # the LoRA library requests name LoRAs from; None: requests with LoRAs are refused
        self._lora_cache: LRUCache[LoraWeights] = LRUCache(LORA_CACHE_SIZE)
        # The host's prompt block list and image classifier, applied to every generation (None: no checks at all).
        self.content_policy = content_policy

    # ----------------------------------------------------------------------------------------------- loading
    # How many generations this engine runs at once: one per manager (one GPU). A `WorkerPool` (krea2/workers.py)
    # runs one per worker, and the service and the UI's queue size themselves by this.
    concurrent_generations = 1

    def on_device(self) -> contextlib.AbstractContextManager:
        """This manager's GPU as the current CUDA device, for the thread that runs its work: CUDA's current device is
        per thread, and code that says just "cuda" (graph pools, synchronize, LoRA folding) means the current one. A
        manager on "cuda" without an index (the single-GPU app) or on the CPU changes nothing."""
        if self.device.type == "cuda" and self.device.index is not None:
            return torch.cuda.device(self.device)
        return contextlib.nullcontext()

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
        with self.on_device():
            self._load_on_device()

    def _load_on_device(self) -> None:
        try:
            self.pipes = self._load_pipelines()
            self.plan = self._choose_plan()
            self.placement = self.plan.name
            if self.plan.managed:
                self.residency = self._residency(self.plan)
            self._apply_fast_path(self.requested_options)
            log.info("Placement on %s: %s", self.device, self.plan.describe(self._active(), self._names()))
            if self.options.compile:  # before "ready": a status read in between would look settled (ui stops polling)
                self._warmup = "running"
            for key in CHECKPOINTS:
                self._status[key] = CheckpointStatus("ready")
            if self.content_policy is not None:
                self.content_policy.load(self.device)
            log.info("Checkpoints ready: %s", self.status().summary())
            if self.options.compile:
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

    def _choose_plan(self) -> PlacementPlan:
        """The forced plan, or the fastest that fits the memory free now that the checkpoints are loaded."""
        if self.requested_plan is not None:
            return self.requested_plan
        budget = self.memory_probe(self.device)  # no GPU memory on the CPU, unless a test simulates some
        sizes = ModelSizes.of(list(self.pipes.values()))
        return choose_plan(self.requested_placement, budget, sizes, fp8=self.requested_options.fp8)

    def _residency(self, plan: PlacementPlan) -> Residency:
        any_pipe = next(iter(self.pipes.values()))
        return Residency(
            plan,
            {key: pipe.transformer for key, pipe in self.pipes.items()},
            any_pipe.text_encoder,
            any_pipe.vae,
            self.device,
            active=DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT in self.pipes else next(iter(self.pipes)),
            on_swap=self._weights_moved,
        )

    def _weights_moved(self, key: str) -> None:
        weights_moved({k: pipe.transformer for k, pipe in self.pipes.items()}, key, self.options)

    def _active(self) -> str | None:
        return self.residency.active if self.residency is not None else None

    def _names(self) -> dict[str, str]:
        return {key: CHECKPOINTS[key].display_name for key in self.pipes}

    def _apply_fast_path(self, requested: FastPathOptions) -> None:
        plan = self.plan or PlacementPlan(str(self.placement))
        final = for_plan(requested, plan)
        if final != requested:
            log.info("Plan %s: fast path %s (asked for %s)", plan.name, final, requested)
        apply(
            list(self.pipes.values()), final, placement=plan.placement, device=self.device, residency=self.residency
        )  # fmt: skip
        self.requested_options, self.options = requested, final

    def apply_fast_path(self, options: FastPathOptions) -> None:
        """Put (more of) the fast path on the loaded pipelines, waiting for any running generation. Speed-ups already
        on stay on (see `speedups.apply`); a new compile needs `warm_up` again. The benchmark steps through its modes
        with it; the app sets its options once, at construction."""
        with self.on_device(), self._generate_lock:
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
        on_step: StepCallback | None = None,
        *,
        strict: bool = True,
    ) -> float:
        """Run short generations on every checkpoint at the common shapes (`speedups/compile.py`), so that no user waits
        for compilation or a CUDA-graph capture. Each takes the GPU on its own, after any request that is waiting for
        it: users are served meanwhile (uncompiled where a shape is not compiled yet, see `generate`). torch's compile
        artifacts are loaded first and saved after (`compile_cache`). Returns the seconds it took.

        Where weights stay put (`compiles_beside_requests`), the compiling itself happens first, without the GPU lock
        (`_compile_beside_requests`), and the locked generations then only capture CUDA graphs: a cold start's first
        image no longer waits behind a warm-up generation that compiles for a minute and a half.

        `strict` (benchmarks, tests): the first failing generation ends the warm-up and is raised. Not strict (the
        app's background warm-up): a failing shape is skipped, logged and named in the status line, and the others still
        warm up; a 24 GB H200 run's warm-up stopped at one failing shape, said only "failed", and left the rest
        uncompiled. A user asking for a skipped shape later compiles it in their own time (an out-of-memory error again
        comes back as `generate`'s clear one).

        One warm-up runs at a time: a second call (a benchmark's own, beside the one a compiling manager starts when
        it has loaded) waits for the first and then finds most of its shapes compiled. Two at once raced on an H200
        (session m): one's locked stage captured CUDA graphs while the other compiled beside it, the captures failed
        and the denoiser's graphs were off for the rest of the run."""
        with self._warmup_lock:
            return self._warm_up(sizes, steps, batch_sizes, on_step, strict)

    def _warm_up(
        self,
        sizes: tuple[tuple[int, int], ...],
        steps: int,
        batch_sizes: tuple[int, ...],
        on_step: StepCallback | None,
        strict: bool,
    ) -> float:
        start = time.perf_counter()
        if self.plan is not None and self.plan.images_per_call:  # larger batches run in parts: nothing new to warm up
            batch_sizes = tuple(count for count in batch_sizes if count <= self.plan.images_per_call)
        requests = compile_order(warmup_requests(self.pipes, sizes, steps, batch_sizes))
        if self.residency is not None:  # a swapping plan: the checkpoint on the GPU first, then the others
            requests.sort(key=lambda request: request.checkpoint != self.residency.active)
        self._warmup, self._warmup_progress, self._warmup_skipped = "running", (0, len(requests)), ()
        self._warmup_stage = ""
        try:
            if self.compile_cache is not None:
                self.compile_cache.load()
            if self.compiles_beside_requests():
                self._compile_beside_requests(requests, on_step, strict)
                self._warmup_progress = (0, len(requests))
            for done, request in enumerate(requests, 1):
                self._wait_for_users()
                failure = self._warm_up_one(request, on_step, strict)
                if failure:
                    self._warmup_skipped += (failure,)
                    self._release_cached_memory()  # outside the `except`, whose traceback holds the failed frames
                self._warmup_progress = (done, len(requests))
        finally:  # whatever ends the warm-up (a strict failure, a CUDA error in the clean-up), it is not running
            failed = self._warmup_progress[0] < len(requests) or (
                bool(requests) and len(self._warmup_skipped) == len(requests)
            )
            self._warmup = "failed" if failed else "ready"
            self._warmup_stage = ""
        seconds = time.perf_counter() - start
        if self._warmup == "failed":
            log.error("Compile warm-up failed: every shape failed (the first: %s)", self._warmup_skipped[0])
        else:
            log.info("Compile warm-up done in %.1f s, %d of %d shapes skipped", seconds, len(self._warmup_skipped),
                     len(requests))  # fmt: skip
        if self.compile_cache is not None:
            self.compile_cache.save()
        return seconds

    def compiles_beside_requests(self) -> bool:
        """Whether the warm-up compiles without the GPU lock: as asked, else on a GPU; never under a swapping plan,
        whose weights move between the GPU and CPU RAM under the lock."""
        if self.residency is not None:
            return False
        return self.background_compile if self.background_compile is not None else self.device.type == "cuda"

    def _compile_beside_requests(
        self, requests: list[GenerationRequest], on_step: StepCallback | None, strict: bool
    ) -> None:
        """The warm-up's first stage, without the GPU lock: a one-step generation per warm-up shape, in this thread on
        a pipeline of its own (`thread_copy`) and, on a GPU, a CUDA stream of its own, so that torch.compile compiles
        while users' requests run beside it, eagerly (`_uncompiled_while_warming`). No CUDA graph is captured
        meanwhile, by anyone: a capture beside another thread's GPU work and inductor's benchmarking is not safe. The
        locked stage that follows captures them from what is compiled by then. A failing shape is only logged here
        (not strict): the locked stage runs it again and names it if it fails there. A checkpoint with Raw's step
        cache is left to the locked stage, whose cache state belongs to the request using it."""
        shapes = [r for r in requests if step_cache_of(self.pipes[r.checkpoint].transformer) is None]
        graphs = self._graphs()
        with self._generate_lock:  # no user's generation is half-way when capturing stops
            self._warmup_stage, self._warmup_progress = "compiling", (0, len(shapes))
            for graph in graphs:
                graph.paused = True
        start = time.perf_counter()
        try:
            stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
            copies: dict[str, Krea2StudioPipeline] = {}
            own_prompts: LRUCache[PromptEmbeddings] = LRUCache(4)  # eager encodings, never served to users
            for done, request in enumerate(shapes, 1):
                graphs_before, shape_start = compiled_graph_count(), time.perf_counter()
                # Users first, as in the locked stage: a compilation beside a request slows it (on an H200 the cold
                # start's first image took 10.7 s beside the first compilation, 2.8 s alone), so none starts while
                # a request waits or runs. One that arrives during a compilation still shares the CPU with it.
                self._wait_for_users()
                if request.checkpoint not in copies:
                    copies[request.checkpoint] = self.pipes[request.checkpoint].thread_copy()
                pipe = copies[request.checkpoint]
                try:
                    on_stream = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
                    with self.on_device(), on_stream:
                        generate(
                            pipe, replace(request, steps=1).seeded(), prompt_cache=own_prompts, device=self.device,
                            latent_rgb=self.latent_rgb, on_step=on_step, measure_peak=False,
                        )  # fmt: skip
                        if stream is not None:
                            stream.synchronize()
                except Exception:
                    if strict:
                        raise
                    log.exception("Background compile: %s failed; the locked warm-up runs it again", _label(request))
                self._warmup_progress = (done, len(shapes))
                seconds, new_graphs = time.perf_counter() - shape_start, compiled_graph_count() - graphs_before
                log.info("Compiled beside requests: %s (%d of %d) in %.1f s, %d new graphs", _label(request), done,
                         len(shapes), seconds, new_graphs)  # fmt: skip
            log.info("Compiled beside requests: %d shapes in %.1f s", len(shapes), time.perf_counter() - start)
            log.info("torch.compile's time per phase, whole process (s):\n%s", compile_times_table())
        finally:
            with self._generate_lock:
                for graph in graphs:
                    graph.paused = False
                self._warmup_stage = "capturing"

    def _denoiser_graphs(self) -> list:
        return [g for pipe in self.pipes.values() if (g := denoiser_graphs_of(pipe.transformer)) is not None]

    def _graphs(self) -> list:
        """Every CUDA-graph wrapper on the pipelines (the denoisers', the shared text encoder's): what pauses."""
        found = self._denoiser_graphs()
        found += [pipe.text_graphs for pipe in self.pipes.values() if pipe.text_graphs is not None]
        return list({id(g): g for g in found}.values())

    def _warm_up_one(self, request: GenerationRequest, on_step: StepCallback | None, strict: bool) -> str:
        """One warm-up generation; "" when it ran, else what failed (checkpoint, size, images if more than one, the
        prompt's length in words, and the error's type), unless `strict`, which raises."""
        try:
            with self._generate_lock, self.on_device():
                self._generate(self.pipes[request.checkpoint], request, on_step, threading.Event())
            return ""
        except Exception as error:
            if strict:
                raise
            label = _label(request)
            log.exception("Compile warm-up: %s skipped", label)
            return f"{label}: {type(error).__name__}"

    def _release_cached_memory(self) -> None:
        """After a failed generation: free what it cached so the next one starts clean. Only then: emptying the cache
        after every image would make the next one pay for cudaMalloc again."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def waiting_requests(self) -> int:
        """Requests waiting for the GPU or running on it (not the warm-up's)."""
        return self._waiting_users

    def _wait_for_users(self) -> None:
        with self._turns:
            self._turns.wait_for(lambda: self._waiting_users == 0)

    @contextlib.contextmanager
    def _user_turn(self) -> Iterator[None]:
        """A user's request waiting for (and holding) the GPU: the warm-up does not start its next generation."""
        with self._turns:
            self._waiting_users += 1
        try:
            yield
        finally:
            with self._turns:
                self._waiting_users -= 1
                self._turns.notify_all()

    @contextlib.contextmanager
    def _uncompiled_while_warming(self) -> Iterator[None]:
        """During the warm-up a user's request runs what is compiled already and eagerly what is not (torch's
        `eager_on_recompile` stance: no compilation in a user's time), with no denoiser graphs captured from it.
        While the warm-up compiles beside requests, the request runs the project's compiled functions eagerly in its
        own thread (`eager_in_this_thread`; the stance is process-wide and would stop that compilation too), and the
        compiling stage keeps every graph paused. The caller holds the GPU lock, so the stage read here holds until
        the request ends."""
        if self._warmup != "running":
            yield
            return
        if self._warmup_stage == "compiling":
            with eager_in_this_thread():
                yield
            return
        graphs = self._denoiser_graphs()
        for graph in graphs:
            graph.paused = True
        try:
            with torch.compiler.set_stance("eager_on_recompile"):
                yield
        finally:
            for graph in graphs:
                graph.paused = False

    def _warm_up_in_background(self) -> None:
        try:
            self.warm_up(strict=False)
        except Exception:
            log.exception("Compile warm-up failed; continuing uncompiled")

    # ----------------------------------------------------------------------------------------------- status
    def device_name(self) -> str:
        """The GPU's name; with the device's index when the manager was given one (several GPUs: which card)."""
        if self.device.type == "cpu":
            return str(self.device)
        name = torch.cuda.get_device_name(self.device)
        return name if self.device.index is None else f"{name} ({self.device})"

    def checkpoint_state(self, key: str) -> str:
        """`loading`, `ready` or `failed` (the status line's word for one checkpoint)."""
        return self._status[key].state

    def status(self) -> ManagerStatus:
        return ManagerStatus(
            device=self.device_name(),
            placement=str(self.placement),
            demo=self.demo,
            checkpoints={k: CheckpointStatus(s.state, s.reason) for k, s in self._status.items()},
            warmup=self._warmup,
            fast_path=self._fast_path_summary(),
            plan=self.plan.describe(self._active(), self._names()) if self.plan is not None else "",
            warmup_progress=self._warmup_progress,
            warmup_stage=self._warmup_stage,
            warmup_skipped=self._warmup_skipped,
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
        with self.on_device():
            return encode_prompt(self._any_pipe(), text, self._prompt_cache)

    @property
    def prompt_cache(self) -> LRUCache[PromptEmbeddings]:
        return self._prompt_cache

    def pipeline_inputs(self, request: GenerationRequest) -> dict:
        """The pipeline arguments a request fixes: its (cached) prompt embeddings and its settings."""
        with self.on_device():
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
        with self._user_turn(), self._generate_lock, self.on_device():
            self._cancel_current = cancel_event
            try:
                with self._uncompiled_while_warming():
                    return self._generate(pipe, request, on_step, cancel_event, image_filter=image_filter)
            except torch.OutOfMemoryError as error:
                self._release_cached_memory()
                raise GenerationFailed(
                    "The GPU ran out of memory. Try a smaller size or fewer images"
                    + ("." if self.placement == "offload" else ", or start with --placement offload.")
                ) from error
            except (MemoryError, RuntimeError) as error:
                if not out_of_host_memory(error):
                    raise
                raise GenerationFailed(
                    f"This machine ran out of memory (RAM) for {request.width}×{request.height}"
                    + (f" × {request.num_images} images" if request.num_images > 1 else "")
                    + ". Try a smaller size or fewer images."
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
        if self.residency is not None:  # a small-GPU plan: this checkpoint's transformer onto the GPU, from CPU RAM
            self.residency.activate(request.checkpoint)
        request = request.seeded()
        loras = self._fold_loras(pipe, request)
        try:
            generated = generate(
                pipe,
                request,
                prompt_cache=self._prompt_cache,
                device=self.device,
                latent_rgb=self.latent_rgb,
                on_step=on_step,
                cancel_event=cancel_event,
                image_filter=image_filter,
                images_at_once=self.plan.images_per_call if self.plan is not None else 0,
            )
        except NonFiniteImage as error:
            acting = [lora.name for lora in loras if lora.weight != 0]
            if not acting:
                raise
            # A LoRA of finite but huge values passes every check and overflows once applied: say so, not "seed".
            raise NonFiniteImage(
                f"The model produced NaN values with the LoRA{'s' if len(acting) > 1 else ''} {', '.join(acting)}; no "
                "image was saved. A LoRA may be damaged or too strong: try a lower weight, or run without it."
            ) from error
        return GenerationResult(
            request=request,
            images=generated.images,
            seeds=request.image_seeds,
            timings=generated.timings,
            peak_gpu_bytes=generated.peak_gpu_bytes,
            device=self.device_name(),
            placement=str(self.placement),
            warnings=prompt_warnings(pipe, request) + lora_warnings(request, loras),
            loras=loras,
        )

    # ----------------------------------------------------------------------------------------------- LoRAs
    def fold_loras(self, request: GenerationRequest) -> FoldReport:
        """Fold the request's LoRAs into its checkpoint now, as its generation would (the benchmark times this)."""
        pipe = self._pipe(request.checkpoint)
        with self._generate_lock, self.on_device():
            self._fold_loras(pipe, request)
        patcher = patcher_of(pipe.transformer)
        return patcher.last_report if patcher is not None else FoldReport(0, 0.0)

    def _fold_loras(self, pipe: Krea2StudioPipeline, request: GenerationRequest) -> list[AppliedLora]:
        """Make the checkpoint's weights its own plus exactly the request's LoRAs (none: its own). Never reloads the
        checkpoint: LoRAs fold into the loaded weights in place (krea2/lora_fold.py)."""
        choices = request.active_loras
        weights = [(self._lora_weights(choice.name, pipe), choice.weight) for choice in choices]
        patcher = patcher_of(pipe.transformer, create=bool(weights))
        if patcher is not None:
            patcher.fold(weights)
        return [AppliedLora(lora.name, lora.hash, strength, request.checkpoint) for lora, strength in weights]

    def lora_files(self, request: GenerationRequest) -> list[LoraFile]:
        """The files of the request's LoRAs (InvalidRequest for one the LoRA folder does not hold)."""
        return request_lora_files(self.loras, request)

    def _lora_weights(self, name: str, pipe: Krea2StudioPipeline) -> LoraWeights:
        """A LoRA of the library, read and checked against the transformer once (cached until its file changes)."""
        if self.loras is None:
            raise LoraError("This app has no LoRA folder, so requests cannot use LoRAs.")
        library, file = self.loras, self.loras.get(name)
        shapes = target_shapes(pipe.transformer)  # Raw's and Turbo's are the same: one check serves both
        return self._lora_cache.get_or_compute(file.identity, lambda: library.weights(file, shapes))

    def clear_lora_cache(self) -> None:
        """Forget the LoRAs read so far (the next use reads its file again); what is folded in stays."""
        self._lora_cache.clear()

    def check_request_loras(self, request: GenerationRequest) -> None:
        """Raise LoraError now for a LoRA of the request that the loaded transformers cannot take, so that a run of
        several requests (Compare) refuses before its first one runs instead of failing half-way. On one GPU the
        checked LoRA is cached for the run; with no checkpoint ready yet, the run checks it as it starts."""
        if not request.active_loras or not any(s.state == "ready" for s in self._status.values()):
            return
        for lora in request.active_loras:
            self._lora_weights(lora.name, self._any_pipe())

    def check_lora(self, contents: LoraContents, name: str) -> None:
        """Raise LoraError if a LoRA file (an upload, a download) cannot be applied to the loaded transformers."""
        lora_weights(contents, name, "", target_shapes(self._any_pipe().transformer))


def _label(request: GenerationRequest) -> str:
    """A warm-up generation in the log and the status line: checkpoint, size, images if more than one, and the
    prompt's length in words."""
    label = f"{CHECKPOINTS[request.checkpoint].display_name} {request.width}×{request.height}"
    label += f" ×{request.num_images}" if request.num_images > 1 else ""
    return label + f", {len(request.prompt.split())}-word prompt"


def lora_warnings(request: GenerationRequest, applied: list[AppliedLora]) -> list[str]:
    """A LoRA named by its last part alone that the library took to be another folder's file (A1111 names a LoRA by
    its file name): said, since a file of that name deleted from one folder made the next run use another's."""
    return [
        f"LoRA {choice.name} was taken to be {used.name} (the only LoRA of that name)."
        for choice, used in zip(request.active_loras, applied, strict=True)
        if used.name != choice.name
    ]
