"""Keep a user's Light/Dark choice across reloads on every page of the app.

Streamlit (1.67) stores the choice made in the app menu in the browser's
localStorage under ``stActiveTheme-<URL path>-v2``, with the URL path the tab
was *loaded* from, and reads it back on a load from the key of the URL loaded.
A multipage app has one URL per page, so each page has its own key: Dark picked
on Runs (reached from the sidebar of a tab opened on ``/``) is filed under
``/``, and reloading Runs reads ``/runs``, finds nothing or an older choice, and
shows Light. No configuration option changes the key.

The script below (in every run of ``app.py``) mirrors every write of that key to the keys of all the app's
pages (under the same base path), so whichever page is loaded next reads the
last choice. Streamlit's own writes at page load happen before the script runs,
so only a choice the user makes is copied. localStorage outlives logins and
logouts, so the choice holds across them in the same browser too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

# The style keeps the element holding the script from taking a gap at the top of every page.
_SCRIPT = """<style>.element-container:has(> .stHtml > #healthsync-theme-memory) { display: none; }</style>
<script id="healthsync-theme-memory">
(() => {
  // Url paths of every page ("" is the default page, served at the base path itself).
  const paths = %s;
  if (window.__healthsyncThemeMemory) { window.__healthsyncThemeMemory.paths = paths; return; }
  const memory = (window.__healthsyncThemeMemory = { paths });
  const key = /^stActiveTheme-(.*)-(v\\d+)$/;
  const setItem = Storage.prototype.setItem;
  Storage.prototype.setItem = function (name, value) {
    setItem.call(this, name, value);
    const found = this === window.localStorage && key.exec(name);
    if (!found) return;
    const [, path, version] = found;
    const page = memory.paths.find((p) => p && path.endsWith("/" + p));
    const base = page ? path.slice(0, -page.length) : path.replace(/\\/?$/, "/");
    const targets = memory.paths.map((p) => base + p);
    if (base !== "/") targets.push(base.slice(0, -1)); // the default page without a slash
    for (const target of targets) {
      const other = `stActiveTheme-${target}-${version}`;
      if (other !== name) setItem.call(this, other, value);
    }
  };
})();
</script>"""


def theme_memory_html(url_paths: Iterable[str]) -> str:
    """The ``<script>`` for ``st.html(..., unsafe_allow_javascript=True)``; no user input in it."""
    paths = sorted({"", *(p.strip("/") for p in url_paths)})
    return _SCRIPT % json.dumps(paths)
