"""``flanneld``: the command line of the pyflannel agent.

Flag names and defaults are Go flanneld's.  As with Go's ``flag`` package a flag may be written
``-flag``, ``--flag``, ``-flag=value`` or ``-flag value`` (booleans: ``-flag`` alone means true, or
``-flag=false``).  Every flag can also come from the environment as ``FLANNELD_<FLAG>`` (upper case,
dashes as underscores, e.g. ``FLANNELD_ETCD_ENDPOINTS``); the command line wins.

Extensions over Go flanneld: ``--etcd-api v2|v3|auto`` and ``--subnet-lease-ttl`` (seconds; tests and
operations only — production keeps the 24 h TTL).  One default differs: ``--healthz-ip`` is 127.0.0.1
(Go: 0.0.0.0).

Secrets (``--etcd-password``, a password in an endpoint URL) never reach a message: options are
shown through :meth:`Options.__repr__`, which leaves them out, and usage errors mask them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

from pyflannel import __version__
from pyflannel.leases import DEFAULT_PREFIX, LEASE_TTL


class UsageError(Exception):
    """A bad flag or flag value; one line for a person."""


@dataclass
class Flag:
    name: str
    kind: str  # "str", "int", "bool", "list", "choice"
    default: object
    help: str
    choices: Sequence[str] = ()
    low: Optional[int] = None
    high: Optional[int] = None
    dest: str = field(init=False)

    def __post_init__(self) -> None:
        self.dest = self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return "FLANNELD_" + self.name.replace("-", "_").upper()


FLAGS: List[Flag] = [
    Flag("etcd-endpoints", "str", "http://127.0.0.1:4001,http://127.0.0.1:2379",
         "a comma-delimited list of etcd endpoints, tried in order (failover)"),
    Flag("etcd-prefix", "str", DEFAULT_PREFIX, "etcd prefix of the network config and the leases"),
    Flag("etcd-keyfile", "str", "", "SSL key file used to secure etcd communication"),
    Flag("etcd-certfile", "str", "", "SSL certification file used to secure etcd communication"),
    Flag("etcd-cafile", "str", "", "SSL Certificate Authority file used to secure etcd communication"),
    Flag("etcd-username", "str", "", "username for BasicAuth to etcd"),
    Flag("etcd-password", "str", "", "password for BasicAuth to etcd"),
    Flag("etcd-api", "choice", "auto", "etcd API: v2, v3, or auto (v3 when its gateway answers, else v2)",
         choices=("v2", "v3", "auto")),
    Flag("iface", "list", [], "interface to use (IP or name) for inter-host communication; repeatable, "
         "first match wins"),
    Flag("iface-regex", "list", [], "regex of the interface (IP or name) to use; repeatable, tried after --iface"),
    Flag("iface-can-reach", "str", "", "use the interface (and source address) of the route to this address"),
    Flag("public-ip", "str", "", "IP accessible by other nodes for inter-host communication"),
    Flag("public-ipv6", "str", "", "IPv6 accessible by other nodes for inter-host communication"),
    Flag("subnet-file", "str", "/run/flannel/subnet.env", "filename where env variables (subnet, MTU, ...) "
         "will be written to"),
    Flag("subnet-lease-renew-margin", "int", 60, "subnet lease renewal margin, in minutes (1..1439)",
         low=1, high=1439),
    Flag("subnet-lease-ttl", "int", LEASE_TTL, "lease TTL in seconds (extension for tests and operations; "
         "keep the default 86400 in production)", low=2, high=10 * 365 * 86400),
    Flag("ip-masq", "bool", False, "setup IP masquerade rule for traffic destined outside of overlay network"),
    Flag("iptables-resync", "int", 5, "resync period for iptables rules, in seconds", low=1, high=86400),
    Flag("iptables-forward-rules", "bool", True, "add default accept rules to FORWARD chain in iptables"),
    Flag("wireguard-key-file", "str", "", "private key file of the wireguard backend (base64, mode 0400, created "
         "when missing); empty: $WIREGUARD_KEY_FILE, else /run/flannel/wgkey"),
    # Go's default is 0.0.0.0; loopback here: /healthz and /metrics are for the node's own probes, and
    # every address they listen on is one more place for anyone to open connections to the agent
    Flag("healthz-ip", "str", "127.0.0.1", "the IP address for healthz server to listen (Go flanneld: 0.0.0.0)"),
    Flag("healthz-port", "int", 0, "the port for healthz server to listen (0 to disable)", low=0, high=65535),
    Flag("version", "bool", False, "print version and exit"),
    Flag("v", "int", 0, "log level for V logs (1 or more: debug)", low=0, high=100),
    Flag("help", "bool", False, "show this help and exit"),
]
_BY_NAME: Dict[str, Flag] = {f.name: f for f in FLAGS}
_BY_NAME["h"] = _BY_NAME["help"]

_TRUE = ("1", "t", "T", "true", "TRUE", "True")
_FALSE = ("0", "f", "F", "false", "FALSE", "False")


class Options:
    """Parsed flags, as attributes named like the flags with underscores (``opts.etcd_endpoints``)."""

    def __init__(self) -> None:
        for flag in FLAGS:
            default = flag.default
            setattr(self, flag.dest, list(default) if isinstance(default, list) else default)
        self.set_on_command_line: List[str] = []

    def __repr__(self) -> str:
        return mask_userinfo("Options(%s)" % ", ".join("%s=%r" % (f.dest, getattr(self, f.dest)) for f in FLAGS
                                                       if f.name != "etcd-password"))


def _convert(flag: Flag, raw: str, origin: str) -> object:
    if flag.kind == "bool":
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        raise UsageError("invalid boolean value %r for %s; use true or false" % (raw, origin))
    if flag.kind == "int":
        try:
            value = int(raw.strip())
        except ValueError:
            raise UsageError("invalid value %r for %s; it must be a whole number" % (raw, origin)) from None
        if (flag.low is not None and value < flag.low) or (flag.high is not None and value > flag.high):
            raise UsageError("invalid value %d for %s; it must be between %d and %d"
                             % (value, origin, flag.low, flag.high))
        return value
    if flag.kind == "choice":
        if raw not in flag.choices:
            raise UsageError("invalid value %r for %s; use one of %s" % (raw, origin, ", ".join(flag.choices)))
        return raw
    return raw


def _set(opts: Options, flag: Flag, value: object) -> None:
    if flag.kind == "list":
        getattr(opts, flag.dest).extend(v for v in str(value).split(",") if v.strip())
    else:
        setattr(opts, flag.dest, value)


def parse_args(argv: Sequence[str], environ: Optional[Mapping[str, str]] = None) -> Options:
    """Go-style flags first, then ``FLANNELD_*`` for every flag not given on the command line."""
    environ = os.environ if environ is None else environ
    opts = Options()
    given: List[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            if i < len(args):
                raise UsageError("unexpected argument %r; flanneld takes only flags (see --help)" % args[i])
            break
        if not arg.startswith("-") or arg == "-":
            raise UsageError("unexpected argument %r; flanneld takes only flags (see --help)" % arg)
        body = arg[2:] if arg.startswith("--") else arg[1:]
        name, has_value, raw = body.partition("=")
        flag = _BY_NAME.get(name)
        if flag is None:
            raise UsageError("flag provided but not defined: -%s (see --help)" % name)
        origin = "--" + flag.name
        if flag.kind == "bool":
            value = _convert(flag, raw, origin) if has_value else True
        elif has_value:
            value = _convert(flag, raw, origin)
        elif flag.name == "v":  # glog's -v: take a following number, alone it means 1
            if i < len(args) and args[i].strip().isdigit():
                value = _convert(flag, args[i], origin)
                i += 1
            else:
                value = 1
        else:
            if i >= len(args):
                raise UsageError("flag needs an argument: %s" % origin)
            value = _convert(flag, args[i], origin)
            i += 1
        if flag.kind == "list" and flag.name not in given:
            setattr(opts, flag.dest, [])
        _set(opts, flag, value)
        given.append(flag.name)
    for flag in FLAGS:
        if flag.name in given or flag.name in ("help", "version"):
            continue
        raw = environ.get(flag.env)
        if raw is None or raw == "":
            continue
        _set(opts, flag, _convert(flag, raw, flag.env))
    opts.set_on_command_line = given
    _check_endpoints(opts, "--etcd-endpoints" if "etcd-endpoints" in given else _BY_NAME["etcd-endpoints"].env)
    return opts


def _check_endpoints(opts: Options, origin: str) -> None:
    """Endpoints are judged by the etcd facade when parsed: a bad one is a usage error (exit 2)."""
    from pyflannel.etcdstore import BadEndpoint, parse_endpoints

    try:
        parse_endpoints(opts.etcd_endpoints)
    except BadEndpoint as err:
        reason = str(err).replace("(fix --etcd-endpoints)", "").rstrip("; ")
        raise UsageError(mask_userinfo("invalid value %r for %s: %s" % (opts.etcd_endpoints, origin, reason))) \
            from None


_USERINFO = re.compile(r"(://)[^/@\s'\"]*@")


def mask_userinfo(text: str) -> str:
    """``http://user:secret@host`` -> ``http://(hidden)@host`` wherever a URL with credentials appears in
    ``text`` (an endpoint is echoed in messages; its password must not be)."""
    return _USERINFO.sub(r"\1(hidden)@", text)


def usage() -> str:
    lines = ["Usage: flanneld [OPTION]...", "", "Every flag can also be set as FLANNELD_<FLAG> in the environment.", ""]
    for flag in FLAGS:
        if flag.kind == "bool":
            shown = "-%s" % flag.name
        else:
            kinds = {"int": "int", "list": "value", "choice": "|".join(flag.choices)}
            shown = "-%s %s" % (flag.name, kinds.get(flag.kind, "string"))
        default = flag.default
        if isinstance(default, list):
            default = ""
        extra = " (default %s)" % (str(default).lower() if isinstance(default, bool) else default) \
            if default not in ("", [], None, False) else ""
        lines.append("  %s\n    \t%s%s" % (shown, flag.help, extra))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# glog-like logging: "I1122 02:12:05.123456    1234 file.py:42] message"
# ---------------------------------------------------------------------------------------------------
_LETTERS = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E", logging.CRITICAL: "F"}


class GlogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = time.localtime(record.created)
        micros = int((record.created - int(record.created)) * 1_000_000)
        msg = record.getMessage()
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            msg += " (%s)" % trace.splitlines()[-1] if record.levelno >= logging.ERROR else "\n" + trace
        return "%s%02d%02d %02d:%02d:%02d.%06d %7d %s:%d] %s" % (
            _LETTERS.get(record.levelno, "I"), when.tm_mon, when.tm_mday, when.tm_hour, when.tm_min,
            when.tm_sec, micros, record.process or os.getpid(), record.filename, record.lineno, msg)


def setup_logging(verbosity: int = 0, stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(GlogFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)
    # the client libraries' own retry/connection chatter never reaches the log (the etcd facade reports
    # an outage in two lines); -v=5 shows it for debugging
    for noisy in ("urllib3", "requests", "etcd", "etcd.client", "etcd3gw", "pyroute2"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL if verbosity < 5 else logging.DEBUG)
    threading.excepthook = _thread_excepthook


def _thread_excepthook(args) -> None:  # an unexpected crash in a thread: one line, not a traceback
    logging.getLogger("pyflannel").error("internal error in thread %s: %s: %s",
                                         getattr(args.thread, "name", "?"), args.exc_type.__name__, args.exc_value)


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        sys.stderr.write("flanneld: %s\n" % err)
        return 2
    if opts.help:
        sys.stdout.write(usage())
        return 0
    if opts.version:
        sys.stdout.write("%s\n" % __version__)
        return 0
    setup_logging(opts.v)
    from pyflannel.agent import Agent

    return Agent(opts).run()


if __name__ == "__main__":
    sys.exit(main())
