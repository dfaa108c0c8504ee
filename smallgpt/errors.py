"""UserError: a problem with the user's input (a config, a path, a flag), reported as one line.

Every module raises it for what the user can fix; `smallgpt.cli.run_main` prints its message and exits
with status 1, without a traceback (GPT_DEBUG=1 or --debug shows one). It lives alone so that any
module can raise it without importing the command-line plumbing.
"""


class UserError(Exception):
    """A problem with the user's input: reported as one line, without a traceback."""
