"""packing.py: examples to token rows (validation, chat format, truncation), and every batch layout against
the plain one it replaces: packed DPO pairs, packed documents, scored positions only, a shared prefix run
once (with and without dropout), micro-batches."""
import json

import pytest
import torch

import dpo
import packing
from helpers import ByteTok, dpo_data, tiny_model


def test_load_jsonl_errors_name_file_line_field(tmp_path):
    p = tmp_path / "pairs.jsonl"
    good = json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"})
    cases = {"{not json": "invalid JSON",
             json.dumps({"prompt": "a", "chosen": "b"}): "missing field 'rejected'",
             json.dumps({"prompt": 3, "chosen": "b", "rejected": "c"}): "field 'prompt' must be a string",
             json.dumps({"prompt": "a", "chosen": "b", "rejected": "c", "ref_chosen": -1.0}): "'ref_rejected'"}
    for bad, msg in cases.items():
        p.write_text(good + "\n\n" + bad + "\n")
        with pytest.raises(ValueError) as e:
            packing.load_examples(str(p), "dpo")
        assert f"{p}:3:" in str(e.value) and msg in str(e.value)
    p.write_text(good + "\n")
    assert packing.load_examples(str(p), "dpo") == [json.loads(good)]



def test_tokenize_chat_format_mask_and_truncation(capsys):
    tok = ByteTok()
    ex = packing.tokenize([{"prompt": "hi", "response": "yo"}], tok, "sft", max_len=64)[0]
    assert ex["prompt_ids"] == tok.encode_chat_prompt("hi") and ex["response_ids"] == [ord("y"), ord("o"), 259]
    b = packing.collate([ex], "sft")
    n_p = len(ex["prompt_ids"])
    assert b.loss_mask[0].tolist() == [False] * n_p + [True] * 3
    # 60-token prompt + 20-token response into 40: the prompt keeps its last 20 tokens (max_len // 2)
    long = {"prompt": "p" * 50 + "END", "response": "r" * 19}
    cut = packing.tokenize([long, {"prompt": "ok", "response": "ok"}], tok, "sft", max_len=40)
    assert len(cut[0]["prompt_ids"]) == 20 and tok.decode(cut[0]["prompt_ids"]).endswith("END\nA:")
    assert cut[0]["response_ids"] == tok.encode_chat_response("r" * 19)  # fits: 20 + 20
    assert "1/2 sft examples truncated" in capsys.readouterr().out
    p, (c, r), was_cut = packing.truncate(list(range(10)), [list(range(30)), [1]], max_len=20)
    assert was_cut and p == list(range(10)) and c == list(range(10)) and r == [1]  # prompt keeps max_len // 2
    p, (c,), was_cut = packing.truncate(list(range(30)), [list(range(5))], max_len=20)
    assert was_cut and p == list(range(15, 30)) and c == list(range(5))  # prompt cut first, its end kept



def test_pack_documents_and_masks():
    rows = packing.pack_documents([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4)
    assert [r["ids"] for r in rows] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 0, 0, 0]]
    assert [r["seq_ids"] for r in rows] == [[0, 0, 0, 1], [0, 1, 1, 1], [0, -1, -1, -1]]
    mask = packing.collate(rows, "pretrain").loss_mask.tolist()
    assert mask == [[False, True, True, False], [False, False, True, True], [False] * 4]



def test_packed_documents_do_not_attend_across():
    m = tiny_model().eval()
    a, b = [5, 6, 7, 8, 9], [10, 11, 12]
    row = packing.collate(packing.pack_documents([a, b], 8), "pretrain")
    packed = m(row.tokens, seq_ids=row.seq_ids)[0, 5:]
    alone = m(torch.tensor([b]))[0]
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)  # RoPE is relative: offset is harmless



def _grads(m):
    return {n: p.grad.clone() for n, p in m.named_parameters()}



def test_packed_pairs_equal_separate_sequences_values_and_gradients():
    # The trainer packs each pair as prompt | chosen | rejected (prompt once, output layer only where a
    # response token is predicted); it must give the log-probs and gradients of the plain concatenated
    # forward of 2b separate sequences, scored by sequence_logps over the full logits.
    tok, m = ByteTok(), tiny_model(seed=3, dropout=0.0)
    rows = packing.tokenize(dpo_data(5), tok, "dpo", 64)
    rows[1]["rejected_ids"] = rows[1]["rejected_ids"][:1]  # a one-token response, predicted from the prompt alone
    w = torch.randn(10)  # an arbitrary weighting, so each sequence's gradient counts
    b = packing.collate(rows, "dpo")
    want = dpo.sequence_logps(m(b.tokens), b.tokens, b.loss_mask)  # (10,)
    (want * w).sum().backward()
    want_g = _grads(m)
    m.zero_grad()
    got, counts, n_real = dpo.batch_logps(m, rows, "dpo", torch.device("cpu"))
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert counts.tolist() == b.loss_mask[:, 1:].sum(-1).tolist() and n_real == b.n_real
    (got * w).sum().backward()
    for n, p in m.named_parameters():
        assert torch.allclose(p.grad, want_g[n], atol=1e-5), n



def test_sft_scored_positions_equal_full_logits_with_shared_prefix():
    # SFT rows sharing a long prefix (as EFT rows share the Fig. 2 prompt) run it once, and the output
    # layer runs only where a response token is predicted: same log-probs and gradients as the full forward.
    tok, m = ByteTok(), tiny_model(seed=4, dropout=0.0)
    head = "x" * 40
    rows = packing.tokenize([{"prompt": head + str(i), "response": "r" * (i + 1)} for i in range(4)], tok, "sft", 128)
    b = packing.collate(rows, "sft")
    assert packing.shared_prefix_len(rows) > 32  # the shared-prefix path is taken
    want = dpo.sequence_logps(m(b.tokens), b.tokens, b.loss_mask)
    want.sum().backward()
    want_g = _grads(m)
    m.zero_grad()
    got, counts, _ = dpo.batch_logps(m, rows, "sft", torch.device("cpu"))
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    got.sum().backward()
    for n, p in m.named_parameters():
        assert torch.allclose(p.grad, want_g[n], atol=1e-5), n



def test_shared_prefix_training_step_equals_plain_forward(monkeypatch):
    """EFT-like rows share a long prompt head: the prefix pass must change neither loss nor gradients."""
    head = "Review the response below with the additive 5-point scoring system. " * 2
    examples = [{"prompt": head + f"User: task {i}" + "z" * i, "response": f"ok {i}. Score: {i % 6}"} for i in range(6)]
    rows = packing.tokenize(examples, ByteTok(), "sft", 512)
    L = packing.shared_prefix_len(rows)
    assert L >= len(head)  # the head plus the chat prefix, and no scored token inside it

    def loss_and_grads(prefix_len):
        monkeypatch.setattr(packing, "shared_prefix_len", lambda *a, **k: prefix_len)
        m = tiny_model(seed=3, vocab_size=260)
        m.zero_grad()
        loss, _, _ = dpo.micro_batch_loss(m, rows, dpo.TrainConfig(mode="sft", steps=1), torch.device("cpu"), 50.0, None)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in m.parameters()]

    l_plain, g_plain = loss_and_grads(0)
    l_prefix, g_prefix = loss_and_grads(L)
    assert l_prefix == pytest.approx(l_plain, rel=1e-5)
    for a, b in zip(g_plain, g_prefix):
        assert torch.allclose(a, b, atol=1e-6)



def test_micro_batches_keep_every_row_once_and_group_shared_prompts():
    head = list(range(100, 140))  # 40 shared prompt tokens (> MIN_SHARED_PREFIX)
    rows = ([{"prompt_ids": head + [i], "response_ids": [1] * (i % 5 + 1)} for i in range(7)] +
            [{"prompt_ids": [i, i + 1], "response_ids": [2] * (i % 3 + 1)} for i in range(9)])
    chunks = [[rows[i] for i in c] for c in packing.micro_batches(rows, 4)]
    flat = [r for c in chunks for r in c]
    assert sorted(map(id, flat)) == sorted(map(id, rows)) and [len(c) for c in chunks] == [4, 4, 1, 4, 3]
    shares = [[r["prompt_ids"][:40] == head for r in c] for c in chunks]
    assert shares == [[False] * 4, [False] * 4, [False], [True] * 4, [True] * 3]  # no micro-batch mixes them
    lengths = [packing.row_length(r) for r in flat]  # within a group, by length
    assert lengths[:9] == sorted(lengths[:9]) and lengths[9:] == sorted(lengths[9:])
    assert packing.micro_batches(rows[:5], 2)[-1] == [4]  # the longest, alone: the rest comes last
    lone = [rows[0]] + rows[7:]  # a head that only one row has shares nothing: it joins the others
    assert [len(c) for c in packing.micro_batches(lone, 4)] == [4, 4, 2]


def test_shared_prefix_dropout_is_one_draw_for_all_rows():
    """With dropout on, the prefix runs once per micro-batch, so every row gets the same dropout masks
    over the prefix (one draw), where a full forward draws one per row. The exact claim: the shared-prefix
    logits equal a full forward whose dropout masks are the prefix pass's, repeated for every row, then
    each row's own; and they differ from a full forward with per-row prefix masks."""
    tok, m = ByteTok(), tiny_model(seed=6, dropout=0.3)
    m.train()
    head = "Review the response below with the additive 5-point scoring system. "
    rows = packing.tokenize([{"prompt": head + f"task {i}", "response": "ok" * (i + 1)} for i in range(3)], tok, "sft", 256)
    b = packing.collate(rows, "sft")
    L = packing.shared_prefix_len(rows)
    assert L >= len(head)
    at = b.loss_mask[:, 1:].nonzero(as_tuple=True)
    drops = [layer.dropout for layer in m.layers]  # each used twice per block: attention, then feed-forward
    masks = []

    def recording(x):
        out = torch.nn.functional.dropout(x, 0.3, True)
        masks.append((out != 0).float() / 0.7)  # x is never exactly 0 here
        return out
    for d in drops:
        d.forward = recording
    with torch.no_grad():
        got = packing.prefix_logits(m, b.tokens, at, L)
    n = len(masks) // 2  # the prefix pass's masks (1, L, dim), then the rest pass's (B, T - L, dim)
    prefix, rest = masks[:n], masks[n:]
    assert prefix[0].shape[:2] == (1, L) and rest[0].shape[:2] == (3, b.tokens.shape[1] - L)

    def full_forward(prefix_masks):
        queue = [torch.cat([p, r], 1) for p, r in zip(prefix_masks, rest)]
        for d in drops:
            d.forward = lambda x: x * queue.pop(0)
        with torch.no_grad():
            h, _ = m.hidden(b.tokens)
            return m.logits(h[at])
    torch.testing.assert_close(got, full_forward([p.expand(3, -1, -1) for p in prefix]), atol=1e-5, rtol=1e-5)
    g = torch.Generator().manual_seed(0)
    per_row = [(torch.rand(3, *p.shape[1:], generator=g) >= 0.3).float() / 0.7 for p in prefix]
    assert not torch.allclose(got, full_forward(per_row), atol=1e-3)
