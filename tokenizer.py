"""Tokenizers and chat formats on tiktoken: Meta Llama 3, SmolLM2 (ChatML, from GGUF), the toy models, and
any byte-level BPE Hugging Face folder (tokenizer.json + its Jinja chat template), read and written.

References:
- meta-llama/llama3, llama/tokenizer.py: `Tokenizer` (special tokens at ids len(ranks).., pat_str) and
  `ChatFormat` (header / content / <|eot_id|> layout); Llama 3.1 names for the special tokens.
- openai/tiktoken: `Encoding`, `load.load_tiktoken_bpe` (the "base64token rank" file format).
- SmolLM2's GGUF: GPT-2 byte-level vocabulary and merges, chat template in `tokenizer.chat_template`.
- huggingface/tokenizers: the tokenizer.json layout; huggingface/transformers, utils/chat_template_utils.py:
  how a chat template is rendered (sandboxed Jinja, trim_blocks, lstrip_blocks, raise_exception, ...).

Plain text never yields special ids: `encode` uses `encode_ordinary`, so a user typing "<|eot_id|>" gets
ordinary text tokens. Only `encode_dialog` places special tokens: those the chat format (or template) writes.

Imports: regex, tiktoken; chat_template.py (Jinja chat templates, rendered as transformers does), gguf in
from_gguf, and common.atomic_write to write files (a reader never sees half a file), each only where used.
"""
import base64
import json
import os
import pathlib
import unicodedata

import regex
import tiktoken

from chat_template import SLOT, builtin_template, compile_template, slot
from common import atomic_write, read_json_object

LLAMA3_PAT_STR = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# SmolLM2 pre-tokenizes in two stages (HF: Digits(individual) then the GPT-2 ByteLevel regex; llama.cpp
# "smollm": "\p{N}" then the GPT-2 regex). One regex matches that only if a whitespace run before a digit
# is kept whole, as the second stage sees the run at the end of its chunk: hence (?![^\s\p{N}]), not (?!\S).
SMOLLM2_PAT_STR = r"\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"
TOY_PAT_STR = SMOLLM2_PAT_STR  # digits split singly, words keep their leading space
GPT2_PAT_STR = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"  # ByteLevel(use_regex)

LLAMA3_NUM_SPECIAL = 256
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                   "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
LLAMA3_SPECIALS += [f"<|reserved_special_token_{i}|>" for i in range(3, 3 + LLAMA3_NUM_SPECIAL - len(LLAMA3_SPECIALS))]
TOY_SPECIALS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"]
ROLES = ("system", "user", "assistant")
MODEL_FILE, CONFIG_FILE = "tokenizer.model", "tokenizer_config.json"
HF_FILE, HF_TEMPLATE_FILE, HF_GENERATION_FILE = "tokenizer.json", "chat_template.jinja", "generation_config.json"
HF_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _write(path, data: bytes) -> None:
    atomic_write(os.fspath(path), lambda tmp: pathlib.Path(tmp).write_bytes(data))


def save_tiktoken_bpe(ranks: dict[bytes, int], path) -> None:
    """Write ranks as tiktoken's "base64token rank" lines, sorted by rank (what load_tiktoken_bpe reads)."""
    lines = [base64.b64encode(tok) + b" " + str(r).encode() + b"\n" for tok, r in sorted(ranks.items(), key=lambda kv: kv[1])]
    _write(path, b"".join(lines))


def load_tiktoken_bpe(path) -> dict[bytes, int]:
    """Read a tiktoken BPE file. Same format as tiktoken.load.load_tiktoken_bpe, but that one caches by
    *path name* in a temp folder, so a retrained file at the same path would silently load stale ranks."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    ranks = {}
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                tok, rank = line.split()
                ranks[base64.b64decode(tok, validate=True)] = int(rank)
            except Exception as e:
                raise ValueError(f"{path}, line {n}: expected 'base64token rank', got {line[:80]!r}") from e
    return ranks


def _load_dense_ranks(path) -> dict[bytes, int]:
    """Ranks that must be exactly 0..n-1, because the special tokens are numbered from n."""
    ranks = load_tiktoken_bpe(path)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks must be exactly 0..{len(ranks) - 1}, each once")
    return ranks


def gpt2_unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to chr(256 + k)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in keep]
    return {**{chr(b): b for b in keep}, **{chr(256 + k): b for k, b in enumerate(rest)}}


def bpe_parts(token: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    """tiktoken's merge loop (lowest rank first, leftmost on ties) on one token's bytes, with ranks < `below`.
    For a token of rank r: two parts are the merge that builds it; more mean tiktoken never builds it
    from smaller pieces (only a piece equal to its bytes yields it, by direct lookup)."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, at = below, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], below)
            if r < best:
                best, at = r, i
        if at < 0:
            break
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    return parts


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merges that make a merge-priority BPE (Hugging Face's) equal tiktoken on these ranks: each
    buildable multi-byte token's pair, in rank order."""
    pairs = [(tok, bpe_parts(tok, ranks, r)) for tok, r in sorted(ranks.items(), key=lambda kv: kv[1]) if len(tok) > 1]
    return [(p[0], p[1]) for _, p in pairs if len(p) == 2]


# ----------------------------------------------------------------------------- Hugging Face tokenizer.json

def _hf_added_tokens(tj: dict, path) -> dict[str, int]:
    """added_tokens -> {content: id}. All become tiktoken specials, so plain text never yields them."""
    specials = {}
    for k, t in enumerate(tj.get("added_tokens") or []):
        if not isinstance(t, dict) or not isinstance(t.get("content"), str) or not isinstance(t.get("id"), int):
            raise ValueError(f"{path}: added_tokens[{k}] needs a string 'content' and an integer 'id'")
        if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
            raise ValueError(f"{path}: added_tokens[{k}] ({t['content']!r}) sets lstrip/rstrip/single_word, which "
                             "changes the text around it; not supported")
        specials[t["content"]] = t["id"]
    return specials


def _hf_ranks(model, specials: dict[str, int], path) -> dict[bytes, int]:
    """model (BPE) -> tiktoken ranks, rank = token id. Exact only if merge order is id order and each merge
    is the pair tiktoken would join (bpe_parts): checked token by token."""
    model = model if isinstance(model, dict) else {}
    odd = [k for k in ("byte_fallback", "continuing_subword_prefix", "end_of_word_suffix", "dropout") if model.get(k)]
    if model.get("type") != "BPE" or odd:
        raise ValueError(f"{path}: model.type={model.get('type')!r}{f', model.{odd[0]} set' if odd else ''}: not a byte-level "
                         "BPE (a SentencePiece, Unigram or WordPiece tokenizer?); only byte-level BPE converts exactly to tiktoken")
    u2b, ranks = gpt2_unicode_to_byte(), {}
    for s, i in (model.get("vocab") or {}).items():
        if s in specials:  # GPT-2 lists <|endoftext|> in the vocab too; it stays a special token
            if specials[s] != i:
                raise ValueError(f"{path}: model.vocab[{s!r}]={i} but added_tokens gives it id {specials[s]}")
        elif not s or not set(s) <= u2b.keys():
            raise ValueError(f"{path}: model.vocab entry {s!r} (id {i}) is not in GPT-2's byte-to-unicode alphabet: "
                             "not a byte-level BPE")
        else:
            ranks[bytes(u2b[ch] for ch in s)] = i
    if len(set(ranks.values()) | set(specials.values())) != len(ranks) + len(specials):
        raise ValueError(f"{path}: model.vocab and added_tokens reuse ids")
    merged_from, last = {}, -1
    for k, m in enumerate(model.get("merges") or []):
        pair = m.split(" ") if isinstance(m, str) else m
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(p, str) and p and set(p) <= u2b.keys() for p in pair)):
            raise ValueError(f"{path}: model.merges[{k}]={m!r}: expected two byte-level tokens")
        a, b = (bytes(u2b[ch] for ch in p) for p in pair)
        if ranks.get(a + b, -1) <= last:
            raise ValueError(f"{path}: model.merges[{k}]={m!r} is missing from the vocabulary or out of id order; "
                             "tiktoken ranks would be inexact")
        merged_from[a + b], last = [a, b], ranks[a + b]
    for tok, r in ranks.items():
        parts, merge = (bpe_parts(tok, ranks, r), merged_from.get(tok)) if len(tok) > 1 else ([tok], [tok])
        if (merge is None and len(parts) == 2) or (merge is not None and parts != merge):
            raise ValueError(f"{path}: model.vocab entry for {tok!r} (id {r}): tiktoken would build it from {parts}, "
                             f"the merges from {merge}; ranks would be inexact")
        if merge is None and model.get("ignore_merges") is not True:
            raise ValueError(f"{path}: model.vocab entry for {tok!r} (id {r}) has no merge: tiktoken yields it for text "
                             "equal to its bytes, this BPE (ignore_merges false) never does")
    return ranks


def _hf_pat_str(pre, path) -> str:
    """The pre-tokenizer as one tiktoken regex: GPT-2's ByteLevel, Split(Regex) + ByteLevel without its
    regex (Llama 3, Qwen2), or Digits(individual) + ByteLevel (SmolLM2). A Split keeps the text between
    matches too, tiktoken drops it: so its regex must match all of a probe of many scripts and classes."""
    def byte_level(p, use_regex):  # add_prefix_space would change the text
        return isinstance(p, dict) and p.get("type") == "ByteLevel" and not p.get("add_prefix_space") \
            and p.get("use_regex", True) == use_regex
    if byte_level(pre, True):
        return GPT2_PAT_STR
    seq = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else None
    if isinstance(seq, list) and len(seq) == 2 and isinstance(seq[0], dict):
        first, pattern = seq[0], seq[0].get("pattern") if isinstance(seq[0].get("pattern"), dict) else {}
        if first.get("type") == "Digits" and first.get("individual_digits") and byte_level(seq[1], True):
            return SMOLLM2_PAT_STR
        if first.get("type") == "Split" and "Regex" in pattern and first.get("behavior") == "Isolated" \
                and not first.get("invert") and byte_level(seq[1], False):
            probe = "".join(map(chr, range(1, 128))) + " \u00a0\u2003\u3000\u2028 Ünïcödé e\u0301 東京 ١٢٣ Ⅻ ½ ² 🙂👍🏽 €£ \u200d"
            try:
                matches = [m.group(0) for m in regex.finditer(pattern["Regex"], probe)]
            except (regex.error, TypeError) as e:
                raise ValueError(f"{path}: pre_tokenizer Split pattern.Regex does not compile: {e}") from e
            if "" in matches or "".join(matches) != probe:
                raise ValueError(f"{path}: pre_tokenizer Split pattern.Regex {pattern['Regex']!r} leaves text unmatched "
                                 "(or matches empty strings); tiktoken would drop that text")
            return pattern["Regex"]
    raise ValueError(f"{path}: pre_tokenizer {json.dumps(pre)[:300]} is not supported: expected ByteLevel, "
                     "Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)] or Sequence[Digits(individual), ByteLevel]")


def _hf_normalizer(norm, path) -> str | None:
    """None, or "NFC" (Qwen2). Any other normalizer changes text in ways tiktoken does not."""
    members = norm.get("normalizers") if isinstance(norm, dict) and norm.get("type") == "Sequence" else [norm]
    kinds = {m.get("type") if isinstance(m, dict) else m for m in members} - {None}
    if not kinds <= {"NFC"}:
        raise ValueError(f"{path}: normalizer {json.dumps(norm)[:200]} changes the text before tokenization; "
                         "only none or NFC is supported")
    return "NFC" if kinds else None


def _hf_bos(post, specials: dict[str, int], path) -> int | None:
    """The token the post-processor puts before the text (Llama 3's TemplateProcessing), else None."""
    procs = post.get("processors", []) if isinstance(post, dict) and post.get("type") == "Sequence" else [post]
    firsts = [p["single"][0] for p in procs if isinstance(p, dict) and p.get("type") == "TemplateProcessing" and p.get("single")]
    name = next((f["SpecialToken"].get("id") for f in firsts if "SpecialToken" in f), None)
    if name is not None and name not in specials:
        raise ValueError(f"{path}: post_processor adds {name!r}, which is not in added_tokens")
    return None if name is None else specials[name]


def _hf_token_names(config: dict, specials: dict[str, int], path) -> dict[str, str]:
    """bos_token, eos_token, ... from tokenizer_config.json (strings or {"content": ...}), each an added token."""
    names = {k: v.get("content") if isinstance(v, dict) else v for k in HF_TOKEN_NAMES if (v := config.get(k)) is not None}
    for key, v in names.items():
        if v not in specials:
            raise ValueError(f"{path}: {key}={v!r} is not one of the added_tokens of {HF_FILE}")
    return names


def _hf_chat_template(directory, config: dict, path) -> str | None:
    """transformers 5.x writes chat_template.jinja (it wins, as in transformers); 4.x keeps chat_template in
    tokenizer_config.json, a string or a list of named templates ("default" is the chat one)."""
    if os.path.isfile(jinja_path := os.path.join(directory, HF_TEMPLATE_FILE)):
        return pathlib.Path(jinja_path).read_text(encoding="utf-8")
    t = config.get("chat_template")
    if isinstance(t, list):
        t = next((x.get("template") for x in t if isinstance(x, dict) and x.get("name") == "default"), None)
    if t is not None and not isinstance(t, str):
        raise ValueError(f"{path}: chat_template must be a string or a list of {{name, template}}")
    return t


class Tokenizer:
    """tiktoken.Encoding plus special ids and a chat format: "llama3" | "chatml" | "toy" (written by hand
    here) or "template" (a Hugging Face Jinja chat template, rendered as transformers renders it).

    bos_id is None where the format has no beginning-of-sequence token (ChatML as SmolLM2 uses it, toy);
    encode(bos=True) then adds nothing, like HF with add_bos_token=False. eot_id ends an assistant turn.
    The toy format has no system turn. normalizer "NFC" (Qwen2) applies before encoding, as in HF."""

    def __init__(self, *, name, chat_format, mergeable_ranks, special_tokens, pat_str, bos_id, eos_id,
                 pad_id, eot_id, stop_ids, default_system=None, chat_template=None, template_vars=None,
                 normalizer=None, model_max_length=None):
        if chat_format not in ("llama3", "chatml", "toy", "template") or normalizer not in (None, "NFC"):
            raise ValueError(f"chat_format={chat_format!r}, normalizer={normalizer!r}: expected 'llama3', 'chatml', "
                             "'toy' or 'template', and None or 'NFC'")
        self.name, self.chat_format, self.pat_str = name, chat_format, pat_str
        self.mergeable_ranks, self.special_tokens = mergeable_ranks, dict(special_tokens)
        self.bos_id, self.eos_id, self.pad_id, self.eot_id = bos_id, eos_id, pad_id, eot_id
        self.stop_ids, self.default_system = set(stop_ids), default_system  # ChatML: system turn added if absent
        self.normalizer, self.model_max_length = normalizer, model_max_length
        names = {i: s for s, i in self.special_tokens.items()}
        for field in ("bos_id", "eos_id", "pad_id", "eot_id"):
            if getattr(self, field) is not None and getattr(self, field) not in names:
                raise ValueError(f"tokenizer {name!r}: {field}={getattr(self, field)} is not a special token id")
        # The token strings a template may read (bos_token, ...): HF's tokenizer_config values, or ours.
        self.template_vars = dict(template_vars) if template_vars is not None else {
            k: names[i] for k, i in (("bos_token", bos_id), ("eos_token", eos_id), ("pad_token", pad_id)) if i is not None}
        self.model = tiktoken.Encoding(name, pat_str=pat_str, mergeable_ranks=mergeable_ranks,
                                       special_tokens=self.special_tokens)
        self.n_words = self.model.max_token_value + 1
        # SmolLM2 lacks 21 single bytes (rare control chars, invalid UTF-8 leads): tiktoken would panic on
        # text needing them, so such characters become U+FFFD (HF would emit its unknown token).
        self._missing = bytes(b for b in range(256) if bytes([b]) not in mergeable_ranks)
        self.chat_template = chat_template if chat_format == "template" else builtin_template(chat_format, default_system)
        if chat_format == "template" and chat_template is not None:
            self._init_template()

    def _sanitize(self, text: str) -> str:
        if self.normalizer:
            text = unicodedata.normalize(self.normalizer, text)
        if not self._missing:
            return text
        raw = text.encode("utf-8", "surrogatepass")
        if len(raw.translate(None, self._missing)) == len(raw):
            return text
        return "".join("\ufffd" if any(b in self._missing for b in ch.encode("utf-8", "surrogatepass")) else ch for ch in text)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        ids = self.model.encode_ordinary(self._sanitize(text))
        return ([self.bos_id] if bos and self.bos_id is not None else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]  # lists, tuples, tensors, numpy arrays
        bad = [i for i in ids if not 0 <= i < self.n_words]
        if bad:
            raise ValueError(f"decode: ids {bad[:5]} outside the vocabulary [0, {self.n_words})")
        return self.model.decode(ids, errors="replace")

    def _content(self, content: str) -> list[int]:
        # Meta's ChatFormat strips message content; HF's Llama 3 template trims it too.
        return self.encode(content.strip() if self.chat_format == "llama3" else content)

    def encode_dialog(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise ValueError(f"messages[{i}]: expected a dict with 'role' and 'content', got {type(m).__name__}")
            if m.get("role") not in ROLES:
                raise ValueError(f"messages[{i}]['role']={m.get('role')!r}: expected one of {ROLES}")
            if not isinstance(m.get("content"), str):
                raise ValueError(f"messages[{i}]['content']: expected str, got {type(m.get('content')).__name__}")
            if self.chat_format == "toy" and m["role"] == "system":
                raise ValueError(f"messages[{i}]['role']='system': the toy chat format has no system turn")
        if self.chat_format == "template":
            return self._encode_with_template(messages, add_generation_prompt)
        sp = self.special_tokens
        ids = []
        if self.chat_format == "llama3":  # <|begin_of_text|> (<|start_header_id|>role<|end_header_id|>\n\n content <|eot_id|>)*
            def header(role):
                return [sp["<|start_header_id|>"]] + self.encode(role) + [sp["<|end_header_id|>"]] + self.encode("\n\n")
            ids.append(self.bos_id)
            for m in messages:
                ids += header(m["role"]) + self._content(m["content"]) + [self.eot_id]
            if add_generation_prompt:
                ids += header("assistant")
        elif self.chat_format == "chatml":  # (<|im_start|>role\ncontent<|im_end|>\n)*
            if messages and messages[0]["role"] != "system" and self.default_system is not None:
                messages = [{"role": "system", "content": self.default_system}, *messages]
            # The text between two specials is encoded in one piece, as HF does with the rendered template.
            for m in messages:
                ids += [sp["<|im_start|>"]] + self.encode(f"{m['role']}\n{m['content']}") + [sp["<|im_end|>"]] + self.encode("\n")
            if add_generation_prompt:
                ids += [sp["<|im_start|>"]] + self.encode("assistant\n")
        else:  # toy: (<|user|>content<|end|><|assistant|>content<|end|>)*
            for m in messages:
                ids += [sp[f"<|{m['role']}|>"]] + self.encode(m["content"]) + [self.eot_id]
            if add_generation_prompt:
                ids.append(sp["<|assistant|>"])
        return ids

    def encode_chat_prompt(self, user: str) -> list[int]:
        return self.encode_dialog([{"role": "user", "content": user}], add_generation_prompt=True)

    def encode_chat_response(self, response: str) -> list[int]:
        """What the model must generate after encode_chat_prompt: content tokens + the end-of-turn token.
        (ChatML: for a response starting with whitespace, a joint encode_dialog may merge across the
        "assistant\\n" boundary differently; generation never sees that joint form.)"""
        if self.chat_format != "template":
            return self._content(response) + [self.eot_id]
        if self.chat_template is None:
            raise self._no_template()
        lstrip, rstrip, suffix = self._response_form  # what the template does to an assistant's content
        response = response.lstrip() if lstrip else response
        return self.encode((response.rstrip() if rstrip else response) + suffix) + [self.eot_id]

    # ---- chat templates (see SLOT) ----------------------------------------------------------------
    def _init_template(self) -> None:
        """Compile the template; find by rendering what follows an assistant's content (text, usually none,
        then the end-of-turn token) and whether the template trims that content."""
        self._template = compile_template(self.chat_template, f"tokenizer {self.name!r}")
        by_length = sorted(self.special_tokens, key=len, reverse=True)  # longest first, as HF matches them
        self._special_re = regex.compile("(" + "|".join(map(regex.escape, by_length)) + ")")
        shape = self._render([{"role": "user", "content": slot(0)}, {"role": "assistant", "content": slot(1)}], False)
        found = next((m for m in SLOT.finditer(shape) if m[2] == "1"), None)
        end = self._special_re.search(shape, found.end()) if found else None
        if end is None:
            raise ValueError(f"tokenizer {self.name!r}: the chat template writes no special token after an "
                             "assistant message, so there is no end-of-turn token")
        self._response_form = (not found[1], not found[3], shape[found.end():end.start()])
        self.eot_id = self.special_tokens[end[0]]
        self.stop_ids |= {self.eot_id} | ({self.eos_id} if self.eos_id is not None else set())

    def _no_template(self) -> ValueError:
        return ValueError(f"tokenizer {self.name!r} has no chat template (tokenizer_config.json 'chat_template' or "
                          f"{HF_TEMPLATE_FILE}): add one to use it for chat")

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        import jinja2
        if self.chat_template is None:
            raise self._no_template()
        try:  # the variables transformers passes: messages, add_generation_prompt, tools, documents, bos_token, ...
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt, tools=None,
                                         documents=None, **self.template_vars)
        except jinja2.TemplateError as e:
            raise ValueError(f"tokenizer {self.name!r}: the chat template failed: {e}") from e

    def _encode_with_template(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        shape = self._render([{"role": m["role"], "content": slot(i)} for i, m in enumerate(messages)], add_generation_prompt)

        def fill(m):  # the content of slot match m, trimmed on each side where the template dropped its pad
            text = messages[int(m[2])]["content"]
            text = text if m[1] else text.lstrip()
            return text if m[3] else text.rstrip()

        # A template that looks inside content (Qwen3 splits off reasoning) makes the slots unfaithful.
        if SLOT.sub(fill, shape) != self._render(messages, add_generation_prompt):
            raise ValueError(f"tokenizer {self.name!r}: the chat template changes message content beyond trimming "
                             "it, so the content cannot be placed as plain text")
        ids = []
        for k, piece in enumerate(self._special_re.split(shape)):
            if k % 2:  # a special token the template wrote
                ids.append(self.special_tokens[piece])
            elif piece:
                ids += self.encode(SLOT.sub(fill, piece))
        return ids

    # ---- files -------------------------------------------------------------------------------------
    def save(self, directory) -> None:
        """Our own layout: tokenizer.model (tiktoken ranks) + our tokenizer_config.json (no tokenizer.json)."""
        os.makedirs(directory, exist_ok=True)
        save_tiktoken_bpe(self.mergeable_ranks, os.path.join(directory, MODEL_FILE))
        config = {k: getattr(self, k) for k in ("name", "chat_format", "pat_str", "special_tokens", "bos_id", "eos_id",
                                                "pad_id", "eot_id", "default_system", "normalizer", "model_max_length")}
        config["stop_ids"] = sorted(self.stop_ids)
        if self.chat_format == "template":
            config.update(chat_template=self.chat_template, template_vars=self.template_vars)
        _write(os.path.join(directory, CONFIG_FILE), json.dumps(config, indent=1).encode())

    @classmethod
    def from_dir(cls, directory) -> "Tokenizer":
        """A directory written by save(), a Hugging Face folder (it has tokenizer.json; its
        tokenizer_config.json is then Hugging Face's), or a Meta Llama 3 directory (tokenizer.model only)."""
        if os.path.isfile(os.path.join(directory, HF_FILE)):
            return cls.from_hf_dir(directory)
        model_path, config_path = os.path.join(directory, MODEL_FILE), os.path.join(directory, CONFIG_FILE)
        if not os.path.exists(config_path):
            return cls.llama3(model_path)
        config = read_json_object(config_path)
        fields = ("name", "chat_format", "pat_str", "special_tokens", "bos_id", "eos_id", "pad_id", "eot_id", "stop_ids")
        missing = [k for k in fields if k not in config]
        if missing:
            raise ValueError(f"{config_path}: missing field(s) {missing}")
        optional = ("default_system", "chat_template", "template_vars", "normalizer", "model_max_length")
        return cls(mergeable_ranks=load_tiktoken_bpe(model_path), **{k: config[k] for k in fields},
                   **{k: config.get(k) for k in optional})

    @classmethod
    def from_hf_dir(cls, directory) -> "Tokenizer":
        """A Hugging Face folder: tokenizer.json (byte-level BPE -> tiktoken, exactly), tokenizer_config.json
        (bos/eos/pad names; chat_template in 4.x folders), chat_template.jinja (5.x folders) and, if present,
        generation_config.json (its eos_token_id join the stop ids). pad defaults to eos; model_max_length is
        kept unless it is HF's "unknown" (1e30)."""
        directory = os.fspath(directory)
        path, config_path = os.path.join(directory, HF_FILE), os.path.join(directory, CONFIG_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: not found (a Hugging Face tokenizer folder has {HF_FILE})")
        tj, config = read_json_object(path), read_json_object(config_path) if os.path.isfile(config_path) else {}
        specials = _hf_added_tokens(tj, path)
        ranks = _hf_ranks(tj.get("model"), specials, path)  # first: "not a byte-level BPE" says the most
        names = _hf_token_names(config, specials, config_path)
        if "eos_token" not in names:
            raise ValueError(f"{config_path}: eos_token is missing; the tokenizer needs an end-of-sequence token")
        stop = {specials[names["eos_token"]]}
        if os.path.isfile(generation_path := os.path.join(directory, HF_GENERATION_FILE)):
            extra = read_json_object(generation_path).get("eos_token_id")
            stop |= {i for i in (extra if isinstance(extra, list) else [extra]) if i in specials.values()}
        return cls(name=os.path.basename(os.path.abspath(directory)), chat_format="template",
                   mergeable_ranks=ranks, special_tokens=specials, pat_str=_hf_pat_str(tj.get("pre_tokenizer"), path),
                   bos_id=_hf_bos(tj.get("post_processor"), specials, path),
                   eos_id=specials[names["eos_token"]], pad_id=specials[names.get("pad_token", names["eos_token"])],
                   eot_id=None, stop_ids=stop, chat_template=_hf_chat_template(directory, config, config_path),
                   template_vars=names, normalizer=_hf_normalizer(tj.get("normalizer"), path),
                   model_max_length=n if isinstance(n := config.get("model_max_length"), int) and n < 10**12 else None)

    def save_hf(self, directory, model_max_length: int | None = None) -> None:
        """A Hugging Face tokenizer folder that transformers 4.x/5.x, vLLM and lm-evaluation-harness load
        unchanged: tokenizer.json; tokenizer_config.json, naming the generic fast tokenizer (a model-specific
        class could rebuild the pre-tokenizer), with the chat template; and chat_template.jinja (5.x)."""
        os.makedirs(directory, exist_ok=True)
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **self.template_vars,
                  "clean_up_tokenization_spaces": False,  # 4.x would otherwise drop spaces before punctuation
                  "model_max_length": model_max_length or self.model_max_length, "chat_template": self.chat_template}
        _write(os.path.join(directory, HF_FILE), json.dumps(self._hf_tokenizer_json(), ensure_ascii=False).encode())
        _write(os.path.join(directory, CONFIG_FILE),
               json.dumps({k: v for k, v in config.items() if v is not None}, indent=2, ensure_ascii=False).encode())
        if self.chat_template is not None:
            _write(os.path.join(directory, HF_TEMPLATE_FILE), self.chat_template.encode())

    def _hf_tokenizer_json(self) -> dict:
        """tokenizer.json for these ranks: vocab strings through GPT-2's byte-to-unicode table, merges rebuilt
        from the ranks (bpe_merges), ignore_merges as tiktoken's whole-piece lookup, the pattern as a Split
        regex, and a post-processor that adds bos where the format has one."""
        b2u = {b: ch for ch, b in gpt2_unicode_to_byte().items()}
        text = lambda tok: "".join(b2u[b] for b in tok)  # noqa: E731
        # GPT-2 and SmolLM2 list their specials in the vocab too (a token with the same text keeps its rank)
        vocab = {**self.special_tokens, **{text(tok): r for tok, r in self.mergeable_ranks.items()}}
        added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
                  "special": True} for s, i in sorted(self.special_tokens.items(), key=lambda kv: kv[1])]
        post = None
        if self.bos_id is not None:  # "<bos> $A", as Llama 3's TemplateProcessing (pairs: "<bos> $A <bos> $B")
            bos = next(s for s, i in self.special_tokens.items() if i == self.bos_id)
            first, seq = {"SpecialToken": {"id": bos, "type_id": 0}}, lambda s, t: {"Sequence": {"id": s, "type_id": t}}
            post = {"type": "TemplateProcessing", "single": [first, seq("A", 0)], "pair": [first, seq("A", 0), first, seq("B", 1)],
                    "special_tokens": {bos: {"id": bos, "ids": [self.bos_id], "tokens": [bos]}}}
        return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
                "normalizer": {"type": self.normalizer} if self.normalizer else None,
                "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": self.pat_str}, "behavior": "Isolated", "invert": False},
                    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
                "post_processor": post,
                "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
                "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                          "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                          "vocab": vocab, "merges": [f"{text(a)} {text(b)}" for a, b in bpe_merges(self.mergeable_ranks)]}}

    @classmethod
    def llama3(cls, tokenizer_model_path) -> "Tokenizer":
        ranks = _load_dense_ranks(tokenizer_model_path)
        sp = {tok: len(ranks) + i for i, tok in enumerate(LLAMA3_SPECIALS)}  # Meta: specials follow the ranks
        return cls(name=os.path.basename(os.path.dirname(os.path.abspath(tokenizer_model_path))) or "llama3",
                   chat_format="llama3", mergeable_ranks=ranks, special_tokens=sp, pat_str=LLAMA3_PAT_STR,
                   bos_id=sp["<|begin_of_text|>"], eos_id=sp["<|end_of_text|>"], pad_id=sp["<|finetune_right_pad_id|>"],
                   eot_id=sp["<|eot_id|>"], stop_ids={sp["<|eot_id|>"], sp["<|end_of_text|>"], sp["<|eom_id|>"]})

    @classmethod
    def toy(cls, path) -> "Tokenizer":
        """A .tiktoken file from tools/train_bpe.py + save_tiktoken_bpe; the toy specials follow the ranks."""
        ranks = _load_dense_ranks(path)
        sp = {tok: len(ranks) + i for i, tok in enumerate(TOY_SPECIALS)}
        return cls(name="toy", chat_format="toy", mergeable_ranks=ranks, special_tokens=sp, pat_str=TOY_PAT_STR,
                   bos_id=None, eos_id=sp["<|endoftext|>"], pad_id=sp["<|endoftext|>"], eot_id=sp["<|end|>"],
                   stop_ids={sp["<|end|>"], sp["<|endoftext|>"]})

    @classmethod
    def from_gguf(cls, gguf_path) -> "Tokenizer":
        """SmolLM2's GGUF vocabulary -> ChatML tokenizer. rank = token id; control tokens become specials.
        The same exactness checks as for a tokenizer.json (_hf_ranks)."""
        import gguf  # only this loader needs it

        gguf_path = os.fspath(gguf_path)
        if not os.path.isfile(gguf_path):
            raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
        try:
            fields = gguf.GGUFReader(gguf_path).fields
        except Exception as e:  # empty, garbage or truncated: gguf's own errors name no file
            raise ValueError(f"{gguf_path}: not a readable GGUF file ({type(e).__name__}: {e})") from None

        def get(key):
            if key not in fields:
                raise ValueError(f"{gguf_path}: field {key!r} is missing")
            return fields[key].contents()

        if (get("tokenizer.ggml.model"), get("tokenizer.ggml.pre")) != ("gpt2", "smollm"):
            raise ValueError(f"{gguf_path}: tokenizer.ggml.model/pre = {get('tokenizer.ggml.model')!r}/"
                             f"{get('tokenizer.ggml.pre')!r}; only 'gpt2'/'smollm' (SmolLM2) is supported")
        tokens, types = get("tokenizer.ggml.tokens"), get("tokenizer.ggml.token_type")
        if (bad := next((i for i, typ in enumerate(types) if typ not in (1, 3)), None)) is not None:  # normal, control
            raise ValueError(f"{gguf_path}: tokenizer.ggml.tokens[{bad}]={tokens[bad]!r} (token_type {types[bad]}) is not supported")
        special = {tok: i for i, (tok, typ) in enumerate(zip(tokens, types)) if typ == 3}
        model = {"type": "BPE", "vocab": {tok: i for i, tok in enumerate(tokens)}, "merges": get("tokenizer.ggml.merges")}
        ranks = _hf_ranks(model, special, f"{gguf_path} (tokenizer.ggml.tokens and merges)")
        template = get("tokenizer.chat_template")
        if "<|im_start|>" not in template or "<|im_end|>" not in template:
            raise ValueError(f"{gguf_path}: tokenizer.chat_template is not ChatML")
        found = regex.search(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", template)
        eot = special["<|im_end|>"]
        return cls(name="smollm2", chat_format="chatml", mergeable_ranks=ranks, special_tokens=special,
                   pat_str=SMOLLM2_PAT_STR, bos_id=None, eos_id=int(get("tokenizer.ggml.eos_token_id")),
                   pad_id=int(get("tokenizer.ggml.padding_token_id")), eot_id=eot,
                   stop_ids={eot, special["<|endoftext|>"]}, default_system=found.group(1) if found else None)
