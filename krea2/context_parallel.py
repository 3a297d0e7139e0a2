"""Context parallelism: one image's transformer work spread over several GPUs, through diffusers' parallelism API
(`ModelMixin.enable_parallelism`, experimental in diffusers 0.42.1) with a plan for Krea 2, which diffusers does not
ship (`Krea2Transformer2DModel._cp_plan` is None; Flux, QwenImage and Wan have one).

Ulysses attention: every GPU holds the whole model and a slice of the token sequence; around each attention call an
all-to-all trades sequence slices for heads, so each GPU attends over the whole sequence for 48/N of Krea 2's 48
heads, and trades back. Everything else in a block (projections, SwiGLU, norms) is per token, so it runs on the slice.

The plan (`context_parallel_plan`) follows Krea 2's single-stream forward: text and image tokens are concatenated
*inside* `forward`, after the text fusion, so the sequence is split where it first exists as one, at the input of
the first block, and so are the rotary embeddings computed for it (`rotary_emb`'s cos and sin); the last block's
output is gathered, before `forward` drops the text tokens and runs the final layer. The text fusion blocks (their
own short sequences, 20 heads) stay local on every GPU. "Ulysses anything" splits sequences of any length (prompts
vary) into near-equal slices.

Serving: one process per GPU (`torchrun`). Rank 0 runs the app; every other rank follows (`ContextParallelManager.
follow`): rank 0 sends each request (seeded: the same noise everywhere), all ranks run it together, and at every step
they agree on rank 0's cancel flag, so a cancel stops all of them at the same step.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from .checkpoints import CHECKPOINTS
from .errors import NotReady
from .manager import GenerationResult, ModelManager
from .speedups import FastPathOptions
from .speedups.attention import KERNEL_NAMES

if TYPE_CHECKING:
    from torch import nn

    from .preview import StepCallback
    from .request import GenerationRequest

log = logging.getLogger(__name__)
ULYSSES = "ulysses"
MODES = ("off", ULYSSES)
IDLE_TIMEOUT = timedelta(days=365)  # how long followers wait for rank 0's next request
STOP_WAIT_S = 120  # at shutdown, how long stopping the followers waits for a generation in flight


# ------------------------------------------------------------------------------------------------ the plan
def context_parallel_plan(transformer: nn.Module) -> dict:
    """diffusers' `ContextParallelModelPlan` for this Krea 2 transformer (module names depend on its block count)."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    last = len(transformer.transformer_blocks) - 1
    sequence = ContextParallelInput(split_dim=0, expected_dims=2, split_output=True)  # rotary (tokens, head_dim)
    return {
        # cos and sin for the whole [text, image] sequence: each GPU keeps its slice's rows.
        "rotary_emb": {0: sequence, 1: sequence},
        # The concatenated sequence, (batch, tokens, width), sliced once; it stays sliced from block to block.
        "transformer_blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3)},
        # The whole sequence back on every GPU after the last block (forward then drops the text tokens).
        f"transformer_blocks.{last}": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


def plan_problems(transformer: nn.Module, plan: dict) -> list[str]:
    """What in `plan` does not fit this transformer (a module it lacks, an input its forward does not take); empty
    when it fits. diffusers itself only finds out in the middle of a forward."""
    import inspect

    from diffusers.models._modeling_parallel import ContextParallelInput

    problems = []
    for name, entry in plan.items():
        try:
            module = transformer.get_submodule(name)
        except AttributeError:
            problems.append(f"{name}: no such module")
            continue
        if not isinstance(entry, dict):
            continue
        parameters = list(inspect.signature(module.forward).parameters)
        for key, value in entry.items():
            if not isinstance(value, ContextParallelInput):
                problems.append(f"{name}.{key}: not a ContextParallelInput")
            elif isinstance(key, str) and key not in parameters:
                problems.append(f"{name}: forward takes no {key!r}")
            elif isinstance(key, int) and not value.split_output:
                problems.append(f"{name}[{key}]: an output index must split the output")
    return problems


def refusal(mode: str, world_size: int, cuda_count: int, heads: int = 48) -> str | None:
    """Why context parallelism cannot run here (one sentence), or None when it can."""
    if mode == "off":
        return None
    if mode not in MODES:
        return f"KREA2_CONTEXT_PARALLEL must be one of {', '.join(MODES)}, got {mode!r}"
    if world_size < 2:
        return (
            f"KREA2_CONTEXT_PARALLEL={mode} spreads one image over several GPUs, one process each: start the app with "
            f"`torchrun --nproc-per-node N app.py` on a machine with N ≥ 2 GPUs (this one has {cuda_count} and "
            f"{world_size} process), or set KREA2_CONTEXT_PARALLEL=off"
        )
    if cuda_count < world_size:
        return f"KREA2_CONTEXT_PARALLEL={mode} needs one GPU per process: {world_size} processes, {cuda_count} GPUs"
    if heads % world_size:
        return f"Ulysses attention splits Krea 2's {heads} heads evenly: use 2, 3, 4, 6 or 8 GPUs, not {world_size}"
    return None


def for_context_parallel(options: FastPathOptions) -> FastPathOptions:
    """The fast path that runs under context parallelism. Attention must go through diffusers' dispatch, which does
    the all-to-all (FlashAttention-4 and cuDNN fp8 are called directly and would attend within one GPU's slice);
    the first-block step cache decides per GPU on its slice and the GPUs could disagree (then they deadlock); compile
    and the denoiser's CUDA graphs over the hooks' collectives are not verified yet (bench/multi_gpu_benchmark.py
    measures compile on top), so they are off."""
    attention = None if options.attention in KERNEL_NAMES else options.attention
    return replace(options, attention=attention, step_cache=None, compile=False, denoiser_graphs=False)


def enable_context_parallel(transformer: nn.Module, degree: int, mesh=None) -> None:
    """Ulysses attention over `degree` GPUs on `transformer` (torch.distributed initialised, one process per GPU).
    Raises ValueError when its attention cannot take part (a kernel called outside diffusers' dispatch)."""
    from diffusers.models._modeling_parallel import ContextParallelConfig

    blocks = [block.attn.processor for block in transformer.transformer_blocks]
    direct = {getattr(processor, "kernel", None) for processor in blocks} - {None}
    if direct:
        names = ", ".join(KERNEL_NAMES.get(kernel, kernel) for kernel in direct)
        raise ValueError(f"context parallelism needs diffusers' attention dispatch; {names} bypasses it "
                         "(set KREA2_ATTENTION=sdpa or a diffusers backend)")  # fmt: skip
    plan = context_parallel_plan(transformer)
    if problems := plan_problems(transformer, plan):
        raise ValueError("the Krea 2 context-parallel plan does not fit this transformer: " + "; ".join(problems))
    config = ContextParallelConfig(ulysses_degree=degree, ulysses_anything=True, mesh=mesh)
    transformer.enable_parallelism(config=config, cp_plan=plan)
    keep_text_fusion_local(transformer)


def keep_text_fusion_local(transformer: nn.Module) -> None:
    """The text fusion's attention runs whole on every GPU: `enable_parallelism` hands the parallel config to every
    attention processor of the model, and a processor may be one object shared by all layers, so each text-fusion
    layer gets a copy without it."""
    for module in transformer.text_fusion.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and getattr(processor, "_parallel_config", None) is not None:
            local = copy.copy(processor)
            local._parallel_config = None
            module.set_processor(local)


def context_parallel_on(transformer: nn.Module) -> bool:
    return getattr(transformer, "_parallel_config", None) is not None


# ------------------------------------------------------------------------------------------------ the process group
@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the ranks that run one image together (rank 0 serves the app), and its device."""

    rank: int
    size: int
    device: torch.device | None = None
    control: object = field(default=None, compare=False)  # requests and cancel flags (gloo); None: the default group

    @property
    def lead(self) -> bool:
        return self.rank == 0

    @classmethod
    def launched(cls) -> ProcessGroup:
        """This process among those torchrun started, with torch.distributed initialised (small CPU messages over gloo,
        tensors over NCCL: torch reads torchrun's RANK, WORLD_SIZE and MASTER_ADDR itself) and its device taken: its
        GPU, or the CPU where there is none. A process torchrun did not start is rank 0 of 1, nothing initialised."""
        if not dist.is_torchelastic_launched():
            return cls(0, 1)
        cuda = torch.cuda.is_available()
        if not dist.is_initialized():
            dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
        rank, size = dist.get_rank(), dist.get_world_size()
        # Followers wait for rank 0's next request as long as the app is idle: their own group, without the default
        # 30-minute timeout (which still catches a rank stuck in the model's collectives).
        control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
        if not cuda:
            return cls(rank, size, torch.device("cpu"), control)
        device = torch.device("cuda", rank % torch.cuda.device_count())  # one node: ranks in GPU order
        torch.cuda.set_device(device)
        return cls(rank, size, device, control)

    def send(self, message: object) -> object:
        """Rank 0's `message` on every rank (a request, or None: stop)."""
        box = [message if self.lead else None]
        dist.broadcast_object_list(box, src=0, group=self.control, device=torch.device("cpu"))
        return box[0]

    def agree(self, flag: bool) -> bool:
        """Rank 0's flag on every rank."""
        value = torch.tensor([int(flag and self.lead)], dtype=torch.int32)
        dist.broadcast(value, src=0, group=self.control)
        return bool(value.item())


class SharedCancel:
    """A cancel event every rank reads alike: `is_set` is rank 0's answer (its caller's event), so all ranks stop at
    the same step. Generation reads it at the start and after every step, the same number of times on every rank."""

    def __init__(self, group: ProcessGroup, local: threading.Event | None = None) -> None:
        self.group = group
        self.local = local or threading.Event()

    def is_set(self) -> bool:
        return self.group.agree(self.local.is_set())

    def set(self) -> None:
        self.local.set()


class ContextParallelManager(ModelManager):
    """A ModelManager whose transformers run Ulysses attention across the process group. On rank 0 `generate` also
    tells the other ranks to run the request; they run `follow` until rank 0 sends None (`stop`)."""

    def __init__(self, *args, group: ProcessGroup, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.group = group
        self.requested_options = self.options = for_context_parallel(self.requested_options)
        self._turn = threading.Lock()  # one request at a time through the group, sent and run in the same order

    def _apply_fast_path(self, requested: FastPathOptions) -> None:
        super()._apply_fast_path(for_context_parallel(requested))
        for pipe in self.pipes.values():
            if not context_parallel_on(pipe.transformer):
                enable_context_parallel(pipe.transformer, self.group.size)

    def compiles_beside_requests(self) -> bool:
        return False  # every rank runs the same collectives in the same order: one generation at a time

    def status(self):
        status = super().status()
        status.fast_path = " + ".join(filter(None, [status.fast_path, f"Ulysses over {self.group.size} GPUs"]))
        return status

    def generate(
        self,
        request: GenerationRequest,
        on_step: StepCallback | None = None,
        cancel_event: threading.Event | None = None,
    ) -> GenerationResult:
        """Rank 0: what could refuse the request here alone is checked first (the other ranks would wait in the
        transformer's collectives forever), then every rank runs it with the same seed and one cancel flag."""
        self._pipe(request.checkpoint)  # NotReady, in the manager's own words
        if self.content_policy is not None:
            self.content_policy.admit(request)  # block list, required filter: raise before anything is sent
        request = request.seeded()
        with self._turn:
            self.group.send(request)
            return super().generate(request, on_step, SharedCancel(self.group, cancel_event))

    def follow(self) -> None:
        """Every other rank: run what rank 0 sends, until it sends None. A failure here is rank 0's failure too
        (the same request, the same weights), and rank 0 reports it."""
        while (request := self.group.send(None)) is not None:
            try:
                super().generate(request, None, SharedCancel(self.group))
            except Exception as error:  # noqa: BLE001 - rank 0 records and reports it
                log.info("Rank %d: %s", self.group.rank, error)

    def stop_followers(self) -> None:
        """Tell the other ranks to stop (when the app stops: after the generation in flight, if any)."""
        if self._turn.acquire(timeout=STOP_WAIT_S):
            try:
                self.group.send(None)
            finally:
                self._turn.release()


def ready_everywhere(manager: ModelManager, group: ProcessGroup) -> None:
    """Wait until every rank's checkpoints are loaded (a barrier); NotReady on every rank if one failed to load."""
    loaded = all(manager.checkpoint_state(key) == "ready" for key in CHECKPOINTS)
    loaded = torch.tensor([int(loaded)], dtype=torch.int32)
    dist.all_reduce(loaded, op=dist.ReduceOp.MIN, group=group.control)
    if not loaded.item():
        raise NotReady("A GPU of the context-parallel group failed to load the checkpoints; see its log.")
