"""A local stand-in for the part of SciCat's REST API (v3 routes) the catalogue calls, on 127.0.0.1.

No SciCat can run here (it needs MongoDB), so this validates as SciCat does
what dmagic-ioc sends: `auth/login` with the functional account's password
gives a token; every other route wants it as a bearer token (401 otherwise);
a raw dataset needs SciCat's required RawDataset fields (400 naming those
missing), a pid not taken (409); an origdatablock goes only to a dataset that
exists (404). `stop()` and `start()` again on the same port stand for SciCat
going down and coming back; what it holds stays.
"""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from .helpers import free_port

BASE = "/api/v3/"
REQUIRED_RAW = ("owner", "ownerGroup", "contactEmail", "creationTime", "sourceFolder", "creationLocation",
                "principalInvestigator", "type")  # fmt: skip
REQUIRED_DATABLOCK = ("size", "dataFileList", "ownerGroup")


class ScicatStandIn:
    """What SciCat holds (`datasets`, `datablocks`, every request in `calls`), served while started."""

    def __init__(self, username: str = "ingestor", password: str = "s3cret-pw", port: int = 0):
        self.username, self.password = username, password
        self.port = port or free_port()
        self.datasets: dict[str, dict] = {}
        self.datablocks: dict[str, list[dict]] = {}
        self.calls: list[tuple[str, str, str]] = []  # (method, path, Authorization header)
        self.tokens: set[str] = set()
        self.fail_with: int | None = None  # set: every call but login answers this status (a sick SciCat)
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{BASE.rstrip('/')}"

    def start(self) -> ScicatStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                standin._handle(self, "GET")

            def do_POST(self):
                standin._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, name="scicat-standin", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ScicatStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ the API

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = urlsplit(request.path).path
        auth = request.headers.get("Authorization", "")
        with self._lock:
            self.calls.append((method, path, auth))
        length = int(request.headers.get("Content-Length") or 0)
        try:
            body = json.loads(request.rfile.read(length) or b"null")
        except ValueError:
            return _answer(request, 400, {"message": "body is not JSON"})
        if not path.startswith(BASE):
            return _answer(request, 404, {"message": f"no route {path}"})
        route = path[len(BASE) :].split("/")
        if method == "POST" and route == ["auth", "login"]:
            return _answer(request, *self._login(body))
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        if token not in self.tokens:
            return _answer(request, 401, {"message": "Unauthorized"})
        if self.fail_with is not None:
            return _answer(request, self.fail_with, {"message": "stand-in told to fail"})
        with self._lock:
            _answer(request, *self._route(method, route, body))

    def _login(self, body) -> tuple[int, dict]:
        if not isinstance(body, dict) or (body.get("username"), body.get("password")) != (self.username, self.password):
            return 401, {"message": "Unauthorized"}
        token = secrets.token_hex(16)
        self.tokens.add(token)
        return 201, {"access_token": token, "id": token}

    def _route(self, method: str, route: list[str], body) -> tuple[int, object]:
        if route[0] != "Datasets":
            return 404, {"message": "no such route"}
        if method == "POST" and len(route) == 1:
            return self._create_dataset(body)
        pid = unquote(route[1]) if len(route) > 1 else ""
        if method == "GET" and len(route) == 2:
            return (200, self.datasets[pid]) if pid in self.datasets else (404, {"message": "Dataset not found"})
        if len(route) == 3 and route[2] == "origdatablocks":
            if pid not in self.datasets:
                return 404, {"message": f"Dataset {pid} not found"}
            if method == "GET":
                return 200, self.datablocks.get(pid, [])
            missing = [key for key in REQUIRED_DATABLOCK if not isinstance(body, dict) or key not in body]
            if missing:
                return 400, {"message": [f"{key} should not be empty" for key in missing]}
            block = {**body, "_id": secrets.token_hex(8), "datasetId": pid}
            self.datablocks.setdefault(pid, []).append(block)
            return 201, block
        return 404, {"message": "no such route"}

    def _create_dataset(self, body) -> tuple[int, object]:
        if not isinstance(body, dict):
            return 400, {"message": "expected a dataset"}
        missing = [key for key in REQUIRED_RAW if body.get(key) in (None, "")]
        if missing:
            return 400, {"message": [f"{key} should not be empty" for key in missing]}
        if body["type"] != "raw":
            return 400, {"message": "type must be raw"}
        pid = body.get("pid") or secrets.token_hex(8)
        if pid in self.datasets:
            return 409, {"message": f"Dataset with pid {pid} already exists"}
        self.datasets[pid] = {**body, "pid": pid}
        return 201, self.datasets[pid]


def _answer(request: BaseHTTPRequestHandler, status: int, body: object) -> None:
    data = json.dumps(body).encode()
    request.send_response(status)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    request.wfile.write(data)
