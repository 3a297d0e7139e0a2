"""ZeroGPU wiring, with a stand-in `spaces` module (a real ZeroGPU Space is not reachable from CI)."""

import sys
import types

import pytest

from krea2 import GenerationRequest
from krea2.runtime import EngineSettings
from storage import HistoryStore
from ui.service import DoneEvent, StudioService
from ui.zerogpu import adapt_settings, wrap_service, zero_gpu


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
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    monkeypatch.setitem(sys.modules, "spaces", fake_spaces([]))
    assert zero_gpu() is None
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert zero_gpu() is sys.modules["spaces"]


def test_zero_gpu_start_up_does_no_gpu_work(monkeypatch):
    """ZeroGPU attaches a GPU only inside `spaces.GPU` calls and has no torch.compile. Whatever the environment asked
    for, the engine options its settings lead to must resident fp8 transformers quantised on the CPU before the move,
    and no compile, no kernel probe and no CUDA graph (its addresses would not survive the next call's GPU)."""
    import krea2.runtime as runtime
    import krea2.speedups.attention as attention
    from krea2.speedups import FastPathOptions, for_placement

    monkeypatch.setattr(runtime, "fp8_supported", lambda: True)  # a GPU that runs fp8, as ZeroGPU's do
    monkeypatch.setattr(attention, "flash4_unavailable_reason", lambda: pytest.fail("probed a kernel at start-up"))
    settings = adapt_settings(EngineSettings(compile=True, fp8=False, placement="offload", text_graphs=True))
    options = for_placement(runtime.fast_path_options(settings, cuda=True, demo=False), settings.placement)
    assert settings.placement == "gpu"
    assert options == FastPathOptions(fp8=True, prepare_on_cpu=True)


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
