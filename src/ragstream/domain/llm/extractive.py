"""The offline answerer: the sentences and evaluation facts that best match the question, cited.

It needs no model and no network. Candidates are the sentences of the retrieved passages (each
read together with its document's title and heading path) and facts stated from the linked
evaluation (its status, overall score, each criterion, the lowest and highest scored, the
weightiest). A question word weighs by how rare it is among the candidates; a word no candidate
contains counts only a little against them, since it may be a paraphrase rather than a subject
the knowledge base lacks. When nothing covers enough of the question, it says so plainly.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass

from ragstream.domain.llm.chat import (
    ChatChunk,
    ChatRequest,
    EvaluationContext,
    Passage,
    TokenUsage,
)
from ragstream.domain.text import STOPWORDS, estimate_tokens, stem, truncate_to_tokens, words

NOTHING_FOUND = (
    "I could not find anything about this in the knowledge base, so I cannot answer it from "
    "the available documents."
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n|\n(?=\s*[-*#\d])")
# Words that make a request rather than say what it is about ("please explain ...").
_REQUEST_WORDS = frozenset(
    {"tell", "know", "please", "give", "show", "explain", "describe", "say", "says", "mention"}
)
# A title or heading word matching the question counts this much of a word in the sentence.
CONTEXT_CREDIT = 0.7
# A question word that no candidate contains weighs this share of an average present word.
ABSENT_SHARE = 0.5
# The least share of the question's weight a candidate must cover to be part of an answer, and
# how close to the best candidate the others must come.
MIN_COVERAGE = 0.45
NEAR_BEST = 0.75


def terms(text: str) -> set[str]:
    """The stems of the words of ``text`` that say what it is about."""
    return {
        stem(w)
        for w in words(text)
        if w not in STOPWORDS and w not in _REQUEST_WORDS and (len(w) > 2 or w.isdigit())
    }


@dataclass(frozen=True)
class Candidate:
    """A sentence that could be part of an answer, with what it is about and how to cite it."""

    text: str
    own: frozenset[str]  # terms of the sentence itself
    context: frozenset[str]  # terms of where it stands: document title and heading path
    source: int | None  # the passage's number, or None for a fact of the evaluation
    rank: int  # order among candidates of equal coverage (passage rank, fact order)


def passage_candidates(passages: Sequence[Passage]) -> list[Candidate]:
    found: list[Candidate] = []
    for passage in passages:
        context = frozenset(terms(f"{passage.title} {' '.join(passage.heading_path)}"))
        headings = {h.strip().lower() for h in passage.heading_path}
        for raw in _SENTENCE_END.split(passage.content):
            sentence = " ".join(raw.split()).lstrip("#").strip()
            if not 3 <= len(sentence) <= 1_000 or sentence.lower() in headings:
                continue
            own = frozenset(terms(sentence))
            if own:
                found.append(Candidate(sentence, own, context, passage.index, passage.index))
    return found


# Words a question about a fact may use that the fact's sentence does not.
_LOW = "lowest low worst weakest weak poorest poor least bottom"
_HIGH = "highest high best strongest strong top greatest"
_WEIGHT = "weight weighted heaviest important importance matters priority counts"
_SCORE = "score scored scores rating rated criterion criteria"


def _number(value: float) -> str:
    return f"{value:g}"


def _criterion_list(names: Iterable[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def evaluation_candidates(evaluation: EvaluationContext) -> list[Candidate]:
    """Sentences stating what the evaluation holds, each with the words a question may use."""
    facts: list[tuple[str, str]] = []  # (the sentence, extra words that point at it)
    status = evaluation.status.replace("_", " ").lower()
    project = evaluation.project_type.replace("_", " ").lower().replace("erp", "ERP")
    facts.append(
        (
            f'The evaluation "{evaluation.title}" of {evaluation.company_name} is {status}.',
            "status state stage progress evaluation",
        )
    )
    facts.append(
        (
            f"{evaluation.company_name} is assessed for a project of type {project}.",
            "company assessed project type kind",
        )
    )
    if evaluation.overall_score is not None:
        facts.append(
            (
                f"The overall score is {_number(evaluation.overall_score)} of 5, the weighted "
                "mean of the scored criteria.",
                "overall total average mean score rating",
            )
        )
    scored = [c for c in evaluation.criteria if c.score is not None]
    if evaluation.criteria:
        facts.append(
            (
                f"The evaluation has {len(evaluation.criteria)} criteria: "
                f"{_criterion_list(c.name for c in evaluation.criteria)}.",
                "criteria criterion many list assessed",
            )
        )
    for c in evaluation.criteria:
        score = "not scored yet" if c.score is None else f"scored {_number(c.score)} of 5"
        weight = "" if c.weight is None else f", weight {_number(c.weight)}"
        notes = f" ({c.notes})" if c.notes else ""
        facts.append((f"{c.name}: {score}{weight}{notes}.", _SCORE + " " + _WEIGHT))
    if scored:
        low = min(c.score for c in scored if c.score is not None)
        high = max(c.score for c in scored if c.score is not None)
        lowest = [c.name for c in scored if c.score == low]
        highest = [c.name for c in scored if c.score == high]
        facts.append(
            (
                f"Lowest score: {_criterion_list(lowest)}, {_number(low)} of 5.",
                _LOW + " " + _SCORE,
            )
        )
        facts.append(
            (
                f"Highest score: {_criterion_list(highest)}, {_number(high)} of 5.",
                _HIGH + " " + _SCORE,
            )
        )
    weighted = [c for c in evaluation.criteria if c.weight is not None]
    if weighted:
        top = max(c.weight for c in weighted if c.weight is not None)
        heaviest = [c.name for c in weighted if c.weight == top]
        facts.append(
            (
                f"Highest weight: {_criterion_list(heaviest)}, weight {_number(top)}.",
                _WEIGHT + " " + _HIGH + " criterion criteria most",
            )
        )
    unscored = [c.name for c in evaluation.criteria if c.score is None]
    if unscored:
        facts.append(
            (
                f"Not scored yet: {_criterion_list(unscored)}.",
                "unscored missing pending open yet " + _SCORE,
            )
        )
    # The words a question may use count as the fact's own; what the evaluation is about is
    # its context.
    context = frozenset(terms(f"{evaluation.title} {evaluation.company_name}"))
    return [
        Candidate(text, frozenset(terms(f"{text} {extra}")), context, None, rank)
        for rank, (text, extra) in enumerate(facts)
    ]


@dataclass(frozen=True)
class Scored:
    candidate: Candidate
    coverage: float


def score_candidates(question: str, candidates: Sequence[Candidate]) -> list[Scored]:
    """Each candidate's share of the question's weight, best first; unrelated ones left out."""
    wanted = terms(question)
    if not wanted or not candidates:
        return []
    # Rare words say more than common ones (inverse frequency among the candidates).
    frequency = {t: sum(1 for c in candidates if t in c.own or t in c.context) for t in wanted}
    present = {t for t in wanted if frequency[t]}
    if not present:
        return []
    n = len(candidates)
    weight = {t: math.log(1 + (n + 1) / (1 + frequency[t])) for t in present}
    average = sum(weight.values()) / len(weight)
    total = sum(weight.values()) + ABSENT_SHARE * average * len(wanted - present)
    scored = []
    for c in candidates:
        credit = sum(weight[t] for t in present & c.own) + CONTEXT_CREDIT * sum(
            weight[t] for t in (present & c.context) - c.own
        )
        # One shared word is not an answer unless it is most of what the question asks.
        if credit and (len(present & (c.own | c.context)) >= 2 or credit / total >= 0.6):
            scored.append(Scored(c, credit / total))
    scored.sort(key=lambda s: (-s.coverage, s.candidate.source is not None, s.candidate.rank))
    return scored


def compose_extractive_answer(
    question: str,
    passages: Sequence[Passage],
    evaluation: EvaluationContext | None = None,
    *,
    max_sentences: int = 3,
) -> str:
    """The best-matching evaluation facts and passage sentences, each cited, or NOTHING_FOUND."""
    candidates = passage_candidates(passages)
    if evaluation is not None:
        candidates += evaluation_candidates(evaluation)
    scored = score_candidates(question, candidates)
    if not scored or scored[0].coverage < MIN_COVERAGE:
        return NOTHING_FOUND
    floor = max(MIN_COVERAGE, NEAR_BEST * scored[0].coverage)
    chosen = [s.candidate for s in scored if s.coverage >= floor][:max_sentences]
    facts = [c.text for c in chosen if c.source is None]
    sentences = [f"{c.text} [{c.source}]" for c in chosen if c.source is not None]
    parts = []
    if facts:
        parts.append("From the evaluation: " + " ".join(facts))
    if sentences:
        parts.append("From the knowledge base: " + " ".join(sentences))
    return " ".join(parts)


@dataclass
class ExtractiveChatProvider:
    """Offline default: needs no model and no network; streams its answer word by word."""

    word_delay: float = 0.0
    model: str = "extractive"
    buffers_unread = False  # each word is made when it is asked for

    def model_for(self, requested: str) -> str:
        return self.model  # it has no other

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        answer = compose_extractive_answer(request.question, request.passages, request.evaluation)
        if request.max_output_tokens is not None:
            answer = truncate_to_tokens(answer, request.max_output_tokens)
        for word in re.findall(r"\S+\s*", answer):
            if self.word_delay:
                await asyncio.sleep(self.word_delay)
            yield ChatChunk(text=word)
        prompt = sum(estimate_tokens(m.content) for m in request.messages)
        yield ChatChunk(usage=TokenUsage(prompt, estimate_tokens(answer)))

    async def aclose(self) -> None:
        return None
