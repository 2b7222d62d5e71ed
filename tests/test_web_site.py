"""Class 1 of issue 17: vae-export never deletes or replaces what it did not write. Every folder a
command writes into (web's site, an export, a run) goes through files.OwnedDir: a ledger of the files
we wrote with their sha256; only those are replaced or removed, anything else is the user's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vae_export.cli import app
from vae_export.files import atomic_open

REPO = Path(__file__).resolve().parents[1]
EXPORT = REPO / "artifacts" / "mlp"          # decoder.onnx, decoder.int8.onnx, decoder.json: a real export
runner = CliRunner()
LEDGER = ".vae-export-files.json"            # files.LEDGER: the list of the files vae-export wrote in a folder


def web(out, export=EXPORT, *more):
    return runner.invoke(app, ["web", str(export), "--out", str(out), "-q", *more])


def user_files(root: Path) -> dict[str, bytes]:
    """What a user keeps beside a deployed site: a CNAME, a git repository, a blog."""
    files = {"CNAME": b"vae.example.org\n", ".git/HEAD": b"ref: refs/heads/main\n", "blog/post.html": b"<p>hi</p>",
             "ort/NOTES.md": b"mine, inside a folder of the site"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def assert_kept(root: Path, files: dict[str, bytes]) -> None:
    assert {rel: (root / rel).read_bytes() for rel in files} == files


def ledger(root: Path) -> set[str]:
    return set(json.loads((root / LEDGER).read_text())["files"])


def test_rebuilding_a_site_keeps_what_the_user_added(tmp_path):
    site = tmp_path / "site"
    assert web(site).exit_code == 0
    ours = ledger(site)
    assert {"index.html", "site.json", "decoder.onnx", "decoder.int8.onnx", "ort/ort.wasm.min.mjs"} <= ours
    kept = user_files(site)
    result = web(site)
    assert result.exit_code == 0, result.output
    assert_kept(site, kept)
    assert ledger(site) == ours and not [p for p in site.iterdir() if p.name.startswith(".staging-")]
    fp32_only = tmp_path / "fp32-export"                       # the new build writes no int8 decoder:
    fp32_only.mkdir()
    for name in ("decoder.onnx", "decoder.json"):
        shutil.copyfile(EXPORT / name, fp32_only / name)
    assert web(site, fp32_only).exit_code == 0
    assert not (site / "decoder.int8.onnx").exists()            # ours and stale: removed
    assert_kept(site, kept)                                     # the user's: never
    (site / "style.css").write_text("/* the user's edit */")  # a file of ours the user changed is theirs now
    result = web(site)
    assert result.exit_code == 2 and "style.css exists and was not written by vae-export" in result.output
    assert (site / "style.css").read_text() == "/* the user's edit */" and (site / "decoder.onnx").exists()


def test_a_folder_that_merely_holds_site_json_is_not_ours(tmp_path):
    """The issue's example: a folder with a .git, docs and a file named site.json lost everything."""
    repo = tmp_path / "repo"
    kept = {**user_files(repo), "site.json": b'{"producer": "vae-export web"}', "docs/guide.md": b"# guide"}
    (repo / "site.json").write_bytes(kept["site.json"])
    (repo / "docs").mkdir()
    (repo / "docs" / "guide.md").write_bytes(kept["docs/guide.md"])
    result = web(repo)
    assert result.exit_code == 2 and "site.json exists and was not written by vae-export" in result.output, result.output
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()) == sorted(kept)
    assert_kept(repo, kept)
    (repo / "site.json").unlink()
    (repo / "index.html").write_text("<h1>my own page</h1>")    # the user's own page where ours would go
    result = web(repo)
    assert result.exit_code == 2 and "index.html exists" in result.output
    assert (repo / "index.html").read_text() == "<h1>my own page</h1>" and not (repo / LEDGER).exists()
    (repo / "index.html").unlink()
    (repo / "ort").rename(repo / "ort-real")
    (repo / "ort").symlink_to(repo / "ort-real")                # a link in the way: never written through
    result = web(repo)
    assert result.exit_code == 2 and "in the way" in result.output and not (repo / "ort-real" / "ort.wasm.min.mjs").exists()


def test_out_dot_pwd_a_symlink_and_a_folder_holding_the_export(tmp_path, monkeypatch):
    work = tmp_path / "work"
    export = work / "exports" / "mlp"
    shutil.copytree(EXPORT, export, ignore=shutil.ignore_patterns("checkpoint.pt", "*.fp16.onnx"))
    kept = user_files(work)
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    monkeypatch.chdir(work)
    for out in (".", os.getcwd(), "./"):                       # `--out .`, `--out "$PWD"`: the same folder, ours in it
        result = web(out, Path("exports/mlp"))
        assert result.exit_code == 0, result.output
        assert_kept(work, kept)
        assert {p.name: p.read_bytes() for p in export.iterdir()} == before   # the export inside it: untouched
    assert (work / "index.html").is_file() and (work / "exports").is_dir()
    real = tmp_path / "deploy"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert web(tmp_path / "link").exit_code == 0
    assert (tmp_path / "link").is_symlink() and (real / "index.html").is_file()   # written through the link
    result = web(export, export)
    assert result.exit_code == 2 and "choose another folder" in result.output
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before


def test_single_files_write_through_links_and_spare_look_alike_temp_files(tmp_path):
    target = tmp_path / "real.png"
    target.write_bytes(b"old")
    (tmp_path / "x.png").symlink_to(target)
    mine = tmp_path / ".x.png.backup.tmp"                       # a user's file that looks like a temp file
    mine.write_bytes(b"keep")
    with atomic_open(tmp_path / "x.png") as f:
        f.write(b"new")
    assert (tmp_path / "x.png").is_symlink() and target.read_bytes() == b"new" and mine.read_bytes() == b"keep"


def test_export_and_train_refuse_to_write_over_the_users_files(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"name": "my web app"}')   # a web app manifest, not ours
    result = runner.invoke(app, ["onnx", str(EXPORT / "checkpoint.pt"), "--out", str(folder), "-q"])
    assert result.exit_code == 2 and "manifest.json exists" in result.output, result.output
    assert [p.name for p in folder.iterdir()] == ["manifest.json"]
    (folder / "manifest.json").unlink()
    (folder / "samples.png").write_bytes(b"my own picture")
    result = runner.invoke(app, ["train", "--epochs", "1", "--limit", "64", "--out", str(folder), "-q"])
    assert result.exit_code == 2 and "samples.png exists" in result.output, result.output
    assert [p.name for p in folder.iterdir()] == ["samples.png"] and (folder / "samples.png").read_bytes() == b"my own picture"


def test_serve_refuses_a_taken_port_before_writing_and_exits_143_on_sigterm(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = web(tmp_path / "site", EXPORT, "--serve", "--port", str(taken.getsockname()[1]))
    assert result.exit_code == 2 and "--port" in result.output and not (tmp_path / "site").exists()
    server = subprocess.Popen([sys.executable, "-m", "vae_export", "web", str(EXPORT), "--out", str(tmp_path / "site"),
                               "--serve", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().startswith(str(tmp_path / "site"))
        assert server.stdout.readline().startswith("http://127.0.0.1:")
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 143
        assert server.stderr.read().strip().splitlines()[-1] == "terminated"
    finally:
        server.kill()
        server.wait()


@pytest.fixture(autouse=True)
def _mnist(monkeypatch):
    monkeypatch.setenv("VAE_EXPORT_DATA", os.environ.get("VAE_EXPORT_DATA", "/work/shared/data"))
