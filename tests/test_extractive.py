"""The offline answerer: passages read with their titles and headings, facts of the evaluation."""

from __future__ import annotations

from ragstream.domain.llm.chat import CriterionContext, EvaluationContext, Passage
from ragstream.domain.llm.extractive import NOTHING_FOUND, compose_extractive_answer

ACME = EvaluationContext(
    title="ERP selection for ACME Manufacturing",
    company_name="ACME Manufacturing",
    project_type="NEW_ERP",
    status="IN_PROGRESS",
    overall_score=3.5,
    criteria=(
        CriterionContext("Functional fit", 3, 4, None),
        CriterionContext("Total cost", 2, 2, "licences are priced per user"),
        CriterionContext("Vendor support", 1, 5, None),
        CriterionContext("Data security", 2, None, None),
    ),
)


def test_the_extractive_answer_picks_the_sentences_that_match_and_cites_them() -> None:
    passages = [
        Passage(1, "Coffee", "Espresso is brewed under pressure. Beans are roasted."),
        Passage(2, "Planets", "Mercury orbits the Sun in 88 days. It has no moons."),
    ]

    answer = compose_extractive_answer("How long is the orbit of Mercury?", passages)

    assert answer == "From the knowledge base: Mercury orbits the Sun in 88 days. [2]"
    assert compose_extractive_answer("Who painted the Mona Lisa?", passages) == NOTHING_FOUND
    assert compose_extractive_answer("", passages) == NOTHING_FOUND


def test_the_extractive_answer_matches_inflected_question_words() -> None:
    passages = [Passage(1, "Policy", "Every supplier policy is reviewed yearly.")]

    answer = compose_extractive_answer("Please explain how policies get reviewed", passages)

    assert answer == "From the knowledge base: Every supplier policy is reviewed yearly. [1]"


def test_the_lowest_scored_criterion_comes_from_the_evaluation() -> None:
    answer = compose_extractive_answer("Which criteria score lowest?", [], ACME)

    assert answer == "From the evaluation: Lowest score: Total cost, 2 of 5."


def test_evaluation_facts_answer_status_weights_overall_score_and_gaps() -> None:
    assert "is in progress" in compose_extractive_answer("What is the status?", [], ACME)
    assert "Highest weight: Functional fit, weight 3." in compose_extractive_answer(
        "Which criterion has the highest weight?", [], ACME
    )
    assert "overall score is 3.5 of 5" in compose_extractive_answer(
        "What is the overall score?", [], ACME
    )
    assert "Not scored yet: Data security." in compose_extractive_answer(
        "Which criteria are not scored yet?", [], ACME
    )
    assert "licences are priced per user" in compose_extractive_answer(
        "How did total cost score?", [], ACME
    )


def test_a_document_title_and_heading_count_towards_their_sentences() -> None:
    # The sentence never says "security policy" or "passwords": its title and heading do.
    passages = [
        Passage(1, "Security policy", "They must be at least 14 characters long.", ("Passwords",)),
        Passage(2, "Canteen", "Lunch is served from noon. Passwords are not needed there."),
    ]

    answer = compose_extractive_answer(
        "What does the security policy say about passwords?", passages
    )

    assert answer.startswith(
        "From the knowledge base: They must be at least 14 characters long. [1]"
    )


def test_question_words_no_candidate_contains_do_not_sink_a_plain_answer() -> None:
    passages = [Passage(1, "Handbook", "The Porto plant goes live in June.")]

    answer = compose_extractive_answer(
        "Could you kindly summarise when the Porto plant goes live?", passages
    )

    assert answer == "From the knowledge base: The Porto plant goes live in June. [1]"


def test_a_question_about_something_absent_is_refused_even_with_one_shared_word() -> None:
    passages = [Passage(1, "Handbook", "The Porto plant goes live in June.")]

    assert compose_extractive_answer("Who owns the Paris plant's canteen?", passages) == (
        NOTHING_FOUND
    )


def test_evaluation_facts_and_passages_answer_together_each_cited() -> None:
    passages = [Passage(1, "Vendor contract", "Support answers tickets within four hours.")]

    answer = compose_extractive_answer("How is vendor support scored?", passages, ACME)

    assert answer.startswith("From the evaluation: Vendor support: scored 5 of 5, weight 1.")
