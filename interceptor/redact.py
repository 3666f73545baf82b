"""Names only: URL path without query or credentials, query keys and header names without values.

The hot path only splits strings (`split_url`, `query_names`); cleaning the names for the ledger
(`clean_names`) runs on the writer thread. A cleaned name never contains whitespace, because the
ledger joins names with single spaces and the join must be reversible.
"""
from __future__ import annotations

import re
from urllib.parse import unquote_plus

MAX_NAME = 128
_SPACE = re.compile(r"[\s\x00-\x1f\x7f]+")
_PARAM_VALUE = re.compile(r"(;[^;/=]*)=[^;/]*")  # a path parameter's "=value", up to the next ";" or "/"


def split_url(url: str) -> tuple[str, str]:
    """(path, raw query string) of a request target; scheme, credentials, host and fragment dropped.

    `url` is an origin-form target ("/a/b?x=1") or, through a proxy, an absolute URL whose
    userinfo ("user:password@") must never reach the ledger.
    """
    if url[:1] == "/" and "#" not in url:  # origin form without a fragment: the common case
        path, _, query = url.partition("?")
        return path, query
    if not url.startswith("/"):
        scheme, sep, rest = url.partition("://")
        if sep:
            slash = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
            url = rest[slash:]
            if not url.startswith("/"):
                url = "/" + url
    path, _, query = url.partition("?")
    path = path.partition("#")[0]
    query = query.partition("#")[0]
    return path, query


def query_names(query: str) -> list[str]:
    """Raw parameter names of a query string, values dropped at once."""
    if not query:
        return []
    if ";" in query:
        query = query.replace(";", "&")
    return [part.partition("=")[0] for part in query.split("&") if part]


def utf8_safe(text: str) -> str:
    """Text the ledger can encode: a lone surrogate (from undecodable bytes) becomes '?'."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def clean_name(name, unquote: bool = False) -> str:
    """One name as the ledger keeps it: text, no whitespace or control characters, bounded."""
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).decode("latin-1")
    else:
        name = str(name)
    if unquote:  # a query parameter's name: what a server decodes, up to an "=" it holds
        # ("token%3Dsecret" decodes to "token=secret": value-like text, cut at the "=", helper 39, M4)
        name = unquote_plus(name).partition("=")[0]
    name = _SPACE.sub("_", name.strip())
    return utf8_safe(name[:MAX_NAME])


def clean_host(host) -> str:
    """A host as kept: userinfo cut ("user:password@host" -> "host"; urllib passes it along)."""
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("latin-1")
    return clean_name(str(host).rpartition("@")[2])


def clean_names(names, unquote: bool = False) -> tuple[str, ...]:
    return tuple(n for n in (clean_name(x, unquote) for x in names) if n)


def clean_path(path: str) -> str:
    """The path as kept: no whitespace or control characters (they would be a value smuggled in),
    and path parameters by name only ("/cart;jsessionid=SECRET" -> "/cart;jsessionid": a session
    token in the URL, RFC 3986's `;name=value`, helper 39, M4)."""
    if type(path) is not str:
        path = str(path)
    if ";" in path:
        path = _PARAM_VALUE.sub(r"\1", path)
    if path.isascii() and path.isprintable() and " " not in path:
        return path[:2048]  # the common case, checked in C: nothing for the regex to replace
    return utf8_safe(_SPACE.sub("_", path)[:2048])


def verb(line, limit: int = 16) -> str:
    """The command word of a text protocol line ("PASS secret" -> "PASS"); never its arguments."""
    if isinstance(line, (bytes, bytearray)):
        line = bytes(line).decode("latin-1")
    word = str(line).strip().split(" ", 1)[0].split("\t", 1)[0].upper()
    return word[:limit] if word.isalnum() else "?"
