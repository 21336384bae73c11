"""What the app relies on in Streamlit (1.67) beyond its Python API: its page's HTML.

Every element of a page sits in a wrapper ``<div>`` with the CSS class
``element-container`` (also ``stElementContainer``), which takes a row's gap
even when the element inside has no height. streamlit-authenticator's cookie
manager is such an element: an ``<iframe height="0">``. ``HIDE_EMPTY_FRAMES``
hides those wrappers, so the cookie components take no space on any page.
Streamlit documents no class names; ``tests/test_compat.py`` fails loudly if
its front end no longer writes this one. The rest of the app uses Streamlit's
public ``st.*`` API only.
"""

ELEMENT_CLASS = "element-container"
HIDE_EMPTY_FRAMES = f'<style>.{ELEMENT_CLASS}:has(iframe[height="0"]) {{ display: none; }}</style>'
