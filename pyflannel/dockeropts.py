"""``mk-docker-opts``: turn the flannel subnet file into docker daemon options.

Same flags and byte-identical output as Go flanneld's mk-docker-opts.sh, partial subnet files included
(an option whose FLANNEL_* variable is missing is left out, and the exit status is still 0)::

    DOCKER_OPT_BIP="--bip=10.1.74.1/24"
    DOCKER_OPT_IPMASQ="--ip-masq=true"
    DOCKER_OPT_MTU="--mtu=1472"
    DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"

A subnet file with FLANNEL_IPV6_SUBNET (dual stack, or IPv6 only without FLANNEL_SUBNET) adds docker's
IPv6 options, one docker argument per variable like the others (Go's mk-docker-opts.sh has no IPv6
handling; the names sort so that the combined option reads ``--ipv6 --fixed-cidr-v6=...``)::

    DOCKER_OPT_BIP="--bip=10.1.74.1/24"
    DOCKER_OPT_IPMASQ="--ip-masq=true"
    DOCKER_OPT_IPV6="--ipv6"
    DOCKER_OPT_IPV6_CIDR="--fixed-cidr-v6=fc00:0:0:3::1/64"
    DOCKER_OPT_MTU="--mtu=1472"
    DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --ipv6 --fixed-cidr-v6=fc00:0:0:3::1/64 --mtu=1472"
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from typing import Dict, List, Optional

from pyflannel.subnetenv import parse, write_atomic

USAGE = """usage: mk-docker-opts [-f FILE] [-d FILE] [-i] [-c] [-m] [-k KEY]

Generate docker daemon options from the flannel subnet file.
  -f FILE  flannel env file to read (default /run/flannel/subnet.env)
  -d FILE  docker env file to write (default /run/docker_opts.env)
  -i       write the individual options (DOCKER_OPT_BIP, DOCKER_OPT_IPMASQ, DOCKER_OPT_MTU, and with
           FLANNEL_IPV6_SUBNET DOCKER_OPT_IPV6, DOCKER_OPT_IPV6_CIDR) only
  -c       write the combined option (DOCKER_OPTS) only
  -k KEY   name of the combined option (default DOCKER_OPTS)
  -m       leave --ip-masq out (older docker versions)
(neither -i nor -c: write both)
"""


class OptsError(Exception):
    pass


def _is_ipv6_interface(value: str) -> bool:
    """``fc00:0:0:3::1/64``: an IPv6 address with an explicit prefix length (no IPv4, no list, no zone)."""
    _address, sep, length = value.partition("/")
    if not sep or not length.isdigit() or "%" in value or value != value.strip():
        return False
    try:
        ipaddress.IPv6Interface(value)
    except ValueError:
        return False
    return True


def render(env: Dict[str, str], individual: bool = True, combined: bool = True, key: str = "DOCKER_OPTS",
           ipmasq_opt: bool = True, existing: str = "") -> str:
    """The docker env file's text for the variables of a flannel subnet file."""
    if not individual and not combined:
        individual = combined = True
    # Like mk-docker-opts.sh on a partial file: each option only when its FLANNEL_* variable is set
    # (no FLANNEL_SUBNET: no --bip; no FLANNEL_IPMASQ: no --ip-masq), and what there is gets written.
    opts: Dict[str, str] = {}
    subnet = env.get("FLANNEL_SUBNET", "")
    if subnet:
        opts["DOCKER_OPT_BIP"] = "--bip=" + subnet
    flannel_masq = env.get("FLANNEL_IPMASQ", "")
    if ipmasq_opt and flannel_masq:
        if flannel_masq == "true":
            docker_masq = "false"  # flannel masquerades already
        elif flannel_masq == "false":
            docker_masq = "true"
        else:
            raise OptsError("Invalid value of FLANNEL_IPMASQ: %s (must be true or false)" % flannel_masq)
        opts["DOCKER_OPT_IPMASQ"] = "--ip-masq=" + docker_masq
    ipv6_subnet = env.get("FLANNEL_IPV6_SUBNET", "")
    if ipv6_subnet:
        if not _is_ipv6_interface(ipv6_subnet):
            raise OptsError("Invalid value of FLANNEL_IPV6_SUBNET: %s (must be an IPv6 address with its prefix "
                            "length, e.g. fc00:0:0:3::1/64)" % ipv6_subnet)
        opts["DOCKER_OPT_IPV6"] = "--ipv6"
        opts["DOCKER_OPT_IPV6_CIDR"] = "--fixed-cidr-v6=" + ipv6_subnet
    mtu = env.get("FLANNEL_MTU", "")
    if mtu:
        opts["DOCKER_OPT_MTU"] = "--mtu=" + mtu
    lines: List[str] = []
    joined = existing + " " if existing else ""
    for name in sorted(opts):
        if individual:
            lines.append('%s="%s"' % (name, opts[name]))
        joined += " " + opts[name]
    if combined:
        lines.append('%s="%s"' % (key, joined))
    return "".join(line + "\n" for line in lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="mk-docker-opts", add_help=False, usage=argparse.SUPPRESS)
    parser.add_argument("-f", dest="flannel_env", default="/run/flannel/subnet.env")
    parser.add_argument("-d", dest="docker_env", default="/run/docker_opts.env")
    parser.add_argument("-i", dest="individual", action="store_true")
    parser.add_argument("-c", dest="combined", action="store_true")
    parser.add_argument("-k", dest="key", default="DOCKER_OPTS")
    parser.add_argument("-m", dest="no_masq", action="store_true")
    parser.add_argument("-h", "-?", dest="help", action="store_true")

    def fail(message: str) -> None:
        sys.stderr.write("mk-docker-opts: %s\n%s" % (message, USAGE))
        sys.exit(2)

    parser.error = fail  # type: ignore[assignment]
    args = parser.parse_args(argv)
    if args.help:
        sys.stdout.write(USAGE)
        return 0
    try:
        env = {}
        if os.path.isfile(args.flannel_env):
            with open(args.flannel_env, encoding="utf-8") as handle:
                env = parse(handle.read())
        else:
            raise OptsError("flannel env file %s does not exist; start flanneld first or point -f at its "
                            "subnet file" % args.flannel_env)
        existing = env.get(args.key, os.environ.get(args.key, ""))
        text = render(env, args.individual, args.combined, args.key, not args.no_masq, existing)
        write_atomic(args.docker_env, text)
    except (OptsError, OSError) as err:
        sys.stderr.write("mk-docker-opts: %s\n" % err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
