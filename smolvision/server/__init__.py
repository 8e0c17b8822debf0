"""smolvision's OpenAI-compatible HTTP server and web page (`smolvision serve`).

    import smolvision, smolvision.server, uvicorn
    model = smolvision.load("path/to/SmolVLM-Instruct")
    uvicorn.run(smolvision.server.create_app(model, api_key="secret"), port=8080)

Needs the `server` extra (Starlette, uvicorn, prometheus-client): pip install "smolvision[server]".
"""
from __future__ import annotations

from ..errors import Error

EXTRA_HINT = 'the server needs the "server" extra: pip install "smolvision[server]"'


def require_extra() -> None:
    """Raises smolvision.Error naming the extra when a server dependency is missing."""
    for module in ("starlette", "uvicorn", "prometheus_client"):
        try:
            __import__(module)
        except ImportError as err:
            raise Error(f"{EXTRA_HINT} ({module} is not installed: {err})") from None


def create_app(model, **options):
    """An ASGI app serving `model` over the OpenAI chat-completions API; see smolvision.server.app.create_app."""
    require_extra()
    from .app import create_app as _create_app
    return _create_app(model, **options)


__all__ = ["create_app", "require_extra"]
