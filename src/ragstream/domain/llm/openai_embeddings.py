"""Embeddings from any endpoint speaking the OpenAI embeddings protocol."""

from __future__ import annotations

from collections.abc import Sequence

import openai
from openai import AsyncOpenAI

from ragstream.domain.llm.embeddings import EmbeddingError


class OpenAIEmbedder:
    """Any endpoint speaking the OpenAI embeddings protocol (OpenAI, Ollama, vLLM, ...).

    Batches the texts; the official client retries 429, 5xx and connection errors with
    exponential backoff (``openai_max_retries``) before an error reaches us.
    """

    def __init__(
        self,
        client: AsyncOpenAI,
        *,
        model: str,
        dimensions: int,
        batch_size: int = 64,
        request_dimensions: bool = True,
    ) -> None:
        self._client = client
        self._model = model
        self._dimensions = dimensions
        self._batch_size = max(1, batch_size)
        self._request_dimensions = request_dimensions

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def name(self) -> str:
        return f"openai/{self._model}/{self._dimensions}"

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            vectors.extend(await self._embed_batch(list(texts[start : start + self._batch_size])))
        return vectors

    async def _embed_batch(self, batch: list[str]) -> list[list[float]]:
        # Empty strings are rejected by the API; a single space embeds as "nothing".
        inputs = [text if text.strip() else " " for text in batch]
        try:
            if self._request_dimensions:
                response = await self._client.embeddings.create(
                    input=inputs,
                    model=self._model,
                    dimensions=self._dimensions,
                    encoding_format="float",
                )
            else:
                response = await self._client.embeddings.create(
                    input=inputs, model=self._model, encoding_format="float"
                )
        except openai.APIStatusError as exc:
            status = exc.status_code
            raise EmbeddingError(
                f"the embedding provider answered HTTP {status}",
                transient=status in (408, 409, 429) or status >= 500,
            ) from exc
        except openai.APIConnectionError as exc:  # includes timeouts
            raise EmbeddingError(
                "the embedding provider could not be reached", transient=True
            ) from exc
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != len(inputs):
            raise EmbeddingError(
                f"the embedding provider returned {len(data)} vectors for {len(inputs)} texts",
                transient=False,
            )
        vectors = [list(item.embedding) for item in data]
        for vector in vectors:
            if len(vector) != self._dimensions:
                raise EmbeddingError(
                    f"the embedding model returns {len(vector)} dimensions but "
                    f"RAGSTREAM_EMBEDDING_DIMENSIONS is {self._dimensions}",
                    transient=False,
                )
        return vectors

    async def aclose(self) -> None:
        await self._client.close()
