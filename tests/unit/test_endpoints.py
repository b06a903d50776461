"""etcd endpoints are judged once, in the facade, when parsed: one line naming the bad value."""

from __future__ import annotations

import pytest

from pyflannel.cli import UsageError, main, parse_args
from pyflannel.etcdstore import BadEndpoint, StoreError, parse_endpoints


@pytest.mark.parametrize("text, url", [
    ("http://10.0.0.1:2379", "http://10.0.0.1:2379"),
    ("https://etcd.example:4001", "https://etcd.example:4001"),
    ("http://h", "http://h:2379"),
    ("http://[::1]:2379", "http://[::1]:2379"),
    ("https://[fd00::1]", "https://[fd00::1]:2379"),
    (" http://a:1/ ", "http://a:1"),
    ("http://a:65535", "http://a:65535"),
])
def test_good_endpoints(text, url):
    assert [e.url for e in parse_endpoints(text)] == [url]


def test_list_and_default():
    assert [e.port for e in parse_endpoints("http://a:1,http://b:2")] == [1, 2]
    assert [e.url for e in parse_endpoints(None)] == ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]


@pytest.mark.parametrize("text", ["not-a-url", "10.0.0.1:2379", "http://[::1", "ftp://h:1", "http://",
                                  "http://h:0", "http://h:65536", "http://h:x", "http://h:", "http://h/v2",
                                  "http://::1:2379", "http://h?x=1"])
def test_bad_endpoints(text):
    with pytest.raises(BadEndpoint) as exc:
        parse_endpoints("http://good:2379," + text)
    msg = str(exc.value)
    assert repr(text) in msg and "\n" not in msg and "--etcd-endpoints" in msg
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, StoreError)


def test_empty():
    with pytest.raises(BadEndpoint):
        parse_endpoints(" , ")


def test_cli_usage_error():
    with pytest.raises(UsageError, match=r"--etcd-endpoints.*'not-a-url'"):
        parse_args(["--etcd-endpoints=not-a-url"], {})
    with pytest.raises(UsageError, match=r"FLANNELD_ETCD_ENDPOINTS"):
        parse_args([], {"FLANNELD_ETCD_ENDPOINTS": "http://[::1"})


@pytest.mark.parametrize("value", ["not-a-url", "http://[::1"])
def test_cli_exit_2_one_line(value, capsys):
    assert main(["--etcd-endpoints=" + value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--etcd-endpoints" in err and value in err
    assert "internal error" not in err


def test_outage_logged_once_each_way(caplog):
    from pyflannel.etcdstore import EtcdStore, Unreachable, _ConnectionProblem

    store = EtcdStore("http://a:1,http://b:2")
    down = [True]

    def op(index):
        if down[0]:
            raise _ConnectionProblem("refused")
        return "ok"

    caplog.set_level("DEBUG", logger="pyflannel.etcdstore")
    for _attempt in range(3):
        with pytest.raises(Unreachable):
            store._attempt(op, "reading /x")
    down[0] = False
    assert store._attempt(op, "reading /x") == "ok"
    assert store._attempt(op, "reading /x") == "ok"
    texts = [r.getMessage() for r in caplog.records if r.levelname != "DEBUG"]
    assert len(texts) == 2, texts
    assert texts[0].startswith("etcd outage began") and "http://a:1, http://b:2" in texts[0]
    assert texts[1].startswith("etcd outage ended: etcd is reachable again at http://a:1; the outage lasted")


def test_gateway_answers_of_a_stopping_etcd_count_as_not_answering():
    """While etcd stops or starts, its JSON gateway answers 503 with the gRPC dial error: an outage (one
    line from the facade), not an error of the request."""
    from pyflannel.etcdstore import _going_away

    dial = ('{"error":"connection error: desc = \\"transport: Error while dialing dial tcp 127.0.0.1:55881: '
            'connect: connection refused\\"","code":14}')
    assert _going_away(503, dial)
    assert _going_away(503, '{"error":"grpc: the client connection is closing"}')
    assert not _going_away(503, '{"error":"etcdserver: request is too large"}')
    assert not _going_away(400, dial)


def test_watch_stream_errors_of_a_stopping_etcd_count_as_not_answering():
    """Inside a v3 watch stream the gateway reports a stopping etcd as grpc_code 14, or as 408 "the client
    connection is closing" (grpc_code 1): a reconnect under the outage line, not a second ERROR line."""
    from pyflannel.etcdstore import _stream_going_away

    assert _stream_going_away({"grpc_code": 14, "http_code": 503, "message": "unavailable"})
    assert _stream_going_away({"grpc_code": 1, "http_code": 408, "message": "grpc: the client connection is closing",
                               "http_status": "Request Timeout"})
    assert not _stream_going_away({"grpc_code": 11, "http_code": 400, "message": "etcdserver: mvcc: required "
                                   "revision has been compacted"})
    assert not _stream_going_away({"grpc_code": 1, "http_code": "x", "message": "closing"})
