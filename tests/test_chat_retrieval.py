"""Chat retrieval is the `search` query's retrieval: the same settings, the same passages."""

from __future__ import annotations

import uuid
from pathlib import Path

from ragstream.db.models import User
from ragstream.domain.retrieval.service import SearchTuning, search
from tests.chat_stub import ChatStub
from tests.chat_support import chat_all, chat_server, new_conversation
from tests.documents_support import SEARCH, ingest_common_word_corpus

QUESTION = "widget zebra"


async def test_chat_retrieval_honours_the_search_settings(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    # given a knowledge base where "widget" is in every chunk, and settings that let such a
    # common word select chunks for the full-text ranking (by default it only ranks them)
    async with chat_server(
        database_url, tmp_path, chat_stub, search_common_term_share=1.0
    ) as server:
        account = await server.register()
        await ingest_common_word_corpus(server, account.access_token)
        conversation_id = await new_conversation(server, account.access_token)
        limit = server.state.settings.chat_retrieval_limit

        # when the same question is asked in a chat and in the search query
        events = await chat_all(server, account.access_token, conversation_id, QUESTION)
        variables = {"q": QUESTION, "limit": limit}
        searched = (await server.execute(SEARCH, variables, token=account.access_token)).ok()[
            "search"
        ]
        async with server.state.sessionmaker() as session:
            viewer = await session.get(User, uuid.UUID(account.id))
            assert viewer is not None
            untuned = await search(
                session, viewer, QUESTION, limit, server.state.embedder, tuning=SearchTuning()
            )

    # then the chat cites exactly what the search query finds with these settings
    assert events[1]["__typename"] == "SourcesRetrieved"
    cited = [(s["documentId"], s["score"]) for s in events[1]["sources"]]
    found = [(hit["document"]["id"], hit["score"]) for hit in searched]
    assert len(found) == limit
    assert cited == found
    # and the settings matter here: the default tuning ranks differently
    assert [(str(hit.document_id), hit.score) for hit in untuned] != found
