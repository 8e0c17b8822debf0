"""Image and video URLs of a request to their bytes, under the server's media policy.

- `data:image/...;base64,...` (`data:video/...` for videos): always accepted.
- `file://` URLs and plain paths: only with `allowed_local_dir`, and only files whose real path
  (symlinks and `..` resolved) lies inside that directory's real path.
- `http(s)://`: only with `allow_remote`.  The host is resolved once and every address it resolves
  to must be public (not loopback, private, link-local, shared, reserved or multicast); the
  connection then goes to that checked address, so a second DNS answer cannot point it elsewhere.
  Redirects are not followed, the body is capped at `max_bytes` and the whole fetch at `timeout_s`.

Every refusal is an APIError(400) saying why; `kind` ("image" or "video") names the medium in the
messages and error codes (image_too_large / video_too_large, ...).
"""
from __future__ import annotations

import base64
import binascii
import http.client
import ipaddress
import os
import socket
import ssl
import stat
import time
import urllib.parse
from dataclasses import dataclass
from collections.abc import Callable

from .protocol import APIError, invalid

AddressCheck = Callable[[str], bool]


@dataclass(frozen=True)
class MediaPolicy:
    allowed_local_dir: str | None = None
    allow_remote: bool = False
    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 10.0


def is_public_address(address: str) -> bool:
    """Whether an IP address may be fetched from: globally routable unicast only."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def load_media_bytes(url: str, policy: MediaPolicy, kind: str = "image",
                     address_allowed: AddressCheck = is_public_address) -> bytes:
    """The bytes of one image (or video) URL (blocking: remote fetches run on a worker thread)."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return decode_data_url(url, policy.max_bytes, kind)
    if scheme in ("http", "https"):
        if not policy.allow_remote:
            flag = "--allow-remote-images" if kind == "image" else "--allow-remote-media"
            raise invalid(f"remote {kind} URLs are disabled on this server (start it with {flag}); "
                          f"send the {kind} as a data: URL", code="remote_media_disabled")
        return fetch_remote(url, policy.max_bytes, policy.timeout_s, address_allowed, kind)
    if scheme == "file" or scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        return read_local(url, policy, kind)
    raise invalid(f"unsupported {kind} URL scheme {scheme!r} (data:, file:, http(s): are)",
                  code=f"invalid_{kind}_url")


def decode_data_url(url: str, max_bytes: int, kind: str = "image") -> bytes:
    bad_url = f"invalid_{kind}_url"
    header, comma, payload = url.partition(",")
    if not comma or not header.lower().startswith("data:"):
        raise invalid(f"malformed data URL: expected data:{kind}/...;base64,...", code=bad_url)
    media_type, *params = header[5:].split(";")
    if media_type and not media_type.lower().startswith(f"{kind}/"):
        raise invalid(f"a data URL of type {media_type!r} is not {'an image' if kind == 'image' else 'a video'}",
                      code=bad_url)
    if "base64" not in (p.strip().lower() for p in params):
        raise invalid("only base64 data URLs are supported", code=bad_url)
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise invalid(f"the {kind} is larger than {max_bytes} bytes", code=f"{kind}_too_large")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise invalid(f"the data URL's base64 is malformed: {err}", code=bad_url) from None
    if not data:
        raise invalid("the data URL holds no bytes", code=bad_url)
    if len(data) > max_bytes:
        raise invalid(f"the {kind} is larger than {max_bytes} bytes", code=f"{kind}_too_large")
    return data


def read_local(url: str, policy: MediaPolicy, kind: str = "image") -> bytes:
    bad_url = f"invalid_{kind}_url"
    if policy.allowed_local_dir is None:
        raise invalid(f"local {kind} paths are disabled on this server (start it with --allowed-local-media-path "
                      f"DIR); send the {kind} as a data: URL", code="local_media_disabled")
    if url.lower().startswith("file:"):
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise invalid(f"file URL with host {parsed.netloc!r}: only local files are read", code=bad_url)
        path = urllib.parse.unquote(parsed.path)
    else:
        path = url
    if "\0" in path:
        raise invalid(f"the {kind} path contains a NUL byte", code=bad_url)
    root = os.path.realpath(policy.allowed_local_dir)
    real = os.path.realpath(os.path.join(root, path))  # relative paths are taken inside the directory
    if os.path.commonpath([root, real]) != root:
        raise invalid(f"{path} is outside the allowed media directory", code="local_media_forbidden")
    try:
        # O_NONBLOCK: a FIFO in the directory must not hang the server; only regular files are read.
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise invalid(f"{path} is not a regular file", code=bad_url)
            data = f.read(policy.max_bytes + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise invalid(f"no such {kind} file: {path}", code=f"{kind}_not_found") from None
    except OSError as err:
        raise invalid(f"cannot read {kind} file {path}: {err.strerror or err}", code=bad_url) from None
    if len(data) > policy.max_bytes:
        raise invalid(f"the {kind} file is larger than {policy.max_bytes} bytes", code=f"{kind}_too_large")
    return data


def fetch_remote(url: str, max_bytes: int, timeout_s: float, address_allowed: AddressCheck = is_public_address,
                 kind: str = "image") -> bytes:
    """GET url with redirects off, the connection pinned to an address that passed `address_allowed`."""
    bad_url = f"invalid_{kind}_url"
    parsed = urllib.parse.urlsplit(url)
    host, scheme = parsed.hostname, parsed.scheme.lower()
    if not host:
        raise invalid(f"the {kind} URL has no host", code=bad_url)
    if parsed.username or parsed.password:
        raise invalid(f"{kind} URLs with credentials are not fetched", code=bad_url)
    try:
        port = parsed.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise invalid(f"the {kind} URL has an invalid port", code=bad_url) from None
    deadline = time.monotonic() + timeout_s
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise _fetch_error(f"cannot resolve {host}: {err}", kind) from None
    addresses = [info[4][0] for info in infos]
    refused = [a for a in addresses if not address_allowed(a)]
    if not addresses or refused:
        raise invalid(f"{host} resolves to a loopback, private, link-local or otherwise non-public address "
                      f"({', '.join(refused or addresses)}); the server does not fetch from those",
                      code="remote_media_forbidden")
    pinned = addresses[0]

    def connect(address, timeout=None, source_address=None):
        return socket.create_connection((pinned, address[1]), timeout, source_address)

    if scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout_s, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    conn._create_connection = connect  # SNI, certificate and Host header keep the name
    target = parsed.path or "/"
    if parsed.query:
        target += "?" + parsed.query
    try:
        conn.request("GET", target, headers={"User-Agent": "smolvision-server", "Accept": f"{kind}/*"})
        response = conn.getresponse()
        if 300 <= response.status < 400:
            raise invalid(f"the {kind} URL answered with a redirect ({response.status}); redirects are not "
                          "followed", code="remote_media_redirect")
        if response.status != 200:
            raise _fetch_error(f"the {kind} URL answered HTTP {response.status}", kind)
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise invalid(f"the remote {kind} is {length} bytes, more than {max_bytes}", code=f"{kind}_too_large")
        chunks, total = [], 0
        while True:
            if time.monotonic() > deadline:
                raise _fetch_error(f"fetching the {kind} took longer than {timeout_s:g} s", kind)
            chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise invalid(f"the remote {kind} is larger than {max_bytes} bytes", code=f"{kind}_too_large")
            chunks.append(chunk)
        return b"".join(chunks)
    except APIError:
        raise
    except (OSError, http.client.HTTPException) as err:
        raise _fetch_error(f"cannot fetch the {kind}: {err}", kind) from None
    finally:
        conn.close()


def _fetch_error(message: str, kind: str) -> APIError:
    return APIError(400, message, "invalid_request_error", f"{kind}_fetch_failed")
