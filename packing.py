"""From examples to batches, for training and scoring: load_examples (JSONL, validated), tokenize (chat
format, truncation) and prepare turn examples into token rows; the layouts below batch those rows so
that the model runs no token twice and computes logits only where a scored token is predicted. Each
layout equals the plain one it replaces (tests/test_packing.py):

- collate: the plain layout, one sequence per row (SFT; DPO's chosen rows then rejected rows), right-padded.
  It is what dpo.sequence_logps reads, and the reference the others are tested against.
- collate_pairs: a DPO pair in one row, prompt | chosen | rejected, the prompt run once; the rejected
  tokens see the prompt but not chosen, with RoPE positions restarting after the prompt.
- pack_documents: pretraining text cut into rows of equal length, documents kept apart by sequence ids.
- a shared prefix: rows that open with the same tokens (EFT rows: the Fig. 2 judge prompt) run that
  prefix once per micro-batch (Transformer.hidden's `past`); micro_batches puts such rows together.

scored_logits returns the logits of the scored positions of any of them, with the target token and the
sequence each belongs to; dpo.py turns those into log-probs and losses.

Imports: torch; from the project common.py (the JSONL reader, the shared-prefix rule).
"""
import math
from typing import NamedTuple

import torch

from common import MIN_SHARED_PREFIX, ceil_div, common_prefix_len, iter_jsonl

# ----------------------------------------------------------------------------- examples to rows

FIELDS = {"pretrain": ("text",), "sft": ("prompt", "response"), "dpo": ("prompt", "chosen", "rejected")}
REF_FIELDS = ("ref_chosen", "ref_rejected")


ID_FIELDS = {"pretrain": ("ids",), "sft": ("prompt_ids", "response_ids"), "dpo": ("prompt_ids", "chosen_ids", "rejected_ids")}


def check_example(ex, mode: str, where: str):
    """Raise a ValueError naming `where` (file:line) and the field if ex is not a valid `mode` example: its
    text fields (unless it carries token ids alone), its token ids if any, its reference log-probs if any."""
    if not isinstance(ex, dict):
        raise ValueError(f"{where}: expected a JSON object with fields {list(FIELDS[mode])}, got {type(ex).__name__}")
    has_ids = any(k in ex for k in ID_FIELDS[mode])
    if has_ids:
        for name in ID_FIELDS[mode]:
            v = ex.get(name)
            if not isinstance(v, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in v):
                raise ValueError(f"{where}: field {name!r} must be a list of token ids (the {mode} ids come "
                                 f"together: {list(ID_FIELDS[mode])}), got {str(v)[:80]}")
    if not has_ids or any(k in ex for k in FIELDS[mode]):  # text alone, or text beside ids: all of it
        for name in FIELDS[mode]:
            if name not in ex:
                raise ValueError(f"{where}: missing field {name!r} (a {mode} example needs {list(FIELDS[mode])})")
            if not isinstance(ex[name], str):
                raise ValueError(f"{where}: field {name!r} must be a string, got {type(ex[name]).__name__}")
    if mode == "dpo" and any(k in ex for k in REF_FIELDS):
        for name in REF_FIELDS:
            v = ex.get(name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{where}: field {name!r} must be a finite number (ref_chosen and "
                                 f"ref_rejected come together), got {v!r}")


def check_ids_match_text(ex, tokenizer, mode: str, where: str):
    """An example with both text and token ids must say the same thing twice: the ids are the text's chat
    encoding, truncated as tokenize truncates (the prompt keeps its end, a response its start). Otherwise
    which of the two is trained on would be a silent choice."""
    if mode == "pretrain" or "prompt_ids" not in ex or "prompt" not in ex or tokenizer is None:
        return
    full = {"prompt": tokenizer.encode_chat_prompt(ex["prompt"])}
    for name in FIELDS[mode][1:]:
        full[name] = tokenizer.encode_chat_response(ex[name])
    for name, ids in full.items():
        got = ex[f"{name}_ids"]
        ok = (ids[len(ids) - len(got):] == got) if name == "prompt" else ids[:len(got)] == got
        if not ok or not got:
            raise ValueError(f"{where}: field {name}_ids is not the tokenized {name!r} text: the text and the "
                             "ids disagree. Drop the *_ids fields to train on the text, or fix the text.")


def load_examples(path: str, mode: str, tokenizer=None) -> list[dict]:
    """One example per line, validated (errors name file:line and the field); with a tokenizer, token ids
    are checked against the text beside them. For pretrain, a .txt file gives one document per line."""
    if mode == "pretrain" and not path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            return [{"text": line.rstrip("\n")} for line in f if line.strip()]
    rows = []
    for lineno, ex in iter_jsonl(path):
        check_example(ex, mode, f"{path}:{lineno}")
        check_ids_match_text(ex, tokenizer, mode, f"{path}:{lineno}")
        rows.append(ex)
    if not rows:
        raise ValueError(f"{path}: no examples")
    return rows


def truncate(prompt: list[int], responses: list[list[int]], max_len: int):
    """Fit prompt + the longest response into max_len. Cut the prompt first, keeping its end (the
    question sits just before the answer) but at least half of max_len; then cut responses' ends.
    Returns (prompt, responses, truncated?)."""
    longest = max(map(len, responses))
    if len(prompt) + longest <= max_len:
        return prompt, responses, False
    keep = min(len(prompt), max(max_len - longest, max_len // 2))
    return prompt[len(prompt) - keep:], [r[:max_len - keep] for r in responses], True


def tokenize(examples: list[dict], tokenizer, mode: str, max_len: int) -> list[dict]:
    """Copies of the sft/dpo examples with token ids added through the chat format: prompt_ids +
    response_ids (sft) or chosen_ids / rejected_ids (dpo). Already tokenized examples pass through."""
    out, n_cut = [], 0
    names = ("response",) if mode == "sft" else ("chosen", "rejected")
    for i, ex in enumerate(examples):
        check_example(ex, mode, f"examples[{i}]")
        if "prompt_ids" in ex:
            check_ids_match_text(ex, tokenizer, mode, f"examples[{i}]")
            out.append(ex)
            continue
        if tokenizer is None:
            raise ValueError(f"examples[{i}] is not tokenized and no tokenizer was given")
        prompt = tokenizer.encode_chat_prompt(ex["prompt"])
        prompt, resps, cut = truncate(prompt, [tokenizer.encode_chat_response(ex[n]) for n in names], max_len)
        n_cut += cut
        out.append({**ex, "prompt_ids": prompt, **{f"{n}_ids": r for n, r in zip(names, resps)}})
    if n_cut:
        print(f"tokenize: {n_cut}/{len(examples)} {mode} examples truncated to {max_len} tokens "
              f"(prompt cut first, keeping its end)", flush=True)
    return out


def prepare(examples, mode: str, tokenizer, max_len: int) -> list[dict]:
    """Validate and tokenize; pretrain packs documents into rows; sft/pretrain rows learn n_targets."""
    if not examples:
        raise ValueError(f"no {mode} examples")
    if mode == "pretrain" and "ids" not in examples[0]:
        for i, ex in enumerate(examples):
            check_example(ex, "pretrain", f"examples[{i}]")
        bos = getattr(tokenizer, "bos_id", None) is not None
        rows = pack_documents([tokenizer.encode(ex["text"], bos=bos, eos=True) for ex in examples], max_len)
    else:
        rows = examples if mode == "pretrain" else tokenize(examples, tokenizer, mode, max_len)
    if mode != "dpo":
        rows = [{**r, "n_targets": int(collate([r], mode).loss_mask[:, 1:].sum())} for r in rows]
    return rows


# ----------------------------------------------------------------------------- layouts

class Batch(NamedTuple):
    # tokens are right-padded with 0: padding is never scored, and causal attention hides it from every
    # real token
    tokens: torch.Tensor  # (b, T) token ids
    loss_mask: torch.Tensor  # (b, T) bool: score this token
    seq_ids: torch.Tensor | None  # (b, T) packed-document ids (pretrain), else None
    n_real: int  # non-padding tokens, for tokens/s


def padded_len(T: int, pad_to: int, max_T: int | None) -> int:
    return max(T, min(ceil_div(T, pad_to) * pad_to, max_T or T))


def collate(rows: list[dict], mode: str, pad_to: int = 1, max_T: int | None = None) -> Batch:
    """sft: one row per example; dpo: 2b rows, the b chosen sequences then the b rejected ones; pretrain:
    the packed rows. pad_to: round the length up to a multiple (at most max_T), so compiled kernels see
    few shapes."""
    if mode == "pretrain":
        seq_ids = torch.tensor([r["seq_ids"] for r in rows])  # (b, T)
        mask = seq_ids >= 0
        mask[:, 1:] &= seq_ids[:, 1:] == seq_ids[:, :-1]  # never predict a document from the one before
        mask[:, 0] = False
        return Batch(torch.tensor([r["ids"] for r in rows]), mask, seq_ids, int((seq_ids >= 0).sum()))
    names = ("response_ids",) if mode == "sft" else ("chosen_ids", "rejected_ids")
    seqs = [(r["prompt_ids"], r[n]) for n in names for r in rows]
    T = padded_len(max(len(p) + len(x) for p, x in seqs), pad_to, max_T)
    tokens, mask = torch.zeros(len(seqs), T, dtype=torch.long), torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, (p, x) in enumerate(seqs):
        tokens[i, :len(p) + len(x)] = torch.tensor(p + x, dtype=torch.long)
        mask[i, len(p):len(p) + len(x)] = True
    return Batch(tokens, mask, None, sum(len(p) + len(x) for p, x in seqs))


class PackedPairs(NamedTuple):
    """DPO pairs packed one per row as prompt | chosen | rejected, so the prompt runs once, not twice.
    The rejected tokens see the prompt but not the chosen ones (model.dense_mask's `shared`), and take
    RoPE positions that restart after the prompt: every token sees exactly what it sees in its own
    unpacked sequence, so the log-probs are the same."""
    tokens: torch.Tensor  # (b, T)
    positions: torch.Tensor  # (b, T) RoPE positions
    seq_ids: torch.Tensor  # (b, T) 0 = prompt and chosen, 1 = rejected, -1 = padding
    shared: torch.Tensor  # (b,) prompt lengths: every later token of the row sees these slots
    at: tuple  # (rows, cols) (N,) each: the positions whose next token is a response token
    targets: torch.Tensor  # (N,) that next token
    seq: torch.Tensor  # (N,) its sequence: pair i's chosen = i, its rejected = b + i
    n_real: int  # tokens of the 2b unpacked sequences (what a concatenated forward runs), for tokens/s


def collate_pairs(rows: list[dict], pad_to: int = 1, max_T: int | None = None) -> PackedPairs:
    b = len(rows)
    T = padded_len(max(len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows),
                   pad_to, max_T)
    tokens, positions = torch.zeros(b, T, dtype=torch.long), torch.zeros(b, T, dtype=torch.long)
    seq_ids = torch.full((b, T), -1, dtype=torch.long)
    shared, at_r, at_c, targets, seq, n_real = [], [], [], [], [], 0
    for i, r in enumerate(rows):
        p, c, j = r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]
        P, C, R = len(p), len(c), len(j)
        if P == 0:
            raise ValueError("collate_pairs: a pair with an empty prompt has no position to predict its first token")
        tokens[i, :P + C + R] = torch.tensor(p + c + j, dtype=torch.long)
        positions[i, :P + C + R] = torch.cat([torch.arange(P + C), torch.arange(P, P + R)])
        seq_ids[i, :P + C], seq_ids[i, P + C:P + C + R] = 0, 1
        shared.append(P)
        # chosen token k is predicted at slot P-1+k; rejected token k at P-1 (the prompt's last
        # token, shared with chosen) for k = 0, else at its own previous slot P+C+k-1
        cols = list(range(P - 1, P + C - 1)) + ([P - 1] if R else []) + list(range(P + C, P + C + R - 1))
        at_r += [i] * (C + R)
        at_c += cols
        targets += c + j
        seq += [i] * C + [b + i] * R
        n_real += 2 * P + C + R
    return PackedPairs(tokens, positions, seq_ids, torch.tensor(shared), (torch.tensor(at_r), torch.tensor(at_c)),
                       torch.tensor(targets, dtype=torch.long), torch.tensor(seq), n_real)


def pack_documents(docs: list[list[int]], seq_len: int) -> list[dict]:
    """Concatenate tokenized documents and cut the stream into rows of seq_len. seq_ids number the
    documents inside a row (-1 = padding of the last row) so attention never crosses documents."""
    ids, doc = [t for d in docs for t in d], [j for j, d in enumerate(docs) for _ in d]
    rows = []
    for s in range(0, len(ids), seq_len):
        chunk, d = ids[s:s + seq_len], doc[s:s + seq_len]
        pad = seq_len - len(chunk)
        rows.append({"ids": chunk + [0] * pad, "seq_ids": [j - d[0] for j in d] + [-1] * pad})
    return rows


def row_length(row: dict) -> int:
    """Tokens a row takes in its longest layout: what sorting by length sorts by."""
    resp = max(len(row.get(k, ())) for k in ("response_ids", "chosen_ids", "rejected_ids"))
    return len(row.get("ids", ())) + len(row.get("prompt_ids", ())) + resp


def micro_batches(rows: list[dict], mb: int) -> list[list[int]]:
    """Cut a global batch into micro-batches of at most mb similar rows (the summed gradient does not
    depend on the cut); -> each micro-batch's indices into rows. Rows that open with the same
    MIN_SHARED_PREFIX tokens (EFT rows: the Fig. 2 prompt) go together, so that their long shared prefix
    runs once per micro-batch; within each group rows are sorted by length, so little padding is wasted."""
    groups: dict = {}
    for i, r in enumerate(rows):
        ids = r.get("prompt_ids", r.get("ids", ()))
        groups.setdefault(tuple(ids[:MIN_SHARED_PREFIX]) if len(ids) > MIN_SHARED_PREFIX else (), []).append(i)
    for head in [h for h, g in groups.items() if h and len(g) == 1]:  # nothing to share
        groups.setdefault((), []).extend(groups.pop(head))
    chunks = []
    for head in sorted(groups):  # the rows that share nothing first
        g = sorted(groups[head], key=lambda i: (row_length(rows[i]), i))
        chunks += [g[k:k + mb] for k in range(0, len(g), mb)]
    return chunks


# ----------------------------------------------------------------------------- running the model

def shared_prefix_len(rows: list[dict], min_len: int = MIN_SHARED_PREFIX) -> int:
    """Length of the prefix that every SFT row of a micro-batch shares and that holds no scored token, nor
    the logit of the first one (each prompt's last slot); 0 if under min_len, for one row, or in other modes."""
    if len(rows) < 2 or "response_ids" not in rows[0]:
        return 0
    prompts = [r["prompt_ids"] for r in rows]
    L = common_prefix_len(prompts, min(map(len, prompts)) - 1)
    return L if L >= min_len else 0


def prefix_logits(model, tokens, at, L: int = 0, seq_ids=None):
    """Logits (N, V) at positions `at` = (rows, cols) of tokens (b, T); with L > 0, a prefix of L tokens
    that every row shares runs once, then the rest reads its keys and values.

    Dropout: the prefix runs once for the whole micro-batch, so its dropout masks are one draw that every
    row shares, where a full forward draws one per row. Each row still sees dropout at rate p on every
    unit; only the rows' masks over the prefix are equal (tests/test_packing.py checks exactly this). At
    dropout 0 the two are equal, values and gradients. Under FSDP such a micro-batch makes two forwards,
    so dpo.deal gives the ranks micro-batches of one kind at a time."""
    if not L:
        h, _ = model.hidden(tokens, seq_ids=seq_ids)
        return model.logits(h[at])
    _, kv = model.hidden(tokens[:1, :L])  # one row: its keys and values serve every row
    h, _ = model.hidden(tokens[:, L:], L, past=kv)
    return model.logits(h[at[0], at[1] - L])


def scored_logits(model, rows: list[dict], mode: str, device, doc_mask: bool = True, pad_to: int = 1):
    """Run a micro-batch in its layout: dpo pairs packed (collate_pairs), sft rows with a shared prefix
    run once (prefix_logits), pretrain rows with document masks (doc_mask=False: plain causal attention
    across the packed documents). Returns (logits (N, V) of the positions that predict a scored token, targets (N,),
    seq (N,) the sequence of each: dpo 0..2b-1 as chosen then rejected, else the row, n_seq, n_real)."""
    max_T = model.args.max_seq_len
    if mode == "dpo":
        p = collate_pairs(rows, pad_to, max_T)
        h, _ = model.hidden(p.tokens.to(device), positions=p.positions.to(device), seq_ids=p.seq_ids.to(device),
                            shared=p.shared.to(device))
        logits = model.logits(h[tuple(t.to(device) for t in p.at)])  # (N, V)
        return logits, p.targets.to(device), p.seq.to(device), 2 * len(rows), p.n_real
    batch = collate(rows, mode, pad_to, max_T)
    tokens, mask = batch.tokens.to(device), batch.loss_mask.to(device)
    seq_ids = None if batch.seq_ids is None or not doc_mask else batch.seq_ids.to(device)
    seq, cols = mask[:, 1:].nonzero(as_tuple=True)  # position cols predicts token cols + 1 of row seq
    logits = prefix_logits(model, tokens, (seq, cols), shared_prefix_len(rows) if seq_ids is None else 0, seq_ids)
    return logits, tokens[seq, cols + 1], seq, len(rows), batch.n_real
