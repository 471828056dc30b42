"""Tokenizers and chat formats on tiktoken: Meta Llama 3, SmolLM2 (ChatML, from GGUF), and the toy models.

References:
- meta-llama/llama3, llama/tokenizer.py: `Tokenizer` (special tokens at ids len(ranks).., pat_str) and
  `ChatFormat` (header / content / <|eot_id|> layout); Llama 3.1 names for the special tokens.
- openai/tiktoken: `Encoding`, `load.load_tiktoken_bpe` (the "base64token rank" file format) and
  `_educational.bpe_train` (the training algorithm `train_bpe` reproduces, ties included, only faster).
- SmolLM2's GGUF: GPT-2 byte-level vocabulary and merges, chat template in `tokenizer.chat_template`.

Plain text never yields special ids: `encode` uses `encode_ordinary`, so a user typing "<|eot_id|>" gets
ordinary text tokens. Only `encode_dialog` places special tokens, and only around the content.
"""
import base64
import collections
import heapq
import json
import os
import tempfile
import time

import regex
import tiktoken

LLAMA3_PAT_STR = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# SmolLM2 pre-tokenizes in two stages (HF: Digits(individual) then the GPT-2 ByteLevel regex; llama.cpp
# "smollm": "\p{N}" then the GPT-2 regex). One regex matches that only if a whitespace run before a digit
# is kept whole, as the second stage sees the run at the end of its chunk: hence (?![^\s\p{N}]), not (?!\S).
SMOLLM2_PAT_STR = r"\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"
TOY_PAT_STR = SMOLLM2_PAT_STR  # digits split singly, words keep their leading space

LLAMA3_NUM_SPECIAL = 256
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                   "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
LLAMA3_SPECIALS += [f"<|reserved_special_token_{i}|>" for i in range(3, 3 + LLAMA3_NUM_SPECIAL - len(LLAMA3_SPECIALS))]
TOY_SPECIALS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"]
ROLES = ("system", "user", "assistant")
MODEL_FILE, CONFIG_FILE = "tokenizer.model", "tokenizer_config.json"


def _atomic_write(path, data: bytes) -> None:
    """Write via a temp file in the same folder + os.replace, so a reader never sees half a file."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_tiktoken_bpe(ranks: dict[bytes, int], path) -> None:
    """Write ranks as tiktoken's "base64token rank" lines, sorted by rank (what load_tiktoken_bpe reads)."""
    lines = [base64.b64encode(tok) + b" " + str(r).encode() + b"\n" for tok, r in sorted(ranks.items(), key=lambda kv: kv[1])]
    _atomic_write(path, b"".join(lines))


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


def train_bpe(text: str, vocab_size: int, pat_str: str = TOY_PAT_STR, verbose=False) -> dict[bytes, int]:
    """Byte-level BPE; ranks 0..255 are the single bytes. Same result as tiktoken._educational.bpe_train:
    merge the most frequent adjacent pair; on a tie, the pair that occurs first in the text. Fast because
    each distinct pre-token is stored once with its count, and pair counts are updated only for the
    words a merge touches (found via `where`). A merge whose bytes already are a token reuses that id."""
    if vocab_size < 256:
        raise ValueError(f"vocab_size={vocab_size}: must be >= 256, the single bytes")
    t0 = time.time()
    vocab = [bytes([i]) for i in range(256)]
    ranks = {tok: i for i, tok in enumerate(vocab)}
    counter = collections.Counter(regex.findall(pat_str, text))  # keeps first-occurrence order
    words = [list(w.encode("utf-8")) for w in counter]
    freqs = list(counter.values())
    count: dict[tuple, int] = collections.defaultdict(int)  # pair -> weighted occurrences
    where: dict[tuple, set] = collections.defaultdict(set)  # pair -> indices of words holding it
    for wi, w in enumerate(words):
        for p in zip(w, w[1:]):
            count[p] += freqs[wi]
            where[p].add(wi)
    heap = [(-c, p) for p, c in count.items()]  # max count first; stale entries skipped on pop
    heapq.heapify(heap)

    def first_seen(p):  # (first word holding p, position in it): the educational trainer's tie order
        wi = min(where[p])
        w = words[wi]
        return wi, next(i for i in range(len(w) - 1) if (w[i], w[i + 1]) == p)

    def pop_best():
        ties = set()
        while heap and (not ties or heap[0][0] == -c_best):
            negc, p = heapq.heappop(heap)
            if count.get(p) == -negc:  # a live entry
                c_best = -negc
                ties.add(p)
        if not ties:
            return None, 0
        best = min(ties, key=first_seen) if len(ties) > 1 else next(iter(ties))
        for p in ties - {best}:
            heapq.heappush(heap, (-c_best, p))
        return best, c_best

    n_merges, step = vocab_size - 256, max(1, (vocab_size - 256) // 20)
    while len(vocab) < vocab_size:
        best, c = pop_best()
        if best is None:
            raise ValueError(f"train_bpe: no pairs left to merge: this text supports at most {len(vocab)} tokens, "
                             f"not vocab_size={vocab_size}; lower vocab_size or give more varied text")
        merged = vocab[best[0]] + vocab[best[1]]
        new = ranks.get(merged)
        if new is None:  # otherwise (a, bc) after (ab, c): tiktoken's encoder also yields that token
            new = ranks[merged] = len(vocab)
            vocab.append(merged)
        changed = set()
        for wi in list(where[best]):
            old, w, i = words[wi], [], 0
            while i < len(old):  # merge left to right, non-overlapping
                if i + 1 < len(old) and (old[i], old[i + 1]) == best:
                    w.append(new)
                    i += 2
                else:
                    w.append(old[i])
                    i += 1
            old_pairs, new_pairs = list(zip(old, old[1:])), list(zip(w, w[1:]))
            for p in old_pairs:
                count[p] -= freqs[wi]
            for p in new_pairs:
                count[p] += freqs[wi]
            for p in set(old_pairs) - set(new_pairs):
                where[p].discard(wi)
            for p in new_pairs:
                where[p].add(wi)
            changed.update(old_pairs, new_pairs)
            words[wi] = w
        for p in changed:
            if count[p] > 0:
                heapq.heappush(heap, (-count[p], p))
            else:
                del count[p], where[p]
        if verbose and ((len(vocab) - 256) % step == 0 or len(vocab) == vocab_size):
            print(f"train_bpe: {len(vocab) - 256}/{n_merges} merges, last {merged!r} x{c}, {time.time() - t0:.1f}s", flush=True)
    return ranks


class Tokenizer:
    """tiktoken.Encoding plus special ids and a chat format ("llama3" | "chatml" | "toy").

    bos_id is None where the format has no beginning-of-sequence token (ChatML as SmolLM2 uses it, toy);
    encode(bos=True) then adds nothing, like HF with add_bos_token=False. eot_id ends an assistant turn.
    The toy format has no system turn: encode_dialog rejects system messages there."""

    def __init__(self, *, name, chat_format, mergeable_ranks, special_tokens, pat_str, bos_id, eos_id,
                 pad_id, eot_id, stop_ids, default_system=None):
        if chat_format not in ("llama3", "chatml", "toy"):
            raise ValueError(f"chat_format={chat_format!r}: expected 'llama3', 'chatml' or 'toy'")
        self.name, self.chat_format, self.pat_str = name, chat_format, pat_str
        self.mergeable_ranks, self.special_tokens = mergeable_ranks, dict(special_tokens)
        self.bos_id, self.eos_id, self.pad_id, self.eot_id = bos_id, eos_id, pad_id, eot_id
        self.stop_ids, self.default_system = set(stop_ids), default_system  # ChatML: system turn added if absent
        specials = set(self.special_tokens.values())
        for field in ("bos_id", "eos_id", "pad_id", "eot_id"):
            if getattr(self, field) is not None and getattr(self, field) not in specials:
                raise ValueError(f"tokenizer {name!r}: {field}={getattr(self, field)} is not a special token id")
        self.model = tiktoken.Encoding(name, pat_str=pat_str, mergeable_ranks=mergeable_ranks,
                                       special_tokens=self.special_tokens)
        self.n_words = self.model.max_token_value + 1
        # SmolLM2 lacks 21 single bytes (rare control chars, invalid UTF-8 leads): tiktoken would panic on
        # text needing them, so such characters become U+FFFD (HF would emit its unknown token).
        self._missing = bytes(b for b in range(256) if bytes([b]) not in mergeable_ranks)

    def _sanitize(self, text: str) -> str:
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
        return self._content(response) + [self.eot_id]

    # ---- files -------------------------------------------------------------------------------------
    def save(self, directory) -> None:
        os.makedirs(directory, exist_ok=True)
        save_tiktoken_bpe(self.mergeable_ranks, os.path.join(directory, MODEL_FILE))
        config = dict(name=self.name, chat_format=self.chat_format, pat_str=self.pat_str,
                      special_tokens=self.special_tokens, bos_id=self.bos_id, eos_id=self.eos_id,
                      pad_id=self.pad_id, eot_id=self.eot_id, stop_ids=sorted(self.stop_ids),
                      default_system=self.default_system)
        _atomic_write(os.path.join(directory, CONFIG_FILE), json.dumps(config, indent=1).encode())

    @classmethod
    def from_dir(cls, directory) -> "Tokenizer":
        """A directory written by save(), or a Meta Llama 3 directory (tokenizer.model, no config)."""
        model_path, config_path = os.path.join(directory, MODEL_FILE), os.path.join(directory, CONFIG_FILE)
        if not os.path.exists(config_path):
            return cls.llama3(model_path)
        with open(config_path) as f:
            config = json.load(f)
        fields = ("name", "chat_format", "pat_str", "special_tokens", "bos_id", "eos_id", "pad_id", "eot_id", "stop_ids")
        missing = [k for k in fields if k not in config]
        if missing:
            raise ValueError(f"{config_path}: missing field(s) {missing}")
        return cls(mergeable_ranks=load_tiktoken_bpe(model_path), default_system=config.get("default_system"),
                   **{k: config[k] for k in fields})

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
        """A .tiktoken file from train_bpe + save_tiktoken_bpe; the toy specials follow the ranks."""
        ranks = _load_dense_ranks(path)
        sp = {tok: len(ranks) + i for i, tok in enumerate(TOY_SPECIALS)}
        return cls(name="toy", chat_format="toy", mergeable_ranks=ranks, special_tokens=sp, pat_str=TOY_PAT_STR,
                   bos_id=None, eos_id=sp["<|endoftext|>"], pad_id=sp["<|endoftext|>"], eot_id=sp["<|end|>"],
                   stop_ids={sp["<|end|>"], sp["<|endoftext|>"]})

    @classmethod
    def from_gguf(cls, gguf_path) -> "Tokenizer":
        """SmolLM2's GGUF vocabulary -> ChatML tokenizer. rank = token id; control tokens become specials.
        The ids are tiktoken-exact only because merge order equals id order, which is checked here."""
        import gguf  # only this loader needs it

        gguf_path = os.fspath(gguf_path)
        if not os.path.isfile(gguf_path):
            raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
        fields = gguf.GGUFReader(gguf_path).fields

        def get(key):
            if key not in fields:
                raise ValueError(f"{gguf_path}: field {key!r} is missing")
            return fields[key].contents()

        if (get("tokenizer.ggml.model"), get("tokenizer.ggml.pre")) != ("gpt2", "smollm"):
            raise ValueError(f"{gguf_path}: tokenizer.ggml.model/pre = {get('tokenizer.ggml.model')!r}/"
                             f"{get('tokenizer.ggml.pre')!r}; only 'gpt2'/'smollm' (SmolLM2) is supported")
        tokens, types, u2b = get("tokenizer.ggml.tokens"), get("tokenizer.ggml.token_type"), gpt2_unicode_to_byte()
        ranks, special = {}, {}
        for i, (tok, typ) in enumerate(zip(tokens, types)):
            if typ == 3:  # control
                special[tok] = i
            elif typ == 1 and all(ch in u2b for ch in tok):  # normal, in GPT-2 byte-to-unicode form
                ranks[bytes(u2b[ch] for ch in tok)] = i
            else:
                raise ValueError(f"{gguf_path}: tokenizer.ggml.tokens[{i}]={tok!r} (token_type {typ}) is not supported")
        last = -1
        for k, merge in enumerate(get("tokenizer.ggml.merges")):
            a, b = merge.split(" ")
            rank = ranks.get(bytes(u2b[ch] for ch in a + b), -1)
            if rank <= last:
                raise ValueError(f"{gguf_path}: tokenizer.ggml.merges[{k}]={merge!r} is missing from the vocabulary or out of id order; ranks would be inexact")
            last = rank
        template = get("tokenizer.chat_template")
        if "<|im_start|>" not in template or "<|im_end|>" not in template:
            raise ValueError(f"{gguf_path}: tokenizer.chat_template is not ChatML")
        found = regex.search(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", template)
        eot = special["<|im_end|>"]
        return cls(name="smollm2", chat_format="chatml", mergeable_ranks=ranks, special_tokens=special,
                   pat_str=SMOLLM2_PAT_STR, bos_id=None, eos_id=int(get("tokenizer.ggml.eos_token_id")),
                   pad_id=int(get("tokenizer.ggml.padding_token_id")), eot_id=eot,
                   stop_ids={eot, special["<|endoftext|>"]}, default_system=found.group(1) if found else None)
