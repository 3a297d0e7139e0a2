"""LoRAs in history and in the PNG: each generation records its LoRAs (name, AutoV3 hash, weight, checkpoint), its
PNG carries them as A1111/Forge write them, they come back from either, history filters by them, and an export
carries them."""

from __future__ import annotations

import pytest
from lora_helpers import random_factors, write_lora
from storage_helpers import new_generation

from krea2 import GenerationRequest
from krea2.errors import InvalidRequest, LoraError
from storage import HistoryFilter, HistoryStore
from storage.pnginfo import parse_parameters, read_parameters
from studio.recording import loras_of
from studio.service import WITH_LORAS, WITHOUT_LORAS, DoneEvent, StudioService

SMALL = {"width": 256, "height": 256, "steps": 1, "seed": 11}


@pytest.fixture(scope="module")
def ink(lora_manager, lora_dir):
    path = write_lora(
        lora_dir / "history" / "ink.safetensors", random_factors(lora_manager.pipes["turbo"].transformer), "kohya"
    )
    return "history/ink", path


@pytest.fixture
def service(lora_manager, tmp_path):
    store = HistoryStore(tmp_path / "data").open()
    yield StudioService(lora_manager, store)
    store.close()


def run(service, request):
    return [event for event in service.generate(request, "s") if isinstance(event, DoneEvent)]


def test_a_generation_records_its_loras_in_history_and_in_the_png(service, ink):
    name, _ = ink
    [done] = run(service, GenerationRequest(prompt="a fox", loras=[f"{name}:0.8"], **SMALL))
    library = service.manager.loras
    autov3 = library.hash(library.get(name))
    row = service.store.get(done.generation.id)
    assert [(x.name, x.hash, x.weight, x.checkpoint) for x in row.loras] == [(name, autov3, 0.8, "turbo")]
    png = read_parameters(service.store.absolute(row.images[0].path))
    assert png["parameters"].splitlines()[0] == f"a fox <lora:{name}:0.8>"
    assert f'Lora hashes: "{name}: {autov3[:12]}"' in png["parameters"]
    assert png["parsed"]["prompt"] == "a fox"  # the tags come back as LoRAs, not as prompt text
    assert png["parsed"]["loras"] == [{"name": name, "weight": 0.8, "hash": autov3[:12]}]
    assert png["request"]["loras"] == [{"name": name, "weight": 0.8, "hash": autov3[:12]}]


def test_reuse_finds_the_file_by_hash_when_it_was_renamed_and_says_what_is_missing(service, ink, lora_dir):
    name, path = ink
    [done] = run(service, GenerationRequest(prompt="a fox", loras=[f"{name}:0.5"], **SMALL))
    recorded = loras_of(service.store.get(done.generation.id))
    choices, notes = service.restore_loras(recorded)
    assert [(c.name, c.weight) for c in choices] == [(name, 0.5)] and notes == []
    moved = lora_dir / "renamed" / "ink-v2.safetensors"
    moved.parent.mkdir(exist_ok=True)
    moved.write_bytes(path.read_bytes())
    path.unlink()
    try:
        choices, notes = service.restore_loras(recorded)
        assert [(c.name, c.weight) for c in choices] == [("renamed/ink-v2", 0.5)]
        assert notes == [f"The LoRA {name} was found as renamed/ink-v2."]
        choices, notes = service.restore_loras([{"name": "gone", "weight": 1.0, "hash": "0123456789ab"}])
        assert choices == [] and notes == [
            "The LoRA gone (0123456789ab) is not in the LoRA folder; add it to use these settings as they were."
        ]
    finally:
        path.write_bytes(moved.read_bytes())
        moved.unlink()


def test_reuse_under_a_name_that_now_holds_another_file_finds_the_recorded_one_or_says_so(service, ink, lora_dir):
    """A name is not an identity: the hash recorded with the generation decides, and a changed file is said."""
    name, path = ink
    [done] = run(service, GenerationRequest(prompt="a fox", loras=[f"{name}:0.5"], **SMALL))
    recorded = loras_of(service.store.get(done.generation.id))
    digest = recorded[0]["hash"]
    original = path.read_bytes()
    kept = lora_dir / "history" / "ink-original.safetensors"
    kept.write_bytes(original)  # the recorded file, under another name
    write_lora(path, random_factors(service.manager.pipes["turbo"].transformer, seed=5), "kohya")  # a new "ink"
    try:
        choices, notes = service.restore_loras(recorded)
        assert [(c.name, c.weight) for c in choices] == [("history/ink-original", 0.5)]
        assert notes == [f"The LoRA {name} was found as history/ink-original."]
        kept.unlink()
        choices, notes = service.restore_loras(recorded)  # only the new file is left
        now = service.manager.loras.hash(service.manager.loras.get(name))
        assert [(c.name, c.weight) for c in choices] == [(name, 0.5)] and now[:12] != digest[:12]
        assert notes == [f"The LoRA {name} has changed since ({digest[:12]} then, {now[:12]} now): the folder's file "
                         "is used, so the picture may differ."]  # fmt: skip
    finally:
        path.write_bytes(original)
        kept.unlink(missing_ok=True)


def test_an_a1111_png_s_loras_come_back_by_name_or_hash(service, ink):
    name, _ = ink
    short = service.manager.loras.short_hash(service.manager.loras.get(name))
    text = f'a fox, <lora:watercolor_v1:0.7>\nSteps: 20, Lora hashes: "watercolor_v1: {short}"'
    parsed = parse_parameters(text)
    choices, notes = service.restore_loras(parsed["loras"])
    assert [(c.name, c.weight) for c in choices] == [(name, 0.7)]  # another name, the same file: its hash finds it
    assert notes == [f"The LoRA watercolor_v1 was found as {name}."]


def test_a_missing_lora_is_refused_before_anything_is_recorded(service):
    with pytest.raises(InvalidRequest, match="must be in the LoRA folder, and missing is not"):
        run(service, GenerationRequest(prompt="a fox", loras=["missing:1"], **SMALL))
    assert service.store.count() == 0


def test_a_failed_generation_keeps_the_loras_it_asked_for(service, lora_dir):
    trained = random_factors(service.manager.pipes["turbo"].transformer)
    factors = {module: (down, up * 0) for module, (down, up) in trained.items()}
    write_lora(lora_dir / "history" / "untrained.safetensors", factors, "diffusers")
    with pytest.raises(LoraError, match="would change nothing"):
        run(service, GenerationRequest(prompt="a fox", loras=["history/untrained:1"], **SMALL))
    [row] = service.store.page().items
    assert row.status == "failed" and "would change nothing" in row.error
    assert [(x.name, x.hash, x.weight) for x in row.loras] == [("history/untrained", "", 1.0)]


def test_with_versus_without_loras_runs_twice_on_one_seed(service, ink):
    name, _ = ink
    request = GenerationRequest(prompt="a fox", loras=[f"{name}:1"], **{**SMALL, "seed": None})
    done = [event for event in service.compare_loras(request, "s") if isinstance(event, DoneEvent)]
    assert [event.label for event in done] == [WITHOUT_LORAS, WITH_LORAS]
    without, with_ = (event.result for event in done)
    assert without.request.seed == with_.request.seed and without.loras == [] and len(with_.loras) == 1
    assert done[0].generation.comparison_id == done[1].generation.comparison_id is not None
    with pytest.raises(InvalidRequest, match="must name a LoRA for this checkpoint"):
        service.compare_loras(GenerationRequest(prompt="a fox"), "s")


def test_history_filters_by_lora(store):
    def lora(name, weight=1.0):
        return {"name": name, "hash": "ab" * 32, "weight": weight, "checkpoint": "turbo"}

    first = store.add(new_generation("with ink", loras=[lora("ink", 0.8), lora("styles/paper")]))
    store.add(new_generation("without"))
    third = store.add(new_generation("ink again", loras=[lora("ink", -0.5)]))
    ink = HistoryFilter(lora="ink")
    assert [g.id for g in store.page(filters=ink).items] == [third.id, first.id] and store.count(ink) == 2
    assert [g.id for g in store.page(filters=HistoryFilter(lora="styles/paper", text="ink")).items] == [first.id]
    assert store.count(HistoryFilter(lora="nothing")) == 0
    assert store.lora_names() == ["ink", "styles/paper"]
    assert [(x.name, x.weight) for x in store.get(first.id).loras] == [("ink", 0.8), ("styles/paper", 1.0)]
    store.delete(first.id)
    assert store.lora_names() == ["ink"]  # a generation's LoRAs go with it


def test_an_export_carries_the_loras(store, tmp_path):
    lora = {"name": "ink", "hash": "cd" * 32, "weight": 0.75, "checkpoint": "raw"}
    store.add(new_generation("exported", loras=[lora]))
    archive = tmp_path / "history.zip"
    store.export_archive(archive)
    other = HistoryStore(tmp_path / "other").open()
    try:
        assert other.import_archive(archive) == (1, 0)
        [row] = other.page().items
        assert [(x.name, x.hash, x.weight, x.checkpoint) for x in row.loras] == [("ink", "cd" * 32, 0.75, "raw")]
    finally:
        other.close()


def test_a_history_from_before_loras_is_upgraded_in_place(database_url, tmp_path):
    """A database at revision 0001 with generations in it: the LoRA table is added, the rows stay, with no LoRAs."""
    from alembic import command
    from sqlalchemy import inspect

    from storage.database import alembic_config, current_revision, make_engine

    engine = make_engine(database_url)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.exec_driver_sql(
            "INSERT INTO generations (created_at, checkpoint, prompt, negative_prompt, seed, steps, guidance, width, "
            "height, num_images, status, device, placement, app_version, favorite, files_missing) VALUES "
            "('2026-11-01 10:00:00', 'turbo', 'before loras', '', 1, 8, 0.0, 256, 256, 1, 'ok', 'cpu', 'cpu', '0.1.0',"
            " false, false)"
        )
    assert "generation_loras" not in inspect(engine).get_table_names()
    engine.dispose()
    store = HistoryStore(tmp_path / "data", database_url).open()
    try:
        [row] = store.page().items
        assert row.prompt == "before loras" and row.loras == []
        store.add(new_generation("after", loras=[{"name": "ink", "hash": "", "weight": 1.0, "checkpoint": "turbo"}]))
        assert store.lora_names() == ["ink"]
    finally:
        store.close()
    from alembic.script import ScriptDirectory

    engine = make_engine(database_url)
    assert current_revision(engine) == ScriptDirectory.from_config(config).get_current_head()
    engine.dispose()
