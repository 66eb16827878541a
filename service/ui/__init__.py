"""The dashboard: server-rendered pages (Jinja2, charts drawn as inline SVG on the server) under ``/ui``.

It is served by the API process and reads through the same core functions as the REST routes (the result
mapping of service/core/results.py, the owner-scoped lookups of service/core/owned.py), so a page can never
show what the API would not. Sign-in exchanges an API key for a signed, HttpOnly, SameSite=Strict cookie
(`session.py`); forms that change something carry a CSRF token (`csrf.py`). Nothing is fetched from
elsewhere at run time: the stylesheet and the few lines of JavaScript (live progress over the job's
server-sent events) are files of this package.
"""
