"""Real DICOM peers for the tests of ``edgeinfer serve``: Orthanc as the PACS, DCMTK's storescu/echoscu
as the modality, over real localhost sockets; plus TLS material made with ``cryptography``.

Installed by ``make test`` with ``apt-get install dcmtk orthanc`` (Debian 12: DCMTK 3.6.7, Orthanc 1.10.1).
A missing binary skips the test locally and fails it when ``CI`` is set (never a silent skip in CI).

Fixtures built on this module live in ``tests/edgeinfer/node/conftest.py``.

storescu output (DCMTK 3.6.7, checked against Orthanc and a pynetdicom SCP returning every status)
--------------------------------------------------------------------------------------------------
With ``-v`` the log lines go to stderr (the ``XMIT: .....`` progress dots to stdout), one line per
C-STORE response::

    I: Received Store Response (Success)
    I: Received Store Response (Warning: CoercionOfDataElements)        0xB000
    I: Received Store Response (Warning: DataSetDoesNotMatchSOPClass)   0xB007
    I: Received Store Response (Warning: ElementsDiscarded)             0xB006
    I: Received Store Response (Refused: OutOfResources)                0xA7xx
    I: Received Store Response (Error: DataSetDoesNotMatchSOPClass)     0xA9xx
    I: Received Store Response (Error: CannotUnderstand)                0xCxxx
    I: Received Store Response (Refused: SOPClassNotSupported)          0x0122
    I: Received Store Response (Unknown Status: 0x211)                  anything else, hex

The name loses the low byte of the 0xA7xx / 0xA9xx / 0xCxxx ranges (0xC211 prints as
CannotUnderstand), so :func:`parse_store_statuses` maps those names to 0xA700 / 0xA900 / 0xC000.
With ``-d`` (``storescu(..., exact_status=True)``) storescu dumps each response instead, and the
exact code is parsed::

    I: Received Store Response
    D: ===================== INCOMING DIMSE MESSAGE ====================
    D: Message Type                  : C-STORE RSP
    ...
    D: DIMSE Status                  : 0xc211: Error: Cannot understand

storescu stops at the first unsuccessful (failure, not warning) response and exits non-zero
unless ``-nh`` (``--no-halt``) is given: pass ``extra=("-nh",)`` to see every status. It exits 0
when all responses are success or warning. Without a scan pattern ``+sd`` sends every file in a
folder, a phantom set's ``labels.csv`` included (which fails: "Bad DICOM file"), hence
``pattern="*.dcm"`` by default; files named explicitly are always sent.

Orthanc (Debian 12: ``/usr/sbin/Orthanc``, 1.10.1; ``/usr/sbin`` is not on every PATH, hence :func:`find_binary`)
-----------------------------------------------------------------------------------------------------------------
Config keys checked against ``Orthanc --config=FILE`` (writes the default config of the installed
version). Started as ``Orthanc --logfile=RUN/orthanc.log --no-jobs RUN/orthanc.json`` (log level
warning, nothing on stdout); own ``StorageDirectory``/``IndexDirectory``, fresh ``HttpPort``/
``DicomPort``, ``Plugins: []``, ``StableAge: 1``, ``ConcurrentJobs: 1``, explorer/WebDAV/metrics off.
Ready in ~0.1 s; a clean SIGTERM stop takes 2.5-3.5 s (fixed polling in its HTTP and DICOM servers),
which is why the ``orthanc`` fixture shares one process and ``reset()``s it. A port already in use
makes it exit ("The TCP port of the DICOM server is privileged or already in use"): :meth:`Orthanc.start`
retries with new ports. ``/tools/find`` at instance level does not return Modality or SOPClassUID,
so :meth:`Orthanc.instances` reads ``/instances/{id}/simplified-tags``. DICOM TLS (``DicomTlsEnabled``,
``DicomTlsCertificate``, ``DicomTlsPrivateKey``, ``DicomTlsTrustedCertificates``,
``DicomTlsRemoteCertificateRequired``) makes the DICOM port TLS-only; it logs "TLS error: certificate
verify failed" / "peer did not return a certificate" / "wrong version number" (plain client).

DCMTK TLS (``echoscu --help`` / ``storescu --help``, 3.6.7)
-----------------------------------------------------------
``+tls KEY CERT`` (private key first, then certificate, PEM by default) turns TLS on with a client
certificate; ``+tla`` is TLS without one; ``+cf CAFILE`` adds a trusted certificate (``+cd DIR``
a folder); ``-rc`` (default) requires and verifies the peer's certificate, ``-ic`` ignores it;
default profile ``+py`` (non-downgrading BCP 195: TLS 1.2+); ``-pw`` uses an empty key password
(our keys are unencrypted; stdin is closed anyway so a prompt can never hang). DCMTK checks the
chain, not the host name. See :func:`dcmtk_tls_args`. Debian's DCMTK is built with OpenSSL; a build
without it has no ``+tls`` in ``--help``: :func:`dcmtk_has_tls`.
"""
from __future__ import annotations

import datetime
import functools
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pytest

#: no proxy, whatever the environment says: every request goes to 127.0.0.1
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

INSTALL_HINT = "make test installs it with apt-get install dcmtk orthanc"
# Orthanc lives in /usr/sbin on Debian, which is not on every user's PATH
_EXTRA_BIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")


# --- generic ----------------------------------------------------------------------------------------
def free_port() -> int:
    """An unused localhost TCP port (bound once by the OS, then released: the caller binds it again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at host:port now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in _EXTRA_BIN_DIRS:
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def require_binary(name: str) -> str:
    """Path of ``name``; skips the test when it is missing, fails it instead when ``CI`` is set."""
    path = find_binary(name)
    if path:
        return path
    reason = f"{name} is not installed; {INSTALL_HINT}"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate()`` until it returns something truthy (returned); AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no {path.name})"


def stop_processes(procs: Iterable[subprocess.Popen], grace: float = 5.0) -> None:
    """SIGTERM to all at once, then SIGKILL to those still running ``grace`` seconds later."""
    procs = [p for p in procs if p.poll() is None]
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=grace)


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    stop_processes([proc], grace)


# --- Orthanc ----------------------------------------------------------------------------------------
class RestError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: str):
        super().__init__(f"Orthanc {method} {path} -> HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


@dataclass
class Orthanc:
    """A running Orthanc (1.10.x) on localhost, started by :meth:`start`; stop it with :meth:`stop`."""

    workdir: Path
    aet: str
    dicom_port: int
    http_port: int
    proc: subprocess.Popen
    log: Path
    config: dict = field(repr=False)
    host: str = "127.0.0.1"

    # ---- lifecycle
    @classmethod
    def start(cls, workdir: Path, *, aet: str = "PACS", tls: "TlsMaterial | None" = None,
              extra_config: dict | None = None, timeout: float = 30.0, attempts: int = 3) -> "Orthanc":
        """Start Orthanc with its own storage/index under ``workdir`` and fresh ports (retried with new
        ports if another process took one between :func:`free_port` and Orthanc's bind).

        ``tls``: the DICOM port speaks TLS only, with the material's server cert and requiring a client
        certificate signed by its CA (Orthanc's ``DicomTls*`` options). ``extra_config`` is merged last.
        """
        binary = require_binary("Orthanc")
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        last = ""
        for attempt in range(attempts):
            run = workdir / f"run{attempt}"
            run.mkdir()
            http_port, dicom_port = free_port(), free_port()
            while dicom_port == http_port:
                dicom_port = free_port()
            config = {
                "Name": "edgeinfer-test-pacs",
                "StorageDirectory": str(run / "storage"),
                "IndexDirectory": str(run / "index"),
                "Plugins": [],
                "LuaScripts": [],
                "ConcurrentJobs": 1,
                "HttpPort": http_port,
                "DicomPort": dicom_port,
                "DicomAet": aet,
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "DicomCheckCalledAet": False,
                "DicomAlwaysAllowEcho": True,
                "DicomAlwaysAllowStore": True,
                "UnknownSopClassAccepted": False,
                "StableAge": 1,
                "SaveJobs": False,
                "OrthancExplorerEnabled": False,
                "WebDavEnabled": False,
                "MetricsEnabled": False,
                "HttpThreadsCount": 4,
                "DicomThreadsCount": 2,
                "DicomScpTimeout": 30,
                "DicomAssociationCloseDelay": 0,
                "SyncStorageArea": False,
                "DicomTlsEnabled": False,
            }
            if tls is not None:
                config.update({
                    "DicomTlsEnabled": True,
                    "DicomTlsCertificate": str(tls.server_cert),
                    "DicomTlsPrivateKey": str(tls.server_key),
                    "DicomTlsTrustedCertificates": str(tls.ca_cert),
                    "DicomTlsRemoteCertificateRequired": True,
                })
            config.update(extra_config or {})
            cfg_path = run / "orthanc.json"
            cfg_path.write_text(json.dumps(config, indent=1))
            log = run / "orthanc.log"
            console = run / "orthanc.console"  # whatever Orthanc prints before its log file is open
            with open(console, "wb") as out:
                proc = subprocess.Popen([binary, f"--logfile={log}", "--no-jobs", str(cfg_path)],
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        cwd=run, start_new_session=True)
            server = cls(workdir=run, aet=aet, dicom_port=dicom_port, http_port=http_port, proc=proc,
                         log=log, config=config)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    server.rest("/system", timeout=1.0)
                    return server
                except (OSError, RestError):
                    time.sleep(0.05)
            stop_process(proc)
            last = (f"Orthanc (exit {proc.returncode}) did not answer GET /system on port {http_port} "
                    f"within {timeout:g} s.\n--- {log}:\n{_tail(log)}\n--- {console}:\n{_tail(console)}")
            if proc.returncode is None or "port" not in (_tail(log) + _tail(console)).lower():
                break  # not a port clash: retrying will not help
        pytest.fail(last, pytrace=False)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM (Orthanc 1.10 takes ~2.5-3.5 s to stop cleanly), SIGKILL after ``grace`` s."""
        stop_process(self.proc, grace)

    def log_tail(self, n: int = 40) -> str:
        return _tail(self.log, n)

    # ---- REST
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def rest_raw(self, path: str, method: str = "GET", body: Any = None, timeout: float = 10.0) -> bytes:
        """Raw response body. ``body``: dict/list -> JSON; str/bytes sent as they are."""
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else (
                body.encode() if isinstance(body, str) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            raise RestError(method, path, e.code, e.read().decode(errors="replace")) from None

    def rest(self, path: str, method: str = "GET", body: Any = None, timeout: float = 10.0) -> Any:
        """Parsed JSON answer (None for an empty body)."""
        raw = self.rest_raw(path, method, body, timeout)
        return json.loads(raw) if raw.strip() else None

    def studies(self) -> list[str]:
        """Orthanc ids of all studies."""
        return self.rest("/studies")

    def study_uids(self) -> list[str]:
        return [self.rest(f"/studies/{sid}")["MainDicomTags"]["StudyInstanceUID"] for sid in self.studies()]

    def study_id(self, study_uid: str) -> str | None:
        found = self.rest("/tools/find", "POST", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
        return found[0] if found else None

    def instances(self, study_uid: str) -> list[dict]:
        """One dict per instance of the study: Orthanc's simplified tags (DICOM keywords -> values,
        sequences as lists of dicts; Modality, SOPClassUID, SOPInstanceUID, ContentSequence ...) plus
        ``OrthancId``. Empty when the study is not there."""
        sid = self.study_id(study_uid)
        if sid is None:
            return []
        out = []
        for inst in self.rest(f"/studies/{sid}/instances"):
            tags = self.rest(f"/instances/{inst['ID']}/simplified-tags")
            tags["OrthancId"] = inst["ID"]
            out.append(tags)
        return out

    def srs(self, study_uid: str) -> list[dict]:
        """The study's instances whose Modality is SR."""
        return [i for i in self.instances(study_uid) if i.get("Modality") == "SR"]

    def wait_for_srs(self, study_uid: str, n: int = 1, timeout: float = 30.0) -> list[dict]:
        """Poll until the study holds at least ``n`` SR instances (the node sends them asynchronously)."""
        return wait_until(lambda: (lambda s: s if len(s) >= n else None)(self.srs(study_uid)),
                          timeout, 0.2, f"{n} SR instance(s) in study {study_uid} on Orthanc")

    def instance_file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file (Part 10 bytes), e.g. to read with pydicom or dsrdump."""
        return self.rest_raw(f"/instances/{orthanc_id}/file")

    def reset(self) -> None:
        """Delete every study (``DELETE /studies/{id}``)."""
        for sid in self.studies():
            self.rest(f"/studies/{sid}", "DELETE")


# --- DCMTK ------------------------------------------------------------------------------------------
def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          errors="replace", timeout=timeout)


def storescu(host: str, port: int, called_aet: str, paths: Iterable[os.PathLike | str], *,
             calling_aet: str = "MODALITY", extra: Sequence[str] = (), timeout: float = 120,
             pattern: str | None = "*.dcm", exact_status: bool = False) -> subprocess.CompletedProcess:
    """``storescu -v -aec CALLED -aet CALLING +sd +r [+sp PATTERN] EXTRA... host port PATHS...``.

    Folders are scanned recursively for ``pattern`` (None: every file); explicit files are always
    sent. ``exact_status`` uses ``-d`` so that :func:`parse_store_statuses` gets exact codes. Put
    ``"-nh"`` in ``extra`` to go on after an unsuccessful store, TLS flags (:func:`dcmtk_tls_args`)
    too. Raises ``subprocess.TimeoutExpired`` past ``timeout`` (storescu is killed).
    """
    cmd = [require_binary("storescu"), "-d" if exact_status else "-v", "-aec", called_aet, "-aet", calling_aet,
           "+sd", "+r"]
    if pattern:
        cmd += ["+sp", pattern]
    cmd += [*extra, str(host), str(port), *[str(p) for p in paths]]
    return _run(cmd, timeout)


def echoscu(host: str, port: int, called_aet: str, *, calling_aet: str = "MODALITY", extra: Sequence[str] = (),
            timeout: float = 30) -> subprocess.CompletedProcess:
    """``echoscu -v -aec CALLED -aet CALLING EXTRA... host port``; returncode 0 means the echo succeeded."""
    cmd = [require_binary("echoscu"), "-v", "-aec", called_aet, "-aet", calling_aet, *extra, str(host), str(port)]
    return _run(cmd, timeout)


# names as DCMTK 3.6.7 prints them with -v (DU_cstoreStatusString), compared without spaces/case
_STATUS_NAMES = {
    "success": 0x0000,
    "warning:coercionofdataelements": 0xB000,
    "warning:datasetdoesnotmatchsopclass": 0xB007,
    "warning:elementsdiscarded": 0xB006,
    "refused:outofresources": 0xA700,
    "error:datasetdoesnotmatchsopclass": 0xA900,
    "error:cannotunderstand": 0xC000,
    "refused:sopclassnotsupported": 0x0122,
}
_RSP_NAMED = re.compile(r"Received Store Response \((?P<name>[^)]*)\)")
_RSP_BARE = re.compile(r"Received Store Response\s*$")
_DUMP_STATUS = re.compile(r"DIMSE Status\s*:\s*0x(?P<hex>[0-9a-fA-F]{1,4})")
_UNKNOWN = re.compile(r"Unknown Status:\s*0x(?P<hex>[0-9a-fA-F]{1,4})", re.I)


def parse_store_statuses(output: str) -> list[int]:
    """DIMSE status of each C-STORE response in storescu's ``-v`` or ``-d`` output, in order.

    ``-v`` names map to the first code of their range (0xA700, 0xA900, 0xC000: the name does not
    carry the low byte); ``-d`` dumps give the exact code. Raises ValueError on a name it does not know.
    """
    statuses: list[int] = []
    pending = False  # -d: "Received Store Response" then a dump holding "DIMSE Status : 0x...."
    for line in output.splitlines():
        if _RSP_BARE.search(line):
            pending = True
            continue
        if pending:
            m = _DUMP_STATUS.search(line)
            if m:
                statuses.append(int(m["hex"], 16))
                pending = False
            continue
        m = _RSP_NAMED.search(line)
        if m:
            name = m["name"]
            u = _UNKNOWN.search(name)
            if u:
                statuses.append(int(u["hex"], 16))
                continue
            key = re.sub(r"\s+", "", name).lower()
            if key not in _STATUS_NAMES:
                raise ValueError(f"unknown storescu status name {name!r} in line {line!r}")
            statuses.append(_STATUS_NAMES[key])
    return statuses


@functools.lru_cache(maxsize=None)
def _help_text(binary: str) -> str:
    try:
        p = subprocess.run([binary, "--help"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
        return p.stdout + p.stderr
    except (OSError, subprocess.SubprocessError):
        return ""


def dcmtk_has_tls() -> bool:
    """Whether the installed echoscu/storescu were built with TLS (their --help lists ``+tls``)."""
    ok = True
    for name in ("echoscu", "storescu"):
        path = find_binary(name)
        ok = ok and bool(path) and "+tls" in _help_text(path)
    return ok


def require_dcmtk_tls() -> None:
    """Skip (fail when ``CI`` is set) unless DCMTK has TLS."""
    require_binary("echoscu")
    require_binary("storescu")
    if not dcmtk_has_tls():
        reason = f"this DCMTK build has no TLS (+tls missing from echoscu --help); {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def dcmtk_tls_args(tls: "TlsMaterial", client: str = "client") -> list[str]:
    """storescu/echoscu TLS flags: ``+tls KEY CERT +cf CA`` (peer certificate required and checked
    against our CA). ``client``: "client" (signed by our CA), "rogue" (signed by another CA) or
    "none" (``+tla``: TLS without a client certificate)."""
    if client == "none":
        return ["+tla", "+cf", str(tls.ca_cert)]
    key, cert = {"client": (tls.client_key, tls.client_cert), "rogue": (tls.rogue_key, tls.rogue_cert)}[client]
    return ["+tls", str(key), str(cert), "+cf", str(tls.ca_cert)]


# --- TLS material -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TlsMaterial:
    """PEM files: a CA; a server cert (CN localhost, SAN DNS:localhost + IP:127.0.0.1) and a client cert
    (CN MODALITY) signed by it; a rogue client cert signed by another CA (``rogue_ca_cert``). RSA 2048,
    keys unencrypted (PKCS#8)."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca_cert: Path
    rogue_cert: Path
    rogue_key: Path

    def server_context(self, require_client_cert: bool = True) -> ssl.SSLContext:
        """Python server context: our server cert; clients must present a cert from our CA."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.server_cert, self.server_key)
        ctx.load_verify_locations(self.ca_cert)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
        return ctx

    def client_context(self, client: str = "client") -> ssl.SSLContext:
        """Python client context trusting our CA (host name checked); ``client``: "client", "rogue", "none"."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(self.ca_cert)
        if client == "client":
            ctx.load_cert_chain(self.client_cert, self.client_key)
        elif client == "rogue":
            ctx.load_cert_chain(self.rogue_cert, self.rogue_key)
        return ctx


def make_tls_material(tmp_path: os.PathLike | str) -> TlsMaterial:
    """Write the material of :class:`TlsMaterial` under ``tmp_path/tls`` (about 0.5 s)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(tmp_path) / "tls"
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgeinfer tests"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem, k, cert):
        kp, cp = out / f"{stem}.key", out / f"{stem}.crt"
        kp.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
        kp.chmod(0o600)
        cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cp, kp

    def ca(cn):
        k = key()
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                .public_key(k.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), critical=False)
                .sign(k, hashes.SHA256()))
        return k, cert

    def leaf(cn, ca_key, ca_cert, *, server):
        k = key()
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
             .public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                          crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        return k, b.sign(ca_key, hashes.SHA256())

    ca_k, ca_c = ca("edgeinfer test CA")
    rogue_ca_k, rogue_ca_c = ca("rogue CA")
    ca_cert, ca_key = write("ca", ca_k, ca_c)
    rogue_ca_cert, _ = write("rogue-ca", rogue_ca_k, rogue_ca_c)
    server_cert, server_key = write("server", *leaf("localhost", ca_k, ca_c, server=True))
    client_cert, client_key = write("client", *leaf("MODALITY", ca_k, ca_c, server=False))
    rogue_cert, rogue_key = write("rogue", *leaf("MODALITY", rogue_ca_k, rogue_ca_c, server=False))
    return TlsMaterial(out, ca_cert, ca_key, server_cert, server_key, client_cert, client_key,
                       rogue_ca_cert, rogue_cert, rogue_key)


# --- the node itself, driven as a process ------------------------------------------------------------
NODE_AET = "EDGEINFER"


class NodeProcess:
    """``edgeinfer serve`` in a subprocess, as a service runs it."""

    def __init__(self, workdir: Path, *args: str, port: int | None = None, http_port: int | None = None,
                 http_ca: Path | None = None, auth: tuple[str, str] | None = None):
        """``http_ca``: the node serves HTTPS (``--http-tls-cert``) with a certificate from this CA; ``auth``:
        (user, password) that :meth:`get` sends (``--http-auth``)."""
        self.workdir = workdir
        self.scheme = "https" if "--http-tls-cert" in args else "http"
        self.ssl = None
        if self.scheme == "https":
            import ssl

            self.ssl = ssl.create_default_context(cafile=str(http_ca)) if http_ca else ssl._create_unverified_context()
        self.auth = auth
        self.port = port or free_port()
        self.http_port = http_port or free_port()
        self.spool = workdir / "spool"
        self.log = workdir / "serve.log"
        cmd = [sys.executable, "-m", "edgeinfer", "serve", "--spool", str(self.spool), "--port", str(self.port),
               "--http-port", str(self.http_port), "--backend", "onnxruntime", "--precision", "fp32",
               "--threads", "1", *args]
        env = {k: v for k, v in os.environ.items() if k != "EDGEINFER_TRUST"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        wait_until(lambda: self.proc.poll() is not None or self.ready_or_none() is not None, 60, 0.2,
                         "the node's HTTP side")
        assert self.proc.poll() is None, self.log.read_text()[-3000:]

    def get(self, path: str, auth: tuple[str, str] | None = None) -> tuple[int, dict | str]:
        """GET over the node's HTTP side: (status, JSON or text); with ``auth`` (or the node's) as Basic
        credentials."""
        import base64

        host = "localhost" if self.scheme == "https" else "127.0.0.1"   # the test certificate's name
        request = urllib.request.Request(f"{self.scheme}://{host}:{self.http_port}{path}")
        creds = auth or self.auth
        if creds:
            request.add_header("Authorization", "Basic " + base64.b64encode(":".join(creds).encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=5, context=self.ssl) as r:
                body = r.read()
                code = r.status
        except urllib.error.HTTPError as e:
            body, code = e.read(), e.code
        try:
            return code, json.loads(body)
        except ValueError:
            return code, body.decode()

    def ready_or_none(self):
        try:
            return self.get("/readyz")
        except OSError:
            return None

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc, grace=20)

    def store(self, paths, **kw):
        kw.setdefault("extra", ("-xr",))  # propose RLE too: phantom sets hold RLE-compressed images
        return storescu("127.0.0.1", self.port, NODE_AET, paths, **kw)


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample's value from a Prometheus text exposition, e.g. ``metric(text, "x_total", '{outcome="ok"}')``."""
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert m, f"{name}{labels} not in /metrics"
    return float(m.group(1))


# --- a real Triton Inference Server: edgeinfer triton-host in the PyTriton venv -----------------------------
#: the venv made from Debian's /usr/bin/python3 with the triton-host extra (make .venv-triton)
TRITON_VENV = Path(__file__).resolve().parent.parent / ".venv-triton"
TRITON_HINT = "make .venv-triton makes it (a venv from Debian's /usr/bin/python3 with nvidia-pytriton)"


def require_triton_host() -> Path:
    """The Triton host's ``edgeinfer``; skips the test when the venv is missing, fails it under ``make test``
    (EDGEINFER_REQUIRE_TRITON=1) or ``CI``."""
    exe = TRITON_VENV / "bin" / "edgeinfer"
    if exe.is_file():
        return exe
    reason = f"no Triton host venv at {TRITON_VENV}; {TRITON_HINT}"
    if os.environ.get("EDGEINFER_REQUIRE_TRITON") == "1" or os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


class TritonHost:
    """``edgeinfer triton-host`` in a subprocess: a real ``tritonserver`` (2.51, from nvidia-pytriton) serving a
    bundle on free localhost ports."""

    def __init__(self, workdir: Path, bundle: str = "phantom-cxr", *args: str, precision: str = "fp32",
                 ports: tuple[int, int, int] | None = None, wait: bool = True):
        exe = require_triton_host()
        self.workdir, self.bundle, self.precision = workdir, bundle, precision
        self.http_port, self.grpc_port, self.metrics_port = ports or (free_port(), free_port(), free_port())
        self.log = workdir / "triton-host.log"
        self.cmd = [str(exe), "triton-host", bundle, "--precision", precision, "--backend", "onnxruntime",
                    "--threads", "1", "--address", "127.0.0.1", "--http-port", str(self.http_port),
                    "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port), *args]
        self.proc: subprocess.Popen | None = None
        self.start(wait)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def model(self) -> str:
        return f"{Path(self.bundle).name}-{self.precision}"

    def start(self, wait: bool = True) -> "TritonHost":
        env = {k: v for k, v in os.environ.items() if k not in ("EDGEINFER_TRUST", "PYTHONPATH")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=self.workdir, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/models/{self.model}/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 90.0) -> None:
        wait_until(lambda: self.proc.poll() is not None or self.ready(), timeout, 0.25, "the Triton host's model")
        assert self.proc.poll() is None, _tail(self.log, 60)

    def kill(self) -> None:
        """SIGKILL the host and its tritonserver (its own process group): a server that dies."""
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        wait_until(lambda: not port_open("127.0.0.1", self.http_port), 10, 0.1, "the killed server's port")

    def stop(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()
