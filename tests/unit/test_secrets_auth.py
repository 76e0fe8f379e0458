"""Keyed pseudonyms, reloadable secrets, OAuth2 JWT bearer tokens, the service token."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from jwt.algorithms import RSAAlgorithm

from ml_pipeline.errors import ConfigError
from ml_pipeline.settings import load_settings
from serving.pseudonym import load_pseudonymizer
from serving.secrets import SecretFile
from serving.service_auth import ServiceTokens, check_bind, is_loopback
from serving.session.auth import JwtVerifier
from serving.session.config import hash_key
from serving.session.security import KeyRing

# -- pseudonyms -------------------------------------------------------------------------


def test_pseudonyms_are_keyed_not_enumerable(tmp_path: Path) -> None:
    settings = load_settings("local", tmp_path)
    p = load_pseudonymizer(settings)
    ids = [f"u{i:06d}" for i in range(20_000)]
    unsalted = {hashlib.sha256(i.encode()).hexdigest()[:16]: i for i in ids}
    pseudonym = p("u000123")
    assert pseudonym is not None and pseudonym.startswith("k1.")
    assert pseudonym.split(".")[1][:16] not in unsalted  # an id list does not reverse it
    assert load_pseudonymizer(settings)("u000123") == pseudonym  # the key file persists
    key_file = settings.workdir / "secrets" / "pseudonym.key"
    assert key_file.stat().st_mode & 0o077 == 0
    other = load_pseudonymizer(load_settings("local", tmp_path / "other"))
    assert other("u000123") != pseudonym


def test_pseudonym_keys_rotate_from_a_file_without_restart(tmp_path: Path) -> None:
    keys = tmp_path / "pseudonym.keys"
    keys.write_text("k1:" + "a" * 40 + "\n")
    p = load_pseudonymizer(load_settings("prod", tmp_path), {"FITML_PSEUDONYM_KEY_FILE": str(keys)})
    old = p("u1")
    assert old is not None and old.startswith("k1.")
    keys.write_text("k1:" + "a" * 40 + "\nk2:" + "b" * 40 + "\n")
    p._source._checked = -1e9  # type: ignore[union-attr]  # skip the 1 s re-check interval
    new = p("u1")
    assert new is not None and new.startswith("k2.") and p.all_of("u1") == {old, new}


def test_prod_refuses_to_start_without_a_pseudonym_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FITML_PSEUDONYM_KEY"):
        load_pseudonymizer(load_settings("prod", tmp_path), {})
    with pytest.raises(ConfigError, match="32"):
        load_pseudonymizer(load_settings("prod", tmp_path), {"FITML_PSEUDONYM_KEY": "k1:short"})


def test_inference_log_drops_files_past_retention(tmp_path: Path) -> None:
    from serving.inference_log import InferenceLog

    old = tmp_path / "inferences-2020-01-01.jsonl"
    old.write_text('{"user_hash": "k1.x", "features": {"user_chest_cm": 90}}\n')
    recent = tmp_path / f"inferences-{time.strftime('%Y-%m-%d', time.gmtime())}.jsonl"
    recent.write_text("{}\n")
    log = InferenceLog(tmp_path, interval=0.01, keep_days=30)
    log.append({"request_id": "r"})
    assert log.flush()
    log.close()
    assert not old.exists() and recent.exists()


# -- secrets files ----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_api_keys_reload_with_an_overlap_window(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("old-key\n")
    clock = Clock()
    ring = KeyRing((), SecretFile(path, overlap_s=60, clock=clock))
    assert ring.identify("old-key") and not ring.identify("new-key")
    path.write_text(f"# rotated\nsha256:{hash_key('new-key')}\n")
    clock.now = 2.0
    assert ring.identify("new-key") == hash_key("new-key")[:12]
    assert ring.identify("old-key")  # still inside the overlap window
    clock.now = 70.0
    assert ring.identify("old-key") is None and ring.identify("new-key")
    path.unlink()  # an unreadable file keeps the last good keys
    clock.now = 80.0
    assert ring.identify("new-key")


# -- OAuth2 bearer tokens ---------------------------------------------------------------

ISSUER = "https://issuer.example/"
AUDIENCE = "fitml-session"


def rsa_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks(*pairs: tuple[str, Any]) -> dict[str, Any]:
    keys = []
    for kid, key in pairs:
        jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
    return {"keys": keys}


def token(key: Any, kid: str, scope: str, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "client-checkout",
        "iat": now,
        "exp": now + 300,
        "scope": scope,
        **claims,
    }
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    key = rsa_key()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(("k1", key))))
    yield key, path


def test_jwt_bearer_tokens_with_scopes_against_the_session_api(
    tmp_path: Path, issuer: tuple[Any, Path]
) -> None:
    from test_session_hardening import KEY, services

    from serving.session.app import create_app

    key, path = issuer
    s = services(tmp_path)
    s.jwt = JwtVerifier(ISSUER, AUDIENCE, jwks_file=path)
    start = {"user_id": "U1", "product_id": "P1"}
    with TestClient(create_app(s)) as c:
        url = "/api/v1/tryon/sessions"

        def auth(t: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {t}"}

        ok = c.post(url, json=start, headers=auth(token(key, "k1", "start-session read")))
        assert ok.status_code == 201, ok.text
        sid = ok.json()["session_id"]
        assert c.get(f"{url}/{sid}", headers=auth(token(key, "k1", "read"))).status_code == 200
        fb = {"event_id": "j1", "size": "M", "outcome": "fit"}
        denied = c.post(f"{url}/{sid}/feedback", json=fb, headers=auth(token(key, "k1", "read")))
        assert denied.status_code == 403 and "feedback" in denied.json()["detail"]
        assert c.get("/metrics", headers=auth(token(key, "k1", "read"))).status_code == 403
        assert c.get("/metrics", headers=auth(token(key, "k1", "admin"))).status_code == 200
        assert c.get("/metrics", headers={"X-API-Key": KEY}).status_code == 200
        # A scraper (Prometheus) sends its API key as a bearer token: accepted on /metrics only.
        assert c.get("/metrics", headers=auth(KEY)).status_code == 200
        assert c.get(f"{url}/{sid}", headers=auth(KEY)).status_code == 401
        for bad, why in (
            (token(key, "k1", "read", aud="someone-else"), "audience"),
            (token(key, "k1", "read", iss="https://evil.example/"), "issuer"),
            (token(key, "k1", "read", exp=int(time.time()) - 600), "expired"),
            (token(rsa_key(), "k1", "read"), "Signature"),
            (token(key, "k9", "read"), "k9"),
            ("not-a-jwt", "malformed"),
        ):
            r = c.get(f"{url}/{sid}", headers=auth(bad))
            assert r.status_code == 401 and why.lower() in r.json()["detail"].lower(), r.text
            assert "Bearer" in r.headers["WWW-Authenticate"]


def test_jwks_file_rotation_keeps_the_old_key_for_the_overlap(issuer: tuple[Any, Path]) -> None:
    key, path = issuer
    clock = Clock()
    verifier = JwtVerifier(ISSUER, AUDIENCE, jwks_file=path, overlap_s=60, clock=clock)
    new = rsa_key()
    path.write_text(json.dumps(jwks(("k2", new))))
    clock.now = 5.0
    assert verifier.verify(token(new, "k2", "read")).scopes == {"read"}
    assert verifier.verify(token(key, "k1", "read feedback")).scopes == {"read", "feedback"}
    clock.now = 100.0
    with pytest.raises(ValueError, match="k1"):
        verifier.verify(token(key, "k1", "read"))


class JwksServer:
    """The issuer's JWKS endpoint: a real HTTP server on loopback, counting its fetches."""

    def __init__(self, document: dict[str, Any]) -> None:
        import http.server
        import threading

        self.document = document
        self.status = 200
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                body = json.dumps(outer.document).encode()
                self.send_response(outer.status if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks_server() -> Iterator[tuple[Any, JwksServer]]:
    key = rsa_key()
    server = JwksServer(jwks(("k1", key)))
    yield key, server
    server.close()


def test_jwks_url_is_cached_picks_by_kid_and_picks_up_a_rotated_key(
    jwks_server: tuple[Any, JwksServer],
) -> None:
    key, server = jwks_server
    clock = Clock()
    other = rsa_key()
    server.document = jwks(("k0", other), ("k1", key))
    v = JwtVerifier(
        ISSUER, AUDIENCE, jwks_url=server.url, cache_s=300, refetch_s=10, overlap_s=60, clock=clock
    )
    assert v.remote and server.hits == 0  # nothing fetched before the first token
    assert v.verify(token(key, "k1", "read")).scopes == {"read"}  # k1, not k0, verifies it
    assert v.verify(token(other, "k0", "feedback")).scopes == {"feedback"}
    with pytest.raises(ValueError, match="Signature"):
        v.verify(token(other, "k1", "read"))  # signed by k0's key, claiming k1
    assert server.hits == 1  # one fetch, then the cache
    with pytest.raises(ValueError, match="k9"):
        v.verify(token(rsa_key(), "k9", "read"))  # fetched a moment ago: not again
    assert server.hits == 1
    clock.now = 11.0
    for _ in range(5):  # made-up key ids: one refetch, then throttled
        with pytest.raises(ValueError, match="k9"):
            v.verify(token(rsa_key(), "k9", "read"))
    assert server.hits == 2

    new = rsa_key()  # the issuer rotates: k2 in, k0 and k1 out
    server.document = jwks(("k2", new))
    clock.now = 22.0
    assert v.verify(token(new, "k2", "admin")).scopes == {"admin"}  # fetched for the new kid
    assert server.hits == 3
    assert v.verify(token(key, "k1", "read")).subject == "jwt:client-checkout"  # overlap
    clock.now = 200.0
    with pytest.raises(ValueError, match="k1"):
        v.verify(token(key, "k1", "read"))  # past the overlap window
    assert server.hits == 3

    server.status = 500  # the issuer is down when the cache expires: the last keys hold
    clock.now = 330.0
    assert v.verify(token(new, "k2", "read")).scopes == {"read"}
    assert server.hits == 4
    server.status = 200
    clock.now = 335.0  # no fetch per request while the issuer is down: one per refetch_s
    v.verify(token(new, "k2", "read"))
    assert server.hits == 4
    clock.now = 341.0
    v.verify(token(new, "k2", "read"))
    assert server.hits == 5
    clock.now = 400.0  # fresh again: cached
    v.verify(token(new, "k2", "read"))
    assert server.hits == 5


def test_jwks_url_unreachable_from_the_start_is_a_clear_401(tmp_path: Path) -> None:
    from conftest import free_port

    v = JwtVerifier(ISSUER, AUDIENCE, jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json")
    with pytest.raises(ValueError, match="could not be fetched"):
        v.verify(token(rsa_key(), "k1", "read"))
    with pytest.raises(ConfigError, match="FITML_OAUTH_JWKS_URL"):
        JwtVerifier(ISSUER, AUDIENCE, jwks_url="file:///etc/passwd")


ROUTES = {
    "start-session": ("POST", "/api/v1/tryon/sessions", 201),
    "read": ("GET", "/api/v1/tryon/sessions/{sid}", 200),
    "feedback": ("POST", "/api/v1/tryon/sessions/{sid}/feedback", 202),
    "admin": ("GET", "/metrics", 200),
}


@pytest.mark.parametrize("scope", sorted(ROUTES))
def test_each_scope_opens_its_route_and_no_other_scope_does(
    tmp_path: Path, jwks_server: tuple[Any, JwksServer], scope: str
) -> None:
    """Through the app with the JWKS URL: the route's scope alone suffices (2xx); every other
    scope together is refused (403 naming the missing one)."""
    from test_session_hardening import KEY, services

    from serving.session.app import create_app

    key, server = jwks_server
    s = services(tmp_path)
    s.jwt = JwtVerifier(ISSUER, AUDIENCE, jwks_url=server.url)
    bodies = {
        "start-session": {"user_id": "U1", "product_id": "P1"},
        "feedback": {"event_id": f"ev-{scope}", "size": "M", "outcome": "fit"},
    }
    with TestClient(create_app(s)) as c:
        started = c.post(
            ROUTES["start-session"][1], json=bodies["start-session"], headers={"X-API-Key": KEY}
        )
        sid = started.json()["session_id"]
        method, path, ok = ROUTES[scope]
        url = path.format(sid=sid)

        def call(scopes: str) -> httpx.Response:
            return c.request(
                method,
                url,
                json=bodies.get(scope),
                headers={"Authorization": f"Bearer {token(key, 'k1', scopes)}"},
            )

        others = " ".join(sorted(set(ROUTES) - {scope}))
        denied = call(others)
        assert denied.status_code == 403, denied.text
        assert repr(scope) in denied.json()["detail"]
        assert f'scope="{scope}"' in denied.headers["WWW-Authenticate"]
        allowed = call(scope)
        assert allowed.status_code == ok, allowed.text
    assert server.hits == 1


# -- the service token ------------------------------------------------------------------


def test_service_token_refuses_a_public_bind_without_it() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")
    check_bind("127.0.0.1", ServiceTokens())
    with pytest.raises(ConfigError, match="FITML_SERVICE_TOKEN"):
        check_bind("0.0.0.0", ServiceTokens())
    check_bind("0.0.0.0", ServiceTokens(("t" * 32,)))
    with pytest.raises(ConfigError, match="at least"):
        ServiceTokens(("short",))


def test_session_client_sends_the_current_service_token(tmp_path: Path) -> None:
    import asyncio

    from test_session_hardening import answer

    from serving.session.client import PredictionClient

    path = tmp_path / "token"
    path.write_text("a" * 32 + "\n")
    tokens = ServiceTokens((), SecretFile(path, check_s=0))
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization", ""))
        return answer(request)

    async def go() -> None:
        client = PredictionClient(
            "http://p", transport=httpx.MockTransport(handler), token=tokens.current
        )
        await client.recommend({"product_id": "P1"})
        path.write_text("a" * 32 + "\n" + "b" * 32 + "\n")  # rotated: the last line is sent
        await client.recommend({"product_id": "P1"})
        await client.close()

    asyncio.run(go())
    assert seen == [f"Bearer {'a' * 32}", f"Bearer {'b' * 32}"]
    assert tokens.accepts("a" * 32) and tokens.accepts("b" * 32) and not tokens.accepts("c")
