"""Writers of checkpoints and results (issue 21): writes are fsynced before and after their rename."""
import os
import stat

import torch

import core
import experiment


def test_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino, stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    def replace(source, target):
        events.append(("replace", os.stat(source).st_ino, False))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    for write in (lambda path: core.save_checkpoint(path, {"w": torch.ones(3)}),
                  lambda path: experiment.write_json(path, {"a": 1})):
        events.clear()
        path = tmp_path / "folder" / "file"
        write(str(path))
        file, folder = path.stat().st_ino, path.parent.stat().st_ino
        assert events == [("fsync", file, False), ("replace", file, False), ("fsync", folder, True)], events
