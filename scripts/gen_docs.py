"""Generate the shell completions and the man page of ``canidae`` from its command tree.

Writes ``completions/canidae.bash``, ``completions/_canidae`` (zsh), ``completions/canidae.fish``
and ``man/canidae.1`` from ``typer.main.get_command(canidae.cli.main.app)``. The files are
committed; ``--check`` exits 1 naming the stale ones (a test runs it), so whoever changes the
command line regenerates them:

    python scripts/gen_docs.py            # rewrite the files
    python scripts/gen_docs.py --check    # exit 1 if any is stale

The output is deterministic: commands and options are sorted, nothing depends on the date, the
terminal or the environment.

Completions are static (subcommands, options, option values from choices, file names for paths)
except where an argument or option names a pack, a node or a zone (metavar ``PACK``, ``NODE``,
``ZONE``; see ``canidae.cli.output``): there they run ``canidae pack list --json --stale`` or
``canidae node list --json --stale`` and take the values of the ``"name"`` keys (packs), the
``"id"``/``"name"`` keys (nodes) or the ``"zone"`` keys (zones). Any failure completes nothing,
silently.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer.main

from canidae import __version__
from canidae.cli import main as cli_main
from canidae.cli.output import DEFAULT_CONFIG_PATH, NODE_METAVAR, PACK_METAVAR, ZONE_METAVAR
from canidae.core import errors

ROOT = Path(__file__).resolve().parent.parent
# The fixed parts of the completion scripts, kept as files in their own languages.
TEMPLATES = Path(__file__).resolve().parent / "doc_templates"
PROG = cli_main.PROG

# What completes the value of a parameter with one of these metavars: live names from the cluster.
NAME_KINDS = {PACK_METAVAR: "pack", NODE_METAVAR: "node", ZONE_METAVAR: "zone"}


# --------------------------------------------------------------------------------------------
# The command tree, reduced to what the generators need.


@dataclass(frozen=True)
class Value:
    """How a parameter's value completes: ``kind`` is "", "choice", "file", "pack", "node" or "zone"."""

    kind: str = ""
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Opt:
    names: tuple[str, ...]  # e.g. ("--file", "-f"); a --x/--no-x pair is two Opts
    takes_value: bool
    repeatable: bool
    value: Value
    metavar: str
    help: str
    record: tuple[str, str]  # (synopsis, help with defaults) as --help shows them
    exclusive_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class Arg:
    metavar: str
    required: bool
    variadic: bool
    value: Value
    help: str


@dataclass
class Cmd:
    path: tuple[str, ...]
    help: str  # as written: paragraphs, and indented blocks that the man page keeps verbatim
    short_help: str
    options: list[Opt] = field(default_factory=list)
    args: list[Arg] = field(default_factory=list)
    children: list[Cmd] = field(default_factory=list)

    @property
    def name(self) -> str:
        return " ".join(self.path)

    @property
    def is_group(self) -> bool:
        return bool(self.children)

    def walk(self) -> Iterable[Cmd]:
        yield self
        for child in self.children:
            yield from child.walk()

    def usage(self) -> str:
        parts = [self.name, "[OPTIONS]"]
        if self.is_group:
            parts.append("COMMAND")
        for arg in self.args:
            text = arg.metavar + ("..." if arg.variadic else "")
            parts.append(text if arg.required else f"[{text}]")
        return " ".join(parts)


def _value_of(param: Any) -> Value:
    metavar = param.metavar or ""
    if metavar in NAME_KINDS:
        return Value(NAME_KINDS[metavar])
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        if descriptor.is_choice:
            return Value("choice", tuple(str(getattr(c, "value", c)) for c in descriptor.choices or ()))
        if descriptor.is_path or descriptor.is_file:
            return Value("file")
    return Value()


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    match = re.match(r"(.+?[.;:])(\s|$)", text)
    return (match.group(1) if match else text).rstrip(".;:")


def _build(command: Any, ctx: Any, path: tuple[str, ...]) -> Cmd:
    help_text = (command.help or "").strip("\n")
    node = Cmd(path=path, help=help_text, short_help=_first_sentence(command.get_short_help_str(200)))
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "argument":
            node.args.append(
                Arg(
                    metavar=param.metavar or param.name.upper(),
                    required=bool(param.required),
                    variadic=param.nargs == -1,
                    value=_value_of(param),
                    help=" ".join((param.help or "").split()),
                )
            )
            continue
        takes_value = not (getattr(param, "is_flag", False) or getattr(param, "count", False))
        record = param.get_help_record(ctx) or ("", "")
        record = (record[0], " ".join(record[1].split()))
        help_text = " ".join((param.help or "").split())
        pair = tuple(param.opts) + tuple(param.secondary_opts)
        groups = [tuple(param.opts)]
        if param.secondary_opts:
            groups.append(tuple(param.secondary_opts))
        for names in groups:
            node.options.append(
                Opt(
                    names=names,
                    takes_value=takes_value,
                    repeatable=bool(getattr(param, "multiple", False)),
                    value=_value_of(param) if takes_value else Value(),
                    metavar=param.metavar or (param.name or "value").upper(),
                    help=help_text,
                    record=record,
                    exclusive_with=pair if param.secondary_opts else names,
                )
            )
    node.options.sort(key=lambda o: _long_name(o).lstrip("-"))
    if hasattr(command, "list_commands"):
        for name in sorted(command.list_commands(ctx)):
            sub = command.get_command(ctx, name)
            if sub is None or getattr(sub, "hidden", False):
                continue
            sub_ctx = sub.make_context(name, [], parent=ctx, resilient_parsing=True)
            node.children.append(_build(sub, sub_ctx, path + (name,)))
    return node


def _long_name(opt: Opt) -> str:
    longs = [n for n in opt.names if n.startswith("--")]
    return longs[0] if longs else opt.names[0]


def command_tree(app: typer.Typer | None = None) -> Cmd:
    """The command tree of ``app`` (default: the ``canidae`` app), sorted by name at every level."""
    command = typer.main.get_command(app or cli_main.app)
    # make_context, as a real run does, so context settings (help option names) apply.
    ctx = command.make_context(PROG, [], resilient_parsing=True)
    return _build(command, ctx, (PROG,))


# --------------------------------------------------------------------------------------------
# bash


def _sh_words(words: Iterable[str]) -> str:
    return " ".join(words)


def _kind_word(value: Value) -> str:
    if value.kind == "choice":
        return "choice:" + " ".join(value.choices)
    return value.kind or "none"


BASH_HEAD = (TEMPLATES / "bash_head.bash").read_text()

BASH_BODY = (TEMPLATES / "bash_body.bash").read_text()


def gen_bash(tree: Cmd) -> str:
    out = [BASH_HEAD]
    for cmd in tree.walk():
        if cmd.is_group:
            out.append(f'        "{cmd.name}") echo "{_sh_words(c.path[-1] for c in cmd.children)}" ;;\n')
    out.append("    esac\n}\n\n# Options of a command path.\n_canidae_options() {\n    case \"$1\" in\n")
    for cmd in tree.walk():
        names = sorted(n for o in cmd.options for n in o.names)
        out.append(f'        "{cmd.name}") echo "{_sh_words(names)}" ;;\n')
    out.append(
        "    esac\n}\n\n"
        "# How the value of an option completes (choice:..., file, pack, node, zone or none);\n"
        "# fails for an option that takes no value.\n"
        "_canidae_option_value() {\n    case \"$1 $2\" in\n"
    )
    for cmd in tree.walk():
        for opt in cmd.options:
            if opt.takes_value:
                for name in sorted(opt.names):
                    out.append(f'        "{cmd.name} {name}") echo "{_kind_word(opt.value)}" ;;\n')
    out.append(
        "        *) return 1 ;;\n    esac\n}\n\n"
        "# How the positional argument at index $2 (from 0) of a command path completes.\n"
        "_canidae_argument() {\n    case \"$1 $2\" in\n"
    )
    for cmd in tree.walk():
        for index, arg in enumerate(cmd.args):
            # An exact index first; a variadic argument also takes every later index.
            out.append(f'        "{cmd.name} {index}") echo "{_kind_word(arg.value)}" ;;\n')
            if arg.variadic:
                out.append(f'        "{cmd.name} "*) echo "{_kind_word(arg.value)}" ;;\n')
    out.append("        *) return 1 ;;\n    esac\n}\n")
    out.append(BASH_BODY)
    return "".join(out)


# --------------------------------------------------------------------------------------------
# zsh


def _zq(text: str) -> str:
    """Single-quote ``text`` for zsh."""
    return "'" + text.replace("'", "'\\''") + "'"


def _z_explain(text: str) -> str:
    return _first_sentence(text).replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def _z_message(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:") or "value"


def _z_action(value: Value) -> str:
    if value.kind == "choice":
        return "(" + " ".join(value.choices) + ")"
    if value.kind == "file":
        return "_files"
    if value.kind in ("pack", "node", "zone"):
        return f"_canidae_{value.kind}_names"
    return " "


def _z_func(cmd: Cmd) -> str:
    return "_" + "__".join(p.replace("-", "_") for p in cmd.path)


def _z_option_specs(cmd: Cmd) -> list[str]:
    specs = []
    for opt in cmd.options:
        exclusive = "(" + " ".join(sorted(opt.exclusive_with)) + ")"
        prefix = "*" if opt.repeatable else exclusive
        if opt.names[0] in ("--help", "-h") or "--help" in opt.names:
            prefix = "(- *)"
        suffix = f":{_z_message(opt.metavar)}:{_z_action(opt.value)}" if opt.takes_value else ""
        for name in sorted(opt.names):
            specs.append(_zq(f"{prefix}{name}[{_z_explain(opt.help)}]{suffix}"))
    return specs


def gen_zsh(tree: Cmd) -> str:
    out = [
        "#compdef canidae\n",
        "# zsh completion for canidae.\n",
        "# Generated by scripts/gen_docs.py from the command tree; do not edit by hand.\n",
        "# Use: put this file, named _canidae, in a directory of $fpath before compinit runs.\n\n",
        "# Live names from the cluster for pack, node and zone arguments; nothing when it cannot be asked.\n",
        "_canidae_names() {\n",
        "  local noun=node keys='id|name'\n",
        "  case $1 in\n",
        "    pack) noun=pack keys='name' ;;\n",
        "    zone) keys='zone' ;;\n",
        "  esac\n",
        "  local -a names\n",
        "  names=(${(f)\"$(${_canidae_prog:-canidae} $noun list --json --stale 2>/dev/null </dev/null \\\n",
        "    | grep -oE \"\\\"($keys)\\\" *: *\\\"[^\\\"]*\\\"\" 2>/dev/null \\\n",
        "    | sed -E 's/.*\"([^\"]*)\"$/\\1/' 2>/dev/null | sort -u 2>/dev/null)\"})\n",
        "  compadd -a names\n",
        "}\n",
        "_canidae_pack_names() { _canidae_names pack }\n",
        "_canidae_node_names() { _canidae_names node }\n",
        "_canidae_zone_names() { _canidae_names zone }\n",
    ]
    for cmd in tree.walk():
        out.append(f"\n{_z_func(cmd)}() {{\n")
        if cmd.path == (PROG,):
            # Remember how canidae was called: _arguments shifts $words for subcommands.
            out.append("  local _canidae_prog=$words[1]\n")
        specs = _z_option_specs(cmd)
        if cmd.is_group:
            out.append("  local curcontext=$curcontext state line ret=1\n  local -a commands\n")
            out.append("  _arguments -C \\\n")
            for spec in specs:
                out.append(f"    {spec} \\\n")
            out.append("    '1: :->command' \\\n    '*:: :->args' && ret=0\n")
            out.append("  case $state in\n    command)\n      commands=(\n")
            for child in cmd.children:
                out.append(f"        {_zq(child.path[-1] + ':' + child.short_help)}\n")
            out.append(f"      )\n      _describe -t commands {_zq(cmd.name + ' command')} commands && ret=0\n")
            out.append("      ;;\n    args)\n      case $line[1] in\n")
            for child in cmd.children:
                out.append(f"        {child.path[-1]}) {_z_func(child)} && ret=0 ;;\n")
            out.append("      esac\n      ;;\n  esac\n  return ret\n}\n")
        else:
            out.append("  _arguments -S \\\n")
            for spec in specs:
                out.append(f"    {spec} \\\n")
            for index, arg in enumerate(cmd.args, start=1):
                position = "*" if arg.variadic else str(index)
                out.append(f"    {_zq(f'{position}:{_z_message(arg.metavar)}:{_z_action(arg.value)}')} \\\n")
            out[-1] = out[-1].rstrip(" \\\n") + "\n"
            out.append("}\n")
    out.append(f'\nif [ "$funcstack[1]" = "_canidae" ]; then\n  {_z_func(tree)} "$@"\nelse\n')
    out.append(f"  compdef {_z_func(tree)} canidae\nfi\n")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# fish


def _fq(text: str) -> str:
    """Single-quote ``text`` for fish."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


FISH_BODY = (TEMPLATES / "fish_body.fish").read_text()


def _fish_value_flags(value: Value) -> str:
    if value.kind == "choice":
        return " -x -a " + _fq(" ".join(value.choices))
    if value.kind == "file":
        return " -r -F"
    if value.kind in ("pack", "node", "zone"):
        return f" -x -a {_fq(f'(__canidae_names {value.kind})')}"
    return " -x"


def gen_fish(tree: Cmd) -> str:
    out = [
        "# fish completion for canidae.\n",
        "# Generated by scripts/gen_docs.py from the command tree; do not edit by hand.\n",
        "# Use: copy it to ~/.config/fish/completions/canidae.fish (or any completions directory).\n\n",
        "function __canidae_children\n    switch $argv[1]\n",
    ]
    for cmd in tree.walk():
        if cmd.is_group:
            out.append(f"        case {_fq(cmd.name)}\n")
            out.append(f"            printf '%s\\n' {' '.join(c.path[-1] for c in cmd.children)}\n")
    out.append("    end\nend\n\n# Options that take a value, per command path.\nfunction __canidae_valued\n")
    out.append("    switch $argv[1]\n")
    for cmd in tree.walk():
        valued = sorted(n for o in cmd.options if o.takes_value for n in o.names)
        if valued:
            out.append(f"        case {_fq(cmd.name)}\n            printf '%s\\n' -- {' '.join(valued)}\n")
    out.append("    end\nend\n")
    out.append(FISH_BODY)
    for cmd in tree.walk():
        at = _fq(f"__canidae_at {_fq(cmd.name)}")
        out.append(f"\n# {cmd.name}\n")
        for child in cmd.children:
            out.append(f"complete -c canidae -n {at} -a {child.path[-1]} -d {_fq(child.short_help)}\n")
        for opt in cmd.options:
            flags = "".join(
                f" -l {n[2:]}" if n.startswith("--") else f" -s {n[1:]}" for n in sorted(opt.names)
            )
            value = _fish_value_flags(opt.value) if opt.takes_value else ""
            out.append(f"complete -c canidae -n {at}{flags}{value} -d {_fq(_first_sentence(opt.help))}\n")
        for index, arg in enumerate(cmd.args):
            if arg.value.kind == "":
                continue
            where = _fq(f"__canidae_at {_fq(cmd.name)} {index}{'+' if arg.variadic else ''}")
            out.append(f"complete -c canidae -n {where}{_fish_value_flags(arg.value)} -d {_fq(arg.metavar)}\n")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# man page


def _roff(text: str) -> str:
    """Escape text for troff: backslashes, dots or quotes that would start a request, and hyphens
    (a plain '-' may print as a typographic hyphen, which breaks options copied from the page)."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line if line[:1] in (".", "'") else line) for line in text.split("\n"))


def _roff_paragraphs(text: str) -> list[str]:
    """Help text as troff paragraphs. A block of several lines that are all indented (an example
    file, a table), or one marked with click's no-rewrap "\\b" line, is kept line for line."""
    out: list[str] = []
    for block in re.split(r"\n[ \t]*\n", text.strip("\n")):
        lines = [line.rstrip() for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        verbatim = lines[0].strip() == "\b" or (len(lines) > 1 and all(line[:1].isspace() for line in lines))
        if out:
            out.append(".PP")
        if verbatim:
            body = textwrap.dedent("\n".join(line for line in lines if line.strip() != "\b"))
            out += [".RS 4", ".nf", _roff(body), ".fi", ".RE"]
        else:
            out.append(_roff(" ".join(" ".join(lines).split())))
    return out


def _exit_codes() -> list[tuple[int, str, list[str]]]:
    """(code, meaning, error codes) from core.errors: its help text and its error classes."""
    meanings = errors.EXIT_CODES_HELP.removeprefix("Exit codes:").strip().rstrip(".").split(";")
    by_exit: dict[int, list[str]] = {}
    pending = [errors.CanidaeError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        # Only core's own classes: subclasses elsewhere would make the page depend on imports.
        if cls is not errors.CanidaeError and cls.__module__ == errors.__name__:
            by_exit.setdefault(cls.exit_code, []).append(cls.code)
    rows = []
    for item in meanings:
        code, _, meaning = item.strip().partition(" ")
        rows.append((int(code), meaning, sorted(by_exit.get(int(code), []))))
    return rows


def _man_options(options: Sequence[Opt]) -> list[str]:
    lines: list[str] = []
    seen: set[tuple[str, str]] = set()
    for opt in sorted(options, key=lambda o: o.record[0].lstrip("-")):
        if opt.record in seen:  # a --x/--no-x pair has one entry
            continue
        seen.add(opt.record)
        synopsis, help_text = opt.record
        lines += [".TP", f"\\fB{_roff(synopsis)}\\fR", _roff(help_text)]
    return lines


def gen_man(tree: Cmd) -> str:
    lines = [
        '.\\" Generated by scripts/gen_docs.py from the command tree; do not edit by hand.',
        f'.TH CANIDAE 1 "" "canidae {__version__}" "User Commands"',
        ".nh",  # no hyphenation and a ragged right edge: option names stay whole
        ".ad l",
        ".SH NAME",
        "canidae \\- place and run isolated workloads (packs) on a fleet of hosts",
        ".SH SYNOPSIS",
        ".B canidae",
        "[\\fIGLOBAL OPTIONS\\fR] \\fINOUN\\fR [\\fIVERB\\fR] [\\fIOPTIONS\\fR] [\\fIARGUMENTS\\fR]",
        ".SH DESCRIPTION",
        *_roff_paragraphs(tree.help),
        ".PP",
        _roff(
            "Every command takes --help, and --json to print one JSON document on stdout "
            "(diagnostics go to stderr). A failure prints one line on stderr, nothing on stdout, "
            "and exits with the code listed under EXIT STATUS. A noun given without a verb prints "
            "its help and exits 2."
        ),
        ".SH GLOBAL OPTIONS",
        "Given before the noun.",
        *_man_options([o for o in tree.options if "--help" not in o.names]),
        ".SH COMMANDS",
    ]
    for cmd in tree.walk():
        if cmd is tree:
            continue
        if cmd.is_group:
            lines += [f'.SS "{_roff(cmd.name)}"', *_roff_paragraphs(cmd.help)]
            continue
        lines += [f'.SS "{_roff(cmd.name)}"']
        lines += [".B " + _roff(cmd.name), _roff(cmd.usage().removeprefix(cmd.name).strip())]
        lines += [".PP", *_roff_paragraphs(cmd.help)]
        for arg in cmd.args:
            if arg.help:
                lines += [".TP", f"\\fI{_roff(arg.metavar)}\\fR", _roff(arg.help)]
        lines += _man_options([o for o in cmd.options if "--help" not in o.names])
    lines += [
        ".SH ENVIRONMENT",
        ".TP",
        ".B CANIDAE_ADDR",
        "Agent API address(es), comma\\-separated host:port; the same as \\fB\\-\\-addr\\fR.",
        ".TP",
        ".B CANIDAE_TOKEN",
        "API token; the same as \\fB\\-\\-token\\fR.",
        ".TP",
        ".B CANIDAE_DEBUG",
        "When set to 1, an unexpected failure prints its Python traceback on stderr.",
        ".SH FILES",
        ".TP",
        f".I {DEFAULT_CONFIG_PATH}",
        (
            "Client config (TOML): agent addresses and token. Written by \\fBcluster up\\fR and "
            "\\fBfleet bootstrap\\fR with mode 0600; another file is chosen with \\fB\\-\\-config\\fR."
        ),
        ".SH EXIT STATUS",
    ]
    for code, meaning, codes in _exit_codes():
        lines += [".TP", f".B {code}", _roff(meaning + (f" (errors: {', '.join(codes)})" if codes else "") + ".")]
    lines += [".TP", f".B {cli_main.EXIT_INTERRUPTED}", "interrupted (Ctrl\\-C)."]
    lines += [".SH EXAMPLES"]
    for command, what in cli_main.EXAMPLES:
        lines += [".TP", f"\\fB{_roff(command)}\\fR", _roff(what[:1].upper() + what[1:] + ".")]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------


def generate(tree: Cmd | None = None) -> dict[str, str]:
    """Relative path -> content of every generated file."""
    tree = tree or command_tree()
    return {
        "completions/canidae.bash": gen_bash(tree),
        "completions/_canidae": gen_zsh(tree),
        "completions/canidae.fish": gen_fish(tree),
        "man/canidae.1": gen_man(tree),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate canidae's shell completions and man page.")
    parser.add_argument("--check", action="store_true", help="Exit 1, naming them, if files are stale.")
    parser.add_argument("--root", type=Path, default=ROOT, help="Repository root (default: this checkout).")
    args = parser.parse_args(argv)
    stale = []
    for rel, content in generate().items():
        target = args.root / rel
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == content:
            continue
        if args.check:
            stale.append(rel)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        print(f"wrote {rel}")
    if stale:
        print(
            "stale (regenerate with: python scripts/gen_docs.py): " + ", ".join(stale), file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
