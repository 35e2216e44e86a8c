"""Caption metrics as the COCO caption evaluation (``pycocoevalcap``) computes them: BLEU-1..4 and CIDEr-D, after
the tokenisation it applies, in pure Python (no Java, no numpy).

Why our own: pycocoevalcap's wheel is 104 MB of Java jars, and its tokenizer needs a JVM. Its BLEU and CIDEr
scorers are short pure-Python programs; these are re-statements of them, checked against them on Flickr8k captions
(tests/zoo/test_caption_metrics.py says where the figures come from).

Usage: ``bleu(candidates, references)`` and ``cider(candidates, references)`` with ``candidates: {id: caption}``
and ``references: {id: [caption, ...]}`` over the same ids. Both tokenise raw captions first (``tokenize=False``
scores text that is already tokenised: words separated by spaces).

Tokenisation (``ptb_tokenize``): pycocoevalcap runs Stanford CoreNLP 3.4.1's PTBTokenizer (``-preserveLines
-lowerCase``) and then drops the tokens in its ``PUNCTUATIONS`` list. This is a pure-Python equivalent for plain
English captions: lower case; ``. , ; : ! ? "`` and bracket characters split off words; clitics split as PTB does
(``dog's`` -> ``dog 's``, ``don't`` -> ``do n't``, ``can't`` -> ``ca n't``, ``cannot`` -> ``can not``, ``gonna`` ->
``gon na``); numbers keep inner ``. , :`` (``3.5``, ``1,000``); acronyms and a few abbreviations keep their period
(``u.s.``, ``mr.``); hyphenated words and ``a/b`` stay whole. Then the punctuation tokens pycocoevalcap lists are
removed (quotes, ``. , ? ! : ; - -- ...``). Kept as PTB keeps them: ``'s``-style clitics, ``&``, ``#``, ``$``, ``%``,
``*`` as tokens of their own, runs like ``!!`` or ``?!`` (not in pycocoevalcap's list), and brackets as
``-lrb- -rrb- -lsb- -rsb- -lcb- -rcb-`` (pycocoevalcap lists them upper-case, but ``-lowerCase`` writes them
lower-case, so they survive).
It matches the Java tokenizer on every one of Flickr8k's 40,455 captions. Known differences, for text unlike
captions: CoreNLP's full abbreviation lists and sentence-final handling (it writes ``etc. .`` before a capitalised
word), URLs, e-mail addresses, emoticons, SGML/XML tags, fractions and Unicode normalisation (we map curly quotes to
straight ones and nothing else), none of which occur in Flickr8k or COCO captions in practice.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

from zoo.errors import ConfigError, DataError

__all__ = ["ptb_tokenize", "bleu", "cider", "caption_scores"]

# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS as the tokenizer writes them (quotes become `` and '').
_DROPPED = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# PTB splits these words into two tokens (PTBLexer's special cases).
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"), "wanna": ("wan", "na"),
                "lemme": ("lem", "me"), "gimme": ("gim", "me"), "dunno": ("dun", "no")}
# Abbreviations whose final period PTB keeps mid-sentence (the common ones in captions; CoreNLP's list is longer).
_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "vs.", "etc.", "mt.", "ave.", "inc.", "co.",
                  "prof.", "gen.", "sgt.", "capt.", "lt.", "col.", "rev.", "no.", "jan.", "feb.", "aug.", "sept.",
                  "oct.", "nov.", "dec."}
# one token as it stands: initials and acronyms (u.  u.s.  a.m.), numbers (3.5  1,000  3:30), runs of ! and ?
_WHOLE = re.compile(r"(?:[a-z]\.)+|[0-9]+(?:[.,:][0-9]+)*|[!?]+")
_CLITICS = {"n't", "'s", "'re", "'ve", "'ll", "'d", "'m", "'n'"}
_LEADING_CLITIC = re.compile(r"('s|'re|'ve|'ll|'d|'m)(?=[^a-z])")  # ant 's-eye-view
_CLITIC = re.compile(r"(.+?)(n't|'s|'re|'ve|'ll|'d|'m)")        # dog's, don't, we're
_LEADING = re.compile(r"^(\.{2,}|-{1,}|[\"'`(\[{$#*&=])")        # what splits off a word's front
_TRAILING = re.compile(r"(\.{2,}|-{1,}|[!?]+|[\"',;:)\]}%*&=]|\.)$")  # ... and off its end
_INNER = re.compile(r"(\.{3,}|-{2,}|[\"();\[\]{}*!?&=]|,(?![0-9])|(?<![0-9]),)")  # splits inside a word


def _word_tokens(word: str) -> list[str]:
    """PTB tokens of one whitespace-free, lower-cased chunk, punctuation tokens included."""
    if not word:
        return []
    if _WHOLE.fullmatch(word) or word in _ABBREVIATIONS or word in _CLITICS:
        return [word]
    lead = _LEADING_CLITIC.match(word) or _LEADING.match(word)
    if lead and len(lead.group(1)) < len(word):
        return [lead.group(1)] + _word_tokens(word[lead.end():])
    trail = _TRAILING.search(word)
    if trail and trail.start() > 0:
        return _word_tokens(word[:trail.start()]) + [trail.group(1)]
    parts = [p for p in _INNER.split(word) if p]
    if len(parts) > 1:
        return [t for p in parts for t in _word_tokens(p)]
    if word in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[word])
    clitic = _CLITIC.fullmatch(word)
    if clitic:
        return [clitic.group(1), clitic.group(2)]
    return [word]


def ptb_tokenize(text: str) -> str:
    """A caption as pycocoevalcap scores it: PTB tokens, lower case, its punctuation tokens dropped, space-joined."""
    text = _text(text).lower().translate(str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'}))
    tokens = [t for w in text.split() for t in _word_tokens(w)]
    tokens = [_BRACKETS.get(t, t) for t in tokens]
    return " ".join(t for t in tokens if t not in _DROPPED and t != '"')


def _pairs(candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
           tokenize: bool) -> list[tuple[list[str], list[list[str]]]]:
    """(candidate words, [reference words]) per id, after checking both sides cover the same ids."""
    if not isinstance(candidates, Mapping) or not isinstance(references, Mapping):
        raise DataError("Pass candidates as {id: caption} and references as {id: [caption, ...]} (dicts), got "
                        f"{type(candidates).__name__} and {type(references).__name__}.")
    if not candidates:
        raise DataError("No candidate captions to score: pass at least one {id: caption}.")
    missing = [k for k in candidates if k not in references]
    extra = [k for k in references if k not in candidates]
    if missing or extra:
        raise DataError(f"candidates and references must have the same ids: {len(missing)} candidate id(s) have no "
                        f"references (e.g. {missing[:3]}), {len(extra)} reference id(s) no candidate (e.g. "
                        f"{extra[:3]}). Score one candidate per image that has references.")
    prep = ptb_tokenize if tokenize else _text
    out = []
    for key, cand in candidates.items():
        if isinstance(cand, (list, tuple)) and len(cand) == 1:   # pycocoevalcap's {id: [caption]} layout
            cand = cand[0]
        refs = references[key]
        if isinstance(refs, str) or not isinstance(refs, Sequence) or len(refs) == 0:
            raise DataError(f"references[{key!r}] must be a non-empty list of captions, got {refs!r}.")
        out.append((prep(cand).split(), [prep(r).split() for r in refs]))
    return out


def _text(caption: str) -> str:
    """An already tokenised caption, checked to be text."""
    if not isinstance(caption, str):
        raise DataError(f"A caption must be a string, got {type(caption).__name__}: {caption!r}. Pass captions as text.")
    return caption


def _ngrams(words: list[str], n: int) -> Counter:
    """Counts of every 1..n-gram of ``words`` (pycocoevalcap's ``precook``)."""
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n (the longest n-gram) must be a positive integer, got {n!r}; the standard is n=4.")


def bleu(candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], n: int = 4,
         tokenize: bool = True) -> list[float]:
    """Corpus BLEU-1..n, as pycocoevalcap's ``Bleu(4)`` (``BleuScorer.compute_score(option='closest')``).

    Clipped n-gram matches (a candidate n-gram counts at most as often as it occurs in one reference) and candidate
    n-gram totals are summed over the corpus; BLEU-k is the geometric mean of the 1..k precisions times the brevity
    penalty ``exp(1 - r/c)`` when the candidates' total length c is below r, the sum over images of the reference
    length closest to each candidate's (ties: the shorter). As pycocoevalcap, each precision is
    ``(matches + 1e-15) / (total + 1e-9)``, so an order with no match scores about 1e-16, not exactly 0.
    """
    _check_n(n)
    return _bleu(_pairs(candidates, references, tokenize), n)


def _bleu(pairs: list[tuple[list[str], list[list[str]]]], n: int) -> list[float]:
    tiny, small = 1e-15, 1e-9
    correct, guess = [0] * n, [0] * n
    test_len = ref_len = 0
    for cand, refs in pairs:
        max_ref = Counter()
        for ref in refs:
            max_ref |= _ngrams(ref, n)                                # per-n-gram maximum over the references
        for gram, count in _ngrams(cand, n).items():
            correct[len(gram) - 1] += min(count, max_ref[gram])
        for k in range(n):
            guess[k] += max(0, len(cand) - k)
        test_len += len(cand)
        ref_len += min((abs(len(r) - len(cand)), len(r)) for r in refs)[1]
    scores, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def cider(candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], n: int = 4,
          sigma: float = 6.0, tokenize: bool = True) -> float:
    """Corpus CIDEr-D, as pycocoevalcap's ``Cider`` computes it (the COCO leaderboard's "CIDEr").

    Each caption is a TF-IDF vector of its 1..n-grams, with document frequencies counted over the references of the
    evaluated images (an n-gram's weight is ``count * (log(#images) - log(max(1, df)))``). Per image and n-gram
    order: the candidate's similarity to each reference is ``sum min(w_c, w_r) * w_r / (|w_c| |w_r|)`` (clipped
    cosine) times ``exp(-d^2 / (2 sigma^2))``; the score is the mean over orders of the mean over references, x10;
    the corpus figure is the mean over images. As pycocoevalcap, the length difference ``d`` is taken between
    bigram counts (its ``length`` counts n-grams of index 1), which equals the word-count difference unless a
    caption has no words. With one image every IDF weight is log(1) = 0 and CIDEr is 0: score a whole test set.
    """
    _check_n(n)
    return _cider(_pairs(candidates, references, tokenize), n, sigma)


def _cider(pairs: list[tuple[list[str], list[list[str]]]], n: int, sigma: float) -> float:
    cooked = [(_ngrams(cand, n), [_ngrams(r, n) for r in refs]) for cand, refs in pairs]
    df: Counter = Counter()
    for _, refs in cooked:
        df.update(set().union(*refs))
    log_images = math.log(float(len(cooked)))

    def tfidf(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec = [{} for _ in range(n)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * (log_images - math.log(max(1.0, df[gram])))
        norms = [math.sqrt(sum(w * w for w in v.values())) for v in vec]
        bigrams = sum(tf for gram, tf in counts.items() if len(gram) == 2)
        return vec, norms, bigrams

    total = 0.0
    for cand, refs in cooked:
        vec_c, norm_c, len_c = tfidf(cand)
        per_order = [0.0] * n
        for ref in refs:
            vec_r, norm_r, len_r = tfidf(ref)
            penalty = math.exp(-float(len_c - len_r) ** 2 / (2 * sigma ** 2))
            for k in range(n):
                val = sum(min(w, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, w in vec_c[k].items())
                if norm_c[k] != 0 and norm_r[k] != 0:
                    val /= norm_c[k] * norm_r[k]
                per_order[k] += val * penalty
        total += sum(per_order) / n / len(refs) * 10.0
    return total / len(cooked)


def caption_scores(candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]) -> dict[str, float]:
    """The caption table's columns, ``bleu1``..``bleu4`` and ``cider``, from one tokenisation of the captions."""
    pairs = _pairs(candidates, references, tokenize=True)
    scores = {f"bleu{k + 1}": s for k, s in enumerate(_bleu(pairs, 4))}
    scores["cider"] = _cider(pairs, 4, 6.0)
    return scores
