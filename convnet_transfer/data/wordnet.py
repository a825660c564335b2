"""The WordNet 3.0 noun hierarchy, read from its own database files, and a natural / man-made grouping from it.

ILSVRC class ids (wnids) are WordNet 3.0 noun synsets: "n" + the synset's 8-digit byte offset in `data.noun`
(n01440764 is the synset at offset 01440764, "tench"). Debian's `wordnet-base` package ships the database in
/usr/share/wordnet; `$WNSEARCHDIR` (WordNet's own variable) or the `wordnet_dir` argument names another copy.

The plain rule `natman_from_wordnet` applies: a class is man-made when "artifact, artefact" (n00021939) is
among its hypernyms (following both class hypernyms `@` and instance hypernyms `@i`), natural otherwise.
`compare_groupings` says how close that rule comes to another grouping, e.g. the 2014 one
(`convnet_transfer.data.splits.imagenet_groups()`).

    wn = WordNet()
    natural, manmade = natman_from_wordnet(wnids, wn)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = ["WordNet", "WordNetError", "ARTIFACT", "wnid_to_offset", "offset_to_wnid", "natman_from_wordnet",
           "compare_groupings", "GroupingComparison", "default_wordnet_dir"]

ARTIFACT = "n00021939"          # "artifact, artefact: a man-made object taken as a whole"
_HYPERNYM_POINTERS = ("@", "@i")  # hypernym, instance hypernym


class WordNetError(ValueError):
    """WordNet files missing or unreadable, or a class id that is not a WordNet 3.0 noun synset."""


def default_wordnet_dir() -> Path:
    return Path(os.environ.get("WNSEARCHDIR") or "/usr/share/wordnet")


def wnid_to_offset(wnid: str) -> int:
    """"n01440764" -> 1440764. Raises WordNetError for anything not "n" + 8 digits."""
    if len(wnid) != 9 or wnid[0] != "n" or not wnid[1:].isdigit():
        raise WordNetError(f"{wnid!r} is not a WordNet noun id (expected 'n' and 8 digits, e.g. n01440764)")
    return int(wnid[1:])


def offset_to_wnid(offset: int) -> str:
    return f"n{offset:08d}"


@dataclass(frozen=True)
class Synset:
    wnid: str
    words: tuple[str, ...]      # lemmas, underscores turned into spaces
    hypernyms: tuple[str, ...]  # wnids of direct hypernyms (class and instance)
    gloss: str

    @property
    def name(self) -> str:
        return ", ".join(self.words)


class WordNet:
    """The noun synsets of a WordNet 3.0 database directory (data.noun and index.noun), parsed on first use."""

    def __init__(self, wordnet_dir: str | os.PathLike | None = None):
        self.dir = Path(wordnet_dir) if wordnet_dir is not None else default_wordnet_dir()
        self._synsets: dict[str, Synset] | None = None
        self._index: dict[str, tuple[str, ...]] | None = None

    def _path(self, name: str) -> Path:
        path = self.dir / name
        if not path.is_file():
            raise WordNetError(f"{path} not found: install WordNet 3.0 (Debian: `apt-get install wordnet-base`) "
                               f"or point $WNSEARCHDIR at a directory holding data.noun and index.noun")
        return path

    @property
    def synsets(self) -> dict[str, Synset]:
        if self._synsets is None:
            self._synsets = _parse_data(self._path("data.noun"))
        return self._synsets

    def __getitem__(self, wnid: str) -> Synset:
        wnid_to_offset(wnid)
        try:
            return self.synsets[wnid]
        except KeyError:
            raise WordNetError(f"{wnid} is not a noun synset of the WordNet 3.0 database in {self.dir} "
                               f"(ILSVRC class ids are WordNet 3.0 noun offsets)") from None

    def __contains__(self, wnid: str) -> bool:
        return wnid in self.synsets

    def lookup(self, lemma: str) -> tuple[str, ...]:
        """The wnids of the noun senses of `lemma` (index.noun), most frequent sense first; () when unknown."""
        if self._index is None:
            self._index = _parse_index(self._path("index.noun"))
        return self._index.get(lemma.strip().lower().replace(" ", "_"), ())

    def ancestors(self, wnid: str) -> set[str]:
        """Every synset above `wnid` through hypernym and instance-hypernym links (not `wnid` itself)."""
        seen: set[str] = set()
        stack = list(self[wnid].hypernyms)
        while stack:
            up = stack.pop()
            if up not in seen:
                seen.add(up)
                stack.extend(self.synsets[up].hypernyms)
        return seen

    def is_a(self, wnid: str, ancestor: str) -> bool:
        return wnid == ancestor or ancestor in self.ancestors(wnid)

    def hypernym_path(self, wnid: str) -> list[str]:
        """One chain from `wnid` up to the root (first hypernym at each step), for reports."""
        path = [wnid]
        while self[path[-1]].hypernyms:
            path.append(self[path[-1]].hypernyms[0])
        return path


def _parse_data(path: Path) -> dict[str, Synset]:
    """data.noun: `offset lex_filenum ss_type w_cnt(hex) [word lex_id]... p_cnt [sym offset pos st]... | gloss`."""
    synsets: dict[str, Synset] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if line.startswith("  "):  # license header
                    continue
                try:
                    fields, _, gloss = line.partition(" | ")
                    tok = fields.split()
                    offset, n_words = tok[0], int(tok[3], 16)
                    words = tuple(tok[4 + 2 * i].replace("_", " ") for i in range(n_words))
                    at = 4 + 2 * n_words
                    n_pointers = int(tok[at])
                    hypernyms = tuple(f"n{tok[at + 2 + 4 * i]}" for i in range(n_pointers)
                                      if tok[at + 1 + 4 * i] in _HYPERNYM_POINTERS and tok[at + 3 + 4 * i] == "n")
                except (IndexError, ValueError):
                    raise WordNetError(f"{path}:{number}: not a WordNet data.noun line; is this WordNet 3.0?") from None
                synsets[f"n{offset}"] = Synset(f"n{offset}", words, hypernyms, gloss.strip())
    except OSError as err:
        raise WordNetError(f"cannot read {path}: {err.strerror}") from None
    return synsets


def _parse_index(path: Path) -> dict[str, tuple[str, ...]]:
    """index.noun: `lemma pos synset_cnt p_cnt [ptr_symbol]... sense_cnt tagsense_cnt [synset_offset]...`."""
    index: dict[str, tuple[str, ...]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  "):
                continue
            tok = line.split()
            n_synsets = int(tok[2])
            index[tok[0]] = tuple(f"n{o}" for o in tok[len(tok) - n_synsets:])
    return index


def natman_from_wordnet(wnids: Sequence[str], wordnet: WordNet | None = None,
                        manmade_root: str = ARTIFACT) -> tuple[list[int], list[int]]:
    """Split class indices into (natural, man-made): man-made when `manmade_root` is a hypernym of the class."""
    wordnet = wordnet or WordNet()
    natural, manmade = [], []
    for index, wnid in enumerate(wnids):
        (manmade if wordnet.is_a(wnid, manmade_root) else natural).append(index)
    return natural, manmade


@dataclass
class GroupingComparison:
    """How a grouping (e.g. WordNet's) agrees with a reference one (e.g. the 2014 natural / man-made split)."""
    n_classes: int
    agree: int
    a_to_b: list[int]   # in the reference's A, put in B by the other grouping
    b_to_a: list[int]   # in the reference's B, put in A by the other grouping

    def describe(self, wnids: Sequence[str] | None = None, names: Sequence[str] | None = None,
                 labels: tuple[str, str] = ("A", "B"), what: tuple[str, str] = ("reference", "other")) -> str:
        def cls(i: int) -> str:
            parts = [str(i)] + ([wnids[i]] if wnids else []) + ([names[i]] if names else [])
            return "  " + " ".join(parts)
        lines = [f"{what[1]} vs {what[0]}: {self.agree} of {self.n_classes} classes agree "
                 f"({100.0 * self.agree / max(self.n_classes, 1):.1f}%), {len(self.a_to_b) + len(self.b_to_a)} differ"]
        lines.append(f"{len(self.a_to_b)} {labels[0]} in {what[0]}, {labels[1]} in {what[1]}:")
        lines += [cls(i) for i in self.a_to_b]
        lines.append(f"{len(self.b_to_a)} {labels[1]} in {what[0]}, {labels[0]} in {what[1]}:")
        lines += [cls(i) for i in self.b_to_a]
        return "\n".join(lines)


def compare_groupings(reference: tuple[Sequence[int], Sequence[int]],
                      other: tuple[Sequence[int], Sequence[int]]) -> GroupingComparison:
    """Compare two (A, B) groupings of the same classes."""
    ref_a, ref_b = set(reference[0]), set(reference[1])
    other_a, other_b = set(other[0]), set(other[1])
    a_to_b = sorted(ref_a & other_b)
    b_to_a = sorted(ref_b & other_a)
    agree = len(ref_a & other_a) + len(ref_b & other_b)
    return GroupingComparison(len(ref_a | ref_b), agree, a_to_b, b_to_a)
