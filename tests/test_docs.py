"""The docs cannot drift from the code: every `vae-export ...` command line in README.md and docs/ is
checked against the Typer app itself (the command exists, each option exists and takes that kind of
value), and every table of measured figures says which command produced it and where it ran.

    .venv/bin/python -m pytest -q tests/test_docs.py

Command lines are read from shell code blocks (```bash, ```sh, ```shell, ```console: every line), from
`$ ` lines of any block (```text shows a command's output under its `$ ` line), and from inline code
that starts with `vae-export `. `torchrun ... -m vae_export CMD` and `python -m vae_export CMD` count too.
docs/incoming/ (other branches' drafts, folded into the pages at merge) gets the command check only.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main

from vae_export.cli import WORKFLOW, app

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "shell", "console", "zsh"}
CLI = typer.main.get_command(app)  # Typer's public bridge to the Click command it runs


def command_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command) for every vae-export invocation the page shows; continuation lines joined."""
    found, fence, joined, start, prose = [], None, "", 0, []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        prose.append(line if fence is None and not stripped.startswith("```") else "")
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip().lower()
            continue
        if fence is None:
            continue
        if joined:
            joined += " " + stripped
        elif stripped.startswith("$ ") or (fence in SHELL_BLOCKS and stripped and not stripped.startswith("#")):
            joined, start = stripped.removeprefix("$ "), number
        if joined and joined.endswith("\\"):
            joined = joined[:-1].rstrip()
            continue
        if joined:
            found.append((start, joined))
            joined = ""
    prose_text = "\n".join(prose)  # inline code may wrap onto the next line
    found += [(prose_text.count("\n", 0, m.start()) + 1, " ".join(m[1].split()))
              for m in re.finditer(r"`(vae-export [^`]+)`", prose_text)]
    return sorted((n, cmd) for n, cmd in ((n, _vae_export_args(c)) for n, c in found) if cmd is not None)


def _vae_export_args(line: str) -> str | None:
    """The part of a shell line that runs vae-export, from the command name on; None if it runs none."""
    line = re.sub(r"\$\([^)]*\)", "X", line)  # $(printf %03d $K) -> one word
    match = re.search(r"(?:^|\s|/)vae-export(?=\s|$)|-m vae_export(?=\s|$)", line)
    return line[match.end():].strip() if match else None


def _words(args: str) -> list[str]:
    """Shell words of one command: comments dropped, cut at the first pipe, redirection or separator."""
    lexer = shlex.shlex(args, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    for word in lexer:
        if word and set(word) <= set("|&;<>()"):
            break
        words.append(word)
    return words


def problems_of(args: str) -> list[str]:
    """What is wrong with `vae-export ARGS` according to the live Typer app; [] when nothing is."""
    words = _words(args)
    if not words or words[0] in ("--version", "--help"):  # the group's own options
        return []
    name, rest = words[0], words[1:]
    command = CLI.commands.get(name)
    if command is None:
        return [f"no command {name!r} (commands: {', '.join(CLI.commands)})"]
    ctx = typer.Context(command, info_name=name)
    options = {opt: p for p in command.params if p.param_type_name == "option" for opt in p.opts + p.secondary_opts}
    options.update({opt: None for opt in ctx.help_option_names})
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    problems, positional = [], []
    while rest:
        word = rest.pop(0)
        if word == "--" or not word.startswith("-") or re.fullmatch(r"-\d.*", word):
            positional.append(word)
            continue
        opt, has_inline, inline = word.partition("=")
        if opt not in options:
            problems.append(f"`{name}` has no option {opt}")
            continue
        param = options[opt]
        if param is None or (param.is_flag and opt in param.secondary_opts):
            continue
        if param.is_flag:
            if has_inline:
                problems.append(f"`{name} {opt}` is a flag: it takes no value")
            continue
        values = [inline] if has_inline else []
        while len(values) < param.nargs and rest:
            values.append(rest.pop(0))
        if not values:  # the last word names the option in passing: `train --nproc` in prose
            continue
        if len(values) < param.nargs or any(v in options for v in values):
            problems.append(f"`{name} {opt}` takes {param.nargs} value(s), got {values}")
            continue
        problems += _value_problems(ctx, name, opt, param, values)
    if not any(p.nargs == -1 for p in arguments) and len(positional) > sum(p.nargs for p in arguments):
        problems.append(f"`{name}` takes {sum(p.nargs for p in arguments)} argument(s), got {positional}")
    if words[1:] and "--help" not in words and len(positional) < sum(p.nargs for p in arguments if p.required and p.nargs > 0):  # not a bare name
        problems.append(f"`{name}` needs {[p.name for p in arguments if p.required]}, got {positional}")
    return problems


def _value_problems(ctx, name: str, opt: str, param, values: list[str]) -> list[str]:
    """A number must parse, a choice must be one of the choices. Paths are the docs' examples, which need
    not exist here: not checked (`type_descriptor` is how Typer 0.29 describes a parameter's type)."""
    if getattr(getattr(param, "type_descriptor", None), "is_path", False) or any("$" in v for v in values) \
            or all(re.fullmatch(r"[A-Z][A-Z0-9_]*", v) for v in values):  # a placeholder: N, CKPT, FILE
        return []
    try:
        param.process_value(ctx, values[0] if param.nargs == 1 else tuple(values))
    except typer.BadParameter as e:
        return [f"`{name} {opt} {' '.join(values)}`: {e.message}"]
    return []


def _all_commands():
    for page in PAGES:
        for number, args in command_lines(page.read_text()):
            yield pytest.param(args, id=f"{page.relative_to(REPO)}:{number}")


@pytest.mark.parametrize("args", list(_all_commands()))
def test_documented_command_matches_the_cli(args):
    assert problems_of(args) == []


def test_the_checker_catches_drift():
    """The check is not vacuous: a renamed option, a wrong value kind, a flag given a value, an unknown command."""
    assert problems_of("sample -n 64 --out x.png") == []
    assert problems_of("sample -n 64 --modle d.onnx --out x.png")[0] == "`sample` has no option --modle"
    assert problems_of("sample -n many --out x.png")[0].startswith("`sample -n many`")
    assert problems_of("sample --precision int4 --out x.npy")[0].startswith("`sample --precision int4`")
    assert problems_of("sample -n 10 --interpolate 1 2 --out walk.png") == []
    assert problems_of("sample --interpolate 1 --out walk.png")[0].startswith("`sample --interpolate` takes 2 value(s)")
    assert problems_of("sample --manifold=yes --out m.png") == ["`sample --manifold` is a flag: it takes no value"]
    assert problems_of("sampel -n 1")[0].startswith("no command 'sampel'")
    assert problems_of("--versoin")[0].startswith("no command '--versoin'")
    assert problems_of("onnx --int8") == ["`onnx` needs ['checkpoint'], got []"]
    assert problems_of("onnx") == []  # a command named in prose
    assert problems_of("train --nproc N") == problems_of("train --nproc") == problems_of("web --help") == []
    assert command_lines("```bash\nvae-export train \\\n    --epochs 2 # two\n```\n") == [(2, "train --epochs 2 # two")]
    assert command_lines("```text\n$ vae-export web a\nvae-export web: built\n```\n") == [(2, "web a")]
    assert command_lines("x\n`vae-export sample\n-n 2` and `vae-export[train]`\n") == [(2, "sample -n 2")]


def test_every_page_is_linked_from_the_readme_which_stays_short():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024, "the README is the door (about 10 KB): details belong in docs/"
    pages = sorted((REPO / "docs").glob("*.md"))
    assert pages and [p.name for p in pages if f"docs/{p.name}" not in readme] == []


def _anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped except - and _, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_local_link_and_picture_resolves():
    """Links between pages (and to their sections) and pictures must point at something that exists."""
    broken = []
    for page in (p for p in PAGES if "incoming" not in p.parts):  # drafts, folded into the pages at merge
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)|src=\"([^\"]+)\"", text):
            target = target[0] or target[1]
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
                if anchor not in {_anchor(h) for h in headings}:
                    broken.append(f"{page.relative_to(REPO)}: {target} (no such section)")
    assert broken == []


def test_every_table_of_measured_figures_names_its_command_and_machine():
    """A section with a table of measured figures (time, nats, throughput, size) must say which command
    produced them (in backticks) and where they ran (a CPU, GPU or machine), before or in the table."""
    unit = re.compile(r"nats|samples/s|img/s|images/s|\bms\b|seconds|\bMiB\b|\bGiB\b|throughput|latency", re.I)
    for page in (p for p in PAGES if "incoming" not in p.parts):
        sections = re.split(r"\n(?=#{1,3} )", page.read_text())
        for section in sections:
            for header in re.findall(r"^\|.*\|\n\|[-| :]+\|$", section, re.M):
                if not unit.search(header):
                    continue
                before = section[: section.index(header)] + _table_at(section, header)
                where = f"{page.relative_to(REPO)}, table {header.splitlines()[0]!r}"
                assert re.search(r"`[^`]*(vae-export|python|benchmarks/|make)[^`]*`", before), f"{where}: no command"
                assert re.search(r"core|CPU|GPU|machine|Xeon|EPYC|H100|H200", before), f"{where}: no machine"


def _table_at(section: str, header: str) -> str:
    """The table that starts with `header`: its lines up to the first line that is not a table row."""
    rows = section[section.index(header):].split("\n")
    return "\n".join(r for r in rows[: next((i for i, r in enumerate(rows) if not r.startswith("|")), len(rows))])


def test_help_lists_the_commands_in_workflow_order():
    listed = list(CLI.commands)
    known = [c for c in WORKFLOW if c in listed]
    assert listed[: len(known)] == known
