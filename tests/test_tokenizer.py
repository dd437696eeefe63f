import json
from pathlib import Path

import numpy as np
import pytest

from mfha.errors import ConfigError, DataError
from mfha.tokenizer import SPECIALS, Tokenizer

UNSEEN = "Emoji 🙂🚀, CJK 世界, Greek λ, \t tabs,  double  spaces,\r\n\n\nand a literal <eos> <pad> <0x41>."


def _split(folder: str, name: str) -> list[str]:
    lines = (Path(folder) / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


@pytest.fixture(scope="module")
def corpus(tinystories):
    return _split(tinystories, "train"), _split(tinystories, "validation")


@pytest.fixture(scope="module")
def char_tok(corpus):
    return Tokenizer.train(corpus[0])


@pytest.fixture(scope="module")
def bpe_tok(corpus):
    return Tokenizer.train(corpus[0], vocab_size=512)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_whole_validation_split_round_trips(kind, corpus, char_tok, bpe_tok):
    tok = char_tok if kind == "char" else bpe_tok
    val = corpus[1]
    ids = tok.encode_batch(val)
    assert [tok.decode(x) for x in ids] == val
    assert tok.encode(val[0]) == ids[0]


def test_sizes(corpus, char_tok, bpe_tok):
    alphabet = set("".join(corpus[0]))
    assert char_tok.vocab_size == len(alphabet) + 256 + len(SPECIALS)
    assert bpe_tok.vocab_size == 512
    text = corpus[1][0]
    # merges must actually compress
    assert len(bpe_tok.encode(text)) < 0.7 * len(char_tok.encode(text))


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_unseen_characters_round_trip_through_bytes(kind, char_tok, bpe_tok):
    tok = char_tok if kind == "char" else bpe_tok
    ids = tok.encode(UNSEEN)
    assert tok.decode(ids) == UNSEEN
    assert "<0xF0>" in [tok.backend.id_to_token(i) for i in ids]  # the emoji went through byte fallback
    # text spelling a special is plain characters, never the special id
    assert not {tok.bos_id, tok.eos_id, tok.pad_id} & set(ids)


def test_special_ids(char_tok):
    ids = (char_tok.bos_id, char_tok.eos_id, char_tok.pad_id)
    assert ids == (0, 1, 2)
    assert [char_tok.backend.id_to_token(i) for i in ids] == list(SPECIALS)
    a = char_tok.encode("a")
    assert char_tok.decode([char_tok.bos_id, *a, char_tok.eos_id]) == "<bos>a<eos>"
    assert char_tok.decode([char_tok.bos_id, *a, char_tok.eos_id], skip_special_tokens=True) == "a"


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_char_lengths_sum_to_text_length(kind, corpus, char_tok, bpe_tok):
    tok = char_tok if kind == "char" else bpe_tok
    lengths = tok.char_lengths()
    assert lengths.shape == (tok.vocab_size,)
    assert lengths[tok.eos_id] == 1 and lengths[tok.bos_id] == 0 and lengths[tok.pad_id] == 0
    for text in [*corpus[1][:50], UNSEEN, "é", "🙂"]:
        assert int(lengths[tok.encode(text)].sum()) == len(text)
    if kind == "bpe":
        assert lengths.max() > 1


def test_save_and_load(tmp_path, bpe_tok):
    path = bpe_tok.save(tmp_path)
    assert path == tmp_path / "tokenizer.json"
    loaded = Tokenizer.from_file(path)
    assert loaded.encode(UNSEEN) == bpe_tok.encode(UNSEEN)
    assert loaded.decode(loaded.encode(UNSEEN)) == UNSEEN
    assert Tokenizer.from_file(tmp_path).vocab_size == 512
    assert np.array_equal(loaded.char_lengths(), bpe_tok.char_lengths())
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temp file left behind


def test_training_is_deterministic(corpus, bpe_tok):
    again = Tokenizer.train(corpus[0], vocab_size=512)
    assert again.backend.to_str() == bpe_tok.backend.to_str()


def test_vocab_below_character_level_is_refused():
    texts = ["abc", "cab"]
    with pytest.raises(ConfigError, match=r"tokenizer_vocab must be at least 262 .*tokenizer_vocab=261"):
        Tokenizer.train(texts, vocab_size=261)
    assert Tokenizer.train(texts, vocab_size=262).vocab_size == 262


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Tokenizer.from_file(tmp_path / "nope.json")


def test_empty_text_is_refused():
    with pytest.raises(DataError, match="empty text"):
        Tokenizer.train(["", ""])
