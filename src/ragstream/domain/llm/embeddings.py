"""Embedding providers: an offline feature-hashing embedder and any OpenAI-compatible endpoint."""

from __future__ import annotations

import asyncio
import math
import threading
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from ragstream.domain.text import STOPWORDS
from ragstream.domain.text import stem as text_stem
from ragstream.domain.text import words as text_words
from ragstream.settings import ConfigurationError
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


class _Vocabulary:
    """What the hashing embedder knows about the words it has seen, as numpy tables.

    Words and stems get integer ids; each word's features (its own and its character n-grams)
    sit in one flat table at ``starts[id]:starts[id] + lengths[id]``; ``stem_ids[id]`` is the
    stem a word contributes to bigrams (-1 for stopwords). Bigrams of stem ids are kept sorted
    by key for ``searchsorted``. It only ever grows, until ``HashingEmbedder`` starts a new one.
    """

    def __init__(self) -> None:
        # numpy comes with the first embedding: it takes longer to import than the server to start.
        import numpy as np

        self.words: dict[str, int] = {}
        self.stems: dict[str, int] = {}
        self.stem_text: list[str] = []
        self.stem_ids = np.empty(0, np.int64)
        self.starts = np.empty(0, np.int64)
        self.lengths = np.empty(0, np.int64)
        self.feature_indices = np.empty(0, np.int64)
        self.feature_weights = np.empty(0, np.float64)
        self.bigram_keys = np.empty(0, np.int64)
        self.bigram_indices = np.empty(0, np.int64)
        self.bigram_weights = np.empty(0, np.float64)


# Longer words are cut: they keep the caches and the n-gram lists small.
MAX_WORD_CHARS = 64

# A vocabulary is dropped and rebuilt past these sizes, so memory stays bounded.
MAX_WORDS = 200_000
MAX_BIGRAMS = 2_000_000
STEM_KEY = 1 << 21  # stem ids are below MAX_WORDS < STEM_KEY: a bigram key is a * STEM_KEY + b


class HashingEmbedder:
    """Deterministic feature hashing of words, word bigrams and character n-grams.

    Needs no model files and no network. Similar wording gives similar vectors, which is enough
    for retrieval over a modest knowledge base, especially fused with full-text search.

    A batch is embedded with numpy over the whole batch: words become ids, each text's distinct
    words and bigrams are counted with ``np.unique``, their buckets gathered from the vocabulary
    tables, and one ``bincount`` sums them. Within a text the terms keep the order the vector has
    always been summed in (words by first appearance, then bigrams by first appearance), so the
    vectors are the same, bit for bit, as those stored by earlier versions.
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
        self._vocabulary: _Vocabulary | None = None  # made on first use
        # embed() runs in worker threads; the vocabulary is updated in place.
        self._lock = threading.Lock()

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def name(self) -> str:
        return f"hashing/{self._dimensions}"

    def _feature(self, feature: str) -> tuple[int, float]:
        digest = zlib.crc32(feature.encode("utf-8"))
        sign = 1.0 if (digest >> 31) & 1 else -1.0
        return digest % self._dimensions, sign

    def _word_features(self, word: str) -> tuple[list[int], list[float]]:
        """Bucket indices and signed weights of one word's own feature and its n-grams."""
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
        indices: list[int] = []
        weights: list[float] = []
        for feature, weight in features:
            index, sign = self._feature(feature)
            indices.append(index)
            weights.append(sign * weight)
        return indices, weights

    def _learn_words(self, vocabulary: _Vocabulary, new: Sequence[str]) -> None:
        import numpy as np

        stem_ids: list[int] = []
        lengths: list[int] = []
        indices: list[int] = []
        weights: list[float] = []
        for word in new:
            vocabulary.words[word] = len(vocabulary.words)
            if word in STOPWORDS:
                stem_ids.append(-1)
            else:
                stem = text_stem(word)
                if stem not in vocabulary.stems:
                    vocabulary.stems[stem] = len(vocabulary.stem_text)
                    vocabulary.stem_text.append(stem)
                stem_ids.append(vocabulary.stems[stem])
            word_indices, word_weights = self._word_features(word)
            lengths.append(len(word_indices))
            indices.extend(word_indices)
            weights.extend(word_weights)
        starts = len(vocabulary.feature_indices) + np.cumsum([0, *lengths[:-1]], dtype=np.int64)
        vocabulary.starts = np.concatenate([vocabulary.starts, starts])
        vocabulary.lengths = np.concatenate([vocabulary.lengths, np.asarray(lengths, np.int64)])
        vocabulary.stem_ids = np.concatenate([vocabulary.stem_ids, np.asarray(stem_ids, np.int64)])
        vocabulary.feature_indices = np.concatenate(
            [vocabulary.feature_indices, np.asarray(indices, np.int64)]
        )
        vocabulary.feature_weights = np.concatenate(
            [vocabulary.feature_weights, np.asarray(weights, np.float64)]
        )

    def _learn_bigrams(self, vocabulary: _Vocabulary, keys: np.ndarray) -> None:
        import numpy as np

        indices: list[int] = []
        weights: list[float] = []
        for key in keys.tolist():
            first, second = divmod(key, STEM_KEY)
            index, sign = self._feature(
                f"b:{vocabulary.stem_text[first]} {vocabulary.stem_text[second]}"
            )
            indices.append(index)
            weights.append(sign * BIGRAM_WEIGHT)
        all_keys = np.concatenate([vocabulary.bigram_keys, keys])
        order = np.argsort(all_keys, kind="stable")
        vocabulary.bigram_keys = all_keys[order]
        vocabulary.bigram_indices = np.concatenate(
            [vocabulary.bigram_indices, np.asarray(indices, np.int64)]
        )[order]
        vocabulary.bigram_weights = np.concatenate(
            [vocabulary.bigram_weights, np.asarray(weights, np.float64)]
        )[order]

    def _word_ids(self, vocabulary: _Vocabulary, words: list[str]) -> list[int]:
        known = vocabulary.words
        try:
            return [known[word] for word in words]
        except KeyError:
            self._learn_words(vocabulary, list(dict.fromkeys(w for w in words if w not in known)))
            return [known[word] for word in words]

    def embed_matrix(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised row of ``dimensions`` float64 per text."""
        with self._lock:
            vocabulary = self._vocabulary
            if (
                vocabulary is None
                or len(vocabulary.words) > MAX_WORDS
                or len(vocabulary.bigram_keys) > MAX_BIGRAMS
            ):
                vocabulary = self._vocabulary = _Vocabulary()
            return self._embed_matrix(vocabulary, texts)

    def _embed_matrix(self, vocabulary: _Vocabulary, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        dims = self._dimensions
        ids: list[int] = []
        per_text: list[int] = []
        for text in texts:
            text_ids = self._word_ids(vocabulary, [w[:MAX_WORD_CHARS] for w in text_words(text)])
            ids.extend(text_ids)
            per_text.append(len(text_ids))
        words = np.asarray(ids, np.int64)
        rows = np.repeat(np.arange(len(texts), dtype=np.int64), per_text)

        # Each text's distinct words, in order of first appearance, and how often each occurs.
        size = max(len(vocabulary.words), 1)
        word_keys, word_counts = _first_appearance(rows * size + words)
        word_rows, word_ids = np.divmod(word_keys, size)
        lengths = vocabulary.lengths[word_ids]
        ends = np.cumsum(lengths)
        positions = np.arange(int(ends[-1]) if len(ends) else 0) + np.repeat(
            vocabulary.starts[word_ids] - (ends - lengths), lengths
        )
        word_buckets = np.repeat(word_rows * dims, lengths) + vocabulary.feature_indices[positions]
        word_values = vocabulary.feature_weights[positions] * np.repeat(
            _scales(word_counts), lengths
        )

        # Bigrams of consecutive content stems (stopwords dropped) within one text.
        stems = vocabulary.stem_ids[words]
        content = stems >= 0
        stems, stem_rows = stems[content], rows[content]
        same_text = stem_rows[:-1] == stem_rows[1:]
        pairs = (stems[:-1] * STEM_KEY + stems[1:])[same_text]
        pair_rows = stem_rows[:-1][same_text]
        bigram_keys, bigram_counts = _first_appearance(pair_rows * STEM_KEY**2 + pairs)
        bigram_rows, bigram_pairs = np.divmod(bigram_keys, STEM_KEY**2)
        slots = self._bigram_slots(vocabulary, bigram_pairs)
        bigram_buckets = bigram_rows * dims + vocabulary.bigram_indices[slots]
        bigram_values = vocabulary.bigram_weights[slots] * _scales(bigram_counts)

        # bincount adds in array order; each bucket belongs to one text, in which the words
        # come before the bigrams: the order each vector has always been summed in.
        matrix = np.bincount(
            np.concatenate([word_buckets, bigram_buckets]),
            weights=np.concatenate([word_values, bigram_values]),
            minlength=len(texts) * dims,
        ).reshape(len(texts), dims)
        # Per row as before (np.linalg.norm of a vector is sqrt(dot)), so the rounding is too.
        norms = np.array([np.sqrt(np.dot(vector, vector)) for vector in matrix])
        zero = norms == 0.0  # no words at all, or weights that cancel out
        matrix[zero, 0] = 1.0
        norms[zero] = 1.0
        normalised: np.ndarray = matrix / norms[:, None]
        return normalised

    def _bigram_slots(self, vocabulary: _Vocabulary, pairs: np.ndarray) -> np.ndarray:
        """Where each bigram key sits in the vocabulary's sorted bigram table."""
        import numpy as np

        table = vocabulary.bigram_keys
        slots = np.searchsorted(table, pairs)
        found = slots < len(table)
        found[found] = table[slots[found]] == pairs[found]
        if not found.all():
            new = sorted(set(pairs[~found].tolist()))
            self._learn_bigrams(vocabulary, np.asarray(new, np.int64))
            slots = np.searchsorted(vocabulary.bigram_keys, pairs)
        return slots

    def embed_one(self, text: str) -> list[float]:
        return self.embed_sync([text])[0]

    def embed_sync(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = self.embed_matrix(texts).tolist()
        return vectors

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


def _first_appearance(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct keys in order of first appearance, and how often each occurs."""
    import numpy as np

    distinct, first, counts = np.unique(keys, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    return distinct[order], counts[order]


# 1 + ln(count) by count: made on first use (with numpy), grown when a count passes its end.
_scale_table: np.ndarray | None = None


def _scales(counts: np.ndarray) -> np.ndarray:
    """How a term seen ``count`` times in one text is weighted: 1 + ln(count), the same
    floats as ``math.log`` gives (numpy's vectorised log may round differently)."""
    import numpy as np

    global _scale_table
    table = _scale_table
    top = int(counts.max()) if len(counts) else 0
    if table is None or top >= len(table):
        size = max(4096, top + 1)
        table = np.array([0.0, *(1.0 + math.log(count) for count in range(1, size))])
        _scale_table = table
    scales: np.ndarray = table[counts]
    return scales


_worker_embedders: dict[int, HashingEmbedder] = {}


def _worker_embedder(dimensions: int) -> HashingEmbedder:
    """A worker process keeps one embedder (and its caches) per size."""
    embedder = _worker_embedders.get(dimensions)
    if embedder is None:
        embedder = _worker_embedders[dimensions] = HashingEmbedder(dimensions)
    return embedder


def embed_in_worker(dimensions: int, texts: list[str]) -> list[list[float]]:
    """Runs in a worker process."""
    return _worker_embedder(dimensions).embed_sync(texts)


def embed_matrix_in_worker(dimensions: int, texts: Sequence[str]) -> np.ndarray:
    """Runs in a worker process: the vectors as float32 rows (what a ``vector`` column keeps),
    which go back to the parent as one buffer instead of a Python float each."""
    import numpy as np

    matrix: np.ndarray = _worker_embedder(dimensions).embed_matrix(texts).astype(np.float32)
    return matrix
