"""Command-line helpers shared by the commands."""

from __future__ import annotations


def join_id_tokens(argv: list[str]) -> list[str]:
    """Join the words after each `--id` (up to the next option) into one argument.

    The LSST command line takes `--id run=4192 filter=u^g camcol=4 field=300` as one id; click
    options take one value, so the words are joined before click parses them.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        out.append(token)
        i += 1
        if token == "--id":
            words = []
            while i < len(argv) and not argv[i].startswith("-") and "=" in argv[i]:
                words.append(argv[i])
                i += 1
            if words:
                out.append(" ".join(words))
    return out
