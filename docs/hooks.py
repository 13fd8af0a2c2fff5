"""MkDocs hook: render the reST ``:math:`...``` role of docstrings as MathJax math.

The package's docstrings write inline formulas as ``:math:`x```, which is readable in
``help()``; mkdocstrings turns the backticks into ``<code>``. This rewrites
``:math:<code>x</code>`` into the span that the arithmatex extension emits, so that
MathJax typesets it on the site.
"""

from __future__ import annotations

import re
from typing import Any

_MATH_ROLE = re.compile(r":math:<code>(.*?)</code>", re.DOTALL)


def on_page_content(html: str, **_: Any) -> str:
    """Replace every ``:math:<code>...</code>`` in a page's HTML by inline math.

    Args:
        html: The page's rendered HTML.
        **_: Other hook arguments (page, config, files), unused.

    Returns:
        The HTML with inline math spans.
    """
    return _MATH_ROLE.sub(r'<span class="arithmatex">\\(\1\\)</span>', html)
