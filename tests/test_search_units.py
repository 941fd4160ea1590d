"""Pure pieces of retrieval: which query words select chunks for the full-text ranking."""

from __future__ import annotations

import pytest

from ragstream.db.repositories.search import QueryTerm, tsquery_literal
from ragstream.domain.retrieval.service import SearchTuning, TextQuery, text_query
from ragstream.settings import Settings


def test_common_words_rank_but_do_not_select() -> None:
    terms = [QueryTerm("invoic", 0.30), QueryTerm("reconcili", 0.01), QueryTerm("zebra", None)]

    words = text_query(terms, common_share=0.05)

    assert words == TextQuery(
        match=("reconcili", "zebra"), match_all=False, rank=("invoic", "reconcili", "zebra")
    )


def test_a_query_of_common_words_selects_chunks_holding_all_of_them() -> None:
    terms = [QueryTerm("polici", 0.4), QueryTerm("travel", 0.2)]

    words = text_query(terms, common_share=0.05)

    assert words == TextQuery(match=("polici", "travel"), match_all=True, rank=("polici", "travel"))


def test_without_statistics_every_word_selects() -> None:
    terms = [QueryTerm("offic", None), QueryTerm("hour", None)]

    words = text_query(terms, common_share=0.05)

    assert words is not None
    assert words.match == ("offic", "hour")
    assert words.match_all is False


def test_a_query_without_searchable_words_skips_full_text() -> None:
    assert text_query([], common_share=0.05) is None


def test_lexemes_are_quoted_for_tsquery_input() -> None:
    assert tsquery_literal(["it's", "back\\slash", "a & b"], "|") == (
        "'it''s' | 'back\\\\slash' | 'a & b'"
    )
    assert tsquery_literal(["x", "y"], "&") == "'x' & 'y'"
    with pytest.raises(ValueError, match="operator"):
        tsquery_literal(["x"], "<->")


def test_tuning_follows_the_settings() -> None:
    settings = Settings(
        search_candidates=30,
        search_scan=90,
        search_ef_search=250,
        search_max_scan_tuples=5_000,
        search_common_term_share=0.1,
    )

    tuning = SearchTuning.from_settings(settings)

    assert tuning == SearchTuning(
        candidates=30,
        scan=90,
        ef_search=250,
        max_scan_tuples=5_000,
        common_term_share=0.1,
    )
    assert SearchTuning.from_settings(Settings()) == SearchTuning()
