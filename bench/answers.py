"""How often the offline (extractive) answerer answers right, through the API as a user asks.

A small built-in knowledge base (five Markdown documents with sections) and an evaluation with
scored, weighted criteria; a conversation linked to the evaluation; 35 questions, each with the
fact the answer must state (and, for facts from a document, the document it must cite), or
none when nothing in the knowledge base or the evaluation answers it. Each answer is graded:

- answered correctly: states the expected fact (citing its document), or refuses a question
  nothing answers;
- wrongly refused: says it found nothing although the fact was there to find;
- wrongly answered: anything else (a wrong or uncited sentence, or an answer to a question
  nothing answers).

The floor, graded the same way in the same run: the first sentence of the best retrieved
passage, which is what retrieval alone offers (it never refuses).

    python -m bench.answers [--verbose]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from bench.common import bench_settings, embedded_database, graphql, live_app, register

NOTHING_FOUND_START = "I could not find anything about this"

CORPUS = {
    "Rollout plan": """# Rollout plan

## Plants
The Leeds plant goes first, in March. The Porto plant follows in June.
The Gdansk plant is last, in September.

## Cut-over
Each plant's cut-over takes one weekend, during which stock movements are frozen.
Data migration from the old system takes six weeks before the first cut-over.
""",
    "Security policy": """# Security policy

## Passwords
They must be at least 14 characters long and are never sent by e-mail.

## Access
Access reviews are held every quarter by the system owner.
Administrator rights need the approval of two managers.

## Backups
Backups run every night and are kept for 35 days.
""",
    "Vendor contract": """# Vendor contract

## Support
Tickets are answered within four hours on working days.

## Licences
Licences are priced per named user, at 120 EUR a year each.

## Termination
Either side may end the contract with six months' notice.
""",
    "Steering committee minutes": """# Steering committee minutes, 12 May

The committee approved a budget of 1.2 million EUR for the first year.
Maria Silva was appointed project manager.
Warehouse staff are trained in the two weeks before go-live.
""",
    "Glossary": """# Glossary

MRP means material requirements planning.

A BOM, or bill of materials, lists the parts of a product.

Go-live is the day the new system becomes the system of record.
""",
}

CRITERIA = [
    {"name": "Functional fit", "weight": 3, "score": 4},
    {"name": "Total cost", "weight": 2, "score": 2, "notes": "licences are priced per user"},
    {"name": "Vendor support", "weight": 1, "score": 5},
    {"name": "Data security", "weight": 2},
    {"name": "Implementation risk", "weight": 2, "score": 3},
]
EVALUATION = "the evaluation"


@dataclass(frozen=True)
class Question:
    text: str
    fact: str | None  # what a right answer states (case-insensitive); None: nothing answers it
    where: str | None = None  # the document to cite, or EVALUATION


QUESTIONS = [
    # From the evaluation
    Question("Which criteria score lowest?", "Total cost", EVALUATION),
    Question("Which criterion scores highest?", "Vendor support", EVALUATION),
    Question("What is the overall score?", "3.375", EVALUATION),
    Question("What is the status of the evaluation?", "in progress", EVALUATION),
    Question("Which criterion has the highest weight?", "Functional fit", EVALUATION),
    Question("Which criteria are not scored yet?", "Data security", EVALUATION),
    Question("How did total cost score?", "scored 2 of 5", EVALUATION),
    Question("What kind of project is this?", "new ERP", EVALUATION),
    Question("How many criteria does the evaluation have?", "5 criteria", EVALUATION),
    Question("What is the weight of implementation risk?", "weight 2", EVALUATION),
    # From the documents
    Question("When does the Porto plant go live?", "June", "Rollout plan"),
    Question("Which plant goes first?", "Leeds", "Rollout plan"),
    Question("How long does the data migration take?", "six weeks", "Rollout plan"),
    Question("What happens to stock movements during the cut-over?", "frozen", "Rollout plan"),
    Question("When is the Gdansk plant rolled out?", "September", "Rollout plan"),
    Question(
        "What does the security policy say about passwords?", "14 characters", "Security policy"
    ),
    Question("How often are access reviews held?", "every quarter", "Security policy"),
    Question("How long are backups kept?", "35 days", "Security policy"),
    Question("Who must approve administrator rights?", "two managers", "Security policy"),
    Question("How fast are support tickets answered?", "four hours", "Vendor contract"),
    Question("How are licences priced?", "named user", "Vendor contract"),
    Question("What notice is needed to end the contract?", "six months", "Vendor contract"),
    Question(
        "What budget did the steering committee approve?",
        "1.2 million",
        "Steering committee minutes",
    ),
    Question("Who is the project manager?", "Maria Silva", "Steering committee minutes"),
    Question("When are warehouse staff trained?", "two weeks before", "Steering committee minutes"),
    Question("What does MRP mean?", "material requirements planning", "Glossary"),
    Question("What is a bill of materials?", "lists the parts", "Glossary"),
    # Nothing answers these
    Question("Who painted the Mona Lisa?", None),
    Question("When does the Paris plant go live?", None),
    Question("What is the score for usability?", None),
    Question("How much does lunch in the canteen cost?", None),
    Question("What is the phone number of the CEO?", None),
    Question("Which database does the vendor run on?", None),
    Question("How many employees does ACME have?", None),
    Question("What is the capital of France?", None),
]

OUTCOMES = ("answered correctly", "wrongly refused", "wrongly answered")


def grade(question: Question, answer: str, cited: dict[int, str]) -> str:
    refused = answer.startswith(NOTHING_FOUND_START)
    if question.fact is None:
        return OUTCOMES[0] if refused else OUTCOMES[2]
    if refused:
        return OUTCOMES[1]
    if question.fact.lower() not in answer.lower():
        return OUTCOMES[2]
    if question.where == EVALUATION:
        ok = "From the evaluation:" in answer
    else:
        # The fact must be followed, within its sentence, by a citation of its document.
        ok = any(
            cited.get(int(n)) == question.where
            for n in re.findall(
                r"\[(\d+)\]", answer[answer.lower().index(question.fact.lower()) :][:300]
            )
        )
    return OUTCOMES[0] if ok else OUTCOMES[2]


def lead_sentence_answer(sources: list[dict[str, Any]]) -> str:
    """The floor: the first sentence of the best retrieved passage, cited."""
    if not sources:
        return NOTHING_FOUND_START
    best = sources[0]
    text = " ".join(
        line for line in best["chunk"]["content"].splitlines() if not line.startswith("#")
    )
    sentence = re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]
    return f"{sentence} [{best['index']}]"


CREATE_DOCUMENT = "mutation($input: CreateDocumentInput!) { createDocument(input: $input) { id } }"
CREATE_EVALUATION = (
    "mutation($input: CreateEvaluationInput!) { createEvaluation(input: $input) { id } }"
)
CREATE_CONVERSATION = (
    "mutation($input: CreateConversationInput!) { createConversation(input: $input) { id } }"
)
ANSWER = """query($id: ID!) { conversation(id: $id) { messages(first: 100) { edges { node {
  id role status content sources { index document { title } chunk { content } } } } } } }"""


async def ask(
    client: httpx.AsyncClient, url: str, token: str, conversation: str, text: str
) -> dict[str, Any]:
    sent = await graphql(
        client,
        url,
        "mutation($input: SendMessageInput!) { sendMessage(input: $input) { id } }",
        {"input": {"conversationId": conversation, "content": text}},
        token,
    )
    message_id = sent["sendMessage"]["id"]
    while True:
        data = await graphql(client, url, ANSWER, {"id": conversation}, token)
        nodes = [e["node"] for e in data["conversation"]["messages"]["edges"]]
        message: dict[str, Any] = next(n for n in nodes if n["id"] == message_id)
        if message["status"] != "STREAMING":
            return message
        await asyncio.sleep(0.02)


async def run(verbose: bool, console: Console) -> tuple[Counter[str], Counter[str], float]:
    answerer: Counter[str] = Counter()
    floor: Counter[str] = Counter()
    async with embedded_database() as (database, name, data_dir):
        settings = bench_settings(
            database.url(name), data_dir, extractive_word_delay_ms=0, chat_provider="extractive"
        )
        async with live_app(settings) as (url, _state), httpx.AsyncClient(timeout=30) as client:
            _, token = await register(client, url)
            for title, content in CORPUS.items():
                await graphql(
                    client,
                    url,
                    CREATE_DOCUMENT,
                    {"input": {"title": title, "content": content, "mimeType": "text/markdown"}},
                    token,
                )
            while True:
                data = await graphql(
                    client,
                    url,
                    "{ documents(first: 20) { edges { node { status } } } }",
                    None,
                    token,
                )
                statuses = {e["node"]["status"] for e in data["documents"]["edges"]}
                if statuses == {"READY"}:
                    break
                if "FAILED" in statuses:
                    raise RuntimeError("a corpus document failed to ingest")
                await asyncio.sleep(0.1)
            created = await graphql(
                client,
                url,
                CREATE_EVALUATION,
                {
                    "input": {
                        "title": "ERP selection for ACME Manufacturing",
                        "companyName": "ACME Manufacturing",
                        "projectType": "NEW_ERP",
                        "status": "IN_PROGRESS",
                        "criteria": CRITERIA,
                    }
                },
                token,
            )
            conversation = await graphql(
                client,
                url,
                CREATE_CONVERSATION,
                {"input": {"evaluationId": created["createEvaluation"]["id"]}},
                token,
            )
            conversation_id = conversation["createConversation"]["id"]
            started = time.perf_counter()
            for question in QUESTIONS:
                message = await ask(client, url, token, conversation_id, question.text)
                sources = message["sources"]
                cited = {s["index"]: s["document"]["title"] for s in sources}
                outcome = grade(question, message["content"], cited)
                answerer[outcome] += 1
                floor[grade(question, lead_sentence_answer(sources), cited)] += 1
                if verbose:
                    console.print(f"[bold]{question.text}[/] -> {outcome}\n  {message['content']}")
            elapsed = time.perf_counter() - started
    return answerer, floor, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="print every answer")
    args = parser.parse_args()
    console = Console()
    answerer, floor, elapsed = asyncio.run(run(args.verbose, console))
    answerable = sum(q.fact is not None for q in QUESTIONS)
    table = Table(
        title=f"{len(QUESTIONS)} questions ({answerable} answerable, "
        f"{len(QUESTIONS) - answerable} not), {elapsed:.1f} s through the API"
    )
    table.add_column("answerer")
    for outcome in OUTCOMES:
        table.add_column(outcome, justify="right")
    table.add_row("extractive", *(str(answerer[o]) for o in OUTCOMES))
    table.add_row("floor: best passage's first sentence", *(str(floor[o]) for o in OUTCOMES))
    console.print(table)


if __name__ == "__main__":
    main()
