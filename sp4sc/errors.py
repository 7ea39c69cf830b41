"""User-facing errors.

Every error a user can cause is a :class:`Sp4scError`: the command line prints
its message on one line and exits with :attr:`Sp4scError.exit_code`, with no
traceback unless ``--debug`` is given.
"""


class Sp4scError(Exception):
    """Bad input or a failed check that the user can fix; the message says how."""

    exit_code = 2


class BudgetExceeded(Sp4scError):
    """A model is over the complexity budget (parameters, bytes or MACs)."""

    exit_code = 3
