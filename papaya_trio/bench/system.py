"""What the bench asks of the operating system beyond CPUs: enough file descriptors."""

from __future__ import annotations

import resource


def raise_open_file_limit(needed: int) -> int:
    """Raise this process's soft open-file limit to at least `needed` (children inherit it).

    Returns the new soft limit. Raises OSError when the hard limit is lower than `needed`:
    only an administrator can raise it (``ulimit -Hn``, ``/etc/security/limits.conf``).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise OSError(f"{needed} open files are needed but the hard limit is {hard} (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed
