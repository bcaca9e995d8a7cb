"""Check that built HTML pages load nothing from outside the build (scripts, stylesheets, fonts).

    python docs/_ext/offline_check.py BUILD_DIR

Exits with status 1, listing each page and URL, when a ``<script src>``, ``<link href>`` (other
than plain hyperlinks such as ``rel="canonical"``) or ``<img src>`` points at another host; a
page opened from disk without internet would then miss it (the equations page would show raw
LaTeX without MathJax).
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path

#: ``<link rel=...>`` values that are navigation, not something the page loads
NAVIGATION = {"canonical", "index", "search", "next", "prev", "author", "copyright", "help", "license"}


def is_remote(url: str) -> bool:
    return url.strip().lower().startswith(("http://", "https://", "//"))


class _Loads(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.remote: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag in ("script", "img", "iframe") and is_remote(values.get("src", "")):
            self.remote.append(values["src"])
        if tag == "link":
            rel = set(values.get("rel", "").lower().split())
            if rel and rel <= NAVIGATION:
                return
            if is_remote(values.get("href", "")):
                self.remote.append(values["href"])


def remote_loads(html: str) -> list[str]:
    """The URLs on other hosts that a page loads.

    Example:
        >>> remote_loads('<script src="_static/mathjax/tex-chtml.js"></script><a href="https://pytorch.org">x</a>')
        []
        >>> remote_loads('<script async src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>')
        ['https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js']
    """
    parser = _Loads()
    parser.feed(html)
    return parser.remote


def check(build: Path) -> dict[str, list[str]]:
    """Every page of ``build`` that loads something remote, with what it loads."""
    found = {}
    for page in sorted(build.rglob("*.html")):
        remote = remote_loads(page.read_text(encoding="utf-8", errors="replace"))
        if remote:
            found[str(page.relative_to(build))] = remote
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python docs/_ext/offline_check.py BUILD_DIR", file=sys.stderr)
        return 2
    build = Path(argv[0])
    pages = list(build.rglob("*.html"))
    if not pages:
        print(f"no HTML pages under {build}", file=sys.stderr)
        return 2
    found = check(build)
    for page, urls in found.items():
        print(f"{page}: loads {', '.join(sorted(set(urls)))}")
    if found:
        print(f"{len(found)} of {len(pages)} pages load files from other hosts", file=sys.stderr)
        return 1
    print(f"{len(pages)} pages, none loads anything from another host")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
