"""common.py: atomic writes that fail (a full disk, simulated) leave no temporary file and say why."""
import errno
import os
from collections import namedtuple

import pytest

import common

Usage = namedtuple("Usage", "total used free")


def torch_save_on_a_full_disk(tmp):
    """What torch.save does when the disk fills: some bytes written, then its stream writer's check."""
    with open(tmp, "wb") as f:
        f.write(b"PK" * 1000)
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2000 vs 1936")


def test_a_full_disk_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    dest = tmp_path / "consolidated.00.pth"
    dest.write_text("the old checkpoint")
    monkeypatch.setattr(common.shutil, "disk_usage", lambda p: Usage(10 << 30, 10 << 30, 0))
    with pytest.raises(OSError, match="no space left on device") as info:
        common.atomic_write(dest, torch_save_on_a_full_disk)
    assert info.value.errno == errno.ENOSPC and str(dest) in str(info.value)
    assert os.listdir(tmp_path) == ["consolidated.00.pth"] and dest.read_text() == "the old checkpoint"


def test_enospc_from_a_plain_write_is_named_too(tmp_path):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError, match=f"no space left on device.*{tmp_path / 'x.json'}"):
        common.atomic_write(tmp_path / "x.json", write)
    assert os.listdir(tmp_path) == []


def test_other_failures_keep_their_own_error_and_leave_no_temporary(tmp_path, monkeypatch):
    monkeypatch.setattr(common.shutil, "disk_usage", lambda p: Usage(10 << 30, 1 << 30, 9 << 30))
    with pytest.raises(RuntimeError, match="unexpected pos"):  # not a full disk: the error as it was
        common.atomic_write(tmp_path / "a.pth", torch_save_on_a_full_disk)

    def write(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise TypeError("not serializable")
    with pytest.raises(TypeError, match="not serializable"):
        common.atomic_write(tmp_path / "b.json", write)
    assert os.listdir(tmp_path) == []
