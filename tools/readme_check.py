"""Run every command the README (and docs/*.md) shows, as written, and hold transcripts to their output.

Usage: python tools/readme_check.py [README.md docs/*.md ...]   (CI runs it after installing l4emu)

Two kinds of code blocks hold commands:
- transcripts, whose lines start with `$ `: each command (continued by a trailing backslash) runs
  with bash, and its output (stdout and stderr, in order) must equal the lines shown up to the next
  `$ ` line. Lines starting `time ` are left out on both sides: they are the machine's speed.
- command blocks (no language, or `sh`/`bash`/`console` with no `$ `): each line that is not a
  comment runs with bash and must exit 0; a trailing `# comment` is the reader's, not the shell's.
  A command ending in `&` runs in the background (given BACKGROUND_START_S to start) until its block ends.
Blocks tagged with another language (toml, python, text) are not commands.

Everything runs in one scratch directory, in the order the files show it: a copy of the repository's
tracked files plus what the README's commands name, `capture.pcap` (pcaps/sample.pcap) and
`lb.toml` (the embedded default config). Where the shell runs as root, a leading `sudo ` is dropped (CI is root
and may have no sudo). `pip install` lines are skipped: CI runs the README's install commands
word for word on its own.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMAND_LANGUAGES = {"", "sh", "bash", "console", "shell"}
BACKGROUND_START_S = 5.0      # a server started under load (CI shares its cores) needs a moment
COMMAND_TIMEOUT_S = 600
SPEED_LINE = re.compile(r"^time\s")
TOOL_NOISE = re.compile(r'^Running as user "root" and group "root"\. This could be dangerous\.$')
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass
class Step:
    source: str             # file:line, for the report
    command: str
    expected: list[str] | None = None       # transcripts only
    background: bool = False


@dataclass
class Block:
    steps: list[Step] = field(default_factory=list)


def blocks(path: Path) -> list[Block]:
    """The command blocks and transcripts of one Markdown file, in order."""
    lines = path.read_text().splitlines()
    out, k = [], 0
    while k < len(lines):
        fence = FENCE.match(lines[k])
        if not fence:
            k += 1
            continue
        start, k = k + 1, k + 1
        while k < len(lines) and not lines[k].startswith("```"):
            k += 1
        body, language = lines[start:k], fence.group(1)
        k += 1
        if language not in COMMAND_LANGUAGES:
            continue
        block = _transcript(body, path, start) if any(l.startswith("$ ") for l in body) else _commands(body, path, start)
        if block.steps:
            out.append(block)
    return out


def _joined(body: list[str], k: int) -> tuple[str, int]:
    """The command starting at body[k], its backslash continuations joined; and the next line's index."""
    parts = [body[k]]
    while parts[-1].endswith("\\") and k + 1 < len(body):
        k += 1
        parts.append(body[k])
    return "\n".join(parts), k + 1


def _transcript(body: list[str], path: Path, start: int) -> Block:
    block, k = Block(), 0
    while k < len(body):
        if not body[k].startswith("$ "):
            k += 1
            continue
        line = start + k + 1
        command, k = _joined(body, k)
        expected = []
        while k < len(body) and not body[k].startswith("$ "):
            expected.append(body[k])
            k += 1
        while expected and not expected[-1].strip():
            expected.pop()
        block.steps.append(Step(f"{path.name}:{line}", command[2:], expected))
    return block


def _commands(body: list[str], path: Path, start: int) -> Block:
    block, k = Block(), 0
    while k < len(body):
        line = start + k + 1
        command, k = _joined(body, k)
        command = _strip_comment(command).strip()
        if not command or command.startswith("pip install"):
            continue
        background = command.endswith("&")
        block.steps.append(Step(f"{path.name}:{line}", command.rstrip("&").strip(), None, background))
    return block


def _strip_comment(command: str) -> str:
    """Drop a trailing `# ...` that is outside quotes (the reader's note, not the shell's)."""
    quote = None
    for i, ch in enumerate(command):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or command[i - 1].isspace()):
            return command[:i]
    return command


def scratch_dir() -> Path:
    """A copy of the repository's tracked files (the README names pcaps/, benchmarks/, examples/)."""
    work = Path(tempfile.mkdtemp(prefix="l4emu-readme-"))
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / name)
    shutil.copy(ROOT / "pcaps" / "sample.pcap", work / "capture.pcap")
    shutil.copy(ROOT / "l4emu" / "data" / "default.toml", work / "lb.toml")
    return work


def as_run(command: str) -> str:
    if os.geteuid() == 0:
        command = re.sub(r"(^|[;&|]\s*)sudo\s+", r"\1", command)
    return command


def script(work: Path, command: str) -> list[str]:
    """bash running `command` from a file: its command line then does not hold the command's words
    (a `pkill -f` in the README would otherwise match the shell that runs it)."""
    fd, path = tempfile.mkstemp(suffix=".sh", dir=work)
    with os.fdopen(fd, "w") as f:
        f.write(command + "\n")
    return ["bash", "-o", "pipefail", path]


def run_block(block: Block, work: Path) -> list[str]:
    """Run one block; returns the failures (empty when every step did what the file says)."""
    failures, background = [], []
    try:
        for step in block.steps:
            command = script(work, as_run(step.command))
            if step.background:
                background.append(subprocess.Popen(command, cwd=work, start_new_session=True,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                time.sleep(BACKGROUND_START_S)
                if background[-1].poll() is not None:
                    failures.append(f"{step.source}: `{step.command}` ended at once (exit {background[-1].returncode})")
                continue
            try:
                proc = subprocess.run(command, cwd=work, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=COMMAND_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                failures.append(f"{step.source}: `{step.command}` ran over {COMMAND_TIMEOUT_S} s")
                continue
            failures += _judge(step, proc)
    finally:
        for proc in background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
    return failures


def _judge(step: Step, proc: subprocess.CompletedProcess) -> list[str]:
    shown = [line for line in proc.stdout.splitlines() if not TOOL_NOISE.match(line)]
    if step.expected is None:
        if proc.returncode != 0:
            return [f"{step.source}: `{step.command}` exited {proc.returncode}:\n" + "\n".join(shown[-5:])]
        return []
    got = _trimmed([line.rstrip() for line in shown if not SPEED_LINE.match(line)])
    want = _trimmed([line.rstrip() for line in step.expected if not SPEED_LINE.match(line)])
    if got == want:
        return []
    diff = [f"  line {i + 1}:\n    shown: {w!r}\n    got:   {g!r}"
            for i, (w, g) in enumerate(zip(want + [""] * len(got), got + [""] * len(want))) if w != g][:5]
    return [f"{step.source}: `{step.command}` printed other lines than shown:\n" + "\n".join(diff)]


def _trimmed(lines: list[str]) -> list[str]:
    """Without trailing blank lines (a fence cannot show them)."""
    while lines and not lines[-1]:
        lines = lines[:-1]
    return lines


def main(paths: list[str]) -> int:
    files = [Path(p) for p in paths] or [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    work = scratch_dir()
    failures, ran = [], 0
    try:
        for path in files:
            for block in blocks(path):
                failures += run_block(block, work)
                ran += len(block.steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for failure in failures:
        print(failure, file=sys.stderr)
    print(f"readme_check: {ran} commands from {len(files)} files, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
