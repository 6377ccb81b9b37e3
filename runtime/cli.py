"""The ``tpo`` command: an umbrella that only registers the subcommands each installed part provides.

Parts register through the ``tpo_edge.commands`` entry-point group (see setup.py; in a source checkout that is not
pip-installed, e.g. ``python -m runtime.cli`` on a bare GPU machine, the same table is read from ``SOURCE_PARTS``):
each entry point is an ``add_parsers(subparsers)`` function (``runtime.commands``: run, stream, bench;
``tpo_core.cli``: ask, info, data, train, eval, convert; ``export.cli``: export, verify, build, demo). A part whose
dependencies are not installed (e.g. a runtime-only install without torch) is listed with the extra that brings it,
and its commands are absent. User errors (``ValueError`` / ``FileNotFoundError``, which name the problem and the
fix) exit 2 with the message; ``TPO_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import EntryPoint, PackageNotFoundError, entry_points, version

GROUP = "tpo_edge.commands"
# optional dependency (top-level module) -> the setup.py extra that installs it
EXTRA_OF = {**dict.fromkeys(("torch", "transformers", "peft", "safetensors", "scipy", "PIL", "sentencepiece", "google",
                             "onnx", "onnxscript"), "export"),
            "accelerate": "train", "matplotlib": "train", "triton": "gpu", "tensorrt_rtx": "trt",
            "tensorrt": "tensorrt"}
ORDER = ("core", "export", "runtime")  # help lists the parts in this order
# setup.py's entry points, for a source checkout without installed metadata
SOURCE_PARTS = {"core": "tpo_core.cli:add_parsers", "export": "export.cli:add_parsers",
                "runtime": "runtime.commands:add_parsers"}
EXTRA = {"core": "train", "export": "export"}  # pip extra that brings a part's dependencies


def _installed() -> bool:
    try:
        version("tpo-edge")
    except PackageNotFoundError:
        return False
    return True


def _parts() -> list[EntryPoint]:
    eps = list(entry_points(group=GROUP)) if _installed() else [EntryPoint(name, target, GROUP)
                                                                  for name, target in SOURCE_PARTS.items()]
    if not eps:
        raise SystemExit(f"tpo: no subcommands are registered (entry-point group {GROUP!r} is empty); reinstall "
                         "tpo-edge with `pip install -e .`")
    return sorted(eps, key=lambda e: (ORDER.index(e.name) if e.name in ORDER else 99, e.name))


def build_parser() -> argparse.ArgumentParser:
    """The parser with every loadable part's subcommands (parts that could not be loaded are named in its epilog)."""
    parser = argparse.ArgumentParser(prog="tpo", description="tpo-edge: train, export and deploy TPO video MLLMs")
    parser.add_argument("--version", action="version",
                        version=f"tpo-edge {version('tpo-edge') if _installed() else '(source checkout)'}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    missing = []
    for ep in _parts():
        try:
            add = ep.load()
        except ImportError as e:
            missing.append(f"'{ep.name}' commands need `pip install tpo-edge[{EXTRA.get(ep.name, 'all')}]` "
                           f"({e.name or e} is not installed)")
            continue
        add(sub)
    if missing:
        parser.epilog = "unavailable: " + "; ".join(missing)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as e:  # an optional dependency: say which extra brings it
        extra = EXTRA_OF.get((e.name or "").split(".")[0])
        if extra is None or os.environ.get("TPO_DEBUG"):
            raise
        print(f"tpo {args.command}: error: this command needs {e.name!r}, which is not installed: "
              f"`pip install 'tpo-edge[{extra}]'` (in a checkout: `pip install -e '.[{extra}]'`); the base install "
              "only runs export folders (tpo run, tpo stream, tpo bench)", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # user-facing errors say what is wrong and the fix
        if os.environ.get("TPO_DEBUG"):
            raise
        print(f"tpo {args.command}: error: {e}\n(set TPO_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a backend failed (an engine could not load or run): its message names the part
        if os.environ.get("TPO_DEBUG"):
            raise
        print(f"tpo {args.command}: failed: {e}\n(set TPO_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
