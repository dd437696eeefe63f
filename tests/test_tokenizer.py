import json
from pathlib import Path

import numpy as np
import pytest

from mfha.errors import ConfigError, DataError
from mfha.tokenizer import NIBBLE_TOKENS, SPECIALS, Tokenizer

UNSEEN = (
    "Emoji 🙂🚀, CJK 世界, Greek λ, \t tabs,  double  spaces,\r\n\n\nand a literal <eos> <pad> <0x41> <0xC_> <0x_3>."
)
# unseen characters of each UTF-8 length, a control character and the highest code point
EVERY_WIDTH = "\x00\x7fλ\u0800\uffff\U00010000\U0010ffff"


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
    assert char_tok.vocab_size == len(alphabet) + 32 + len(SPECIALS)
    assert bpe_tok.vocab_size == 512
    assert [char_tok.backend.id_to_token(i) for i in range(3, 35)] == list(NIBBLE_TOKENS)
    text = corpus[1][0]
    # merges must actually compress
    assert len(bpe_tok.encode(text)) < 0.7 * len(char_tok.encode(text))


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_unseen_characters_round_trip_through_bytes(kind, char_tok, bpe_tok):
    tok = char_tok if kind == "char" else bpe_tok
    ids = tok.encode(UNSEEN)
    assert tok.decode(ids) == UNSEEN
    names = [tok.backend.id_to_token(i) for i in ids]
    assert max(ids) < tok.vocab_size  # the backend's byte tokens never reach the model
    # the emoji 🙂 (F0 9F 99 82) went through the fallback, two nibbles a byte
    start = names.index("<0xF_>")
    assert names[start : start + 8] == ["<0xF_>", "<0x_0>", "<0x9_>", "<0x_F>", "<0x9_>", "<0x_9>", "<0x8_>", "<0x_2>"]
    # text spelling a special is plain characters, never the special id
    assert not {tok.bos_id, tok.eos_id, tok.pad_id} & set(ids)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_every_utf8_width_round_trips(kind, char_tok, bpe_tok):
    tok = char_tok if kind == "char" else bpe_tok
    ids = tok.encode(EVERY_WIDTH)
    assert tok.decode(ids) == EVERY_WIDTH
    assert len(ids) == 2 * len(EVERY_WIDTH.encode("utf-8"))
    assert int(tok.char_lengths()[ids].sum()) == len(EVERY_WIDTH)


def test_unpaired_nibbles_decode_as_their_names(char_tok):
    ids = char_tok.encode("λ")  # CE BB
    assert [char_tok.backend.id_to_token(i) for i in ids] == ["<0xC_>", "<0x_E>", "<0xB_>", "<0x_B>"]
    high_c, low_e = ids[:2]
    # a model may sample halves alone or in the wrong order: shown, never an error; a lone lead byte is U+FFFD
    assert char_tok.decode([high_c, high_c, low_e, high_c]) == "<0xC_>\ufffd<0xC_>"
    assert char_tok.decode([low_e, high_c]) == "<0x_E><0xC_>"


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
    with pytest.raises(ConfigError, match=r"tokenizer_vocab must be at least 38 .*32 nibble.*tokenizer_vocab=37"):
        Tokenizer.train(texts, vocab_size=37)
    assert Tokenizer.train(texts, vocab_size=38).vocab_size == 38


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Tokenizer.from_file(tmp_path / "nope.json")


def test_empty_text_is_refused():
    with pytest.raises(DataError, match="empty text"):
        Tokenizer.train(["", ""])


def _byte_token_file(path: Path, alphabet: str) -> Path:
    """A character-level tokenizer.json as mfha wrote it before nibbles: specials, 256 byte tokens, characters."""
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    vocab.update({c: 259 + k for k, c in enumerate(alphabet)})
    added = [
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
    ]
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "byte_fallback": True, "vocab": vocab, "merges": []},
    }
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def test_byte_token_file_of_older_runs_keeps_its_ids(tmp_path):
    tok = Tokenizer.from_file(_byte_token_file(tmp_path / "tokenizer.json", "abc"))
    assert tok.fallback == "byte" and tok.vocab_size == 262
    ids = tok.encode("ab🙂")
    assert ids == [259, 260, 3 + 0xF0, 3 + 0x9F, 3 + 0x99, 3 + 0x82]  # what the checkpoint was trained on
    assert tok.decode(ids) == "ab🙂"
    assert int(tok.char_lengths()[ids].sum()) == 3


def test_misplaced_nibbles_are_refused(tmp_path, char_tok):
    spec = json.loads(char_tok.backend.to_str())
    vocab = spec["model"]["vocab"]
    vocab["<0x0_>"], vocab["<0x1_>"] = vocab["<0x1_>"], vocab["<0x0_>"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(DataError, match=r"nibbles at ids 3-34 .*but got '<0x0_>' at id 4 of 366"):
        Tokenizer.from_file(tmp_path)
