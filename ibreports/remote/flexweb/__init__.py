"""IBKR Flex Web Service v3 as a source kind ("flexweb"): statements over HTTPS with a token.

Modules: ``settings`` (config keys), ``endpoints`` (the documented endpoints, the legacy
ones, which hosts are IBKR's), ``client`` (the two-step protocol, polling, redirects,
Retry-After, reconnects), ``transport`` (TLS, what an answer's HTTP status means, bounded
bodies), ``wire`` (IBKR's status answer), ``codes`` (IBKR's error codes -> our errors and
remedies), ``pacing`` (IBKR's request limits per token), ``redact`` (the token never
reaches a log), ``split`` / ``xmlsplit`` / ``csvsplit`` (an answer -> statements named in
IBKR's file-name grammar, read as a stream), ``remote`` (``produce``).
"""
