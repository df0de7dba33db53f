"""The explorer: a local web page (``aqpim-sim explore``) whose controls are the option declarations.

``sim.explore.api`` turns the page's state (a flat mapping of strings, the same one its URL holds) into run
configurations and answers the page's requests with JSON; ``sim.explore.server`` serves it and the static page
(``static/``) over HTTP on 127.0.0.1 with the standard library. docs/explore.md says what the page shows and why it
is built this way.
"""
