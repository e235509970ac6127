"""Benchmarks and studies, each run as `python -m benchmarks.<name>` (docs/benchmarks.md lists them).

Run that way, they turn third-party chatter down as `cft` does (weight-loading bars, DeepSpeed's
"Setting accelerator to CPU", advisory warnings), so their logs hold the benchmark's own output.
The package is imported before the module runs, so the switches are set before torch,
transformers or DeepSpeed is imported. While `python -m` locates the module, `sys.argv[0]` is
"-m"; imported by the tests, the package changes nothing.
"""

import sys

if sys.argv and sys.argv[0] == "-m":
    from tasks.quiet import quiet_third_parties

    quiet_third_parties()
