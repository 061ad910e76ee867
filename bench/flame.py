"""A sampling profile of the production server under the hot-row load: `make serve` (granian
and its workers), wrk sending PATCH /items/<id>/qty from 32 connections, and py-spy sampling
every worker meanwhile. The flame graph goes to bench/results/flame-hot-row-<engine>.svg, and
where the time goes, as text (the functions that were on the stack in most samples, and those
running in most), to flame-hot-row-<engine>.md.

    .venv/bin/python bench/flame.py [--duration 20]                       # the embedded SQLite
    scripts/with-postgres .venv/bin/python bench/flame.py --engine postgres

Needs wrk and py-spy (bench/requirements.txt; py-spy reads other processes' memory, which
needs ptrace: root, or kernel.yama.ptrace_scope = 0).
"""

import argparse
import collections
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # bench/run.py, beside this file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--duration", type=float, default=20, help="seconds of load, all of them sampled")
    parser.add_argument("--rate", type=int, default=200, help="samples per second and process")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--label", default="", help="added to the output files' names (before, after...)")
    args = parser.parse_args()
    args.workers = args.threads = None
    args.wrk_threads = 1

    env, _, _, workdir = run.prepare(args.engine, args, 1, "flame")
    server = run.start_server("make --no-print-directory -s serve", env, workdir / "server.log")
    name = f"flame-hot-row-{args.engine}{'-' + args.label if args.label else ''}"
    output, stacks = run.RESULTS / f"{name}.svg", workdir / "stacks.txt"
    try:
        run.run_wrk("hot_row", args.connections, 2, env, args, server.pid)  # warm-up
        # Two samplers at once, each at half the rate: py-spy writes one format per run.
        profilers = [
            subprocess.Popen(py_spy(server.pid, args, output_format, path), stdout=subprocess.DEVNULL)
            for output_format, path in (("flamegraph", output), ("raw", stacks))
        ]
        sample = run.run_wrk("hot_row", args.connections, args.duration, env, args, server.pid)
        if any(profiler.wait() != 0 for profiler in profilers):
            sys.exit("py-spy failed (it needs ptrace: run as root, or set kernel.yama.ptrace_scope = 0)")
    finally:
        run.stop_server(server)
    if sample["errors"]:
        sys.exit(f"{sample['errors']} requests failed while sampled: the profile would not be of writes")
    summary = f"{sample['rps']:.0f} req/s, p99 {sample['p99_ms']:.1f} ms while sampled"
    command = " ".join(["bench/flame.py", *sys.argv[1:]])
    report = where_the_time_goes(stacks.read_text(), args.engine, summary, command)
    (run.RESULTS / f"{name}.md").write_text(report)
    print(f"{summary}; flame graph: {output}, top functions: {output.with_suffix('.md')}")


def py_spy(pid: int, args, output_format: str, path: Path) -> list[str]:
    return [
        str(Path(run.PYTHON).parent / "py-spy"),
        "record",
        "--pid", str(pid),
        "--subprocesses",
        "--nonblocking",  # samples without pausing the workers: no skew of their timing
        "--rate", str(max(1, args.rate // 2)),
        "--duration", str(round(args.duration)),
        "--format", output_format,
        "--output", str(path),
    ]  # fmt: skip


def where_the_time_goes(collapsed: str, engine: str, summary: str, command: str, top: int = 25) -> str:
    """A markdown table of the functions in most samples of the workers' request threads,
    from py-spy's raw output (one "frame;frame;...;frame count" line per distinct stack):
    "on stack" counts a sample once for a function anywhere on its stack (its own time and
    its callees'), "running" only for the innermost frame."""
    on_stack, running, total = collections.Counter(), collections.Counter(), 0
    for line in collapsed.splitlines():
        frames, _, count = line.rpartition(" ")
        if not frames or "wsgi" not in frames:  # the app's threads only: not granian's or the worker's
            continue
        count = int(count)
        total += count
        # "function (path/to/file.py:123)" -> "function (file.py)": a function, not a line
        names = [re.sub(r" \((?:.*/)?([^/:]+):\d+\)$", r" (\1)", frame) for frame in frames.split(";")]
        names = [name for name in names if not name.startswith("process ")]  # py-spy's process frames
        on_stack.update(dict.fromkeys(names, count))
        running[names[-1]] += count
    lines = [
        f"# Where a hot-row write's time goes ({engine})",
        "",
        f"py-spy samples of `make serve`'s workers under PATCH /items/<id>/qty, 32 connections ({summary});",
        f"{total} samples of threads running the app. Command: `{command}`.",
        "",
        "| function | on stack | running |",
        "| --- | ---: | ---: |",
    ]
    for name, count in on_stack.most_common(top):
        lines.append(f"| `{name}` | {count / total:.1%} | {running[name] / total:.1%} |")
    lines += ["", "Running most often:", "", "| function | running |", "| --- | ---: |"]
    for name, count in running.most_common(top):
        lines.append(f"| `{name}` | {count / total:.1%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
