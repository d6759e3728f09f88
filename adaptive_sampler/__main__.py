"""`python -m adaptive_sampler`: the command line, also as torchrun's module.

`torchrun --nproc-per-node N -m adaptive_sampler sample|eval ...` shards the samples over N processes (see
`adaptive_sampler.distributed`). Each rank is bound to its GPU (cuda:LOCAL_RANK) before the model loads, and ranks
other than 0 print nothing: their stdout and stderr go to /dev/null while the command runs (a traceback, which
only a bug prints, still shows). Without torchrun it is the `adaptive-sampler` console script.
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
