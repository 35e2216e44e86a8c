"""Caption metrics (zoo.vl.caption_metrics) against hand-computed values, identities, and figures from
pycocoevalcap itself.

Where the recorded figures come from: pycocoevalcap 1.2 (PyPI wheel, its ``bleu/`` and ``cider/`` modules run
as they ship: ``Bleu(4).compute_score`` and ``Cider().compute_score``) on captions tokenised by the wheel's
Stanford CoreNLP 3.4.1 jar (``java edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase``, then its
PUNCTUATIONS removed), computed once on 2026-12-02. Nothing is downloaded or run in Java here.
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
import zipfile

import pytest

from zoo.errors import ConfigError, DataError
from zoo.vl.caption_metrics import bleu, caption_scores, cider, ptb_tokenize

TINY, SMALL = 1e-15, 1e-9     # pycocoevalcap BleuScorer's smoothing: (matches + tiny) / (total + small)


# ---------------------------------------------------------------- tokenisation

@pytest.mark.parametrize("raw, expected", [
    # expected: the Java PTBTokenizer's output with pycocoevalcap's punctuation removed
    ("A black dog is running after a white dog in the snow .", "a black dog is running after a white dog in the snow"),
    ("A dog's ball (red) [big] {x} \"quoted\" can't don't cannot gonna Mr. Smith U.S. 3.5 1,000 50% $5 a/b a*b "
     "t-shirt - -- well- ...wow!! ?! rock-n-roll dogs' colour & fish.",
     "a dog 's ball -lrb- red -rrb- -lsb- big -rsb- -lcb- x -rcb- quoted ca n't do n't can not gon na mr. smith u.s. "
     "3.5 1,000 50 % $ 5 a/b a * b t-shirt well wow !! ?! rock-n-roll dogs colour & fish"),
    ("Two men , one woman.Next line...", "two men one woman.next line"),
    ("\"Hello,\" she said; then: 'bye'!", "hello she said then bye"),
    ("The kids' toys aren't here, they're there; we'll see what I'd do.",
     "the kids toys are n't here they 're there we 'll see what i 'd do"),
    ("A man in a \"Go Team!\" shirt at 3:30 p.m. with #1 fans", "a man in a go team shirt at 3:30 p.m. with # 1 fans"),
    ("It's a dog -- a big one -- running...", "it 's a dog a big one running"),
    ("\u2018Curly\u2019 quotes \u201chere\u201d.", "curly quotes here"),
    ("Wait?! Really?? Yes!!!", "wait ?! really ?? yes !!!"),
    ("a slip 'n' slide at AT&T, an ant 's-eye-view of the letter \" P. \"",
     "a slip 'n' slide at at & t an ant 's eye-view of the letter p."),
    ("", ""),
])
def test_ptb_tokenize_matches_the_java_tokenizer(raw, expected):
    assert ptb_tokenize(raw) == expected


def test_ptb_tokenize_matches_the_java_tokenizer_on_every_flickr8k_caption(shared_data):
    # sha256 of the 40,455 Java-tokenised captions of captions.tsv (file order, newline-joined)
    with zipfile.ZipFile(shared_data / "flickr8k-128-eval.zip") as z:
        rows = list(csv.DictReader(io.StringIO(z.read("flickr8k-128/captions.tsv").decode()), delimiter="\t"))
    assert len(rows) == 40455
    text = "\n".join(ptb_tokenize(r["caption"]) for r in rows)
    assert hashlib.sha256(text.encode()).hexdigest() == \
        "040c964935b9501fcf3322c186336ba57b8a465f387952dc68969c2deb652a17"


# ---------------------------------------------------------------- BLEU by hand

def test_bleu_hand_computed_clipped_ngrams():
    cand = {1: "the cat sat on the mat"}
    refs = {1: ["the cat is on the mat", "there is a cat on the mat"]}
    # 1-grams: the x2 (a reference has 2), cat, on, mat match; sat does not   -> 5/6
    # 2-grams: the cat, on the, the mat match; cat sat, sat on do not         -> 3/5
    # 3-grams: on the mat matches; the cat sat, cat sat on, sat on the do not -> 1/4
    # 4-grams: none of the cat sat on / cat sat on the / sat on the mat        -> 0/3
    # closest reference length to 6 is 6: a brevity penalty of 1, but for pycocoevalcap's smoothing of the length
    # ratio, (6 + tiny) / (6 + small) < 1, which applies exp(1 - 1/ratio) = 1 - 1.7e-10
    p = [(5 + TINY) / (6 + SMALL), (3 + TINY) / (5 + SMALL), (1 + TINY) / (4 + SMALL), TINY / (3 + SMALL)]
    bp = math.exp(1 - (6 + SMALL) / (6 + TINY))
    expected = [bp * p[0], bp * math.sqrt(p[0] * p[1]), bp * (p[0] * p[1] * p[2]) ** (1 / 3),
                bp * (p[0] * p[1] * p[2] * p[3]) ** 0.25]
    got = bleu(cand, refs)
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[:3] == pytest.approx([5 / 6, math.sqrt(0.5), 0.5], rel=1e-8)
    # pycocoevalcap 1.2 on the same case
    assert got == pytest.approx([0.8333333330555557, 0.7071067809390603, 0.49999999981388915, 8.034284186199331e-05],
                                rel=1e-12)


def test_bleu_brevity_penalty_uses_the_closest_reference():
    # c = 2 words, closest reference has 4 (not 6): BP = exp(1 - 4/2) = e^-1; p1 = 2/2, p2 = 1/1; no 3- or
    # 4-grams in the candidate, so those precisions are tiny/small = 1e-6 each (pycocoevalcap's smoothing)
    got = bleu({"x": "the cat"}, {"x": ["the cat is here", "the cat sat on the mat"]})
    e = math.exp(-1)
    assert got == pytest.approx([e, e, e * (1e-6) ** (1 / 3), e * (1e-6 * 1e-6) ** 0.25], rel=1e-8)


def test_bleu_closest_length_tie_takes_the_shorter_reference():
    # c = 5; references of 4 and 6 words are equally close; the shorter (4) wins, so no brevity penalty
    # (the longer would give exp(1 - 6/5))
    got = bleu({0: "a b c d e"}, {0: ["a b c d", "a b c d e f"]})
    assert got[0] == pytest.approx(1.0, rel=1e-8)


def test_bleu_clips_repeated_words():
    # the x4 against a reference holding "the" once: 1/4; closest length 2 < 4, no penalty
    assert bleu({0: "the the the the"}, {0: ["the cat"]})[0] == pytest.approx(0.25, rel=1e-8)


def test_bleu_is_corpus_level_not_a_mean_of_images():
    # image a: 2/2 unigrams match, image b: 0/4 -> corpus 2/6 (a mean of images would be 0.5); lengths 6 vs 6
    got = bleu({"a": "a b", "b": "c d e f"}, {"a": ["a b"], "b": ["w x y z"]})
    assert got[0] == pytest.approx(1 / 3, rel=1e-8)


def test_bleu_identities():
    same = bleu({0: "a man rides a red bike"}, {0: ["a man rides a red bike"]})
    assert same == pytest.approx([1.0] * 4, rel=1e-8)
    none = bleu({0: "a man rides a red bike"}, {0: ["two dogs swim in the lake"]})
    assert all(0 <= s < 1e-10 for s in none)


def test_bleu_tokenises_unless_told_not_to():
    # tokenised, the candidate is "a dog running", equal to the reference: 1-, 2-, 3-gram precisions 1, and no
    # 4-gram on either side: (0 + tiny) / (0 + small) = 1e-6
    got = bleu({0: "A Dog, running!"}, {0: ["a dog running"]})
    assert got == pytest.approx([1.0, 1.0, 1.0, (1e-6) ** 0.25], rel=1e-8)
    # as given, "A", "Dog," and "running!" match none of "a", "dog", "running"
    assert bleu({0: "A Dog, running!"}, {0: ["a dog running"]}, tokenize=False)[0] < 1e-10


# ---------------------------------------------------------------- CIDEr by hand

def test_cider_hand_computed_idf_clipping_and_length_penalty():
    cand = {1: "a dog dog", 2: "a cat"}
    refs = {1: ["a dog"], 2: ["a cat"]}
    l = math.log(2)   # log(#images); "a" is in both images' references: idf log 2 - log 2 = 0
    # image 1, weights tf * idf: candidate 1-grams {a: 0, dog: 2l}, reference {a: 0, dog: l}
    #   1-grams: min(2l, l) * l / (|2l| * |l|) = 1/2 (clipping keeps the repeated word from counting twice)
    #   2-grams: candidate {a dog: l, dog dog: l (df 0 -> idf log 2)}, reference {a dog: l}: l*l / (sqrt(2) l * l)
    #   3-grams: the reference has none (norm 0): 0; 4-grams: neither: 0
    #   length penalty on bigram counts 2 vs 1: exp(-1 / (2 * 6^2)); x10, one reference
    image1 = (0.5 + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72) * 10
    # image 2, identical: 1-grams {cat: l} -> 1, 2-grams {a cat: l} -> 1, no 3/4-grams -> mean 2/4, x10 = 5
    image2 = 5.0
    got = cider(cand, refs)
    assert got == pytest.approx((image1 + image2) / 2, rel=1e-12)
    assert got == pytest.approx(3.988071622845018, rel=1e-12)         # pycocoevalcap 1.2 on the same case


def test_cider_averages_over_references():
    # image 1 has two references, only one of which the candidate equals; image 2 fixes the IDF
    one = cider({1: "a red dog", 2: "a cat"}, {1: ["a red dog"], 2: ["a cat"]})
    two = cider({1: "a red dog", 2: "a cat"}, {1: ["a red dog", "some green fish"], 2: ["a cat"]})
    assert 0 < two < one


def test_cider_identities():
    refs = {0: ["a man rides a red bike"], 1: ["two dogs swim in the lake"]}
    assert cider({0: "a man rides a red bike", 1: "two dogs swim in the lake"}, refs) == pytest.approx(10.0, rel=1e-12)
    assert cider({0: "two dogs swim in the lake", 1: "a man rides a red bike"}, refs) == 0.0
    # one image: every IDF weight is log(1) = 0, so CIDEr is 0 however good the caption
    assert cider({0: "a man rides a red bike"}, {0: ["a man rides a red bike"]}) == 0.0


def test_cider_sigma_widens_the_length_penalty():
    cand, refs = {1: "a big red dog runs", 2: "a cat"}, {1: ["a big red dog"], 2: ["a cat"]}
    assert cider(cand, refs, sigma=6.0) < cider(cand, refs, sigma=60.0)


# ---------------------------------------------------------------- against pycocoevalcap on Flickr8k

def _flickr8k_test_case(shared_data, n_images: int, shift: int):
    """Candidates: caption 0 of the image `shift` places later (0: the image's own); references: its captions 1-4."""
    with zipfile.ZipFile(shared_data / "flickr8k-128-eval.zip") as z:
        rows = list(csv.DictReader(io.StringIO(z.read("flickr8k-128/captions.tsv").decode()), delimiter="\t"))
        ids = sorted(z.read("flickr8k-128/test.txt").decode().split())[:n_images]
    caps: dict[str, list] = {}
    for r in rows:
        caps.setdefault(r["image"], []).append((int(r["caption_id"]), r["caption"]))
    cands = {i: sorted(caps[ids[(k + shift) % len(ids)]])[0][1] for k, i in enumerate(ids)}
    refs = {i: [c for _, c in sorted(caps[i])[1:]] for i in ids}
    return cands, refs


@pytest.mark.parametrize("n_images, shift, expected", [
    (50, 0, [0.6118519390326073, 0.43145174717722234, 0.2948136788218141, 0.20584907913850625, 0.921806149519306]),
    (50, 1, [0.30810810810755296, 0.08556506756088979, 2.524607489040375e-07, 4.464590633889392e-10,
             0.05952152330821072]),
    (1000, 7, [0.2933345326976438, 0.11243433775335447, 0.04108077808046756, 0.018254332087965782,
               0.03598287161115349]),
])
def test_scores_equal_pycocoevalcap_on_flickr8k(shared_data, n_images, shift, expected):
    cands, refs = _flickr8k_test_case(shared_data, n_images, shift)
    got = caption_scores(cands, refs)
    assert list(got) == ["bleu1", "bleu2", "bleu3", "bleu4", "cider"]
    assert list(got.values()) == pytest.approx(expected, rel=1e-9, abs=1e-15)
    if n_images == 50:      # the two entry points agree with the combined one
        assert bleu(cands, refs) + [cider(cands, refs)] == pytest.approx(list(got.values()), rel=1e-12)


# ---------------------------------------------------------------- bad input

def test_bad_input_raises_zoo_errors_naming_the_fix():
    with pytest.raises(DataError, match="same ids"):
        bleu({1: "a dog"}, {2: ["a dog"]})
    with pytest.raises(DataError, match="same ids"):
        cider({1: "a dog"}, {1: ["a dog"], 2: ["a cat"]})
    with pytest.raises(DataError, match="non-empty list"):
        bleu({1: "a dog"}, {1: []})
    with pytest.raises(DataError, match="non-empty list"):
        cider({1: "a dog"}, {1: "a dog"})
    with pytest.raises(DataError, match="must be a string"):
        bleu({1: 3}, {1: ["a dog"]})
    with pytest.raises(DataError, match="must be a string"):
        cider({1: "a dog"}, {1: [None]}, tokenize=False)
    with pytest.raises(DataError, match="at least one"):
        caption_scores({}, {})
    with pytest.raises(DataError, match="dicts"):
        bleu(["a dog"], [["a dog"]])
    with pytest.raises(ConfigError, match="n=4"):
        bleu({1: "a dog"}, {1: ["a dog"]}, n=0)


def test_pycocoevalcap_layout_of_one_candidate_in_a_list_is_accepted():
    refs = {0: ["a man rides a red bike"], 1: ["two dogs swim"]}
    assert caption_scores({0: ["a man rides a red bike"], 1: ["two dogs swim"]}, refs) == \
        caption_scores({0: "a man rides a red bike", 1: "two dogs swim"}, refs)
