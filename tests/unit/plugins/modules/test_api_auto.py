"""The modules' ``api: auto``: the API where ``<prefix>/config`` is, decided by the facade's choose_api and
connect_for_prefix.  No etcd here: the decision table, the conflict line, and connect_for_prefix driven by
stand-in stores (tests/integration/test_modules_api_auto.py runs the modules against a real etcd)."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import pytest
from ansible_collections.netfabric.flannel.plugins.module_utils import etcdstore, flannel_module
from ansible_collections.netfabric.flannel.plugins.module_utils.etcdstore import (
    KV,
    ConfigConflict,
    StoreError,
    Unreachable,
    choose_api,
    connect_for_prefix,
    same_config,
)

KEY = "/coreos.com/network/config"
NET = '{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}'
NET_REORDERED = '{ "Backend" : {"Type":"vxlan"},\n "Network":"10.1.0.0/16" }'
OTHER = '{"Network": "10.2.0.0/16", "Backend": {"Type": "vxlan"}}'


@pytest.mark.parametrize("v2, v3, v2_answers, v3_answers, api", [
    (NET, None, True, True, "v2"),  # only under v2
    (None, NET, True, True, "v3"),  # only under v3
    (NET, NET_REORDERED, True, True, "v3"),  # under both, same content
    (None, None, True, True, "v3"),  # under neither: where new networks go
    (None, None, True, False, "v2"),  # under neither, and only the v2 API answers
    (None, None, False, True, "v3"),  # under neither, and only the v3 API answers
    (NET, None, True, False, "v2"),
    (None, NET, False, True, "v3"),
])
def test_choose_api(v2: Optional[str], v3: Optional[str], v2_answers: bool, v3_answers: bool, api: str) -> None:
    assert choose_api(KEY, v2, v3, v2_answers=v2_answers, v3_answers=v3_answers) == api


def test_choose_api_conflict_is_one_line_naming_both() -> None:
    with pytest.raises(ConfigConflict) as info:
        choose_api(KEY, NET, OTHER)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(KEY + " differs between the etcd v2 and v3 APIs (v2: ")
    assert "10.1.0.0/16" in text and "10.2.0.0/16" in text
    assert text.index("10.1.0.0/16") < text.index("v3:") < text.index("10.2.0.0/16")
    assert text.endswith("pass api: v2 or api: v3 to say which one holds the network")
    assert (info.value.key, info.value.v2_value, info.value.v3_value) == (KEY, NET, OTHER)
    assert isinstance(info.value, StoreError)  # the modules fail with it like with any store error


def test_conflict_line_hides_secrets_and_stays_short() -> None:
    psk = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2U="
    wireguard = json.dumps({"Network": "10.1.0.0/16", "Backend": {"Type": "wireguard", "PSK": psk}})
    broken = '{"Network": "10.1.0.0/16", "Backend": {"Type": "wireguard", "PSK": "%s"' % psk
    for v2 in (wireguard, broken):
        text = str(ConfigConflict(KEY, v2, "x" * 5000))
        assert psk not in text and "(hidden)" in text
        assert len(text) < 700 and "\n" not in text
    assert 'v3: not JSON: "xxx' in str(ConfigConflict(KEY, NET, "x" * 5000))


def test_same_config() -> None:
    assert same_config(NET, NET_REORDERED)
    assert not same_config(NET, OTHER)
    assert not same_config(NET, '{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}, "SubnetLen": 24}')
    assert same_config("not json", "not json") and not same_config("not json", "not json ")
    assert not same_config(NET, "not json")


def test_neither_api_answering_is_an_error() -> None:
    with pytest.raises(StoreError, match="neither etcd API answers"):
        choose_api(KEY, None, None, v2_answers=False, v3_answers=False)


class FakeStore:
    """A stand-in for V2Store/V3Store: ``values`` maps api -> config text (None: absent), or an exception."""

    values: Dict[str, Any] = {}
    opened: List[FakeStore] = []
    api = ""

    def __init__(self, endpoints: Any, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.closed = False
        self.report_outages = True
        self.keys: List[str] = []
        answer = self.values[self.api]
        if isinstance(answer, StoreError) and "not installed" in str(answer):
            raise answer
        FakeStore.opened.append(self)

    def get(self, key: str) -> Optional[KV]:
        self.keys.append(key)
        answer = self.values[self.api]
        if isinstance(answer, Exception):
            raise answer
        return None if answer is None else KV(key, answer, 7)

    def close(self) -> None:
        self.closed = True


class FakeV2(FakeStore):
    api = "v2"


class FakeV3(FakeStore):
    api = "v3"


@pytest.fixture
def fake_stores(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(etcdstore, "V2Store", FakeV2)
    monkeypatch.setattr(etcdstore, "V3Store", FakeV3)
    FakeStore.opened = []

    def answers(v2: Any, v3: Any) -> None:
        FakeStore.values = {"v2": v2, "v3": v3}

    return answers


@pytest.mark.parametrize("v2, v3, api", [
    (NET, None, "v2"),
    (None, NET, "v3"),
    (NET, NET_REORDERED, "v3"),
    (None, None, "v3"),
    (None, StoreError("etcd at http://e:2379 does not serve the v3 gateway (404 page not found)"), "v2"),
    (StoreError("etcd at http://e:2379 does not serve the v2 API; start etcd with --enable-v2=true"), None, "v3"),
    (NET, StoreError("etcd3gw is not installed; install it"), "v2"),
])
def test_connect_for_prefix_opens_the_chosen_store_and_closes_the_other(fake_stores: Any, v2: Any, v3: Any,
                                                                        api: str) -> None:
    fake_stores(v2, v3)
    store = connect_for_prefix("coreos.com/network/", ["http://e:2379"], timeout=2.0)
    assert store.api == api and not store.closed and store.report_outages is True
    assert store.kwargs["timeout"] == 2.0
    assert all(s.closed for s in FakeStore.opened if s is not store)
    assert all(s.keys == [KEY] for s in FakeStore.opened)


def test_connect_for_prefix_failures(fake_stores: Any) -> None:
    fake_stores(NET, OTHER)
    with pytest.raises(ConfigConflict):
        connect_for_prefix("/coreos.com/network", ["http://e:2379"])
    assert FakeStore.opened and all(s.closed for s in FakeStore.opened)

    FakeStore.opened = []
    fake_stores(NET, Unreachable("etcd is unreachable (reading x failed on http://e:2379: refused)"))
    with pytest.raises(Unreachable):  # etcd down is not "no v3 API": no guess, and no second timeout on v2
        connect_for_prefix("/coreos.com/network", ["http://e:2379"])
    assert [s.api for s in FakeStore.opened] == ["v3"] and FakeStore.opened[0].closed

    FakeStore.opened = []
    fake_stores(StoreError("etcd refused reading x: bad user"), StoreError("etcd at e does not serve the v3 gateway"))
    with pytest.raises(StoreError, match=r"serves neither API flannel uses \(v3: .*v3 gateway; v2: .*bad user\)"):
        connect_for_prefix("/coreos.com/network", ["http://e:2379"])

    with pytest.raises(StoreError, match="needs both a certificate and a key"):
        connect_for_prefix("/coreos.com/network", ["http://e:2379"], client_cert="/c.pem")


class FakeModule:
    def __init__(self, **params: Any) -> None:
        self.params = dict(endpoints=["http://e:2379"], prefix="/coreos.com/network", api="auto", ca_cert=None,
                           client_cert=None, client_key=None, username=None, password=None, timeout=5.0)
        self.params.update(params)

    def fail_json(self, **kwargs: Any) -> None:
        raise RuntimeError(kwargs["msg"])


def test_connect_store_auto_asks_where_the_config_is(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[Any] = []
    monkeypatch.setattr(flannel_module, "HAS_ETCD3GW", True)
    monkeypatch.setattr(flannel_module, "HAS_PYTHON_ETCD", True)
    monkeypatch.setattr(flannel_module, "connect_for_prefix", lambda prefix, **kw: calls.append(("auto", prefix, kw)))
    monkeypatch.setattr(flannel_module, "connect", lambda api, **kw: calls.append((api, kw)))
    flannel_module.connect_store(FakeModule(prefix="atomic.io/network/"))
    assert calls[-1][:2] == ("auto", "/atomic.io/network")
    assert calls[-1][2]["endpoints"] == ["http://e:2379"] and calls[-1][2]["timeout"] == 5.0
    flannel_module.connect_store(FakeModule(api="v2"))
    assert calls[-1][0] == "v2"
    # with one client library only, auto is that library's API (the other cannot be read)
    monkeypatch.setattr(flannel_module, "HAS_ETCD3GW", False)
    flannel_module.connect_store(FakeModule())
    assert calls[-1][0] == "v2"


def test_connect_store_conflict_fails_with_the_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flannel_module, "HAS_ETCD3GW", True)
    monkeypatch.setattr(flannel_module, "HAS_PYTHON_ETCD", True)

    def conflict(prefix: str, **_kw: Any) -> None:
        raise ConfigConflict(prefix + "/config", NET, OTHER)

    monkeypatch.setattr(flannel_module, "connect_for_prefix", conflict)
    with pytest.raises(RuntimeError) as info:
        flannel_module.connect_store(FakeModule())
    assert str(info.value).startswith("/coreos.com/network/config differs between the etcd v2 and v3 APIs")
    assert "\n" not in str(info.value)
