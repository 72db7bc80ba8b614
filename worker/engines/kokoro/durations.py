"""Word timings from Kokoro's own duration predictor.

Kokoro predicts how many frames each phoneme token lasts and expands the text encoding by those counts before the
decoder; the int8 graph rounds them (`Round` -> `Clip` -> `Cast` to int64, `pred_dur` in the reference code). That
tensor is added to the loaded ModelProto as a second graph output, so one run gives the audio (unchanged to the
bit) and frames per token; a frame is `FRAME_SAMPLES` samples.

Tokens are tied to script words (zh/ja: characters) through the phonemes: every word is phonemised alone, the
concatenation is matched to the utterance's phoneme string with difflib, and each phoneme character takes the word
of its match. Characters left unmatched (context changed a reading, as in 今日 or a tone sandhi) are shared out
among the unmatched words between their neighbours. When too little matches to trust, there are no engine words
and the worker falls back to forced alignment (worker/alignment.py).
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Callable
from typing import Any

import numpy as np

from worker.alignment import script_words

# Samples per predicted frame at 24 kHz: the decoder upsamples each frame twice and its iSTFT hops 300 samples.
FRAME_SAMPLES = 600
# Below this share of matched phoneme characters the word mapping is not trusted.
MIN_MATCHED = 0.6
_INT64 = 7  # onnx.TensorProto.INT64
# Phoneme characters that belong to no word: pauses and the prosody marks around them.
_PUNCTUATION = frozenset(';:,.!?¡¿—…"«»“”()')


def expose_durations(model: bytes) -> tuple[bytes, str | None]:
    """The model with its rounded per-token durations as an extra output, and that output's name.

    Returns the model unchanged and None when the graph has no Round -> Clip -> Cast(int64) chain to expose.
    """
    import onnx
    from onnx import helper

    proto = onnx.load_from_string(model)
    producers = {output: node for node in proto.graph.node for output in node.output}
    name = None
    for node in proto.graph.node:
        to = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "to"), None)
        if node.op_type != "Cast" or to != _INT64:
            continue
        clip = producers.get(node.input[0])
        if clip is not None and clip.op_type == "Clip":
            rounded = producers.get(clip.input[0])
            if rounded is not None and rounded.op_type == "Round":
                name = node.output[0]
                break
    if name is None:
        return model, None
    proto.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None))
    return proto.SerializeToString(), name


def phoneme_owners(phonemes: str, group_phonemes: list[str]) -> list[int | None] | None:
    """For each non-space character of `phonemes`, the index of the group it was said for (None: punctuation).

    `group_phonemes[i]` is group i phonemised alone. None when the match is too weak to trust.
    """
    spoken: list[str] = []
    after_break: list[bool] = []  # a space or punctuation comes right before this character
    for i, ch in enumerate(phonemes):
        if not ch.isspace():
            spoken.append(ch)
            after_break.append(i == 0 or phonemes[i - 1].isspace() or phonemes[i - 1] in _PUNCTUATION)
    reference: list[str] = []
    reference_group: list[int] = []
    for index, said in enumerate(group_phonemes):
        for ch in _sounds(said):
            reference.append(ch)
            reference_group.append(index)
    owners: list[int | None] = [None] * len(spoken)
    matched = [False] * len(spoken)
    matcher = difflib.SequenceMatcher(None, reference, spoken, autojunk=False)
    for block in matcher.get_matching_blocks():
        for n in range(block.size):
            owners[block.b + n] = reference_group[block.a + n]
            matched[block.b + n] = True
    sounds = [i for i, ch in enumerate(spoken) if ch not in _PUNCTUATION]
    if not sounds or sum(matched[i] for i in sounds) < MIN_MATCHED * len(sounds):
        return None
    _share_gaps(owners, matched, after_break, [i for i in sounds if not matched[i]], len(group_phonemes))
    return owners


def _share_gaps(
    owners: list[int | None], matched: list[bool], after_break: list[bool], unmatched: list[int], groups: int
) -> None:
    """Give each run of unmatched sounds to the groups between its matched neighbours, evenly in order."""
    runs: list[list[int]] = []
    for i in unmatched:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    for run in runs:
        left = next((owners[i] for i in range(run[0] - 1, -1, -1) if matched[i]), None)
        right = next((owners[i] for i in range(run[-1] + 1, len(owners)) if matched[i]), None)
        first = 0 if left is None else left + 1
        last = groups - 1 if right is None else right - 1
        if last < first:  # no group in between: the tail of the one before, or after a break the head of the next
            owner = right if (after_break[run[0]] and right is not None) or left is None else left
            for i in run:
                owners[i] = owner
            continue
        between = last - first + 1
        for k, i in enumerate(run):
            owners[i] = first + k * between // len(run)


def reading_groups(text: str, pieces: list[str] | None) -> list[list[int]]:
    """Script words (indices) grouped as the G2P reads them: a group is the words of consecutive tagger pieces
    (`pieces`, e.g. jieba words or OpenJTalk morphemes) that share a word; one word a group without pieces."""
    words = script_words(text)
    singles = [[i] for i in range(len(words))]
    if not pieces:
        return singles
    piece_of = [-1] * len(text)  # the piece each character of `text` belongs to
    cursor = 0
    for index, piece in enumerate(pieces):
        while cursor < len(text) and text[cursor].isspace() and not piece[:1].isspace():
            cursor += 1
        span = text[cursor : cursor + len(piece)]
        if unicodedata.normalize("NFKC", span) != unicodedata.normalize("NFKC", piece):
            return singles  # the tagger rewrote the text (numbers read out): no reliable grouping
        piece_of[cursor : cursor + len(piece)] = [index] * len(piece)
        cursor += len(piece)
    groups: list[list[int]] = []
    reach = -1
    for i, (_w, begin, end) in enumerate(words):
        first, last = piece_of[begin], piece_of[end - 1]
        if first < 0 or last < 0:
            return singles
        if groups and first <= reach:
            groups[-1].append(i)
        else:
            groups.append([i])
        reach = max(reach, last)
    return groups


class WordClock:
    """Collects each word's first and last sample in a segment's audio, one model run (chunk) at a time."""

    def __init__(self, text: str, owners: list[int | None]) -> None:
        self.words = [w for w, _b, _e in script_words(text)]
        self._owners = owners
        self._cursor = 0  # next non-space phoneme character to hand out
        self._starts: list[int | None] = [None] * len(self.words)
        self._ends: list[int | None] = [None] * len(self.words)
        self.broken = False

    def token_owners(self, chunk: str, vocab: dict[str, int]) -> list[int | None]:
        """The word of each token of `chunk` (spaces and punctuation: None), in token order."""
        out: list[int | None] = []
        for ch in chunk:
            owner = None
            if not ch.isspace():
                if self._cursor >= len(self._owners):
                    self.broken = True
                    return out
                owner = self._owners[self._cursor]
                self._cursor += 1
            if ch in vocab:
                out.append(owner)
        return out

    def add(self, owners: list[int | None], durations: np.ndarray, offset: int, kept: tuple[int, int]) -> None:
        """One chunk: `durations` as the model gave them (pads included), its audio cut to `kept` and placed at
        `offset` samples into the segment."""
        frames = np.asarray(durations, dtype=np.int64).reshape(-1)
        if frames.size != len(owners) + 2:
            self.broken = True
            return
        edges = np.cumsum(frames) * FRAME_SAMPLES  # end of token k-1 (k = 1..) in the raw chunk audio
        begin, end = kept
        for k, owner in enumerate(owners):
            if owner is None:
                continue
            t0 = int(min(max(edges[k] - begin, 0), end - begin)) + offset
            t1 = int(min(max(edges[k + 1] - begin, 0), end - begin)) + offset
            start, last = self._starts[owner], self._ends[owner]
            self._starts[owner] = t0 if start is None else min(start, t0)
            self._ends[owner] = t1 if last is None else max(last, t1)

    def timings(self, sample_rate: int, length: int) -> list[dict[str, Any]] | None:
        """Each word's start and end in seconds, in script order; words nothing was said for take a point
        between their neighbours. None when the phonemes and chunks did not line up."""
        if self.broken or self._cursor != len(self._owners) or not any(s is not None for s in self._starts):
            return None
        out = []
        previous = 0
        for i, word in enumerate(self.words):
            start, end = self._starts[i], self._ends[i]
            if start is None or end is None:
                start = end = previous
            start = min(max(start, previous), length)  # keep the script's order if neighbours interleave
            end = min(max(end, start), length)
            out.append({"text": word, "start_s": round(start / sample_rate, 3), "end_s": round(end / sample_rate, 3)})
            previous = end
        return out


def word_clock(
    text: str, phonemes: str, phonemise: Callable[[str], str], pieces: list[str] | None = None
) -> WordClock | None:
    """A clock for `text` spoken as `phonemes`, or None when its words cannot be tied to the phonemes.

    Each reading group (see `reading_groups`) is phonemised alone and matched to `phonemes`; a group's sounds
    are then shared among its words (characters) in order."""
    words = script_words(text)
    if not words:
        return None
    groups = reading_groups(text, pieces)
    said = [phonemise(text[words[g[0]][1] : words[g[-1]][2]]) for g in groups]
    owners = phoneme_owners(phonemes, said)
    if owners is None:
        return None
    sounds: list[list[int]] = [[] for _ in groups]
    for position, owner in enumerate(owners):
        if owner is not None:
            sounds[owner].append(position)
    word_owners: list[int | None] = [None] * len(owners)
    for group, positions in zip(groups, sounds, strict=True):
        # Share a group's sounds among its words by how long each word's own reading is (one syllable per
        # Chinese character, a few kana per kanji).
        weights = [1] if len(group) == 1 else [max(1, len(_sounds(phonemise(words[i][0])))) for i in group]
        bounds = np.cumsum(weights) / sum(weights)
        for k, position in enumerate(positions):
            share = int(np.searchsorted(bounds, (k + 0.5) / len(positions)))
            word_owners[position] = group[min(share, len(group) - 1)]
    return WordClock(text, word_owners)


def _sounds(phonemes: str) -> list[str]:
    return [ch for ch in phonemes if not ch.isspace() and ch not in _PUNCTUATION]
