"""IBKR Flex Web Service v3 as a source kind ("flexweb"): statements over HTTPS with a token.

Modules: ``settings`` (config keys), ``client`` (HTTPS, the two-step protocol, polling),
``codes`` (IBKR's error codes -> our errors and remedies), ``pacing`` (IBKR's request
limits per token), ``redact`` (the token never reaches a log), ``split`` (an answer ->
statements named in IBKR's file-name grammar), ``remote`` (``produce``).
"""
