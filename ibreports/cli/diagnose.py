"""Commands: placeholder until implemented."""


def register(sub):  # noqa: D103
    pass
