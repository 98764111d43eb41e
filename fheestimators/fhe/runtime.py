"""Process-wide behaviour of concrete-python's runtime that a library must correct once."""
from __future__ import annotations

import atexit

import concrete.compiler


def keep_exit_status() -> None:
    """Let a process that ran a circuit exit with its own status.

    At import, concrete-python registers an exit handler that shuts down its dataflow
    (HPX) runtime; once a circuit has run, that shutdown ends the interpreter with status
    0, so a failing script, test suite or service reported success to the shell. Our
    circuits never use the dataflow runtime (``dataflow_parallelize`` is off), and on
    this stack a process exits cleanly without the handler even when it is on, so the
    handler only costs the exit status: unregister it.
    """
    handler = getattr(concrete.compiler, "_terminate_df_parallelization", None)
    if handler is not None:
        atexit.unregister(handler)
