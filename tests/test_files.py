import os

import pytest

from vae_export.files import OwnedDir, atomic_open, writable_dir


def test_staged_files_replace_the_folder_only_on_success(tmp_path):
    folder = OwnedDir(tmp_path, "test")
    with folder.rebuild() as stage:
        (stage / "decoder.onnx").write_text("good")
    with pytest.raises(RuntimeError):
        with folder.rebuild() as stage:
            (stage / "decoder.onnx").write_text("bad")
            raise RuntimeError("parity failed")
    assert (tmp_path / "decoder.onnx").read_text() == "good"
    with folder.rebuild() as stage:
        (stage / "decoder.onnx").write_text("new")
    assert (tmp_path / "decoder.onnx").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".vae-export-files.json", "decoder.onnx"]  # no staging folder left


def test_atomic_open_leaves_nothing_on_error(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"old")
    with pytest.raises(ValueError):
        with atomic_open(tmp_path / "a.bin") as f:
            f.write(b"half")
            raise ValueError("disk full, say")
    assert (tmp_path / "a.bin").read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]


def test_writable_dir_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        writable_dir(tmp_path / "f")
