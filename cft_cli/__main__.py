"""`python -m cft_cli ...` (what torchrun launches: `torchrun ... -m cft_cli train -c ...`)."""

from cft_cli.main import main

main()
