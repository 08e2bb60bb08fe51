"""Schemathesis hooks of .ci/schemathesis.sh.

docs/openapi.json describes the sync API's protobuf bodies
(application/x-protobuf) as binary strings, and schemathesis has no
serializer of its own for that type: send the bytes it generates as they
are, as it does for application/octet-stream. Random bytes are mostly no
valid message, which is the point: the server must answer 400, never 5xx.
"""

import schemathesis

schemathesis.serializer.alias("application/x-protobuf", "application/octet-stream")
