"""`vae-export web`: a static page that decodes in the browser, built from an export folder and served."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import Quiet, command, err, out


@command
def web(
    export_dir: Annotated[Path, typer.Argument(help="A folder written by `vae-export export` or `onnx` (decoder.onnx + decoder.json).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the site; the files of a site built earlier there are replaced, nothing else.")] = Path("site"),
    serve: Annotated[bool, typer.Option("--serve", help="Then serve it on http://127.0.0.1 until Ctrl-C.")] = False,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port for --serve (0: any free port).")] = 8000,
    quiet: Quiet = False,
):
    """Build a self-contained web page that samples the decoder in the visitor's browser (onnxruntime-web).
    Writes only its own files into --out (listed in .vae-export-files.json) and keeps anything else there."""
    from ..files import check_output
    from ..web import build_site, listen, serve as serve_site

    check_output(out_dir, folder=True, inputs=(export_dir,))
    server = listen(out_dir, port) if serve else None   # a taken port is refused before the site is written
    try:
        site = build_site(export_dir, out_dir)
    except BaseException:
        if server is not None:
            server.server_close()
        raise
    out.print(f"{site.path}/index.html  {', '.join(site.models)} + onnxruntime-web {site.ort_version}  {site.bytes / 1e6:.1f} MB")
    if serve:
        def ready(url: str) -> None:
            out.print(url)
            sys.stdout.flush()
            if not quiet:
                err.print(f"serving {site.path} at {url} (Ctrl-C to stop)")

        serve_site(server, ready)
    elif not quiet:
        err.print(f"next: vae-export web {export_dir} --out {out_dir} --serve   (then open http://127.0.0.1:8000/)")
