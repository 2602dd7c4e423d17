"""Settings of ``edgeinfer serve``: defaults, a TOML file, then command-line flags (flags win)."""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError

#: quiet period (s) after a study's last instance before it counts as complete, by modality:
#: one or two projections arrive together; CT and MR series keep arriving for a while
DEFAULT_QUIET = {"DX": 5.0, "CR": 5.0, "MG": 5.0, "CT": 30.0, "MR": 30.0, "PT": 30.0, "NM": 30.0}
FALLBACK_QUIET = 10.0
_AET = re.compile(r"[ -~]{1,16}")  # AE title: 1-16 printable ASCII characters (PS3.5 AE), no backslash


@dataclass(frozen=True)
class Destination:
    """Where results are sent: ``AET@HOST:PORT``."""

    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination":
        m = re.fullmatch(r"([^@]+)@(\[[^\]]+\]|[^:]+):(\d+)", text.strip())
        if not m or not _valid_aet(m.group(1)) or not 0 < int(m.group(3)) < 65536:
            raise UsageError(f"--send-to {text!r}: expected AET@HOST:PORT, e.g. PACS@10.0.0.5:104 "
                             "(AE title of 1-16 characters, a port from 1 to 65535)")
        return cls(m.group(1), m.group(2).strip("[]"), int(m.group(3)))

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


def _valid_aet(text: str) -> bool:
    return bool(_AET.fullmatch(text)) and "\\" not in text and text.strip() != ""


@dataclass
class NodeConfig:
    spool: Path = Path("spool")
    spool_group: str | None = None              # None: the spool is the node's user's only (0700/0600)
    port: int = 11112
    host: str = "0.0.0.0"
    ae_title: str = "EDGEINFER"
    allow_calling: tuple[str, ...] = ()        # empty: any calling AE title
    max_associations: int = 10
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    network_timeout: float = 60.0
    max_pdu: int = 16384                        # our receive PDU limit (bytes); 0 = unlimited (not advised)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None                  # given: mutual TLS, clients need a certificate from this CA
    quiet_seconds: float | None = None          # None: per modality (DEFAULT_QUIET)
    min_free_mb: int = 512                      # spool free space below this: 0xA700
    retain_hours: float = 24.0                  # a delivered study's instances leave the spool after this long
    inference_timeout: float = 120.0            # watchdog
    max_crashes: int = 2                        # restarts that find a study being scored before it goes to a human read
    send_to: tuple[Destination, ...] = ()
    results: tuple[str, ...] = ("sr",)          # result writers per study version (edgeinfer.dicomout.writers)
    send_tls_ca: Path | None = None             # given: results go to PACS over TLS, its certificate checked
    send_tls_cert: Path | None = None           # our client certificate, for a PACS that wants mutual TLS
    send_tls_key: Path | None = None
    send_horizon: float = 7 * 86400.0           # transient send failures retry this long (s) before dead-lettering
    send_backoff: float = 2.0                   # first retry delay (s); doubles, capped at send_backoff_max
    send_backoff_max: float = 600.0
    worklist: Path | None = None
    http_host: str = "127.0.0.1"
    http_port: int | None = 8080                # None: no HTTP side
    bundle: str | None = None
    trust: str | None = None
    backend: str = "auto"
    precision: str = "auto"
    device: str = "cpu"
    threads: int | None = None
    batch_size: int = 8
    intake_processes: int = 0                   # 0: read images in a thread; N: in N processes of their own
    extra: dict = field(default_factory=dict)

    def quiet_for(self, modality: str) -> float:
        if self.quiet_seconds is not None:
            return self.quiet_seconds
        return DEFAULT_QUIET.get((modality or "").upper(), FALLBACK_QUIET)

    def check(self) -> "NodeConfig":
        problems = []
        if not _valid_aet(self.ae_title):
            problems.append(f"ae_title {self.ae_title!r} is not an AE title (1-16 printable characters)")
        problems += [f"allow_calling: {a!r} is not an AE title" for a in self.allow_calling if not _valid_aet(a)]
        for name in ("port", "http_port"):
            v = getattr(self, name)
            if v is not None and not 0 <= int(v) < 65536:
                problems.append(f"{name} {v} is not a TCP port")
        if (self.tls_cert is None) != (self.tls_key is None):
            problems.append("tls_cert and tls_key go together: give both or neither")
        if self.tls_ca is not None and self.tls_cert is None:
            problems.append("tls_ca (mutual TLS) needs tls_cert and tls_key too")
        if (self.send_tls_cert is None) != (self.send_tls_key is None):
            problems.append("send_tls_cert and send_tls_key go together: give both or neither")
        if self.send_tls_cert is not None and self.send_tls_ca is None:
            problems.append("send_tls_cert needs send_tls_ca (the CA that signed the PACS's certificate)")
        for name in ("tls_cert", "tls_key", "tls_ca", "send_tls_ca", "send_tls_cert", "send_tls_key"):
            p = getattr(self, name)
            if p is not None and not Path(p).is_file():
                problems.append(f"{name} {p}: no such file")
        for name in ("max_associations", "batch_size", "max_crashes"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be at least 1")
        for name in ("acse_timeout", "dimse_timeout", "network_timeout", "inference_timeout", "send_backoff",
                     "send_backoff_max", "send_horizon"):
            if not float(getattr(self, name)) > 0:
                problems.append(f"{name} must be a positive number of seconds")
        if int(self.intake_processes) < 0:
            problems.append("intake_processes must be 0 (a thread) or more")
        if not float(self.retain_hours) >= 0:
            problems.append("retain_hours must be 0 (delete once delivered) or more")
        if self.quiet_seconds is not None and not float(self.quiet_seconds) >= 0:
            problems.append("quiet_seconds must be 0 or more")
        if not self.results:
            problems.append("results: name at least one result writer (e.g. sr)")
        for name in self.results:
            from ..dicomout.writers import resolve

            try:
                resolve(name)
            except UsageError as exc:
                problems.append(str(exc))
        if problems:
            raise UsageError("edgeinfer serve settings are not usable:\n" + "\n".join(f"  - {p}" for p in problems))
        return self


#: settings that were removed, and what took their place
REMOVED = {
    "send_retries": "send_retries was replaced by send_horizon (seconds; default 7 days): a transient send failure "
                    "is retried until then, a PACS's refusal of the result at once goes to the dead letters",
    "max_queue": "max_queue was removed: a backlog of studies no longer refuses instances (0xA700 made technologists "
                 "resend by hand); the spool takes them while there is disk space (min_free_mb), and /metrics "
                 "(edgeinfer_queue_depth, edgeinfer_backlog_oldest_seconds) and /readyz report the backlog",
}

_PATHS = {"spool", "tls_cert", "tls_key", "tls_ca", "send_tls_ca", "send_tls_cert", "send_tls_key", "worklist"}


def _coerce(name: str, value):
    if value is None:
        return None
    if name in _PATHS:
        return Path(os.path.expanduser(str(value)))
    if name in ("allow_calling", "results"):
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(a.strip() for a in items if a.strip())
    if name == "send_to":
        items = [value] if isinstance(value, str) else list(value)
        return tuple(v if isinstance(v, Destination) else Destination.parse(v) for v in items)
    return value


def load_config(path: str | os.PathLike | None, overrides: dict | None = None) -> NodeConfig:
    """Defaults, then the TOML file's ``[serve]`` table (or its top level), then ``overrides`` (non-None flags)."""
    import tomllib

    values: dict = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise UsageError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"--config {path}: not valid TOML ({exc})") from None
        values = doc.get("serve", doc)
        for name in REMOVED.keys() & values.keys():
            raise UsageError(f"--config {path}: {REMOVED[name]}; remove {name}")
        known = {f.name for f in dataclasses.fields(NodeConfig)} - {"extra"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"--config {path}: unknown setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    for name in REMOVED.keys() & flags.keys():
        raise UsageError(f"--{name.replace('_', '-')}: {REMOVED[name]}; leave it out")
    values = {**values, **flags}
    return NodeConfig(**{k: _coerce(k, v) for k, v in values.items()}).check()
