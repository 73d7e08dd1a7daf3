"""The documentation against the tree and the parsers (issue 32).

- Every relative link in README.md, docs/*.md and benchmarks/README.md reaches an existing file,
  and a ``#anchor`` reaches a heading of that file (GitHub's slug of it).
- Every ``--flag`` in a command line of the training script (``fastnofrost/train.py``,
  ``fastnofrost-train``, ``deepspeed ... train.py``, ``make train ARGS="..."``) is an option of
  train.py's parser (``fastnofrost.config.parser``), and every one in a command line of
  ``fastnofrost-evaluate`` (``python -m fastnofrost.evaluate``) is an option of the evaluate parser.
  The flags between ``deepspeed`` and the script are the launcher's own: they must be in
  ``DEEPSPEED_FLAGS``.
- docs/training.md and docs/evaluation.md document their program's flags in prose and tables too:
  every ``--flag`` there is one of its program's, a launcher's or a retired one's.

The extraction helpers are tested on synthetic text first, so a made-up flag or a broken link is
shown to be reported.
"""
import argparse
import pathlib
import re
from unittest import mock

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# the deepspeed launcher's own options that the docs use (before the script on its command line);
# checked against deepspeed's runner below where deepspeed is installed
DEEPSPEED_FLAGS = {"--num_gpus", "--num_nodes", "--hostfile", "--master_port", "--master_addr", "--module",
                   "--include", "--exclude"}
# flags the docs name for other programs: SLURM's sbatch, in docs/training.md's requeueing job script
SBATCH_FLAGS = {"--nodes", "--gpus-per-node", "--cpus-per-task", "--time", "--signal", "--requeue", "--open-mode",
                "--output"}
OTHER_PROGRAM_FLAGS = {"training.md": SBATCH_FLAGS, "evaluation.md": set()}

FLAG = re.compile(r"(?<![\w-])--[A-Za-z][A-Za-z0-9_]*(?:-[A-Za-z0-9_]+)*")
TRAIN = re.compile(r"(?<![\w./-])(?:[\w.-]+/)*train\.py(?![\w.-])|(?<![\w-])fastnofrost-train(?![\w-])")
EVALUATE = re.compile(r"(?<![\w./-])fastnofrost[./]evaluate(?:\.py)?(?![\w.])|(?<![\w-])fastnofrost-evaluate(?![\w-])")
MAKE_TRAIN = re.compile(r"(?<![\w-])make\s+train(?![\w-])")
DEEPSPEED = re.compile(r"(?<![\w./-])deepspeed(?![\w.-])")
SEGMENT_END = re.compile(r"\s(?:&&|\|\||\||;|&)(?:\s|$)|;")


# ---------------------------------------------------------------------------- markdown reading

def split_markdown(text: str):
    """(prose, code blocks): prose with fenced and indented code blocks blanked out, and the blocks."""
    prose, blocks, block = [], [], None
    fence = None
    previous_blank = True
    for line in text.split("\n"):
        stripped = line.lstrip()
        if fence is not None:
            if stripped.startswith(fence):
                blocks.append("\n".join(block))
                fence, block = None, None
            else:
                block.append(line)
            prose.append("")
            previous_blank = False
            continue
        if stripped.startswith("```") or stripped.startswith("~~~"):
            fence, block = stripped[:3], []
            prose.append("")
            continue
        indented = line.startswith("    ") and line.strip()
        if indented and (previous_blank or block is not None):
            block = [] if block is None else block
            block.append(line[4:])
            prose.append("")
            previous_blank = False
            continue
        if block is not None and line.strip():
            blocks.append("\n".join(block))
            block = None
        elif block is not None:  # a blank line inside an indented block
            block.append("")
            prose.append("")
            previous_blank = True
            continue
        prose.append(line)
        previous_blank = not line.strip()
    if block:
        blocks.append("\n".join(block))
    return "\n".join(prose), blocks


def inline_code(prose: str):
    """The contents of inline code spans (a span may wrap lines, never a blank line)."""
    return [m.group(2) for m in re.finditer(r"(`+)((?:(?!\1)[^\n]|\n(?!\s*\n))+?)\1", prose)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: rendered text, lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str):
    prose, _ = split_markdown(text)
    seen, out = {}, set()
    for line in prose.split("\n"):
        m = re.match(r"^ {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(text: str):
    """Link targets in prose (code is not markdown): inline links, images and reference definitions."""
    prose, _ = split_markdown(text)
    prose = re.sub(r"(`+)(?:(?!\1)[^\n]|\n(?!\s*\n))+?\1", "", prose)
    found = [m.group(1) for m in re.finditer(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)]
    found += [m.group(1) for m in re.finditer(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", prose, re.M)]
    return found


def broken_links(path: pathlib.Path, text: str):
    """'target (why)' for each relative link of ``text`` (the file at ``path``) that does not resolve."""
    bad = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        if not file_part:  # a heading of this file
            if anchor not in anchors(text):
                bad.append(f"{target} (no heading with that anchor)")
            continue
        dest = (path.parent / file_part).resolve()
        if not dest.exists():
            bad.append(f"{target} (no such file)")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{target} (no heading with that anchor)")
    return bad


# ------------------------------------------------------------------------------ command lines

def command_lines(text: str):
    """Each logical line of each code block (continuations joined, comments cut; a commented-out
    command counts), then each inline code span."""
    prose, blocks = split_markdown(text)
    out = []
    for block in blocks:
        lines = block.split("\n")
        joined, current = [], None
        for line in lines:
            if current is not None:
                # a continuation: a commented-out command continues on a commented line
                line = re.sub(r"^\s*#", "", line) if current.lstrip().startswith("#") else line
                current = current[:-1] + " " + line.strip()
            else:
                current = line.strip()
            if current.endswith("\\"):
                continue
            joined.append(current)
            current = None
        if current is not None:
            joined.append(current[:-1])
        for line in joined:
            if line.startswith("#!"):
                continue
            line = re.sub(r"^#\s*", "", line)  # a commented-out command
            line = re.sub(r"\s+#(?:\s.*)?$", "", line)  # a trailing comment
            out.append(line)
    return out + inline_code(prose)


def program_flags(command: str):
    """[(program, flag)] of one command line: program 'train' or 'evaluate' for the flags after the
    script, 'deepspeed' for the launcher's flags before it. Anything else on the line is ignored."""
    found = []
    for segment in SEGMENT_END.split(command):
        for m in MAKE_TRAIN.finditer(segment):
            args = re.search(r"ARGS=(\"[^\"]*\"|'[^']*'|\S+)", segment[m.end():])
            if args:
                found += [("train", flag) for flag in FLAG.findall(args.group(1))]
        hits = [(m.start(), m.end(), "train") for m in TRAIN.finditer(segment)]
        hits += [(m.start(), m.end(), "evaluate") for m in EVALUATE.finditer(segment)]
        if not hits:
            continue
        start, end, program = min(hits)
        launcher = DEEPSPEED.search(segment[:start])
        if launcher:
            found += [("deepspeed", flag) for flag in FLAG.findall(segment[launcher.end():start])]
        found += [(program, flag) for flag in FLAG.findall(segment[end:])]
    return found


def unknown_flags(command: str, known):
    """'program: --flag' for each flag of ``command`` that ``known[program]`` lacks."""
    return [f"{program}: {flag}" for program, flag in program_flags(command) if flag not in known[program]]


# ------------------------------------------------------------------------------------ parsers

def _options(parser: argparse.ArgumentParser):
    """(current option strings, retired ones): a retired option only says what replaced it."""
    current, retired = set(), set()
    for action in parser._actions:
        (retired if action.dest.lstrip("_").startswith("retired_") else current).update(action.option_strings)
    return current, retired


def train_parser() -> argparse.ArgumentParser:
    from fastnofrost.config import parser

    return parser()


def parser_built_by(parse_args) -> argparse.ArgumentParser:
    """The parser that ``parse_args([])`` builds, caught at its parse_args call: nothing runs."""
    class Built(Exception):
        pass

    def catch(self, *args, **kwargs):
        raise Built(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", catch):
        with pytest.raises(Built) as built:
            parse_args([])
    return built.value.args[0]


def evaluate_parser() -> argparse.ArgumentParser:
    import fastnofrost.evaluate as evaluate

    return parser_built_by(evaluate.parse_args)


@pytest.fixture(scope="module")
def options():
    train, train_retired = _options(train_parser())
    evaluate, evaluate_retired = _options(evaluate_parser())
    return {"train": train, "evaluate": evaluate, "deepspeed": DEEPSPEED_FLAGS,
            "retired": {"train": train_retired, "evaluate": evaluate_retired}}


# ------------------------------------------------------------------ the helpers on made-up text

def test_slug_is_githubs():
    assert slug("bench_data.py --startup: time to the first step") == "bench_datapy---startup-time-to-the-first-step"
    assert slug("Fidelity: the paper's Table 1 and Figure 2 at small scale (`fidelity.py`)") == \
        "fidelity-the-papers-table-1-and-figure-2-at-small-scale-fidelitypy"
    assert slug("Dual BN (MBNAT)") == "dual-bn-mbnat"
    assert anchors("# A\n\n## Quick start\n\n```\n# not a heading\n```\n## Quick start\n") == \
        {"a", "quick-start", "quick-start-1"}


def test_broken_links_are_reported(tmp_path):
    (tmp_path / "there.md").write_text("# Title\n\n## A section\n")
    page = tmp_path / "page.md"
    text = ("[ok](there.md) [ok](there.md#a-section) [ok](#local) [ok](https://example.com/x.md)\n"
            "[missing](nowhere.md) [bad anchor](there.md#no-such-section) [bad local](#nope)\n"
            "`[in code](nowhere.md)`\n\n    [indented code](nowhere.md)\n\n# Local\n")
    assert broken_links(page, text) == ["nowhere.md (no such file)", "there.md#no-such-section (no heading with "
                                        "that anchor)", "#nope (no heading with that anchor)"]


def test_flags_are_read_per_program():
    line = "deepspeed --num_gpus 8 fastnofrost/train.py --data /x --no-such-flag  # --not-this-one"
    [command] = command_lines(f"```bash\n{line}\n```\n")
    assert program_flags(command) == [("deepspeed", "--num_gpus"), ("train", "--data"), ("train", "--no-such-flag")]
    known = {"train": {"--data"}, "evaluate": {"--model"}, "deepspeed": DEEPSPEED_FLAGS}
    assert unknown_flags(command, known) == ["train: --no-such-flag"]
    text = ("```\npython -m fastnofrost.evaluate --model m \\\n    --no-such-flag 1\n"
            "# .venv/bin/python -m fastnofrost.evaluate --model m \\\n#     --bad-too\n"
            ".venv/bin/fastnofrost-evaluate --model m --script-flag\n"
            "python benchmarks/official_train.py --whatever\n```\n"
            "Prose: `make train ARGS=\"--epochs 4 --nope\"`, `deepspeed --bogus fastnofrost/train.py`,\n"
            "`train.py --method nofrost\n--wrong`; `--free-flag` belongs to no command.\n")
    bad = [b for command in command_lines(text) for b in unknown_flags(command, known)]
    assert bad == ["evaluate: --no-such-flag", "evaluate: --bad-too", "evaluate: --script-flag", "train: --epochs",
                   "train: --nope", "deepspeed: --bogus", "train: --method", "train: --wrong"]


# ------------------------------------------------------------------------------ the real docs

def test_doc_files_exist():
    assert [p.name for p in DOC_FILES[:2]] == ["README.md", "README.md"] and len(DOC_FILES) > 3
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "`make test` is what CI runs" in readme  # the test command, as .ci/run runs it


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert broken_links(path, path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_command_line_flags_exist(path, options):
    bad = [f"{b}   in   {command}" for command in command_lines(path.read_text(encoding="utf-8"))
           for b in unknown_flags(command, options)]
    assert bad == []


@pytest.mark.parametrize("name,program", [("training.md", "train"), ("evaluation.md", "evaluate")])
def test_program_docs_name_only_its_flags(name, program, options):
    """Every --flag in docs/training.md (docs/evaluation.md), prose and tables included, is one of
    train.py's (evaluate's), the deepspeed launcher's, another program's named above, or a retired one
    (which the docs mention as replaced)."""
    prose, blocks = split_markdown((ROOT / "docs" / name).read_text(encoding="utf-8"))
    allowed = options[program] | options["retired"][program] | DEEPSPEED_FLAGS | OTHER_PROGRAM_FLAGS[name]
    found = set(FLAG.findall(prose)) | {f for block in blocks for f in FLAG.findall(block)}
    assert found - allowed == set()
    assert len(found & options[program]) > 10  # the check saw the flags


def test_launcher_flags_are_deepspeeds():
    runner = pytest.importorskip("deepspeed.launcher.runner")
    current, _ = _options(parser_built_by(runner.parse_args))
    assert DEEPSPEED_FLAGS - current == set()


def test_resume_safe_fields_are_listed_as_the_code_has_them():
    """docs/training.md's 'Safe to change on a resume:' names exactly config.RESUME_SAFE's flags."""
    from dataclasses import fields

    from fastnofrost.config import RESUME_SAFE, TrainConfig

    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    listed = text.split("Safe to change on a resume:", 1)[1].split("\n\n", 1)[0]
    flags = {f.name: f.metadata.get("flag") or "--" + f.name.replace("_", "-") for f in fields(TrainConfig)}
    assert set(FLAG.findall(listed)) == {flags[name] for name in RESUME_SAFE}
