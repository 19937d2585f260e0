"""gRPC servicers: the statestream.v1 services, and the wiring that registers them."""
