"""pyflannel: a flanneld-compatible agent written in Python (part of netfabric.flannel)."""

__version__ = "0.2.0"
