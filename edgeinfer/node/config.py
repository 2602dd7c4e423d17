"""Settings of ``edgeinfer serve``: defaults, a TOML file, then command-line flags (flags win)."""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..dicomout.writers import DEFAULT_RESULTS
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


#: the sections of the configuration file (``[serve.dicom]``...) and what each holds
SECTIONS = {
    "dicom": "the DICOM side: who may connect, limits, timeouts, DICOM over TLS",
    "spool": "received instances: where, who may read them, how long they stay, when a study is complete",
    "model": "the model and how it runs",
    "outbox": "results to PACS: where, what, over TLS, how long to retry",
    "http": "the HTTP side (/healthz /readyz /metrics /worklist) and the worklist file",
}


def setting(default, section: str, help: str, *, flag: str | None = None, metavar: str | None = None,
            append: bool = False, sample=None, note: str | None = None):
    """One setting, declared once: its default, its section of the file, its help (the flag's and the sample
    file's), and how the flag looks (``flag``, ``metavar``; ``append``: repeat the flag for more). ``sample``:
    the value the sample file shows (None: the default, or a commented line when the default is None)."""
    meta = {"section": section, "help": help, "flag": flag, "metavar": metavar, "append": append, "sample": sample,
            "note": note}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults: use a tuple")
    return field(default=default, metadata=meta)


@dataclass
class NodeConfig:
    """Every setting of ``edgeinfer serve``. The flags, the file's sections and the sample file
    (``deploy/serve.toml``) are all made from these declarations (:func:`add_arguments`, :func:`load_config`,
    :func:`sample_toml`)."""

    # -- dicom
    port: int = setting(11112, "dicom", "DICOM port")
    host: str = setting("0.0.0.0", "dicom", "address to listen on")
    ae_title: str = setting("EDGEINFER", "dicom", "this node's AE title")
    allow_calling: tuple[str, ...] = setting((), "dicom", "accept associations only from these calling AE titles "
                                             "(empty: any)", metavar="AET,...", sample=("CR_ROOM1", "DX_ROOM2", "PACS"))
    max_associations: int = setting(10, "dicom", "established associations at once; beyond, A-ASSOCIATE-RJ "
                                    "(connections still in their handshake do not count)")
    acse_timeout: float = setting(30.0, "dicom", "seconds from accept to a complete A-ASSOCIATE-RQ, and for other "
                                  "association messages")
    dimse_timeout: float = setting(30.0, "dicom", "seconds to wait for a DIMSE message")
    network_timeout: float = setting(60.0, "dicom", "seconds a read may wait on an idle connection")
    max_pdu: int = setting(16384, "dicom", "largest PDU accepted, bytes (0: unlimited, not advised)")
    tls_cert: Path | None = setting(None, "dicom", "PEM certificate: DICOM over TLS", sample="/etc/edgeinfer/tls/node.pem")
    tls_key: Path | None = setting(None, "dicom", "PEM private key for tls_cert", sample="/etc/edgeinfer/tls/node.key")
    tls_ca: Path | None = setting(None, "dicom", "PEM CA: require client certificates it signed (mutual TLS)",
                                  sample="/etc/edgeinfer/tls/hospital-ca.pem")
    # -- spool
    spool: Path = setting(Path("spool"), "spool", "folder for received instances, results and the state database",
                          sample="/var/lib/edgeinfer/spool")
    spool_group: str | None = setting(None, "spool", "let this group read the spool (files 0640, folders 0750; "
                                      "unset: the node's user only, 0600/0700)", metavar="GROUP", sample="pacs-backup")
    quiet_seconds: float | None = setting(None, "spool", "a study is complete this long after its last instance "
                                          "(unset: 5 s for DX/CR/MG, 30 s for CT/MR/PT/NM, 10 s otherwise)", sample=5)
    min_free_mb: int = setting(512, "spool", "spool free space (MB) below which instances are answered 0xA700; a "
                               "backlog of studies never refuses: /metrics and /readyz report it")
    retain_hours: float = setting(24.0, "spool", "hours a study's instances stay once its result is delivered (0: "
                                  "delete once delivered); under disk pressure delivered studies go oldest first; "
                                  "never one unscored or unsent")
    # -- model
    bundle: str | None = setting(None, "model", "bundle folder, or an embedded bundle's name (phantom-ct-head: head CT "
                                 "haemorrhage segmentation); unset: the embedded phantom-cxr bundle (neither is for "
                                 "clinical use)", sample="/opt/edgeinfer/bundles/my-model")
    trust: str | None = setting(None, "model", "folder of trusted Ed25519 public keys (*.pub): refuse a bundle not "
                                "signed by one of them (unset: $EDGEINFER_TRUST; without either the bundle is used "
                                "unverified and the worklist says so)", metavar="DIR", sample="/etc/edgeinfer/trust")
    backend: str = setting("auto", "model", "onnxruntime | openvino | tensorrt | triton | auto")
    triton_url: str | None = setting(None, "model", "send inference to this Triton Inference Server (implies backend "
                                     "triton): http://HOST:8000 or grpc://HOST:8001. While it cannot be reached, "
                                     "studies stay queued for up to inference_timeout, then go to a human read; pin "
                                     "precision so the node starts while the server is down", metavar="URL",
                                     sample="http://triton.example:8000")
    precision: str = setting("auto", "model", "fp32 | fp16 | int8 | bf16 | auto (auto may pick BF16 on one CPU and "
                             "FP32 on another: pin it for the same numbers everywhere)")
    device: str = setting("cpu", "model", "cpu | cuda | tensorrt")
    threads: int | None = setting(None, "model", "inference threads (unset: the backend's choice)", sample=2)
    batch_size: int = setting(8, "model", "images per inference call")
    intake_processes: int = setting(0, "model", "read and decode images in N processes of their own instead of a "
                                    "thread: a decoder that crashes on a file costs that file only (about 100 MB "
                                    "each)", metavar="N")
    inference_timeout: float = setting(120.0, "model", "watchdog: seconds before a study's inference is abandoned "
                                       "and the study goes to a human read")
    max_crashes: int = setting(2, "model", "restarts that find a study being scored before it goes to a human read "
                               "without another try: a file that crashes the node cannot stop it for good")
    # -- outbox
    send_to: tuple[Destination, ...] = setting((), "outbox", "send each result here; repeat for more destinations",
                                               flag="--send-to", metavar="AET@HOST:PORT", append=True,
                                               sample=("PACS@10.0.0.5:104",))
    result_processes: int = setting(1, "outbox", "build the result objects (the SR...) in N processes of their own "
                                    "while the worker scores the next study (0: in the worker's thread; about "
                                    "100 MB each)", metavar="N")
    results: tuple[str, ...] = setting(DEFAULT_RESULTS, "outbox", "what to file into PACS for each study "
                                       "version: a result writer's name (sr: the structured report; heatmaps: one "
                                       "Secondary Capture per heatmap of a flagged study, referenced by the SR; seg: "
                                       "the DICOM SEG of a segmentation bundle's masks, whose volumes the SR reports) "
                                       "or module:function; repeat for more", flag="--result",
                                       metavar="WRITER", append=True)
    send_tls_ca: Path | None = setting(None, "outbox", "PEM CA that signed the PACS's certificate: send results over "
                                       "TLS, checking it", sample="/etc/edgeinfer/tls/pacs-ca.pem")
    send_tls_cert: Path | None = setting(None, "outbox", "our PEM client certificate, for a PACS that wants mutual TLS",
                                         sample="/etc/edgeinfer/tls/node.pem")
    send_tls_key: Path | None = setting(None, "outbox", "PEM private key for send_tls_cert",
                                        sample="/etc/edgeinfer/tls/node.key")
    send_horizon: float = setting(7 * 86400.0, "outbox", "seconds a result is retried while PACS cannot be reached or "
                                  "is busy, before it is dead-lettered; a PACS that refuses the result dead-letters it "
                                  "at once")
    send_backoff: float = setting(2.0, "outbox", "first retry delay (s), doubling")
    send_backoff_max: float = setting(600.0, "outbox", "longest delay between retries (s)")
    # -- http
    http_host: str = setting("127.0.0.1", "http", "HTTP side address (expose it through a proxy, not directly)")
    http_port: int | None = setting(8080, "http", "HTTP side port (--no-http: none)")
    worklist: Path | None = setting(None, "http", "also keep the live worklist JSON (the default window) in this "
                                    "file, written atomically", sample="/var/lib/edgeinfer/worklist.json")
    http_tls_cert: Path | None = setting(None, "http", "PEM certificate: serve the HTTP side over HTTPS",
                                         sample="/etc/edgeinfer/tls/console.pem")
    http_tls_key: Path | None = setting(None, "http", "PEM private key for http_tls_cert",
                                        sample="/etc/edgeinfer/tls/console.key")
    http_auth: Path | None = setting(None, "http", "users allowed on the console, /worklist and /heatmap (HTTP Basic; "
                                     "lines made by 'edgeinfer http-user FILE USER'); with HTTPS too, the console "
                                     "shows patient names and accession numbers", metavar="FILE",
                                     sample="/etc/edgeinfer/console-users")

    def quiet_for(self, modality: str) -> float:
        if self.quiet_seconds is not None:
            return self.quiet_seconds
        return DEFAULT_QUIET.get((modality or "").upper(), FALLBACK_QUIET)

    def inference_backend(self) -> tuple[str | None, dict]:
        """(backend, runner settings) the model host asks for: ``triton_url`` means the triton backend, with a
        request timeout of a quarter of ``inference_timeout`` (a call and its two retries end well inside the
        watchdog: a silent server is a wait, not a hang); UsageError naming these settings otherwise."""
        from ..triton import backend_choice

        backend, extra = backend_choice(self.backend, self.triton_url, url_name="triton_url", backend_name="backend")
        if extra:
            extra["triton_timeout_s"] = min(30.0, float(self.inference_timeout) / 4)
        return backend, extra

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
        if (self.http_tls_cert is None) != (self.http_tls_key is None):
            problems.append("http_tls_cert and http_tls_key go together: give both or neither")
        if self.send_tls_cert is not None and self.send_tls_ca is None:
            problems.append("send_tls_cert needs send_tls_ca (the CA that signed the PACS's certificate)")
        for name in ("tls_cert", "tls_key", "tls_ca", "send_tls_ca", "send_tls_cert", "send_tls_key", "http_tls_cert",
                     "http_tls_key", "http_auth"):
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
        if int(self.result_processes) < 0:
            problems.append("result_processes must be 0 (the worker's thread) or more")
        if not float(self.retain_hours) >= 0:
            problems.append("retain_hours must be 0 (delete once delivered) or more")
        if self.quiet_seconds is not None and not float(self.quiet_seconds) >= 0:
            problems.append("quiet_seconds must be 0 or more")
        try:
            self.inference_backend()
        except UsageError as exc:
            problems.append(str(exc))
        if not self.results:
            problems.append("results: name at least one result writer (e.g. sr)")
        for name in self.results:
            from ..dicomout.writers import resolve

            try:
                resolve(name)
            except UsageError as exc:
                problems.append(str(exc))
        if self.http_auth is not None and Path(self.http_auth).is_file():
            from .auth import load_users

            try:
                load_users(self.http_auth)
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

def _kind(f: dataclasses.Field):
    """(base type, is a tuple) of a setting, from its annotation: int, float, str, Path; tuples of str or
    Destination."""
    text = str(f.type)
    is_tuple = text.startswith("tuple")
    for name, kind in (("Path", Path), ("Destination", Destination), ("float", float), ("int", int)):
        if name in text:
            return kind, is_tuple
    return str, is_tuple


def _coerce(name: str, value):
    if value is None:
        return None
    f = _FIELDS[name]
    kind, is_tuple = _kind(f)
    if is_tuple:
        items = (value.split(",") if isinstance(value, str) and not f.metadata["append"] else
                 [value] if isinstance(value, str) else list(value))
        items = [v.strip() if isinstance(v, str) else v for v in items]
        items = [v for v in items if v != ""]
        return tuple(v if not isinstance(v, str) or kind is str else Destination.parse(v) for v in items)
    if kind is Path:
        return Path(os.path.expanduser(str(value)))
    return value


_FIELDS = {f.name: f for f in dataclasses.fields(NodeConfig)}


def _file_values(path, doc: dict) -> dict:
    """The settings of a parsed file: ``[serve.<section>]`` tables (a flat ``[serve]`` table, as files before
    the sections had, is read too); a setting in the wrong section, an unknown one or a removed one says so."""
    serve = doc.get("serve", doc)
    values: dict = {}
    for key, value in serve.items():
        if key in SECTIONS and isinstance(value, dict):
            for name, v in value.items():
                if name in REMOVED:
                    raise UsageError(f"--config {path}: {REMOVED[name]}; remove {name}")
                if name not in _FIELDS:
                    raise UsageError(f"--config {path}: [serve.{key}] {name}: unknown setting; [serve.{key}] holds "
                                     f"{', '.join(n for n, f in _FIELDS.items() if f.metadata['section'] == key)}")
                home = _FIELDS[name].metadata["section"]
                if home != key:
                    raise UsageError(f"--config {path}: {name} belongs in [serve.{home}], not [serve.{key}]")
                values[name] = v
        elif key in REMOVED:
            raise UsageError(f"--config {path}: {REMOVED[key]}; remove {key}")
        elif key in _FIELDS:
            values[key] = value
        else:
            raise UsageError(f"--config {path}: unknown setting {key}; the sections are "
                             f"{', '.join(f'[serve.{s}]' for s in SECTIONS)} (see deploy/serve.toml)")
    return values


def load_config(path: str | os.PathLike | None, overrides: dict | None = None) -> NodeConfig:
    """Defaults, then the TOML file's ``[serve.*]`` tables, then ``overrides`` (the flags that were given)."""
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
        values = _file_values(path, doc)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    for name in REMOVED.keys() & flags.keys():
        raise UsageError(f"--{name.replace('_', '-')}: {REMOVED[name]}; leave it out")
    values = {**values, **flags}
    return NodeConfig(**{k: _coerce(k, v) for k, v in values.items()}).check()


# --- made from the declarations ----------------------------------------------------------------
def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def add_arguments(parser) -> None:
    """One flag per setting (``--port``, ``--send-to``...), with its help and default from the declaration;
    every flag defaults to None, so that only the flags given override the file."""
    import argparse

    for section, what in SECTIONS.items():
        group = parser.add_argument_group(f"[serve.{section}]", what)
        for name, f in _FIELDS.items():
            meta = f.metadata
            if meta["section"] != section:
                continue
            kind, is_tuple = _kind(f)
            default = f.default
            unset = default is None or default == ()
            kw: dict = {"dest": name, "default": None,
                        "help": meta["help"] + ("" if unset else f" (default {_shown(default)})")}
            if meta["metavar"]:
                kw["metavar"] = meta["metavar"]
            if meta["append"]:
                kw["action"] = "append"
            elif kind in (int, float):
                kw["type"] = kind
            group.add_argument(meta["flag"] or "--" + name.replace("_", "-"), **kw)
    for name in REMOVED:   # a removed setting's flag still parses, so that load_config says what replaced it
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=argparse.SUPPRESS)


def _toml(value) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, (bool, int, float)):
        return _shown(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def sample_toml() -> str:
    """``deploy/serve.toml``: every setting in its section, with its help; settings without a default (and the
    device-specific examples) commented out. A test checks the file against this."""
    import textwrap

    lines = ["# edgeinfer serve: sample configuration. Every setting is also a flag (--port, --send-to...); flags win.",
             "# Made by `python -m edgeinfer.node.config --sample` from the settings' declarations in",
             "# edgeinfer/node/config.py; docs/node.md says more. Paths are on the device.", ""]
    for section, what in SECTIONS.items():
        lines += [f"[serve.{section}]", f"# {what}"]
        for name, f in _FIELDS.items():
            meta = f.metadata
            if meta["section"] != section:
                continue
            lines += textwrap.wrap(meta["help"], 110, initial_indent="# ", subsequent_indent="# ")
            example = meta["sample"]
            value = example if example is not None else f.default
            commented = f.default is None or f.default == () and example is None
            if value is None:
                lines.append(f"# {name} =")
            else:
                lines.append(("# " if commented else "") + f"{name} = {_toml(value)}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--sample"]:
        sys.exit("usage: python -m edgeinfer.node.config --sample > deploy/serve.toml")
    print(sample_toml(), end="")
