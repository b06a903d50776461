"""Secrets never reach a log line: one redactor, driven by the catalogue's ``no_log`` options, for the
agent's config lines (start-up, runtime changes) and for anything else that shows a config; the etcd
password stays out of the agent's messages."""

from __future__ import annotations

import copy
import json
import logging

import pytest

from pyflannel import catalogue
from pyflannel.agent import config_text
from pyflannel.cli import GlogFormatter, mask_userinfo, parse_args
from pyflannel.netconfig import changes, parse_config

PSK = "q2Xo0rO6fP1cB3bq6mkH0wKdQw4kVmXhP3n3mF1sA2U="
PSK2 = "8CMfxUeyv5e7V2ZyG4i5tR0cZ5g0w1bJkmxX2kT0uH8="


def test_secret_options_come_from_the_catalogue():
    marked = set(opt.go.lower() for b in catalogue.BACKENDS for opt in b.options if opt.no_log)
    assert marked and catalogue.secret_options() == marked
    assert "psk" in marked


@pytest.mark.parametrize("key", ["PSK", "psk", "Psk"])
def test_redact_hides_secret_options_in_any_case(key):
    raw = {"Network": "10.0.0.0/8", "backend": {"Type": "wireguard", key: PSK, "ListenPort": 51820}}
    before = copy.deepcopy(raw)
    out = catalogue.redact(raw)
    assert out == {"Network": "10.0.0.0/8", "backend": {"Type": "wireguard", key: catalogue.HIDDEN,
                                                        "ListenPort": 51820}}
    assert raw == before  # a copy: the caller's config is untouched


def test_redact_keeps_unset_and_leaves_other_things_alone():
    assert catalogue.redact({"Backend": {"Type": "wireguard", "PSK": None}}) == {"Backend": {"Type": "wireguard",
                                                                                             "PSK": None}}
    assert catalogue.redact({"Backend": "garbage"}) == {"Backend": "garbage"}
    assert catalogue.redact("text") == "text" and catalogue.redact(None) is None


def test_every_no_log_option_is_hidden_in_the_agents_config_line():
    for backend in catalogue.BACKENDS:
        for opt in backend.options:
            if not opt.no_log:
                continue
            value = PSK if opt.kind == "key" else "s3cret-value"
            config = parse_config(json.dumps({"Network": "10.0.0.0/8", "Backend": {"Type": backend.name,
                                                                                   opt.go: value}}))
            text = config_text(config)
            assert value not in text and catalogue.HIDDEN in text, text
            assert value in config.to_json()  # the unredacted form does carry it: the redactor is what helps


def test_backend_changes_name_the_option_never_the_value():
    old = parse_config(json.dumps({"Network": "10.0.0.0/8", "Backend": {"Type": "wireguard", "PSK": PSK}}))
    new = parse_config(json.dumps({"Network": "10.0.0.0/8", "Backend": {"Type": "wireguard", "PSK": PSK2,
                                                                        "ListenPort": 51830}}))
    assert changes(old, new, values=True) == (["Backend.ListenPort 51820 -> 51830",
                                               "Backend.PSK (hidden) -> (hidden)"], [])
    assert changes(old, new) == (["Backend"], [])
    unset = parse_config(json.dumps({"Network": "10.0.0.0/8", "Backend": {"Type": "wireguard"}}))
    assert changes(unset, old, values=True)[0] == ["Backend.PSK None -> (hidden)"]
    other = parse_config(json.dumps({"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}))
    text = " ".join(changes(old, other, values=True)[0])
    assert "Backend.Type wireguard -> vxlan" in text and PSK not in text
    assert changes(old, old) == changes(old, old, values=True) == ([], [])


def test_etcd_password_stays_out_of_options_and_usage_errors():
    opts = parse_args(["--etcd-username", "root", "--etcd-password", "pw-1234-secret"], {})
    assert opts.etcd_password == "pw-1234-secret" and "pw-1234-secret" not in repr(opts)
    env = parse_args([], {"FLANNELD_ETCD_PASSWORD": "pw-from-env"})
    assert env.etcd_password == "pw-from-env" and "pw-from-env" not in repr(env)
    with_url = parse_args(["--etcd-endpoints", "http://root:pw-in-url@127.0.0.1:2379"], {})
    assert "pw-in-url" not in repr(with_url)


def test_password_in_an_endpoint_url_is_masked():
    assert mask_userinfo("bad 'http://root:pw@10.0.0.1:99999', 'https://u@h:1'") == \
        "bad 'http://(hidden)@10.0.0.1:99999', 'https://(hidden)@h:1'"
    assert mask_userinfo("http://10.0.0.1:2379") == "http://10.0.0.1:2379"


def test_main_usage_error_does_not_echo_the_password(capsys):
    from pyflannel.cli import main

    assert main(["--etcd-password", "pw-1234-secret", "--etcd-endpoints", "http://root:pw-5678@h:99999"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pw-1234-secret" not in err and "pw-5678" not in err, err


def test_glog_formatter_prints_what_it_is_given():
    # the formatter adds nothing of its own: a redacted message stays redacted
    record = logging.LogRecord("pyflannel.agent", logging.INFO, "agent.py", 1, "network config: %s",
                               (config_text(parse_config(json.dumps({"Network": "10.0.0.0/8", "Backend": {
                                   "Type": "wireguard", "PSK": PSK}}))),), None)
    line = GlogFormatter().format(record)
    assert PSK not in line and '"PSK":"(hidden)"' in line
