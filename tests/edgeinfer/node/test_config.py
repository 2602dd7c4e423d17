"""edgeinfer serve's settings: defaults, a TOML file, flags; removed settings and bad values say what to do."""
import pytest

from edgeinfer.errors import UsageError
from edgeinfer.node.config import Destination, NodeConfig, load_config


def test_config_file_flags_and_clear_errors(tmp_path):
    cfg = tmp_path / "serve.toml"
    cfg.write_text('[serve]\nport = 2000\nae_title = "NODE"\nsend_to = ["PACS@127.0.0.1:4242"]\nquiet_seconds = 1\n')
    c = load_config(cfg, {"port": 3000, "allow_calling": "A,B"})
    assert (c.port, c.ae_title, c.allow_calling, c.send_to) == (3000, "NODE", ("A", "B"),
                                                               (Destination("PACS", "127.0.0.1", 4242),))
    assert c.quiet_for("CT") == 1.0 and NodeConfig().quiet_for("CT") == 30.0 and NodeConfig().quiet_for("DX") == 5.0
    for bad, words in (("port = 70000", "not a TCP port"), ("max_crashes = 0", "max_crashes must be at least 1"), ('ae_title = "WAY-TOO-LONG-AE-TITLE"', "not an AE title"),
                       ('tls_cert = "/nope.pem"', "go together"), ("bogus = 1", "unknown setting"),
                       ('send_tls_cert = "/a.pem"\nsend_tls_key = "/a.key"', "needs send_tls_ca"),
                       ("port = [", "not valid TOML")):
        cfg.write_text(bad + "\n")
        with pytest.raises(UsageError, match=words):
            load_config(cfg)
    with pytest.raises(UsageError, match="AET@HOST:PORT"):
        Destination.parse("PACS:104")


def test_send_retries_names_its_replacement(tmp_path):
    cfg = tmp_path / "serve.toml"
    cfg.write_text("[serve]\nsend_retries = 8\n")
    with pytest.raises(UsageError, match="replaced by send_horizon"):
        load_config(cfg)


def test_max_queue_says_a_backlog_no_longer_refuses(tmp_path):
    cfg = tmp_path / "serve.toml"
    cfg.write_text("[serve]\nmax_queue = 200\n")
    with pytest.raises(UsageError, match=r"max_queue was removed: a backlog .* /readyz report the backlog; remove max_queue"):
        load_config(cfg)
    with pytest.raises(UsageError, match=r"^--max-queue: max_queue was removed.*leave it out$"):
        load_config(None, {"max_queue": 2})


def test_a_result_writer_that_cannot_be_loaded_is_refused_at_start():
    with pytest.raises(UsageError, match=r"result writer 'no_such_module:writer': cannot import it .*Python path"):
        load_config(None, {"results": ["no_such_module:writer"]})
    with pytest.raises(UsageError, match=r"result writer 'heatmap': not one of heatmaps, seg, sr, and not module:function"):
        load_config(None, {"results": ["heatmap"]})
    assert load_config(None, {"results": ["sr"]}).results == ("sr",)


def test_each_setting_is_declared_once_and_the_sample_file_is_made_from_the_declarations():
    """deploy/serve.toml, the flags and the file's sections all come from NodeConfig's declarations."""
    import argparse
    import dataclasses

    from edgeinfer.node.config import SECTIONS, add_arguments, sample_toml
    from helpers import ROOT

    sample = ROOT / "deploy" / "serve.toml"
    assert sample.read_text() == sample_toml(), "run: .venv/bin/python -m edgeinfer.node.config --sample > deploy/serve.toml"
    c = load_config(sample)                                   # the sample loads, with its device examples
    assert c.spool.as_posix() == "/var/lib/edgeinfer/spool" and c.send_to == (Destination("PACS", "10.0.0.5", 104),)
    assert c.allow_calling == ("CR_ROOM1", "DX_ROOM2", "PACS") and c.results == ("sr", "heatmaps", "seg")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    names = {f.name for f in dataclasses.fields(NodeConfig)}
    flags = {a.dest: a for a in parser._actions if a.dest in names}
    assert set(flags) == names                                 # every setting has its flag
    assert all(f.metadata["section"] in SECTIONS for f in dataclasses.fields(NodeConfig))
    args = parser.parse_args(["--port", "2000", "--send-to", "A@h:1", "--send-to", "B@h:2", "--result", "sr"])
    c = load_config(None, {n: getattr(args, n) for n in names})
    assert (c.port, [str(d) for d in c.send_to], c.results) == (2000, ["A@h:1", "B@h:2"], ("sr",))


def test_the_file_s_sections_hold_their_settings_and_say_where_a_misplaced_one_goes(tmp_path):
    cfg = tmp_path / "serve.toml"
    cfg.write_text('[serve.dicom]\nport = 2001\n[serve.outbox]\nsend_horizon = 60\n[serve.http]\nhttp_port = 9000\n')
    c = load_config(cfg)
    assert (c.port, c.send_horizon, c.http_port) == (2001, 60, 9000)
    cfg.write_text('[serve.dicom]\nretain_hours = 1\n')
    with pytest.raises(UsageError, match=r"retain_hours belongs in \[serve.spool\], not \[serve.dicom\]"):
        load_config(cfg)
    cfg.write_text('[serve.dicom]\nportt = 1\n')
    with pytest.raises(UsageError, match=r"\[serve.dicom\] portt: unknown setting; \[serve.dicom\] holds port, host"):
        load_config(cfg)
    cfg.write_text('[serve.spool]\nmax_queue = 5\n')
    with pytest.raises(UsageError, match="max_queue was removed"):
        load_config(cfg)


def test_a_triton_server_is_one_url_and_excludes_a_local_backend():
    c = load_config(None, {"triton_url": "grpc://gpu-host:8001", "precision": "fp32"})
    assert c.triton_url == "grpc://gpu-host:8001" and c.backend == "auto"
    for given, words in (({"triton_url": "gpu-host:8000", "backend": "openvino"}, "give one of them"),
                         ({"triton_url": "ftp://gpu-host"}, "triton_url 'ftp://gpu-host': expected http://HOST:PORT"),
                         ({"backend": "triton"}, "backend triton needs triton_url")):
        with pytest.raises(UsageError, match=words):
            load_config(None, given)
