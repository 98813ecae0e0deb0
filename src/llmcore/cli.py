"""Command line: ``llmcore --list``, ``llmcore --module mdp --toy`` (also ``python run.py ...``), and
``llmcore serve --port 8000`` (the inference chapter's OpenAI-compatible server; needs the ``serve`` extra).

Bad input (unknown module, bad device, bad seed) prints one ``error:`` line and exits 2.
"""

from __future__ import annotations

import argparse
import sys

from llmcore.core.errors import LLMCoreError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own code)
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llmcore", description="Run one LLM-Core closed loop in a terminal.")
    p.add_argument("--list", action="store_true", help="list the registered modules and exit")
    p.add_argument("--module", "-m", help="module name (see --list)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--toy", dest="toy", action="store_true", default=True,
                      help="toy mode: fits a 2-core CPU (default)")
    mode.add_argument("--full", dest="toy", action="store_false", help="full-size run (for a GPU)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", default=None, help="report folder (default: output/reports)")
    return p


def list_modules() -> str:
    from llmcore.core.registry import MODULES

    width = max(len(m.name) for m in MODULES)
    lines = []
    for m in MODULES:
        status = "written" if m.written else "planned"
        lines.append(f"{m.name:<{width}}  {status:<7}  {m.title_en} / {m.title_zh}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.list:
            print(list_modules())
            return 0
        if not args.module:
            raise LLMCoreError("give --module NAME (or --list to see the names)")
        from llmcore.core.device import pick_device
        from llmcore.core.paths import output_dir
        from llmcore.core.registry import get, run_module

        mod = get(args.module)
        if not mod.written:
            raise LLMCoreError(f"module {mod.name!r} is on the knowledge map but not written yet")
        if args.seed < 0:
            raise LLMCoreError(f"--seed must be >= 0, got {args.seed}")
        pick_device(args.device)  # validate before any work starts
        print(f"running {mod.name} ({mod.title}) toy={args.toy} device={args.device} seed={args.seed}",
              flush=True)
        report = run_module(mod.name, toy=args.toy, device=args.device, seed=args.seed)
        print(report.to_markdown())
        out = output_dir("reports") if args.out is None else args.out
        js, md = report.save(out)
        print(f"report written to {js} and {md}")
        return 0 if report.passed else 1
    except LLMCoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def serve(argv: list[str]) -> int:
    """``llmcore serve [--port N] ...``: the OpenAI-compatible server over the inference engine."""
    try:
        try:  # optional dependency: the `serve` extra (fastapi, uvicorn)
            from llmcore.engineering.inference.server import serve_main
        except ImportError as e:
            raise LLMCoreError(f"llmcore serve needs the serve extra (pip install 'llmcore[serve]'): {e}") from None
        return serve_main(argv)
    except LLMCoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
