"""Generated gRPC/protobuf code for the pmis.v1 protos (see protos/). Do not edit: run `make protos`."""
