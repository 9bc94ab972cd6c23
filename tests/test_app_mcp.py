"""The MCP endpoint: the app as served (`app.ui.layout.launch_options`) is an MCP server whose
tools are the `explore` and `compare` endpoints, each described for a model to use (the
docstrings' Args), and a tool call through an MCP client runs the models.
"""
from __future__ import annotations

import ast
import asyncio
import base64
import io
import os

import httpx
import pytest
from PIL import Image

from conftest import CAT, free_port, wait_idle

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("mcp")   # in requirements.txt; the MCP server needs it

from app.ui import api  # noqa: E402
from app.ui.layout import create_app, launch_options  # noqa: E402

MCP_PATH = "gradio_api/mcp/"


@pytest.fixture(scope="module")
def served():
    """The app launched as `python app.py` launches it (its own options), on a free port."""
    demo = create_app()
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **launch_options())
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        wait_idle()


def test_schema_lists_explore_and_compare_with_their_parameters(served):
    answer = httpx.get(served + MCP_PATH + "schema", timeout=60)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json"), answer.text[:300]
    tools = answer.json()
    by_name = {t["name"]: t for t in tools}
    assert set(by_name) == {"explore", "compare"}   # the page's own events are no tools
    for name in ("explore", "compare"):
        tool = by_name[name]
        props = tool["inputSchema"]["properties"]
        assert list(props) == ["image", *api.API_PARAMETERS]
        assert tool["inputSchema"]["required"] == ["image"]
        assert all(len(p.get("description", "")) > 20 for p in props.values()), props   # every one explained
        assert "deit_small_patch16_224" in props["model"]["description"]
        assert "vit_small_patch14_dinov2 (a backbone without classes)" in props["model"]["description"]
        assert props["num_prop"]["default"] == 8 and props["graph"]["default"] == "mixed"
        assert "Returns:" in tool["description"] and "Args:" not in tool["description"]
    assert by_name["explore"]["description"].startswith("Run a pretrained Vision Transformer on an image twice")
    assert "ToMe" in by_name["compare"]["description"]


def test_a_tool_call_through_an_mcp_client_runs_the_models(served):
    """An MCP client (the `mcp` package, streamable HTTP) lists the tools and calls `explore`
    with the photo as a data: URI, as an agent would."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    buf = io.BytesIO()
    Image.open(CAT).convert("RGB").save(buf, format="PNG")
    photo = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

    async def call() -> tuple[list[str], str]:
        async with streamable_http_client(served + MCP_PATH) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                names = sorted(t.name for t in (await session.list_tools()).tools)
                result = await session.call_tool("explore", {"image": photo, "model": "deit_tiny_patch16_224",
                                                             "num_prop": 4})
                assert not result.isError, result
                return names, "\n".join(c.text for c in result.content if getattr(c, "text", None))

    names, text = asyncio.run(asyncio.wait_for(call(), timeout=600))
    assert names == ["compare", "explore"]
    prediction, summary = ast.literal_eval(text)   # Gradio sends the endpoint's outputs as one text
    assert prediction["model"] == "deit_tiny_patch16_224" and prediction["settings"]["num_prop"] == 4
    assert 0 < prediction["gmacs"]["gtp"] < prediction["gmacs"]["full"]
    assert [len(layer["propagated"]) for layer in summary["layers"]] == [4] * 12
