"""Which devices the app generates on, and the engine built over them: today's single ModelManager for one device, a
WorkerPool (krea2/workers.py) of one manager per device for several (`KREA2_DEVICES`), or with
`KREA2_CONTEXT_PARALLEL` one image across all GPUs, one process each (krea2/context_parallel.py): rank 0 serves the
app, the other ranks `follow`."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

from krea2.content_filter import ContentPolicy, ImageClassifierFilter
from krea2.context_parallel import ContextParallelManager, ProcessGroup, ready_everywhere, refusal
from krea2.lora_library import LoraLibrary
from krea2.manager import ModelManager
from krea2.workers import WorkerPool

from .runtime import build_manager, fast_path_options, lora_library
from .settings import SettingError, Settings

log = logging.getLogger(__name__)


def cuda_device_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def choose_devices(requested: tuple[str, ...] | None, cuda_count: int) -> list[str]:
    """The workers' devices: those `requested` (KREA2_DEVICES), or with `auto` (None) every visible CUDA GPU, else one
    CPU worker. Raises SettingError for a GPU this machine does not have."""
    if requested is None:
        return [f"cuda:{index}" for index in range(cuda_count)] or ["cpu"]
    for device in requested:
        if device == "cpu":
            continue
        index = int(device.removeprefix("cuda:"))
        if index >= cuda_count:
            have = f"{cuda_count} CUDA device{'s' if cuda_count != 1 else ''}" if cuda_count else "no CUDA GPU"
            raise SettingError(f"KREA2_DEVICES names {device}, but this machine has {have}")
    return list(requested)


def copy_for_device(policy: ContentPolicy | None) -> ContentPolicy | None:
    """The same content policy with a classifier of its own (each worker loads one onto its device, where its
    images are)."""
    if policy is None:
        return None
    classifier = policy.classifier
    return ContentPolicy(
        classifier=ImageClassifierFilter(classifier.source, classifier.blocking_labels, classifier.threshold)
        if classifier is not None
        else None,
        blocklist=policy.blocklist,
        required=policy.required,
        off_reason=policy.off_reason,
        how_to_fix=policy.how_to_fix,
    )


def build_engine(
    settings: Settings,
    *,
    prepare_on_cpu: bool = False,
    compile_cache_folder: Path | None = None,
    loras: LoraLibrary | None = None,
    content_policy: ContentPolicy | None = None,
    cuda_count: int | None = None,
    group: ProcessGroup | None = None,
) -> ModelManager | WorkerPool:
    """One device: the manager `build_manager` builds today (with `auto`, on the GPU it picks). Several: a pool of one
    manager per device, each choosing its own placement plan for its card, sharing the LoRA folder; the first keeps
    the compile cache file (torch saves the whole process's compiled work, so one file serves all). Raises
    SettingError for a device this machine lacks. With `group` (`join_group`): this rank's context-parallel manager.
    """
    build = functools.partial(build_manager, settings, prepare_on_cpu=prepare_on_cpu, loras=loras)
    if group is not None:
        return build(
            compile_cache_folder=compile_cache_folder, content_policy=content_policy, device=str(group.device),
            manager_class=functools.partial(ContextParallelManager, group=group),
        )  # fmt: skip
    devices = choose_devices(settings.devices, cuda_device_count() if cuda_count is None else cuda_count)
    if len(devices) == 1:
        device = None if settings.devices is None else devices[0]
        return build(compile_cache_folder=compile_cache_folder, content_policy=content_policy, device=device)
    cuda = devices[0] != "cpu"
    if fast_path_options(settings, cuda=cuda, demo=settings.demo or not cuda).compile:
        from krea2.speedups.compile import allow_recompiles_per_device

        allow_recompiles_per_device(len(devices))
    managers = []
    for index, device in enumerate(devices):
        first = index == 0
        managers.append(build(
            compile_cache_folder=compile_cache_folder if first else None,
            content_policy=content_policy if first else copy_for_device(content_policy), device=device,
        ))  # fmt: skip
    log.info("%d workers: %s", len(managers), ", ".join(devices))
    return WorkerPool(managers)


# ------------------------------------------------------------------------------------------------ context parallelism
def join_group(settings: Settings, cuda_count: int | None = None) -> ProcessGroup | None:
    """With KREA2_CONTEXT_PARALLEL on: this process's rank, joined to the others (torchrun started them); None when
    off. Raises SettingError, with what to do, when it cannot run here (one GPU, no torchrun)."""
    if settings.context_parallel == "off":
        return None
    if settings.devices is not None:
        raise SettingError("KREA2_DEVICES and KREA2_CONTEXT_PARALLEL: choose one (context parallelism runs one image "
                           "on every GPU torchrun gives it; KREA2_DEVICES runs one worker per device)")  # fmt: skip
    group = ProcessGroup.launched()
    cuda_count = cuda_device_count() if cuda_count is None else cuda_count
    if reason := refusal(settings.context_parallel, group.size, cuda_count):
        raise SettingError(reason)
    return group


def follow(settings: Settings, group: ProcessGroup) -> int:
    """A rank other than 0: load the same checkpoints onto this rank's GPU and run what rank 0 sends until it stops.
    Returns the exit status."""
    from storage.files import default_data_dir

    manager = build_engine(settings, loras=lora_library(settings, settings.data_dir or default_data_dir()),
                           group=group)  # fmt: skip
    manager.start(background=False)
    ready_everywhere(manager, group)
    log.info("Rank %d of %d ready on %s: following rank 0", group.rank, group.size, group.device)
    manager.follow()
    return 0
