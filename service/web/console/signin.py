"""Sign-in guards (SPEC §14): a signed, single-use form token, and throttling per client address
and per credential with exponential backoff. Counted in Redis while it answers (REDIS_URL),
else in this process. The settings are CONSOLE_SIGNIN_* (docs/console.md)."""
from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time

import jwt as pyjwt
from flask import current_app

FORM_TOKEN_SECONDS = 3600  # how long a sign-in form may sit before it is sent
LOCAL_MAX = 100_000  # entries kept in process before the oldest are dropped

# KEYS[1]: the failure counter (a hash: n, until). ARGV: now, free failures, backoff base,
# backoff max, window. Counts one failure; returns the time the next try is allowed (0: now).
FAIL = """
local n = redis.call('hincrby', KEYS[1], 'n', 1)
local now, free, base, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local untl = 0
if n > free then
  untl = now + math.min(base * 2 ^ (n - free - 1), most)
  redis.call('hset', KEYS[1], 'until', tostring(untl))
end
redis.call('expire', KEYS[1], math.ceil(math.max(tonumber(ARGV[5]), untl - now)))
return tostring(untl)
"""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def identities(address: str | None, credential: str) -> dict[str, int]:
    """The throttle keys of a try and each key's free failures: the client address, and the
    credential (a JWT's subject, so forged tokens for one account from many addresses meet;
    otherwise the credential itself)."""
    conf = current_app.config
    sub = subject(credential)
    who = f"sub:{_digest(sub)}" if sub is not None else _digest(credential)
    return {f"ip:{address or 'unknown'}": conf["CONSOLE_SIGNIN_FREE_PER_IP"],
            f"cred:{who}": conf["CONSOLE_SIGNIN_FREE_PER_CREDENTIAL"]}


def subject(credential: str) -> str | None:
    """The account a JWT claims (its `sub`, unverified), or None: a key, or not a JWT."""
    if credential.startswith("sk-"):
        return None
    try:
        sub = pyjwt.decode(credential, options={"verify_signature": False}).get("sub")
    except pyjwt.PyJWTError:
        return None
    return sub if isinstance(sub, str) else None


class Throttle:
    """Failures per key; past a key's free failures each try waits twice as long as the last."""

    def __init__(self, cache, base: float, most: float, window: float):
        self.cache, self.base, self.most, self.window = cache, base, most, window
        self.local: dict[str, list] = {}  # key -> [failures, until, forget_at]
        self.lock = threading.Lock()
        self._fail = cache.client.register_script(FAIL) if cache.client is not None else None

    def wait(self, keys) -> int:
        """Seconds until every key may try again (0: now)."""
        now = time.time()
        untils = self.cache.call(lambda r: self._untils(r, keys)) if self._fail is not None else None
        if untils is None:
            with self.lock:
                untils = [self._entry(k, now)[1] for k in keys]
        latest = max([float(u or 0) for u in untils] + [0])
        return math.ceil(latest - now) if latest > now else 0

    @staticmethod
    def _untils(client, keys) -> list:
        """Each key's end of wait, in one round trip."""
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(f"signin:{key}", "until")
        return pipe.execute()

    def failed(self, keys: dict[str, int]) -> None:
        """Count a failed try under each key."""
        now = time.time()
        for key, free in keys.items():
            args = [now, free, self.base, self.most, self.window]
            done = self.cache.call(lambda r: self._fail(keys=[f"signin:{key}"], args=args, client=r)) \
                if self._fail is not None else None
            if done is None:
                self._fail_local(key, free, now)

    def cleared(self, key: str) -> None:
        """A credential that signed in starts afresh (its address does not: one good credential
        must not launder another's guesses)."""
        self.cache.call(lambda r: r.delete(f"signin:{key}"))
        with self.lock:
            self.local.pop(key, None)

    def _entry(self, key: str, now: float) -> list:
        entry = self.local.get(key)
        if entry is None or entry[2] <= now:
            return [0, 0.0, now + self.window]
        return entry

    def _fail_local(self, key: str, free: int, now: float) -> None:
        with self.lock:
            if len(self.local) >= LOCAL_MAX:
                for old in list(self.local)[:LOCAL_MAX // 10]:
                    del self.local[old]
            entry = self._entry(key, now)
            entry[0] += 1
            if entry[0] > free:
                entry[1] = now + min(self.base * 2 ** (entry[0] - free - 1), self.most)
            entry[2] = max(now + self.window, entry[1])
            self.local[key] = entry

    def burn(self, name: str, seconds: int) -> bool:
        """True the first time `name` is burnt (within `seconds`), False after."""
        first = self.cache.call(lambda r: r.set(f"signin:burnt:{name}", 1, nx=True, ex=seconds)) \
            if self._fail is not None else None
        if first is not None:
            return bool(first)
        now = time.time()
        with self.lock:
            if self._entry(f"burnt:{name}", now)[0]:
                return False
            self.local[f"burnt:{name}"] = [1, 0.0, now + seconds]
            return True


def _secret() -> bytes:
    """The key form tokens are signed with: JWT_SECRET_KEY (shared by every worker), else one made
    for this process."""
    secret = current_app.config.get("JWT_SECRET_KEY")
    if secret:
        return hashlib.sha256(b"console-sign-in:" + secret.encode()).digest()
    return current_app.extensions.setdefault("tollgate_console_secret", secrets.token_bytes(32))


def _mac(body: str) -> str:
    return hmac.new(_secret(), body.encode(), hashlib.sha256).hexdigest()[:32]


def form_token() -> str:
    """A sign-in form's token: when it was made, a nonce, and this server's signature."""
    body = f"{int(time.time())}.{secrets.token_urlsafe(16)}"
    return f"{body}.{_mac(body)}"


def form_token_ok(throttle: Throttle, cookie: str | None, sent: str | None) -> bool:
    """The form came from this site (its field matches the cookie set with it), this server made
    it less than an hour ago, and it is used once."""
    if not cookie or not sent or not hmac.compare_digest(cookie, sent) or sent.count(".") != 2:
        return False
    made, nonce, mac = sent.split(".")
    if not made.isdigit() or not hmac.compare_digest(_mac(f"{made}.{nonce}"), mac):
        return False
    age = time.time() - int(made)
    return 0 <= age < FORM_TOKEN_SECONDS and throttle.burn(_digest(sent), FORM_TOKEN_SECONDS)
