"""The shared text measures: one token estimate, one word splitter, stopword list and stemmer."""

from __future__ import annotations

from ragstream.domain.chat.prompt import SOURCE_OVERHEAD_TOKENS, SourceText, fit_sources
from ragstream.domain.documents.chunking import chunk_blocks
from ragstream.domain.documents.parsing import Block
from ragstream.domain.text import STOPWORDS, estimate_tokens, stem, truncate_to_tokens, words


def test_the_estimate_counts_characters_or_pieces_whichever_is_more() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("word") == 1
    assert estimate_tokens("a" * 401) == 101  # long words: about four characters per token
    assert estimate_tokens("a, b; c.") == 6  # punctuation: one piece per token


def test_a_chunk_costs_a_prompt_what_chunking_counted() -> None:
    clauses = (f"Clause {i}: the supplier shall deliver (see annex {i}.2)." for i in range(200))
    text = " ".join(clauses)
    [*_, last] = chunks = chunk_blocks([Block(text)], target=120, overlap=0)
    sources = [SourceText(c.ordinal + 1, "Contract", c.content) for c in chunks]
    budget = sum(c.token_count + SOURCE_OVERHEAD_TOKENS for c in chunks)

    # every chunk fits a budget of exactly the sizes chunking stored, and not one token less
    assert fit_sources(sources, budget) == sources
    assert fit_sources(sources, budget - 1)[-1].content != last.content


def test_truncation_keeps_the_longest_start_within_the_budget() -> None:
    text = "one, two; three. " * 50

    cut = truncate_to_tokens(text, 30)

    assert text.startswith(cut)
    assert estimate_tokens(cut) <= 30 < estimate_tokens(text[: len(cut) + 1])
    assert truncate_to_tokens("short", 30) == "short"
    assert truncate_to_tokens(text, 0) == ""


def test_words_are_normalised_and_lower_cased() -> None:
    fullwidth_erp = "\uff25\uff52\uff50"  # what some PDFs and East Asian input methods produce
    assert words(f"{fullwidth_erp}-Migration, phase_2: DONE") == [
        "erp",
        "migration",
        "phase",
        "2",
        "done",
    ]


def test_inflected_forms_share_a_stem() -> None:
    assert {stem(w) for w in ("orbit", "orbits", "orbiting", "orbited")} == {"orbit"}
    assert stem("policies") == stem("policy")
    assert stem("migrations") == stem("migration")


def test_stopwords_are_common_words_only() -> None:
    assert {"the", "and", "which", "also"} <= STOPWORDS
    assert not {"erp", "supplier", "orbit"} & STOPWORDS
