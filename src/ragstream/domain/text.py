"""Text measures shared by chunking, prompts, the hashing embedder and the extractive answerer.

One token estimate, so a chunk of "500 tokens" costs 500 tokens of a prompt budget; one word
splitter, stopword list and stemmer, so a question and a passage are cut into the same terms.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata

import snowballstemmer

# A word-or-punctuation piece: "don't" is three of them, "3.14" three, "ERP" one.
_PIECES = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"[^\W_]+")

# Frequent English words: they say little about what a text is about.
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers herself him himself his how i if in into
    is it its itself just me more most my myself no nor not now of off on once only or other our
    ours ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves""".split()  # noqa: SIM905  (a word list reads better as prose)
)

# The English (Porter2) stemmer of the Snowball project; it keeps no state between words.
_STEMMER = snowballstemmer.stemmer("english")


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` without a tokenizer: about four characters, or one word-or-punctuation
    piece, per token, whichever is more (code and numbers have more pieces than characters / 4).
    """
    if not text:
        return 0
    return max(math.ceil(len(text) / 4), len(_PIECES.findall(text)))


def count_pieces(text: str) -> int:
    """Word-or-punctuation pieces of ``text``; they never span whitespace, so counts add up."""
    return len(_PIECES.findall(text))


def truncate_to_tokens(text: str, budget: int) -> str:
    """The longest start of ``text`` (cut at a character) whose estimate fits ``budget``."""
    if estimate_tokens(text) <= budget:
        return text
    low, high = 0, min(len(text), max(budget, 0) * 4)
    while low < high:  # the estimate grows with the length: binary search for the longest fit
        middle = (low + high + 1) // 2
        if estimate_tokens(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[:low]


def words(text: str) -> list[str]:
    """Lower-cased words (letters and digits), after Unicode compatibility normalisation."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


@functools.lru_cache(maxsize=100_000)
def stem(word: str) -> str:
    """The word's stem, so "orbits" and "orbiting" meet "orbit"; ``word`` is lower case."""
    result: str = _STEMMER.stemWord(word)
    return result
