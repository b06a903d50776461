"""Stand-in for the pip bootstrap script ansible-test downloads from its CI file host.

ansible-test creates each sanity test's virtual environment without pip, then runs its cached
``get_pip_<version>.py`` inside it with pip's install arguments (``pip==24.2`` ...).  Machines that reach
PyPI but not that host cannot download that script; scripts/sanity.sh installs this
file in its place.  It installs the pip that Python itself bundles (ensurepip), then lets that pip install
the requested packages from the package index, which is what the real script achieves.
"""

from __future__ import annotations

import subprocess
import sys

# get-pip options that plain `pip install` does not know.
GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")


def main() -> None:
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *args])


if __name__ == "__main__":
    main()
