"""Generated protobuf modules; see tools in etcdstore.proto.generate."""
