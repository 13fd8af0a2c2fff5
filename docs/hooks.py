"""MkDocs hook: render the reST roles of docstrings (``:math:``, ``:func:``, ...).

The package's docstrings write inline formulas as ``:math:`x```, which is readable in
``help()``; mkdocstrings turns the backticks into ``<code>``. This rewrites
``:math:<code>x</code>`` into the span that the arithmatex extension emits, so that
MathJax typesets it on the site. Other roles (``:func:``, ``:class:``, ...) are
dropped, leaving the name as code.
"""

from __future__ import annotations

import re
from typing import Any

_MATH_ROLE = re.compile(r":math:<code>(.*?)</code>", re.DOTALL)
_OTHER_ROLES = re.compile(r":(?:func|class|meth|data|mod|attr|obj|exc):(<code>)")


def on_page_content(html: str, **_: Any) -> str:
    """Turn ``:math:<code>...</code>`` into inline math and drop other reST roles.

    Args:
        html: The page's rendered HTML.
        **_: Other hook arguments (page, config, files), unused.

    Returns:
        The HTML with inline math spans.
    """
    html = _MATH_ROLE.sub(r'<span class="arithmatex">\\(\1\\)</span>', html)
    return _OTHER_ROLES.sub(r"\1", html)
