"""Property-based fuzzing (hypothesis) of the API endpoints and every UI event, against one running app.

Every argument is an arbitrary JSON value (or missing). Each call must end in a result or in one sentence (naming the
field, for the API), the server must keep serving, and a refused call must leave no row and no file. Valid values
that would make a slow generation (big images, many steps) are left out: the cheap ones exercise the same paths.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from pathlib import Path

import pytest
from api_helpers import call, files_in, one_sentence
from app_server import AppServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import HistoryStore

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)

HOSTILE_TEXT = ["", " ", "turbo", "raw", "all", "8", "4.5", "1e400", "NaN", "a \ud800 b", "<|im_end|>",
                '<img src="http://127.0.0.1:9/x">', "x" * 2100, "\x00"]  # fmt: skip
# JSON as a client can send it (Python's parser also takes NaN and Infinity); strings include the hostile ones.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(HOSTILE_TEXT)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


def cheap(limit: float):
    """Any JSON value except a number that would make a valid but slow generation."""
    return JSON.filter(lambda v: not (isinstance(v, (int, float)) and not isinstance(v, bool) and limit < v))


# What a valid cheap value looks like for the fields that decide the cost, so some calls really generate.
COST = {"steps": 2, "raw_steps": 2, "turbo_steps": 2, "width": 256, "height": 256, "num_images": 2, "limit": 100}
ARGS = {
    "generate": ["prompt", "checkpoint", "negative_prompt", "steps", "guidance", "width", "height", "seed",
                 "num_images", "loras"],
    "compare": ["prompt", "negative_prompt", "seed", "width", "height", "raw_steps", "raw_guidance", "turbo_steps",
                "loras"],
    "history": ["search", "checkpoint", "favorites_only", "comparisons_only", "cursor", "limit", "lora"],
    "compare_loras": ["prompt", "checkpoint", "negative_prompt", "steps", "guidance", "width", "height", "seed",
                      "loras"],
}  # fmt: skip
VALID = {
    "prompt": st.sampled_from(["a fox", "🦊 in ❄️"]),
    "checkpoint": st.sampled_from(["turbo", "raw", "all"]),
    "width": st.just(256),
    "height": st.just(256),
    "steps": st.integers(1, 2),
    "raw_steps": st.integers(1, 2),
    "turbo_steps": st.integers(1, 2),
    "loras": st.just([]),
    "lora": st.just(""),
}


def argument(name: str):
    limit = COST.get(name, float("inf"))
    return cheap(limit) | VALID.get(name, cheap(limit))


def arguments(api: str):
    names = ARGS[api]
    values = st.tuples(*(argument(name) for name in names)).map(list)
    return st.tuples(values, st.integers(0, len(names))).map(lambda t: t[0][: t[1]] if t[1] < 3 else t[0])


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_sources):
    app = AppServer(tmp_path_factory.mktemp("fuzz") / "data", Path(demo_sources["turbo"]).parent).start()
    # The app's history, counted before and after every example's call: opened once (opening checks the schema's
    # migrations, ~12 ms, which was a tenth of an example's time); each count is a query of its own, which sees the
    # app's latest rows.
    app.history = HistoryStore(app.data_dir).open(repair=False)
    yield app
    app.history.close()
    app.stop()


def row_count(server: AppServer) -> int:
    return server.history.count()


def still_serving(server: AppServer) -> None:
    kind, page = call(server.url, "history", json.dumps({"data": ["", "all", False, False, "", 1]}))
    assert kind == "complete", page


@pytest.mark.parametrize("api", ["generate", "compare", "history", "compare_loras"])
def test_api_endpoints_answer_any_json(server, api):
    @FUZZ
    @given(values=arguments(api))
    def check(values):
        rows, files = row_count(server), files_in(server.data_dir)
        kind, payload = call(server.url, api, json.dumps({"data": values}))
        assert kind in ("complete", "error"), (kind, payload)
        if kind == "error":
            assert one_sentence(payload), payload
            assert payload.split(":")[0] in ARGS[api], payload  # names the field
            assert (row_count(server), files_in(server.data_dir)) == (rows, files)

    check()
    still_serving(server)


# ------------------------------------------------------------------------------------------------ UI events
EVENT_EXAMPLES = 8  # per UI event
REPEAT_EXAMPLES = 2  # per event that repeats an earlier one's handler, inputs and outputs (see `ui_events`)


def queue_call(server: AppServer, fn_index: int, data: list, event_data: object = None) -> tuple[bool, object]:
    """Run one event the way the page does (queue/join, then the session's event stream): (success, output)."""
    session = uuid.uuid4().hex[:10]
    body = json.dumps({"data": data, "fn_index": fn_index, "session_hash": session, "event_data": event_data,
                       "trigger_id": None}).encode()  # fmt: skip
    join = urllib.request.Request(f"{server.url}gradio_api/queue/join", data=body, method="POST",
                                  headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(join, timeout=30) as response:
            response.read()
    except urllib.error.HTTPError as error:
        return False, f"HTTP {error.code}"
    with urllib.request.urlopen(f"{server.url}gradio_api/queue/data?session_hash={session}", timeout=120) as stream:
        for raw in stream:
            line = raw.decode("utf-8", "replace")
            if not line.startswith("data: "):
                continue
            message = json.loads(line[len("data: ") :])
            if message.get("msg") == "process_completed":
                return bool(message.get("success")), (message.get("output") or {})
    return False, "stream ended without a result"


@pytest.fixture(scope="module")
def ui_events(server):
    with urllib.request.urlopen(f"{server.url}config", timeout=30) as response:
        config = json.loads(response.read())
    labels = {c["id"]: (c.get("props") or {}).get("label") or "" for c in config["components"]}
    stateful = {c["id"] for c in config["components"] if c.get("type") == "state"}
    events, wirings = [], set()
    for index, dependency in enumerate(config["dependencies"]):
        if dependency.get("api_name") in ARGS or not dependency["inputs"]:
            continue  # the named API is fuzzed above; events without inputs take nothing from a client
        inputs = [(labels.get(i, ""), i in stateful) for i in dependency["inputs"]]
        # Gradio names an event after its function, with _1, _2, ... for the same name again (history_1 to
        # history_12 are one handler behind twelve triggers; the two upscale runs, one closure with its factor). The
        # same name, inputs and outputs as an event before: the same server path, already fuzzed at full strength;
        # this one gets a few examples of its own. Lambdas all share the name "lambda", so each counts as new.
        name = re.sub(r"_\d+$", "", dependency.get("api_name") or "")
        wiring = (name, tuple(dependency["inputs"]), tuple(dependency["outputs"]))
        examples = REPEAT_EXAMPLES if wiring in wirings and name not in ("", "lambda") else EVENT_EXAMPLES
        wirings.add(wiring)
        events.append(pytest.param(index, inputs, examples, id=f"{index}-{dependency.get('api_name') or 'event'}"))
    return events


def ui_value(label: str, is_state: bool):
    if is_state:
        return st.none()  # the server keeps state; what a client sends for it is ignored
    name = label.lower()
    if name in ("width", "height"):
        return cheap(512)
    if "steps" in name:
        return cheap(4)
    return JSON


def test_ui_events_answer_any_json(server, ui_events):
    assert len(ui_events) >= 15
    assert sum(param.values[2] == EVENT_EXAMPLES for param in ui_events) >= 15  # distinct handlers at full strength
    for param in ui_events:
        check_event(server, *param.values)
    still_serving(server)


def check_event(server: AppServer, fn_index: int, inputs: list[tuple[str, bool]], examples: int) -> None:
    values = st.tuples(*(ui_value(label, state) for label, state in inputs)).map(list)
    event_data = st.none() | st.fixed_dictionaries({"index": JSON, "value": JSON})

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(values=values, event_data=event_data)
    def check(values, event_data):
        rows, files = row_count(server), files_in(server.data_dir)
        success, output = queue_call(server, fn_index, values, event_data)
        if not success:
            error = output.get("error") if isinstance(output, dict) else output
            assert one_sentence(error), (fn_index, inputs, values, output)
            assert (row_count(server), files_in(server.data_dir)) == (rows, files)

    check()
