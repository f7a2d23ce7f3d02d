"""Text without a pooled vocabulary: the hashing tokenizer and the ``fortunes`` corpus (Debian's ``fortunes``).

**Tokenizer.** A word's id is its BLAKE2b hash modulo ``HASH_BUCKETS`` (plus one; 0 is padding), the same function at
every client and at the server: nothing is fitted, so no vocabulary is built from anyone's text and nothing about
a client's words leaves it before training. Words are lower-cased runs of letters, digits and apostrophes; a record
is its first ``SEQUENCE_LENGTH`` tokens, padded with 0.

**Corpus.** Debian's ``fortunes`` package (BSD licence, ``/usr/share/doc/fortunes/copyright``) installs the
classic fortune-cookie files offline in ``/usr/share/games/fortunes``, one file per topic. The task is the topic of
a quotation among ``FORTUNE_TOPICS``; the split is 80/20 (stratified, fixed seed), so every run seed is scored on
the same test set. Each record's **owner** is its author (the ``-- Name`` attribution line) or, for the half without
one, the quotation itself: ``--partition natural`` gives each client the authors whose hash falls to it, so every
author's quotations live at one client (a natural non-IID split), and ``iid`` spreads them uniformly.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from dpfl.models.text import HASH_BUCKETS  # ids 1..HASH_BUCKETS; 0 pads: the lstm's embedding has one row each

FORTUNES_APT = "apt-get install -y fortunes"
FORTUNE_TOPICS = ("computers", "definitions", "politics", "science", "songs-poems", "men-women")
SEQUENCE_LENGTH = 48
TEXT_SPLIT_SEED = 0
WORD = re.compile(r"[a-z0-9']+")
AUTHOR = re.compile(r"\n\s*--\s*([^\n,(]+)")
OVERSTRIKE = re.compile(r".\x08")


class CorpusMissingError(FileNotFoundError):
    """The fortunes files are not there; the message says how to install them (datasets.py makes it a DataError)."""


def token_id(word: str) -> int:
    """A word's id: the same at every client, fitted on nothing."""
    digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % HASH_BUCKETS


def encode(text: str, length: int = SEQUENCE_LENGTH) -> list[int]:
    ids = [token_id(w) for w in WORD.findall(text.lower())][:length]
    return ids + [0] * (length - len(ids))


def owner_key(text: str) -> int:
    """The record's owner as a number: its author when attributed, else the quotation itself."""
    match = AUTHOR.search(text)
    name = match.group(1).strip().lower() if match else text
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")


def read_fortunes(directory: Path, topic: str) -> list[str]:
    path = directory / topic
    raw = path.read_bytes().decode("latin-1")
    return [OVERSTRIKE.sub("", item).strip() for item in raw.split("\n%\n") if item.strip()]


@lru_cache(maxsize=2)
def fortunes_arrays(directory: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token ids (N, L) int64, labels (N,), owner keys (N,) uint64) of every quotation, in file order."""
    where = Path(directory)
    missing = [t for t in FORTUNE_TOPICS if not (where / t).is_file()]
    if missing:
        raise CorpusMissingError(f"the fortunes corpus is not installed ({where / missing[0]} is missing): install "
                                 f"Debian's package ({FORTUNES_APT}), or point data-path at a folder holding the "
                                 f"files {', '.join(FORTUNE_TOPICS)}")
    ids, labels, owners = [], [], []
    for label, topic in enumerate(FORTUNE_TOPICS):
        for text in read_fortunes(where, topic):
            ids.append(encode(text))
            labels.append(label)
            owners.append(owner_key(text))
    return (np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64),
            np.asarray(owners, dtype=np.uint64))


def fortunes_dataset(directory: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """(train ids, train labels, test ids, test labels, train owner keys): a stratified 80/20 split, fixed seed."""
    from sklearn.model_selection import train_test_split

    ids, labels, owners = fortunes_arrays(directory)
    order = np.arange(labels.shape[0])
    train, test = train_test_split(order, test_size=0.2, stratify=labels, random_state=TEXT_SPLIT_SEED)
    train, test = np.sort(train), np.sort(test)
    return (torch.from_numpy(ids[train]), torch.from_numpy(labels[train]), torch.from_numpy(ids[test]),
            torch.from_numpy(labels[test]), owners[train])
