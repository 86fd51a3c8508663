"""Generated protobuf and gRPC code for logstore.v1 (by `make proto`; never edited by hand)."""
