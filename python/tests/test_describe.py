"""`spindle-worker describe` answers what `langgraph dev` answered for the same project.

`langgraph_dev_answers.json` was recorded from `langgraph dev` (langgraph-api 0.16.7,
langgraph 1.2.24) serving tests/graphs: `POST /assistants/search`, and for each assistant
`GET /assistants/{id}/schemas`, `/graph` and `/graph?xray=true`. Nothing is masked: the ids
are uuid5s, so they must be equal too.
"""

from __future__ import annotations

import json
import uuid

import pytest

from conftest import PROJECT, TESTS, run_cli

RECORDED = json.loads((TESTS / "langgraph_dev_answers.json").read_text())
GRAPH_IDS = ["chat", "uncompiled", "modgraph", "factory_cfg", "factory_rt", "factory_acm", "sub"]


@pytest.fixture(scope="module")
def described(tmp_path_factory):
    # Run from an unrelated directory: every relative path must resolve against langgraph.json's.
    result = run_cli("describe", str(PROJECT), cwd=tmp_path_factory.mktemp("elsewhere"))
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def graphs(described):
    return {g["graph_id"]: g for g in json.loads(described.stdout)["graphs"]}


def test_every_graph_form_loads_in_the_order_of_langgraph_json(described):
    document = json.loads(described.stdout)
    assert [g["graph_id"] for g in document["graphs"]] == GRAPH_IDS
    factories = [g["graph_id"] for g in document["graphs"] if g["factory"]]
    assert factories == ["factory_cfg", "factory_rt", "factory_acm"]


def test_what_a_graph_prints_goes_to_stderr_not_into_the_json(described):
    assert "factory make_graph called" in described.stderr
    assert "factory make_graph called" not in described.stdout


@pytest.mark.parametrize("graph_id", GRAPH_IDS)
def test_the_assistant_is_the_one_langgraph_dev_registers(graphs, graph_id):
    (recorded,) = [a for a in RECORDED["assistants"] if a["graph_id"] == graph_id]
    ours = graphs[graph_id]
    assert (ours["assistant_id"], ours["name"], ours["description"]) == (
        recorded["assistant_id"], recorded["name"], recorded["description"])


def test_the_assistant_id_is_uuid5_in_langgraphs_namespace_not_the_url_one(graphs):
    namespace = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
    assert graphs["chat"]["assistant_id"] == str(uuid.uuid5(namespace, "chat")) == "eb6db400-e3c8-5d06-a834-015cb89efe69"
    assert graphs["chat"]["assistant_id"] != str(uuid.uuid5(uuid.NAMESPACE_URL, "chat"))


def test_a_named_graph_keeps_its_name_and_the_others_take_their_graph_id(graphs):
    assert graphs["modgraph"]["name"] == "MyModuleGraph"
    assert graphs["factory_acm"]["description"] == "an async context manager factory"
    assert graphs["uncompiled"]["schemas"]["state_schema"]["title"] == "uncompiled_state"


@pytest.mark.parametrize("graph_id", GRAPH_IDS)
def test_schemas_equal_langgraph_devs(graphs, graph_id):
    assert graphs[graph_id]["schemas"] == RECORDED["schemas"][graph_id]


@pytest.mark.parametrize("graph_id", GRAPH_IDS)
def test_drawing_equals_langgraph_devs(graphs, graph_id):
    assert graphs[graph_id]["graph"] == RECORDED["graph"][graph_id]


@pytest.mark.parametrize("graph_id", GRAPH_IDS)
def test_xray_drawing_equals_langgraph_devs(graphs, graph_id):
    assert graphs[graph_id]["graph_xray"] == RECORDED["graph_xray"][graph_id]


def test_xray_opens_the_subgraph(graphs):
    plain = [n["id"] for n in graphs["sub"]["graph"]["nodes"]]
    xray = [n["id"] for n in graphs["sub"]["graph_xray"]["nodes"]]
    assert "child" in plain and "child:inner_a" not in plain
    assert "child:inner_a" in xray and "child" not in xray


def test_the_messages_graph_has_its_context_schema_and_message_types(graphs):
    schemas = graphs["chat"]["schemas"]
    assert schemas["context_schema"]["title"] == "Context"
    assert "HumanMessage" in schemas["input_schema"]["$defs"]
