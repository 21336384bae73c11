"""What HealthSync relies on inside streamlit-authenticator 0.4.2 beyond its public API.

Three things, read from its source (``models/cookie_model.py``,
``models/authentication_model.py``) and checked by canary tests in
``tests/test_sessions_app.py``, which fail loudly if a new version changes them:

- ``SKIP_COOKIE``: the session-state key ``"logout"``. While it is true,
  ``CookieModel.get_cookie`` returns at once without reading the cookie. stauth
  sets it at logout; the app also sets it for a cookie the server does not
  honour, because stauth catches only two of PyJWT's errors and crashes on the
  rest (``alg: none``, a missing ``exp_date``, an ``aud`` claim ...).
- ``issued_cookie_expiry``: ``Authenticate.cookie_controller.cookie_model.exp_date``,
  the ``exp_date`` claim of the cookie stauth has just issued at a form login.
  The cookie's other claim is the lower-case user name, so this identifies the
  cookie, and the server records it (``Sessions.issued_cookie``). stauth makes
  the token in a local variable and offers no callback after it.

This module does not import Streamlit: it only names and reads what the app
hands it.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

SKIP_COOKIE = "logout"


def issued_cookie_expiry(authenticator: Any) -> float | None:
    """The ``exp_date`` of the cookie ``authenticator`` issued in this run, if it issued one.

    Raises ``AttributeError`` if stauth no longer keeps it where 0.4.2 does: a
    login must not silently go unrecorded.
    """
    expiry = authenticator.cookie_controller.cookie_model.exp_date
    return float(expiry) if isinstance(expiry, int | float) else None


def mark_cookie_secure(authenticator: Any) -> None:
    """Make the login cookie ``authenticator`` sets carry the ``Secure`` attribute (HTTPS only).

    Raises ``AttributeError`` or ``TypeError`` if stauth or its cookie manager no
    longer look as in 0.4.2: a cookie must not silently lose ``Secure``.
    """
    manager = authenticator.cookie_controller.cookie_model.cookie_manager
    if "secure" not in inspect.signature(manager.set).parameters:
        raise TypeError(f"{type(manager).__name__}.set no longer takes secure=")
    manager.set = functools.partial(manager.set, secure=True)
