"""``canidae yip send|recv``: messages to packs' mailboxes, through any agent.

Inside a pack, the members' environment already holds what these commands need:
``CANIDAE_ADDR`` (their agent), ``CANIDAE_TOKEN`` (the pack's token) and ``CANIDAE_PACK``; a send
from there is marked as coming from that pack, and ``yip recv`` reads the pack's own mailbox.
"""

from __future__ import annotations

import json as jsonlib
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from canidae.agent.client.execcalls import yip_ack, yip_recv, yip_send
from canidae.cli.connect import client
from canidae.cli.output import PACK_METAVAR, JsonOption, TimeoutOption, console, emit, wants_json
from canidae.cli.params import PackArg
from canidae.core.errors import InvalidInput

app = typer.Typer(help="Send messages (yips) to packs' mailboxes and receive them.", no_args_is_help=True,
                  add_completion=False)


@app.command("send", help=(
    "Send a yip to a pack's mailbox, on whichever node the pack runs.\n\n"
    "The answer names the yip's id: receivers get every yip at least once and drop duplicates by id. With the "
    "global --json (canidae --json yip send ...), print the answer as JSON."))
def yip_send_cmd(
    pack_name: PackArg,
    message: Annotated[
        str | None, typer.Argument(metavar="MESSAGE", help="Message text (or use --json / --file).",
                                   show_default=False)
    ] = None,
    data: Annotated[
        str | None, typer.Option("--json", metavar="DATA", help="Send this JSON value instead of text.")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", metavar="FILE", help="Read the message text from FILE ('-': stdin).")
    ] = None,
    yip_id: Annotated[
        str | None, typer.Option("--id", help="Id of the yip (default: a new one); a resend with the same id "
                                              "is queued once.")
    ] = None,
    timeout: TimeoutOption = 10.0,
) -> None:
    given = [x for x in (message, data, file) if x is not None]
    if len(given) != 1:
        raise InvalidInput("give exactly one of MESSAGE, --json DATA or --file FILE")
    text: str | None = None
    value: Any = None
    if message is not None:
        text = message
    elif file is not None:
        try:
            text = sys.stdin.read() if str(file) == "-" else file.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidInput(f"cannot read {file}: {e}") from None
    else:
        try:
            value = jsonlib.loads(data or "")
        except ValueError as e:
            raise InvalidInput(f"--json: not valid JSON: {e}") from None
    with client(timeout=timeout) as c:
        result = yip_send(c, pack_name, text=text, data=value, yip_id=yip_id, retry_for=timeout)
    sent = result["yips"][0]
    out = {"pack": result["pack"], "node": result["node"], "id": sent["id"], "seq": sent["seq"]}
    emit(out, False, lambda: console.print(f"yip {out['id']} queued for pack {out['pack']} on node {out['node']}"))


def _show(yip: dict[str, Any]) -> None:
    line = yip["text"] if "text" in yip else jsonlib.dumps(yip.get("data"))
    sys.stdout.write(line if line.endswith("\n") else line + "\n")
    sys.stdout.flush()


@app.command("recv", help=(
    "Receive yips from a pack's mailbox and acknowledge them.\n\n"
    "Prints each yip's text (or its JSON value) on a line; with --json, the yips with their id, sender and time. "
    "A yip is acknowledged only once printed: if this command dies first, the next receive gets it again."))
def yip_recv_cmd(
    pack_name: Annotated[
        str | None, typer.Option("--pack", "-p", metavar=PACK_METAVAR,
                                 help="Whose mailbox (default: $CANIDAE_PACK, set inside a pack).")
    ] = None,
    wait: Annotated[
        float, typer.Option("--wait", "-w", metavar="SECONDS", min=0, max=60,
                            help="Wait this long for a first yip when the mailbox is empty.")
    ] = 0.0,
    limit: Annotated[int, typer.Option("--max", "-n", min=1, max=1000, help="Receive at most this many yips.")] = 100,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep receiving until interrupted.")] = False,
    json: JsonOption = False,
) -> None:
    pack = pack_name or os.environ.get("CANIDAE_PACK")
    if not pack:
        raise InvalidInput("give --pack PACK (inside a pack, CANIDAE_PACK names it)")
    seconds = math.ceil(wait)
    as_json = wants_json(json)
    with client(timeout=max(10.0, seconds + 5.0)) as c:
        if not follow:
            got = yip_recv(c, pack, wait=seconds, limit=limit)
            yips = got["yips"]
            emit({"pack": pack, "node": got["node"], "yips": yips}, json,
                 lambda: [_show(y) for y in yips])  # type: ignore[func-returns-value]
            if yips:
                yip_ack(c, pack, yips[-1]["seq"])
            return
        last = 0
        while True:
            got = yip_recv(c, pack, after=last, ack=last, wait=30, limit=limit)
            for y in got["yips"]:
                if as_json:
                    sys.stdout.write(jsonlib.dumps(y) + "\n")
                    sys.stdout.flush()
                else:
                    _show(y)
            last = got["next"]
