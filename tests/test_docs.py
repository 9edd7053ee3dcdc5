"""The README and the pages under docs/ say what the code does: their examples run.

* Every ```python block of README.md and docs/*.md is executed, each file's blocks in order
  in one namespace (a later block may use what an earlier one made), in an empty working
  folder. A block is left out only when the line before its fence is
  ``<!-- no-test: reason -->`` (for examples that need a GPU, PyTorch or minutes).
* Every ``gpurnn ...`` command in a ```bash block must parse with the command's own parser.
* Every relative link of README.md points to a file of the checkout (and, into docs/, to a
  heading that exists); every public name of ``gpurnn.__all__`` has an entry in docs/api.md.

Files are found from this file's location, never from the working directory.
"""
from __future__ import annotations

import re
import shlex
import traceback
from pathlib import Path

import pytest

import gpurnn
from gpurnn.tools.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

_FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)")
_NO_TEST = re.compile(r"^\s*<!--\s*no-test:\s*(.+?)\s*-->\s*$")


def code_blocks(path: Path, language: str):
    """``(line, code, skip_reason)`` for each fenced block of ``language`` in the file;
    ``line`` is the 1-based line of the opening fence, ``skip_reason`` the text of a
    ``<!-- no-test: ... -->`` line right before it (else None)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang, start = match.group(1), match.group(2).lower(), i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1                                   # the closing fence
        if lang != language:
            continue
        previous = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        skip = _NO_TEST.match(previous)
        blocks.append((start + 1, "\n".join(body) + "\n", skip.group(1) if skip else None))
    return blocks


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_python_examples_run(page, tmp_path, monkeypatch):
    blocks = code_blocks(page, "python")
    runnable = [(line, code) for line, code, skip in blocks if skip is None]
    if not runnable:
        pytest.skip(f"{_name(page)} has no python example to run")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for line, code in runnable:
        where = f"{_name(page)}:{line}"
        try:   # padded so that a traceback gives the line in the Markdown file
            exec(compile("\n" * line + code, _name(page), "exec"), namespace)
        except Exception:
            pytest.fail(f"the python example at {where} failed:\n{traceback.format_exc()}",
                        pytrace=False)


def test_opt_outs_are_few_and_say_why():
    skipped = [(page, line, why) for page in PAGES
               for line, _, why in code_blocks(page, "python") if why is not None]
    assert all(why for _, _, why in skipped)
    assert len(skipped) <= 3, [f"{_name(p)}:{line}" for p, line, _ in skipped]


def _gpurnn_commands(code: str):
    """The argument lists of the ``gpurnn ...`` commands in a shell block."""
    text = code.replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line, comments=True)
        for segment in " ".join(shlex.quote(w) for w in words).split(" '&&' "):
            parts = shlex.split(segment)
            if "gpurnn" in parts:
                yield parts[parts.index("gpurnn") + 1:]


def _bash_commands():
    for page in PAGES:
        for line, code, skip in code_blocks(page, "bash"):
            for argv in _gpurnn_commands(code):
                yield pytest.param(argv, id=f"{_name(page)}:{line}:{' '.join(argv[:2])}")


@pytest.mark.parametrize("argv", list(_bash_commands()))
def test_shell_examples_parse(argv, capsys):
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:            # --help and --version exit 0; a usage error exits 2
        assert stop.code == 0, f"gpurnn {' '.join(argv)}: {capsys.readouterr().err.strip()}"
        return
    assert args.command is not None


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["--help"])
    assert stop.value.code == 0
    assert "train" in capsys.readouterr().out


_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension (mkdocs, GitHub alike) gives a heading."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[-\s]+", "-", text).strip("-")


def _anchors(path: Path) -> set[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    fenced, found = False, set()
    for line in lines:
        if line.strip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            found.add(_slug(line.lstrip("#")))
    return found


def test_readme_links_point_to_files():
    readme = ROOT / "README.md"
    text = re.sub(r"```.*?```", "", readme.read_text(encoding="utf-8"), flags=re.S)
    links = _LINK.findall(text)
    assert links, "README.md links to nothing"
    broken = []
    for target in links:
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue                               # https:, mailto:, and the README's own anchors
        path, _, anchor = target.partition("#")
        file = (readme.parent / path).resolve()
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, broken


def test_api_reference_covers_the_public_names():
    api = (DOCS / "api.md").read_text(encoding="utf-8")
    entries = set(re.findall(r"^::: gpurnn\.(\w+)", api, flags=re.M))
    missing = [name for name in gpurnn.__all__ if name != "__version__" and name not in entries]
    assert not missing, f"docs/api.md has no ::: entry for {missing}"
