"""A minimal OTLP/HTTP trace receiver for measuring what tracing costs: accepts
`POST /v1/traces` (protobuf), answers 200 at once, and prints what it got when stopped
(Ctrl-C / SIGTERM): requests and bytes, and with `--decode` the spans (decoding takes the
CPU the measured processes share on a small machine). Needs `opentelemetry-proto`.

    python benches/python/otlp_sink.py --port 4318 &
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 cargo bench -p fleet-benches --bench cluster -- --quick --security
"""

import argparse
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

ANSWER = ExportTraceServiceResponse().SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--decode", action="store_true", help="count spans (decodes every request)")
    args = parser.parse_args()
    counts = {"spans": 0, "requests": 0, "bytes": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's client expects

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            spans = 0
            if args.decode:
                request = ExportTraceServiceRequest.FromString(body)
                spans = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            with lock:
                counts["spans"] += spans
                counts["requests"] += 1
                counts["bytes"] += len(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(ANSWER)))
            self.end_headers()
            self.wfile.write(ANSWER)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)

    def stop(*_: object) -> None:
        spans = f"{counts['spans']} spans in " if args.decode else ""
        print(f"otlp_sink: {spans}{counts['requests']} requests, {counts['bytes']} bytes", file=sys.stderr, flush=True)
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
