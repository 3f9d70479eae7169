"""The official clients against ``expertgraph serve`` on loopback: openai, LangChain's
ChatOpenAI, litellm.

Each completes a chat plainly and streaming, and parses the response without error. The
server requires a key (as it would off loopback), so each client's own key handling is used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel
from serve_experts import write_config

from expertgraph.orchestrator.integrations.catalog import ModelCatalog
from expertgraph.orchestrator.integrations.server import ServerThread, ServeSettings, create_app
from expertgraph.traces.schema import CallRecord
from expertgraph.traces.store import iter_records

KEY = "sk-clients-0123456789"
PROMPT = "one two three four five six seven eight nine ten eleven twelve"
ANSWER = "echo: " + PROMPT


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clients-traces")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, traces: Path) -> Iterator[ServerThread]:
    configs = tmp_path_factory.mktemp("clients")
    write_config(configs, "pair", {"echo_a": "echo", "echo_b": "echo"}, trace_dir=traces)
    write_config(configs, "json", {"writer": "json_writer"}, trace_dir=traces)
    catalog = ModelCatalog.from_paths([configs], aliases=False)
    with ServerThread(create_app(catalog, ServeSettings(api_keys=frozenset({KEY})))) as running:
        yield running


def usage_in_trace(traces: Path, run_id: str) -> tuple[int, int]:
    calls = [r for r in iter_records(traces / f"{run_id}.jsonl") if isinstance(r, CallRecord)]
    return sum(r.generation.input_tokens for r in calls), sum(
        r.generation.output_tokens for r in calls
    )


# ---- openai ------------------------------------------------------------------------------------


def test_openai_sdk(server: ServerThread, traces: Path) -> None:
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="expertgraph/pair", messages=[{"role": "user", "content": PROMPT}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == ANSWER
    assert completion.model == "expertgraph/pair:echo_a+echo_b"
    run_id = raw.headers["x-expertgraph-trace-id"]
    prompt, output = usage_in_trace(traces, run_id)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (prompt, output)

    stream = client.chat.completions.create(
        model="expertgraph/pair",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert [m.id for m in client.models.list()] == [
        "expertgraph/json",
        "expertgraph/pair",
    ]  # sorted files

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=server.url + "/v1", api_key="sk-wrong-key-000", max_retries=0
        ).models.list()
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(
            model="expertgraph/nope", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.code == "model_not_found"


def test_openai_async_client_concurrently(server: ServerThread) -> None:
    import openai

    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
        results = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model="expertgraph/pair", messages=[{"role": "user", "content": f"q{i}"}]
                )
                for i in range(6)
            )
        )
        await client.close()
        return [r.choices[0].message.content or "" for r in results]

    assert asyncio.run(main()) == [f"echo: q{i}" for i in range(6)]


def test_openai_structured_output_parse(server: ServerThread) -> None:
    import openai

    class Capital(BaseModel):
        country: str
        city: str

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    completion = client.chat.completions.parse(
        model="expertgraph/json",
        messages=[{"role": "user", "content": "Japan"}],
        response_format=Capital,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Capital)
    assert parsed.country.startswith("Japan")


# ---- LangChain ChatOpenAI ------------------------------------------------------------------------


def test_langchain_chat_openai(server: ServerThread) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="expertgraph/pair",
        base_url=server.url + "/v1",
        api_key=KEY,
        max_retries=0,
        stream_usage=True,
    )
    message = llm.invoke(PROMPT)
    assert message.content == ANSWER
    assert message.response_metadata["model_name"] == "expertgraph/pair:echo_a+echo_b"
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] > 0

    chunks = list(llm.stream(PROMPT))
    assert len(chunks) >= 3
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert full.content == ANSWER
    assert (
        full.usage_metadata is not None
        and full.usage_metadata["total_tokens"] == message.usage_metadata["total_tokens"]
    )


def test_langchain_chat_openai_async_and_structured(server: ServerThread) -> None:
    from langchain_openai import ChatOpenAI

    class Joke(BaseModel):
        setup: str
        punchline: str

    llm = ChatOpenAI(
        model="expertgraph/json", base_url=server.url + "/v1", api_key=KEY, max_retries=0
    )
    joke = llm.with_structured_output(Joke).invoke("cats")
    assert isinstance(joke, Joke) and joke.setup.startswith("cats")

    async def main() -> str:
        parts = [
            c.content
            async for c in ChatOpenAI(
                model="expertgraph/pair", base_url=server.url + "/v1", api_key=KEY
            ).astream("hi")
        ]
        return "".join(str(p) for p in parts)

    assert asyncio.run(main()) == "echo: hi"


# ---- litellm ---------------------------------------------------------------------------------


def test_litellm_client(server: ServerThread) -> None:
    from expertgraph.agents._litellm import import_litellm

    litellm = import_litellm()
    kwargs = {"api_base": server.url + "/v1", "api_key": KEY, "num_retries": 0}
    response = litellm.completion(
        model="openai/expertgraph/pair", messages=[{"role": "user", "content": PROMPT}], **kwargs
    )
    assert response.choices[0].message.content == ANSWER
    assert response.model.endswith("expertgraph/pair:echo_a+echo_b")
    assert response.usage.completion_tokens > 0

    stream = litellm.completion(
        model="openai/expertgraph/pair",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
        **kwargs,
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert any(getattr(c, "usage", None) is not None and c.usage.total_tokens > 0 for c in chunks)

    async def main() -> str:
        r = await litellm.acompletion(
            model="openai/expertgraph/pair",
            messages=[{"role": "user", "content": "async"}],
            **kwargs,
        )
        return str(r.choices[0].message.content)

    assert asyncio.run(main()) == "echo: async"

    with pytest.raises(litellm.AuthenticationError):
        litellm.completion(
            model="openai/expertgraph/pair",
            messages=[{"role": "user", "content": "x"}],
            api_base=server.url + "/v1",
            api_key="sk-wrong-key-000",
            num_retries=0,
        )
