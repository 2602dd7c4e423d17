"""``edgeinfer outbox``: what an operator does with results the node could not deliver.

``edgeinfer outbox list`` shows every item (or ``--state dead``), ``edgeinfer outbox retry --all`` or
``--study UID`` puts dead letters back in the queue with a fresh horizon; a running node sends them
within seconds (the state database is shared safely: SQLite in WAL mode), a stopped one when it starts.
The spool comes from ``--spool`` or the node's ``--config``. UIDs and AE titles only: no patient data.

``edgeinfer http-user FILE USER`` adds a user who may log in to the node's console (``--http-auth FILE``).
"""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from ..errors import UsageError


def _state(args):
    from .config import load_config
    from .state import State

    spool = Path(args.spool) if args.spool else load_config(args.config).spool
    db = spool / "state.sqlite3"
    if not db.is_file():
        raise UsageError(f"no state database at {db}: give the node's --spool (or its --config)")
    return State(db)


def _when(t) -> str:
    return dt.datetime.fromtimestamp(t).isoformat(timespec="seconds") if t else "-"


def cmd_outbox_list(args) -> int:
    from rich.console import Console
    from rich.table import Table

    st = _state(args)
    items = st.outbox_items(args.state)
    st.close()
    counts: dict[str, int] = {}
    for i in items:
        counts[i["state"]] = counts.get(i["state"], 0) + 1
    table = Table(title=f"outbox: {', '.join(f'{n} {s}' for s, n in sorted(counts.items())) or 'empty'}")
    for col in ("state", "study", "v", "object", "destination", "attempts", "created", "next attempt", "last error"):
        table.add_column(col, overflow="fold")
    for i in items:
        table.add_row(i["state"], i["study_uid"], str(i["version"]), i["sop_uid"], i["destination"], str(i["attempts"]),
                      _when(i["created"]), _when(i["next_attempt"]) if i["state"] == "pending" else "-",
                      i["last_error"] or "")
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)
    return 0


def cmd_outbox_retry(args) -> int:
    if not args.all and not args.study:
        raise UsageError("say which dead letters to send again: --all, or --study STUDY_UID")
    st = _state(args)
    n = st.retry_dead(None if args.all else args.study)
    st.close()
    what = "every dead letter" if args.all else f"study {args.study}"
    print(f"{n} result(s) queued again ({what}); the node sends them within seconds, or when it starts"
          if n else f"no dead letter matched ({what})")
    return 0 if n or args.all else 1


def cmd_http_user(args) -> int:
    """Add a console user to an ``--http-auth`` file (or change their password); the password from the terminal
    (asked twice) or, with ``--password-stdin``, the first line of standard input."""
    import getpass

    from .auth import set_user

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("the two passwords differ; nothing was changed")
    set_user(args.file, args.user, password)
    print(f"{args.file}: user {args.user} set (scrypt hash; the file is readable by its owner only)")
    return 0


def add_parsers(sub, formatter_class=None) -> None:
    s = sub.add_parser("http-user", help="add a user who may log in to the node's console (--http-auth FILE)",
                       formatter_class=formatter_class)
    s.add_argument("file", help="the users file (created mode 0600 if absent)")
    s.add_argument("user", help="user name: letters, digits and . _ - @")
    s.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    s.set_defaults(func=cmd_http_user)

    o = sub.add_parser("outbox", help="the node's undelivered results: list them, send dead letters again",
                       formatter_class=formatter_class, description=__doc__.split("\n\n")[0])
    osub = o.add_subparsers(dest="outbox_command", required=True)
    for name, fn, help_text in (("list", cmd_outbox_list, "every result in the outbox, with its state and last error"),
                                ("retry", cmd_outbox_retry, "dead letters back to the queue, with a fresh horizon")):
        s = osub.add_parser(name, help=help_text, formatter_class=formatter_class)
        g = s.add_mutually_exclusive_group()
        g.add_argument("--spool", default=None, help="the node's spool folder")
        g.add_argument("--config", default=None, help="the node's serve.toml (its spool)")
        if name == "list":
            s.add_argument("--state", choices=("pending", "sent", "dead"), default=None, help="only these")
        else:
            s.add_argument("--all", action="store_true", help="every dead letter")
            s.add_argument("--study", default=None, metavar="STUDY_UID", help="that study's dead letters")
        s.set_defaults(func=fn)
