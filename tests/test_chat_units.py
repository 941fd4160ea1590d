"""The pure parts of chat: stream buffers and coalescing, prompt building, the extractive answer."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import cast

import pytest

from ragstream.domain.chat.answer import Answer, read_due
from ragstream.domain.chat.prompt import (
    HistoryTurn,
    SourceText,
    build_prompt,
    fit_history,
    quote,
)
from ragstream.domain.chat.remote import Relay, message_topic
from ragstream.domain.chat.streams import (
    Crowd,
    EndItem,
    GenerationStream,
    SourcesItem,
    StreamItem,
    TextItem,
    follow,
)
from ragstream.domain.chat.views import Ending, MessageView, SourceView
from ragstream.domain.events import InMemoryBroker
from ragstream.domain.llm.chat import ChatChunk, ChatProviderError, EvaluationContext, TokenUsage
from ragstream.domain.llm.openai_chat import SSEDecoder, parse_chunk

SOURCE = SourceView(1, uuid.uuid4(), uuid.uuid4(), "Doc", "excerpt", None, 0.5)


def ending(text: str) -> Ending:
    message = MessageView(
        id=uuid.uuid4(),
        conversation_id=uuid.uuid4(),
        owner_id=uuid.uuid4(),
        role="ASSISTANT",
        content=text,
        status="COMPLETE",
        model="m",
        prompt_tokens=1,
        completion_tokens=1,
        error_code=None,
        created_at=datetime.now(UTC),
        completed_at=datetime.now(UTC),
        sources=(SOURCE,),
    )
    return Ending(message)


async def collect(stream: GenerationStream, offset: int, window: float) -> list[StreamItem]:
    return [item async for item in follow(stream, offset, window=window)]


def test_read_from_any_offset_across_parts() -> None:
    stream = GenerationStream()
    for part in ("Hel", "lo, ", "wor", "ld"):
        stream.append(part)

    assert stream.length == 12
    assert stream.text() == "Hello, world"
    assert [stream.read_from(i) for i in (0, 2, 3, 7, 11, 12, 99)] == [
        "Hello, world",
        "llo, world",
        "lo, world",
        "world",
        "d",
        "",
        "",
    ]


async def test_a_follower_first_gets_everything_buffered_in_one_delta() -> None:
    stream = GenerationStream()
    stream.set_sources([SOURCE])
    for i in range(100):
        stream.append(f"{i} ")
    stream.finish(ending(stream.text()))

    items = await collect(stream, 5, window=10.0)

    assert items[0] == SourcesItem((SOURCE,))
    assert items[1] == TextItem(5, stream.text()[5:])
    assert isinstance(items[2], EndItem)
    assert len(items) == 3


async def test_live_deltas_within_the_window_are_merged() -> None:
    stream = GenerationStream()
    stream.set_sources([])
    follower = asyncio.create_task(collect(stream, 0, window=3600.0))
    await asyncio.sleep(0)
    stream.append("a")
    await asyncio.sleep(0)  # the follower sends "a" at once, then waits out the window
    for part in ("b", "c", "d"):
        stream.append(part)
        await asyncio.sleep(0)
    stream.finish(ending("abcd"))  # the end flushes what the window held back

    items = await follower

    texts = [item for item in items if isinstance(item, TextItem)]
    assert texts == [TextItem(0, "a"), TextItem(1, "bcd")]
    assert isinstance(items[-1], EndItem)


# Without a window; or paced: appended to at most once per window by its producer (the
# generating answer reads its provider at the followers' pace), so no append waits for the
# follower's own window.
@pytest.mark.parametrize(("window", "paced"), [(0.0, False), (3600.0, True)])
async def test_every_delta_is_its_own_event_without_a_window_or_when_paced(
    window: float, paced: bool
) -> None:
    stream = GenerationStream()
    stream.paced = paced
    stream.set_sources([])
    follower = asyncio.create_task(collect(stream, 0, window=window))
    for part in ("a", "b", "c"):
        await asyncio.sleep(0)
        stream.append(part)
        await asyncio.sleep(0)
    stream.finish(ending("abc"))

    items = await follower

    assert [i for i in items if isinstance(i, TextItem)] == [
        TextItem(0, "a"),
        TextItem(1, "b"),
        TextItem(2, "c"),
    ]


def test_quoted_text_cannot_close_the_delimiters() -> None:
    assert quote("a </source> b </SOURCES> <sources> < / evaluation>") == (
        "a &lt;/source> b &lt;/SOURCES> &lt;sources> &lt; / evaluation>"
    )


def test_history_keeps_the_most_recent_turns_within_the_budget() -> None:
    turns = [HistoryTurn("user", "x" * 400), HistoryTurn("assistant", "y" * 40)]

    assert fit_history(turns, budget_tokens=30) == [turns[1]]
    assert fit_history(turns, budget_tokens=1_000) == turns


def test_the_prompt_puts_sources_in_the_user_turn_after_the_rules() -> None:
    evaluation = EvaluationContext("T", "ACME", "NEW_ERP", "DRAFT", None, ())
    messages = build_prompt(
        question="What?",
        sources=[SourceText(1, 'A "title"', "Some text.")],
        evaluation=evaluation,
        system_prompt="Be brief.",
    )

    assert [m.role for m in messages] == ["system", "system", "user"]
    assert messages[0].content.startswith("Be brief.")
    assert "<evaluation>" in messages[1].content
    assert '<source index="1" title="A title">\nSome text.\n</source>' in messages[2].content


def test_server_sent_events_are_assembled_from_lines() -> None:
    decoder = SSEDecoder()
    lines = [": keep-alive", "", "event: message", 'data: {"a":', "data: 1}", "", "data:[DONE]", ""]

    assert [decoder.feed(line) for line in lines] == [
        None,
        None,
        None,
        None,
        None,
        '{"a":\n1}',
        None,
        "[DONE]",
    ]


def test_server_sent_events_may_be_split_anywhere_across_reads() -> None:
    decoder = SSEDecoder()
    stream = 'data: {"x":"é"}\r\n\r\ndata: [DONE]\n\n'.encode()

    found = [data for i in range(len(stream)) for data in decoder.feed_bytes(stream[i : i + 1])]

    assert found == ['{"x":"é"}', "[DONE]"]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_one_line_events_and_others_come_out_alike_however_the_reads_fall(newline: str) -> None:
    events = [
        ['data: {"a":1}'],
        [": keep-alive"],
        ["data:no space", "data: second line"],
        ["event: message", "id: 7", "data: é"],
        ["data: "],
        ["data: [DONE]"],
    ]
    stream = "".join(newline.join(lines) + newline * 2 for lines in events).encode()
    expected = ['{"a":1}', "no space\nsecond line", "é", "", "[DONE]"]
    rng = random.Random(7)

    for _ in range(200):
        decoder = SSEDecoder()
        found: list[str] = []
        start = 0
        while start < len(stream):
            end = start + rng.randint(1, 9)
            found += decoder.feed_bytes(stream[start:end])
            start = end
        assert found == expected


def test_stream_chunks_give_text_usage_or_a_provider_error() -> None:
    text = '{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}'
    usage = '{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}'

    assert parse_chunk(text) == ChatChunk(text="Hi")
    assert parse_chunk('{"choices":[{"delta":{"role":"assistant"}}]}') == ChatChunk()
    assert parse_chunk(usage) == ChatChunk(usage=TokenUsage(7, 2))
    with pytest.raises(ChatProviderError) as caught:
        parse_chunk('{"error":{"message":"secret"}}')
    assert caught.value.code == "PROVIDER_ERROR"
    with pytest.raises(ChatProviderError):
        parse_chunk("not json")


def test_half_of_a_surrogate_pair_in_a_chunk_becomes_a_replacement_character() -> None:
    lone = '{"choices":[{"delta":{"content":"a\\ud83db"}}]}'
    pair = '{"choices":[{"delta":{"content":"a\\ud83d\\ude00b \u00e9"}}]}'

    assert parse_chunk(lone) == ChatChunk(text="a\ufffdb")
    assert parse_chunk(pair) == ChatChunk(text="a\U0001f600b \u00e9")  # whole ones stay
    assert parse_chunk(lone).text.encode("utf-8") == b"a\xef\xbf\xbdb"


def test_a_crowd_of_followers_stretches_the_window() -> None:
    crowd = Crowd(events_per_second=1_000)

    crowd.size = 10
    assert crowd.window(0.03) == 0.03  # 10 followers at 30 ms: 333 events/s, under the budget
    crowd.size = 100
    assert crowd.window(0.03) == 0.1  # 100 followers share 1,000 events/s
    crowd.size = 1_000
    assert crowd.window(0.03) == Crowd.MAX_CROWD_WINDOW  # the budget gives way to delay


def test_a_process_behind_stretches_the_window_until_it_catches_up() -> None:
    crowd = Crowd(events_per_second=1_000)
    crowd.size = 10

    for _ in range(200):  # followers keep waking up 100 ms after they were due
        crowd.late(0.1)
    behind = crowd.window(0.03)
    for _ in range(200):
        crowd.late(5.0)
    far_behind = crowd.window(0.03)
    for _ in range(200):  # on time again (an early wake-up counts as on time)
        crowd.late(-0.01)
    caught_up = crowd.window(0.03)

    assert 0.19 < behind <= 0.2  # twice the lag
    assert far_behind == Crowd.MAX_STRETCH
    assert caught_up == 0.03


async def test_waiting_for_the_end_returns_at_the_end_or_after_the_delay() -> None:
    stream = GenerationStream()
    await asyncio.wait_for(stream.finished_within(0.01), 5)  # not finished: after the delay
    unfinished = stream.finished

    waiting = asyncio.create_task(stream.finished_within(3600))
    await asyncio.sleep(0)
    stream.finish(ending("done"))
    await asyncio.wait_for(waiting, 5)

    assert not unfinished
    assert waiting.done()
    assert waiting.exception() is None
    await stream.finished_within(3600)  # already finished: at once


async def test_a_follower_counts_in_its_crowd_until_it_ends() -> None:
    crowd = Crowd(events_per_second=1_000)
    stream = GenerationStream()
    stream.append("hello")
    follower = follow(stream, 0, window=0.0, crowd=crowd)

    first = await anext(follower)
    during = crowd.size
    await follower.aclose()

    assert first == TextItem(0, "hello")
    assert (during, crowd.size) == (1, 0)


class _HistoryBroker(InMemoryBroker):
    """Keeps no history, but says so: the relay then publishes every answer from its start."""

    retains_history = True


@pytest.mark.parametrize(
    ("paced", "texts"),
    [
        # New text at once, then what comes within the window merged.
        (False, [(0, "a"), (1, "bcd")]),
        # A paced stream (read at most once per window by its answer): each append at once.
        (True, [(0, "a"), (1, "b"), (2, "c"), (3, "d")]),
    ],
)
async def test_the_relay_publishes_new_text_at_once_then_within_the_window(
    paced: bool, texts: list[tuple[int, str]]
) -> None:
    broker = _HistoryBroker()
    message_id = uuid.uuid4()
    stream = GenerationStream()
    stream.paced = paced
    relay = Relay(broker, {}, window=3600.0)
    async with broker.subscribe(message_topic(message_id)) as events:
        relay.started(message_id, stream)
        stream.set_sources([])
        await asyncio.sleep(0)
        stream.append("a")
        await asyncio.sleep(0)  # published at once (a follower elsewhere waits no window)
        for part in ("b", "c", "d"):
            stream.append(part)
            await asyncio.sleep(0)
        stream.finish(ending("abcd"))  # the end flushes what the window held back

        published: list[dict[str, object]] = []
        while not published or published[-1]["kind"] != "end":
            published.append(await anext(events))
    await relay.close()

    assert published == [
        {"kind": "sources"},
        *({"kind": "text", "offset": offset, "text": text} for offset, text in texts),
        {"kind": "end"},
    ]


@pytest.mark.parametrize("caught_up", [True, False])
async def test_text_that_comes_while_the_relay_answers_a_follow_is_published_without_a_gap(
    caught_up: bool,
) -> None:
    # A follower elsewhere asks to follow from the text it has; new text comes after the relay
    # answered it but before the relay's publisher first runs. That text must reach it too.
    broker = InMemoryBroker()
    message_id = uuid.uuid4()
    stream = GenerationStream()
    stream.set_sources([])
    stream.append("saved ")
    stream.append("unsaved ")
    answers = cast(Mapping[uuid.UUID, Answer], {message_id: SimpleNamespace(stream=stream)})
    relay = Relay(broker, answers, window=0.0)
    asked_from = stream.length if caught_up else len("saved ")
    async with broker.subscribe(message_topic(message_id)) as events:
        await relay.handle({"op": "follow", "id": str(message_id), "from": asked_from})
        stream.append("between ")  # no await since the relay answered: its publisher waits
        await asyncio.sleep(0)
        stream.append("last")
        stream.finish(ending(stream.text()))

        published: list[dict[str, object]] = []
        while not published or published[-1]["kind"] != "end":
            published.append(await anext(events))
    await relay.close()

    texts = [event for event in published if event["kind"] == "text"]
    received = ""
    for event in texts:
        assert event["offset"] == asked_from + len(received)  # no gap, no overlap
        received += str(event["text"])
    assert received == stream.text()[asked_from:]
    assert [event["kind"] for event in published].count("sources") == 1


def test_paced_reads_fall_on_a_shared_grid_of_whole_windows() -> None:
    grid = 0.03
    # reads that ended at different moments of one tick begin together, a window later
    assert read_due(100.002, 0.03, grid) == pytest.approx(100.02)
    assert read_due(99.991, 0.03, grid) == pytest.approx(100.02)
    # a stretched window becomes the whole grid steps that cover it, and stays on the grid
    assert read_due(100.002, 0.1, grid) == pytest.approx(100.11)  # 99.99 + 4 steps
    assert read_due(100.002, 0.06, grid) == pytest.approx(100.05)  # exactly 2 steps
    assert read_due(100.002, 0.01, grid) == pytest.approx(100.02)  # at least one step
    # without a base window there is no grid
    assert read_due(100.002, 0.05, 0.0) == pytest.approx(100.052)
