"""Embedding providers: an offline feature-hashing embedder and any OpenAI-compatible endpoint."""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from ragstream.domain.text import STOPWORDS
from ragstream.domain.text import stem as text_stem
from ragstream.domain.text import words as text_words
from ragstream.settings import ConfigurationError, Settings
from ragstream.workpool import WorkPool

if TYPE_CHECKING:
    import numpy as np


class EmbeddingError(Exception):
    """The provider could not embed; ``transient`` errors are worth retrying later."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class Embedder(Protocol):
    @property
    def dimensions(self) -> int: ...

    @property
    def name(self) -> str:
        """Provider and model, for logs and the reindex report."""
        ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One L2-normalised vector of ``dimensions`` floats per text, in order."""
        ...

    async def aclose(self) -> None: ...


WORD_WEIGHT = 1.0
STOPWORD_WEIGHT = 0.05  # stopwords keep only a small weight
BIGRAM_WEIGHT = 0.6
CHAR_NGRAM_WEIGHT = 0.5  # shared by all n-grams of one word
CHAR_NGRAM_SIZES = (3, 4)


# Longer words are cut: they keep the caches and the n-gram lists small.
MAX_WORD_CHARS = 64


class HashingEmbedder:
    """Deterministic feature hashing of words, word bigrams and character n-grams.

    Needs no model files and no network. Similar wording gives similar vectors, which is enough
    for retrieval over a modest knowledge base, especially fused with full-text search.
    """

    def __init__(
        self,
        dimensions: int = 384,
        *,
        pool: WorkPool | None = None,
        time_limit: float | None = None,
    ) -> None:
        if dimensions < 8:
            raise ConfigurationError("RAGSTREAM_EMBEDDING_DIMENSIONS must be at least 8")
        self._dimensions = dimensions
        self._pool = pool
        self._time_limit = time_limit
        # Per-instance caches: the same word always lands in the same buckets.
        self._feature = functools.lru_cache(maxsize=200_000)(self._feature_uncached)
        self._word = functools.lru_cache(maxsize=100_000)(self._word_uncached)

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def name(self) -> str:
        return f"hashing/{self._dimensions}"

    def _feature_uncached(self, feature: str) -> tuple[int, float]:
        digest = zlib.crc32(feature.encode("utf-8"))
        sign = 1.0 if (digest >> 31) & 1 else -1.0
        return digest % self._dimensions, sign

    def _word_uncached(self, word: str) -> tuple[np.ndarray, np.ndarray]:
        """Bucket indices and signed weights of one word's own feature and its n-grams."""
        import numpy as np  # on first use: numpy takes longer to import than the server to start

        stop = word in STOPWORDS
        stem = text_stem(word)
        features = [(f"w:{stem}", STOPWORD_WEIGHT if stop else WORD_WEIGHT)]
        if not stop:
            padded = f"<{stem}>"
            grams = [
                padded[i : i + n]
                for n in CHAR_NGRAM_SIZES
                for i in range(max(len(padded) - n + 1, 0))
            ]
            for gram in grams:
                features.append((f"c:{gram}", CHAR_NGRAM_WEIGHT / len(grams)))
        indices = np.empty(len(features), dtype=np.int64)
        weights = np.empty(len(features), dtype=np.float64)
        for i, (feature, weight) in enumerate(features):
            index, sign = self._feature(feature)
            indices[i] = index
            weights[i] = sign * weight
        return indices, weights

    def embed_one(self, text: str) -> list[float]:
        import numpy as np

        words = [w[:MAX_WORD_CHARS] for w in text_words(text)]
        vector = np.zeros(self._dimensions, dtype=np.float64)
        if not words:
            vector[0] = 1.0
            return vector.tolist()
        for word, count in Counter(words).items():
            indices, weights = self._word(word)
            np.add.at(vector, indices, weights * (1.0 + math.log(count)))
        content = [text_stem(w) for w in words if w not in STOPWORDS]
        for bigram, count in Counter(itertools.pairwise(content)).items():
            index, sign = self._feature(f"b:{bigram[0]} {bigram[1]}")
            vector[index] += sign * BIGRAM_WEIGHT * (1.0 + math.log(count))
        norm = float(np.linalg.norm(vector))
        if norm == 0.0:
            vector[0] = 1.0
            norm = 1.0
        result: list[float] = (vector / norm).tolist()
        return result

    def embed_sync(self, texts: Sequence[str]) -> list[list[float]]:
        return [self.embed_one(text) for text in texts]

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if len(texts) <= 4:
            return self.embed_sync(texts)  # a search query: shorter than a context switch
        # Batches are pure-Python CPU work: in a thread they would hold the GIL and stall the
        # event loop, so they go to the worker processes.
        if self._pool is not None:
            return await self._pool.run(
                embed_in_worker, self._dimensions, list(texts), time_limit=self._time_limit
            )
        return await asyncio.to_thread(self.embed_sync, texts)

    async def aclose(self) -> None:
        return None


_worker_embedders: dict[int, HashingEmbedder] = {}


def embed_in_worker(dimensions: int, texts: list[str]) -> list[list[float]]:
    """Runs in a worker process, which keeps one embedder (and its caches) per size."""
    embedder = _worker_embedders.get(dimensions)
    if embedder is None:
        embedder = _worker_embedders[dimensions] = HashingEmbedder(dimensions)
    return embedder.embed_sync(texts)


def build_embedder(settings: Settings, pool: WorkPool | None = None) -> Embedder:
    if settings.embedding_provider == "openai":
        # Imported only when configured: the OpenAI client library is slow to import.
        from ragstream.domain.llm.openai_client import openai_client
        from ragstream.domain.llm.openai_embeddings import OpenAIEmbedder

        return OpenAIEmbedder(
            openai_client(settings),
            model=settings.embedding_model,
            dimensions=settings.embedding_dimensions,
            batch_size=settings.embedding_batch_size,
            request_dimensions=settings.embedding_request_dimensions,
        )
    return HashingEmbedder(
        settings.embedding_dimensions, pool=pool, time_limit=settings.ingestion_timeout_seconds
    )
