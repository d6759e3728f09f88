"""`python -m adaptive_sampler`: the command line, also as torchrun's module.

`torchrun --nproc-per-node N -m adaptive_sampler sample|eval ...` shards the samples over N processes (see
`adaptive_sampler.distributed`); each rank is bound to its GPU before the model loads, and ranks other than 0
print nothing (a traceback still shows).
"""

from __future__ import annotations

import contextlib
import os


def run() -> None:
    from adaptive_sampler import distributed
    from adaptive_sampler.cli import main

    distributed.bind_device()
    with contextlib.ExitStack() as stack:
        stack.callback(distributed.close)
        if not distributed.is_main():
            quiet = stack.enter_context(open(os.devnull, "w"))
            stack.enter_context(contextlib.redirect_stdout(quiet))
            stack.enter_context(contextlib.redirect_stderr(quiet))
        main()


if __name__ == "__main__":
    run()
