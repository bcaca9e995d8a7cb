"""How long the command line takes to answer ``--help``: the cost of importing before parsing.

    python benchmarks/cli_startup.py                 # every subcommand's --help, 5 rounds
    python benchmarks/cli_startup.py --repeats 9 --commands train segment
    python benchmarks/cli_startup.py --source old=/tmp/cosegkit-old --source new=.   # two trees side by side

What is measured, each in a fresh process (``subprocess.run``, wall time with
``time.perf_counter`` around it, the interpreter's own start included):

- ``python -c pass``: the interpreter alone, the floor;
- ``import cosegkit``: the package's import;
- ``cosegkit --help`` and ``cosegkit <command> --help`` for each subcommand
  (``python -m cosegkit ...``, as the ``cosegkit`` script runs ``cosegkit.cli:main``).

The rounds are interleaved (one call of each per round), so a slow spell of a shared machine
hits all of them alike; the table gives the median, the fastest and the slowest call of each.
``--source LABEL=DIR`` (repeatable) runs every call against the cosegkit source tree at ``DIR``
(put first on ``PYTHONPATH``), interleaved with the other trees: a before/after comparison on
the same machine at the same time (e.g. a ``git worktree`` of an older commit beside this one).
``--importtime`` adds the ten slowest imports made by the modules ``cosegkit --help`` loads,
one and two levels down, by cumulative time (``python -X importtime``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time



def _commands() -> list[str]:
    """Every subcommand of the ``cosegkit`` command, read from its parser (a light import)."""
    from cosegkit.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return list(sub.choices)


def _time(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()  # from a neutral folder: `python -m`/`-c` put the working folder first on sys.path
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-500:]}")
    return elapsed


def _slowest_imports(env: dict[str, str], count: int = 10) -> list[tuple[float, str]]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cosegkit", "--help"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        depth = (len(name) - len(name.lstrip()) - 1) // 2  # -X importtime indents each level by 2
        if 1 <= depth <= 2:  # what the package and its modules import; their time includes their children
            rows.append((int(cumulative) / 1e6, "  " * (depth - 1) + name.strip()))
    return sorted(rows, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--commands", nargs="+", default=None, help="subcommands whose --help is timed (default all)")
    parser.add_argument(
        "--source",
        action="append",
        default=None,
        metavar="LABEL=DIR",
        help="time the cosegkit source tree at DIR (repeatable; default: the installed package)",
    )
    parser.add_argument("--importtime", action="store_true", help="also list the slowest imports of --help")
    args = parser.parse_args()

    sources = [tuple(item.split("=", 1)) for item in args.source] if args.source else [("", "")]
    commands = args.commands or _commands()
    cases: dict[str, tuple[list[str], dict[str, str]]] = {}
    for label, folder in sources:
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        if folder:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.abspath(folder), env.get("PYTHONPATH", "")]))
        tag = f"[{label}] " if label else ""
        argvs = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "import cosegkit": [sys.executable, "-c", "import cosegkit"],
            "cosegkit --help": [sys.executable, "-m", "cosegkit", "--help"],
        }
        for command in commands:
            argvs[f"cosegkit {command} --help"] = [sys.executable, "-m", "cosegkit", command, "--help"]
        for name, argv in argvs.items():
            if name == "python -c pass" and cases:
                continue  # the interpreter's floor once
            cases[tag + name] = (argv, env)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for argv, env in cases.values():  # one warm-up call each: the file cache, not the imports, is warmed
        _time(argv, env)
    for _ in range(args.repeats):
        for name, (argv, env) in cases.items():
            times[name].append(_time(argv, env))
    width = max(len(name) for name in cases)
    print(f"{'call':<{width}}  {'median s':>9}  {'min s':>7}  {'max s':>7}")
    for name, values in times.items():
        print(f"{name:<{width}}  {statistics.median(values):>9.3f}  {min(values):>7.3f}  {max(values):>7.3f}")
    print(f"\n{args.repeats} rounds, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    if args.importtime:
        print("\nslowest imports of `cosegkit --help`, one and two levels down (cumulative s):")
        for seconds, name in _slowest_imports(next(iter(cases.values()))[1]):
            print(f"  {seconds:7.3f}  {name}")


if __name__ == "__main__":
    main()
