import json

import pytest
import torch

from progdistill.core.config import ConfigError
from progdistill.tasks.text.tokenizer import (
    CLS_ID,
    MASK_ID,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    UNK_ID,
    TokenizerConfig,
    TokenizerError,
    as_transformers,
    encode_documents,
    load_tokenizer,
    pack_sequences,
    save_tokenizer,
    tokenize_corpus,
    train_tokenizer,
)

DOCS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps.",
    "A teacher trains first; the student distills from the teacher's checkpoints.",
    "Progressive distillation uses the teacher's trajectory, checkpoint after checkpoint.",
    "The fox and the dog are friends. The student and the teacher are not.",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(DOCS, TokenizerConfig(vocab_size=120))


def test_special_tokens_have_fixed_ids(tokenizer):
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID) == (0, 1, 2, 3, 4)
    vocab = tokenizer.get_vocab()
    assert len(vocab) == tokenizer.get_vocab_size() == 120
    assert sorted(vocab.values()) == list(range(120))


def test_encoding_is_bert_style(tokenizer):
    enc = tokenizer.encode("The teacher, the Student.")
    assert enc.tokens == ["[CLS]", "the", "teacher", ",", "the", "student", ".", "[SEP]"]
    assert enc.ids[0] == CLS_ID and enc.ids[-1] == SEP_ID
    assert tokenizer.encode("the [MASK] sleeps").ids[2] == MASK_ID
    assert tokenizer.encode("\u03c9\u03c9", add_special_tokens=False).tokens == ["[UNK]"]  # no omega in DOCS
    pieces = tokenizer.encode("distillations", add_special_tokens=False).tokens
    assert len(pieces) > 1 and not pieces[0].startswith("##") and all(p.startswith("##") for p in pieces[1:])
    assert "".join(p.removeprefix("##") for p in pieces) == "distillations"
    assert tokenizer.decode(tokenizer.encode("the lazy dog sleeps.").ids) == "the lazy dog sleeps."


def test_training_is_deterministic(tokenizer):
    again = train_tokenizer(DOCS, TokenizerConfig(vocab_size=120))
    assert again.to_str() == tokenizer.to_str()


def test_vocab_size_int_shorthand_and_lowercase_off():
    assert train_tokenizer(DOCS, 120).to_str() == train_tokenizer(DOCS, TokenizerConfig(vocab_size=120)).to_str()
    cased = train_tokenizer(DOCS, TokenizerConfig(vocab_size=120, lowercase=False))
    assert "T" in cased.get_vocab() and "T" not in train_tokenizer(DOCS, 120).get_vocab()


@pytest.mark.parametrize("vocab_size", [4, 0, -3])
def test_vocab_size_below_the_special_tokens_names_value_and_minimum(vocab_size):
    with pytest.raises(ConfigError, match=rf"vocab_size={vocab_size} is invalid: must be an integer >= 5"):
        train_tokenizer(DOCS, vocab_size)
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        TokenizerConfig(vocab_size=vocab_size)


def test_vocab_size_of_exactly_the_special_tokens_keeps_only_the_alphabet():
    tok = train_tokenizer(["ab ab ba"], 5)
    assert sorted(tok.get_vocab(), key=tok.get_vocab().get) == [*SPECIAL_TOKENS, "##a", "##b", "a", "b"]


def test_other_config_errors():
    with pytest.raises(ConfigError, match="min_frequency=0"):
        TokenizerConfig(min_frequency=0)
    with pytest.raises(ConfigError, match="limit_alphabet=0"):
        TokenizerConfig(limit_alphabet=0)
    with pytest.raises(TokenizerError, match="holding no text"):
        train_tokenizer(["", "  "], 50)
    with pytest.raises(TokenizerError, match="list of strings"):
        train_tokenizer("just one string", 50)


def test_save_load_round_trip_gives_identical_ids(tokenizer, tmp_path):
    path = save_tokenizer(tokenizer, tmp_path / "tok")
    assert path == tmp_path / "tok" / TOKENIZER_FILE
    loaded = load_tokenizer(tmp_path / "tok")
    texts = DOCS[:4] + ["Unseen words: zebra, quixotic [MASK]."]
    assert encode_documents(loaded, texts) == encode_documents(tokenizer, texts)
    assert loaded.encode("the fox", "the dog").ids == tokenizer.encode("the fox", "the dog").ids
    assert loaded.to_str() == tokenizer.to_str()


def test_load_errors(tokenizer, tmp_path):
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: no such file"):
        load_tokenizer(tmp_path)
    (tmp_path / TOKENIZER_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: not a valid tokenizer file"):
        load_tokenizer(tmp_path)
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    vocab["[PAD]"], vocab["[MASK]"] = vocab["[MASK]"], vocab["[PAD]"]
    for token in data["added_tokens"]:
        token["id"] = vocab[token["content"]]
    (tmp_path / TOKENIZER_FILE).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"special token \[PAD\] has id 4, expected 0"):
        load_tokenizer(tmp_path)


def test_as_transformers_keeps_ids_and_special_tokens(tokenizer):
    hf = as_transformers(tokenizer)
    assert (hf.pad_token_id, hf.unk_token_id, hf.cls_token_id, hf.sep_token_id, hf.mask_token_id) == (0, 1, 2, 3, 4)
    assert hf("the lazy dog")["input_ids"] == tokenizer.encode("the lazy dog").ids


# ----------------------------------------------------------------------------------------------------------
# Packing


def test_pack_sequences_by_hand():
    docs = [[10, 11, 12], [20, 21], [30, 31, 32, 33]]
    # stream: 10 11 12 SEP 20 21 SEP 30 31 32 33 SEP (12 tokens); L=6 holds 4 corpus tokens -> 3 sequences
    packed = pack_sequences(docs, 6)
    assert packed.dtype == torch.long
    assert packed.tolist() == [
        [CLS_ID, 10, 11, 12, SEP_ID, SEP_ID],
        [CLS_ID, 20, 21, SEP_ID, 30, SEP_ID],
        [CLS_ID, 31, 32, 33, SEP_ID, SEP_ID],
    ]
    # L=7 holds 5: 12 // 5 = 2 sequences, the last two tokens dropped
    assert pack_sequences(docs, 7).tolist() == [
        [CLS_ID, 10, 11, 12, SEP_ID, 20, SEP_ID],
        [CLS_ID, 21, SEP_ID, 30, 31, 32, SEP_ID],
    ]


def test_tokenize_corpus_shapes_and_content(tokenizer):
    ids = encode_documents(tokenizer, DOCS)
    stream = sum(len(x) + 1 for x in ids)
    packed = tokenize_corpus(tokenizer, DOCS, 16)
    assert packed.shape == (stream // 14, 16)
    assert (packed[:, 0] == CLS_ID).all() and (packed[:, -1] == SEP_ID).all()
    assert not (packed == PAD_ID).any()
    # The first sequence begins with the first document's tokens.
    first = ids[0][:14]
    assert packed[0, 1 : 1 + len(first)].tolist() == first
    assert tokenizer.decode(packed[0].tolist()).startswith("the quick brown fox jumps")
    # Interior tokens, read back in order, are the corpus stream.
    flat = [t for x in ids for t in (*x, SEP_ID)]
    assert packed[:, 1:-1].reshape(-1).tolist() == flat[: packed.shape[0] * 14]
    assert torch.equal(pack_sequences(ids, 16), packed)  # encode then pack, as documented


def test_too_small_corpus_names_tokens_and_length(tokenizer):
    with pytest.raises(
        TokenizerError,
        match=r"the corpus has 3 tokens \(1 documents, one \[SEP\] each\), too "
        r"few for one training sequence of length L=8",
    ):
        pack_sequences([[5, 6]], 8)
    with pytest.raises(TokenizerError, match=r"corpus has \d+ tokens .* length L=512"):
        tokenize_corpus(tokenizer, DOCS[:1], 512)


@pytest.mark.parametrize("length", [2, 0, 3.0, True])
def test_bad_length(length):
    with pytest.raises(TokenizerError, match=rf"length={length!r} is invalid: must be an integer >= 3"):
        pack_sequences([[5, 6, 7]], length)
