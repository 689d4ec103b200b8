"""
``--profile``: a py-spy flame graph of the gateway per workload.

py-spy (``pip install -e '.[bench]'``) samples the running gateway from
outside (``--nonblocking``: it never pauses the process, except with
C{native}) over a workload's
timed runs and writes the collapsed stacks (``<stem>.stacks``). From them
this module draws the flame graph (``<stem>.svg``, one SVG, no script) and
the summary the docs quote (``<stem>.txt``): the frames where the samples
were (self time) and the share of each thread. Idle threads are not sampled,
so the shares are of the CPU the gateway spent, not of wall time.

Sampling needs ptrace rights on the gateway (root, or
``kernel.yama.ptrace_scope = 0``).

``python -m bench.profile STACKS`` summarises (and draws) a stacks file again.
"""

from __future__ import annotations

import html
import shutil
import signal
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

__all__ = ["Profiler", "load", "summary", "flamegraph"]

Stacks = dict[tuple[str, ...], int]


class Profiler:
    """
    py-spy recording one process until L{stop}.

    @param stem: output path without suffix (C{.stacks}, C{.svg}, C{.txt} are added).
    @param native: also sample C frames (sqlite3, the kernel's syscalls stay
        opaque); py-spy then pauses the process for each sample, which costs
        it more than the default C{--nonblocking} sampling.
    @param gil: sample only the thread holding the GIL: where the Python
        code's CPU goes, without the system calls (a C{send} on loopback that
        wakes the client is seen as busy for as long as the gateway's thread
        waits to run again, which on a loaded machine swamps everything else).
    """

    def __init__(
        self, pid: int, stem: Path, rate: int = 1000, native: bool = False, gil: bool = False
    ) -> None:
        self.pid = pid
        self.stem = stem
        self.rate = rate
        self.native = native
        self.gil = gil
        self._proc: subprocess.Popen[bytes] | None = None

    def _path(self, suffix: str) -> Path:
        # Not with_suffix: workload names have dots in them.
        return self.stem.with_name(self.stem.name + suffix)

    def start(self) -> None:
        exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
            "py-spy"
        )
        if exe is None:
            raise RuntimeError("py-spy is not installed: pip install -e '.[bench]'")
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            exe,
            "record",
            "--pid",
            str(self.pid),
            "--format",
            "raw",
            "--output",
            str(self._path(".stacks")),
            "--rate",
            str(self.rate),
            "--threads",
            "--function",
        ]
        # C frames need the process paused while its stack is walked.
        argv.append("--native" if self.native else "--nonblocking")
        if self.gil:
            argv.append("--gil")
        self._proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )

    def stop(self) -> str:
        """Stop sampling; write the flame graph and summary; return the summary."""
        proc, self._proc = self._proc, None
        if proc is None:
            return ""
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        path = self._path(".stacks")
        if not path.exists():
            return f"py-spy wrote nothing: {err.decode('utf-8', 'replace')[-500:]}"
        stacks = load(path)
        text = summary(stacks)
        self._path(".txt").write_text(text)
        self._path(".svg").write_text(flamegraph(stacks, self.stem.name))
        return text


def load(path: Path) -> Stacks:
    """Collapsed stacks (C{frame;frame;... count} per line)."""
    out: Stacks = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            out[tuple(stack.split(";"))] += int(n)
    return out


def _short(frame: str) -> str:
    """C{func (path/to/module.py:12)} as C{func (module.py)}."""
    name, _, where = frame.partition(" (")
    if not where:
        return frame
    where = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({where.rsplit('/', 1)[-1]})"


# Where a thread waits (py-spy's --nonblocking sampling cannot tell an idle
# thread from a busy one: the wait happens in C, inside these Python frames).
IDLE_LEAVES = (
    "EPollReactor.doPoll",  # the reactor in epoll_wait
    "ThreadWriter._run",  # the store's writer waiting for ops
    "DataWriters._work",  # data writers waiting for pieces
    "Condition.wait",  # thread pools waiting for work
    "Event.wait",
    "Thread.join",
    "_worker",
)


def _idle(stack: tuple[str, ...]) -> bool:
    leaf = stack[-1].partition(" (")[0] if stack else ""
    return leaf in IDLE_LEAVES


def summary(stacks: Stacks, top: int = 25) -> str:
    """
    Shares of the busy samples by thread, by self frame, and by inclusive
    frame. Samples whose innermost frame is a known wait (L{IDLE_LEAVES}) are
    counted as idle and left out: the C call a frame makes is sampled as the
    frame itself, so a little real work in those frames goes with them.
    """
    idle = sum(n for s, n in stacks.items() if _idle(s))
    stacks = {s: n for s, n in stacks.items() if not _idle(s)}
    total = sum(stacks.values())
    if not total:
        return "no samples\n"
    threads: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for stack, n in stacks.items():
        frames = list(stack)
        thread = frames.pop(0) if frames and frames[0].startswith(("thread", "process")) else "-"
        threads[thread] += n
        if frames:
            self_[_short(frames[-1])] += n
        for f in {_short(f) for f in frames}:
            incl[f] += n
    lines = [f"{total} busy samples ({idle} idle left out)", "", "by thread:"]
    lines += [f"  {n / total:6.1%}  {t}" for t, n in threads.most_common(8)]
    lines += ["", "self (where the samples were):"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in self_.most_common(top)]
    lines += ["", "inclusive (Python frames):"]
    ours = [(f, n) for f, n in incl.most_common() if f.endswith(".py)")]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in ours[:top]]
    return "\n".join(lines) + "\n"


def flamegraph(stacks: Stacks, title: str, width: int = 1200) -> str:
    """A static SVG flame graph (root at the bottom; hover a frame for its share)."""
    tree: dict[str, list] = {}  # name -> [count, children]
    total = 0
    for stack, n in stacks.items():
        total += n
        level = tree
        for frame in stack:
            node = level.setdefault(frame, [0, {}])
            node[0] += n
            level = node[1]
    row = 16
    depth = max((len(s) for s in stacks), default=0)
    height = (depth + 3) * row
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="11">',
        f'<text x="4" y="14">{html.escape(title)}: {total} samples</text>',
    ]
    scale = (width - 8) / total if total else 0

    def draw(level: dict[str, list], x: float, d: int) -> None:
        for name, (n, children) in sorted(level.items()):
            w = n * scale
            if w >= 0.3:
                y = height - (d + 1) * row
                hue = zlib.crc32(name.encode()) % 60
                label = html.escape(name)
                out.append(
                    f"<g><title>{label} ({n} samples, {n / total:.2%})</title>"
                    f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" '
                    f'fill="hsl({hue},80%,60%)"/>'
                )
                chars = int(w / 7)
                if chars >= 3:
                    text = name if len(name) <= chars else name[: chars - 2] + ".."
                    out.append(f'<text x="{x + 2:.1f}" y="{y + 12}">{html.escape(text)}</text>')
                out.append("</g>")
                draw(children, x, d + 1)
            x += w

    draw(tree, 4.0, 0)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    for arg in argv:
        path = Path(arg)
        stacks = load(path)
        print(summary(stacks))
        path.with_name(path.stem + ".svg").write_text(flamegraph(stacks, path.stem))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
