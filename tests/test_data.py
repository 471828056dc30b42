"""data.py: the data folder's contract (every error names file:line:field), the held-out rule, and the
readers for oasst1, ShareGPT and MT-Bench on fixtures the tests write (plus the packaged files, if installed)."""
import gzip
import hashlib
import json
import os
import time
from collections import Counter

import pytest

import common
import data
import toyworld

JUDGMENT = "The response lists four fruit words in order. Score: 4"


def good() -> dict:
    return {
        "ift": [{"prompt": "Name a fruit.", "response": "Apple."}, {"prompt": "Say hi.", "response": "Hi!"}],
        "eft": [{"instruction": "Name a fruit.", "response": "Apple.", "judgment": JUDGMENT}],
        "eval": [{"prompt": "Name a vegetable."}],
        "rm": [{"instruction": "Name a colour.", "responses": ["Red.", "Blue, I think."], "scores": [4, 2.5]}],
    }


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def folder_with(tmp_path, kind, lines) -> str:
    """A valid folder whose `kind` file is replaced by the given raw lines."""
    d = good()
    data.write_data_dir(str(tmp_path), d)
    write_lines(tmp_path / data.CONTRACT[kind]["file"], lines)
    return str(tmp_path)


# ----------------------------------------------------------------------------- the contract

BAD_ROWS = [  # (kind, second line of its file, the error expected at line 2)
    ("ift", {"prompt": "Say hi."}, r"ift.jsonl:2: missing field 'response' \(ift.jsonl rows need: prompt, response\)"),
    ("ift", {"prompt": "Say hi.", "response": 3}, r"ift.jsonl:2: field 'response' must be a non-empty string, got 3"),
    ("ift", {"prompt": "  \n", "response": "x"}, r"ift.jsonl:2: field 'prompt' must be a non-empty string, got '  \\n'"),
    ("ift", {"prompt": "Say hi.", "response": ""}, r"ift.jsonl:2: field 'response' must be a non-empty string, got ''"),
    ("eft", {"instruction": "a", "response": "b"}, r"eft.jsonl:2: missing field 'judgment'"),
    ("eft", {"instruction": "a", "response": "b", "judgment": "Fine."},
     r"eft.jsonl:2: field 'judgment' must end in 'Score: k' with k in 0..5"),
    # parse_score reads the LAST "Score:": a valid score earlier does not save an out-of-range one after it
    ("eft", {"instruction": "a", "response": "b", "judgment": "Score: 3. Then again, Score: 7"},
     r"eft.jsonl:2: field 'judgment' must end in 'Score: k'"),
    ("eft", {"instruction": None, "response": "b", "judgment": JUDGMENT},
     r"eft.jsonl:2: field 'instruction' must be a non-empty string, got None"),
    ("eval", {"question": "x"}, r"eval.jsonl:2: missing field 'prompt'"),
    ("eval", {"prompt": ["x"]}, r"eval.jsonl:2: field 'prompt' must be a non-empty string, got \['x'\]"),
    ("rm", {"instruction": "i", "responses": ["only one"], "scores": [1]},
     r"rm.jsonl:2: field 'responses' must be a list of at least 2 non-empty strings"),
    ("rm", {"instruction": "i", "responses": "ab", "scores": [1, 2]}, r"rm.jsonl:2: field 'responses' must be a list"),
    ("rm", {"instruction": "i", "responses": ["a", " "], "scores": [1, 2]},
     r"rm.jsonl:2: field 'responses\[1\]' must be a non-empty string, got ' '"),
    ("rm", {"instruction": "i", "responses": ["a", "b", "c"], "scores": [1, 2]},
     r"rm.jsonl:2: field 'scores' must be a list with one number per response \(3\), got \[1, 2\]"),
    ("rm", {"instruction": "i", "responses": ["a", "b"], "scores": [1, "2"]},
     r"rm.jsonl:2: field 'scores\[1\]' must be a finite number, got '2'"),
    ("rm", {"instruction": "i", "responses": ["a", "b"], "scores": [True, 0]},
     r"rm.jsonl:2: field 'scores\[0\]' must be a finite number, got True"),
    ("rm", {"instruction": "i", "responses": ["a", "b"]}, r"rm.jsonl:2: missing field 'scores'"),
]


@pytest.mark.parametrize("kind,row,match", BAD_ROWS)
def test_every_contract_error_names_file_line_and_field(tmp_path, kind, row, match):
    first = json.dumps(good()[kind][0])
    d = folder_with(tmp_path, kind, [first, json.dumps(row)])
    with pytest.raises(ValueError, match=match):
        data.load_data_dir(d)
    # the same rows handed to check_rows (as from read_jsonl) give the same message
    with pytest.raises(ValueError, match=match):
        data.check_rows([json.loads(first), row], kind, os.path.join(d, data.CONTRACT[kind]["file"]))


def test_non_finite_scores_rejected(tmp_path):
    # Python's json reads NaN and Infinity; the contract does not accept them
    for literal in ("NaN", "Infinity"):
        d = folder_with(tmp_path, "rm", ['{"instruction": "i", "responses": ["a", "b"], "scores": [1, %s]}' % literal])
        with pytest.raises(ValueError, match=rf"rm.jsonl:1: field 'scores\[1\]' must be a finite number, got {literal.lower()[:3]}"):
            data.load_data_dir(d)


def test_line_numbers_count_blank_lines_and_bad_json(tmp_path):
    ok = json.dumps(good()["ift"][0])
    d = folder_with(tmp_path, "ift", [ok, "", "   ", json.dumps({"prompt": "p", "response": 3})])
    with pytest.raises(ValueError, match=r"ift.jsonl:4: field 'response'"):  # line 4 of the file, row 2
        data.load_data_dir(d)
    d = folder_with(tmp_path, "ift", [ok, "", '{"prompt": "p", "response": }'])
    with pytest.raises(ValueError, match=r"ift.jsonl:3: invalid JSON \(Expecting value at column 29\)"):
        data.load_data_dir(d)
    d = folder_with(tmp_path, "eval", ['{"prompt": "x"}', '["a list"]'])
    with pytest.raises(ValueError, match=r"eval.jsonl:2: expected a JSON object, got list"):
        data.load_data_dir(d)
    (tmp_path / "eval.jsonl").write_bytes(b'{"prompt": "x"}\n{"prompt": "\xff"}\n')
    with pytest.raises(ValueError, match=r"eval.jsonl:2: not UTF-8"):
        data.load_data_dir(str(tmp_path))


def test_missing_and_empty_files(tmp_path):
    data.write_data_dir(str(tmp_path), good())
    os.remove(tmp_path / "eval.jsonl")
    with pytest.raises(FileNotFoundError, match=r"eval.jsonl: missing. A data folder holds:\n  ift.jsonl \(required\): prompt"):
        data.load_data_dir(str(tmp_path))
    write_lines(tmp_path / "eval.jsonl", [])
    with pytest.raises(ValueError, match=r"eval.jsonl: no rows"):
        data.load_data_dir(str(tmp_path))
    write_lines(tmp_path / "eval.jsonl", ['{"prompt": "q"}'])
    os.remove(tmp_path / "rm.jsonl")  # optional
    write_lines(tmp_path / "eft.jsonl", [])  # allowed, with a warning
    with pytest.warns(UserWarning, match="M1 learns no judging"):
        loaded = data.load_data_dir(str(tmp_path))
    assert loaded["rm"] == [] and loaded["eft"] == [] and loaded["eval"] == [{"prompt": "q"}]


@pytest.mark.parametrize("kind,field", [("eval", "prompt"), ("rm", "instruction")])
def test_heldout_rule(tmp_path, kind, field):
    d = good()
    d[kind][0][field] = "  SAY HI. "  # the IFT prompt "Say hi." (row 2), up to case and surrounding spaces
    with pytest.raises(ValueError, match=rf"{kind}.jsonl:1: held-out {field} .* is also a training prompt at "
                                         rf".*ift.jsonl:2: held-out data must never enter training"):
        data.write_data_dir(str(tmp_path / "w"), d)
    assert not os.path.exists(tmp_path / "w")  # checked before anything is written
    ok = good()
    data.write_data_dir(str(tmp_path), ok)
    rows = [json.dumps(r) for r in ok[kind]] + [json.dumps({**ok[kind][0], field: "say hi."})]
    write_lines(tmp_path / data.CONTRACT[kind]["file"], [""] + rows)  # blank first line: the clash is on line 3
    with pytest.raises(ValueError, match=rf"{kind}.jsonl:3: held-out .*ift.jsonl:2"):
        data.load_data_dir(str(tmp_path))


def test_heldout_rule_covers_eft_instructions(tmp_path):
    d = good()
    d["eval"][0]["prompt"] = "name a fruit."  # not an IFT prompt here, but EFT's instruction (trained in Fig. 2)
    d["ift"] = d["ift"][1:]
    with pytest.raises(ValueError, match=r"eval.jsonl:1: held-out prompt .* training instruction at .*eft.jsonl:1"):
        data.write_data_dir(str(tmp_path), d)


def test_round_trip_keeps_rows_and_extra_fields(tmp_path):
    d = good()
    d["ift"][0]["response"] = "Apple \u2028 line separator, émoji 🍎, a \"quote\" and\nnew line"
    d["rm"][0]["instructions"] = [{"kind": "lowercase"}]  # a world's ground truth, kept unchanged
    d["eft"][0]["score"] = 4
    data.write_data_dir(str(tmp_path), d)
    assert data.load_data_dir(str(tmp_path)) == d
    # one object per line, non-ASCII written as itself
    text = (tmp_path / "ift.jsonl").read_text(encoding="utf-8")
    assert len(text.split("\n")) == 3 and "🍎" in text
    assert common.read_jsonl(str(tmp_path / "rm.jsonl")) == d["rm"]


def test_write_data_dir_refuses_bad_data_and_unknown_kinds(tmp_path):
    d = good()
    d["ift"][1]["response"] = " "
    with pytest.raises(ValueError, match=r"ift.jsonl:2: field 'response'"):
        data.write_data_dir(str(tmp_path / "a"), d)
    with pytest.raises(ValueError, match="unknown data kinds"):
        data.write_data_dir(str(tmp_path / "b"), {**good(), "dpo": []})
    with pytest.raises(ValueError, match="data has no 'eval' rows"):
        data.write_data_dir(str(tmp_path / "c"), {k: v for k, v in good().items() if k != "eval"})
    assert not any(os.path.exists(tmp_path / x) for x in "abc")


def test_toy_world_files_satisfy_the_contract(tmp_path):
    """What loop.py writes for the toy world (its `data = {...}`), at small sizes."""
    d = {"ift": toyworld.seed_ift(300, 0), "eft": toyworld.seed_eft(300, 1),
         "eval": [{"prompt": p} for p in toyworld.eval_prompts(100, 2)], "rm": toyworld.rm_set(20, 4, 3)}
    data.write_data_dir(str(tmp_path), d)
    assert data.load_data_dir(str(tmp_path)) == d


# ----------------------------------------------------------------------------- oasst1

def msg(mid, role, text, *, lang="en", rank=None, deleted=False, review=True, replies=()):
    return {"message_id": mid, "role": role, "text": text, "lang": lang, "rank": rank, "deleted": deleted,
            "review_result": review, "replies": list(replies)}


def oasst_trees() -> list[dict]:
    def tree(tid, prompt):
        return {"message_tree_id": tid, "tree_state": "ready_for_export", "prompt": prompt}
    return [
        tree("A", msg("A", "prompter", "What is a fruit?", replies=[
            msg("A1", "assistant", "An apple is a fruit.", rank=1),
            msg("A0", "assistant", "A fruit is the seed-bearing part of a plant.", rank=0, replies=[
                msg("A00", "prompter", "Second turn: never a first-turn prompt.")]),
            msg("A2", "assistant", "Dunno.", rank=2),
            msg("Ax", "assistant", "Deleted reply.", rank=3, deleted=True)])),
        tree("B", msg("B", "prompter", "Was ist eine Frucht?", lang="de", replies=[
            msg("B0", "assistant", "Ein Apfel.", lang="de", rank=0)])),
        tree("C", msg("C", "prompter", "Name a colour.", replies=[  # its rank-0 reply failed review
            msg("C0", "assistant", "Red.", rank=0, review=False),
            msg("C1", "assistant", "Blue.", rank=1),
            msg("C2", "assistant", "Green, or maybe teal.", rank=2)])),
        tree("D", msg("D", "prompter", "A deleted prompt.", deleted=True, replies=[
            msg("D0", "assistant", "Reply to a deleted prompt.", rank=0)])),
        tree("E", msg("E", "prompter", "Say hello.", replies=[
            msg("E0", "assistant", "Hello!", rank=0),
            msg("E1", "assistant", "Not ranked yet.")])),
    ]


def flatten(trees) -> list[dict]:
    """The messages file's layout: one message per line with its parent_id, replies removed."""
    out = []

    def walk(m, parent, tid):
        out.append({**{k: v for k, v in m.items() if k != "replies"}, "parent_id": parent, "message_tree_id": tid})
        for r in m["replies"]:
            walk(r, m["message_id"], tid)
    for t in trees:
        walk(t["prompt"], None, t["message_tree_id"])
    return out


EXPECTED_ROWS = [
    {"tree_id": "A", "prompt_id": "A", "prompt": "What is a fruit?", "replies": [
        {"message_id": "A1", "text": "An apple is a fruit.", "rank": 1},
        {"message_id": "A0", "text": "A fruit is the seed-bearing part of a plant.", "rank": 0},
        {"message_id": "A2", "text": "Dunno.", "rank": 2}]},
    {"tree_id": "C", "prompt_id": "C", "prompt": "Name a colour.", "replies": [
        {"message_id": "C1", "text": "Blue.", "rank": 1}, {"message_id": "C2", "text": "Green, or maybe teal.", "rank": 2}]},
    {"tree_id": "E", "prompt_id": "E", "prompt": "Say hello.", "replies": [
        {"message_id": "E0", "text": "Hello!", "rank": 0}, {"message_id": "E1", "text": "Not ranked yet.", "rank": None}]},
]


@pytest.mark.parametrize("layout", ["trees", "trees gz", "messages", "messages reversed"])
def test_read_oasst1(tmp_path, layout):
    rows = oasst_trees() if layout.startswith("trees") else flatten(oasst_trees())
    if layout == "messages reversed":  # children before their parents: the rebuild must not depend on order
        rows = rows[::-1]
    path = str(tmp_path / "oasst.jsonl")
    write_lines(path, [json.dumps(r) for r in rows])
    if layout == "trees gz":  # as the dataset is distributed
        with open(path, "rb") as src, gzip.open(path + ".gz", "wb") as dst:
            dst.write(src.read())
        path += ".gz"
    got, stats = data.read_oasst1(path)
    if layout == "messages reversed":  # trees come in the order of their roots; replies in reverse file order
        got = sorted(got, key=lambda r: r["tree_id"])
        for r in got:
            r["replies"].reverse()
    assert got == EXPECTED_ROWS
    assert stats["trees read"] == 5 and stats["prompts kept"] == 3 and stats["replies kept"] == 7
    assert stats["skipped prompt: language is not en"] == 1 and stats["skipped prompt: deleted"] == 1
    assert stats["skipped reply: deleted"] == 1 and stats["skipped reply: failed review"] == 1
    # the deleted prompt's reply and the German reply are never looked at: only kept prompts' replies count
    assert sum(v for k, v in stats.items() if k.startswith("skipped reply")) == 2

    ift_stats = Counter()
    assert data.oasst1_ift(got, ift_stats) == [
        {"prompt": "Say hello.", "response": "Hello!", "tree_id": "E"},
        {"prompt": "What is a fruit?", "response": "A fruit is the seed-bearing part of a plant.", "tree_id": "A"},
    ][::-1]
    assert ift_stats == {"IFT: skipped, no rank-0 reply": 1}  # tree C
    rm_stats = Counter()
    rm = data.oasst1_rm(got, rm_stats)
    # scores = how many ranked siblings each reply beats: ranks (1, 0, 2) -> (1, 2, 0); C's (1, 2) -> (1, 0)
    assert [(r["tree_id"], r["ranks"], r["scores"]) for r in rm] == [("A", [1, 0, 2], [1, 2, 0]), ("C", [1, 2], [1, 0])]
    assert rm[1]["responses"] == ["Blue.", "Green, or maybe teal."]
    assert rm_stats == {"RM: skipped, fewer than 2 ranked replies": 1}  # tree E: one ranked reply
    data.check_rows(rm, "rm", "rm")


def test_read_oasst1_other_language_and_errors(tmp_path):
    path = str(tmp_path / "t.jsonl")
    write_lines(path, [json.dumps(t) for t in oasst_trees()])
    rows, _ = data.read_oasst1(path, lang="de")
    assert [(r["tree_id"], [x["text"] for x in r["replies"]]) for r in rows] == [("B", ["Ein Apfel."])]
    rows, _ = data.read_oasst1(path, lang=None)
    assert [r["tree_id"] for r in rows] == ["A", "B", "C", "E"]
    write_lines(path, [json.dumps({"foo": 1})])
    with pytest.raises(ValueError, match=r"t.jsonl:1: neither an oasst1 message tree"):
        data.read_oasst1(path)
    bad = oasst_trees()
    bad[0]["prompt"]["replies"][0]["rank"] = "first"
    write_lines(path, [json.dumps(t) for t in bad])
    with pytest.raises(ValueError, match=r"t.jsonl:1: reply A1: field 'rank' must be an integer >= 0 or null"):
        data.read_oasst1(path)


def heldout_order(ids) -> list[str]:
    return sorted(ids, key=lambda s: hashlib.sha256(s.encode()).digest()[:8])


def test_oasst1_split_keeps_every_tree_on_one_side(tmp_path):
    ids = [f"tree-{i}" for i in range(8)]
    order = heldout_order(ids)  # the stable hash, computed here independently
    rows = [{"tree_id": t, "prompt_id": t, "prompt": f"Prompt of {t}?",
             "replies": [{"message_id": t + "a", "text": "best", "rank": 0}, {"message_id": t + "b", "text": "ok", "rank": 1}]}
            for t in ids]
    rows[ids.index(order[5])]["prompt"] = "PROMPT OF " + order[0] + "?"  # a training tree repeats a held-out prompt
    stats = Counter()
    d = data.oasst1_data(rows, 2, stats)
    assert [r["tree_id"] for r in d["eval"]] == sorted(order[:2], key=ids.index)
    assert sorted(r["tree_id"] for r in d["rm"]) == sorted(order[:2])
    assert sorted(r["tree_id"] for r in d["ift"]) == sorted(order[2:5] + order[6:])
    assert stats["IFT: dropped, prompt equals a held-out prompt"] == 1
    data.write_data_dir(str(tmp_path), d)  # passes the held-out rule
    with pytest.raises(ValueError, match="--n-eval must be between 1 and 7"):
        data.oasst1_data(rows, 8, Counter())


def test_oasst1_cli(tmp_path, capsys):
    trees = oasst_trees()
    for i in range(6):  # more English trees with a rank-0 reply, so both sides of the split have some
        trees.append({"message_tree_id": f"T{i}", "prompt": msg(f"T{i}", "prompter", f"Question {i}?", replies=[
            msg(f"T{i}a", "assistant", f"Answer {i}.", rank=0), msg(f"T{i}b", "assistant", "Meh.", rank=1)])})
    src = str(tmp_path / "m.messages.jsonl")
    write_lines(src, [json.dumps(m) for m in flatten(trees)])
    out = str(tmp_path / "out")
    data.main(["oasst1", src, "--out", out, "--n-eval", "3"])
    printed = capsys.readouterr().out
    assert "eft.jsonl is empty" in printed and "layout: messages: 1" in printed
    with pytest.warns(UserWarning, match="M1 learns no judging"):
        d = data.load_data_dir(out)
    assert len(d["eval"]) == 3 and d["eft"] == []
    held = {r["tree_id"] for r in d["eval"]}
    assert held == set(heldout_order(["A", "C", "E"] + [f"T{i}" for i in range(6)])[:3])
    assert not held & {r["tree_id"] for r in d["ift"]} and {r["tree_id"] for r in d["rm"]} <= held
    assert len(d["ift"]) == 8 - len(held - {"C"})  # every kept tree but C has a rank-0 reply
    with pytest.warns(UserWarning):
        data.main(["check", out])
    assert "eval.jsonl 3 rows" in capsys.readouterr().out


# ----------------------------------------------------------------------------- ShareGPT

def conv(cid, *turns):
    return {"id": cid, "conversations": [{"from": f, "value": v} for f, v in turns]}


SHAREGPT = [
    conv("ok1", ("human", "Hi there"), ("gpt", "Hello! ünïcødé ✓"), ("human", "more"), ("gpt", "sure")),
    conv("gptfirst", ("gpt", "I start"), ("human", "odd")),
    conv("sys", ("system", "be nice"), ("human", "hi"), ("gpt", "hello")),
    conv("empty"),
    conv("single", ("human", "anyone?")),
    conv("blank", ("human", "   "), ("gpt", "what?")),
    conv("ok2", ("human", "Quote \" and \\ backslash"), ("gpt", "Done.")),
]


def cut_array(records, cut_text) -> bytes:
    """An indented JSON array of `records`, then a last record cut off inside a string, as the packaged file."""
    body = json.dumps(records, indent=2, ensure_ascii=False)[:-2]  # drop the closing "\n]"
    return (body + ",\n  " + cut_text).encode("utf-8")


def test_iter_json_array_keeps_complete_records_of_a_cut_file(tmp_path):
    cut = '{"id": "cut", "conversations": [{"from": "human", "value": "cut in the middle of é'
    raw = cut_array(SHAREGPT, cut)[:-1]  # ...and inside é's two UTF-8 bytes
    path = tmp_path / "cut.json"
    path.write_bytes(raw)
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw.decode("utf-8", errors="replace"))
    for chunk in (1, 2, 7, 64, 1 << 20):  # window ends everywhere, including inside escapes and characters
        stats = {}
        assert list(data.iter_json_array(str(path), stats, chunk_chars=chunk)) == SHAREGPT
        assert stats["records"] == 7 and stats["truncated"] is True
        assert stats["tail_bytes"] == len(cut.encode("utf-8")) - 1
        assert stats["tail_line"] == raw[:-stats["tail_bytes"]].count(b"\n") + 1
    convs, stats = data.read_sharegpt(str(path))
    first = data.sharegpt_first_turns(convs, stats)
    assert first == [{"id": "ok1", "prompt": "Hi there", "response": "Hello! ünïcødé ✓"},
                     {"id": "ok2", "prompt": "Quote \" and \\ backslash", "response": "Done."}]
    assert stats["conversations"] == 7 and stats["first turns human -> gpt"] == 2
    assert {k: v for k, v in stats.items() if "skipped" in k} == {
        "first turns: skipped, a single message": 1, "first turns: skipped, empty conversation": 1,
        "first turns: skipped, empty first turn": 1, "first turns: skipped, starts gpt -> human": 1,
        "first turns: skipped, starts system -> human": 1}


def test_iter_json_array_whole_cut_between_and_broken(tmp_path):
    path = str(tmp_path / "a.json")
    values = [1, 23, 456, -7.5e3, "s", None, True, [], {"k": [1, {"x": 2}]}]
    with open(path, "w") as f:
        json.dump(values, f)
    for chunk in (1, 3, 1 << 20):  # numbers that end at the window's end are read again with more text
        stats = {}
        assert list(data.iter_json_array(path, stats, chunk_chars=chunk)) == values
        assert stats["truncated"] is False and stats["records"] == len(values)
    with open(path, "w") as f:
        f.write('[{"a": 1},\n {"b": 2},  ')  # cut between two records
    stats = {}
    assert list(data.iter_json_array(path, stats, chunk_chars=4)) == [{"a": 1}, {"b": 2}]
    assert stats["truncated"] is True and stats["tail_bytes"] == 0
    with open(path, "w") as f:
        f.write('[{"a": 1},\n {"b": 2 "c": 3}, {"d": 4}]')  # a real syntax error, not a cut
    with pytest.raises(ValueError, match=r"a.json:2:10: invalid JSON \(Expecting ',' delimiter\)"):
        list(data.iter_json_array(path, {}, chunk_chars=2))
    with open(path, "w") as f:
        f.write('[{"a": 1} {"b": 2}]')
    for chunk in (1, 5, 1 << 20):  # the column stays right after the window drops what it read
        with pytest.raises(ValueError, match=r"a.json:1:11: expected ',' or ']' after a record"):
            list(data.iter_json_array(path, {}, chunk_chars=chunk))
    with open(path, "w") as f:
        f.write('  {"a": 1}')
    with pytest.raises(ValueError, match=r"a.json:1:3: expected '\[' \(a JSON array\)"):
        list(data.iter_json_array(path, {}))
    with open(path, "w") as f:
        f.write('[{"conversations": [{"from": "human"}]}]')
    with pytest.raises(ValueError, match=r"a.json: record 0 \(id None\): field 'conversations\[0\]'"):
        data.read_sharegpt(path)


def packaged(find):
    try:
        return find()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_real_sharegpt_file():
    path = packaged(data.sharegpt_path)
    convs, stats = data.read_sharegpt(path)
    again = {}
    assert sum(1 for _ in data.iter_json_array(path, again, chunk_chars=1 << 22)) == len(convs)  # stable
    assert stats["truncated"] is True and again["tail_bytes"] == stats["tail_bytes"] > 0
    assert len(convs) > 17000 and all(isinstance(c["id"], str) for c in convs)  # ids repeat: not keys
    assert 11000 < len(data.sharegpt_first_turns(convs)) < len(convs)


# ----------------------------------------------------------------------------- MT-Bench

def test_real_mtbench_questions():
    qs = data.read_mtbench(packaged(data.mtbench_path))
    assert len(qs) == 80 and all(len(q["turns"]) == 2 for q in qs)
    assert len({q["question_id"] for q in qs}) == 80 and len({q["category"] for q in qs}) == 8


def test_read_mtbench_errors(tmp_path):
    path = str(tmp_path / "question.jsonl")
    q = {"question_id": 81, "category": "writing", "turns": ["a", "b"]}
    write_lines(path, [json.dumps(q), json.dumps({**q, "reference": ["r"]})])
    with pytest.raises(ValueError, match=r"question.jsonl:2: field 'question_id' must be an integer not seen before, got 81"):
        data.read_mtbench(path)
    write_lines(path, [json.dumps(q), json.dumps({**q, "question_id": 82, "turns": []})])
    with pytest.raises(ValueError, match=r"question.jsonl:2: field 'turns' must be a list of non-empty strings"):
        data.read_mtbench(path)
    write_lines(path, [json.dumps({**q, "reference": ["r"]})])
    assert data.read_mtbench(path) == [q]


def test_mtbench_answers_row_is_fastchats_format():
    t0 = time.time()
    row = data.mtbench_answers_row(81, "M1", ["first answer", "second answer"])
    # the keys and nesting of FastChat's gen_model_answer.py ans_json
    assert list(row) == ["question_id", "answer_id", "model_id", "choices", "tstamp"]
    assert row["choices"] == [{"index": 0, "turns": ["first answer", "second answer"]}]
    assert row["question_id"] == 81 and row["model_id"] == "M1" and t0 <= row["tstamp"] <= time.time()
    alphabet = set("23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")  # shortuuid's
    assert len(row["answer_id"]) == 22 and set(row["answer_id"]) <= alphabet
    same = data.mtbench_answers_row(81, "M1", ["first answer", "second answer"], tstamp=1.0)
    other = data.mtbench_answers_row(81, "M1", ["first answer", "other"], tstamp=1.0)
    assert same["answer_id"] == row["answer_id"] != other["answer_id"] and same["tstamp"] == 1.0
    json.dumps(row)  # one line of an answer file
    with pytest.raises(ValueError, match="turns must be a list of strings"):
        data.mtbench_answers_row(81, "M1", "just one string")
