"""docker-compose.yml's topology with real processes: Debian's nginx, with ``deploy/nginx.conf``, terminating TLS
in front of two uvicorn processes of the demo app that share a private redis-server.

The repository's ``deploy/nginx.conf`` is what runs: :func:`render_site` substitutes only the upstream
addresses (``app:8000`` becomes the two replicas) and the ``listen`` line (a TLS listener on a free port with
a self-signed certificate made here); every other line is the file as written. The replicas serve the demo's
own handlers (:mod:`asession.demo`) with a ``__Host-`` cookie, as a deployment on https would configure it,
plus ``/whoami``, which shows what the app sees of the request. They run uvicorn with ``--proxy-headers
--forwarded-allow-ips 127.0.0.1``, the documented way to trust nginx's ``X-Forwarded-Proto``.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asession import demo
from asession.backends import backend_from_url
from asession.middleware import SessionMiddleware
from asession.session import Session
from tests.multiprocess_app import BACKEND_ENV, REPO_ROOT, ServerProcess, free_port

pytestmark = pytest.mark.multiprocess

NGINX = "/usr/sbin/nginx"
SITE_CONF = REPO_ROOT / "deploy" / "nginx.conf"
COOKIE_NAME = "__Host-session"
#: The demo's settings on https: a ``__Host-`` cookie, which browsers accept only when Secure, on path /, host-only.
SECURE_CONFIG = dataclasses.replace(demo.DEMO_CONFIG, cookie_name=COOKIE_NAME, cookie_secure=True)
SIGNED_IN = re.compile(r"Signed in as <strong id='user'>([^<]*)</strong>")
VISITS = re.compile(r"<strong id='visits'>(\d+)</strong>")


# -- the app the replicas serve ------------------------------------------------------------------------------


async def whoami(request: Request) -> Response:
    """What this replica sees: its pid, the scheme and an absolute URL as the app builds them, the session."""
    session: Session = request.scope["session"]
    return JSONResponse(
        {
            "pid": os.getpid(),
            "scheme": request.url.scheme,
            "home": str(request.url_for("home")),
            "user": session.user_id,
            "key": session.session_key,
        }
    )


def create_app() -> Starlette:
    """The demo's handlers with :data:`SECURE_CONFIG`, on the backend of ``$ASESSION_TEST_BACKEND_URL``."""
    backend = backend_from_url(os.environ[BACKEND_ENV])
    routes = [
        Route("/", demo.home),
        Route("/login", demo.login, methods=["POST"]),
        Route("/logout", demo.logout, methods=["POST"]),
        Route("/healthz", demo.healthz),
        Route("/whoami", whoami),
    ]
    return Starlette(routes=routes, middleware=[Middleware(SessionMiddleware, backend=backend, config=SECURE_CONFIG)])


def replica_command(port: int) -> list[str]:
    """uvicorn serving :func:`create_app` on ``port``, trusting the proxy headers of nginx on 127.0.0.1."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "tests.test_nginx:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--proxy-headers",
        "--forwarded-allow-ips",
        "127.0.0.1",
        "--lifespan",
        "on",
        "--log-level",
        "warning",
    ]


# -- nginx ---------------------------------------------------------------------------------------------------


def _substitute(pattern: str, replacement: str, text: str) -> str:
    """``text`` with the one line matching ``pattern`` replaced; fails when deploy/nginx.conf no longer has it."""
    result, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if count != 1:
        raise AssertionError(f"deploy/nginx.conf has {count} lines matching {pattern!r}, expected exactly one")
    return result


def render_site(upstreams: list[str], port: int, certificate: Path, key: Path) -> str:
    """``deploy/nginx.conf`` with the replicas' addresses as upstreams and a TLS listener on 127.0.0.1:``port``."""
    text = SITE_CONF.read_text()
    text = _substitute(
        r"^(\s*)server app:8000\b([^;]*);$",
        "\n".join(rf"\g<1>server {address}\g<2>;" for address in upstreams),
        text,
    )
    return _substitute(
        r"^(\s*)listen 80;$",
        rf"\g<1>listen 127.0.0.1:{port} ssl;\n"
        rf"\g<1>ssl_certificate {certificate};\n"
        rf"\g<1>ssl_certificate_key {key};\n"
        r"\g<1>ssl_protocols TLSv1.2 TLSv1.3;",
        text,
    )


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key, as PEM files in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "asession nginx test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


class Nginx:
    """Debian's nginx in the foreground with everything it writes under ``directory`` (pid, logs, temp files).

    ``directory`` must be traversable by nginx's worker user when run as root (the workers drop to
    ``nobody`` and create their temp files there). :meth:`stop` ends the master and its workers.
    """

    def __init__(self, directory: Path, site: str) -> None:
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None
        temp = "\n".join(
            f"    {kind}_temp_path {directory / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (directory / "site.conf").write_text(site)
        (directory / "nginx.conf").write_text(
            "worker_processes 1;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"    access_log {directory / 'access.log'};\n"
            f"{temp}\n"
            f"    include {directory / 'site.conf'};\n"
            "}\n"
        )

    @property
    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no error log)"

    def start(self, url: str, verify: ssl.SSLContext, timeout: float = 15.0) -> None:
        """Start nginx and wait until ``url`` + ``/nginx-health`` answers over TLS; raise with its error log."""
        directives = f"daemon off; pid {self.directory / 'nginx.pid'}; error_log {self.directory / 'error.log'} info;"
        command = [NGINX, "-p", str(self.directory), "-c", str(self.directory / "nginx.conf"), "-g", directives]
        # Its own process group, so that a master that must be killed takes its workers along.
        with open(self.directory / "stderr.log", "wb") as output:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=output, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = (self.directory / "stderr.log").read_text(errors="replace")
                raise RuntimeError(f"nginx exited with {self.process.returncode}: {stderr}\n{self.error_log}")
            try:
                if httpx.get(f"{url}/nginx-health", verify=verify, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not answer on {url} within {timeout} s:\n{self.error_log}")

    def stop(self) -> None:
        """Fast shutdown (SIGTERM) of the master, which stops its workers; SIGKILL to the group after 10 s."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


# -- the stack -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Stack:
    url: str
    verify: ssl.SSLContext
    replicas: list[ServerProcess]

    @property
    def upstreams(self) -> set[str]:
        return {f"127.0.0.1:{replica.port}" for replica in self.replicas}

    def client(self, headers: dict[str, str] | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.verify, timeout=10, headers=headers)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """A private redis-server, two uvicorn replicas on it and nginx with TLS in front; all stopped afterwards."""
    from tests.servers import require_executable, running_redis

    require_executable(NGINX, "nginx (Debian's nginx package)")
    directory = Path(tempfile.mkdtemp(prefix="asession-nginx-"))
    directory.chmod(0o755)  # nginx's workers run as nobody under root and create their temp files here
    replicas: list[ServerProcess] = []
    nginx: Nginx | None = None
    try:
        with running_redis(directory) as redis:
            for _ in range(2):
                port = free_port()
                replica = ServerProcess(
                    replica_command(port), port, env={BACKEND_ENV: f"redis://127.0.0.1:{redis.port}/0"}
                )
                replicas.append(replica)
                replica.start()
            certificate, key = make_certificate(directory)
            port = free_port()
            url = f"https://127.0.0.1:{port}"
            verify = ssl.create_default_context(cafile=str(certificate))
            nginx = Nginx(directory, render_site([f"127.0.0.1:{r.port}" for r in replicas], port, certificate, key))
            nginx.start(url, verify)
            yield Stack(url, verify, replicas)
    finally:
        if nginx is not None:
            nginx.stop()
        for replica in replicas:
            replica.close()
        import shutil

        shutil.rmtree(directory, ignore_errors=True)


def _upstream(response: httpx.Response) -> str:
    """The replica nginx passed the request to (the X-Upstream header of deploy/nginx.conf)."""
    upstream: str = response.headers["x-upstream"]
    return upstream


def _login(client: httpx.Client, name: str) -> httpx.Response:
    response = client.post("/login", data={"name": name})
    assert response.status_code == 303, response.text
    return response


# -- the tests -------------------------------------------------------------------------------------------------


def test_rendered_config_changes_only_the_upstreams_and_the_listener(tmp_path: Path) -> None:
    """Apart from the two substituted places, nginx runs deploy/nginx.conf line for line."""
    site = render_site(["127.0.0.1:1", "127.0.0.1:2"], 3, tmp_path / "c.pem", tmp_path / "k.pem").splitlines()
    original = SITE_CONF.read_text().splitlines()
    assert [line for line in site if line not in original] == [
        "    server 127.0.0.1:1 max_fails=1 fail_timeout=5s;",
        "    server 127.0.0.1:2 max_fails=1 fail_timeout=5s;",
        "    listen 127.0.0.1:3 ssl;",
        f"    ssl_certificate {tmp_path / 'c.pem'};",
        f"    ssl_certificate_key {tmp_path / 'k.pem'};",
        "    ssl_protocols TLSv1.2 TLSv1.3;",
    ]
    assert [line for line in original if line not in site] == [
        "    server app:8000 max_fails=1 fail_timeout=5s;",
        "    listen 80;",
    ]


def test_host_cookie_is_set_and_honoured_over_tls(stack: Stack) -> None:
    """A sign-in through nginx sets a __Host- cookie (Secure, Path=/, no Domain) that the next request carries."""
    with stack.client() as client:
        response = _login(client, "ada")
        assert response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        name, _, rest = cookie.partition("=")
        attributes = {part.strip().split("=")[0].lower() for part in rest.split(";")[1:]}
        assert name == COOKIE_NAME
        assert {"secure", "httponly", "path", "samesite"} <= attributes
        assert "domain" not in attributes
        assert "; Path=/;" in cookie + ";"
        page = client.get("/")
        assert page.status_code == 200
        assert SIGNED_IN.findall(page.text) == ["ada"]
        seen = client.get("/whoami").json()
    # --proxy-headers with nginx trusted: the app knows it is on https and builds its URLs so.
    assert seen["scheme"] == "https"
    assert seen["home"] == f"{stack.url}/"
    assert seen["user"] == "ada"
    # Asked directly, without nginx's X-Forwarded-Proto, the same replica sees plain http.
    direct = httpx.get(f"{stack.replicas[0].url}/whoami", timeout=10).json()
    assert (direct["scheme"], direct["home"]) == ("http", f"{stack.replicas[0].url}/")


def test_both_replicas_serve_one_session(stack: Stack) -> None:
    """nginx spreads one visitor's requests over both replicas, and every one of them counts the same visits."""
    answered: list[tuple[str, int]] = []
    with stack.client() as client:
        _login(client, "grace")
        for expected in range(1, 7):
            page = client.get("/")
            assert SIGNED_IN.findall(page.text) == ["grace"]
            assert VISITS.findall(page.text) == [str(expected)]
            pid = int(re.findall(r"\(pid (\d+)\)", page.text)[0])
            answered.append((_upstream(page), pid))
    assert {upstream for upstream, _ in answered} == stack.upstreams
    assert {pid for _, pid in answered} == {replica.process.pid for replica in stack.replicas if replica.process}


def test_logout_through_one_replica_is_seen_by_the_other(stack: Stack) -> None:
    """Signed in and seen by both replicas, signed out through one: the other no longer knows the old cookie."""
    with stack.client() as client:
        _login(client, "lin")
        key = client.cookies[COOKIE_NAME]
        seen = {}
        for _ in range(4):
            response = client.get("/whoami")
            seen[_upstream(response)] = response.json()
        assert set(seen) == stack.upstreams
        assert [state["user"] for state in seen.values()] == ["lin", "lin"]
        logout = client.post("/logout")
        assert logout.status_code == 303
        assert logout.headers["set-cookie"].startswith(f'{COOKIE_NAME}=""; Max-Age=0; ')
        signed_out_by = _upstream(logout)
    # The old cookie, replayed until the other replica answers: that replica finds no session.
    with stack.client(headers={"Cookie": f"{COOKIE_NAME}={key}"}) as replay:
        for _ in range(4):
            response = replay.get("/whoami")
            if _upstream(response) != signed_out_by:
                break
        assert _upstream(response) != signed_out_by
        assert response.json()["pid"] != seen[signed_out_by]["pid"]
        assert (response.json()["user"], response.json()["key"]) == (None, None)
        page = replay.get("/")
        assert SIGNED_IN.findall(page.text) == []
        assert "id='name'" in page.text  # the sign-in form
