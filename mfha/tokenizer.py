"""Character-pair encoding: BPE over the training corpus' own characters, built on Hugging Face `tokenizers`.

How text maps to tokens:
- The base vocabulary is every character that occurs in the tokenizer's training text, plus the
  specials `<bos>`, `<eos>`, `<pad>` and 32 nibble tokens: `<0x0_>` .. `<0xF_>` for a byte's high
  half and `<0x_0>` .. `<0x_F>` for its low half. With `tokenizer_vocab` null the tokenizer stays at
  that size (character level, no merges); otherwise BPE merges are learned up to `tokenizer_vocab`
  tokens, which must be at least the character-level size (characters + 32 + 3) for the corpus.
- There is no normalizer and no byte-level remapping, so encoding then decoding gives back the exact
  input: whitespace, newlines and the corpus' mojibake included. Merges are learned inside the pieces
  of a GPT-2-style split (words with their leading space, numbers, punctuation runs, whitespace runs);
  the split drops nothing, it only stops merges from crossing word boundaries.
- A character never seen in training (an emoji, CJK, a letter only the validation split has) is
  written byte by byte in its UTF-8 encoding, each byte as two nibble tokens (high, then low), and
  decodes back to the same character, so any text round-trips and nothing maps to an unknown token.
  Nibbles instead of Llama's 256 byte tokens: in a tiny model every vocabulary row costs `dim`
  parameters, and rows for characters the training text never holds learn next to nothing.
- Text that happens to spell a special token, such as "<eos>", is encoded as plain characters; only
  the ids themselves are special.

Ids: specials 0-2, nibbles 3-34, then the learned characters and merges up to `vocab_size`. The
backend (`tokenizers`) does the byte fallback itself with 256 byte tokens `<0x00>` .. `<0xFF>` kept
*after* `vocab_size`; `encode` splits each into its two nibbles, so no returned id reaches them.
A `tokenizer.json` written before nibbles (256 byte tokens at ids 3-258, no nibbles) still loads, as
that byte-token vocabulary, so older runs keep their meaning.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Regex, decoders, pre_tokenizers, trainers
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers.models import BPE

from mfha.errors import ConfigError, DataError

SPECIALS = ("<bos>", "<eos>", "<pad>")
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))  # the names `tokenizers`' byte fallback looks up
HIGH_NIBBLES = tuple(f"<0x{n:X}_>" for n in range(16))
LOW_NIBBLES = tuple(f"<0x_{n:X}>" for n in range(16))
# high and low halves are distinct tokens so a pair decodes without counting positions, and so a high
# half alone tells whether its byte starts a character (char_lengths)
NIBBLE_TOKENS = HIGH_NIBBLES + LOW_NIBBLES
# GPT-2's split without its byte-level remapping; isolated pieces keep every character, so it is lossless
SPLIT_PATTERN = r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
FILE_NAME = "tokenizer.json"


class Tokenizer:
    """A trained character-pair tokenizer; see the module docstring for how text maps to tokens."""

    def __init__(self, backend: _HFTokenizer) -> None:
        bos, eos, pad = (backend.token_to_id(s) for s in SPECIALS)
        if bos is None or eos is None or pad is None:
            raise DataError(f"this tokenizer lacks the special tokens {', '.join(SPECIALS)}; it was not made by mfha.")
        # not serialized by `tokenizers`: without it, text spelling "<eos>" would encode as the special id
        backend.encode_special_tokens = True
        self._tok = backend
        self._bos, self._eos, self._pad = bos, eos, pad
        self._vocab_size, self._nibbles = _layout(backend)
        self._high, self._low = self._nibbles.start, self._nibbles.start + len(HIGH_NIBBLES)
        self._char_lengths: np.ndarray | None = None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int | None = None) -> Tokenizer:
        """Learn the alphabet (and, with `vocab_size`, BPE merges up to that many tokens) from `texts`."""
        texts = texts if isinstance(texts, (list, tuple)) else list(texts)
        alphabet: set[str] = set()
        for t in texts:
            alphabet.update(t)
        if not alphabet:
            raise DataError("cannot train a tokenizer on empty text; the training slice holds no characters.")
        alphabet_list = sorted(alphabet)
        minimum = len(alphabet_list) + len(NIBBLE_TOKENS) + len(SPECIALS)
        if vocab_size is not None and vocab_size < minimum:
            raise ConfigError(
                f"tokenizer_vocab must be at least {minimum} for this corpus ({len(alphabet_list)} characters "
                f"+ {len(NIBBLE_TOKENS)} nibble-fallback tokens + {len(SPECIALS)} specials) or null for character level, "
                f"but got tokenizer_vocab={vocab_size}."
            )
        if vocab_size is None or vocab_size == minimum:
            vocab = {s: i for i, s in enumerate((*SPECIALS, *alphabet_list))}
            return cls(_assemble(vocab, [], split=False))

        trainer_tok = _HFTokenizer(BPE())
        trainer_tok.pre_tokenizer = _split()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - len(NIBBLE_TOKENS),
            special_tokens=list(SPECIALS),
            initial_alphabet=alphabet_list,
            show_progress=False,
        )
        trainer_tok.train_from_iterator(texts, trainer, length=len(texts))
        model = json.loads(trainer_tok.to_str())["model"]
        # merges stay in whatever format this `tokenizers` version writes, so it reads them back itself
        return cls(_assemble(model["vocab"], model["merges"], split=True))

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load a `tokenizer.json` file, or the one inside a folder."""
        path = Path(path)
        if path.is_dir():
            path = path / FILE_NAME
        if not path.is_file():
            raise DataError(f"tokenizer file {str(path)!r} does not exist.")
        return cls(_HFTokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> Path:
        """Write `tokenizer.json` (to `path`, or inside `path` if it is a folder), atomically; return the file."""
        path = Path(path)
        if path.is_dir():
            path = path / FILE_NAME
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self._tok.to_str(pretty=True))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def encode(self, text: str) -> list[int]:
        return self._split_bytes(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # the fast variant skips offset tracking, which we never read
        return [self._split_bytes(e.ids) for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text for `ids`; specials show as "<eos>" etc. unless `skip_special_tokens`.

        A nibble without its partner (only a sampling model writes one) shows as its name, the way a
        special does; a byte sequence that is not valid UTF-8 shows as U+FFFD per byte.
        """
        return self._tok.decode(self._join_nibbles(list(map(int, ids))), skip_special_tokens=skip_special_tokens)

    def _split_bytes(self, ids: list[int]) -> list[int]:
        """Backend ids to ours: each byte-fallback id (all at or past vocab_size) becomes its two nibbles."""
        if not ids or max(ids) < self._vocab_size:
            return ids
        out: list[int] = []
        for i in ids:
            if i < self._vocab_size:
                out.append(i)
            else:
                b = i - self._vocab_size
                out += (self._high + (b >> 4), self._low + (b & 0xF))
        return out

    def _join_nibbles(self, ids: list[int]) -> list[int]:
        """Our ids to the backend's: each high nibble directly followed by a low one becomes its byte token."""
        nibbles, low = self._nibbles, self._low
        if not any(i in nibbles for i in ids):
            return ids
        out: list[int] = []
        k = 0
        while k < len(ids):
            i = ids[k]
            if i in nibbles and i < low and k + 1 < len(ids) and ids[k + 1] in nibbles and ids[k + 1] >= low:
                out.append(self._vocab_size + ((i - self._high) << 4 | (ids[k + 1] - low)))
                k += 2
            else:
                out.append(i)
                k += 1
        return out

    @property
    def vocab_size(self) -> int:
        """Ids that `encode` can return, the model's vocabulary (the backend's byte tokens lie past it)."""
        return self._vocab_size

    @property
    def fallback(self) -> str:
        """ "nibble", or "byte" for a tokenizer.json written before nibbles (256 byte tokens in the vocabulary)."""
        return "nibble" if self._nibbles else "byte"

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def backend(self) -> _HFTokenizer:
        """The underlying `tokenizers.Tokenizer`; its own `encode` returns byte-fallback ids past vocab_size."""
        return self._tok

    def char_lengths(self) -> np.ndarray:
        """Characters each token id stands for (read-only int64 array of length vocab_size).

        Summed over the tokens of a text it gives len(text): a high nibble counts 1 if its byte starts a
        UTF-8 character (ASCII or a lead byte, i.e. not 0x8_..0xB_) and 0 if it continues one, a low
        nibble 0 (a byte token of an older tokenizer.json, the same as its high nibble); `<eos>` counts 1
        because it separates stories the way a newline separates lines; `<bos>` and `<pad>` count 0.
        """
        if self._char_lengths is None:
            lengths = np.zeros(self.vocab_size, dtype=np.int64)
            high_by_token = {s: b << 4 for b, s in enumerate(HIGH_NIBBLES)}
            high_by_token.update({s: b for b, s in enumerate(BYTE_TOKENS)})
            for i in range(self.vocab_size):
                s = self._tok.id_to_token(i)
                if s in high_by_token:
                    lengths[i] = 0 if 0x80 <= high_by_token[s] < 0xC0 else 1
                elif s in LOW_NIBBLES or i in (self._bos, self._pad):
                    lengths[i] = 0
                elif i == self._eos:
                    lengths[i] = 1
                elif s is None:  # an id with no token; TypeError as `len(None)` raised here before
                    raise TypeError(f"token id {i} < vocab_size={self.vocab_size} has no token in this tokenizer.")
                else:
                    lengths[i] = len(s)
            lengths.flags.writeable = False
            self._char_lengths = lengths
        return self._char_lengths

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, fallback={self.fallback!r})"


def _split() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated")


def _layout(backend: _HFTokenizer) -> tuple[int, range]:
    """(vocab_size, nibble ids) of a backend; no nibble ids for a byte-token vocabulary written before nibbles."""
    size = backend.get_vocab_size(with_added_tokens=True)
    if backend.token_to_id(NIBBLE_TOKENS[0]) is None:
        return size, range(0)
    vocab_size = size - len(BYTE_TOKENS)
    expected = {s: len(SPECIALS) + k for k, s in enumerate(NIBBLE_TOKENS)}
    expected.update({s: vocab_size + b for b, s in enumerate(BYTE_TOKENS)})
    wrong = [s for s, i in expected.items() if backend.token_to_id(s) != i]
    if wrong:
        raise DataError(
            f"a nibble-fallback tokenizer holds its nibbles at ids 3-34 and its byte tokens last, but got "
            f"{wrong[0]!r} at id {backend.token_to_id(wrong[0])} of {size}; it was not written by mfha."
        )
    return vocab_size, range(len(SPECIALS), len(SPECIALS) + len(NIBBLE_TOKENS))


def _assemble(vocab: dict[str, int], merges: list, *, split: bool) -> _HFTokenizer:
    """A byte-fallback BPE tokenizer: specials, the 32 nibbles, `vocab` in its order, then the 256 byte tokens."""
    n_special = len(SPECIALS)
    assert all(vocab[s] == i for i, s in enumerate(SPECIALS)), "specials must lead the vocabulary"
    # merges happen inside split pieces, so no learned token can spell "<0x41>" or "<0x4_>"; a clash would
    # corrupt decoding
    assert not set(vocab) & {*BYTE_TOKENS, *NIBBLE_TOKENS}, "a learned token collides with a fallback token"
    full = {s: i for i, s in enumerate(SPECIALS)}
    full.update({s: n_special + k for k, s in enumerate(NIBBLE_TOKENS)})
    full.update({s: i + len(NIBBLE_TOKENS) for s, i in vocab.items() if i >= n_special})
    # past every id the model sees: `tokenizers` needs them for byte fallback, encode() splits them into nibbles
    n_exposed = len(full)
    full.update({s: n_exposed + b for b, s in enumerate(BYTE_TOKENS)})
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": s,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, s in enumerate(SPECIALS)
        ],
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": None,
        "model": {"type": "BPE", "byte_fallback": True, "vocab": full, "merges": merges},
    }
    tok = _HFTokenizer.from_str(json.dumps(spec))
    if split:
        tok.pre_tokenizer = _split()
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return tok


__all__ = ["NIBBLE_TOKENS", "SPECIALS", "Tokenizer"]
