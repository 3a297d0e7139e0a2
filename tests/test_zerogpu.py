"""ZeroGPU wiring, with a stand-in `spaces` module (a real ZeroGPU Space is not reachable from CI)."""

import sys
import types

import pytest

from krea2 import GenerationRequest
from storage import HistoryStore
from studio.service import DoneEvent, StudioService
from studio.settings import Settings, load_settings
from studio.zerogpu import adapt_settings, wrap_service, zero_gpu


def fake_spaces(calls: list):
    module = types.ModuleType("spaces")

    def gpu(duration: int):
        def decorate(fn):
            def wrapper(*args, **kwargs):
                calls.append(duration)
                yield from fn(*args, **kwargs)

            return wrapper

        return decorate

    module.GPU = gpu
    return module


def test_only_on_zero_gpu_spaces(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", fake_spaces([]))
    assert zero_gpu(load_settings({})) is None
    assert zero_gpu(load_settings({"SPACES_ZERO_GPU": "true"})) is sys.modules["spaces"]


def test_zero_gpu_start_up_does_no_gpu_work(monkeypatch):
    """ZeroGPU attaches a GPU only inside `spaces.GPU` calls and has no torch.compile. Whatever the environment asked
    for, the engine options its settings lead to must resident fp8 transformers quantised on the CPU before the move,
    and no compile, no kernel probe and no CUDA graph (its addresses would not survive the next call's GPU)."""
    import krea2.speedups.attention as attention
    import studio.runtime as runtime
    from krea2.speedups import FastPathOptions, for_placement

    monkeypatch.setattr(runtime, "fp8_supported", lambda: True)  # a GPU that runs fp8, as ZeroGPU's do
    monkeypatch.setattr(attention, "flash4_unavailable_reason", lambda: pytest.fail("probed a kernel at start-up"))
    settings = adapt_settings(Settings(compile=True, fp8=False, placement="offload", text_graphs=True))
    options = runtime.fast_path_options(settings, cuda=True, demo=False, prepare_on_cpu=True)  # as app.py on ZeroGPU
    options = for_placement(options, settings.placement)
    assert settings.placement == "gpu"
    assert options == FastPathOptions(fp8=True, prepare_on_cpu=True, lora_masters=True)  # masters: CPU memory only


def test_settings_fit_zero_gpu():
    settings = adapt_settings(Settings(compile=True, fp8=False, placement="offload"))
    assert (settings.compile, settings.fp8, settings.placement) == (False, True, "gpu")
    assert settings.attention == "sdpa"


def test_generations_run_inside_spaces_gpu(manager, tmp_path):
    calls: list = []
    store = HistoryStore(tmp_path / "data").open()
    service = StudioService(manager, store)
    wrap_service(service, fake_spaces(calls))
    events = list(service.generate(GenerationRequest(prompt="zero", steps=1, width=256, height=256), "s"))
    assert calls == [120] and isinstance(events[-1], DoneEvent)
    list(service.compare(GenerationRequest(prompt="z", checkpoint="raw", steps=1, width=256, height=256),
                         GenerationRequest(prompt="z", steps=1, width=256, height=256), "s"))  # fmt: skip
    assert calls == [120, 120]
    store.close()
