"""The CLI's LoRAs: `generate --lora name:weight` (repeatable), `lora list`, `lora pull` (from the Hub's cache here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from lora_helpers import random_factors, write_lora
from test_cli import parsed, run_cli
from test_lora_library import fill_hub_cache

from krea2.demo import build_transformer
from krea2.lora_files import autov3_hash
from storage.pnginfo import read_parameters
from studio import cli


def test_generate_applies_repeated_loras_and_reports_them(tmp_path, demo_sources, capsys):
    """In-process (tests/test_cli.py runs the real process): the LoRAs reach the image, its PNG and the report."""
    loras = tmp_path / "loras"
    ink = write_lora(loras / "ink.safetensors", random_factors(build_transformer(), seed=1), "kohya")
    paper = write_lora(loras / "styles" / "paper.safetensors", random_factors(build_transformer(), seed=2), "krea")
    env = {"KREA2_DATA_DIR": str(tmp_path / "data"), "KREA2_LORA_DIR": str(loras),
           "KREA2_DEMO_CHECKPOINTS": str(Path(demo_sources["turbo"]).parent)}  # fmt: skip
    args = parsed("--demo", "--prompt", "a red circle", "--seed", "7", "--steps", "2", "--width", "256",
                  "--height", "256", "--lora", "ink:0.8", "--lora", "styles/paper:-0.5",
                  "--out", str(tmp_path / "a.png"))  # fmt: skip
    assert cli.run(args, environ=env) == 0, capsys.readouterr().err
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["loras"] == [
        {"name": "ink", "hash": autov3_hash(ink), "weight": 0.8},
        {"name": "styles/paper", "hash": autov3_hash(paper), "weight": -0.5},
    ]
    text = read_parameters(tmp_path / "a.png")["parameters"]
    assert text.startswith("a red circle <lora:ink:0.8> <lora:styles/paper:-0.5>\n")
    assert f'Lora hashes: "ink: {autov3_hash(ink)[:12]}, styles/paper: {autov3_hash(paper)[:12]}"' in text


def test_bad_loras_are_refused_before_anything_loads(capsys):
    for lora in ("ink:3", "ink:x", "../secret:1"):
        assert cli.run(parsed("--demo", "--prompt", "x", "--lora", lora), environ={}) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: lora_"), err
    five = [arg for name in "abcde" for arg in ("--lora", name)]
    assert cli.run(parsed("--demo", "--prompt", "x", *five), environ={}) == 2
    assert "loras: must be at most 4" in capsys.readouterr().err


def test_a_lora_the_folder_lacks_is_bad_input_before_any_model_loads_or_row_is_written(tmp_path, capsys, monkeypatch):
    from storage import HistoryStore
    from studio import runtime

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built for a request that names a missing LoRA")

    monkeypatch.setattr(runtime, "build_manager", no_model)
    env = {"KREA2_DATA_DIR": str(tmp_path / "data"), "KREA2_LORA_DIR": str(tmp_path / "loras")}
    assert cli.run(parsed("--demo", "--prompt", "x", "--lora", "nope:1"), environ=env) == 2
    err = capsys.readouterr().err
    assert err == "error: loras: must be in the LoRA folder, and nope is not (refresh the list?) (got 'nope')\n", err
    store = HistoryStore(tmp_path / "data").open()
    assert store.count() == 0
    store.close()


def test_lora_list_names_sizes_and_hashes(tmp_path, capsys):
    loras = tmp_path / "loras"
    ink = write_lora(loras / "ink.safetensors", random_factors(build_transformer(), ["img_in"]), "kohya")
    write_lora(loras / "styles" / "paper.safetensors", random_factors(build_transformer(), ["img_in"]), "diffusers")
    args = cli.build_parser().parse_args(["lora", "list", "--lora-dir", str(loras)])
    assert cli.run(args, environ={}) == 0
    lines = capsys.readouterr().out.splitlines()
    # Without a GPU the demo checkpoints run, and the LoRA trained for them is listed with the folder's own.
    demo = [] if torch.cuda.is_available() else ["demo/pixel-style"]
    assert [line.split()[0] for line in lines] == [*demo, "ink", "styles/paper"]
    ink_hash = autov3_hash(ink)[:12]
    assert lines[len(demo)].split()[-1] == ink_hash
    assert (
        cli.run(cli.build_parser().parse_args(["lora", "list", "--json"]), environ={"KREA2_LORA_DIR": str(loras)}) == 0
    )
    line = json.loads(capsys.readouterr().out.splitlines()[len(demo)])
    assert line["name"] == "ink" and line["hash"] == autov3_hash(ink) and line["bytes"] == ink.stat().st_size
    assert (
        cli.run(cli.build_parser().parse_args(["lora", "list", "--lora-dir", str(tmp_path / "none")]), environ={}) == 0
    )
    said = capsys.readouterr()
    out = said.out
    assert [line.split()[0] for line in out.splitlines()] == demo if demo else "No LoRAs in" in out
    assert said.err == f"warning: the LoRA folder {tmp_path / 'none'} does not exist (yet): nothing in it to list\n"
    (tmp_path / "a-file").write_text("not a folder")
    listing = cli.build_parser().parse_args(["lora", "list", "--lora-dir", str(tmp_path / "a-file")])
    assert cli.run(listing, environ={}) == 0
    assert capsys.readouterr().err.endswith("a-file is a file, not a folder: nothing in it to list\n")
    # The default folder (in the data folder, made at first use) is not named when it does not exist yet.
    fresh = {"KREA2_DATA_DIR": str(tmp_path / "d")}
    assert cli.run(cli.build_parser().parse_args(["lora", "list"]), environ=fresh) == 0
    assert capsys.readouterr().err == ""
    (loras / "empty.safetensors").write_bytes(b"")  # a damaged file is listed with its problem; the rest as before
    (loras / "weird:name.safetensors").write_bytes(ink.read_bytes())  # and one whose name a prompt cannot hold, said
    assert cli.run(cli.build_parser().parse_args(["lora", "list", "--lora-dir", str(loras)]), environ={}) == 0
    said = capsys.readouterr()
    assert said.err.startswith("warning: weird:name.safetensors is not listed: its name must be a LoRA name")
    assert said.err.endswith("; rename the file.\n") and said.err.count("\n") == 1
    lines = said.out.splitlines()
    assert [line.split()[0] for line in lines] == [*demo, "empty", "ink", "styles/paper"]
    assert lines[len(demo)].endswith("The LoRA empty is an empty file.") and lines[len(demo) + 1].endswith(ink_hash)


def test_lora_pull_takes_a_hub_lora_into_the_folder(tmp_path):
    cache = tmp_path / "hub-cache"
    source = write_lora(tmp_path / "src" / "ink.safetensors", random_factors(build_transformer(), ["img_in"]), "kohya")
    fill_hub_cache(cache, "someone/krea2-ink", {"ink.safetensors": source})
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "KREA2_LORA_DIR": str(tmp_path / "loras")}
    done = run_cli("lora", "pull", "someone/krea2-ink", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == "hub/someone/krea2-ink/ink"
    missing = run_cli("lora", "pull", "someone/elsewhere", env=env)
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert "is not in the local Hub cache and the Hub cannot be reached" in missing.stderr
