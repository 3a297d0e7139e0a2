"""The API's LoRAs, against the running app: `loras` (a list of "name:weight") on /generate, /compare and
/compare_loras, the LoRA list (/loras), and /history filtered by LoRA. Clients written before LoRAs keep working."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from api_helpers import call, files_in, one_sentence
from app_server import AppServer
from lora_helpers import random_factors, write_lora

from krea2.demo import build_transformer
from krea2.lora_files import autov3_hash
from storage import HistoryStore
from storage.pnginfo import read_parameters

SMALL = {"width": 256, "height": 256}


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_sources):
    data = tmp_path_factory.mktemp("lora-api") / "data"
    write_lora(data / "loras" / "ink.safetensors", random_factors(build_transformer(), seed=1), "kohya")
    write_lora(data / "loras" / "styles" / "paper.safetensors", random_factors(build_transformer(), seed=2), "krea")
    app = AppServer(data, Path(demo_sources["turbo"]).parent)
    yield app.start()
    app.stop()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False)


def row_count(server) -> int:
    store = HistoryStore(server.data_dir).open(repair=False)
    try:
        return store.count()
    finally:
        store.close()


def test_the_lora_list_names_the_folder(client, server):
    ink = server.data_dir / "loras" / "ink.safetensors"
    listed = client.predict(api_name="/loras")
    # The demo app lists the demo checkpoints' own LoRA beside the folder's (tests/test_demo_lora.py).
    assert [item["name"] for item in listed] == ["demo/pixel-style", "ink", "styles/paper"]
    assert listed[1] == {"name": "ink", "hash": autov3_hash(ink), "bytes": ink.stat().st_size}
    damaged = server.data_dir / "loras" / "empty.safetensors"
    damaged.write_bytes(b"")  # listed with its problem, no longer the whole list's error (a hostile pass)
    try:
        listed = client.predict(api_name="/loras")
    finally:
        damaged.unlink()
    assert listed[1] == {"name": "empty", "hash": None, "bytes": 0, "problem": "The LoRA empty is an empty file."}
    assert listed[2]["hash"] == autov3_hash(ink)


def test_generate_takes_loras_and_reports_them(client, server):
    images, info = client.predict(prompt="a red circle", seed=5, steps=1, loras=["ink:0.8", "styles/paper:-0.5"],
                                  api_name="/generate", **SMALL)  # fmt: skip
    ink = autov3_hash(server.data_dir / "loras" / "ink.safetensors")
    assert (info["loras"][0]["name"], info["loras"][0]["hash"], info["loras"][0]["weight"]) == ("ink", ink, 0.8)
    assert [x["name"] for x in info["loras"]] == ["ink", "styles/paper"]
    text = read_parameters(images[0]["image"])["parameters"]
    assert text.startswith("a red circle <lora:ink:0.8> <lora:styles/paper:-0.5>")
    page = client.predict(search="", lora="styles/paper", api_name="/history")
    assert page["total"] == 1 and page["items"][0]["loras"][1] == {
        "name": "styles/paper", "hash": autov3_hash(server.data_dir / "loras/styles/paper.safetensors"),
        "weight": -0.5,
    }  # fmt: skip
    assert client.predict(search="", lora="nothing", api_name="/history")["total"] == 0


def test_tags_in_the_prompt_are_loras_too(client, server):
    images, info = client.predict(prompt="a red circle <lora:ink:0.8>", seed=5, steps=1, loras=["styles/paper:-0.5"],
                                  api_name="/generate", **SMALL)  # fmt: skip
    assert [(x["name"], x["weight"]) for x in info["loras"]] == [("styles/paper", -0.5), ("ink", 0.8)]
    text = read_parameters(images[0]["image"])["parameters"]
    assert text.startswith("a red circle <lora:styles/paper:-0.5> <lora:ink:0.8>\n")
    rows = row_count(server)
    kind, message = call(server.url, "generate", json.dumps({"data": ["a fox <lora:nowhere:1>", "turbo", "", 1, "",
                                                                      256, 256, 1, 1]}))  # fmt: skip
    assert kind == "error" and one_sentence(message) and "nowhere is not" in message, message
    assert row_count(server) == rows


def test_compare_runs_raw_and_turbo_each_with_the_loras(client):
    images, infos = client.predict(prompt="a blue square", seed=2, raw_steps=1, turbo_steps=1, loras="ink:1",
                                   api_name="/compare", **SMALL)  # fmt: skip
    assert len(images) == 2 and infos["raw"]["seed"] == infos["turbo"]["seed"] == 2
    assert [x["name"] for x in infos["raw"]["loras"]] == [x["name"] for x in infos["turbo"]["loras"]] == ["ink"]


def test_compare_loras_runs_without_and_with_on_one_seed(client):
    images, infos = client.predict(prompt="a blue square", checkpoint="turbo", steps=1, loras=["ink:1"],
                                   api_name="/compare_loras", **SMALL)  # fmt: skip
    assert len(images) == 2 and infos["without"]["seed"] == infos["with"]["seed"]
    assert infos["without"]["loras"] == [] and infos["with"]["loras"][0]["name"] == "ink"
    assert infos["without"]["comparison_id"] == infos["with"]["comparison_id"]


def test_compare_loras_starts_both_from_an_init_image(client, tmp_path):
    from gradio_client import handle_file
    from PIL import Image

    init = tmp_path / "init.png"
    Image.new("RGB", (320, 256), (20, 160, 40)).save(init)
    _images, infos = client.predict(prompt="a blue square", checkpoint="turbo", steps=2, loras=["ink:1"],
                                    image=handle_file(str(init)), strength=0.5, api_name="/compare_loras")  # fmt: skip
    for run in ("without", "with"):
        assert (infos[run]["mode"], infos[run]["strength"], infos[run]["width"]) == ("img2img", 0.5, 320)


@pytest.mark.parametrize(
    ("loras", "needle"),
    [
        (["nowhere:1"], "loras: must be in the LoRA folder, and nowhere is not"),
        (["ink:3"], "loras: must be between -2.0 and 2.0"),
        (["ink", "ink:0.5"], "loras: must name each LoRA once per checkpoint"),
        ([{"name": "ink", "strength": 1}], "loras: entries take only name, weight and target"),
        (["a", "b", "c", "d", "e"], "loras: must be at most 4"),
        (7, "loras: must be a list"),
    ],
)
def test_bad_loras_are_one_sentence_naming_the_field_and_leave_nothing(server, loras, needle):
    rows, files = row_count(server), files_in(server.data_dir)
    body = ["a fox", "turbo", "", 1, "", 256, 256, 1, 1, loras]
    kind, message = call(server.url, "generate", json.dumps({"data": body}))
    assert kind == "error" and one_sentence(message) and message.startswith(needle), message
    assert (row_count(server), files_in(server.data_dir)) == (rows, files)


def test_a_client_from_before_loras_is_still_served(server):
    kind, payload = call(server.url, "generate", json.dumps({"data": ["a fox", "turbo", "", 1, "", 256, 256, 1, 1]}))
    assert kind == "complete", payload
    assert payload[1]["loras"] == []
    kind, page = call(server.url, "history", json.dumps({"data": ["", "all", False, False, "", 1]}))
    assert kind == "complete" and page[0]["total"] >= 1
    kind, message = call(server.url, "generate", json.dumps({"data": ["a fox", "turbo"]}))
    assert kind == "error" and message.startswith("negative_prompt: missing")  # still required: the old ones


def test_the_default_upload_cap_takes_lora_sized_files(server):
    """LoRAs for the full model are 0.2-0.5 GB; the old 20 MB cap refused all of them (KREA2_MAX_UPLOAD_MB)."""
    from test_security import fetch, multipart

    body, content_type = multipart("style.safetensors", b"\0" * (30 * 2**20))
    status, _headers, _body = fetch(server.url + "gradio_api/upload", "POST", body, {"Content-Type": content_type})
    assert status == 200
