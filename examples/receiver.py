"""A FinishProcess notification receiver for trying the example of docs/notifications.md: prints each
delivery's headers and body, checks its signature when SECRET is set, and answers 204.

    SECRET=change-me python3 examples/receiver.py 9000
"""
import hashlib
import hmac
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET = os.environ.get("SECRET", "").encode()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        said = self.headers.get("X-Async-Engine-Signature", "")
        if SECRET:
            expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
            verdict = "signature ok" if hmac.compare_digest(said, expected) else "BAD SIGNATURE"
        else:
            verdict = "unsigned check (no SECRET)"
        print(f"delivery {self.headers.get('X-Async-Engine-Delivery')} "
              f"attempt {self.headers.get('X-Async-Engine-Attempt')}: {verdict}", flush=True)
        print(body.decode(), flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    print(f"receiving on http://127.0.0.1:{port}/hook", flush=True)
    HTTPServer(("127.0.0.1", port), Receiver).serve_forever()
