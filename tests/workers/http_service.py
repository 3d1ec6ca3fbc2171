"""A stand-in for an existing HTTP service: GET /health on $PORT answers 200, or 503
"db down" while the file <dir>/sick-<instance> exists. SIGTERM ends it cleanly. With
$LISTEN_AFTER it starts listening only after that many seconds (a slow start). With
$KEEP_ALIVE it speaks HTTP/1.1 and keeps connections open between requests, a thread
each (as most servers do), and adds a line to <dir>/connections-<instance> for every
connection it accepts."""
import http.server
import os
import signal
import sys
import time

state_dir = sys.argv[1]
instance = os.environ["STEWARD_INSTANCE"]
port = int(os.environ["PORT"])


keep_alive = bool(os.environ.get("KEEP_ALIVE"))


class Handler(http.server.BaseHTTPRequestHandler):
    if keep_alive:
        protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        if keep_alive:
            with open(os.path.join(state_dir, "connections-" + instance), "a") as f:
                f.write("1\n")

    def do_GET(self):
        sick = os.path.exists(os.path.join(state_dir, "sick-" + instance))
        body = b"db down" if sick else b"ok"
        self.send_response(503 if sick else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(float(os.environ.get("LISTEN_AFTER", "0")))
serve = http.server.ThreadingHTTPServer if keep_alive else http.server.HTTPServer
server = serve(("127.0.0.1", port), Handler)
server.serve_forever()
