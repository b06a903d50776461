"""The test bed the tests and the benchmarks share: hosts made of network namespaces (netns), a real etcd
(etcdserver) and a backend driven without the agent (backend_driver).  Not shipped; tests/ and bench/ import it."""
