"""A push step's endpoint for the example of docs/workers.md: prices quote lines, fails quantities over 100."""
import json
from http.server import BaseHTTPRequestHandler, HTTPServer

class Price(BaseHTTPRequestHandler):
    def do_POST(self):
        task = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ok = [i["index"] for i in task["items"] if i["item"]["quantity"] <= 100]
        bad = [i["index"] for i in task["items"] if i["item"]["quantity"] > 100]
        failed = [{"items": bad, "code": 6001, "statusMessage": "Quantity over 100"}] if bad else []
        body = json.dumps({"successfully": ok, "failed": failed}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

HTTPServer(("127.0.0.1", 9100), Price).serve_forever()
