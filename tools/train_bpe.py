"""The toy BPE trainer: rebuilds assets/toy.tiktoken (`python toyworld.py --write-tokenizer`) and is used by
tests; the product only reads the saved ranks, so the trainer lives here, outside tokenizer.py.

Imports: regex (the pre-tokenizer, as tiktoken splits text), and from tokenizer.py the toy pattern and
save_tiktoken_bpe (re-exported, so a caller writes the asset with one import).

Reference: openai/tiktoken `_educational.bpe_train`, whose result `train_bpe` reproduces, ties included.
"""
import collections
import heapq
import time

import regex

from tokenizer import TOY_PAT_STR, save_tiktoken_bpe  # noqa: F401  (save_tiktoken_bpe: re-exported)


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
