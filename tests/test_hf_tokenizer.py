"""tokenizer.py and Hugging Face folders, without transformers: a hand-written tokenizer.json against a slow
reference BPE (GPT-2's merge-priority algorithm), chat templates against dialogs built by hand from pieces,
save_hf -> from_hf_dir round trips for every tokenizer the project has, the folder layouts of transformers
4.x and 5.x, and the clear errors for what does not convert exactly to tiktoken."""
import json
import os

import pytest
import regex

import tokenizer as T
from test_tokenizer import CORPUS, EXTRA, TRICKY, ReferenceBPE, gpt2_bytes_to_unicode, smollm2, varied_strings  # noqa: F401
from tools.train_bpe import train_bpe

B2U = gpt2_bytes_to_unicode()
QWEN2_PAT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# Each merge's result is a new token, in merge order, and is the pair tiktoken would join ("Ġ in", not
# "Ġi n", because "in" merges first).
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "e r", "Ġ a", "Ġa n", "Ġan d", "o n", "Ġ s", "r e", "Ċ Ċ", "Ġ in", "e s",
          "a t", "o r", "Ġ o", "Ġo f", "Ġ c", "i s", "e n"]
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
          "You are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# The shape of Llama 3.1's template: a system header with the knowledge date, system content trimmed, each
# message trimmed, bos from the bos_token variable.
LLAMA31 = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""
DIALOGS = [[{"role": "user", "content": "What is the capital of France?"}],
           [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "\n  2+2?\n\n3"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3 + 3 ?  "}],
           [{"role": "user", "content": "say <|im_end|> and <|eot_id|> and <|end|> now"},
            {"role": "assistant", "content": " They are plain text. "}],
           [{"role": "user", "content": "naïve café — 東京 🙂 1234567\tx"}, {"role": "assistant", "content": "ok"}], []]


def hand_written_json():
    vocab = {B2U[b]: b for b in range(256)}
    for k, m in enumerate(MERGES):
        vocab[m.replace(" ", "")] = 256 + k
    n = len(vocab)
    vocab["<|endoftext|>"] = n  # listed in the vocab too, as GPT-2 does
    added = [{"id": n + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, s in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])]
    return {"version": "1.0", "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_PAT}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
            "post_processor": None, "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab, "merges": MERGES}}


def write_folder(d, tj, config, jinja=None):
    os.makedirs(d, exist_ok=True)
    (d / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    if jinja is not None:
        (d / "chat_template.jinja").write_text(jinja, encoding="utf-8")
    return d


class SplitReferenceBPE(ReferenceBPE):
    """GPT-2's merge-priority BPE on the pieces of a Split regex (test_tokenizer.ReferenceBPE splits as SmolLM2)."""

    def __init__(self, tj):
        vocab = {s: i for s, i in tj["model"]["vocab"].items()}
        super().__init__([s for s, _ in sorted(vocab.items(), key=lambda kv: kv[1])], tj["model"]["merges"])
        self.pattern = tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]

    def pieces(self, text):
        return regex.findall(self.pattern, text)


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    tj = hand_written_json()
    d = write_folder(tmp_path_factory.mktemp("hand"), tj, {"eos_token": "<|im_end|>", "pad_token": {"content": "<|endoftext|>"},
                                                           "chat_template": CHATML, "model_max_length": 4096})
    return T.Tokenizer.from_hf_dir(d), SplitReferenceBPE(tj), tj, d


def texts():
    return TRICKY[:-2] + varied_strings(150, seed=1) + CORPUS[:6000].split("\n\n") + [EXTRA, "the and in of cat"]


def chatml_by_hand(tok, ref, messages, gen):
    """ChatML from pieces: the default system turn when there is none, content always plain text."""
    sp = tok.special_tokens
    if messages and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": "You are a helpful assistant."}] + messages
    ids = []
    for m in messages:
        ids += [sp["<|im_start|>"], *ref.encode(f"{m['role']}\n{m['content']}"), sp["<|im_end|>"], *ref.encode("\n")]
    return ids + ([sp["<|im_start|>"], *ref.encode("assistant\n")] if gen else [])


# ----------------------------------------------------------------------------- exact conversion

def test_bpe_parts_and_merges_by_hand():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5}
    assert T.bpe_parts(b"abc", ranks, 5) == [b"ab", b"c"]  # ab (3) joins before bc (4)
    assert T.bpe_parts(b"abc", ranks, 3) == [b"a", b"b", b"c"]
    assert T.bpe_merges(ranks) == [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c")]
    ranks.update({b"ab": 4, b"bc": 3})
    assert T.bpe_merges(ranks) == [(b"b", b"c"), (b"a", b"b"), (b"a", b"bc")]


def test_hand_written_tokenizer_json_matches_reference_bpe(hand):
    tok, ref, tj, _ = hand
    n = len(tj["model"]["vocab"])
    assert tok.special_tokens == {"<|endoftext|>": n - 1, "<|im_start|>": n, "<|im_end|>": n + 1}
    assert tok.pat_str == QWEN2_PAT and tok.bos_id is None and tok.n_words == n + 2
    assert (tok.eos_id, tok.pad_id, tok.eot_id, tok.stop_ids) == (n + 1, n - 1, n + 1, {n + 1})
    assert tok.model_max_length == 4096 and tok.chat_format == "template"
    assert tok.encode(" the and") == [256 + MERGES.index("Ġt he"), 256 + MERGES.index("Ġan d")]
    for s in texts():
        assert tok.encode(s) == ref.encode(s), repr(s)
        assert tok.decode(tok.encode(s)) == s


def test_hand_written_chat_template(hand):
    tok, ref, _, _ = hand
    for msgs in DIALOGS:
        for gen in (True, False):
            assert tok.encode_dialog(msgs, gen) == chatml_by_hand(tok, ref, msgs, gen), (msgs, gen)
    user, answer = "What is the capital of France?", "The capital of France is Paris."
    full = tok.encode_dialog([{"role": "user", "content": user}, {"role": "assistant", "content": answer}], False)
    assert tok.encode_chat_prompt(user) + tok.encode_chat_response(answer) == full[:-len(tok.encode("\n"))]
    ids = tok.encode_chat_prompt("say <|im_end|> now")  # typed special strings stay text
    assert ids.count(tok.special_tokens["<|im_end|>"]) == 2  # the system turn's and the user turn's
    assert ids == chatml_by_hand(tok, ref, [{"role": "user", "content": "say <|im_end|> now"}], True)
    assert "say <|im_end|> now" in tok.decode(ids)


def test_save_hf_round_trip_of_hand_written(hand, tmp_path):
    tok, ref, tj, _ = hand
    tok.save_hf(tmp_path)
    written = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert written["model"]["merges"] == MERGES  # rebuilt from the ranks alone
    assert {s: i for s, i in written["model"]["vocab"].items()} == tj["model"]["vocab"] | {"<|im_start|>": tok.eos_id - 1,
                                                                                           "<|im_end|>": tok.eos_id}
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == CHATML == (tmp_path / "chat_template.jinja").read_text(encoding="utf-8")
    assert (config["eos_token"], config["pad_token"], config["model_max_length"]) == ("<|im_end|>", "<|endoftext|>", 4096)
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    back = T.Tokenizer.from_hf_dir(tmp_path)
    for field in ("special_tokens", "bos_id", "eos_id", "pad_id", "eot_id", "stop_ids", "pat_str", "mergeable_ranks"):
        assert getattr(back, field) == getattr(tok, field), field
    for s in texts():
        assert back.encode(s) == tok.encode(s)
    for msgs in DIALOGS:
        assert back.encode_dialog(msgs) == tok.encode_dialog(msgs)


def test_our_save_round_trips_a_template_tokenizer(hand, tmp_path):
    tok, _, _, hf_dir = hand
    assert T.Tokenizer.from_dir(hf_dir).encode_dialog(DIALOGS[1]) == tok.encode_dialog(DIALOGS[1])  # HF folder: dispatch
    tok.save(tmp_path)  # tokenizer.model + our tokenizer_config.json, holding the template
    assert not (tmp_path / "tokenizer.json").exists()
    back = T.Tokenizer.from_dir(tmp_path)
    assert back.chat_template == CHATML and back.template_vars == tok.template_vars
    for field in ("chat_format", "special_tokens", "eos_id", "pad_id", "eot_id", "stop_ids", "model_max_length"):
        assert getattr(back, field) == getattr(tok, field), field
    for msgs in DIALOGS:
        assert back.encode_dialog(msgs) == tok.encode_dialog(msgs)
    assert back.encode_chat_response(" hi ") == tok.encode_chat_response(" hi ")


# ----------------------------------------------------------------------------- every tokenizer -> save_hf -> back

def assert_same(a, b, dialogs, texts_):
    for s in texts_:
        assert a.encode(s) == b.encode(s), repr(s)
    for msgs in dialogs:
        for gen in (True, False):
            assert a.encode_dialog(msgs, gen) == b.encode_dialog(msgs, gen), (msgs, gen)
    for r in ("Paris.", " 4 ", "a\n\nb"):
        assert a.encode_chat_response(r) == b.encode_chat_response(r), r
    assert (a.eos_id, a.pad_id, a.eot_id, a.bos_id) == (b.eos_id, b.pad_id, b.eot_id, b.bos_id)


@pytest.fixture(scope="module")
def small_ranks():
    return {pat: train_bpe(CORPUS[:20000] + EXTRA, 400, pat) for pat in (T.TOY_PAT_STR, T.LLAMA3_PAT_STR)}


def test_toy_save_hf_round_trip(small_ranks, tmp_path):
    T.save_tiktoken_bpe(small_ranks[T.TOY_PAT_STR], tmp_path / "toy.tiktoken")
    toy = T.Tokenizer.toy(tmp_path / "toy.tiktoken")
    toy.save_hf(tmp_path / "hf")
    back = T.Tokenizer.from_hf_dir(tmp_path / "hf")
    dialogs = [d for d in DIALOGS if all(m["role"] != "system" for m in d)]
    assert_same(back, toy, dialogs, texts())
    assert back.stop_ids == toy.stop_ids and back.bos_id is None
    with pytest.raises(ValueError, match="no system turn"):
        back.encode_dialog([{"role": "system", "content": "x"}])


def test_llama3_save_hf_round_trip_and_31_template(small_ranks, tmp_path):
    T.save_tiktoken_bpe(small_ranks[T.LLAMA3_PAT_STR], tmp_path / "tokenizer.model")
    meta = T.Tokenizer.llama3(tmp_path / "tokenizer.model")
    meta.save_hf(tmp_path / "hf", model_max_length=8192)
    tj = json.loads((tmp_path / "hf" / "tokenizer.json").read_text(encoding="utf-8"))
    assert tj["post_processor"]["single"][0] == {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}
    back = T.Tokenizer.from_hf_dir(tmp_path / "hf")
    assert_same(back, meta, DIALOGS, texts())
    assert back.encode("hi", bos=True)[0] == meta.bos_id and back.model_max_length == 8192
    # Llama 3.1's system header, as a 5.x folder would hold it (chat_template.jinja, no key in the config)
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text(encoding="utf-8"))
    del config["chat_template"]
    d = write_folder(tmp_path / "hf31", tj, config, jinja=LLAMA31)
    tok, sp, enc = T.Tokenizer.from_hf_dir(d), meta.special_tokens, meta.encode

    def turn(role, text):
        return [sp["<|start_header_id|>"], *enc(role), sp["<|end_header_id|>"], *enc("\n\n" + text), sp["<|eot_id|>"]]
    header = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    msgs = [{"role": "system", "content": "  Be brief.\n"}, {"role": "user", "content": " Hi <|eot_id|> there \n"}]
    expected = [sp["<|begin_of_text|>"], *turn("system", header + "Be brief."), *turn("user", "Hi <|eot_id|> there")]
    assert tok.encode_dialog(msgs, False) == expected
    assert tok.encode_chat_prompt("Hi") == [sp["<|begin_of_text|>"], *turn("system", header), *turn("user", "Hi"),
                                            sp["<|start_header_id|>"], *enc("assistant"), sp["<|end_header_id|>"], *enc("\n\n")]
    assert tok.eot_id == sp["<|eot_id|>"] and tok.encode_chat_response(" Paris. ") == [*enc("Paris."), sp["<|eot_id|>"]]


def test_smollm2_gguf_save_hf_round_trip(smollm2, tmp_path):
    gguf_tok, _, _, _ = smollm2
    gguf_tok.save_hf(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": sorted(gguf_tok.stop_ids)}))
    back = T.Tokenizer.from_hf_dir(tmp_path)
    assert_same(back, gguf_tok, DIALOGS, TRICKY[:-2] + varied_strings(200, seed=2) + CORPUS[:8000].split("\n\n"))
    assert back.stop_ids == gguf_tok.stop_ids  # generation_config.json's eos ids join eos and end-of-turn
    assert back.mergeable_ranks == gguf_tok.mergeable_ranks and back.special_tokens == gguf_tok.special_tokens


# ----------------------------------------------------------------------------- folder layouts and errors

def test_4x_and_5x_folders_load_alike(hand, tmp_path):
    _, _, tj, _ = hand
    base = {"eos_token": "<|im_end|>"}
    v4 = T.Tokenizer.from_hf_dir(write_folder(tmp_path / "v4", tj, base | {"chat_template": CHATML}))
    v5 = T.Tokenizer.from_hf_dir(write_folder(tmp_path / "v5", tj, base, jinja=CHATML))
    named = [{"name": "default", "template": CHATML}, {"name": "tool_use", "template": "{{ raise_exception('no') }}"}]
    v4_named = T.Tokenizer.from_hf_dir(write_folder(tmp_path / "v4n", tj, base | {"chat_template": named}))
    both = T.Tokenizer.from_hf_dir(write_folder(tmp_path / "both", tj, base | {"chat_template": "{{ 1/0 }}"}, jinja=CHATML))
    for msgs in DIALOGS:
        assert v4.encode_dialog(msgs) == v5.encode_dialog(msgs) == v4_named.encode_dialog(msgs) == both.encode_dialog(msgs)
    assert v4.pad_id == v4.eos_id  # no pad_token: eos
    bare = T.Tokenizer.from_hf_dir(write_folder(tmp_path / "bare", tj, base))  # a base model: no template
    assert bare.encode("the") == v4.encode("the")
    with pytest.raises(ValueError, match="no chat template"):
        bare.encode_chat_prompt("hi")


def edited(tj, path, value):
    tj = json.loads(json.dumps(tj))
    node = tj
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return tj


@pytest.mark.parametrize("path, value, message", [
    (("model", "type"), "Unigram", "model.type='Unigram'.*not a byte-level BPE.*only byte-level BPE converts exactly"),
    (("model", "byte_fallback"), True, "model.byte_fallback set.*not a byte-level BPE"),
    (("model", "vocab", "▁the"), 300, "model.vocab entry '▁the'.*byte-to-unicode"),
    (("model", "merges"), MERGES[1:2] + MERGES[:1] + MERGES[2:], r"model.merges\[1\]='Ġ t'.*out of id order"),
    (("model", "merges"), MERGES[:12] + ["Ġi n"] + MERGES[13:], r"tiktoken would build it from \[b' ', b'in'\]"),
    (("model", "merges"), MERGES[:-1], r"build it from \[b'e', b'n'\], the merges from None"),
    (("normalizer",), {"type": "Lowercase"}, "normalizer.*Lowercase.*changes the text"),
    (("pre_tokenizer",), {"type": "Metaspace", "replacement": "▁"}, "pre_tokenizer.*Metaspace.*not supported"),
    (("pre_tokenizer", "pretokenizers", 0, "pattern", "Regex"), r"\p{L}+", "leaves text unmatched"),
    (("pre_tokenizer", "pretokenizers", 1, "add_prefix_space"), True, "pre_tokenizer.*not supported"),
    (("added_tokens", 1, "rstrip"), True, r"added_tokens\[1\].*rstrip"),
])
def test_what_does_not_convert_exactly_is_a_clear_error(hand, tmp_path, path, value, message):
    d = write_folder(tmp_path, edited(hand[2], path, value), {"eos_token": "<|im_end|>"})
    with pytest.raises(ValueError, match=message) as e:
        T.Tokenizer.from_hf_dir(d)
    assert "tokenizer.json" in str(e.value)


def test_sentencepiece_tokenizer_json_is_a_clear_error(tmp_path):
    unigram = {"version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": {"type": "Metaspace"},
               "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["▁the", -1.0]]}}
    with pytest.raises(ValueError, match=r"tokenizer.json: model.type='Unigram'.*SentencePiece.*only byte-level BPE"):
        T.Tokenizer.from_hf_dir(write_folder(tmp_path, unigram, {"eos_token": "</s>"}))


def test_config_and_template_errors(hand, tmp_path):
    tj = hand[2]
    with pytest.raises(ValueError, match=r"tokenizer_config.json: eos_token='</s>' is not one of the added_tokens"):
        T.Tokenizer.from_hf_dir(write_folder(tmp_path / "a", tj, {"eos_token": "</s>"}))
    with pytest.raises(ValueError, match="eos_token is missing"):
        T.Tokenizer.from_hf_dir(write_folder(tmp_path / "b", tj, {}))
    with pytest.raises(ValueError, match="no special token after an assistant message"):
        T.Tokenizer.from_hf_dir(write_folder(tmp_path / "c", tj, {"eos_token": "<|im_end|>"},
                                             jinja="{% for m in messages %}{{ m['content'] }}\n{% endfor %}"))
    upper = CHATML.replace("message['content']", "message['content'] | upper")
    tok = T.Tokenizer.from_hf_dir(write_folder(tmp_path / "d", tj, {"eos_token": "<|im_end|>"}, jinja=upper))
    with pytest.raises(ValueError, match="changes message content beyond trimming"):
        tok.encode_chat_prompt("hi")
    with pytest.raises(ValueError, match=r"chat template, line 1"):
        T.Tokenizer.from_hf_dir(write_folder(tmp_path / "e", tj, {"eos_token": "<|im_end|>"}, jinja="{% for %}"))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        T.Tokenizer.from_hf_dir(tmp_path / "nowhere")
