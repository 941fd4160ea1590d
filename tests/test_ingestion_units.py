"""Pure pieces of ingestion and retrieval: parsing, chunking, the hashing embedder, the broker."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import uuid
from pathlib import Path

import pytest

from ragstream.domain.documents.chunking import chunk_blocks
from ragstream.domain.documents.formats import clean_filename, detect_type
from ragstream.domain.documents.parsing import Block, parse_html, parse_markdown
from ragstream.domain.errors import InvalidInput
from ragstream.domain.events import InMemoryBroker
from ragstream.domain.llm import embeddings
from ragstream.domain.llm.embeddings import HashingEmbedder
from ragstream.domain.retrieval.service import fuse
from ragstream.domain.text import estimate_tokens


def test_long_sections_are_split_with_overlap_and_keep_their_heading() -> None:
    sentences = " ".join(f"Sentence number {i} talks about topic {i}." for i in range(200))
    blocks = [Block("Guide", level=1), Block(sentences), Block("Next", level=2), Block("Short.")]

    chunks = chunk_blocks(blocks, target=100, overlap=20)

    body = [c for c in chunks if c.heading_path == ("Guide",)]
    assert len(body) > 5
    assert all(c.token_count <= 100 for c in body)
    for previous, current in itertools.pairwise(body):
        overlap = previous.content.split()[-15:]  # 20 tokens, as words
        assert current.content.split()[:15] == overlap
    assert chunks[-1].heading_path == ("Guide", "Next")
    assert chunks[-1].content == "Short."
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_token_estimate_needs_no_tokenizer() -> None:
    assert estimate_tokens("word") == 1
    assert estimate_tokens("a" * 400) == 100
    assert estimate_tokens("one, two; three.") == 6


def test_markdown_setext_headings_and_links() -> None:
    blocks = parse_markdown("Title\n=====\n\nSee [the docs](http://x) and ![logo](l.png).\n")
    assert blocks == [Block("Title", level=1), Block("See the docs and logo.")]


def test_html_drops_invisible_content() -> None:
    blocks = parse_html("<h2>A</h2><template>x</template><svg><text>y</text></svg><p>b</p>")
    assert blocks == [Block("A", level=2), Block("b")]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../a.txt", "path"),
        ("a/b.txt", "path"),
        ("a\\b.txt", "path"),
        ("..", "path"),
        ("C:\\x.md", "path"),
        ("C:x.md", "path"),
        ("\\\\server\\share\\x.md", "path"),
        ("x\x00.txt", "not valid"),
        ("tab\there.md", "not valid"),
        ("bidi\u202etxt.md", "not valid"),
        ("isolate\u2067.md", "not valid"),
        (" ", "needs a name"),
        ("\u2003\u200b", "needs a name"),
        ("\u00a0.txt", "needs a name"),
    ],
)
def test_unsafe_file_names(name: str, message: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        clean_filename(name)
    assert message in refused.value.message


def test_file_names_are_normalized_to_nfc() -> None:
    assert clean_filename(" cafe\u0301.txt ") == "caf\u00e9.txt"


def test_type_comes_from_name_and_bytes() -> None:
    assert detect_type("a.PDF", b"%PDF-1.7") == "application/pdf"
    assert detect_type("a.markdown", b"# x") == "text/markdown"
    with pytest.raises(InvalidInput):
        detect_type("a.html", b"\x00\x01binary")


def test_a_name_without_an_extension_leaves_the_type_to_the_bytes() -> None:
    assert detect_type("0", b"%PDF-1.7") == "application/pdf"
    assert detect_type("0", b"\n<!DOCTYPE html><p>x</p>") == "text/html"
    assert detect_type("0", b"Intro\n\n## Rollout\nIn March.") == "text/markdown"
    assert detect_type("0", b"#hashtag, not a heading") == "text/plain"
    with pytest.raises(InvalidInput, match="unsupported file type"):
        detect_type("0", b"\x89PNG\r\n\x1a\n")
    with pytest.raises(InvalidInput, match="unsupported file type"):
        detect_type("report.docx", b"plain words")


def test_hashing_embedder_is_deterministic_normalised_and_topical() -> None:
    embedder = HashingEmbedder(256)
    a, b, c = embedder.embed_sync(
        ["Resetting passwords", "How do I reset my password?", "Forklift licence rules"]
    )

    def cosine(x: list[float], y: list[float]) -> float:
        return sum(i * j for i, j in zip(x, y, strict=True))

    assert math.isclose(cosine(a, a), 1.0, rel_tol=1e-9)
    assert HashingEmbedder(256).embed_sync(["Resetting passwords"])[0] == a
    assert cosine(a, b) > cosine(a, c)
    assert len(embedder.embed_one("")) == 256


def test_reciprocal_rank_fusion_rewards_agreement() -> None:
    x, y, z = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    fused = fuse([[x, y], [y, z]])
    assert fused[0][0] == y
    assert {item for item, _ in fused} == {x, y, z}


async def test_broker_delivers_to_current_subscribers_only() -> None:
    broker = InMemoryBroker(max_pending=2)
    await broker.publish("t", {"n": 0})  # nobody listens yet
    async with broker.subscribe("t") as first, broker.subscribe("t") as second:
        for n in (1, 2, 3):
            await broker.publish("t", {"n": n})
        await broker.publish("other", {"n": 99})
        got = [await asyncio.wait_for(anext(first), 1) for _ in range(2)]
        assert got == [{"n": 2}, {"n": 3}]  # the oldest was dropped for a slow reader
        assert await asyncio.wait_for(anext(second), 1) == {"n": 2}
    assert broker.subscriber_count("t") == 0


PINNED = json.loads((Path(__file__).parent / "hashing_vectors.json").read_text("utf-8"))


@pytest.mark.parametrize("dimensions", [64, 384])
def test_hashing_embedder_vectors_are_the_stored_ones(dimensions: int) -> None:
    """Same floats, bit for bit, as the vectors stored by earlier versions (one batch, and one
    text at a time, which must not differ)."""
    expected = [
        [float(sparse.get(str(i), "0.0")) for i in range(dimensions)]
        for sparse in PINNED["vectors"][str(dimensions)]
    ]
    embedder = HashingEmbedder(dimensions)
    assert embedder.embed_sync(PINNED["texts"]) == expected
    assert [embedder.embed_one(text) for text in PINNED["texts"]] == expected


def test_hashing_embedder_starts_a_new_vocabulary_with_the_same_vectors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    texts = PINNED["texts"]
    expected = HashingEmbedder(384).embed_sync(texts)
    monkeypatch.setattr(embeddings, "MAX_WORDS", 3)
    embedder = HashingEmbedder(384)
    first = embedder.embed_sync(texts)
    vocabulary = embedder._vocabulary
    assert embedder.embed_sync(texts[::-1]) == expected[::-1]
    assert embedder._vocabulary is not vocabulary  # dropped for growing past MAX_WORDS
    assert first == expected
