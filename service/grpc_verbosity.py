"""gRPC's C core writes INFO lines of its own to stderr (each failed TLS handshake, for one), outside
the server's logs and a command's one error line. It reads ``GRPC_VERBOSITY`` once, when grpc is
first imported, so the ``statestream`` entry point imports this module before anything imports
grpc; a value the user set is kept (``GRPC_VERBOSITY=INFO statestream ...`` shows them again).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
