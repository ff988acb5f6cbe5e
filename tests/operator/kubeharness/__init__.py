"""A stand-in Kubernetes for the operator's tests: KMock as the API server (with the semantics the
operator relies on added), plus controllers that play the StatefulSet and Job controllers, the
garbage collector and the kubelet, running every pod's containers as real local processes."""
