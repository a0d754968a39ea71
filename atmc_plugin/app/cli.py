"""The ``atmc`` command (also ``python -m atmc_plugin``).

Exit codes: 0 success, 2 bad input (recipe, data, device, folder, checkpoint), 1 failure
(a diverged run, an error inside a tool, an I/O error such as a full disk), 130 interrupted
(SIGINT), 143 terminated (SIGTERM). Every failure ends with one message naming what is kept and
how to continue; ``--debug`` (or ``ATMC_DEBUG=1``) shows the traceback of unexpected errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from ..errors import ATMCError, ConfigError, InputError, PluginError

log = logging.getLogger("atmc_plugin.app.cli")

EPILOG = """examples:
  atmc run examples/recipes/digits_tp_inc.toml            # the default recipe, a few minutes
  atmc run examples/recipes/digits_tp.toml --out runs/tp --seed 1
  atmc run examples/recipes/digits_tp.toml --out runs/tp --resume   # after an interruption
  atmc eval runs/tp/final.pt --preset standard
  atmc report runs/tp
  atmc plugins
  torchrun --nproc_per_node=2 -m atmc_plugin run examples/recipes/digits_tp.toml
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="atmc",
        description="Adversarially trained model compression with Torch-Pruning and INC.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    p.add_argument("--debug", action="store_true", help="tracebacks for unexpected errors")
    p.add_argument(
        "--verbose", action="store_true", help="also the tools' own log lines (INC, torchao)"
    )
    # The same flags after the subcommand (`atmc run R --debug`); SUPPRESS keeps the value
    # given before it when they are absent here.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="tracebacks"
    )
    common.add_argument(
        "--verbose", action="store_true", default=argparse.SUPPRESS, help="the tools' log lines"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="train, compress, evaluate and report a recipe", parents=[common]
    )
    run.add_argument("recipe", type=Path, help="TOML recipe (see examples/recipes/)")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override [run] device")
    run.add_argument("--out", type=Path, help="run folder (default: runs/<recipe name>)")
    run.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    run.add_argument("--seed", type=int, help="override [run] seed")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")

    ev = sub.add_parser(
        "eval", help="evaluate a run's final.pt (clean + robust accuracy)", parents=[common]
    )
    ev.add_argument("checkpoint", type=Path, help="RUN_DIR/final.pt")
    ev.add_argument("--preset", choices=("quick", "standard"), default="quick")
    ev.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ev.add_argument("--eps", type=float, help="l_inf radius (default: the recipe's)")

    exp = sub.add_parser(
        "export",
        help="write the run's models as files a serving stack loads (pt2, onnx, inc)",
        parents=[common],
    )
    exp.add_argument("run_dir", type=Path, help="a finished run folder (holds final.pt)")
    exp.add_argument(
        "--format",
        nargs="+",
        default=["pt2"],
        metavar="FORMAT",
        help="pt2 (torch.export), onnx (needs the onnx extra), inc (INC's own, for INC-shipped "
        "runs); default pt2",
    )
    exp.add_argument(
        "--batch",
        nargs="+",
        type=int,
        default=[1, 64],
        metavar="N",
        help="batch sizes each file is reloaded and checked at (default 1 64)",
    )
    exp.add_argument("--out", type=Path, help="folder to write (default RUN_DIR/export)")
    exp.add_argument("--no-latency", action="store_true", help="do not time the loaded files")

    rep = sub.add_parser(
        "report", help="rebuild report.md and the plots of a run folder", parents=[common]
    )
    rep.add_argument("run_dir", type=Path)

    sub.add_parser(
        "plugins", help="list installed hook implementations and adapters", parents=[common]
    )
    return p


def _cmd_run(args: argparse.Namespace) -> int:
    import dataclasses

    from .job import run_recipe
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe)
    if args.seed is not None and not 0 <= args.seed <= 2**63 - 1:
        raise ConfigError(f"--seed {args.seed} is out of range; give an integer in [0, 2**63 - 1].")
    if args.seed is not None:
        raw = {**recipe.raw, "run": {**recipe.raw.get("run", {}), "seed": args.seed}}
        recipe = dataclasses.replace(recipe, raw=raw, seed=args.seed)
    out = args.out or Path("runs") / recipe.name
    results = run_recipe(
        recipe,
        out,
        device=args.device,
        resume=args.resume,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    if results:
        ev = results["evaluation"]
        size = results["size"].get("size_ratio")
        size_text = "n/a" if size is None else f"{size:.4g}"
        dense, comp = ev["dense"], ev["compressed"]
        _say(f"dense:      clean {dense['clean']:.4f}  robust {dense['robust']:.4f}")
        _say(
            f"compressed: clean {comp['clean']:.4f}  robust {comp['robust']:.4f}  "
            f"size ratio {size_text}"
        )
        _say(f"report: {out / 'report.md'}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import dataclasses

    from .build import resolve_device
    from .evaluation import evaluate_pair
    from .final import load_final

    device = resolve_device(args.device)
    recipe, data, _model, shipped = load_final(args.checkpoint, device)
    if args.eps is not None:
        recipe = dataclasses.replace(recipe, eps=args.eps)
    progress = sys.stderr.isatty()
    out, _seconds = evaluate_pair(
        recipe, data, {"compressed": shipped}, args.preset, device, progress
    )
    _say(json.dumps(out["compressed"], indent=1))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .exporting import export_run

    records = export_run(
        args.run_dir, args.format, args.batch, args.out, latency=not args.no_latency
    )
    for r in records:
        batch = "any batch" if r.dynamic_batch else f"batch {r.checked_batches[0]} only"
        _say(f"{r.name} {r.format}: {r.path}  {r.bytes:,} bytes, {batch}; load: {r.load}")
        for kind in ("eager", "compiled", "runtime"):
            times = (r.latency or {}).get(kind) or {}
            if times:
                shown = ", ".join(f"batch {b}: {ms:.3f} ms" for b, ms in times.items())
                _say(f"    {kind}: {shown}")
        for where, error in ((r.latency or {}).get("errors") or {}).items():
            _say(f"    {where} failed: {error}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report_md import write_report
    from .rundir import require_run_dir

    path = write_report(require_run_dir(args.run_dir))
    _say(path)
    return 0


def _cmd_plugins(_args: argparse.Namespace) -> int:
    from ..plugins import get_plugin_manager, plugin_origins

    pm = get_plugin_manager()
    origins = plugin_origins(pm)
    adapters = {id(impl.plugin) for impl in pm.hook.atmc_build_adapter.get_hookimpls()}
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda kv: str(kv[0])):
        if plugin is None:
            _say(f"{name}  (blocked)")
            continue
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        kind = "adapter" if id(plugin) in adapters else "plugin"
        _say(f"{name}  [{kind}, {origins[name]}]  {getattr(plugin, '__name__', plugin)}")
        _say(f"    hooks: {', '.join(hooks)}")
        declare = getattr(plugin, "atmc_command_sections", None)
        if "atmc_command_sections" in hooks and callable(declare):
            sections = declare()
            _say(f"    recipe sections: {', '.join(f'[{s}]' for s in sections)}")
    return 0


def _say(text: object) -> None:
    """The command's own output (results, paths, listings) goes to stdout; logs go to stderr."""
    sys.stdout.write(f"{text}\n")


COMMANDS = {
    "run": _cmd_run,
    "eval": _cmd_eval,
    "export": _cmd_export,
    "report": _cmd_report,
    "plugins": _cmd_plugins,
}


class Terminated(Exception):
    """SIGTERM arrived (raised by the command's signal handler, so cleanup runs)."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise Terminated()


def _kept(args: argparse.Namespace, transient: bool = True) -> str:
    """What an interrupted command leaves behind, and how to continue.

    ``--resume`` is suggested only for ``transient`` causes (a signal, an I/O error): an error
    of the recipe, the data or the code would happen again on resume.
    """
    from .rundir import RunDir

    if args.command == "export":
        return (
            "the files already written are complete and checked (manifest.json lists them); "
            "remove them to export again"
        )
    if args.command != "run":
        return "nothing was changed"
    out = args.out or f"runs/<{args.recipe.stem} run name>"
    if transient:
        return (
            f"the run folder {out} keeps its last completed epoch; continue with "
            f"`atmc run {args.recipe} --out {out} --resume`"
        )
    dense = RunDir(Path(out)).dense
    reuse = (
        f"; to keep the pre-training after you fix the recipe, start a new run with "
        f"[model] weights = {str(dense)!r} and pretrain_epochs = 0"
        if dense.is_file()
        else ""
    )
    return (
        f"the run folder {out} keeps its last completed epoch, but --resume would meet the "
        f"same error: fix its cause first{reuse}"
    )


THIRD_PARTY_LOGGERS = ("neural_compressor", "torchao", "torch.utils._pytree")
"""Loggers whose import-time and conversion chatter (accelerator detection, optional kernels
that are not installed, deprecations inside torch, "converted in qdq mode") is not about the
user's model: errors only, unless ``--verbose``."""


def _route_third_party_logs(verbose: bool) -> None:
    """Keep the tools' chatter off the console unless ``--verbose``; our own warnings (and
    Python warnings about the user's model) are untouched."""
    # INC sets its logger's level from LOGLEVEL when it is first imported (default INFO).
    os.environ.setdefault("LOGLEVEL", "INFO" if verbose else "ERROR")
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``atmc``; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    _route_third_party_logs(args.verbose)
    debug = args.debug or os.environ.get("ATMC_DEBUG", "") not in ("", "0")
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, InputError, PluginError) as exc:
        log.error("%s", exc)
        return 2
    except ATMCError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted (SIGINT); %s.", _kept(args))
        return 130
    except Terminated:
        log.error("terminated (SIGTERM); %s.", _kept(args))
        return 143
    except OSError as exc:
        if debug:
            raise
        log.error("I/O error: %s; %s.", exc, _kept(args))
        return 1
    except Exception as exc:
        if debug:
            raise
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        log.error(
            "%s: %s; %s. Run with --debug (or ATMC_DEBUG=1) for the traceback.",
            type(exc).__name__,
            first,
            _kept(args, transient=False),
        )
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
