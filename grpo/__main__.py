"""`python -m grpo ...` and `accelerate launch -m grpo ...`."""
import sys

from grpo.cli import main

sys.exit(main())
