"""The ``canidae`` command: the typer app, its global options, and the one place where failures
become an exit code and a line on stderr.

It owns the list of nouns (:data:`NOUNS`), the global options (stored on
``canidae.cli.output.GLOBALS``) and :func:`main`/:func:`run`. It does no work of any noun.

Conventions for the modules that implement nouns (``cli/<noun>.py``):

* A noun with verbs exposes ``app = typer.Typer(help=..., no_args_is_help=True,
  add_completion=False)``; a command without verbs (``place``, ``top``) is a plain function.
  Registering it is one line in :data:`NOUNS`: ``("pack", "canidae.cli.pack:app")``.
* Commands never catch errors to print them. They raise a ``canidae.core.errors.CanidaeError``
  subclass and :func:`report_failure` prints ``canidae: error: <message>`` and exits with the
  class's code. Do not call ``sys.exit`` or return ints; a command returns ``None``.
* ``--json``: take ``json: JsonOption = False`` and print through ``canidae.cli.output.emit``,
  which honours both the command's flag and the global one; diagnostics go to ``err_console``.
  Failures print nothing on stdout, with or without ``--json``.
* Arguments and options naming a pack, a node or a zone use the metavars ``PACK``, ``NODE`` and
  ``ZONE`` (``canidae.cli.output``): the shell completions complete live names for them.
* After changing the command tree, regenerate the completions and the man page:
  ``python scripts/gen_docs.py`` (a test fails while they are stale).

A noun or the bare ``canidae`` without a verb prints its help on stdout and exits 2: no command
was given, so it is a usage error and nothing was done. ``--help`` prints the same help and
exits 0.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import typer.main
from typer.core import TyperGroup

from canidae import __version__
from canidae.cli.output import DEFAULT_CONFIG_PATH, GLOBALS, JsonOption, fit_to_stdout
from canidae.core.errors import EXIT_CODES_HELP, EXIT_FAILED, EXIT_USAGE, CanidaeError

try:
    # typer >= 0.22 carries its own copy of click; its exceptions are not the click package's.
    from typer import _click as _typer_click
except ImportError:  # pragma: no cover - older typer builds on the click package itself
    import click as _typer_click  # type: ignore[no-redef]

PROG = "canidae"
EXIT_INTERRUPTED = 130
DEBUG_ENV = "CANIDAE_DEBUG"

# The command tree: (name, "module:attribute"). A typer app becomes a noun with verbs, a function
# a command of its own. A noun moves to its real module by changing its target here.
NOUNS: tuple[tuple[str, str], ...] = (
    ("cluster", "canidae.cli.cluster:app"),
    ("agent", "canidae.cli.agent:app"),
    ("node", "canidae.cli.node:app"),
    ("pack", "canidae.cli.pack:app"),
    ("place", "canidae.cli.place:place"),
    ("yip", "canidae.cli.yip:app"),
    ("ring", "canidae.cli.ring:app"),
    ("drill", "canidae.cli.drill:app"),
    ("scale-test", "canidae.cli.scaletest:app"),
    ("metrics", "canidae.cli.metrics:metrics"),
    ("keys", "canidae.cli.keys:app"),
    ("top", "canidae.cli.top:top"),
    ("events", "canidae.cli.events:app"),
    ("history", "canidae.cli.history:app"),
    ("token", "canidae.cli.token:app"),
    ("policy", "canidae.cli.policy:app"),
    ("audit", "canidae.cli.audit:app"),
    ("fleet", "canidae.cli.fleet:app"),
    ("autoscale", "canidae.cli.autoscale:app"),
)

# (command line, what it does): shown in the help epilog and the man page's EXAMPLES.
EXAMPLES: tuple[tuple[str, str], ...] = (
    ("canidae cluster up --agents 3", "start three server agents on this host and write the config"),
    ("canidae pack spawn web --cpu 500 --mem 256 -- python -m http.server", "run a pack and say where"),
    ("canidae --json pack list", "list packs as one JSON document"),
    ("canidae node drain n7 --timeout 60", "move every pack off node n7"),
    ("canidae drill failover", "kill the Raft leader and time the recovery"),
)

HELP = (
    "canidae places and runs isolated workloads (packs) on a fleet of hosts. "
    "It drives the canidae agent running on every host; a few agents (the servers) hold the "
    "cluster state in a Raft group. The target cluster comes from --addr, CANIDAE_ADDR or the "
    "config file written by 'cluster up' or 'fleet bootstrap'."
)
EPILOG = "\n\n".join([EXIT_CODES_HELP, "\n".join(["Examples:", *(f"  $ {cmd}" for cmd, _ in EXAMPLES)])])


def _load(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def _split_addrs(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def _check_addr(value: str | None) -> str | None:
    for item in _split_addrs(value):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise typer.BadParameter(f"{item!r} is not host:port")
    return value


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"{PROG} {__version__}\n")
        raise typer.Exit()


def global_options(
    json: JsonOption = False,
    addr: Annotated[
        str | None,
        typer.Option(
            "--addr", envvar="CANIDAE_ADDR", metavar="HOST:PORT,...", callback=_check_addr,
            help="Agent API address(es), comma-separated; any agent will do.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="CANIDAE_TOKEN", metavar="TOKEN", help="API token (bearer)."),
    ] = None,
    config: Annotated[
        Path,
        typer.Option(
            "--config", metavar="PATH", envvar="CANIDAE_CONFIG",
            help="Client config: addresses and token, when not given above.",
        ),
    ] = Path(DEFAULT_CONFIG_PATH),
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    # Every field is assigned on every run, so nothing leaks between runs in one process (tests).
    GLOBALS.json = json
    GLOBALS.addr = _split_addrs(addr)
    GLOBALS.token = token or None
    GLOBALS.config_path = config.expanduser()
    fit_to_stdout()


class _NounOrderGroup(TyperGroup):
    """Lists commands in the order of :data:`NOUNS` (typer would put plain commands first)."""

    def list_commands(self, ctx: Any) -> list[str]:
        order = {name: i for i, (name, _) in enumerate(NOUNS)}
        return sorted(super().list_commands(ctx), key=lambda name: (order.get(name, len(order)), name))


def build_app(only: str | None = None) -> typer.Typer:
    """The ``canidae`` typer app with every entry of :data:`NOUNS` registered (or, with ``only``,
    that one noun: a command line that names its noun loads no other module, which keeps
    ``canidae pack list`` from importing the drills, the scale test and the rest)."""
    root = typer.Typer(
        name=PROG,
        cls=_NounOrderGroup,
        help=HELP,
        epilog=EPILOG,
        no_args_is_help=True,
        add_completion=False,  # completions are generated files (scripts/gen_docs.py), not typer's
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
        context_settings={"help_option_names": ["--help", "-h"]},
    )
    root.callback()(global_options)
    for name, target in NOUNS:
        if only is not None and name != only:
            continue
        entry = _load(target)
        if isinstance(entry, typer.Typer):
            root.add_typer(entry, name=name)
        else:
            root.command(name)(entry)
    return root


_GLOBAL_VALUE_OPTIONS = ("--addr", "--token", "--config")


def _noun_of(args: Sequence[str]) -> str | None:
    """The noun a command line names (its first word after the global options), if it is one."""
    nouns = {name for name, _ in NOUNS}
    skip = False
    for word in args:
        if skip:
            skip = False
            continue
        if word in _GLOBAL_VALUE_OPTIONS:
            skip = True
            continue
        if word.startswith("-"):
            continue
        return word if word in nouns else None
    return None


def _full_app() -> typer.Typer:
    built = globals().get("app")
    if built is None:
        globals()["app"] = built = build_app()
    return built  # type: ignore[no-any-return]


def __getattr__(name: str) -> Any:
    # ``app``, the whole tree, is built on first use (docs, completions, tests, --help), not on
    # import: running one command builds only its noun (see main).
    if name == "app":
        return _full_app()
    raise AttributeError(name)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _message(exc: BaseException) -> str:
    """The message of a click-style exception (with its suggestions), else ``str(exc)``."""
    format_message = getattr(exc, "format_message", None)
    return str(format_message()) if callable(format_message) else str(exc)


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _exception_classes(name: str) -> tuple[type[BaseException], ...]:
    """The class called ``name`` in typer's click and, when installed, in the click package."""
    found: list[type[BaseException]] = []
    for module in (_typer_click.exceptions, typer):
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    try:
        import click  # code built on click directly raises click's own classes
    except ImportError:
        pass
    else:
        cls = getattr(click.exceptions, name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(dict.fromkeys(found))


_EXITS = _exception_classes("Exit")
_ABORTS = _exception_classes("Abort")
_NO_ARGS_HELP = _exception_classes("NoArgsIsHelpError")
_USAGE_ERRORS = _exception_classes("UsageError")
_CLICK_ERRORS = _exception_classes("ClickException")


def _command_path(argv: Sequence[str]) -> str:
    """The command that ``argv`` names, for errors raised without a context (an option's value
    missing). Words that are not subcommands are skipped, so it is a best guess."""
    try:
        command = typer.main.get_command(_full_app())
        path = [PROG]
        for word in argv:
            sub = getattr(command, "commands", {}).get(word)
            if sub is not None:
                command, path = sub, path + [word]
        return " ".join(path)
    except Exception:  # noqa: BLE001 - a hint must never turn into a second failure
        return ""


def report_failure(exc: BaseException, argv: Sequence[str] | None = None) -> int:
    """Print the one line that explains ``exc`` on stderr and return the exit code for it.

    ``argv`` (the command line) only sharpens the hint of a usage error that carries no context.

    The only place where exceptions become exit codes: typed errors keep their code, usage
    errors exit 2, interrupts 130, anything unexpected 1 (with a traceback only under
    CANIDAE_DEBUG=1).
    """
    if isinstance(exc, SystemExit):
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        _say(f"{PROG}: error: {_one_line(str(exc.code))}")
        return EXIT_FAILED
    if isinstance(exc, _EXITS):
        return int(getattr(exc, "exit_code", 0) or 0)
    if isinstance(exc, _NO_ARGS_HELP):
        # typer's rich help was printed on stdout as the error was built; plain click's help is
        # the message. Either way help goes to stdout, like --help, but the exit says "no command".
        if _message(exc).strip():
            sys.stdout.write(_message(exc).rstrip("\n") + "\n")
        return EXIT_USAGE
    if isinstance(exc, _USAGE_ERRORS):
        ctx = getattr(exc, "ctx", None)
        path = ctx.command_path if ctx is not None else _command_path(argv) if argv is not None else ""
        hint = f" (see '{path} --help')" if path else ""
        _say(f"{PROG}: error: {_one_line(_message(exc))}{hint}")
        return EXIT_USAGE
    if isinstance(exc, CanidaeError):
        if _debug():
            traceback.print_exception(exc, file=sys.stderr)
        _say(f"{PROG}: error: {_one_line(exc.message) or exc.code}")
        return exc.exit_code
    if isinstance(exc, _CLICK_ERRORS):
        _say(f"{PROG}: error: {_one_line(_message(exc))}")
        return int(getattr(exc, "exit_code", EXIT_FAILED))
    if isinstance(exc, (KeyboardInterrupt, *_ABORTS)):
        _say(f"{PROG}: interrupted")
        return EXIT_INTERRUPTED
    if _debug():
        traceback.print_exception(exc, file=sys.stderr)
    _say(
        f"{PROG}: internal error: {type(exc).__name__}: {_one_line(str(exc))} "
        f"(set {DEBUG_ENV}=1 for a traceback)"
    )
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); return its exit code, never raise."""
    args = list(sys.argv[1:] if argv is None else argv)
    noun = _noun_of(args)
    try:
        if noun is None and args[:1] == ["--version"]:
            _print_version(True)
        command = build_app(only=noun) if noun is not None else _full_app()
        result = command(args=args, prog_name=PROG, standalone_mode=False)
    except BaseException as exc:  # noqa: BLE001 - this is the one place failures are mapped
        return report_failure(exc, args)
    if result == EXIT_INTERRUPTED:
        # typer turns Ctrl-C inside a command into a silent Exit(130); say why we stopped.
        _say(f"{PROG}: interrupted")
    # typer returns the Exit code of a command that exited early, else the command's return value.
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def run() -> NoReturn:
    """Console-script entry point."""
    sys.exit(main())
