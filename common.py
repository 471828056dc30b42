"""The helpers several files share, each written once: atomic writes, JSON and JSONL files, the rank,
log and barrier of a torchrun job, ceil_div, and the shared-prefix rule.

Imports: the stdlib and torch.distributed (the rank helpers), nothing from this project; every other
file may import it.
"""
import contextlib
import errno
import gzip
import json
import os
import shutil
import time

import torch
import torch.distributed as dist

# ----------------------------------------------------------------------------- files

# Free bytes under which a failed write is put down to a full disk: a writer's buffered bytes that the
# disk refused are gone from the count, so a full disk may still show a little room.
FULL_DISK_BYTES = 16 << 20


def _disk_full(e: BaseException, path: str) -> bool:
    """Whether a failed write of path ran out of space: ENOSPC anywhere in the exception's chain, or a
    writer that hides it (torch.save's RuntimeError "unexpected pos") failing on a disk with no room."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    if not isinstance(e, (RuntimeError, OSError)):
        return False
    try:
        return shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < FULL_DISK_BYTES
    except OSError:
        return False


def atomic_write(path, write):
    """write(tmp) to a temporary name beside path, then rename it over path: readers (and a run resumed
    after a kill) see the old file or the new one, never half of one. A failed write removes its
    temporary file; on a full disk it raises an OSError (ENOSPC) that says so and names path."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        full = isinstance(e, Exception) and _disk_full(e, path)  # before the temporary file frees its space
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if full:
            raise OSError(errno.ENOSPC, f"no space left on device: could not write {path}") from e
        raise


def atomic_write_text(path, text: str):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False))


def read_json_object(path: str) -> dict:
    """A JSON file holding one object (params.json, config.json, an index), with errors naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def iter_jsonl(path: str):
    """(line number, object) for each non-blank line; a .gz file is read through gzip."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{n}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            yield n, row


def read_jsonl(path: str) -> list[dict]:
    """One object per non-blank line; bad JSON or a non-object is a ValueError naming PATH:LINE."""
    return [row for _, row in iter_jsonl(path)]


def write_jsonl(path, rows: list[dict]):
    """Every row, every field, one JSON object per line, atomically."""
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


# ----------------------------------------------------------------------------- torchrun ranks

def rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def row_ranks(model) -> tuple[int, int]:
    """(rank, world) over which a batch's rows are split: every rank of a torchrun job, except for a
    tensor-parallel model (sharding.tensor_parallel), where every rank runs every row."""
    return (0, 1) if getattr(model, "tensor_parallel", 0) else rank_world()


def is_main() -> bool:
    """Under torchrun every rank runs the same code; rank 0 alone prints and writes files."""
    return rank_world()[0] == 0


def log(msg: str):
    if is_main():
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def init_distributed(device: str) -> str:
    """Under `torchrun --nproc_per_node N`: join the process group (NCCL on CUDA, gloo on CPU) and return
    this rank's device (cuda:LOCAL_RANK); in one process, device unchanged."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    cuda = device.startswith("cuda")
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    return device


def barrier():
    if rank_world()[1] > 1:
        dist.barrier()


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """t summed over ranks, in place (gloo has no AVG); t itself in one process."""
    if rank_world()[1] > 1:
        dist.all_reduce(t)
    return t


def ceil_div(a: int, b: int) -> int:
    """a / b rounded up: how many groups of b hold a things."""
    return -(-a // b)


# ----------------------------------------------------------------------------- shared prefixes

# Tokens: a prefix that every row of a batch shares is run once (prefill in generate.py, the EFT rows'
# judge prompt in packing.py) only from this length on; a shorter one costs a second pass for little.
MIN_SHARED_PREFIX = 32


def common_prefix_len(rows: list[list[int]], limit: int | None = None) -> int:
    """How many leading tokens every row (a list of ids) has in common, at most `limit`."""
    first = rows[0]
    n = max(min(len(r) for r in rows) if limit is None else min(limit, *(len(r) for r in rows)), 0)
    for i in range(n):
        if any(r[i] != first[i] for r in rows):
            return i
    return n
